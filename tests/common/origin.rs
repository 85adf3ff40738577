//! A scriptable origin for compression and caching tests: each request's query says what to
//! answer (`size`, `type`, `etag`, `cc`, `ce=gzip`, `chunked`, `hold`), and the origin counts
//! requests and keeps the last `Accept-Encoding` it was sent.

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
    state.hits.fetch_add(1, Ordering::SeqCst);
    *state.accept_encoding.lock().unwrap() = req
        .headers()
        .get("accept-encoding")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            (k.to_string(), v.into_owned())
        })
        .collect();
    let size = q.get("size").and_then(|s| s.parse().ok()).unwrap_or(2048);
    let mut body = json_body(size);
    let mut resp = hyper::Response::builder().header(
        "content-type",
        q.get("type").map_or("application/json", |t| t.as_str()),
    );
    for (key, header) in [("etag", "etag"), ("cc", "cache-control")] {
        if let Some(v) = q.get(key) {
            resp = resp.header(header, v.as_str());
        }
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
