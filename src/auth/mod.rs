//! Authentication: bearer-token extraction, JWT verification, per-route role/scope policy,
//! identity headers for upstreams, and the login endpoint.
//!
//! Runs in `request_filter` right after routing and before anything keyed on the caller, so
//! later phases only ever see an identity that was verified.

pub mod jwks;
pub mod jwt;
pub mod login;
pub mod throttle;

use crate::config::{de_duration, de_opt_duration};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use jwks::{JwksConfig, JwksSource};
use jwt::{ClaimRules, Identity, JwtVerifier, VerifyKey};
use login::{LoginConfig, LoginService, SigningKey};
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The top-level `auth:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static keys, each pinned to one algorithm.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// JWKS key sets (file or URL).
    #[serde(default)]
    pub jwks: Vec<JwksConfig>,
    /// Required `iss` value, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any of), if set; `aud` is then required.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "de_duration")]
    pub leeway: Duration,
    /// Reject tokens valid for longer than this (from now, and from `iat`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_lifetime: Option<Duration>,
    #[serde(default)]
    pub token_sources: TokenSourcesConfig,
    /// Tokens longer than this are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered (bounded; entries end at the token's `exp`).
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Claim holding roles: a string or array, dotted path for nested claims.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Header → claim path sent upstream for verified callers; client copies are always removed.
    #[serde(default)]
    pub identity_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub login: Option<LoginConfig>,
    /// Invalid tokens one client IP may present per period before it is refused unverified.
    #[serde(default)]
    pub invalid_token_limit: throttle::InvalidTokenLimitConfig,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_cache_size() -> usize {
    10_000
}
fn default_roles_claim() -> String {
    "role".into()
}

impl AuthConfig {
    /// Resolves relative file paths against `base` (the config file's directory), so the
    /// config works whatever directory the gateway is started from.
    /// Every file this section reads.
    pub fn referenced_files(&self) -> Vec<&std::path::Path> {
        let mut files: Vec<&std::path::Path> = Vec::new();
        for k in &self.keys {
            for f in [&k.secret_file, &k.public_key_file, &k.private_key_file]
                .into_iter()
                .flatten()
            {
                files.push(f);
            }
        }
        files.extend(self.jwks.iter().filter_map(|j| j.file.as_deref()));
        if let Some(l) = &self.login {
            files.push(&l.users_file);
        }
        files
    }

    pub fn relative_to(mut self, base: &std::path::Path) -> Self {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for k in &mut self.keys {
            k.secret_file.as_mut().map(fix);
            k.public_key_file.as_mut().map(fix);
            k.private_key_file.as_mut().map(fix);
        }
        for j in &mut self.jwks {
            j.file.as_mut().map(fix);
        }
        if let Some(l) = &mut self.login {
            fix(&mut l.users_file);
        }
        self
    }
}

/// Where tokens are looked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSourcesConfig {
    /// `Authorization: Bearer <token>`.
    pub header: bool,
    /// Cookie name carrying the token (removed before forwarding).
    pub cookie: Option<String>,
    /// Query parameter carrying the token (removed before forwarding).
    pub query: Option<String>,
}

impl Default for TokenSourcesConfig {
    fn default() -> Self {
        TokenSourcesConfig {
            header: true,
            cookie: None,
            query: None,
        }
    }
}

/// One `auth.keys[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    pub alg: Algorithm,
    /// HMAC secret inline (demo only), from an environment variable, or from a file.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA/PS, EC, Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// PEM private key, only needed to sign login tokens.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
}

/// Per-route authentication mode.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No token looked at (client identity headers are still removed).
    #[default]
    None,
    /// A token is verified if present; a bad one is still refused.
    Optional,
    /// A valid token is required.
    Required,
}

/// How a route's `scopes` list is matched.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScopeMatch {
    #[default]
    All,
    Any,
}

/// A route's compiled authentication policy.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub mode: AuthMode,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub scope_match: ScopeMatch,
    pub forward_authorization: bool,
}

/// A dotted claim path such as `realm_access.roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub Vec<String>);

impl ClaimPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<String> = s.split('.').map(String::from).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("invalid claim path {s:?}"));
        }
        Ok(ClaimPath(parts))
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// One identity header mapping.
#[derive(Debug, Clone)]
pub struct IdentityHeader {
    pub header: HeaderName,
    pub claim: ClaimPath,
}

/// Why a request was refused by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token where one is required.
    NoToken,
    /// A token was present but is not acceptable.
    InvalidToken,
    /// The token is valid but lacks a required role or scope.
    Forbidden,
    /// The client IP presented too many invalid tokens lately; the token was not verified.
    TooManyInvalidTokens { retry_after: u64 },
}

/// The compiled `auth:` section.
pub struct Auth {
    pub verifier: JwtVerifier,
    sources: TokenSourcesConfig,
    max_token_bytes: usize,
    identity_headers: Vec<HeaderName>,
    pub login: Option<Arc<LoginService>>,
    pub jwks: Vec<Arc<JwksSource>>,
    throttle: Option<throttle::InvalidTokenThrottle>,
}

impl Auth {
    /// Loads keys, key sets and the users file. Errors are (key path, reason).
    pub fn compile(cfg: &AuthConfig) -> Result<Self, (String, String)> {
        let mut keys = Vec::new();
        let mut signing = None;
        let login_kid = cfg.login.as_ref().map(|l| l.signing_key.as_str());
        for (i, k) in cfg.keys.iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            if let Some(kid) = &k.kid
                && cfg.keys[..i].iter().any(|o| o.kid.as_ref() == Some(kid))
            {
                return Err((format!("{key}.kid"), format!("duplicate kid {kid:?}")));
            }
            let (decoding, encoding) = load_key(k, &key)?;
            if login_kid.is_some() && k.kid.as_deref() == login_kid {
                let encoding = encoding.ok_or_else(|| {
                    (
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
            return Err((
                "auth".into(),
                "configure at least one of `keys` or `jwks`".into(),
            ));
        }
        let rules = claim_rules(cfg)?;
        let identity_headers = rules
            .identity_headers
            .iter()
            .map(|h| h.header.clone())
            .collect();
        let login = match &cfg.login {
            Some(l) => {
                let signing = signing.ok_or_else(|| {
                    (
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
            return Err(("auth.max_token_bytes".into(), "must be positive".into()));
        }
        Ok(Auth {
            verifier: JwtVerifier::new(keys, jwks.clone(), rules, cfg.cache_size),
            sources: cfg.token_sources.clone(),
            max_token_bytes: cfg.max_token_bytes,
            identity_headers,
            login,
            jwks,
            throttle: throttle::InvalidTokenThrottle::compile(&cfg.invalid_token_limit)?,
        })
    }

    /// Verifies the caller against a route's policy. `Ok(None)` is an anonymous caller on a
    /// route that allows one. `client_ip` keys the invalid-token throttle.
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
        policy: &RoutePolicy,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Arc<Identity>>, AuthFailure> {
        if policy.mode == AuthMode::None {
            return Ok(None);
        }
        let throttle = self.throttle.as_ref().zip(client_ip);
        let identity = match self.verify_request(req, policy, throttle).await {
            Err(AuthFailure::InvalidToken) => {
                if let Some((throttle, ip)) = throttle {
                    throttle.record_failure(&ip);
                }
                return Err(AuthFailure::InvalidToken);
            }
            other => other?,
        };
        let Some(identity) = identity else {
            return Ok(None);
        };
        if !authorized(&identity, policy) {
            return Err(AuthFailure::Forbidden);
        }
        Ok(Some(identity))
    }

    /// Finds and verifies the token. A throttled IP still gets in with a token verified before
    /// (a cache hit costs no signature check), so one bad client behind a shared address does
    /// not lock out the others.
    async fn verify_request(
        &self,
        req: &RequestHeader,
        policy: &RoutePolicy,
        throttle: Option<(&throttle::InvalidTokenThrottle, IpAddr)>,
    ) -> Result<Option<Arc<Identity>>, AuthFailure> {
        let token = match self.extract_token(req)? {
            Some(t) => t,
            None if policy.mode == AuthMode::Optional => return Ok(None),
            None => return Err(AuthFailure::NoToken),
        };
        if let Some(retry_after) = throttle.and_then(|(t, ip)| t.refused(&ip)) {
            return match self.verifier.cached(&token) {
                Some(identity) => Ok(Some(identity)),
                None => Err(AuthFailure::TooManyInvalidTokens { retry_after }),
            };
        }
        let identity = self.verifier.verify(&token).await.map_err(|e| {
            log::debug!("token refused: {e}");
            AuthFailure::InvalidToken
        })?;
        Ok(Some(identity))
    }

    /// Finds the token: Authorization header first, then cookie, then query parameter.
    fn extract_token<'a>(
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
        req.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| Cow::Borrowed(v.trim_matches('"')))
            })
    }

    fn token_in_query<'a>(&self, req: &'a RequestHeader) -> Option<Cow<'a, str>> {
        let name = self.sources.query.as_deref()?;
        req.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then_some(Cow::Borrowed(v))
        })
    }

    /// Prepares the upstream request: removes client-sent identity headers and token carriers,
    /// then adds the verified identity's headers.
    pub fn apply_upstream(
        &self,
        upstream: &mut RequestHeader,
        identity: Option<&Identity>,
        forward_authorization: bool,
    ) -> pingora::Result<()> {
        for name in &self.identity_headers {
            upstream.remove_header(name);
        }
        if !forward_authorization {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        if let Some(cookie) = &self.sources.cookie {
            strip_cookie(upstream, cookie)?;
        }
        if let Some(identity) = identity {
            for (name, value) in &identity.headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    /// The query string without the token parameter (if tokens may come in the query).
    pub fn strip_query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        let Some(name) = self.sources.query.as_deref() else {
            return Cow::Borrowed(query);
        };
        let is_token = |pair: &&str| pair.split('=').next() == Some(name);
        if !query.split('&').any(|p| is_token(&p)) {
            return Cow::Borrowed(query);
        }
        Cow::Owned(
            query
                .split('&')
                .filter(|p| !is_token(p))
                .collect::<Vec<_>>()
                .join("&"),
        )
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

fn authorized(identity: &Identity, policy: &RoutePolicy) -> bool {
    let roles_ok =
        policy.roles.is_empty() || policy.roles.iter().any(|r| identity.roles.contains(r));
    let has = |s: &String| identity.scopes.contains(s);
    let scopes_ok = policy.scopes.is_empty()
        || match policy.scope_match {
            ScopeMatch::All => policy.scopes.iter().all(has),
            ScopeMatch::Any => policy.scopes.iter().any(has),
        };
    roles_ok && scopes_ok
}

fn claim_rules(cfg: &AuthConfig) -> Result<ClaimRules, (String, String)> {
    let roles_claim =
        ClaimPath::parse(&cfg.roles_claim).map_err(|e| ("auth.roles_claim".to_string(), e))?;
    let mapping = cfg.identity_headers.clone().unwrap_or_else(|| {
        BTreeMap::from([
            ("X-User-Id".to_string(), "sub".to_string()),
            ("X-User-Role".to_string(), cfg.roles_claim.clone()),
        ])
    });
    let mut identity_headers = Vec::new();
    for (header, claim) in mapping {
        let key = format!("auth.identity_headers.{header}");
        let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            (
                key.clone(),
                format!("{header:?} is not a valid header name"),
            )
        })?;
        let claim = ClaimPath::parse(&claim).map_err(|e| (key, e))?;
        identity_headers.push(IdentityHeader {
            header: name,
            claim,
        });
    }
    Ok(ClaimRules {
        issuer: cfg.issuer.clone(),
        audience: cfg.audience.clone(),
        leeway: cfg.leeway,
        max_lifetime: cfg.max_lifetime,
        roles_claim,
        identity_headers,
    })
}

/// Loads one configured key: the verification half, and the signing half when available.
fn load_key(
    k: &KeyConfig,
    key: &str,
) -> Result<(DecodingKey, Option<EncodingKey>), (String, String)> {
    let err = |field: &str, reason: String| (format!("{key}.{field}"), reason);
    if k.alg.family() == AlgorithmFamily::Hmac {
        if k.public_key_file.is_some() || k.private_key_file.is_some() {
            return Err(err(
                "alg",
                format!("{:?} takes a secret, not PEM key files", k.alg),
            ));
        }
        let secret = hmac_secret(k).map_err(|(f, r)| err(f, r))?;
        let min = match k.alg {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            _ => 64,
        };
        if secret.len() < min {
            return Err(err(
                "secret",
                format!(
                    "{:?} needs a secret of at least {min} bytes (RFC 7518 §3.2), got {}",
                    k.alg,
                    secret.len()
                ),
            ));
        }
        return Ok((
            DecodingKey::from_secret(&secret),
            Some(EncodingKey::from_secret(&secret)),
        ));
    }
    if k.secret.is_some() || k.secret_env.is_some() || k.secret_file.is_some() {
        return Err(err(
            "alg",
            format!("{:?} takes PEM key files, not a secret", k.alg),
        ));
    }
    let path = k
        .public_key_file
        .as_ref()
        .ok_or_else(|| err("public_key_file", format!("required for {:?}", k.alg)))?;
    let pem = std::fs::read(path).map_err(|e| {
        err(
            "public_key_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let decoding = match k.alg.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_ed_pem(&pem),
    }
    .map_err(|e| {
        err(
            "public_key_file",
            format!("{}: not a {:?} public key: {e}", path.display(), k.alg),
        )
    })?;
    let encoding = match &k.private_key_file {
        None => None,
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| {
                err(
                    "private_key_file",
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            Some(
                match k.alg.family() {
                    AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                    _ => EncodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| err("private_key_file", format!("{}: {e}", p.display())))?,
            )
        }
    };
    Ok((decoding, encoding))
}

fn hmac_secret(k: &KeyConfig) -> Result<Vec<u8>, (&'static str, String)> {
    match (&k.secret, &k.secret_env, &k.secret_file) {
        (Some(s), None, None) => Ok(s.clone().into_bytes()),
        (None, Some(var), None) => std::env::var(var).map(String::into_bytes).map_err(|_| {
            (
                "secret_env",
                format!("environment variable {var} is not set"),
            )
        }),
        (None, None, Some(path)) => std::fs::read(path)
            .map(|mut b| {
                // Editors and `echo` add a trailing newline that is not part of the secret.
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                b
            })
            .map_err(|e| {
                (
                    "secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        _ => Err((
            "secret",
            "set exactly one of `secret`, `secret_env` or `secret_file`".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(short.0, "auth.keys[0].secret");
        assert!(short.1.contains("at least 32 bytes"), "{}", short.1);
        let empty = load_key(&hs_key(""), "auth.keys[0]").err().unwrap();
        assert_eq!(empty.0, "auth.keys[0].secret");
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
        let auth = Auth::compile(&cfg).unwrap();
        assert_eq!(auth.strip_query("a=1&access_token=x.y.z&b=2"), "a=1&b=2");
        assert_eq!(auth.strip_query("a=1"), "a=1");
    }
}
