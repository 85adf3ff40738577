//! Bare Pingora: the least a `ProxyHttp` can do to forward `/api/users/*` to one upstream with
//! the prefix stripped. The benchmarks' floor: what the gateway costs beyond it is its own.
//!
//! Same release profile and allocator as the gateway, one worker thread. The listen address
//! comes from `BARE_LISTEN` (default `127.0.0.1:8093`), the upstream from `BARE_UPSTREAM`
//! (default `127.0.0.1:3001`), so other tools can run it too. `BARE_H2=1` makes it the floor
//! of gRPC proxying instead: h2c accepted from clients, HTTP/2 (h2c) to the upstream, with
//! `BARE_H2_STREAMS` streams per upstream connection (Pingora's default: 1). `BARE_NO_STEAL=1`
//! runs its thread on a current-thread runtime, as the gateway does by default
//! (`server.work_stealing: false`), instead of Pingora's default work-stealing one.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PREFIX: &str = "/api/users";

struct Bare {
    upstream: String,
    h2: bool,
    h2_streams: usize,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        if self.h2 {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = self.h2_streams;
        }
        Ok(Box::new(peer))
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
        work_stealing: std::env::var("BARE_NO_STEAL").is_err(),
        pid_file: format!("/tmp/bare_proxy_{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/bare_proxy_{}.sock", std::process::id()),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let h2 = std::env::var("BARE_H2").is_ok_and(|v| v == "1");
    let h2_streams = std::env::var("BARE_H2_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bare = Bare {
        upstream,
        h2,
        h2_streams,
    };
    let mut proxy = http_proxy_service(&server.configuration, bare);
    if h2 {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        if let Some(app) = proxy.app_logic_mut() {
            app.server_options = Some(options);
        }
    }
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
