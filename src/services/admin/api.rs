//! The JSON admin API: the running config (read, and replaced with compare-and-swap), routes,
//! services with their backends' state, and the fleet's nodes.

use super::{AdminApp, Answer};
use crate::config::{ConfigDoc, ConfigError};
use crate::services::fleet::{self, ConfigSource, EtcdSource};
use crate::services::reload::{ReloadOutcome, reload};
use crate::snapshot::Snapshot;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// How long a PUT in fleet mode waits for this node to apply the new revision.
const APPLY_WAIT: Duration = Duration::from_secs(3);

impl AdminApp {
    /// `GET /admin/config`: the running document, its revision (etcd) and hash.
    pub(super) fn config(&self) -> Answer {
        let snapshot = self.snapshot.load();
        let Some(doc) = snapshot.origin.as_ref() else {
            return Answer::error(404, "the running config has no document");
        };
        Answer::json(
            200,
            json!({
                "source": doc.name.display().to_string(),
                "revision": doc.revision,
                "hash": doc.hash(),
                "yaml": doc.text,
            }),
        )
    }

    /// `PUT /admin/config`: the body is a whole YAML document. It is compiled against the
    /// running config first (400 naming the key, nothing written); then written to etcd
    /// with a compare-and-swap on the revision in `If-Match`, or to the file (its hash in
    /// `If-Match`) and reloaded. 409 when the config changed since the caller read it.
    pub(super) async fn put_config(&self, body: Bytes, expected: Option<String>) -> Answer {
        let Ok(text) = String::from_utf8(body.to_vec()) else {
            return Answer::error(400, "the body must be the YAML document, in UTF-8");
        };
        let doc = match &self.source {
            ConfigSource::File(path) => ConfigDoc {
                name: path.clone(),
                base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                text,
                revision: None,
                local: None,
            },
            ConfigSource::Etcd(etcd) => etcd.doc(text, 0),
        };
        let current = self.snapshot.load_full();
        if let Err(e) = Snapshot::compile_doc(doc.clone(), Some(&current)) {
            return invalid(&e);
        }
        match &self.source {
            ConfigSource::File(path) => self.put_file(path, &doc, expected),
            ConfigSource::Etcd(etcd) => self.put_etcd(etcd, doc, expected).await,
        }
    }

    fn put_file(&self, path: &Path, doc: &ConfigDoc, expected: Option<String>) -> Answer {
        let on_disk = ConfigDoc::read(path).map(|d| d.hash()).unwrap_or_default();
        if let Some(expected) = expected.filter(|e| *e != on_disk) {
            return Answer::json(
                409,
                json!({"error": format!("conflict: the file changed since hash {expected}"),
                       "hash": on_disk, "status": 409}),
            );
        }
        let tmp = path.with_extension("yaml.tmp");
        let written = std::fs::write(&tmp, &doc.text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            return Answer::error(500, &format!("cannot write {}: {e}", path.display()));
        }
        log::info!("admin API: wrote {}", path.display());
        match reload(path, &self.snapshot) {
            ReloadOutcome::Applied => {
                Answer::json(200, json!({"applied": true, "hash": doc.hash()}))
            }
            ReloadOutcome::Rejected { message, .. } => Answer::error(500, &message),
        }
    }

    async fn put_etcd(
        &self,
        etcd: &EtcdSource,
        doc: ConfigDoc,
        expected: Option<String>,
    ) -> Answer {
        let key = etcd.config_key();
        let put = TxnOp::put(key.clone(), doc.text.clone(), None);
        let txn = match expected {
            Some(rev) => {
                let Ok(rev) = rev.parse::<i64>() else {
                    return Answer::error(
                        400,
                        "If-Match must be the revision GET /admin/config gave",
                    );
                };
                Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([put])
                    .or_else([TxnOp::get(key.clone(), None)])
            }
            None => Txn::new().and_then([put]),
        };
        let mut client = match etcd.connect().await {
            Ok(c) => c,
            Err(e) => return Answer::error(502, &e),
        };
        let resp = match client.txn(txn).await {
            Ok(r) => r,
            Err(e) => return Answer::error(502, &format!("etcd: {e}")),
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            let current = client
                .get(key.clone(), None)
                .await
                .ok()
                .and_then(|r| r.kvs().first().map(|kv| kv.mod_revision()));
            return Answer::json(
                409,
                json!({"error": format!("conflict: {key} changed since the revision in If-Match"),
                       "revision": current, "status": 409}),
            );
        }
        log::info!("admin API: wrote {key} at revision {revision}");
        let applied = self.wait_for(revision).await;
        Answer::json(200, json!({"revision": revision, "applied": applied}))
    }

    /// Whether this node runs `revision` within [`APPLY_WAIT`].
    async fn wait_for(&self, revision: i64) -> bool {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        while tokio::time::Instant::now() < deadline {
            let running = self
                .snapshot
                .load()
                .origin
                .as_ref()
                .and_then(|o| o.revision);
            if running >= Some(revision) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// `GET /admin/routes`: each route's name, pattern and what it leads to.
    pub(super) fn routes(&self) -> Answer {
        let snapshot = self.snapshot.load();
        let service = |i: usize| snapshot.service(i).name.clone();
        let routes: Vec<_> = snapshot
            .routes
            .routes()
            .iter()
            .map(|r| {
                let t = &r.target;
                let split: Option<Vec<String>> = t
                    .split
                    .as_ref()
                    .map(|s| s.entries().iter().map(|e| service(e.service)).collect());
                json!({
                    "name": &*r.name,
                    "path": &*r.pattern,
                    "service": t.service.map(service),
                    "split": split,
                    "aggregate": t.aggregate.is_some(),
                    "auth": format!("{:?}", t.policy.mode).to_lowercase(),
                    "roles": t.policy.roles,
                    "rate_limits": t.rate_limits.len(),
                    "cache": t.cache.is_some(),
                    "compression": t.compression.is_some(),
                    "websocket": t.websocket,
                })
            })
            .collect();
        Answer::json(200, json!({ "routes": routes }))
    }

    /// `GET /admin/services`: each service's balancer and backends (health, breaker, load).
    pub(super) fn services(&self) -> Answer {
        let snapshot = self.snapshot.load();
        let services: Vec<_> = snapshot
            .services()
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "load_balancing": p.algorithm(),
                    "backends": p.report(),
                })
            })
            .collect();
        Answer::json(200, json!({ "services": services }))
    }

    /// `GET /admin/nodes`: every node's report under `PREFIX/nodes/` (fleet mode), or this
    /// node's own state.
    pub(super) async fn nodes(&self) -> Answer {
        let ConfigSource::Etcd(etcd) = &self.source else {
            return Answer::error(404, "not in fleet mode: the config comes from a file");
        };
        let this = self.node.as_ref().map(|n| n.report());
        match fleet::fleet(etcd).await {
            Ok(nodes) => Answer::json(200, json!({ "nodes": nodes, "this": this })),
            Err(e) => Answer::json(502, json!({"error": e, "this": this, "status": 502})),
        }
    }
}

/// 400 naming the key path of everything wrong found; nothing was applied.
fn invalid(e: &ConfigError) -> Answer {
    let errors: Vec<serde_json::Value> = match e {
        ConfigError::Invalid {
            key,
            reason,
            line,
            more,
            ..
        } => std::iter::once((key, reason, line))
            .chain(more.iter().map(|(k, r, l)| (k, r, l)))
            .map(|(key, reason, line)| json!({"key": key, "line": line, "message": reason}))
            .collect(),
        other => vec![json!({"key": null, "line": null, "message": other.to_string()})],
    };
    Answer::json(
        400,
        json!({
            "error": "invalid configuration; nothing was applied",
            "errors": errors,
            "status": 400,
        }),
    )
}
