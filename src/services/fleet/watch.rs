//! The watch on `PREFIX/config`: each new revision is compiled next to the running config
//! and swapped in, or refused; the node's report under `PREFIX/nodes/NODE_ID` says which.
//! A lost connection is retried with backoff, and on reconnecting the key is read again, so
//! no revision is missed.

use super::EtcdSource;
use crate::services::reload::{ReloadOutcome, apply};
use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use etcd_client::{Client, EventType, KeyValue, PutOptions, WatchOptions};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a node's report outlives it: the lease is renewed every third of it.
const LEASE_SECONDS: i64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What this node runs, as it reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    pub node: String,
    /// The revision of `PREFIX/config` running now.
    pub revision: i64,
    /// `ok`, or `error` when the newest revision was refused (`error` says why).
    pub status: &'static str,
    pub error: Option<String>,
    /// The key path of the refused revision's error, when it names one.
    pub error_key: Option<String>,
    /// The newest revision seen.
    pub seen_revision: i64,
    pub version: &'static str,
    pub started: String,
}

/// This node's state, shared with the admin API.
pub struct NodeState {
    report: Mutex<NodeReport>,
}

impl NodeState {
    pub fn new(node: &str, revision: i64, error: Option<(String, Option<String>)>) -> NodeState {
        let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let mut report = NodeReport {
            node: node.to_string(),
            revision,
            status: "ok",
            error: None,
            error_key: None,
            seen_revision: revision,
            version: env!("CARGO_PKG_VERSION"),
            started,
        };
        if let Some((e, key)) = error {
            report.status = "error";
            report.error = Some(e);
            report.error_key = key;
        }
        NodeState {
            report: Mutex::new(report),
        }
    }

    pub fn report(&self) -> NodeReport {
        self.report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn update(&self, f: impl FnOnce(&mut NodeReport)) {
        if let Ok(mut r) = self.report.lock() {
            f(&mut r);
        }
    }
}

/// Background service watching the config key.
pub struct ConfigWatcher {
    pub source: Arc<EtcdSource>,
    pub snapshot: SharedSnapshot,
    pub state: Arc<NodeState>,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    /// Watches until shutdown, reconnecting with backoff (250 ms doubling to 10 s).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.session(&mut shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => log::warn!(
                    "etcd {}: {e}; reconnecting in {backoff:?}",
                    self.source.config_key()
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl ConfigWatcher {
    /// One connection: catch up with the key, report, then follow its changes. `Ok` only at
    /// shutdown.
    async fn session(
        &self,
        shutdown: &mut ShutdownWatch,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let mut client = self.source.connect().await?;
        let lease = client
            .lease_grant(LEASE_SECONDS, None)
            .await
            .map_err(|e| format!("lease: {e}"))?
            .id();
        let (mut keeper, mut acks) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("lease keep-alive: {e}"))?;
        let key = self.source.config_key();
        let current = client
            .get(key.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        let revision = current.header().map_or(0, |h| h.revision());
        if let Some(kv) = current.kvs().first() {
            self.on_revision(kv);
        }
        self.publish(&mut client, lease).await?;
        *backoff = Duration::from_millis(250);
        log::info!(
            "etcd: watching {key} from revision {} as node {}",
            revision + 1,
            self.source.node_id
        );
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut watch = client
            .watch(key, Some(options))
            .await
            .map_err(|e| format!("watch: {e}"))?;
        let mut renew = tokio::time::interval(Duration::from_secs(LEASE_SECONDS as u64 / 3));
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let resp = msg.map_err(|e| format!("watch: {e}"))?
                        .ok_or("watch closed by etcd")?;
                    if resp.canceled() {
                        return Err(format!("watch canceled: {}", resp.cancel_reason()));
                    }
                    for event in resp.events() {
                        match (event.event_type(), event.kv()) {
                            (EventType::Put, Some(kv)) => self.on_revision(kv),
                            _ => log::warn!("etcd: the config key was deleted; keeping the running config"),
                        }
                    }
                    self.publish(&mut client, lease).await?;
                }
                _ = renew.tick() => {
                    keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
                    acks.message().await.map_err(|e| format!("lease keep-alive: {e}"))?;
                }
                _ = shutdown.changed() => {
                    let _ = client.lease_revoke(lease).await;
                    return Ok(());
                }
            }
        }
    }

    /// Applies one revision of the key unless it is the one running.
    fn on_revision(&self, kv: &KeyValue) {
        let revision = kv.mod_revision();
        self.state.update(|r| r.seen_revision = revision);
        let running = self
            .snapshot
            .load()
            .origin
            .as_ref()
            .and_then(|o| o.revision);
        if running == Some(revision) {
            return;
        }
        let doc = self
            .source
            .doc(String::from_utf8_lossy(kv.value()).into_owned(), revision);
        log::info!("etcd: revision {revision} of {}", self.source.config_key());
        match apply(doc.clone(), &self.snapshot) {
            ReloadOutcome::Applied => {
                self.source.keep(&doc);
                self.state.update(|r| {
                    r.revision = revision;
                    r.status = "ok";
                    r.error = None;
                    r.error_key = None;
                });
            }
            ReloadOutcome::Rejected { message, key } => self.state.update(|r| {
                r.status = "error";
                r.error = Some(message);
                r.error_key = key;
            }),
        }
    }

    /// Writes this node's report under `PREFIX/nodes/NODE_ID`, tied to the lease.
    async fn publish(&self, client: &mut Client, lease: i64) -> Result<(), String> {
        let report = serde_json::to_string(&self.state.report()).unwrap_or_default();
        let key = format!("{}{}", self.source.nodes_prefix(), self.source.node_id);
        client
            .put(key, report, Some(PutOptions::new().with_lease(lease)))
            .await
            .map(|_| ())
            .map_err(|e| format!("node report: {e}"))
    }
}

/// Reads every node's report under `PREFIX/nodes/`.
pub async fn fleet(source: &EtcdSource) -> Result<Vec<serde_json::Value>, String> {
    let mut client = source.connect().await?;
    let resp = client
        .get(
            source.nodes_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}
