//! The OTLP/HTTP exporter: a bounded queue of encoded spans filled by requests
//! ([`super::record`]), and one background thread that batches and posts them to the
//! collector.
//!
//! Ours rather than the `opentelemetry` SDK's batch processor: the SDK builds a span object
//! with attribute vectors and owned strings per request, where the gateway writes the
//! protobuf straight from the request's own values; and the thread starts on the first span,
//! after the process has daemonized, like the access-log writer.

use super::config::ExportSettings;
use super::otlp::{self, Writer};
use once_cell::sync::OnceCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Encoded spans waiting: the `spans` fields of many requests back to back, where each
/// request's end and how many spans it has (batches split between requests), and the total.
#[derive(Default)]
struct Waiting {
    spans: Vec<u8>,
    requests: Vec<(usize, usize)>,
    span_count: usize,
}

impl Waiting {
    /// The requests in batches of at most `batch_size` spans (a request is never split),
    /// each as its encoded bytes, request count and span count.
    fn batches(&self, batch_size: usize) -> impl Iterator<Item = (&[u8], usize, usize)> {
        let mut rest = self.requests.as_slice();
        let mut from = 0;
        std::iter::from_fn(move || {
            let (mut n, mut spans) = (0, 0);
            while let Some(&(_, count)) = rest.get(n) {
                if n > 0 && spans + count > batch_size {
                    break;
                }
                spans += count;
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            let &(to, _) = batch.last()?;
            rest = tail;
            let bytes = &self.spans[from..to];
            from = to;
            Some((bytes, n, spans))
        })
    }

    fn clear(&mut self) {
        self.spans.clear();
        self.requests.clear();
        self.span_count = 0;
    }
}

/// Finished requests waiting for the exporter. A request appends under a short lock and wakes
/// the exporter only when a batch is full or the process drains: a channel would wake the
/// exporter thread (a futex call and a context switch) for nearly every request.
struct Queue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    batch_size: usize,
    capacity: usize,
}

static QUEUE: OnceCell<Option<Arc<Queue>>> = OnceCell::new();
/// Set on graceful shutdown: the exporter then sends whatever it has right away.
static DRAIN: AtomicBool = AtomicBool::new(false);
/// Requests queued or being exported, so a shutdown can wait until they are out.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Queues one request's encoded `spans` (`count` of them); never blocks: a full queue drops
/// them (and counts them).
pub fn submit(settings: &ExportSettings, spans: &[u8], count: usize) {
    let Some(queue) = QUEUE.get_or_init(|| start(settings)) else {
        return;
    };
    let mut waiting = queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
    if waiting.requests.len() >= queue.capacity {
        drop(waiting);
        crate::metrics::spans_dropped(count as u64);
        return;
    }
    waiting.spans.extend_from_slice(spans);
    let end = waiting.spans.len();
    waiting.requests.push((end, count));
    waiting.span_count += count;
    PENDING.fetch_add(1, Ordering::AcqRel);
    // Woken once as the count crosses a batch, not again for each request after it.
    let full =
        waiting.span_count >= queue.batch_size && waiting.span_count - count < queue.batch_size;
    if full || DRAIN.load(Ordering::Relaxed) {
        queue.wake.notify_one();
    }
}

/// From now on the exporter sends each batch as soon as it has one (graceful shutdown or
/// upgrade: the process is about to exit), starting with what it holds.
pub fn start_draining() {
    if !DRAIN.swap(true, Ordering::AcqRel)
        && let Some(Some(queue)) = QUEUE.get()
    {
        queue.wake.notify_one();
    }
}

/// Returns once everything queued so far is exported (or dropped), or after `limit`.
/// Blocking: call it from a blocking thread, which Pingora's shutdown waits for.
pub fn wait_drained(limit: Duration) {
    start_draining();
    let deadline = Instant::now() + limit;
    while PENDING.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(settings: &ExportSettings) -> Option<Arc<Queue>> {
    let batch_size = settings.batch_size;
    let queue = Arc::new(Queue {
        waiting: Mutex::new(Waiting::default()),
        wake: Condvar::new(),
        batch_size,
        capacity: settings.queue_size,
    });
    let shared = queue.clone();
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name("trace export".into())
        .spawn(move || Exporter::new(settings).run(&shared));
    match spawned {
        Ok(_) => Some(queue),
        Err(e) => {
            log::error!("cannot start the trace exporter: {e}; spans are not exported");
            None
        }
    }
}

struct Exporter {
    settings: ExportSettings,
    /// The encoded `Resource` message.
    resource: Vec<u8>,
    client: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    fn new(settings: ExportSettings) -> Self {
        let instance = format!("{}-{}", hostname(), std::process::id());
        let mut resource = Writer::default();
        resource.attr_str(1, "service.name", &settings.service_name);
        resource.attr_str(1, "service.version", env!("CARGO_PKG_VERSION"));
        resource.attr_str(1, "service.instance.id", &instance);
        let resource = resource.buf;
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| log::error!("trace exporter runtime: {e}"))
            .ok();
        Exporter {
            settings,
            resource,
            client,
            runtime,
        }
    }

    /// Takes what is waiting every `flush_interval` (or when a batch is full, or at once
    /// while draining) and exports it in batches.
    fn run(&self, queue: &Queue) {
        let mut taken = Waiting::default();
        loop {
            {
                let mut waiting = queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                let full = waiting.span_count >= queue.batch_size;
                if !full && !DRAIN.load(Ordering::Acquire) {
                    waiting = queue
                        .wake
                        .wait_timeout(waiting, self.settings.flush_interval)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                } else if waiting.requests.is_empty() {
                    // Draining with nothing waiting: look again shortly.
                    waiting = queue
                        .wake
                        .wait_timeout(waiting, Duration::from_millis(20))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                std::mem::swap(&mut *waiting, &mut taken);
            }
            for (bytes, requests, spans) in taken.batches(queue.batch_size) {
                self.export(bytes, spans as u64);
                PENDING.fetch_sub(requests, Ordering::AcqRel);
            }
            taken.clear();
        }
    }

    /// Posts one batch, retrying connection errors, 429 and 5xx with doubling backoff.
    fn export(&self, encoded: &[u8], spans: u64) {
        let Some(runtime) = &self.runtime else {
            crate::metrics::spans_dropped(spans);
            return;
        };
        // Shared, so a retry does not copy the batch again.
        let body = bytes::Bytes::from(otlp::request(
            &self.resource,
            "apigateway",
            env!("CARGO_PKG_VERSION"),
            encoded,
        ));
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..=self.settings.max_retries {
            // The request is built inside the runtime: reqwest arms its timeout when sending.
            let sent = runtime.block_on(async {
                self.client
                    .post(self.settings.endpoint.clone())
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
            });
            let retry = match sent {
                Ok(r) if r.status().is_success() => {
                    crate::metrics::spans_exported(spans);
                    return;
                }
                Ok(r) => r.status().as_u16() == 429 || r.status().is_server_error(),
                Err(_) => true,
            };
            if !retry || attempt == self.settings.max_retries {
                break;
            }
            std::thread::sleep(backoff);
            backoff *= 2;
        }
        crate::metrics::trace_export_failed();
        crate::metrics::spans_dropped(spans);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::Waiting;

    #[test]
    fn batches_hold_whole_requests_up_to_the_span_limit() {
        let mut waiting = Waiting::default();
        for (i, count) in [2, 2, 3, 1, 5].into_iter().enumerate() {
            waiting.spans.extend(std::iter::repeat_n(i as u8, count));
            waiting.requests.push((waiting.spans.len(), count));
            waiting.span_count += count;
        }
        let batches: Vec<_> = waiting.batches(4).collect();
        let expected: [(&[u8], usize, usize); 3] = [
            (&[0, 0, 1, 1], 2, 4),
            (&[2, 2, 2, 3], 2, 4),
            // A request with more spans than a batch holds goes alone.
            (&[4, 4, 4, 4, 4], 1, 5),
        ];
        assert_eq!(batches, expected);
        waiting.clear();
        assert_eq!(waiting.batches(4).count(), 0);
    }
}
