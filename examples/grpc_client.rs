//! Calls the demo gRPC service through the gateway: a unary `SayHello` and a server-streaming
//! `SayHellos`, printing each reply and the status.
//!
//! `cargo run --example grpc_client -- [NAME] [--gateway URL] [--count N]`; the gateway
//! defaults to `http://localhost:8080` (h2c, as `make run` starts it).

#[path = "../tests/common/greeter.rs"]
mod greeter;

use greeter::demo::HelloRequest;
use greeter::demo::greeter_client::GreeterClient;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = "world".to_string();
    let mut gateway = "http://localhost:8080".to_string();
    let mut count = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--gateway" => gateway = args.next().ok_or("--gateway needs a URL")?,
            "--count" => count = args.next().ok_or("--count needs a number")?.parse()?,
            _ => name = arg,
        }
    }
    let mut client = GreeterClient::connect(gateway.clone()).await?;
    let mut request = tonic::Request::new(HelloRequest {
        name: name.clone(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(5));
    match client.say_hello(request).await {
        Ok(reply) => println!("SayHello: {}", reply.into_inner().message),
        Err(status) => println!("SayHello: {:?} {}", status.code(), status.message()),
    }
    let request = HelloRequest {
        name,
        count,
        delay_ms: 200,
        ..Default::default()
    };
    match client.say_hellos(request).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(reply)) => println!("SayHellos: {}", reply.message),
                    Ok(None) => break,
                    Err(status) => {
                        println!("SayHellos: {:?} {}", status.code(), status.message());
                        break;
                    }
                }
            }
        }
        Err(status) => println!("SayHellos: {:?} {}", status.code(), status.message()),
    }
    Ok(())
}
