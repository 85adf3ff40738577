//! Client connections: the deadlines and the connection limit that slow or hostile clients meet
//! before a request reaches the proxy phases.
//!
//! Pingora bounds each *read* of a request head (60 s) but not the whole head, so a client that
//! trickles one byte every few seconds holds a connection forever (slowloris), and it has no
//! connection limit. No crate adds these to Pingora, so [`ClientConnections`] wraps the proxy
//! app: it counts connections, reads each HTTP/1 request head itself under one deadline, and
//! hands the bytes to Pingora as an already-read prefix (Pingora's own pipelining hook), so the
//! head is still parsed by Pingora, once. HTTP/2 connections go straight to Pingora with its
//! idle timeout set.

use crate::config::ClientConfig;
use crate::errors::GatewayError;
use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout_at;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Room for the request line and headers beyond `limits.max_uri_bytes + max_header_bytes`
/// (names, separators, CRLFs) before the head is refused with 431 without reading on.
const HEAD_FRAMING_ALLOWANCE: usize = 8 * 1024;

/// The proxy app behind the connection limit and the request-head deadline.
pub struct ClientConnections<A> {
    app: Arc<A>,
    snapshot: SharedSnapshot,
    open: Arc<AtomicUsize>,
    /// Plaintext listeners also accept HTTP/2 with prior knowledge.
    h2c: bool,
}

impl<A> ClientConnections<A> {
    /// Wraps `app`, reading the `client:` settings from the current snapshot per connection.
    pub fn new(app: A, snapshot: SharedSnapshot, h2c: bool) -> Self {
        ClientConnections {
            app: Arc::new(app),
            snapshot,
            open: Arc::new(AtomicUsize::new(0)),
            h2c,
        }
    }
}

/// One open connection counted against `max_connections`; released on drop.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn acquire(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let previous = open.fetch_add(1, Ordering::AcqRel);
        crate::metrics::connections_open(1);
        let slot = ConnectionSlot(open.clone());
        (previous < max).then_some(slot)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::connections_open(-1);
    }
}

#[async_trait]
impl<A> ServerApp for ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Admits the connection under the limit, then serves HTTP/2 through Pingora directly and
    /// HTTP/1 through the keep-alive loop below, which reads each head under its deadline.
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // One snapshot per connection: its deadlines and head cap hold for all its requests.
        let snapshot = self.snapshot.load();
        let client = snapshot.client;
        let limits = snapshot.sizes;
        let max_head = limits.max_uri_bytes + limits.max_header_bytes + HEAD_FRAMING_ALLOWANCE;
        drop(snapshot);
        let Some(_slot) = ConnectionSlot::acquire(&self.open, client.max_connections) else {
            crate::metrics::connection_closed("limit");
            if stream.selected_alpn_proto() != Some(ALPN::H2) {
                let answer = GatewayError::TooManyConnections.to_http1_bytes("");
                let _ = stream.write_all(&answer).await;
            }
            return None;
        };
        if self.is_h2(&mut stream, &client).await {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        self.serve_http1(stream, client, max_head, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.app.as_ref()).await;
    }
}

impl<A> ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn is_h2(&self, stream: &mut Stream, client: &ClientConfig) -> bool {
        if stream.get_ssl_digest().is_some() {
            return stream.selected_alpn_proto() == Some(ALPN::H2);
        }
        if !self.h2c {
            return false;
        }
        let mut buf = [0u8; H2_PREFACE.len()];
        let peek = tokio::time::timeout(client.header_timeout, stream.try_peek(&mut buf)).await;
        matches!(peek, Ok(Ok(true))) && buf == H2_PREFACE
    }

    /// Pingora's HTTP/1 keep-alive loop, with each request head read by [`read_head`] first.
    async fn serve_http1(
        &self,
        mut stream: Stream,
        client: ClientConfig,
        max_head: usize,
        shutdown: &ShutdownWatch,
    ) {
        let keep_alive_limit = self
            .app
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let mut persisted: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let head = match read_head(&mut stream, first, &client, max_head, shutdown).await {
                Ok(head) => head,
                Err(HeadFailure::Closed) => return,
                Err(HeadFailure::Refused(error)) => {
                    crate::metrics::connection_closed(match error {
                        GatewayError::RequestTimeout => "header_timeout",
                        GatewayError::VersionNotSupported => "version_not_supported",
                        _ => "head_too_large",
                    });
                    let _ = stream.write_all(&error.to_http1_bytes("")).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match persisted.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // Only the flag matters: idle waits are timed by `read_head`.
                    let keep_alive = (!*shutdown.borrow()).then_some(client.keepalive_timeout);
                    session.set_keepalive(keep_alive.map(|d| d.as_secs().max(1)));
                    session.set_keepalive_reuses_remaining(keep_alive_limit);
                }
            }
            session.set_pipelined_prefix(head);
            session.set_read_timeout(Some(client.body_timeout));
            session.set_write_timeout(Some(client.send_timeout));
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            persisted = settings;
            first = false;
        }
    }
}

/// Why no request head was read.
#[derive(Debug)]
enum HeadFailure {
    /// The client closed, went idle past the keep-alive timeout, or the server is stopping.
    Closed,
    /// Answer this error and close.
    Refused(GatewayError),
}

/// Reads until the request head is complete. The first request of a connection must arrive
/// whole within `header_timeout` of the accept; later ones may idle for `keepalive_timeout`
/// and then have `header_timeout` from their first byte. An idle keep-alive connection is
/// closed when the server starts shutting down; a fresh one is still served.
async fn read_head(
    stream: &mut Stream,
    first: bool,
    client: &ClientConfig,
    max_head: usize,
    shutdown: &ShutdownWatch,
) -> Result<BytesMut, HeadFailure> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut deadline = None;
    if !first {
        let idle_until = Instant::now() + client.keepalive_timeout;
        let mut stopping = shutdown.clone();
        let read = tokio::select! {
            biased;
            read = timeout_at(idle_until.into(), stream.read_buf(&mut buf)) => read,
            _ = stopping.wait_for(|stop| *stop) => return Err(HeadFailure::Closed),
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(HeadFailure::Closed),
        }
    } else {
        deadline = Some(Instant::now() + client.header_timeout);
    }
    let mut scanned = 0;
    loop {
        if head_complete(&buf, scanned) {
            if crate::edge::protocol::unsupported_version(&buf) {
                return Err(HeadFailure::Refused(GatewayError::VersionNotSupported));
            }
            return Ok(buf);
        }
        scanned = buf.len();
        if buf.len() > max_head {
            return Err(HeadFailure::Refused(GatewayError::HeadersTooLarge));
        }
        // A keep-alive request's head usually arrives in its first read: its clock starts
        // only when more is needed (one clock read per request saved).
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + client.header_timeout);
        match timeout_at(deadline.into(), stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Closed or broken before a whole head: nothing to answer.
            Ok(_) => return Err(HeadFailure::Closed),
            Err(_) if buf.is_empty() => return Err(HeadFailure::Closed),
            Err(_) => return Err(HeadFailure::Refused(GatewayError::RequestTimeout)),
        }
    }
}

/// Whether `buf` holds a whole request head: an empty line ends it. Pingora's parser accepts
/// bare LF line ends too, so `\n\n` counts as well as `\n\r\n`. Only bytes from `scanned`
/// on (less the two an ending may straddle) are looked at, so a head trickled byte by byte
/// costs linear time.
fn head_complete(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(2);
    buf[from..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_at_the_first_empty_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\nbody", 0));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0));
        assert!(!head_complete(b"", 0));
    }

    #[test]
    fn an_ending_split_across_reads_is_found() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for scanned in 0..head.len() {
            assert!(head_complete(head, scanned), "scanned {scanned}");
        }
        assert!(head_complete(b"GET /\n\n", 6));
    }

    #[test]
    fn slots_are_refused_past_the_limit_and_released_on_drop() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = ConnectionSlot::acquire(&open, 2).unwrap();
        let _b = ConnectionSlot::acquire(&open, 2).unwrap();
        assert!(ConnectionSlot::acquire(&open, 2).is_none());
        drop(a);
        assert!(ConnectionSlot::acquire(&open, 2).is_some());
        assert_eq!(open.load(Ordering::Acquire), 1);
    }
}
