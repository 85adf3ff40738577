//! The admin listener (default `127.0.0.1:9090`, never the public one): `/metrics` in
//! Prometheus text format, `/healthz` (the process answers) and `/readyz` (a config is loaded
//! and the first round of health checks has finished).

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// Serves the admin endpoints.
pub struct AdminApp;

#[async_trait]
impl ServeHttp for AdminApp {
    /// Answers one admin request; anything but the three paths is 404.
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(),
            ),
            "/healthz" => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" if crate::metrics::is_health_checked() => {
                (200, "application/json", br#"{"status":"ready"}"#.to_vec())
            }
            "/readyz" => (
                503,
                "application/json",
                br#"{"status":"starting","reason":"health checks have not run yet"}"#.to_vec(),
            ),
            _ => (
                404,
                "application/json",
                br#"{"error":"Not found","status":404}"#.to_vec(),
            ),
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
