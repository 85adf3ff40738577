//! The demo upstreams for `make run`: users, products and orders on 127.0.0.1:3001-3003, each
//! answering JSON that echoes the method, path, query and headers it received.

#[path = "../tests/common/echo.rs"]
mod echo;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut servers = Vec::new();
    for (name, port) in [("users", 3001), ("products", 3002), ("orders", 3003)] {
        let server = echo::EchoServer::start(name, &format!("127.0.0.1:{port}")).await?;
        println!("demo service {name} listening on http://{}", server.addr);
        servers.push(server);
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
