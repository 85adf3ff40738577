//! TLS termination (SNI, ALPN h2/http1.1, HSTS, certificate rotation), TLS and HTTP/2 to
//! upstreams (CA, SNI, verification, mutual TLS), h2c, and WebSocket pass-through.
//! Certificates come from a test CA generated per test with rcgen.

mod common;

use common::pki::{LeafFiles, TestCa};
use common::*;
use futures::{SinkExt, StreamExt};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "tls-test-secret-0123456789-abcdefghijklm";

/// A rustls server config for a test upstream: `alpn` offered, client certificates required
/// (and checked against `client_ca`) when given.
fn acceptor(leaf: &LeafFiles, alpn: &[&[u8]], client_ca: Option<&TestCa>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
                .unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(cfg))
}

/// An HTTPS client trusting only `ca`, resolving every name to the gateway's TLS port.
fn https_client(ca: &TestCa, port: u16, names: &[&str], http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    for n in names {
        b = b.resolve(n, SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn presented_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("tls info")
        .to_vec()
}

fn yaml_path(p: &std::path::Path) -> String {
    format!("'{}'", p.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_negotiates_h2_and_http1_and_picks_certificates_by_sni() {
    let up = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway test ca");
    let default = ca.issue(pki.path(), "default", &["localhost"]);
    let api = ca.issue(pki.path(), "api", &["api.example.test"]);
    let wild = ca.issue(pki.path(), "wild", &["*.wild.test"]);
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "tls:\n  listen: ['127.0.0.1:{tls_port}']\n  certificates:\n{}\
         services:\n  a: {{backends: ['{}']}}\n\
         routes:\n  - {{path: /api, service: a}}\n",
        [&default, &api, &wild]
            .iter()
            .map(|l| format!(
                "    - {{cert: {}, key: {}}}\n",
                yaml_path(&l.cert),
                yaml_path(&l.key)
            ))
            .collect::<String>(),
        up.addr
    ));
    let names = ["localhost", "api.example.test", "x.wild.test", "other.test"];

    // HTTP/1.1 by ALPN, certificate chosen by exact name.
    let h1 = https_client(&ca, tls_port, &names, true);
    let resp = h1
        .get(format!("https://api.example.test:{tls_port}/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(presented_cert(&resp), api.der);
    let hsts = resp.headers().get("strict-transport-security").cloned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert!(hsts.is_some(), "HSTS on the TLS listener");

    // HTTP/2 by ALPN, certificate chosen by wildcard.
    let h2 = https_client(&ca, tls_port, &names, false);
    let resp = h2
        .get(format!("https://x.wild.test:{tls_port}/api/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(presented_cert(&resp), wild.der);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/y");

    // The first certificate is the default.
    let resp = h2
        .get(format!("https://localhost:{tls_port}/api/z"))
        .send()
        .await
        .unwrap();
    assert_eq!(presented_cert(&resp), default.der);
    // An unknown name gets the default certificate, which the client must then refuse.
    let err = h2
        .get(format!("https://other.test:{tls_port}/api/z"))
        .send()
        .await
        .expect_err("certificate not valid for other.test");
    assert!(err.is_connect(), "{err:?}");

    // The plaintext listener: no HSTS, proto http.
    let (status, headers, body) = send(client().get(gw.url("/api/p"))).await;
    assert_eq!(status, 200);
    assert!(headers.get("strict-transport-security").is_none());
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    // Plain HTTP sent to the TLS port is not served.
    let raw = raw_request(tls_port, b"GET /api/p HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!raw.contains("200 OK"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_reload_without_restart() {
    let up = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("rotation ca");
    let first = ca.issue(pki.path(), "site", &["localhost"]);
    let tls_port = free_port();
    let body = format!(
        "tls:\n  listen: ['127.0.0.1:{tls_port}']\n  certificates: [{{cert: {}, key: {}}}]\n\
         services:\n  a: {{backends: ['{}']}}\nroutes:\n  - {{path: /api, service: a}}\n",
        yaml_path(&first.cert),
        yaml_path(&first.key),
        up.addr
    );
    let gw = Gateway::start(&body);
    let get = || async {
        let c = https_client(&ca, tls_port, &["localhost"], true);
        let resp = c
            .get(format!("https://localhost:{tls_port}/api/r"))
            .send()
            .await
            .unwrap();
        presented_cert(&resp)
    };
    assert_eq!(get().await, first.der);
    let second = ca.issue(pki.path(), "site", &["localhost"]);
    assert_ne!(first.der, second.der);
    gw.rewrite_config(&format!("{body}# rotated\n"));
    gw.signal("HUP");
    let rotated = eventually(Duration::from_secs(5), || async {
        get().await == second.der
    })
    .await;
    assert!(rotated, "{}", gw.stderr());
}

#[test]
fn tls_config_errors_name_the_key_and_file() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("config ca");
    let a = ca.issue(pki.path(), "a", &["a.test"]);
    let b = ca.issue(pki.path(), "b", &["b.test"]);
    let base = "listen: ['127.0.0.1:0']\nservices:\n  s: {backends: ['127.0.0.1:1']}\nroutes:\n  - {path: /, service: s}\n";
    let cases = [
        (
            format!(
                "tls:\n  listen: ['127.0.0.1:0']\n  certificates: [{{cert: {}, key: {}}}]\n",
                yaml_path(&a.cert),
                yaml_path(&b.key)
            ),
            "tls.certificates[0]: key:",
        ),
        (
            format!(
                "tls:\n  listen: ['127.0.0.1:0']\n  certificates: [{{cert: '{}/missing.crt', key: {}}}]\n",
                pki.path().display(),
                yaml_path(&a.key)
            ),
            "tls.certificates[0]: cert: cannot read",
        ),
        (
            format!(
                "tls:\n  listen: ['127.0.0.1:0']\n  certificates: [{{cert: {}, key: {}}}]\n",
                yaml_path(&a.key),
                yaml_path(&a.key)
            ),
            "tls.certificates[0]: cert: no certificate",
        ),
        (
            "tls:\n  listen: ['127.0.0.1:0']\n  certificates: []\n".to_string(),
            "tls.certificates: at least one certificate",
        ),
        (
            "tls:\n  listen: [':8443']\n  certificates: []\n".to_string(),
            "tls.listen[0]",
        ),
    ];
    for (tls, expected) in cases {
        let (ok, out, _) = check_config(&format!("{base}{tls}"));
        assert!(!ok, "accepted:\n{tls}");
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    let svc = |tls: &str| {
        format!(
            "listen: ['127.0.0.1:0']\nservices:\n  s: {{backends: ['127.0.0.1:1'], tls: {tls}}}\nroutes:\n  - {{path: /, service: s}}\n"
        )
    };
    for (tls, expected) in [
        (
            format!("{{client_cert: {}}}", yaml_path(&a.cert)),
            "services.s.tls: client_cert and client_key must be set together",
        ),
        (
            format!("{{ca_file: '{}/none.pem'}}", pki.path().display()),
            "services.s.tls.ca_file: cannot read",
        ),
        (
            "{sni: ''}".to_string(),
            "services.s.tls.sni: must not be empty",
        ),
    ] {
        let (ok, out, _) = check_config(&svc(&tls));
        assert!(!ok, "accepted: {tls}");
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_are_verified_by_ca_and_sni_and_speak_h2() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("backend ca");
    let ca_file = ca.write(pki.path(), "ca.pem");
    let leaf = ca.issue(pki.path(), "backend", &["backend.test"]);
    let h1 = EchoServer::start_with(
        "h1",
        "127.0.0.1:0",
        Some(acceptor(&leaf, &[b"http/1.1"], None)),
    )
    .await
    .unwrap();
    let h2 = EchoServer::start_with(
        "h2",
        "127.0.0.1:0",
        Some(acceptor(&leaf, &[b"h2", b"http/1.1"], None)),
    )
    .await
    .unwrap();
    let h2c = EchoServer::start("h2c", "127.0.0.1:0").await.unwrap();
    let ca = yaml_path(&ca_file);
    let admin = free_port();
    let check =
        "health_check: {type: http, host: backend.test, interval: 100ms, unhealthy_threshold: 1}";
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n\
         \x20 checked: {{backends: ['{h1}'], {check}, tls: {{ca_file: {ca}}}}}\n\
         \x20 checked_untrusted: {{backends: ['{h1}'], {check}, tls: {{}}}}\n\
         \x20 good: {{backends: ['{h1}'], tls: {{sni: backend.test, ca_file: {ca}}}}}\n\
         \x20 system_roots: {{backends: ['{h1}'], tls: {{sni: backend.test}}}}\n\
         \x20 wrong_name: {{backends: ['{h1}'], tls: {{sni: other.test, ca_file: {ca}}}}}\n\
         \x20 ip_name: {{backends: ['{h1}'], tls: {{ca_file: {ca}}}}}\n\
         \x20 unverified: {{backends: ['{h1}'], tls: {{verify: false}}}}\n\
         \x20 plain_to_tls: {{backends: ['{h1}']}}\n\
         \x20 h2: {{backends: ['{h2}'], http2: true, tls: {{sni: backend.test, ca_file: {ca}}}}}\n\
         \x20 h2_fallback: {{backends: ['{h1}'], http2: true, tls: {{sni: backend.test, ca_file: {ca}}}}}\n\
         \x20 h2c: {{backends: ['{h2c}'], http2: true}}\n\
         routes:\n\
         \x20 - {{path: /good, service: good}}\n\
         \x20 - {{path: /system, service: system_roots}}\n\
         \x20 - {{path: /wrong, service: wrong_name}}\n\
         \x20 - {{path: /ip, service: ip_name}}\n\
         \x20 - {{path: /unverified, service: unverified}}\n\
         \x20 - {{path: /plain, service: plain_to_tls}}\n\
         \x20 - {{path: /h2, service: h2}}\n\
         \x20 - {{path: /fallback, service: h2_fallback}}\n\
         \x20 - {{path: /h2c, service: h2c}}\n\
         \x20 - {{path: /checked, service: checked}}\n\
         \x20 - {{path: /untrusted, service: checked_untrusted}}\n",
        h1 = h1.addr,
        h2 = h2.addr,
        h2c = h2c.addr,
    ));
    assert!(
        gw.stderr()
            .contains("services.unverified.tls.verify is false"),
        "{}",
        gw.stderr()
    );
    let c = client();
    let (status, _, body) = send(c.get(gw.url("/good/x"))).await;
    assert_eq!((status, body["service"].as_str()), (200, Some("h1")));
    assert_eq!(body["version"], "HTTP/1.1");
    // Not signed by a system root, a name the certificate lacks, an IP it lacks: 502.
    for path in ["/system/x", "/wrong/x", "/ip/x"] {
        let (status, _, body) = send(c.get(gw.url(path))).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: JSON error {body}");
    }
    let (status, _, _) = send(c.get(gw.url("/unverified/x"))).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(c.get(gw.url("/plain/x"))).await;
    assert_eq!(status, 502, "plaintext to a TLS backend");
    let (status, _, body) = send(c.get(gw.url("/h2/x"))).await;
    assert_eq!((status, body["version"].as_str()), (200, Some("HTTP/2.0")));
    let (status, _, body) = send(c.get(gw.url("/fallback/x"))).await;
    assert_eq!((status, body["version"].as_str()), (200, Some("HTTP/1.1")));
    let (status, _, body) = send(c.get(gw.url("/h2c/x"))).await;
    assert_eq!((status, body["version"].as_str()), (200, Some("HTTP/2.0")));

    // `http` health checks of a TLS service use its TLS settings: the check with the right CA
    // (and SNI from `health_check.host`) passes, the one trusting system roots fails.
    let series = |service: &str, v: u8| {
        format!(
            "apigateway_backend_healthy{{backend=\"{}\",service=\"{service}\"}} {v}",
            h1.addr
        )
    };
    let checked = eventually(Duration::from_secs(10), || async {
        let m = metrics_text(admin).await;
        m.contains(&series("checked_untrusted", 0)) && m.contains(&series("checked", 1))
    })
    .await;
    assert!(checked, "{}", metrics_text(admin).await);
    let (status, _, body) = send(c.get(gw.url("/untrusted/x"))).await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_upstream_presents_the_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mtls ca");
    let ca_file = yaml_path(&ca.write(pki.path(), "ca.pem"));
    let server = ca.issue(pki.path(), "server", &["backend.test"]);
    let gateway_id = ca.issue(pki.path(), "gateway", &["gateway.test"]);
    let other_ca = TestCa::new("someone else");
    let stranger = other_ca.issue(pki.path(), "stranger", &["gateway.test"]);
    let up = EchoServer::start_with(
        "mtls",
        "127.0.0.1:0",
        Some(acceptor(&server, &[b"http/1.1"], Some(&ca))),
    )
    .await
    .unwrap();
    let gw = Gateway::start(&format!(
        "services:\n\
         \x20 with_cert: {{backends: ['{up}'], tls: {{sni: backend.test, ca_file: {ca_file}, client_cert: {}, client_key: {}}}}}\n\
         \x20 stranger: {{backends: ['{up}'], tls: {{sni: backend.test, ca_file: {ca_file}, client_cert: {}, client_key: {}}}}}\n\
         \x20 without: {{backends: ['{up}'], tls: {{sni: backend.test, ca_file: {ca_file}}}}}\n\
         routes:\n  - {{path: /with, service: with_cert}}\n  - {{path: /stranger, service: stranger}}\n  - {{path: /without, service: without}}\n",
        yaml_path(&gateway_id.cert),
        yaml_path(&gateway_id.key),
        yaml_path(&stranger.cert),
        yaml_path(&stranger.key),
        up = up.addr,
    ));
    let c = client();
    let (status, _, body) = send(c.get(gw.url("/with/x"))).await;
    assert_eq!((status, body["service"].as_str()), (200, Some("mtls")));
    for path in ["/without/x", "/stranger/x"] {
        let resp = c.get(gw.url(path)).send().await;
        let status = resp.map(|r| r.status().as_u16());
        assert_eq!(status.ok(), Some(502), "{path}: {}", gw.stderr());
    }
    assert_eq!(
        up.requests(),
        1,
        "refused handshakes never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_accepts_prior_knowledge_and_http1() {
    let up = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "h2c: true\nservices:\n  a: {{backends: ['{}']}}\nroutes:\n  - {{path: /api, service: a}}\n",
        up.addr
    ));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let resp = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
/// A WebSocket upstream: greets with the `X-User-Id` it received, then echoes text frames.
async fn websocket_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut user = String::from("-");
                let callback =
                    |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                        if let Some(v) = req.headers().get("x-user-id") {
                            user = v.to_str().unwrap_or("?").to_string();
                        }
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                if ws
                    .send(Message::text(format!("hello {user}")))
                    .await
                    .is_err()
                {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_passes_through_with_auth_at_the_handshake() {
    let (ws_addr, _task) = websocket_echo().await;
    let gw = Gateway::start(&format!(
        "services:\n  ws: {{backends: ['{ws_addr}']}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n  token_sources: {{header: true, query: access_token}}\n\
         routes:\n\
         \x20 - {{path: /ws, service: ws, websocket: true, auth: required}}\n\
         \x20 - {{path: /plain, service: ws}}\n"
    ));
    let token = hs256_token(SECRET, serde_json::json!({"sub": "alice"}));
    let ws_url = |path: &str| format!("ws://127.0.0.1:{}{path}", gw.port);

    let (mut ws, resp) =
        tokio_tungstenite::connect_async(ws_url(&format!("/ws/chat?access_token={token}")))
            .await
            .expect("handshake through the gateway");
    assert_eq!(resp.status(), 101);
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.to_text().unwrap(), "hello alice");
    for i in 0..20 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.to_text().unwrap(), format!("ping {i}"));
    }
    ws.close(None).await.unwrap();

    // No token: 401 at the handshake. A route without `websocket: true`: 400.
    for (path, expected) in [("/ws/chat", 401), ("/plain/chat", 400)] {
        match tokio_tungstenite::connect_async(ws_url(path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), expected, "{path}");
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains("\"error\""), "{path}: JSON error, got {body}");
            }
            other => panic!("{path}: expected an HTTP error, got {other:?}"),
        }
    }
}
