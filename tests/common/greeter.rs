//! A real gRPC upstream (tonic) for the tests and the demo: the `demo.Greeter` service of
//! proto/demo.proto in all four call kinds, and the standard `grpc.health.v1.Health` service.
//!
//! Replies carry the request metadata the service received, so tests see what the gateway
//! forwarded; [`GreeterServer::start_plain`] leaves it out, so that a benchmark's replies are
//! the same bytes whatever a proxy forwards. `fail_code` answers that gRPC status instead;
//! `delay_ms` waits before each reply.
//! Streams the client (or the gateway) abandons are counted in [`Seen::cancelled`].
#![allow(dead_code)]

pub mod demo {
    tonic::include_proto!("demo");
}

use demo::greeter_server::{Greeter, GreeterServer as GreeterService};
use demo::{HelloReply, HelloRequest};
use futures::{Stream, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// What the service saw, shared with the test.
#[derive(Default)]
pub struct Seen {
    /// Calls of any method.
    pub calls: AtomicUsize,
    /// Server streams that ended because their receiver went away.
    pub cancelled: AtomicUsize,
}

/// A running greeter; stops serving when dropped.
pub struct GreeterServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl GreeterServer {
    /// Binds `addr` (port 0 for an ephemeral one) and serves h2c until dropped.
    pub async fn start(addr: &str) -> std::io::Result<GreeterServer> {
        Self::start_with(addr, true).await
    }

    /// Like [`GreeterServer::start`], with replies that carry no metadata (bench/grpc.sh).
    pub async fn start_plain(addr: &str) -> std::io::Result<GreeterServer> {
        Self::start_with(addr, false).await
    }

    async fn start_with(addr: &str, echo_metadata: bool) -> std::io::Result<GreeterServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GreeterService<Service>>().await;
        let service = GreeterService::new(Service {
            seen: seen.clone(),
            echo_metadata,
        });
        // As tonic's own `serve` does: without TCP_NODELAY a reply's trailers wait behind
        // its first segment's delayed ACK (40 ms a call).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(GreeterServer {
            addr,
            seen,
            health,
            task,
        })
    }

    /// Sets what `grpc.health.v1.Health/Check` answers for `demo.Greeter`.
    pub async fn set_serving(&self, serving: bool) {
        if serving {
            self.health.set_serving::<GreeterService<Service>>().await;
        } else {
            self.health
                .set_not_serving::<GreeterService<Service>>()
                .await;
        }
    }

    /// Calls the service has taken so far.
    pub fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GreeterServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Service {
    seen: Arc<Seen>,
    /// Whether replies carry the request's metadata.
    echo_metadata: bool,
}

impl Service {
    /// The metadata a reply carries: the request's, or none.
    fn reply_metadata(&self, m: &tonic::metadata::MetadataMap) -> Metadata {
        if self.echo_metadata {
            metadata_of(m)
        } else {
            Metadata::new()
        }
    }
}

type Metadata = std::collections::HashMap<String, String>;

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

/// The request's metadata as a map (binary values base64, as on the wire).
fn metadata_of(m: &tonic::metadata::MetadataMap) -> Metadata {
    m.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect()
}

/// The reply to one request, after its delay, or its requested failure.
async fn reply(req: &HelloRequest, metadata: &Metadata) -> Result<HelloReply, Status> {
    if req.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms.min(30_000)))).await;
    }
    if req.fail_code != 0 {
        return Err(failure(req));
    }
    Ok(HelloReply {
        message: format!("Hello, {}!", req.name),
        metadata: metadata.clone(),
    })
}

/// The requested failure: the name is its message and, in `grpc-status-details-bin`, its
/// details.
fn failure(req: &HelloRequest) -> Status {
    Status::with_details(
        tonic::Code::from(req.fail_code as i32),
        req.name.clone(),
        req.name.clone().into_bytes().into(),
    )
}

/// Sends `replies` through a channel so a receiver that goes away is noticed (and counted).
fn stream_of(
    seen: Arc<Seen>,
    replies: impl Stream<Item = Result<HelloReply, Status>> + Send + 'static,
) -> ReplyStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut replies = std::pin::pin!(replies);
        loop {
            tokio::select! {
                () = tx.closed() => {
                    seen.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                next = replies.next() => match next {
                    Some(item) => {
                        if tx.send(item).await.is_err() {
                            seen.cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[tonic::async_trait]
impl Greeter for Service {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let metadata = self.reply_metadata(req.metadata());
        reply(req.get_ref(), &metadata).await.map(Response::new)
    }

    type SayHellosStream = ReplyStream;

    async fn say_hellos(
        &self,
        req: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let metadata = self.reply_metadata(req.metadata());
        let req = req.into_inner();
        let replies = futures::stream::unfold(0u32, move |i| {
            let (req, metadata) = (req.clone(), metadata.clone());
            async move {
                if i >= req.count {
                    return None;
                }
                let mut one = req.clone();
                one.name = format!("{} #{i}", req.name);
                // A failure comes after the first reply, as a trailer of a started stream.
                if i == 0 {
                    one.fail_code = 0;
                }
                Some((reply(&one, &metadata).await, i + 1))
            }
        });
        Ok(Response::new(stream_of(self.seen.clone(), replies)))
    }

    async fn collect_hellos(
        &self,
        req: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let metadata = self.reply_metadata(req.metadata());
        let mut stream = req.into_inner();
        let mut names = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item?;
            if item.fail_code != 0 {
                return Err(failure(&item));
            }
            names.push(item.name);
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello, {}!", names.join(", ")),
            metadata,
        }))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        req: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let metadata = self.reply_metadata(req.metadata());
        let replies = req.into_inner().then(move |item| {
            let metadata = metadata.clone();
            async move { reply(&item?, &metadata).await }
        });
        Ok(Response::new(stream_of(self.seen.clone(), replies)))
    }
}
