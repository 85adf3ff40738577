//! The admin listener (default `127.0.0.1:9090`, never the public one). Open: `/metrics`
//! (Prometheus), `/healthz`, `/readyz` and the status page at `/`. Guarded (the bearer token
//! of `admin.token_file`/`token_env`, or loopback clients only when there is none): the JSON
//! admin API under `/admin/` (`api.rs`) and `DELETE /cache` (purge).

mod api;

use crate::services::fleet::{ConfigSource, NodeState};
use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The status page: one static file, its script talking only to the admin API.
const STATUS_PAGE: &str = include_str!("page.html");
/// The largest request body (a config document) the admin API reads.
const MAX_BODY: usize = 4 << 20;

/// What `POST /admin/explain` asks: the proxy layer explains, this layer only serves it.
#[async_trait]
pub trait Explain: Send + Sync {
    /// What the gateway would do with this request head.
    async fn explain(&self, req: pingora::http::RequestHeader) -> serde_json::Value;
}

/// Serves the admin endpoints.
pub struct AdminApp {
    explainer: Option<Arc<dyn Explain>>,
    snapshot: SharedSnapshot,
    source: ConfigSource,
    /// This node's fleet state, in etcd mode.
    node: Option<Arc<NodeState>>,
    /// SHA-256 of the admin token, when one is set (the token itself is not kept).
    token_hash: Option<[u8; 32]>,
}

/// An answer: status and JSON (or other) body.
pub(super) struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    pub(super) fn json(status: u16, value: serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    pub(super) fn error(status: u16, message: &str) -> Answer {
        Self::json(
            status,
            serde_json::json!({ "error": message, "status": status }),
        )
    }
}

impl AdminApp {
    pub fn new(
        snapshot: SharedSnapshot,
        source: ConfigSource,
        node: Option<Arc<NodeState>>,
        token: Option<String>,
        explainer: Option<Arc<dyn Explain>>,
    ) -> AdminApp {
        use sha2::{Digest, Sha256};
        AdminApp {
            explainer,
            snapshot,
            source,
            node,
            token_hash: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// With a token: the request must carry it (401). Without: loopback clients only (403).
    fn authorize(&self, session: &ServerSession) -> Result<(), Answer> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let Some(expected) = &self.token_hash else {
            let loopback = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| a.ip().is_loopback());
            return match loopback {
                true => Ok(()),
                false => Err(Answer::error(
                    403,
                    "without admin.token_file or admin.token_env the admin API answers loopback \
                     clients only",
                )),
            };
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        match presented {
            Some(h) if bool::from(h.as_slice().ct_eq(expected)) => Ok(()),
            _ => Err(Answer::error(
                401,
                "send the admin token as Authorization: Bearer TOKEN",
            )),
        }
    }

    /// `DELETE /cache?url=URL` removes that URL's entries (every variant and caller);
    /// `?prefix=P` removes every entry whose URL starts with `P`. URLs are written as the
    /// cache keys them: `http://host/path?query`, host in lowercase.
    fn purge(&self, query: Option<&str>) -> Answer {
        let (mut url, mut prefix) = (None, None);
        for (name, value) in form_pairs(query) {
            match name.as_str() {
                "url" => url = Some(value),
                "prefix" => prefix = Some(value),
                _ => {}
            }
        }
        let (target, by_prefix) = match (url, prefix) {
            (Some(u), None) if !u.is_empty() => (u, false),
            (None, Some(p)) if !p.is_empty() => (p, true),
            _ => {
                return Answer::error(
                    400,
                    "give exactly one of url= (one URL) or prefix= (every URL starting with it)",
                );
            }
        };
        let snapshot = self.snapshot.load();
        let Some(cache) = snapshot.cache.as_ref() else {
            return Answer::error(404, "no route caches responses");
        };
        let purged = cache.store.memory.purge_urls(&target, by_prefix);
        log::info!(
            "cache purge of {} {target:?}: {purged} entries",
            if by_prefix { "prefix" } else { "url" }
        );
        Answer::json(200, serde_json::json!({ "purged": purged }))
    }

    async fn route(&self, session: &mut ServerSession) -> Answer {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let query = req.uri.query().map(str::to_string);
        match (&method, path.as_str()) {
            (&Method::GET, "/") => Answer {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: STATUS_PAGE.as_bytes().to_vec(),
            },
            (&Method::GET, "/metrics") => Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: crate::metrics::render(),
            },
            (&Method::GET, "/healthz") => Answer::json(200, serde_json::json!({"status": "ok"})),
            (&Method::GET, "/readyz") if crate::metrics::is_health_checked() => {
                Answer::json(200, serde_json::json!({"status": "ready"}))
            }
            (&Method::GET, "/readyz") => Answer::json(
                503,
                serde_json::json!({"status": "starting", "reason": "health checks have not run yet"}),
            ),
            (_, "/cache") | (_, "/admin") => self.guarded(session, &method, &path, query).await,
            (_, p) if p.starts_with("/admin/") => {
                self.guarded(session, &method, &path, query).await
            }
            _ => Answer::error(404, "Not found"),
        }
    }

    async fn guarded(
        &self,
        session: &mut ServerSession,
        method: &Method,
        path: &str,
        query: Option<String>,
    ) -> Answer {
        if let Err(refused) = self.authorize(session) {
            return refused;
        }
        match (method, path) {
            (&Method::DELETE, "/cache") => self.purge(query.as_deref()),
            (&Method::GET, "/admin/config") => self.config(),
            (&Method::PUT, "/admin/config") => match read_body(session).await {
                Ok(body) => {
                    let expected = session
                        .req_header()
                        .headers
                        .get(http::header::IF_MATCH)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.trim_matches('"').to_string());
                    self.put_config(body, expected).await
                }
                Err(a) => a,
            },
            (&Method::GET, "/admin/routes") => self.routes(),
            (&Method::GET, "/admin/services") => self.services(),
            (&Method::GET, "/admin/nodes") => self.nodes().await,
            (&Method::POST, "/admin/explain") => match read_body(session).await {
                Ok(body) => self.explain(&body).await,
                Err(a) => a,
            },
            _ => Answer::error(404, "Not found"),
        }
    }
}

impl AdminApp {
    /// `POST /admin/explain` with `{"method": "GET", "url": "/api/users/42", "headers":
    /// {"Authorization": "Bearer …"}}` (method defaults to GET).
    async fn explain(&self, body: &[u8]) -> Answer {
        let Some(explainer) = &self.explainer else {
            return Answer::error(404, "explain is not available here");
        };
        let asked: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Answer::error(400, &format!("the body must be JSON: {e}")),
        };
        let method = asked["method"].as_str().unwrap_or("GET");
        let Some(url) = asked["url"].as_str() else {
            return Answer::error(400, "give the request's url (a path, or a full URL)");
        };
        let headers: Vec<(String, String)> = asked["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        match request_head(method, url, &headers) {
            Ok(req) => Answer::json(200, explainer.explain(req).await),
            Err(e) => Answer::error(400, &e),
        }
    }
}

/// A request head from a method, a URL (path or absolute) and headers; the URL's host
/// becomes `Host` unless one is given.
pub fn request_head(
    method: &str,
    url: &str,
    headers: &[(String, String)],
) -> Result<pingora::http::RequestHeader, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = pingora::http::RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| format!("method {method:?}: {e}"))?;
    if let Some(authority) = uri.authority() {
        req.insert_header(http::header::HOST, authority.as_str())
            .map_err(|e| e.to_string())?;
    }
    for (name, value) in headers {
        req.insert_header(name.clone(), value.as_str())
            .map_err(|e| format!("header {name:?}: {e}"))?;
    }
    Ok(req)
}

/// The request body, up to [`MAX_BODY`].
async fn read_body(session: &mut ServerSession) -> Result<Bytes, Answer> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(Answer::error(413, "the body is over 4 MiB"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.into()),
            Err(e) => return Err(Answer::error(400, &format!("cannot read the body: {e}"))),
        }
    }
}

/// `name=value` pairs of a query, values percent-decoded.
fn form_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            (name.to_string(), value)
        })
}

#[async_trait]
impl ServeHttp for AdminApp {
    /// Answers one admin request.
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let answer = self.route(session).await;
        Response::builder()
            .status(answer.status)
            .header("content-type", answer.content_type)
            .header("content-length", answer.body.len())
            .header("cache-control", "no-store")
            .body(answer.body)
            .expect("static response parts are valid")
    }
}
