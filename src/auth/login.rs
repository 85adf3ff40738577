//! `POST /auth/login`: checks an email and password against a users file of argon2id hashes and
//! answers a signed token. Also `apigateway hash-password`.

use crate::de::de_duration;
use crate::invalid::Invalid;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `auth.login` as written in the YAML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// Path of the endpoint (POST only).
    #[serde(default = "default_path")]
    pub path: String,
    /// YAML file with `users: [{email, password_hash, roles}]`.
    pub users_file: PathBuf,
    /// `kid` of the key (in `auth.keys`) that signs issued tokens.
    pub signing_key: String,
    /// Lifetime of issued tokens.
    #[serde(default = "default_ttl", deserialize_with = "de_duration")]
    pub token_ttl: Duration,
    /// Login attempts allowed per client IP per minute.
    #[serde(default = "default_attempts")]
    pub attempts_per_minute: u32,
}

fn default_path() -> String {
    "/auth/login".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_attempts() -> u32 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    email: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
}

struct User {
    password_hash: String,
    roles: Vec<String>,
}

/// The body a client posts.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub email: Option<String>,
    pub password: Option<String>,
}

/// What a successful login answers.
#[derive(Debug, Serialize)]
pub struct LoginResponse {
    pub token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    roles: &'a [String],
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// A signing key: algorithm, optional kid, and the private half.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub key: EncodingKey,
}

/// The login endpoint's compiled state.
pub struct LoginService {
    pub path: String,
    pub attempts_per_minute: u32,
    users: HashMap<String, User>,
    /// Verified against for unknown users, so they cost the same as a wrong password.
    dummy_hash: String,
    signing: SigningKey,
    token_ttl: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    /// Per-client-IP attempt counter over one-minute windows. pingora-limits' estimator is
    /// fixed-memory and lock-free; its windows are approximate, which is fine for throttling
    /// password guessing (the exact per-client limiter is a separate capability).
    pub attempts: pingora_limits::rate::Rate,
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Malformed JSON or missing fields.
    BadRequest,
    /// Unknown user or wrong password (never says which).
    InvalidCredentials,
}

impl LoginService {
    /// Loads the users file and precomputes the dummy hash. `key` prefixes error key paths.
    pub fn compile(
        cfg: &LoginConfig,
        signing: SigningKey,
        issuer: Option<String>,
        audience: Option<String>,
        key: &str,
    ) -> Result<Self, Invalid> {
        if !cfg.path.starts_with('/') {
            return Err(Invalid::new(format!("{key}.path"), "must start with `/`"));
        }
        if cfg.attempts_per_minute == 0 {
            return Err(Invalid::new(
                format!("{key}.attempts_per_minute"),
                "must be at least 1",
            ));
        }
        let file_key = format!("{key}.users_file");
        let text = std::fs::read_to_string(&cfg.users_file).map_err(|e| {
            Invalid::new(
                file_key.clone(),
                format!("cannot read {}: {e}", cfg.users_file.display()),
            )
        })?;
        let parsed: UsersFile = serde_yaml::from_str(&text).map_err(|e| {
            Invalid::new(
                file_key.clone(),
                format!("{}: {e}", cfg.users_file.display()),
            )
        })?;
        let mut users = HashMap::new();
        for (i, u) in parsed.users.into_iter().enumerate() {
            if let Err(e) = crate::password::check_format(&u.password_hash) {
                return Err(Invalid::new(
                    file_key.clone(),
                    format!(
                        "users[{i}].password_hash is not a PHC hash ({e}); make one with `apigateway hash-password`"
                    ),
                ));
            }
            let email = u.email.to_ascii_lowercase();
            if users
                .insert(
                    email,
                    User {
                        password_hash: u.password_hash,
                        roles: u.roles,
                    },
                )
                .is_some()
            {
                return Err(Invalid::new(
                    file_key.clone(),
                    format!("users[{i}]: duplicate email {:?}", u.email),
                ));
            }
        }
        Ok(LoginService {
            path: cfg.path.clone(),
            attempts_per_minute: cfg.attempts_per_minute,
            users,
            dummy_hash: crate::password::dummy().map_err(|e| Invalid::new(key.to_string(), e))?,
            signing,
            token_ttl: cfg.token_ttl,
            issuer,
            audience,
            attempts: pingora_limits::rate::Rate::new(Duration::from_secs(60)),
        })
    }

    /// Checks credentials and signs a token. CPU-heavy (argon2): call off the event loop.
    pub fn login(&self, body: &[u8]) -> Result<LoginResponse, LoginError> {
        let req: LoginRequest = serde_json::from_slice(body).map_err(|_| LoginError::BadRequest)?;
        let (Some(email), Some(password)) = (req.email, req.password) else {
            return Err(LoginError::BadRequest);
        };
        let email = email.to_ascii_lowercase();
        let user = self.users.get(&email);
        let hash = user.map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = crate::password::matches(hash, &password);
        let user = match (ok, user) {
            (true, Some(u)) => u,
            _ => return Err(LoginError::InvalidCredentials),
        };
        let now = super::jwt::now_secs();
        let exp = now + self.token_ttl.as_secs();
        let claims = IssuedClaims {
            sub: &email,
            email: &email,
            role: user.roles.first().map(String::as_str),
            roles: &user.roles,
            iat: now,
            exp,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        let mut header = Header::new(self.signing.alg);
        header.kid = Some(self.signing.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing.key).map_err(|e| {
            log::error!("signing a login token failed: {e}");
            LoginError::InvalidCredentials
        })?;
        Ok(LoginResponse {
            token,
            token_type: "Bearer",
            expires_in: self.token_ttl.as_secs(),
        })
    }
}

/// Shared handle used by the proxy.
pub type SharedLogin = Arc<LoginService>;

/// Largest login body accepted; a real one is well under 1 KiB.
const MAX_LOGIN_BODY: usize = 16 * 1024;

/// Serves one request to the login path: method check, per-IP throttle, bounded body read,
/// then the argon2 check on the blocking pool so the event loop keeps serving.
pub async fn serve(
    login: &Arc<LoginService>,
    session: &mut pingora::proxy::Session,
    client_ip: Option<std::net::IpAddr>,
) -> Result<bytes::Bytes, crate::errors::GatewayError> {
    use crate::errors::GatewayError;
    if session.req_header().method != http::Method::POST {
        return Err(GatewayError::MethodNotAllowed {
            allow: vec!["POST".into()],
        });
    }
    let ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    if login.attempts.observe(&ip, 1) > login.attempts_per_minute as isize {
        return Err(GatewayError::TooManyLoginAttempts { retry_after: 60 });
    }
    let body = read_body(session, MAX_LOGIN_BODY).await?;
    let service = login.clone();
    let result = tokio::task::spawn_blocking(move || service.login(&body))
        .await
        .map_err(|_| GatewayError::Internal)?;
    match result {
        Ok(answer) => serde_json::to_vec(&answer)
            .map(bytes::Bytes::from)
            .map_err(|_| GatewayError::Internal),
        Err(LoginError::BadRequest) => Err(GatewayError::BadRequest(
            "expected a JSON object with string fields email and password",
        )),
        Err(LoginError::InvalidCredentials) => Err(GatewayError::InvalidCredentials),
    }
}

async fn read_body(
    session: &mut pingora::proxy::Session,
    cap: usize,
) -> Result<Vec<u8>, crate::errors::GatewayError> {
    use crate::errors::GatewayError;
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(GatewayError::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(GatewayError::BadRequest("unreadable request body")),
        }
    }
}
