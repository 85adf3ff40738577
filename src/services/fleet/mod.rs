//! Fleet mode: the configuration lives in etcd under a prefix, and every gateway of a fleet
//! watches it. `PREFIX/config` holds the same YAML document as the file mode; each node
//! reports what it applied under `PREFIX/nodes/NODE_ID` (kept by a lease, so a node that is
//! gone disappears), and keeps its last good document in a local cache file so it can start
//! while etcd is down.

mod watch;

pub use watch::{ConfigWatcher, NodeState, fleet};

use crate::config::{ConfigDoc, GatewayConfig};
use crate::snapshot::Snapshot;
use etcd_client::{Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting to etcd may take before the node falls back to its cache.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `config_source: {etcd: ...}` of a bootstrap file, or what an `etcd://` URL says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// `host:port` or `http(s)://host:port` of the etcd members.
    pub endpoints: Vec<String>,
    /// The key prefix: the config is at `PREFIX/config`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This node's name under `PREFIX/nodes/` (default: `APIGATEWAY_NODE_ID`, else the host
    /// name).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Where the last good config is kept (default: `APIGATEWAY_CONFIG_CACHE`, else
    /// `/var/lib/apigateway/config-cache.json`).
    #[serde(default)]
    pub cache_file: Option<PathBuf>,
    /// etcd user; the password comes from `password_file` or `APIGATEWAY_ETCD_PASSWORD`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to etcd: the CA to trust, and a client certificate and key.
    #[serde(default)]
    pub tls: Option<EtcdTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn default_prefix() -> String {
    "/apigateway".into()
}

/// Top-level sections a bootstrap file may hold besides `config_source`: what differs
/// between the nodes of a fleet (ports, process settings, the admin listener, the log file).
const LOCAL_SECTIONS: [&str; 4] = ["server", "listen", "admin", "access_log"];

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Etcd(Box<EtcdSource>),
}

impl ConfigSource {
    /// `-c` names a file, an `etcd://HOST:PORT[,HOST:PORT]/PREFIX` URL, or a bootstrap file
    /// whose only section is `config_source:`.
    pub fn from_arg(arg: &Path) -> Result<ConfigSource, String> {
        let text = arg.to_string_lossy();
        if let Some(rest) = text.strip_prefix("etcd://") {
            let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "apigateway"));
            let settings = EtcdSettings {
                endpoints: hosts.split(',').map(str::to_string).collect(),
                prefix: format!("/{}", prefix.trim_end_matches('/')),
                node_id: None,
                cache_file: None,
                username: std::env::var("APIGATEWAY_ETCD_USERNAME").ok(),
                password_file: None,
                tls: None,
            };
            let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            return EtcdSource::new(settings, base).map(|s| ConfigSource::Etcd(Box::new(s)));
        }
        let Ok(raw) = std::fs::read_to_string(arg) else {
            return Ok(ConfigSource::File(arg.to_path_buf()));
        };
        let mut map = match serde_yaml::from_str::<serde_yaml::Value>(&raw) {
            Ok(serde_yaml::Value::Mapping(m)) if m.contains_key("config_source") => m,
            _ => return Ok(ConfigSource::File(arg.to_path_buf())),
        };
        let at = |e: String| format!("{}: {e}", arg.display());
        let source = map.remove("config_source").unwrap_or_default();
        let etcd = source
            .get("etcd")
            .cloned()
            .ok_or_else(|| at("config_source: needs `etcd:`".into()))?;
        let settings: EtcdSettings =
            serde_yaml::from_value(etcd).map_err(|e| at(format!("config_source.etcd: {e}")))?;
        if let Some(key) = map
            .keys()
            .filter_map(|k| k.as_str())
            .find(|k| !LOCAL_SECTIONS.contains(k))
        {
            return Err(at(format!(
                "{key}: a bootstrap file holds config_source and the node's own {}; the rest \
                 comes from etcd",
                LOCAL_SECTIONS.join(", ")
            )));
        }
        let base = arg.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut source = EtcdSource::new(settings, base)?;
        source.local = (!map.is_empty()).then(|| std::sync::Arc::new(map));
        Ok(ConfigSource::Etcd(Box::new(source)))
    }
}

/// A prefix in etcd and how to reach it.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    settings: EtcdSettings,
    /// Where relative paths in the config are resolved (the bootstrap file's directory).
    base: PathBuf,
    pub node_id: String,
    pub cache_file: PathBuf,
    /// The bootstrap file's node-local sections, laid over every document.
    local: Option<std::sync::Arc<serde_yaml::Mapping>>,
}

impl EtcdSource {
    fn new(mut settings: EtcdSettings, base: PathBuf) -> Result<EtcdSource, String> {
        if settings.endpoints.iter().all(|e| e.is_empty()) {
            return Err("config_source.etcd.endpoints: list at least one host:port".into());
        }
        settings.prefix = format!("/{}", settings.prefix.trim_matches('/'));
        let node_id = settings
            .node_id
            .clone()
            .or_else(|| std::env::var("APIGATEWAY_NODE_ID").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "gateway".into());
        let cache_file = settings
            .cache_file
            .clone()
            .map(|f| base.join(f))
            .or_else(|| {
                std::env::var("APIGATEWAY_CONFIG_CACHE")
                    .ok()
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/apigateway/config-cache.json"));
        Ok(EtcdSource {
            settings,
            base,
            node_id,
            cache_file,
            local: None,
        })
    }

    /// The key holding the YAML.
    pub fn config_key(&self) -> String {
        format!("{}/config", self.settings.prefix)
    }

    /// The prefix of the nodes' reports.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.settings.prefix)
    }

    /// How errors and logs name the config: `etcd://HOST:PORT/PREFIX/config`.
    pub fn name(&self) -> PathBuf {
        let host = self
            .settings
            .endpoints
            .first()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_start_matches("https://")
            })
            .unwrap_or("");
        PathBuf::from(format!("etcd://{host}{}", self.config_key()))
    }

    /// A document read from etcd at `revision`.
    pub fn doc(&self, text: String, revision: i64) -> ConfigDoc {
        ConfigDoc {
            name: self.name(),
            base: self.base.clone(),
            text,
            revision: Some(revision),
            local: self.local.clone(),
        }
    }

    /// Connects to etcd with the configured credentials and TLS.
    pub async fn connect(&self) -> Result<Client, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some(user) = &self.settings.username {
            options = options.with_user(user, self.password()?);
        }
        if let Some(tls) = &self.settings.tls {
            options = options.with_tls(self.tls_options(tls)?);
        }
        let endpoints: Vec<String> = self
            .settings
            .endpoints
            .iter()
            .map(|e| match (e.contains("://"), self.settings.tls.is_some()) {
                (true, _) => e.clone(),
                (false, true) => format!("https://{e}"),
                (false, false) => format!("http://{e}"),
            })
            .collect();
        let connecting = Client::connect(endpoints, Some(options));
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
            Ok(client) => client.map_err(|e| format!("cannot reach etcd: {e}")),
            Err(_) => Err("cannot reach etcd: connect timed out".into()),
        }
    }

    fn password(&self) -> Result<String, String> {
        match &self.settings.password_file {
            Some(f) => std::fs::read_to_string(self.base.join(f))
                .map(|p| p.trim().to_string())
                .map_err(|e| format!("config_source.etcd.password_file: {e}")),
            None => std::env::var("APIGATEWAY_ETCD_PASSWORD").map_err(|_| {
                "config_source.etcd.username needs password_file or APIGATEWAY_ETCD_PASSWORD"
                    .to_string()
            }),
        }
    }

    fn tls_options(&self, tls: &EtcdTls) -> Result<TlsOptions, String> {
        let read = |key: &str, f: &Path| {
            std::fs::read(self.base.join(f))
                .map_err(|e| format!("config_source.etcd.tls.{key}: {e}"))
        };
        let mut options = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            options = options.ca_certificate(etcd_client::Certificate::from_pem(read("ca", ca)?));
        }
        match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => {
                options = options.identity(Identity::from_pem(read("cert", c)?, read("key", k)?));
            }
            (None, None) => {}
            _ => return Err("config_source.etcd.tls: give both cert and key".into()),
        }
        Ok(options)
    }

    /// Reads `PREFIX/config` once: `Ok(None)` when the key does not exist.
    pub async fn fetch(&self) -> Result<Option<ConfigDoc>, String> {
        let mut client = self.connect().await?;
        let resp = client.get(self.config_key(), None).await.map_err(|e| {
            let at = self.settings.endpoints.join(",");
            format!(
                "cannot reach etcd at {at} to read {}: {e}",
                self.config_key()
            )
        })?;
        Ok(resp.kvs().first().map(|kv| {
            let text = String::from_utf8_lossy(kv.value()).into_owned();
            self.doc(text, kv.mod_revision())
        }))
    }

    /// [`Self::fetch`] from synchronous code (startup): on its own thread and runtime, since
    /// the server's runtime does not exist yet.
    pub fn fetch_blocking(&self) -> Result<Option<ConfigDoc>, String> {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(self.fetch())
            })
            .join()
            .unwrap_or_else(|_| Err("etcd fetch panicked".into()))
        })
    }

    /// The last good document, from the cache file.
    pub fn cached(&self) -> Result<ConfigDoc, String> {
        let raw = std::fs::read_to_string(&self.cache_file)
            .map_err(|e| format!("no cached config at {}: {e}", self.cache_file.display()))?;
        let cached: Cached = serde_json::from_str(&raw).map_err(|e| {
            format!(
                "cached config {} is unreadable: {e}",
                self.cache_file.display()
            )
        })?;
        Ok(self.doc(cached.text, cached.revision))
    }

    /// Keeps `doc` as the last good config (written whole, then renamed into place).
    pub fn keep(&self, doc: &ConfigDoc) {
        let cached = Cached {
            revision: doc.revision.unwrap_or(0),
            text: doc.text.clone(),
        };
        let tmp = self.cache_file.with_extension("tmp");
        let written = self
            .cache_file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&cached).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &self.cache_file));
        if let Err(e) = written {
            log::warn!(
                "cannot keep the config cache {}: {e}; a restart while etcd is down will fail",
                self.cache_file.display()
            );
        }
    }
}

/// The first config of a node in fleet mode: etcd's, else the cached one (etcd down, or its
/// revision does not compile). Refuses only when neither is usable.
pub fn start(source: &EtcdSource) -> Result<(GatewayConfig, Snapshot, NodeState), String> {
    let key = source.config_key();
    let fetched = match source.fetch_blocking() {
        Ok(Some(doc)) => Ok(doc),
        Ok(None) => {
            return Err(format!(
                "etcd has no config at {key}: put one with `etcdctl put {key} < gateway.yaml`"
            ));
        }
        Err(e) => Err(e),
    };
    let doc = match fetched {
        Ok(doc) => doc,
        Err(e) => {
            let doc = source
                .cached()
                .map_err(|c| format!("{e}, and {c}: cannot start"))?;
            log::warn!(
                "{e}: starting from the cached config (revision {}, {}); the watch keeps trying",
                doc.revision.unwrap_or(0),
                source.cache_file.display()
            );
            doc
        }
    };
    let revision = doc.revision.unwrap_or(0);
    match Snapshot::compile_doc(doc.clone(), None) {
        Ok((cfg, snapshot)) => {
            source.keep(&doc);
            Ok((
                cfg,
                snapshot,
                NodeState::new(&source.node_id, revision, None),
            ))
        }
        Err(e) => {
            let cached = source.cached().map_err(|c| format!("{e} (and {c})"))?;
            let cached_revision = cached.revision.unwrap_or(0);
            let (cfg, snapshot) = Snapshot::compile_doc(cached, None)
                .map_err(|c| format!("{e} (and the cached config: {c})"))?;
            log::error!(
                "etcd revision {revision} refused: {e}; starting from the cached revision \
                 {cached_revision}"
            );
            let error = Some((e.to_string(), e.key().map(str::to_string)));
            let state = NodeState::new(&source.node_id, cached_revision, error);
            Ok((cfg, snapshot, state))
        }
    }
}

#[derive(serde::Serialize, Deserialize)]
struct Cached {
    revision: i64,
    text: String,
}
