//! The JSON access log: one line per request, to stdout or a file, written by a dedicated
//! thread so the request path only formats a line and appends it to a shared buffer.
//!
//! The writer wakes every [`FLUSH_EVERY`] (or sooner when [`WAKE_AT`] bytes are waiting) and
//! writes the whole buffer at once. A channel with a line per message would wake the writer,
//! a futex call each, for nearly every request; this costs the request path one short lock.
//! The writer starts on first use, inside the running server: a daemon forks after startup
//! and threads started before the fork would not exist in the child. When the writer falls
//! behind, lines are dropped (and counted in `apigateway_access_log_dropped_total`) rather than
//! slowing requests down.

use once_cell::sync::OnceCell;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// The `access_log:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write a line per request (default true).
    pub enabled: bool,
    /// File to append to; stdout when absent. Changing it needs a graceful upgrade.
    pub path: Option<PathBuf>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: None,
        }
    }
}

impl AccessLogConfig {
    /// Resolves a relative `path` against `base` (the config file's directory), like every
    /// other file the config names.
    pub fn relative_to(mut self, base: &std::path::Path) -> Self {
        // `join` keeps an absolute path as it is.
        self.path = self.path.map(|p| base.join(p));
        self
    }
}

/// One access log line. Never carries tokens, cookies or passwords: only the path (not the
/// query, which may hold a token parameter) and the verified subject.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub service: Option<&'a str>,
    pub upstream: Option<String>,
    pub status: u16,
    pub bytes: usize,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub user: Option<&'a str>,
    pub rate_limit: Option<&'a str>,
    /// How the response cache answered (`HIT`, `MISS`, ...), on cached routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// A gRPC call's service, method and `grpc-status` (absent when it broke off without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    pub error: Option<String>,
    /// The request's trace and server span (hex), when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// How long a line may wait for the writer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes waiting that wake the writer before its interval is up.
const WAKE_AT: usize = 256 * 1024;
/// Bytes waiting beyond which the writer is considered behind and lines are dropped.
const MAX_PENDING: usize = 16 * 1024 * 1024;

/// The lines waiting for the writer.
struct Pending {
    lines: Mutex<Vec<u8>>,
    wake: Condvar,
}

static WRITER: OnceCell<Option<Arc<Pending>>> = OnceCell::new();

thread_local! {
    /// Where a line is serialized before it is appended, so the lock is held for a copy only.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Queues a record, starting the writer for `cfg` on first use.
pub fn write(cfg: &AccessLogConfig, record: &AccessRecord<'_>) {
    let Some(pending) = WRITER.get_or_init(|| start(cfg)) else {
        return;
    };
    SCRATCH.with(|scratch| {
        let mut line = scratch.borrow_mut();
        line.clear();
        if serde_json::to_writer(&mut *line, record).is_err() {
            return;
        }
        line.push(b'\n');
        let mut lines = pending.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() + line.len() > MAX_PENDING {
            drop(lines);
            crate::metrics::access_log_dropped();
            return;
        }
        let was_below = lines.len() < WAKE_AT;
        lines.extend_from_slice(&line);
        if was_below && lines.len() >= WAKE_AT {
            pending.wake.notify_one();
        }
    });
}

fn start(cfg: &AccessLogConfig) -> Option<Arc<Pending>> {
    let out: Box<dyn Write + Send> = match &cfg.path {
        None => Box::new(std::io::stdout()),
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                log::error!(
                    "access log {}: {e}; access logging disabled",
                    path.display()
                );
                return None;
            }
        },
    };
    let pending = Arc::new(Pending {
        lines: Mutex::new(Vec::with_capacity(WAKE_AT)),
        wake: Condvar::new(),
    });
    let shared = pending.clone();
    let spawned = std::thread::Builder::new()
        .name("access log".into())
        .spawn(move || drain(&shared, out));
    match spawned {
        Ok(_) => Some(pending),
        Err(e) => {
            log::error!("cannot start the access log writer: {e}");
            None
        }
    }
}

/// Takes whatever is waiting every interval (or when woken) and writes it in one go.
fn drain(pending: &Pending, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(WAKE_AT);
    loop {
        {
            let mut lines = pending.lines.lock().unwrap_or_else(PoisonError::into_inner);
            if lines.len() < WAKE_AT {
                lines = pending
                    .wake
                    .wait_timeout(lines, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut *lines, &mut batch);
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
        }
    }
}
