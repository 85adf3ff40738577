//! TLS (and HTTP/2) to a service's backends: SNI, trusted CAs, verification, client
//! certificates. Everything is loaded once when the config compiles into a [`PeerTls`];
//! building a peer on the request path only copies `Arc`s.

use crate::invalid::Invalid;
use crate::tls::{read_certs, read_private_key};
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use pingora::utils::tls::{CertKey, WrappedX509};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `services.NAME.tls`: talk TLS to the backends.
#[derive(Debug, Clone, Deserialize, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// Name sent as SNI and checked against the certificate. Default: each backend's host as
    /// written in `backends` (a name or an IP address).
    pub sni: Option<String>,
    /// PEM bundle of the CAs trusted for this service. Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Verify the certificate chain and name (default). `false` is logged as a warning every
    /// time the config loads: it lets anyone on the path impersonate the backend.
    pub verify: bool,
    /// Client certificate chain (PEM) for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            sni: None,
            ca_file: None,
            verify: true,
            client_cert: None,
            client_key: None,
        }
    }
}

impl UpstreamTlsConfig {
    /// The files this section reads (relative to the config file): a reload after any of them
    /// changes must rebuild the pool rather than keep the old material.
    pub fn referenced_files(&self) -> impl Iterator<Item = &Path> {
        [&self.ca_file, &self.client_cert, &self.client_key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// The compiled TLS settings of one service.
#[derive(Clone)]
pub struct PeerTls {
    sni: Option<String>,
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    verify: bool,
    /// Pingora pools TLS connections by address, SNI, client certificate and verification
    /// flags, but not by trusted CAs: without a per-service group key, a service trusting a
    /// private CA would hand its verified connections to one that trusts other roots.
    group_key: u64,
}

impl PeerTls {
    /// Loads the files; `key` is the config key path (`services.billing.tls`).
    pub fn compile(cfg: &UpstreamTlsConfig, base: &Path, key: &str) -> Result<Self, Invalid> {
        let ca = cfg
            .ca_file
            .as_ref()
            .map(|f| {
                let certs = read_certs(&base.join(f))
                    .map_err(|e| Invalid::new(format!("{key}.ca_file"), e.to_string()))?;
                let wrapped: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                    .collect();
                Ok::<_, Invalid>(Arc::<[WrappedX509]>::from(wrapped))
            })
            .transpose()?;
        let client = match (&cfg.client_cert, &cfg.client_key) {
            (None, None) => None,
            (Some(cert), Some(k)) => Some(Arc::new(load_client_cert(
                &base.join(cert),
                &base.join(k),
                key,
            )?)),
            _ => {
                return Err(Invalid::new(
                    key,
                    "client_cert and client_key must be set together",
                ));
            }
        };
        if cfg.sni.as_deref() == Some("") {
            return Err(Invalid::new(
                format!("{key}.sni"),
                "must not be empty (an empty SNI turns verification off)",
            ));
        }
        if !cfg.verify {
            log::warn!(
                "{key}.verify is false: backend certificates are NOT verified, anyone on the \
                 network path can impersonate these backends"
            );
        }
        let group_key = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
            hasher.hash_one((key, cfg))
        };
        Ok(PeerTls {
            group_key,
            sni: cfg.sni.clone(),
            ca,
            client,
            verify: cfg.verify,
        })
    }

    /// A TLS peer for `addr`; `host` is the backend's host as written, the default SNI.
    pub fn peer(&self, addr: std::net::SocketAddr, host: &str, options: PeerOptions) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, String::new());
        peer.options = options;
        self.configure(&mut peer, host);
        peer
    }

    /// Applies SNI (`sni`, else `default_sni`), verification, CAs, client certificate and
    /// pool key to a TLS peer, e.g. a health check's template.
    pub fn configure(&self, peer: &mut HttpPeer, default_sni: &str) {
        peer.sni = self.sni.as_deref().unwrap_or(default_sni).to_string();
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
    }
}

fn load_client_cert(cert: &Path, key_path: &Path, key: &str) -> Result<CertKey, Invalid> {
    let chain =
        read_certs(cert).map_err(|e| Invalid::new(format!("{key}.client_cert"), e.to_string()))?;
    let private = read_private_key(key_path)
        .map_err(|e| Invalid::new(format!("{key}.client_key"), e.to_string()))?;
    Ok(CertKey::new(
        chain.into_iter().map(|c| c.to_vec()).collect(),
        private.secret_der().to_vec(),
    ))
}
