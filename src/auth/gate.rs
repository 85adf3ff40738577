//! The authentication stage: which credential a request presents among those its route
//! accepts (bearer token, API key, Basic), its verification, then the route's consumer, role
//! and scope requirements.
//!
//! Runs in `request_filter` right after routing (and the network lists), before anything keyed
//! on the caller, so later phases only ever see an identity that was verified.

use super::{Auth, AuthMode, ScopeMatch};
use crate::consumer::Consumers;
use crate::consumer::basic::BasicPair;
use crate::errors::GatewayError;
use crate::identity::Identity;
use crate::throttle::InvalidTokenThrottle;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// A kind of credential a route may accept.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A bearer token (JWT), from the sources of `auth.token_sources`.
    Jwt,
    /// An API key, from the headers (or query parameter) of `consumer_auth.api_key`.
    ApiKey,
    /// `Authorization: Basic` checked against consumers' Basic credentials.
    Basic,
}

/// A route's compiled authentication policy.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub mode: AuthMode,
    /// What the route accepts, in the order its `auth_methods` lists them.
    pub methods: Vec<AuthMethod>,
    /// Only a registered consumer may pass.
    pub require_consumer: bool,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub scope_match: ScopeMatch,
    pub forward_authorization: bool,
}

impl RoutePolicy {
    fn accepts(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method)
    }

    /// Whether the route accepts only tokens: its refusals keep the token wording.
    fn tokens_only(&self) -> bool {
        self.methods == [AuthMethod::Jwt]
    }
}

/// Why a request was refused by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token where one is required (a route accepting only tokens).
    NoToken,
    /// A token was present but is not acceptable.
    InvalidToken,
    /// No credential on a route accepting API keys or Basic credentials.
    NoCredentials,
    /// An API key or Basic pair that is unknown, expired or wrong.
    InvalidCredential,
    /// Two different credentials in one request.
    TwoCredentials,
    /// The caller is valid but no registered consumer, on a route requiring one.
    NotAConsumer,
    /// The caller is valid but lacks a required role or scope.
    Forbidden,
    /// The client IP presented too many invalid credentials lately; this one was not checked.
    TooManyInvalidTokens { retry_after: u64 },
}

/// The credential a request presents.
enum Presented<'a> {
    Token(Cow<'a, str>),
    ApiKey(Cow<'a, str>),
    Basic(&'a str),
}

/// What the authentication stage needs from the snapshot.
pub struct Gate<'a> {
    pub auth: Option<&'a Auth>,
    pub consumers: Option<&'a Consumers>,
}

impl Gate<'_> {
    /// Verifies the caller against a route's policy. `Ok(None)` is an anonymous caller on a
    /// route that allows one; `client_ip` keys the invalid-credential throttle.
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
        policy: &RoutePolicy,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Arc<Identity>>, AuthFailure> {
        if policy.mode == AuthMode::None {
            return Ok(None);
        }
        let Some(presented) = self.presented(req, policy)? else {
            return match policy.mode {
                AuthMode::Optional => Ok(None),
                _ if policy.tokens_only() => Err(AuthFailure::NoToken),
                _ => Err(AuthFailure::NoCredentials),
            };
        };
        let throttle = self
            .auth
            .and_then(Auth::throttle)
            .or_else(|| self.consumers.and_then(Consumers::throttle))
            .zip(client_ip);
        let identity = match self.verify(presented, throttle).await {
            Err(failure @ (AuthFailure::InvalidToken | AuthFailure::InvalidCredential)) => {
                if let Some((throttle, ip)) = throttle {
                    throttle.record_failure(&ip);
                }
                return Err(failure);
            }
            other => other?,
        };
        if policy.require_consumer && identity.consumer.is_none() {
            return Err(AuthFailure::NotAConsumer);
        }
        if !authorized(&identity, policy) {
            return Err(AuthFailure::Forbidden);
        }
        Ok(Some(identity))
    }

    /// The one credential the request presents among those the route accepts.
    fn presented<'r>(
        &self,
        req: &'r RequestHeader,
        policy: &RoutePolicy,
    ) -> Result<Option<Presented<'r>>, AuthFailure> {
        let mut found = None;
        let mut put = |p: Presented<'r>| {
            if found.is_some() {
                return Err(AuthFailure::TwoCredentials);
            }
            found = Some(p);
            Ok(())
        };
        for method in &policy.methods {
            match method {
                AuthMethod::Jwt => {
                    if let Some(t) = self
                        .auth
                        .map(|a| a.extract_token(req))
                        .transpose()?
                        .flatten()
                    {
                        put(Presented::Token(t))?;
                    }
                }
                AuthMethod::ApiKey => {
                    let key = self
                        .consumers
                        .map(|c| c.api_key_in(req))
                        .transpose()
                        .map_err(|_| AuthFailure::TwoCredentials)?
                        .flatten();
                    if let Some(k) = key {
                        put(Presented::ApiKey(k))?;
                    }
                }
                AuthMethod::Basic => {
                    if let Some(b) = basic_token(req)? {
                        put(Presented::Basic(b))?;
                    }
                }
            }
        }
        Ok(found)
    }

    async fn verify(
        &self,
        presented: Presented<'_>,
        throttle: Option<(&InvalidTokenThrottle, IpAddr)>,
    ) -> Result<Arc<Identity>, AuthFailure> {
        let refused = |throttle: Option<(&InvalidTokenThrottle, IpAddr)>| {
            throttle.and_then(|(t, ip)| t.refused(&ip))
        };
        match presented {
            Presented::Token(token) => match self.auth {
                Some(auth) => auth.verify_token(&token, throttle).await,
                None => Err(AuthFailure::InvalidToken),
            },
            // A key is one hash and one lookup, so a known key passes even from a throttled
            // address (a 192-bit key cannot be guessed); only unknown keys meet the throttle.
            Presented::ApiKey(key) => {
                let consumers = self.consumers.ok_or(AuthFailure::InvalidCredential)?;
                match consumers.verify_api_key(&key, super::jwt::now_secs()) {
                    Some(c) => Ok(c.identity.clone()),
                    None => match refused(throttle) {
                        Some(retry_after) => Err(AuthFailure::TooManyInvalidTokens { retry_after }),
                        None => Err(AuthFailure::InvalidCredential),
                    },
                }
            }
            Presented::Basic(token) => {
                let consumers = self.consumers.ok_or(AuthFailure::InvalidCredential)?;
                let pair = BasicPair::decode(token).map_err(|_| AuthFailure::InvalidCredential)?;
                let consumer = match consumers.basic.cached(&pair) {
                    Some(c) => Some(c),
                    None => {
                        if let Some(retry_after) = refused(throttle) {
                            return Err(AuthFailure::TooManyInvalidTokens { retry_after });
                        }
                        consumers.basic.verify(pair).await
                    }
                };
                consumer
                    .and_then(|i| consumers.get(i))
                    .map(|c| c.identity.clone())
                    .ok_or(AuthFailure::InvalidCredential)
            }
        }
    }

    /// The answer to send for a refusal on `policy`'s route, counted in
    /// `apigateway_auth_failures_total`.
    pub fn refusal(&self, failure: AuthFailure, policy: &RoutePolicy) -> GatewayError {
        let what = match policy.methods.as_slice() {
            [AuthMethod::ApiKey] => "API key",
            _ => "credentials",
        };
        let (reason, err) = match failure {
            AuthFailure::NoToken => (
                "no_token",
                GatewayError::Unauthorized {
                    token_present: false,
                },
            ),
            AuthFailure::InvalidToken => (
                "invalid_token",
                GatewayError::Unauthorized {
                    token_present: true,
                },
            ),
            AuthFailure::NoCredentials => (
                "no_credentials",
                GatewayError::MissingCredentials {
                    what,
                    challenges: self.challenges(policy),
                },
            ),
            AuthFailure::InvalidCredential => (
                "invalid_credentials",
                GatewayError::CredentialRefused {
                    what,
                    challenges: self.challenges(policy),
                },
            ),
            AuthFailure::TwoCredentials => {
                ("ambiguous_credentials", GatewayError::AmbiguousCredentials)
            }
            AuthFailure::NotAConsumer => ("not_a_consumer", GatewayError::ConsumerRequired),
            AuthFailure::Forbidden => ("forbidden", GatewayError::Forbidden),
            AuthFailure::TooManyInvalidTokens { retry_after } => (
                "invalid_token_throttled",
                GatewayError::TooManyInvalidTokens { retry_after },
            ),
        };
        crate::metrics::auth_failure(reason);
        err
    }

    /// `WWW-Authenticate` challenges for the schemes the route accepts (API keys have none).
    fn challenges(&self, policy: &RoutePolicy) -> Box<[HeaderValue]> {
        let mut out = Vec::new();
        if policy.accepts(AuthMethod::Jwt) {
            out.push(HeaderValue::from_static(r#"Bearer realm="apigateway""#));
        }
        if policy.accepts(AuthMethod::Basic)
            && let Some(c) = self.consumers
        {
            out.push(c.challenge.clone());
        }
        out.into_boxed_slice()
    }
}

/// The token of `Authorization: Basic <token>`, if that is the scheme. Two `Authorization`
/// headers are ambiguous: which one did the client mean?
fn basic_token(req: &RequestHeader) -> Result<Option<&str>, AuthFailure> {
    let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthFailure::TwoCredentials);
    }
    let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return Ok(None);
    };
    Ok(scheme.eq_ignore_ascii_case("basic").then_some(token.trim()))
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
