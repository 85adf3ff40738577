//! Request mirroring (shadow traffic): a sampled copy of a route's forwarded request, sent to
//! another service after the client has its answer, the mirror's answer read and discarded.
//!
//! Sent from the `logging` phase, so nothing the mirror does (hang, reset, answer slowly) can
//! reach the client's answer or its latency; the copies in flight are bounded by a semaphore,
//! and one that finds no free slot is dropped and counted rather than queued.

use super::config::MirrorConfig;
use crate::invalid::Invalid;
use crate::metrics::MirrorMetrics;
use crate::share::Share;
use crate::upstream::ServicePool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The header every mirrored request carries, so the mirror (and its logs) can tell.
pub static MIRROR_MARKER: HeaderName = HeaderName::from_static("x-gateway-mirror");

/// The mirrors' own upstream connections, apart from the proxied requests' pool.
static CONNECTOR: once_cell::sync::Lazy<Connector> =
    once_cell::sync::Lazy::new(|| Connector::new(None));

/// A compiled `mirror:`.
#[derive(Debug)]
pub struct Mirror {
    pub service: usize,
    /// The share of requests copied.
    sample: Share,
    pub max_body: usize,
    slots: Arc<Semaphore>,
    route: Arc<str>,
    metrics: MirrorMetrics,
}

/// The copy a sampled request collects: the upstream request head as sent, and its body up
/// to the cap.
#[derive(Debug, Default)]
pub struct MirrorCopy {
    pub head: Option<Box<RequestHeader>>,
    body: Vec<u8>,
    /// The body passed the cap: the copy goes without one.
    truncated: bool,
}

impl MirrorCopy {
    /// Keeps a chunk of the client's body, until the copy would pass `max`.
    pub fn take_body(&mut self, chunk: &[u8], max: usize) {
        if self.truncated {
            return;
        }
        if self.body.len() + chunk.len() > max {
            self.truncated = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }
}

impl Mirror {
    /// Compiles `cfg` (at `key`) with `find` resolving the service name.
    pub fn compile(
        cfg: &MirrorConfig,
        key: &str,
        find: impl Fn(&str) -> Result<usize, String>,
        route: &str,
    ) -> Result<Self, Invalid> {
        let service = find(&cfg.service).map_err(|r| Invalid::new(format!("{key}.service"), r))?;
        let sample = Share::compile(cfg.sample_ratio, &format!("{key}.sample_ratio"))?;
        if cfg.max_in_flight == 0 {
            return Err(Invalid::new(
                format!("{key}.max_in_flight"),
                "must be at least 1",
            ));
        }
        Ok(Mirror {
            service,
            sample,
            max_body: cfg.max_body_bytes,
            slots: Arc::new(Semaphore::new(cfg.max_in_flight)),
            route: Arc::from(route),
            metrics: MirrorMetrics::new(route),
        })
    }

    /// Whether this request is copied (the sample).
    pub fn samples(&self) -> bool {
        self.sample.sample()
    }

    /// Sends `copy` to the mirror service in the background, or drops it (counted) when the
    /// mirror already has `max_in_flight` copies out or no healthy backend.
    pub fn send(&self, copy: MirrorCopy, pool: &Arc<ServicePool>) {
        let Some(mut head) = copy.head else {
            return;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.dropped.inc();
            return;
        };
        if copy.truncated {
            self.metrics.body_too_large.inc();
            let _ = head.remove_header(&http::header::TRANSFER_ENCODING);
            let _ = head.insert_header(http::header::CONTENT_LENGTH, "0");
        }
        let _ = head.insert_header(MIRROR_MARKER.clone(), HeaderValue::from_static("1"));
        let body = Bytes::from(copy.body);
        let (pool, metrics) = (pool.clone(), self.metrics.clone());
        let route = self.route.clone();
        tokio::spawn(async move {
            // Boxed: Pingora's client futures are large, and a task holding one inline is
            // copied whole as it is spawned (callgrind: ~85k instructions of memcpy a copy).
            match Box::pin(deliver(head, body, &pool, &CONNECTOR)).await {
                Ok(()) => metrics.sent.inc(),
                Err(e) => {
                    metrics.failed.inc();
                    log::debug!("mirror of route {route} to {}: {e}", pool.name);
                }
            }
            drop(slot);
        });
    }
}

/// One copy: connect (the pool's peer settings and timeouts apply), send head and body, read
/// and discard the answer.
async fn deliver(
    head: Box<RequestHeader>,
    body: Bytes,
    pool: &ServicePool,
    connector: &Connector,
) -> Result<(), String> {
    let backend = pool
        .select(b"", &[])
        .ok_or_else(|| "no healthy backend".to_string())?;
    let peer = pool.peer(&backend, false);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
    session.set_write_timeout(peer.options.write_timeout);
    session.set_read_timeout(peer.options.read_timeout);
    let io = |e: Box<pingora::Error>| e.etype().as_str().to_string();
    session.write_request_header(head).await.map_err(io)?;
    if !body.is_empty() {
        session.write_request_body(body, true).await.map_err(io)?;
    }
    session.finish_request_body().await.map_err(io)?;
    session.read_response_header().await.map_err(io)?;
    while session.read_response_body().await.map_err(io)?.is_some() {}
    connector
        .release_http_session(session, &peer, peer.options.idle_timeout)
        .await;
    Ok(())
}
