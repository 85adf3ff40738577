//! The demo upstreams for `make run`: users, products, orders and products-v2 (the canary of
//! `/api/catalog`) on 127.0.0.1:3001-3004, each answering JSON that echoes the method, path, query and headers it received,
//! and the gRPC greeter of proto/demo.proto on 127.0.0.1:3005 (h2c).

#[path = "../tests/common/echo.rs"]
mod echo;
#[path = "../tests/common/greeter.rs"]
mod greeter;
#[path = "../tests/common/pki.rs"]
mod pki;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `demo_services --write-cert DIR`: the demo's TLS files, made once (kept if present).
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir] = args.as_slice()
        && flag == "--write-cert"
    {
        let dir = std::path::Path::new(dir);
        if !dir.join("localhost.crt").exists() {
            let ca = pki::TestCa::new("apigateway demo CA");
            std::fs::create_dir_all(dir)?;
            ca.write(dir, "ca.crt");
            ca.issue(dir, "localhost", &["localhost", "127.0.0.1", "::1"]);
            println!(
                "wrote a demo CA and a localhost certificate to {}",
                dir.display()
            );
        }
        return Ok(());
    }
    // `demo_services --greeter ADDR`: only the gRPC greeter, on ADDR, its replies without the
    // request metadata so that they are the same bytes behind any proxy (bench/grpc.sh).
    if let [_, flag, addr] = args.as_slice()
        && flag == "--greeter"
    {
        let greeter = greeter::GreeterServer::start_plain(addr).await?;
        println!(
            "demo gRPC service demo.Greeter listening on h2c://{}",
            greeter.addr
        );
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let mut servers = Vec::new();
    for (name, port) in [
        ("users", 3001),
        ("products", 3002),
        ("orders", 3003),
        ("products-v2", 3004),
    ] {
        let server = echo::EchoServer::start(name, &format!("127.0.0.1:{port}")).await?;
        println!("demo service {name} listening on http://{}", server.addr);
        servers.push(server);
    }
    let greeter = greeter::GreeterServer::start("127.0.0.1:3005").await?;
    println!(
        "demo gRPC service demo.Greeter listening on h2c://{}",
        greeter.addr
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
