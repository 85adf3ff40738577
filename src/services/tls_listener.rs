//! TLS listener settings: the certificate is picked from the live snapshot at each handshake,
//! so a reload rotates certificates without a restart.

use crate::snapshot::SharedSnapshot;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Picks the certificate from the current snapshot at each handshake.
pub struct SniResolver {
    pub snapshot: SharedSnapshot,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.snapshot
            .load()
            .tls
            .as_ref()?
            .select(hello.server_name())
    }
}

/// Pingora's rustls listener takes its certificate from a resolver only through settings
/// built with callbacks; ours has nothing to do in them.
struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

/// Listener settings for one TLS address: SNI resolver and ALPN.
pub fn listener_settings(
    snapshot: SharedSnapshot,
    http2: bool,
) -> pingora::Result<pingora::listeners::tls::TlsSettings> {
    let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(NoCallbacks))?;
    settings.set_cert_resolver(Arc::new(SniResolver { snapshot }));
    if http2 {
        settings.enable_h2();
    }
    Ok(settings)
}
