//! The admin listener (default `127.0.0.1:9090`, never the public one): `/metrics` in
//! Prometheus text format, `/healthz` (the process answers), `/readyz` (a config is loaded
//! and the first round of health checks has finished) and `DELETE /cache?url=…` or
//! `?prefix=…` (purge the response cache).

use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// Serves the admin endpoints.
pub struct AdminApp {
    snapshot: SharedSnapshot,
}

impl AdminApp {
    pub fn new(snapshot: SharedSnapshot) -> AdminApp {
        AdminApp { snapshot }
    }

    /// `DELETE /cache?url=URL` removes that URL's entries (every variant and caller);
    /// `?prefix=P` removes every entry whose URL starts with `P`. URLs are written as the
    /// cache keys them: `http://host/path?query`, host in lowercase.
    fn purge(&self, query: Option<&str>) -> (u16, Vec<u8>) {
        let (mut url, mut prefix) = (None, None);
        for pair in query.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            match name {
                "url" => url = Some(value),
                "prefix" => prefix = Some(value),
                _ => {}
            }
        }
        let (target, by_prefix) = match (url, prefix) {
            (Some(u), None) if !u.is_empty() => (u, false),
            (None, Some(p)) if !p.is_empty() => (p, true),
            _ => {
                return error(
                    400,
                    "give exactly one of url= (one URL) or prefix= (every URL starting with it)",
                );
            }
        };
        let snapshot = self.snapshot.load();
        let Some(cache) = snapshot.cache.as_ref() else {
            return error(404, "no route caches responses");
        };
        let purged = cache.store.memory.purge_urls(&target, by_prefix);
        log::info!(
            "cache purge of {} {target:?}: {purged} entries",
            if by_prefix { "prefix" } else { "url" }
        );
        let body = serde_json::json!({ "purged": purged });
        (200, body.to_string().into_bytes())
    }
}

fn error(status: u16, message: &str) -> (u16, Vec<u8>) {
    let body = serde_json::json!({ "error": message, "status": status });
    (status, body.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    /// Answers one admin request; anything else is 404.
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let delete = req.method == Method::DELETE;
        let query = req.uri.query().map(str::to_string);
        let json = "application/json";
        let (status, content_type, body) = match (delete, path.as_str()) {
            (false, "/metrics") => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(),
            ),
            (false, "/healthz") => (200, json, br#"{"status":"ok"}"#.to_vec()),
            (false, "/readyz") if crate::metrics::is_health_checked() => {
                (200, json, br#"{"status":"ready"}"#.to_vec())
            }
            (false, "/readyz") => (
                503,
                json,
                br#"{"status":"starting","reason":"health checks have not run yet"}"#.to_vec(),
            ),
            (true, "/cache") => {
                let (status, body) = self.purge(query.as_deref());
                (status, json, body)
            }
            _ => (404, json, br#"{"error":"Not found","status":404}"#.to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body)
            .expect("static response parts are valid")
    }
}
