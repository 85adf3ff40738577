//! TLS termination: the `tls:` listener section, certificates chosen by SNI, and certificate
//! rotation on reload.
//!
//! The TLS backend is rustls (Pingora's `rustls` feature): it builds with nothing but a C
//! compiler (for `ring`), where Pingora's `openssl` feature compiles a vendored OpenSSL (perl,
//! make) and `boringssl` needs cmake, a C++ compiler and libclang. rustls only speaks TLS 1.2
//! and 1.3 with AEAD cipher suites, which is the modern profile we want anyway.
//!
//! Certificates live in the compiled [`Snapshot`](crate::snapshot::Snapshot): the resolver
//! reads the current snapshot at every handshake, so a SIGHUP reload that changes the files
//! rotates certificates without dropping a connection. Listener addresses need an upgrade.

use crate::invalid::Invalid;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `tls:` section: HTTPS listeners and their certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Addresses that accept TLS, e.g. `0.0.0.0:8443`.
    pub listen: Vec<String>,
    /// PEM certificate chains (leaf first) and keys. A client's SNI picks the first
    /// certificate valid for that name (wildcards included); the first one is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Offer HTTP/2 through ALPN (`h2`, then `http/1.1`). Default true.
    #[serde(default = "default_true")]
    pub http2: bool,
}

fn default_true() -> bool {
    true
}

/// One certificate chain and its private key, both PEM files (relative to the config file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The loaded certificates of the TLS listeners.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<Arc<CertifiedKey>>,
    /// Whether ALPN offers `h2`.
    pub http2: bool,
}

impl CertStore {
    /// Loads every certificate and key; `key` is the config key path used in errors (`tls`).
    pub fn load(cfg: &TlsConfig, base: &Path, key: &str) -> Result<Self, Invalid> {
        if cfg.certificates.is_empty() {
            return Err(Invalid::new(
                format!("{key}.certificates"),
                "at least one certificate is required",
            ));
        }
        let certs = cfg
            .certificates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                load_certified_key(c, base)
                    .map_err(|e| Invalid::new(format!("{key}.certificates[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore {
            certs,
            http2: cfg.http2,
        })
    }

    /// The certificate for a client's SNI: the first one valid for the name, else the first.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| self.certs.iter().find(|c| valid_for(c, &name)));
        by_name.or(self.certs.first()).cloned()
    }
}

fn valid_for(cert: &CertifiedKey, name: &ServerName<'_>) -> bool {
    cert.cert.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    })
}

fn load_certified_key(c: &CertificateConfig, base: &Path) -> Result<Arc<CertifiedKey>, String> {
    let cert_path = base.join(&c.cert);
    let key_path = base.join(&c.key);
    let chain = read_certs(&cert_path).map_err(|e| format!("cert: {e}"))?;
    let key = read_private_key(&key_path).map_err(|e| format!("key: {e}"))?;
    let provider = crypto_provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        format!(
            "key: unsupported private key in {}: {e}",
            key_path.display()
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        format!(
            "key: {} does not belong to the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// Every certificate of a PEM file; none is an error. Shared with upstream TLS.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in {} (expected PEM `CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file. Shared with upstream TLS.
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The process-wide rustls provider. Pingora installs `ring` when it builds its first TLS
/// config; installing it here first keeps every TLS user (listeners, upstream connectors and
/// config loading) on the same provider.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    pingora::tls::install_default_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .expect("a default crypto provider was just installed")
}
