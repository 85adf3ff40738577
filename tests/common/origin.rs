//! A scriptable origin for compression and caching tests: each request's query says what to
//! answer (`size`, `type`, `etag`, `cc`, `ce=gzip`, `chunked`, `hold`; for caching also
//! `vary`, `expires`, `lm`, `cookie`, `status`, `delay` (ms), `echo` (a request header's value
//! as the body), `count` (the request count as the body)). It answers 304 to a matching
//! `If-None-Match`, 503 to everything while failing, counts requests and keeps the last
//! `Accept-Encoding` and `If-None-Match` it was sent.

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    hits: AtomicUsize,
    accept_encoding: Mutex<Option<String>>,
    if_none_match: Mutex<Option<String>>,
    failing: std::sync::atomic::AtomicBool,
    release: Notify,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

/// A JSON body of `size` bytes: compressible, the same for the same size.
pub fn json_body(size: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    let mut i = 0;
    while body.len() + 40 < size {
        write!(body, "{{\"id\":{i},\"name\":\"item number {i}\"}},").unwrap();
        i += 1;
    }
    body.extend_from_slice(b"0]");
    body.resize(size.max(body.len()), b' ');
    body.truncate(size.max(2));
    body
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl Origin {
    pub async fn start() -> Origin {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(answer(state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, state, task }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The `Accept-Encoding` of the last request (None: it had none).
    pub fn last_accept_encoding(&self) -> Option<String> {
        self.state.accept_encoding.lock().unwrap().clone()
    }

    /// The `If-None-Match` of the last request (None: it had none).
    #[allow(dead_code)]
    pub fn last_if_none_match(&self) -> Option<String> {
        self.state.if_none_match.lock().unwrap().clone()
    }

    /// From now on answers every request 503 (`true`) or normally again (`false`).
    #[allow(dead_code)]
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Lets a `hold` response send its second half.
    pub fn release(&self) {
        self.state.release.notify_one();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let header_of = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    *state.accept_encoding.lock().unwrap() = header_of("accept-encoding");
    let if_none_match = header_of("if-none-match");
    *state.if_none_match.lock().unwrap() = if_none_match.clone();
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            (k.to_string(), v.into_owned())
        })
        .collect();
    if let Some(ms) = q.get("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if state.failing.load(Ordering::SeqCst) {
        let body = http_body_util::Full::new(Bytes::from_static(b"origin failing")).boxed();
        return hyper::Response::builder().status(503).body(body).unwrap();
    }
    let size = q.get("size").and_then(|s| s.parse().ok()).unwrap_or(2048);
    let mut body = match (q.get("echo"), q.contains_key("count")) {
        (Some(h), _) => header_of(h).unwrap_or_else(|| "-".into()).into_bytes(),
        (None, true) => format!("{{\"n\":{n}}}").into_bytes(),
        (None, false) => json_body(size),
    };
    let status: u16 = q.get("status").and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut resp = hyper::Response::builder().status(status).header(
        "content-type",
        q.get("type").map_or("application/json", |t| t.as_str()),
    );
    for (key, header) in [
        ("etag", "etag"),
        ("cc", "cache-control"),
        ("vary", "vary"),
        ("expires", "expires"),
        ("lm", "last-modified"),
    ] {
        if let Some(v) = q.get(key) {
            resp = resp.header(header, v.as_str());
        }
    }
    if q.contains_key("cookie") {
        resp = resp.header("set-cookie", "session=abc; Path=/");
    }
    if q.contains_key("etag") && q.get("etag") == if_none_match.as_ref() {
        let empty = http_body_util::Full::new(Bytes::new()).boxed();
        return resp.status(304).body(empty).unwrap();
    }
    if q.get("ce").map(String::as_str) == Some("gzip") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body).unwrap();
        body = enc.finish().unwrap();
        resp = resp.header("content-encoding", "gzip");
    }
    let hold = q.contains_key("hold");
    if !(hold || q.contains_key("chunked")) {
        let full = http_body_util::Full::new(Bytes::from(body)).boxed();
        return resp
            .header("content-length", body_len(&full))
            .body(full)
            .unwrap();
    }
    // Streamed in 16 KiB chunks; with `hold`, the second half waits for `release`.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let chunks: Vec<Bytes> = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    let release = hold.then(|| state.clone());
    tokio::spawn(async move {
        let half = chunks.len() / 2;
        for (i, c) in chunks.into_iter().enumerate() {
            if i == half
                && let Some(r) = &release
            {
                r.release.notified().await;
            }
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return;
            }
        }
    });
    let stream = StreamBody::new(tokio_stream_from(rx));
    resp.body(BodyExt::boxed(stream)).unwrap()
}

fn body_len(b: &Body) -> String {
    use hyper::body::Body as _;
    b.size_hint().exact().unwrap_or(0).to_string()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
