//! JWKS key sets from a file or a URL: cached, refreshed on a TTL, refreshed early (at most once
//! per interval, single-flight) when a token names an unknown `kid`, and kept on fetch errors.

use crate::de::de_duration;
use crate::invalid::Invalid;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One `auth.jwks[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// Local JWKS file (read at startup and on every refresh).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `https://` URL (plain `http://` is accepted only for loopback hosts).
    #[serde(default)]
    pub url: Option<String>,
    /// Refresh period.
    #[serde(default = "default_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// Minimum time between two fetches, whatever triggers them.
    #[serde(default = "default_min_interval", deserialize_with = "de_duration")]
    pub min_refresh_interval: Duration,
    /// Fetch timeout.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_min_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A JWKS document larger than this is refused (a real one is a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    Url(String),
}

/// One verification key, pinned to one algorithm.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// A live JWKS key set.
pub struct JwksSource {
    location: Location,
    keys: ArcSwap<HashMap<String, Arc<VerifyKey>>>,
    ttl: Duration,
    min_interval: Duration,
    timeout: Duration,
    /// Serializes fetches so a burst of unknown kids causes one fetch, not many.
    refresh_lock: tokio::sync::Mutex<()>,
    last_attempt: std::sync::Mutex<Option<Instant>>,
    /// Bumped whenever the key set changes, so cached verifications can be invalidated.
    generation: AtomicU64,
}

impl JwksSource {
    /// Builds the source; a file source is loaded now and must be valid. `key` is the key path
    /// for error messages.
    pub fn compile(cfg: &JwksConfig, key: &str) -> Result<Self, Invalid> {
        let location = match (&cfg.file, &cfg.url) {
            (Some(f), None) => Location::File(f.clone()),
            (None, Some(u)) => {
                check_url(u).map_err(|r| Invalid::new(format!("{key}.url"), r))?;
                Location::Url(u.clone())
            }
            _ => {
                return Err(Invalid::new(
                    key.to_string(),
                    "set exactly one of `file` or `url`",
                ));
            }
        };
        if cfg.min_refresh_interval.is_zero() {
            return Err(Invalid::new(
                format!("{key}.min_refresh_interval"),
                "must be positive",
            ));
        }
        let source = JwksSource {
            location,
            keys: ArcSwap::from_pointee(HashMap::new()),
            ttl: cfg.ttl.max(cfg.min_refresh_interval),
            min_interval: cfg.min_refresh_interval,
            timeout: cfg.timeout,
            refresh_lock: tokio::sync::Mutex::new(()),
            last_attempt: std::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        };
        if let Location::File(path) = &source.location {
            let text = std::fs::read(path).map_err(|e| {
                Invalid::new(
                    format!("{key}.file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let keys = parse_jwks(&text).map_err(|e| Invalid::new(format!("{key}.file"), e))?;
            source.keys.store(Arc::new(keys));
        }
        Ok(source)
    }

    /// A known key by kid.
    pub fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.load().get(kid).cloned()
    }

    /// Changes whenever the key set changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn describe(&self) -> String {
        match &self.location {
            Location::File(p) => p.display().to_string(),
            Location::Url(u) => u.clone(),
        }
    }

    /// Called when a token names a kid nobody knows: refetch, unless a fetch happened within
    /// `min_refresh_interval`. Concurrent callers wait for the one fetch in flight.
    /// A scheduled refresh (the background refresher's): fetches and stores the set, and says
    /// how long to wait before the next one (the TTL, or the retry interval after a failure).
    pub async fn refresh_scheduled(&self) -> Duration {
        let _guard = self.refresh_lock.lock().await;
        if self.fetch_and_store().await {
            self.ttl
        } else {
            self.min_interval
        }
    }

    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        if !self.may_fetch() {
            return None;
        }
        let _guard = self.refresh_lock.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(k) = self.key(kid) {
            return Some(k);
        }
        if !self.may_fetch() {
            return None;
        }
        self.fetch_and_store().await;
        self.key(kid)
    }

    fn may_fetch(&self) -> bool {
        let last = *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| t.elapsed() >= self.min_interval)
    }

    /// Fetches now and swaps the key set in on success; on failure keeps the last good keys.
    /// Returns whether the fetch succeeded.
    async fn fetch_and_store(&self) -> bool {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let changed = {
                    let old = self.keys.load();
                    old.len() != keys.len() || keys.keys().any(|k| !old.contains_key(k))
                };
                log::info!("JWKS {}: loaded {} keys", self.describe(), keys.len());
                self.keys.store(Arc::new(keys));
                if changed {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                true
            }
            Err(e) => {
                log::warn!(
                    "JWKS {}: fetch failed, keeping {} known keys: {e}",
                    self.describe(),
                    self.keys.load().len()
                );
                false
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<VerifyKey>>, String> {
        let body = match &self.location {
            Location::File(p) => tokio::fs::read(p).await.map_err(|e| e.to_string())?,
            Location::Url(u) => fetch_url(u, self.timeout).await?,
        };
        parse_jwks(&body)
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = parsed.host().unwrap_or("");
            if matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1") {
                Ok(())
            } else {
                Err(format!(
                    "{url:?}: keys must be fetched over https (plain http only for loopback)"
                ))
            }
        }
        _ => Err(format!("{url:?}: expected an https:// URL")),
    }
}

async fn fetch_url(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    // A client per fetch: fetches are rare (TTL or rate-limited), and a client built inside the
    // running server avoids carrying connection tasks across Pingora's runtimes or a fork.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JWKS document; keys without `kid` or with unsupported parameters are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, Arc<VerifyKey>>, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            log::warn!("JWKS key without kid skipped");
            continue;
        };
        let alg = match jwk
            .common
            .key_algorithm
            .map(|a| a.to_string().parse::<Algorithm>())
        {
            Some(Ok(a)) => a,
            Some(Err(_)) => {
                log::warn!("JWKS key {kid:?}: unsupported alg, skipped");
                continue;
            }
            None => match default_alg(&jwk.algorithm) {
                Some(a) => a,
                None => {
                    log::warn!("JWKS key {kid:?}: no alg and none can be inferred, skipped");
                    continue;
                }
            },
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(
                    kid.clone(),
                    Arc::new(VerifyKey {
                        kid: Some(kid),
                        alg,
                        key,
                    }),
                );
            }
            Err(e) => log::warn!("JWKS key {kid:?} skipped: {e}"),
        }
    }
    Ok(keys)
}

/// The algorithm a JWK without `alg` is used with (RFC 7518 defaults in common deployments).
fn default_alg(params: &AlgorithmParameters) -> Option<Algorithm> {
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_loopback() {
        assert!(check_url("https://idp.example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("ftp://x/jwks").is_err());
    }

    #[test]
    fn parses_rsa_and_ec_keys_and_skips_keyless() {
        let doc = br#"{"keys":[
          {"kty":"RSA","kid":"r1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
          {"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
          {"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["r1"].alg, Algorithm::RS256);
        assert_eq!(keys["e1"].alg, Algorithm::ES256);
    }
}
