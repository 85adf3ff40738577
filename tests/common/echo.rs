//! A real HTTP/1.1 and HTTP/2 upstream (plaintext or TLS) for tests and the demo: answers JSON echoing what it received.
//!
//! `GET /health` answers 200 or 503 depending on [`EchoServer::set_healthy`]. Query options:
//! `sleep_ms=N` waits N ms before answering (bounded to 30 s); `status=N` answers that status;
//! `raw=1` answers plain text instead of JSON; `pad=N` adds an N-byte `pad` field; `hop=1` adds
//! hop-by-hop and identifying headers (`Connection: X-Internal`, `Keep-Alive`, `Server`...);
//! `gzip=1` gzips the JSON whatever the request accepts. Statuses 204 and 304 have no body.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

struct State {
    name: String,
    healthy: AtomicBool,
    requests: AtomicUsize,
    /// Milliseconds every answer waits (a slow backend).
    delay_ms: std::sync::atomic::AtomicU64,
}

/// A running echo upstream; stops accepting when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    /// Binds `addr` (use port 0 for an ephemeral port) and serves until dropped.
    pub async fn start(name: &str, addr: &str) -> std::io::Result<EchoServer> {
        Self::start_with(name, addr, None).await
    }

    /// Like [`EchoServer::start`], over TLS when `tls` is given; HTTP/1.1 and HTTP/2 (by ALPN,
    /// or by prior knowledge in plaintext) are both served.
    pub async fn start_with(
        name: &str,
        addr: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            requests: AtomicUsize::new(0),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Ok(EchoServer { addr, state, task })
    }

    /// Makes `GET /health` answer 200 (true) or 503 (false).
    #[allow(dead_code)]
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Makes every later answer wait `ms` milliseconds.
    #[allow(dead_code)]
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests served so far, health checks excluded.
    #[allow(dead_code)]
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/health" {
        let ok = state.healthy.load(Ordering::SeqCst);
        let status = if ok { 200 } else { 503 };
        return Ok(json(status, format!("{{\"healthy\":{ok}}}")));
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(ms) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
    }
    let option = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u16>().ok())
    };
    if query.split('&').any(|kv| kv == "raw=1") {
        return Ok(Response::builder()
            .status(option("status").unwrap_or(200))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"plain text, not JSON")))
            .expect("static response parts are valid"));
    }
    let status = option("status").unwrap_or(200);
    let pad = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("pad="))
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| "x".repeat(n.min(10 << 20)));
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let value =
            serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(prev) => *prev = serde_json::Value::Array(vec![prev.clone(), value]),
            None => {
                headers.insert(name.as_str().to_string(), value);
            }
        }
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let mut answer = serde_json::json!({
        "service": state.name,
        "method": method,
        "version": version,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    if let Some(pad) = pad {
        answer["pad"] = serde_json::Value::String(pad);
    }
    if status == 204 || status == 304 {
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .expect("static response parts are valid"));
    }
    let flag = |name: &str| query.split('&').any(|kv| kv == name);
    let mut response = json(status, answer.to_string());
    if flag("gzip=1") {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(answer.to_string().as_bytes())
            .expect("writing to a Vec cannot fail");
        let zipped = gz.finish().expect("writing to a Vec cannot fail");
        response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(zipped)))
            .expect("static response parts are valid");
    }
    if flag("hop=1") {
        let h = response.headers_mut();
        for (n, v) in [
            ("connection", "X-Internal"),
            ("x-internal", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("server", "echo/1.0"),
            ("x-powered-by", "PHP/5.1"),
            ("x-kept", "yes"),
        ] {
            h.insert(n, http::HeaderValue::from_static(v));
        }
    }
    Ok(response)
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
