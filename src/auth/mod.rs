//! Authentication: bearer-token extraction, JWT verification, per-route role/scope policy,
//! identity headers for upstreams, and the login endpoint.
//!
//! Runs in `request_filter` right after routing and before anything keyed on the caller, so
//! later phases only ever see an identity that was verified.

mod config;
pub mod gate;
pub mod jwks;
pub mod jwt;
mod keys;
pub mod login;

pub use config::{AuthConfig, AuthMode, KeyConfig, ScopeMatch, TokenSourcesConfig};
pub use gate::{AuthFailure, AuthMethod, Gate, RoutePolicy};

use crate::consumer::Consumers;
use crate::header_set::HeaderSet;
use crate::identity::{ClaimPath, Identity};
use crate::invalid::Invalid;
use crate::throttle::InvalidTokenThrottle;
use http::{HeaderName, HeaderValue};
use jwks::JwksSource;
use jwks::VerifyKey;
use jwt::{JwtVerifier, TokenKey};
use keys::{claim_rules, load_key};
use login::{LoginService, SigningKey};
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// One identity header mapping.
#[derive(Debug, Clone)]
pub struct IdentityHeader {
    pub header: HeaderName,
    pub claim: ClaimPath,
}

/// The compiled `auth:` section.
pub struct Auth {
    pub verifier: JwtVerifier,
    sources: TokenSourcesConfig,
    max_token_bytes: usize,
    /// Identity header names and `Authorization`: a client's copies are removed upstream.
    client_identity: HeaderSet,
    /// The bit of `Authorization` in `client_identity`.
    authorization_bit: u64,
    pub login: Option<Arc<LoginService>>,
    pub jwks: Vec<Arc<JwksSource>>,
    throttle: Option<InvalidTokenThrottle>,
}

impl Auth {
    /// Loads keys, key sets and the users file; with `consumers`, tokens whose
    /// `consumer_claim` names a consumer become that consumer. Errors are (key path, reason).
    pub fn compile(cfg: &AuthConfig, consumers: Option<&Arc<Consumers>>) -> Result<Self, Invalid> {
        let mut keys = Vec::new();
        let mut signing = None;
        let login_kid = cfg.login.as_ref().map(|l| l.signing_key.as_str());
        for (i, k) in cfg.keys.iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            if let Some(kid) = &k.kid
                && cfg.keys[..i].iter().any(|o| o.kid.as_ref() == Some(kid))
            {
                return Err(Invalid::new(
                    format!("{key}.kid"),
                    format!("duplicate kid {kid:?}"),
                ));
            }
            let (decoding, encoding) = load_key(k, &key)?;
            if login_kid.is_some() && k.kid.as_deref() == login_kid {
                let encoding = encoding.ok_or_else(|| {
                    Invalid::new(
                        key.clone(),
                        "signs login tokens, so it needs `private_key_file`".to_string(),
                    )
                })?;
                signing = Some(SigningKey {
                    kid: k.kid.clone().unwrap_or_default(),
                    alg: k.alg,
                    key: encoding,
                });
            }
            keys.push(VerifyKey {
                kid: k.kid.clone(),
                alg: k.alg,
                key: decoding,
            });
        }
        let jwks = cfg
            .jwks
            .iter()
            .enumerate()
            .map(|(i, j)| JwksSource::compile(j, &format!("auth.jwks[{i}]")).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() && jwks.is_empty() {
            return Err(Invalid::new(
                "auth",
                "configure at least one of `keys` or `jwks`",
            ));
        }
        let rules = claim_rules(cfg)?;
        let client_identity = HeaderSet::new(
            rules
                .identity_headers
                .iter()
                .map(|h| h.header.clone())
                .chain([http::header::AUTHORIZATION]),
        )
        .map_err(|e| Invalid::new("auth.identity_headers", format!("{e} (with Authorization)")))?;
        let authorization_bit = client_identity
            .names()
            .iter()
            .position(|n| n == http::header::AUTHORIZATION)
            .map_or(0, |i| 1 << i);
        let login = match &cfg.login {
            Some(l) => {
                let signing = signing.ok_or_else(|| {
                    Invalid::new(
                        "auth.login.signing_key".to_string(),
                        format!("no key in auth.keys has kid {:?}", l.signing_key),
                    )
                })?;
                Some(Arc::new(LoginService::compile(
                    l,
                    signing,
                    cfg.issuer.clone(),
                    cfg.audience.first().cloned(),
                    "auth.login",
                )?))
            }
            None => None,
        };
        if cfg.max_token_bytes == 0 {
            return Err(Invalid::new("auth.max_token_bytes", "must be positive"));
        }
        let mut verifier = JwtVerifier::new(keys, jwks.clone(), rules, cfg.cache_size);
        if let Some(consumers) = consumers {
            let claim = ClaimPath::parse(&cfg.consumer_claim)
                .map_err(|e| Invalid::new("auth.consumer_claim", e))?;
            verifier = verifier.with_consumers(claim, consumers.clone());
        }
        Ok(Auth {
            verifier,
            sources: cfg.token_sources.clone(),
            max_token_bytes: cfg.max_token_bytes,
            client_identity,
            authorization_bit,
            login,
            jwks,
            throttle: InvalidTokenThrottle::compile(
                &cfg.invalid_token_limit,
                "auth.invalid_token_limit",
            )?,
        })
    }

    /// The invalid-credential throttle (`auth.invalid_token_limit`), if on.
    pub fn throttle(&self) -> Option<&InvalidTokenThrottle> {
        self.throttle.as_ref()
    }

    /// Verifies a token. A throttled IP still gets in with a token verified before (a cache
    /// hit costs no signature check), so one bad client behind a shared address does not lock
    /// out the others.
    pub(super) async fn verify_token(
        &self,
        token: &str,
        throttle: Option<(&InvalidTokenThrottle, IpAddr)>,
    ) -> Result<Arc<Identity>, AuthFailure> {
        // A token verified before passes whatever the throttle says, so it is looked up first
        // (and the throttle, a shared counter, is only read for tokens that need verifying).
        let key = TokenKey::of(token);
        if let Some(identity) = self.verifier.cached_key(&key) {
            return Ok(identity);
        }
        if let Some(retry_after) = throttle.and_then(|(t, ip)| t.refused(&ip)) {
            return Err(AuthFailure::TooManyInvalidTokens { retry_after });
        }
        self.verifier
            .verify_uncached(token, key)
            .await
            .map_err(|e| {
                log::debug!("token refused: {e}");
                AuthFailure::InvalidToken
            })
    }

    /// Finds the token: Authorization header first, then cookie, then query parameter.
    pub(super) fn extract_token<'a>(
        &self,
        req: &'a RequestHeader,
    ) -> Result<Option<Cow<'a, str>>, AuthFailure> {
        let token = self
            .token_in_header(req)?
            .or_else(|| self.token_in_cookie(req))
            .or_else(|| self.token_in_query(req));
        match token {
            Some(t) if t.len() > self.max_token_bytes => Err(AuthFailure::InvalidToken),
            Some(t) if t.is_empty() => Err(AuthFailure::InvalidToken),
            other => Ok(other),
        }
    }

    fn token_in_header<'a>(
        &self,
        req: &'a RequestHeader,
    ) -> Result<Option<Cow<'a, str>>, AuthFailure> {
        if !self.sources.header {
            return Ok(None);
        }
        let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        // Two Authorization headers are ambiguous: which one did the client mean?
        if values.next().is_some() {
            return Err(AuthFailure::InvalidToken);
        }
        let value = value.to_str().map_err(|_| AuthFailure::InvalidToken)?;
        match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                if token.is_empty() || token.contains(' ') {
                    Err(AuthFailure::InvalidToken)
                } else {
                    Ok(Some(Cow::Borrowed(token)))
                }
            }
            Some(_) => Ok(None),
            None if value.eq_ignore_ascii_case("bearer") => Err(AuthFailure::InvalidToken),
            None => Ok(None),
        }
    }

    fn token_in_cookie<'a>(&self, req: &'a RequestHeader) -> Option<Cow<'a, str>> {
        let name = self.sources.cookie.as_deref()?;
        crate::edge::request_cookie(req, name).map(Cow::Borrowed)
    }

    fn token_in_query<'a>(&self, req: &'a RequestHeader) -> Option<Cow<'a, str>> {
        let name = self.sources.query.as_deref()?;
        req.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then_some(Cow::Borrowed(v))
        })
    }

    /// Removes client-sent identity headers and token carriers from the upstream request.
    pub fn strip_client_copies(
        &self,
        upstream: &mut RequestHeader,
        forward_authorization: bool,
    ) -> pingora::Result<()> {
        let mut remove = self.client_identity.present_in(&upstream.headers);
        if forward_authorization {
            remove &= !self.authorization_bit;
        }
        self.client_identity.remove_from_request(upstream, remove);
        if let Some(cookie) = &self.sources.cookie {
            strip_cookie(upstream, cookie)?;
        }
        Ok(())
    }

    /// The query string without the token parameter (if tokens may come in the query).
    pub fn strip_query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        match self.sources.query.as_deref() {
            Some(name) => crate::edge::without_query_param(Cow::Borrowed(query), name),
            None => Cow::Borrowed(query),
        }
    }
}

fn strip_cookie(upstream: &mut RequestHeader, name: &str) -> pingora::Result<()> {
    let Some(cookie) = upstream
        .headers
        .get(http::header::COOKIE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let kept: Vec<&str> = cookie
        .split(';')
        .map(str::trim)
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        upstream.remove_header(&http::header::COOKIE);
    } else {
        let value = HeaderValue::from_str(&kept.join("; ")).unwrap_or(HeaderValue::from_static(""));
        upstream.insert_header(http::header::COOKIE, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    fn hs_key(secret: &str) -> KeyConfig {
        KeyConfig {
            kid: None,
            alg: Algorithm::HS256,
            secret: Some(secret.into()),
            secret_env: None,
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
        }
    }

    #[test]
    fn weak_or_ambiguous_secrets_are_refused() {
        let short = load_key(&hs_key("too-short"), "auth.keys[0]")
            .err()
            .unwrap();
        assert_eq!(short.key, "auth.keys[0].secret");
        assert!(
            short.reason.contains("at least 32 bytes"),
            "{}",
            short.reason
        );
        let empty = load_key(&hs_key(""), "auth.keys[0]").err().unwrap();
        assert_eq!(empty.key, "auth.keys[0].secret");
        let mut both = hs_key("0123456789abcdef0123456789abcdef");
        both.secret_env = Some("X".into());
        assert!(load_key(&both, "k").is_err());
        let mut hs512 = hs_key("0123456789abcdef0123456789abcdef");
        hs512.alg = Algorithm::HS512;
        assert!(load_key(&hs512, "k").is_err());
    }

    #[test]
    fn query_token_is_stripped_from_forwarded_query() {
        let cfg: AuthConfig = serde_yaml::from_str(
            "keys: [{alg: HS256, secret: 0123456789abcdef0123456789abcdef}]\ntoken_sources: {query: access_token}\n",
        )
        .unwrap();
        let auth = Auth::compile(&cfg, None).unwrap();
        assert_eq!(auth.strip_query("a=1&access_token=x.y.z&b=2"), "a=1&b=2");
        assert_eq!(auth.strip_query("a=1"), "a=1");
    }
}
