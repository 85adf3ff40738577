//! JWT verification: key selection, signature and claim checks, and the verified-token cache.
//!
//! `jsonwebtoken` does the signature and the registered-claim checks; this module adds what it
//! leaves out: `crit` rejection, duplicate-claim rejection, one algorithm per key, maximum
//! lifetime, and a cache so asymmetric verification is paid once per token.

use super::IdentityHeader;
use super::jwks::{JwksSource, VerifyKey};
use crate::consumer::Consumers;
use crate::identity::{ClaimPath, Identity, strings_at};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A token's name in the verified-token cache: its SHA-256, so a forged token can never share
/// an entry with a verified one, and the cache holds 32 bytes per token whatever its length.
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn of(token: &str) -> Self {
        TokenKey(Sha256::digest(token.as_bytes()).into())
    }
}

/// Why a token was refused. Logged at debug level only; the client sees "Invalid token".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed(&'static str),
    CriticalHeader,
    UnsupportedAlgorithm(String),
    UnknownKey,
    Rejected(String),
    LifetimeTooLong,
    BadClaimValue(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::CriticalHeader => f.write_str("token has a `crit` header"),
            TokenError::UnsupportedAlgorithm(a) => write!(f, "algorithm {a:?} is not accepted"),
            TokenError::UnknownKey => f.write_str("no key matches the token's kid/alg"),
            TokenError::Rejected(why) => write!(f, "verification failed: {why}"),
            TokenError::LifetimeTooLong => f.write_str("token lifetime exceeds max_lifetime"),
            TokenError::BadClaimValue(c) => write!(f, "claim {c} cannot be sent as a header"),
        }
    }
}

/// The claim rules shared by every key.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    pub max_lifetime: Option<Duration>,
    pub roles_claim: ClaimPath,
    pub identity_headers: Vec<IdentityHeader>,
}

/// Verifies tokens against static keys and JWKS sources.
pub struct JwtVerifier {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
    jwks: Vec<Arc<JwksSource>>,
    rules: ClaimRules,
    /// Keyed by SHA-256 of the token (a full-width key: no collision can alias two tokens);
    /// the value remembers the JWKS generation it was verified under.
    cache: quick_cache::sync::Cache<[u8; 32], (Arc<Identity>, u64)>,
    /// Consumers and the claim naming one (`auth.consumer_claim`): a token naming a consumer
    /// gets the consumer's groups and headers.
    consumers: Option<(ClaimPath, Arc<Consumers>)>,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl JwtVerifier {
    pub fn new(
        keys: Vec<VerifyKey>,
        jwks: Vec<Arc<JwksSource>>,
        rules: ClaimRules,
        cache_capacity: usize,
    ) -> Self {
        let mut by_kid = HashMap::new();
        let mut without_kid = Vec::new();
        for key in keys {
            let key = Arc::new(key);
            match &key.kid {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => without_kid.push(key),
            }
        }
        JwtVerifier {
            by_kid,
            without_kid,
            jwks,
            rules,
            cache: quick_cache::sync::Cache::new(cache_capacity.max(1)),
            consumers: None,
        }
    }

    /// Maps tokens to consumers through `claim`.
    pub fn with_consumers(mut self, claim: ClaimPath, consumers: Arc<Consumers>) -> Self {
        self.consumers = Some((claim, consumers));
        self
    }

    /// The claim rules (issuer, audience...) this verifier enforces.
    pub fn rules(&self) -> &ClaimRules {
        &self.rules
    }

    /// Verifies a token (already size-checked) and returns the identity it proves.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        // Cache first: only tokens that passed every check below were ever cached.
        let key = TokenKey::of(token);
        match self.cached_key(&key) {
            Some(hit) => Ok(hit),
            None => self.verify_uncached(token, key).await,
        }
    }

    /// Verifies a token the cache does not hold (`key` is its [`TokenKey`]) and caches it.
    pub async fn verify_uncached(
        &self,
        token: &str,
        key: TokenKey,
    ) -> Result<Arc<Identity>, TokenError> {
        let now = now_secs();
        let generation = self.jwks_generation();
        let header = parse_header(token)?;
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| TokenError::UnsupportedAlgorithm(header.alg.clone()))?;
        let candidates = self.candidates(header.kid.as_deref(), alg).await;
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        let mut last = TokenError::UnknownKey;
        for candidate in candidates {
            match self.check(token, &candidate, now) {
                Ok(identity) => {
                    let identity = Arc::new(identity);
                    self.cache.insert(key.0, (identity.clone(), generation));
                    return Ok(identity);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The identity of a token verified before and still valid (not expired, key set
    /// unchanged), without any signature check.
    pub fn cached(&self, token: &str) -> Option<Arc<Identity>> {
        self.cached_key(&TokenKey::of(token))
    }

    /// Like [`JwtVerifier::cached`], for a token whose key is already computed.
    pub fn cached_key(&self, key: &TokenKey) -> Option<Arc<Identity>> {
        self.cache_lookup(&key.0)
    }

    fn cache_lookup(&self, digest: &[u8; 32]) -> Option<Arc<Identity>> {
        let (hit, generation) = self.cache.get(digest)?;
        if hit.expires_at > now_secs() && generation == self.jwks_generation() {
            return Some(hit);
        }
        self.cache.remove(digest);
        None
    }

    /// Keys that may have signed a token with this `kid`/`alg`, refreshing JWKS once if the
    /// kid is unknown everywhere.
    async fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        let pinned = |k: &Arc<VerifyKey>| k.alg == alg;
        match kid {
            Some(kid) => {
                if let Some(k) = self.by_kid.get(kid) {
                    return [k.clone()].into_iter().filter(pinned).collect();
                }
                for source in &self.jwks {
                    if let Some(k) = source.key(kid) {
                        return [k].into_iter().filter(pinned).collect();
                    }
                }
                for source in &self.jwks {
                    if let Some(k) = source.refresh_for_unknown_kid(kid).await {
                        return [k].into_iter().filter(pinned).collect();
                    }
                }
                Vec::new()
            }
            None => self
                .without_kid
                .iter()
                .filter(|k| pinned(k))
                .cloned()
                .collect(),
        }
    }

    fn check(&self, token: &str, key: &VerifyKey, now: u64) -> Result<Identity, TokenError> {
        let validation = self.validation(key.alg);
        let data = jsonwebtoken::decode::<StrictClaims>(token, &key.key, &validation)
            .map_err(|e| TokenError::Rejected(e.to_string()))?;
        let claims = data.claims.0;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if let Some(max) = self.rules.max_lifetime {
            let max = max.as_secs();
            let iat = claims.get("iat").and_then(Value::as_u64);
            if exp.saturating_sub(now) > max || iat.is_some_and(|iat| exp.saturating_sub(iat) > max)
            {
                return Err(TokenError::LifetimeTooLong);
            }
        }
        self.identity(claims, exp)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.rules.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.rules.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.rules.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.rules.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn identity(&self, claims: Map<String, Value>, exp: u64) -> Result<Identity, TokenError> {
        let roles = strings_at(&claims, &self.rules.roles_claim);
        let scopes = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut headers = Vec::with_capacity(self.rules.identity_headers.len());
        for ih in &self.rules.identity_headers {
            let values = strings_at(&claims, &ih.claim);
            if values.is_empty() {
                continue;
            }
            let value = HeaderValue::from_str(&values.join(","))
                .map_err(|_| TokenError::BadClaimValue(ih.claim.to_string()))?;
            headers.push((ih.header.clone(), value));
        }
        let mut identity = Identity {
            subject: claims.get("sub").and_then(Value::as_str).map(String::from),
            roles,
            scopes,
            headers,
            claims,
            expires_at: exp,
            consumer: None,
        };
        if let Some((claim, consumers)) = &self.consumers {
            consumers.attach(&mut identity, claim);
        }
        Ok(identity)
    }

    /// Sum of the JWKS sources' generations: changes whenever any key set changes, so a token
    /// verified with a key that has since been removed is verified again.
    fn jwks_generation(&self) -> u64 {
        self.jwks.iter().map(|s| s.generation()).sum()
    }
}

fn parse_header(token: &str) -> Result<JoseHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    let header: JoseHeader = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("header is not a JOSE object"))?;
    if header.crit.is_some() {
        return Err(TokenError::CriticalHeader);
    }
    Ok(header)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims as a JSON object that rejects duplicate keys: `{"role":"user","role":"admin"}` must
/// not silently become an admin (serde_json's map keeps the last value).
struct StrictClaims(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictClaims;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictClaims, A::Error> {
                let mut map = Map::new();
                while let Some((k, v)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate claim {k:?}")));
                    }
                    map.insert(k, v);
                }
                Ok(StrictClaims(map))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, EncodingKey, Header, encode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(rules: impl FnOnce(&mut ClaimRules)) -> JwtVerifier {
        let mut r = ClaimRules {
            issuer: None,
            audience: vec![],
            leeway: Duration::from_secs(30),
            max_lifetime: None,
            roles_claim: ClaimPath::parse("role").unwrap(),
            identity_headers: vec![],
        };
        rules(&mut r);
        let key = VerifyKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(SECRET),
        };
        JwtVerifier::new(vec![key], vec![], r, 100)
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn accepts_valid_and_reads_roles_and_scopes() {
        let v = verifier(|_| {});
        let t = token(
            serde_json::json!({"sub": "u1", "role": "admin", "scope": "read write", "exp": now_secs() + 60}),
        );
        let id = block(v.verify(&t)).unwrap();
        assert_eq!(id.subject.as_deref(), Some("u1"));
        assert_eq!(id.roles, ["admin"]);
        assert_eq!(id.scopes, ["read", "write"]);
    }

    #[test]
    fn duplicate_claims_and_crit_are_rejected() {
        let v = verifier(|_| {});
        let exp = now_secs() + 60;
        let payload = format!(r#"{{"sub":"u","role":"user","role":"admin","exp":{exp}}}"#);
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(payload);
        let sig = sign_hs256(&format!("{head}.{body}"));
        assert!(matches!(
            block(v.verify(&format!("{head}.{body}.{sig}"))),
            Err(TokenError::Rejected(_))
        ));

        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","crit":["x"],"x":1}"#);
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
        let sig = sign_hs256(&format!("{head}.{body}"));
        assert_eq!(
            block(v.verify(&format!("{head}.{body}.{sig}"))).unwrap_err(),
            TokenError::CriticalHeader
        );
    }

    fn sign_hs256(input: &str) -> String {
        let key = EncodingKey::from_secret(SECRET);
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap()
    }

    #[test]
    fn issuer_and_audience_become_required_when_configured() {
        let v = verifier(|r| {
            r.issuer = Some("https://idp".into());
            r.audience = vec!["api".into(), "other".into()];
        });
        let exp = now_secs() + 60;
        assert!(
            block(v.verify(&token(
                serde_json::json!({"exp": exp, "iss": "https://idp", "aud": ["x", "api"]})
            )))
            .is_ok()
        );
        assert!(block(v.verify(&token(serde_json::json!({"exp": exp, "aud": "api"})))).is_err());
        assert!(
            block(v.verify(&token(
                serde_json::json!({"exp": exp, "iss": "https://idp"})
            )))
            .is_err()
        );
        assert!(
            block(v.verify(&token(
                serde_json::json!({"exp": exp, "iss": "https://evil", "aud": "api"})
            )))
            .is_err()
        );
    }

    #[test]
    fn max_lifetime_is_enforced() {
        let v = verifier(|r| r.max_lifetime = Some(Duration::from_secs(3600)));
        let now = now_secs();
        assert!(block(v.verify(&token(serde_json::json!({"exp": now + 600})))).is_ok());
        assert_eq!(
            block(v.verify(&token(serde_json::json!({"exp": now + 7200})))).unwrap_err(),
            TokenError::LifetimeTooLong
        );
    }

    #[test]
    fn nested_claim_paths() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"realm_access":{"roles":["a","b"]},"n":5}"#).unwrap();
        assert_eq!(
            strings_at(&claims, &ClaimPath::parse("realm_access.roles").unwrap()),
            ["a", "b"]
        );
        assert_eq!(strings_at(&claims, &ClaimPath::parse("n").unwrap()), ["5"]);
        assert!(strings_at(&claims, &ClaimPath::parse("missing.x").unwrap()).is_empty());
    }
}
