//! Hot reload: on SIGHUP, re-read the YAML, compile a new snapshot next to the running one and
//! swap the pointer. Requests in flight keep the snapshot they pinned; new ones see the new one.
//! A file that does not compile changes nothing and the log says exactly why.

use crate::config::{ConfigDoc, ConfigError};
use crate::snapshot::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new snapshot is live.
    Applied,
    /// The document did not load or compile; the old snapshot stays. `key` is the key path
    /// the error names, when it names one.
    Rejected {
        message: String,
        key: Option<String>,
    },
}

/// Loads `path`, compiles it against the current snapshot (carrying state over) and swaps it in.
pub fn reload(path: &std::path::Path, shared: &SharedSnapshot) -> ReloadOutcome {
    match ConfigDoc::read(path) {
        Ok(doc) => apply(doc, shared),
        Err(e) => reject(&e),
    }
}

fn reject(e: &ConfigError) -> ReloadOutcome {
    log::error!("config reload rejected, keeping the running config: {e}");
    crate::metrics::config_reload(false);
    ReloadOutcome::Rejected {
        message: e.to_string(),
        key: e.key().map(str::to_string),
    }
}

/// Compiles a document against the current snapshot (carrying state over) and swaps it in;
/// one that does not compile changes nothing. Settings only a process upgrade applies
/// (listeners, `server`, `admin`, the access log's file) are reported, not applied.
pub fn apply(doc: ConfigDoc, shared: &SharedSnapshot) -> ReloadOutcome {
    let current = shared.load_full();
    let name = doc.name.clone();
    let hash = doc.hash();
    let next = match Snapshot::compile_doc(doc, Some(&current)) {
        Ok((_, next)) => next,
        Err(e) => return reject(&e),
    };
    let listeners = |s: &Snapshot| {
        (
            s.listen.clone(),
            s.tls_listen.clone(),
            s.h2c,
            s.tls.as_ref().map(|t| t.http2),
        )
    };
    if listeners(&next) != listeners(&current) {
        log::warn!(
            "config reload: listen, tls.listen, tls.http2 or h2c changed; listeners change only \
             with a graceful upgrade (systemctl reload apigateway, or start a new process with \
             -u); certificates are reloaded now"
        );
    }
    // Read once at process start: only a graceful upgrade applies them.
    for (section, changed) in [
        ("server", next.server != current.server),
        ("admin", next.admin != current.admin),
        (
            "access_log.path",
            next.access_log.path != current.access_log.path,
        ),
    ] {
        if changed {
            log::warn!(
                "config reload: `{section}` changed; it applies only after a graceful upgrade"
            );
        }
    }
    log::info!(
        "config reloaded from {}: {} routes, {} services",
        name.display(),
        next.routes.routes().len(),
        next.services().len()
    );
    shared.store(Arc::new(next));
    crate::metrics::config_reload(true);
    crate::metrics::set_config_hash(&hash);
    ReloadOutcome::Applied
}

/// Set when SIGQUIT or SIGTERM arrives: the process is handing over or stopping.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process has been told to hand over or stop. Pingora only flags its shutdown
/// when the listeners close (5 s after SIGQUIT); answering `Connection: close` from the
/// signal on moves clients to the new process while the old one still serves them cleanly.
pub fn is_draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Background service reloading the config file on SIGHUP and noticing SIGQUIT/SIGTERM.
/// In fleet mode (no file) SIGHUP changes nothing: etcd's watch applies new revisions.
pub struct ConfigReloader {
    pub path: Option<PathBuf>,
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for ConfigReloader {
    /// Waits for SIGHUP (or shutdown) and reloads on each one.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, hot reload disabled: {e}");
                return;
            }
        };
        // Pingora handles these signals itself; listening too only lets us see them.
        let (mut quit, mut term) =
            match (signal(SignalKind::quit()), signal(SignalKind::terminate())) {
                (Ok(q), Ok(t)) => (q, t),
                _ => {
                    log::error!("cannot listen for SIGQUIT/SIGTERM; hot reload disabled");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = hangup.recv() => match &self.path {
                    Some(path) => {
                        log::info!("SIGHUP: reloading {}", path.display());
                        reload(path, &self.snapshot);
                    }
                    None => log::info!("SIGHUP: the config comes from etcd; nothing to reload"),
                },
                _ = quit.recv() => DRAINING.store(true, std::sync::atomic::Ordering::Relaxed),
                _ = term.recv() => DRAINING.store(true, std::sync::atomic::Ordering::Relaxed),
                _ = shutdown.changed() => return,
            }
        }
    }
}
