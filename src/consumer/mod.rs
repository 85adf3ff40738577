//! Consumers: the applications and partners calling the API, identified by an API key, Basic
//! credentials or a token claim, each with groups (acting as roles), upstream headers, and its
//! own rate limits and quotas.
//!
//! Compiled once per config into [`Consumers`]; every consumer's identity is built then, so a
//! request with a valid key costs a hash, a map lookup and an `Arc` clone.

pub mod basic;
mod config;
pub mod key;

pub use config::{
    ApiKeyConfig, ConsumerAuthConfig, ConsumerConfig, ConsumersFile, QuotaConfig, QuotaPeriod,
};

use crate::header_set::HeaderSet;
use crate::identity::{ClaimPath, ConsumerTag, Identity, strings_at};
use crate::invalid::Invalid;
use crate::throttle::InvalidTokenThrottle;
use basic::BasicDirectory;
use http::{HeaderName, HeaderValue};
use key::KeyIndex;
use pingora::http::RequestHeader;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// One compiled consumer.
#[derive(Debug)]
pub struct Consumer {
    pub id: Arc<str>,
    /// Where it is configured (`consumers[2]`, or the consumers file and index), for errors.
    pub source: String,
    /// The identity of a caller that presented this consumer's key or Basic credentials.
    pub identity: Arc<Identity>,
    /// Headers describing the consumer upstream: id, username, groups, its own headers.
    headers: Vec<(HeaderName, HeaderValue)>,
    groups: Vec<String>,
    /// Its `rate_limits` policy names, resolved against the limiter by the snapshot.
    pub rate_limits: Vec<String>,
    pub quotas: Vec<QuotaConfig>,
}

/// Two API keys in one request (two headers, or a header and the query parameter).
#[derive(Debug, PartialEq, Eq)]
pub struct TwoKeys;

/// The compiled consumers and how their credentials are read.
pub struct Consumers {
    list: Vec<Consumer>,
    by_id: HashMap<String, usize>,
    keys: KeyIndex,
    pub basic: BasicDirectory,
    key_headers: Vec<HeaderName>,
    key_query: Option<String>,
    forward_credentials: bool,
    /// `Basic realm="…", charset="UTF-8"`.
    pub challenge: HeaderValue,
    /// Consumer header names (and API key headers unless forwarded): a client's copies are
    /// removed before forwarding, on every route.
    client_copies: HeaderSet,
    throttle: Option<InvalidTokenThrottle>,
}

impl Consumers {
    /// Compiles `entries`, each with the key path its errors name (`consumers[2]`, or the
    /// consumers file and its index).
    pub fn compile(
        entries: &[(String, &ConsumerConfig)],
        cfg: &ConsumerAuthConfig,
    ) -> Result<Self, Invalid> {
        let names = HeaderNames::compile(cfg)?;
        let basic = BasicDirectory::new(cfg.basic.cache_size, cfg.basic.cache_ttl)
            .map_err(|e| Invalid::new("consumer_auth.basic", e))?;
        let mut this = Consumers {
            list: Vec::with_capacity(entries.len()),
            by_id: HashMap::new(),
            keys: KeyIndex::default(),
            basic,
            key_headers: names.keys.clone(),
            key_query: cfg.api_key.query.clone().filter(|q| !q.is_empty()),
            forward_credentials: cfg.forward_credentials,
            challenge: HeaderValue::from_str(&format!(
                "Basic realm=\"{}\", charset=\"UTF-8\"",
                cfg.basic.realm
            ))
            .ok()
            .filter(|_| !cfg.basic.realm.contains('"'))
            .ok_or_else(|| {
                Invalid::new(
                    "consumer_auth.basic.realm",
                    "must be printable text without quotes",
                )
            })?,
            client_copies: HeaderSet::default(),
            throttle: InvalidTokenThrottle::compile(
                &cfg.invalid_credential_limit,
                "consumer_auth.invalid_credential_limit",
            )?,
        };
        let mut extra_names = Vec::new();
        for (path, c) in entries {
            let index = this.list.len();
            let mut consumer = compile_consumer(c, index, &names).map_err(|e| e.within(path))?;
            consumer.source = path.clone();
            if this.by_id.insert(c.id.clone(), index).is_some() {
                return Err(Invalid::new(
                    format!("{path}.id"),
                    format!("consumer id {:?} is used twice", c.id),
                ));
            }
            this.add_credentials(c, index, path)?;
            extra_names.extend(consumer.headers.iter().map(|(n, _)| n.clone()));
            this.list.push(consumer);
        }
        let credential_names = if cfg.forward_credentials {
            Vec::new()
        } else {
            names.keys.clone()
        };
        this.client_copies = HeaderSet::new(
            [names.id, names.username, names.groups]
                .into_iter()
                .chain(extra_names)
                .chain(credential_names),
        )
        .map_err(|e| {
            Invalid::new(
                "consumers",
                format!("{e} (consumer headers and API key headers)"),
            )
        })?;
        Ok(this)
    }

    fn add_credentials(
        &mut self,
        c: &ConsumerConfig,
        index: usize,
        path: &str,
    ) -> Result<(), Invalid> {
        for (i, k) in c.api_keys.iter().enumerate() {
            let at = format!("{path}.api_keys[{i}]");
            let expires_at = k
                .expires
                .as_deref()
                .map(key::parse_instant)
                .transpose()
                .map_err(|e| Invalid::new(format!("{at}.expires"), e))?;
            if let Some(created) = &k.created {
                key::parse_instant(created)
                    .map_err(|e| Invalid::new(format!("{at}.created"), e))?;
            }
            self.keys
                .insert(&k.hash, index, expires_at, &format!("{at}.hash"))?;
        }
        if let Some(b) = &c.basic {
            crate::password::check_format(&b.password_hash).map_err(|e| {
                Invalid::new(
                    format!("{path}.basic.password_hash"),
                    format!(
                        "not an argon2 PHC string ({e}); make one with `apigateway hash-password`"
                    ),
                )
            })?;
            if b.username.is_empty() || b.username.contains(':') {
                return Err(Invalid::new(
                    format!("{path}.basic.username"),
                    "must be non-empty and without ':' (RFC 7617)",
                ));
            }
            if !self.basic.insert(&b.username, &b.password_hash, index) {
                return Err(Invalid::new(
                    format!("{path}.basic.username"),
                    format!("{:?} is used by another consumer", b.username),
                ));
            }
        }
        Ok(())
    }

    /// The consumer at `index` (from a [`ConsumerTag`]).
    pub fn get(&self, index: usize) -> Option<&Consumer> {
        self.list.get(index)
    }

    /// The consumer with this id.
    pub fn by_id(&self, id: &str) -> Option<&Consumer> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    /// All consumers, in config order.
    pub fn all(&self) -> &[Consumer] {
        &self.list
    }

    /// The failure throttle to use when there is no `auth:` section.
    pub fn throttle(&self) -> Option<&InvalidTokenThrottle> {
        self.throttle.as_ref()
    }

    /// The API key a request carries, from the configured headers or query parameter.
    pub fn api_key_in<'a>(&self, req: &'a RequestHeader) -> Result<Option<Cow<'a, str>>, TwoKeys> {
        let mut found: Option<Cow<'a, str>> = None;
        let mut put = |v: Cow<'a, str>| match &found {
            Some(f) if *f != v => Err(TwoKeys),
            _ => {
                found = Some(v);
                Ok(())
            }
        };
        for name in &self.key_headers {
            for value in req.headers.get_all(name) {
                // A key that is not visible ASCII cannot be one `new-key` made: count it as a
                // (wrong) key rather than as none, so it is refused, not ignored.
                put(value
                    .to_str()
                    .map_or(Cow::Borrowed("\u{0}"), |s| Cow::Borrowed(s.trim())))?;
            }
        }
        if let (Some(param), Some(query)) = (&self.key_query, req.uri.query()) {
            for pair in query.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && k == param
                {
                    let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                    put(v)?;
                }
            }
        }
        Ok(found)
    }

    /// The consumer owning a presented key, unless the key is unknown or expired (the caller
    /// answers both alike).
    pub fn verify_api_key(&self, presented: &str, now: u64) -> Option<&Consumer> {
        let stored = self.keys.lookup(presented)?;
        if stored.expires_at.is_some_and(|at| now >= at) {
            return None;
        }
        self.list.get(stored.consumer)
    }

    /// Makes a verified token's identity that of the consumer its `claim` names, if any:
    /// the consumer's groups join its roles and the consumer's headers its headers.
    pub fn attach(&self, identity: &mut Identity, claim: &ClaimPath) {
        let Some(c) = strings_at(&identity.claims, claim)
            .first()
            .and_then(|id| self.by_id(id))
        else {
            return;
        };
        for g in &c.groups {
            if !identity.roles.contains(g) {
                identity.roles.push(g.clone());
            }
        }
        identity.headers.extend(c.headers.iter().cloned());
        identity.consumer = c.identity.consumer.clone();
    }

    /// Removes a client's copies of consumer headers (and its API key headers and Basic
    /// credentials unless `forward_credentials`), on every route.
    pub fn strip_client_copies(&self, upstream: &mut RequestHeader) {
        self.client_copies.strip_request(upstream);
        if !self.forward_credentials
            && upstream
                .headers
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| {
                    v.as_bytes()
                        .get(..6)
                        .is_some_and(|s| s.eq_ignore_ascii_case(b"basic "))
                })
        {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
    }

    /// The query string without the API key parameter (unless credentials are forwarded).
    pub fn strip_query<'a>(&self, query: Cow<'a, str>) -> Cow<'a, str> {
        match self
            .key_query
            .as_deref()
            .filter(|_| !self.forward_credentials)
        {
            Some(name) => crate::edge::without_query_param(query, name),
            None => query,
        }
    }
}

/// The header names of `consumer_auth`, parsed.
struct HeaderNames {
    id: HeaderName,
    username: HeaderName,
    groups: HeaderName,
    keys: Vec<HeaderName>,
}

impl HeaderNames {
    fn compile(cfg: &ConsumerAuthConfig) -> Result<Self, Invalid> {
        let name = |text: &str, key: String| {
            HeaderName::from_bytes(text.trim().as_bytes())
                .map_err(|_| Invalid::new(key, format!("{text:?} is not a header name")))
        };
        let h = &cfg.headers;
        let keys = cfg
            .api_key
            .headers
            .iter()
            .enumerate()
            .map(|(i, t)| name(t, format!("consumer_auth.api_key.headers[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HeaderNames {
            id: name(&h.id, "consumer_auth.headers.id".into())?,
            username: name(&h.username, "consumer_auth.headers.username".into())?,
            groups: name(&h.groups, "consumer_auth.headers.groups".into())?,
            keys,
        })
    }
}

fn compile_consumer(
    c: &ConsumerConfig,
    index: usize,
    names: &HeaderNames,
) -> Result<Consumer, Invalid> {
    let value = |text: &str, key: &str| {
        HeaderValue::from_str(text)
            .map_err(|_| Invalid::new(key, format!("{text:?} cannot be sent in a header")))
    };
    if c.id.is_empty() {
        return Err(Invalid::new("id", "must not be empty"));
    }
    let mut headers = vec![(names.id.clone(), value(&c.id, "id")?)];
    if let Some(u) = &c.username {
        headers.push((names.username.clone(), value(u, "username")?));
    }
    if !c.groups.is_empty() {
        headers.push((names.groups.clone(), value(&c.groups.join(","), "groups")?));
    }
    for (n, v) in &c.headers {
        let key = format!("headers.{n}");
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| Invalid::new(key.clone(), format!("{n:?} is not a header name")))?;
        headers.push((name, value(v, &key)?));
    }
    for (i, q) in c.quotas.iter().enumerate() {
        if q.requests == 0 {
            return Err(Invalid::new(
                format!("quotas[{i}].requests"),
                "must be at least 1",
            ));
        }
        if q.period.is_none() {
            return Err(Invalid::new(
                format!("quotas[{i}].period"),
                "required: `day` or `month`",
            ));
        }
    }
    let id: Arc<str> = Arc::from(c.id.as_str());
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(c.id));
    claims.insert("consumer".into(), json!(c.id));
    if let Some(u) = &c.username {
        claims.insert("username".into(), json!(u));
    }
    claims.insert("groups".into(), Value::from(c.groups.clone()));
    let identity = Identity {
        subject: Some(c.id.clone()),
        roles: c.groups.clone(),
        scopes: Vec::new(),
        headers: headers.clone(),
        claims,
        expires_at: u64::MAX,
        consumer: Some(ConsumerTag {
            id: id.clone(),
            index,
        }),
    };
    Ok(Consumer {
        id,
        source: String::new(),
        identity: Arc::new(identity),
        headers,
        groups: c.groups.clone(),
        rate_limits: c.rate_limits.clone(),
        quotas: c.quotas.clone(),
    })
}

#[cfg(test)]
mod tests;
