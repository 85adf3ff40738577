//! Bare Pingora: the least a `ProxyHttp` can do to forward `/api/users/*` to one upstream with
//! the prefix stripped. The benchmarks' floor: what the gateway costs beyond it is its own.
//!
//! Same release profile and allocator as the gateway, one worker thread. The listen address
//! comes from `BARE_LISTEN` (default `127.0.0.1:8093`), the upstream from `BARE_UPSTREAM`
//! (default `127.0.0.1:3001`), so other tools can run it too.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PREFIX: &str = "/api/users";

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let path = upstream.uri.path();
        if let Some(rest) = path.strip_prefix(PREFIX) {
            let rest = if rest.is_empty() { "/" } else { rest };
            let uri = match upstream.uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            upstream.set_uri(uri.parse().expect("a stripped path is a valid URI"));
        }
        Ok(())
    }
}

fn main() {
    let listen = std::env::var("BARE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8093".into());
    let upstream = std::env::var("BARE_UPSTREAM").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let conf = ServerConf {
        threads: 1,
        pid_file: format!("/tmp/bare_proxy_{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/bare_proxy_{}.sock", std::process::id()),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
