//! The JSON access log: one line per request, to stdout or a file, written by a dedicated
//! thread so the request path only formats a line and hands it over.
//!
//! The writer starts on first use, inside the running server: a daemon forks after startup
//! and threads started before the fork would not exist in the child. When the writer falls
//! behind, lines are dropped (and counted in `apigateway_access_log_dropped_total`) rather than
//! slowing requests down.

use once_cell::sync::OnceCell;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
    pub error: Option<String>,
}

/// Lines queued before the writer is considered behind.
const QUEUE: usize = 16 * 1024;

static WRITER: OnceCell<Option<SyncSender<String>>> = OnceCell::new();

/// Queues a record, starting the writer for `cfg` on first use.
pub fn write(cfg: &AccessLogConfig, record: &AccessRecord<'_>) {
    let sender = WRITER.get_or_init(|| start(cfg));
    let Some(sender) = sender else {
        return;
    };
    let Ok(mut line) = serde_json::to_string(record) else {
        return;
    };
    line.push('\n');
    match sender.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            crate::metrics::access_log_dropped()
        }
    }
}

fn start(cfg: &AccessLogConfig) -> Option<SyncSender<String>> {
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
    let (tx, rx) = sync_channel(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("access log".into())
        .spawn(move || drain(rx, out));
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            log::error!("cannot start the access log writer: {e}");
            None
        }
    }
}

/// Writes lines in batches: everything queued is written before one flush.
fn drain(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let _ = out.flush();
    }
}
