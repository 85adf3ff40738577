//! Loading the configured keys and claim rules when the `auth:` section is compiled.

use super::IdentityHeader;
use super::config::{AuthConfig, KeyConfig};
use super::jwt::ClaimRules;
use crate::identity::ClaimPath;
use crate::invalid::Invalid;
use http::HeaderName;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use std::collections::BTreeMap;

pub(super) fn claim_rules(cfg: &AuthConfig) -> Result<ClaimRules, Invalid> {
    let roles_claim = ClaimPath::parse(&cfg.roles_claim)
        .map_err(|e| Invalid::new("auth.roles_claim".to_string(), e))?;
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
            Invalid::new(
                key.clone(),
                format!("{header:?} is not a valid header name"),
            )
        })?;
        let claim = ClaimPath::parse(&claim).map_err(|e| Invalid::new(key, e))?;
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
pub(super) fn load_key(
    k: &KeyConfig,
    key: &str,
) -> Result<(DecodingKey, Option<EncodingKey>), Invalid> {
    let err = |field: &str, reason: String| Invalid::new(format!("{key}.{field}"), reason);
    if k.alg.family() == AlgorithmFamily::Hmac {
        if k.public_key_file.is_some() || k.private_key_file.is_some() {
            return Err(err(
                "alg",
                format!("{:?} takes a secret, not PEM key files", k.alg),
            ));
        }
        let secret = hmac_secret(k).map_err(|e| e.within(key))?;
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

fn hmac_secret(k: &KeyConfig) -> Result<Vec<u8>, Invalid> {
    match (&k.secret, &k.secret_env, &k.secret_file) {
        (Some(s), None, None) => Ok(s.clone().into_bytes()),
        (None, Some(var), None) => std::env::var(var).map(String::into_bytes).map_err(|_| {
            Invalid::new(
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
                Invalid::new(
                    "secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        _ => Err(Invalid::new(
            "secret",
            "set exactly one of `secret`, `secret_env` or `secret_file`".to_string(),
        )),
    }
}
