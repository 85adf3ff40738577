//! JWT helpers for the authentication tests: tokens are minted here with the keys in
//! tests/fixtures (never by the gateway), and the gateway config that trusts those keys.
#![allow(dead_code)]

use super::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
pub const ISSUER: &str = "https://issuer.test";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "user-1", "role": "user", "iss": ISSUER, "aud": "api",
                       "iat": now(), "exp": now() + 300});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("keys/{name}"))).unwrap()
}

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec256.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

pub fn kid_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "hs",
        Algorithm::RS256 => "rs",
        Algorithm::PS256 => "ps",
        Algorithm::ES256 => "es",
        _ => "ed",
    }
}

/// A properly signed token.
pub fn mint(alg: Algorithm, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid_for(alg).into());
    jsonwebtoken::encode(&h, claims, &encoding_key(alg)).unwrap()
}

/// A token built by hand: any header and payload text, signed with `key` as `alg` (or not).
pub fn raw(header: &str, payload: &str, sign: Option<(Algorithm, &EncodingKey)>) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = match sign {
        Some((alg, key)) => jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{input}.{sig}")
}

pub fn auth_config(upstream: &EchoServer) -> String {
    format!(
        "services:
  api: {{backends: ['{up}']}}
auth:
  keys:
    - {{kid: hs, alg: HS256, secret: {SECRET}}}
    - {{alg: HS256, secret: {SECRET}}}
    - {{kid: rs, alg: RS256, public_key_file: {rsa}}}
    - {{kid: ps, alg: PS256, public_key_file: {rsa}}}
    - {{kid: es, alg: ES256, public_key_file: {ec}}}
    - {{kid: ed, alg: EdDSA, public_key_file: {ed}}}
  issuer: {ISSUER}
  audience: [api, other]
  leeway: 30s
  max_lifetime: 1d
  max_token_bytes: 4096
  token_sources: {{header: true, cookie: session, query: access_token}}
  identity_headers: {{X-User-Id: sub, X-User-Role: role}}
routes:
  - {{path: /open, service: api}}
  - {{path: /maybe, service: api, auth: optional}}
  - {{path: /user, service: api, auth: required}}
  - {{path: /admin, service: api, auth: required, roles: [admin]}}
  - {{path: /scoped-all, service: api, auth: required, scopes: [read, write]}}
  - {{path: /scoped-any, service: api, auth: required, scopes: [read, write], scope_match: any}}
  - {{path: /fwd, service: api, auth: required, forward_authorization: true}}
",
        up = upstream.addr,
        rsa = fixture("keys/rsa.pub.pem"),
        ec = fixture("keys/ec256.pub.pem"),
        ed = fixture("keys/ed25519.pub.pem"),
    )
}

pub async fn get(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(req).await
}
