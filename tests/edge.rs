//! Edge hygiene through the real gateway, mostly over raw sockets because HTTP clients would
//! normalize the inputs: path-bypass variants, size limits, hop-by-hop headers both ways,
//! spoofed forwarding headers, CONNECT and absolute-form targets, security headers.

mod common;
use common::*;
use serde_json::{Value, json};

const SECRET: &str = "edge-secret-0123456789-abcdefghijklmnop";

fn token(role: &str) -> String {
    hs256_token(SECRET, json!({"sub": "u1", "role": role}))
}

struct Site {
    admin: EchoServer,
    _public: EchoServer,
    gw: Gateway,
}

/// `/api/admin` needs role admin, `/api/public` is open, `/api/users/:id` needs a token.
async fn site(extra: &str) -> Site {
    let admin = EchoServer::start("admin", "127.0.0.1:0").await.unwrap();
    let public = EchoServer::start("public", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  admin: {{backends: ['{}']}}\n  public: {{backends: ['{}']}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n{extra}\
         routes:\n\
         \x20 - {{path: /api/admin, service: admin, auth: required, roles: [admin]}}\n\
         \x20 - {{path: /api/public, service: public}}\n\
         \x20 - {{path: /api/users/:id, service: public, auth: required}}\n\
         \x20 - {{path: /api/small, service: public, max_body_bytes: 16}}\n",
        admin.addr, public.addr
    ));
    Site {
        admin,
        _public: public,
        gw,
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn get(port: u16, target: &str, extra_headers: &str) -> String {
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: t.test\r\n{extra_headers}Connection: close\r\n\r\n"
    );
    raw_request(port, req.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_bypass_variants_never_reach_admin_without_its_auth() {
    let s = site("").await;
    let user = format!("Authorization: Bearer {}\r\n", token("user"));
    let cases = [
        "/api/public/../admin/x",
        "/api/public/./../admin",
        "/api/public/%2e%2e/admin",
        "/api/public/%2E%2E/admin",
        "/api/public/.%2e/admin",
        "/api/public/%2e./admin",
        "/api/public/..%2fadmin",
        "/api/admin%2fx",
        "/api/public/..%5cadmin",
        "/api/public/..\\admin",
        "//api/admin",
        "/api//admin",
        "/./api/admin",
        "/api/admin;x=1",
        "/api/admin/..;/",
        "/api/admin%00",
        "/api/%61dmin",
        "/api/users/..",
        "/api/users/%2e%2e",
    ];
    for path in cases {
        for headers in ["", user.as_str()] {
            let resp = get(s.gw.port, path, headers);
            let status = status_of(&resp);
            assert!(
                [400, 401, 403, 404].contains(&status),
                "{path} with {headers:?} answered {status}: {resp}"
            );
            if status == 400 {
                assert!(resp.contains("application/json"), "{resp}");
            }
        }
    }
    assert_eq!(s.admin.requests(), 0, "a bypass reached the admin service");
    // An admin token goes through on the normalized path, and that same path is forwarded.
    let admin = format!("Authorization: Bearer {}\r\n", token("admin"));
    let resp = get(s.gw.port, "/api/public/%2e%2e/admin/x", &admin);
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(r#""path":"/x""#), "{resp}");
    assert_eq!(s.admin.requests(), 1);
    // Double encoding is decoded at most once: forwarded literally to the public service.
    let resp = get(s.gw.port, "/api/public/%252e%252e/admin", "");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(r#""path":"/%252e%252e/admin""#), "{resp}");
    // Prefix boundaries hold.
    assert_eq!(status_of(&get(s.gw.port, "/api/publicity/x", "")), 404);
    assert_eq!(status_of(&get(s.gw.port, "/API/ADMIN", "")), 404);
    assert_eq!(s.admin.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_uri_headers_and_bodies_get_nginx_like_statuses() {
    let s = site("limits: {max_uri_bytes: 200, max_header_bytes: 600, max_headers: 20}\n").await;
    let long = format!("/api/public/{}", "a".repeat(300));
    let resp = get(s.gw.port, &long, "");
    assert_eq!(status_of(&resp), 414, "{resp}");
    let big = format!("X-Big: {}\r\n", "b".repeat(700));
    assert_eq!(status_of(&get(s.gw.port, "/api/public/x", &big)), 431);
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(status_of(&get(s.gw.port, "/api/public/x", &many)), 431);
    // Content-Length over the route's limit: refused before the body is read.
    let req = "POST /api/small HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\nConnection: close\r\n\r\n12345678901234567";
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert!(resp.contains("Request body too large"), "{resp}");
    // A chunked body is counted while streaming.
    let req = "POST /api/small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 413, "{resp}");
    // Within limits both pass.
    let req = "POST /api/small HTTP/1.1\r\nHost: t\r\nContent-Length: 16\r\nConnection: close\r\n\r\n0123456789abcdef";
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(r#""body_bytes":16"#), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let s = site("").await;
    let headers = "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Normal: kept\r\n";
    let req = format!("GET /api/public/x?hop=1 HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 200, "{resp}");
    let body: Value = serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let up = body["headers"].as_object().unwrap();
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            !up.contains_key(gone),
            "{gone} reached the upstream: {up:?}"
        );
    }
    assert_eq!(up["x-normal"], "kept");
    let head = resp[..resp.find("\r\n\r\n").unwrap()].to_ascii_lowercase();
    let names: Vec<&str> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split(':').next())
        .collect();
    for gone in [
        "x-internal",
        "keep-alive",
        "proxy-connection",
        "server",
        "x-powered-by",
    ] {
        assert!(!names.contains(&gone), "{gone} reached the client:\n{head}");
    }
    assert!(head.contains("x-kept: yes"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
    let s = site("trusted_proxies: ['127.0.0.2']\n").await;
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: https\r\nX-Original-URL: /api/admin\r\n";
    let resp = get(s.gw.port, "/api/public/x", spoof);
    let body: Value = serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "t.test");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("forwarded").is_none() && h.get("x-original-url").is_none(),
        "{h}"
    );
    // From the trusted proxy, the chain is kept and extended; the client is the forwarded one.
    let c = client_from("127.0.0.2");
    let (_, _, body) = send(
        c.get(s.gw.url("/api/public/x"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "for=203.0.113.9"),
    )
    .await;
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.2");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["forwarded"], "for=203.0.113.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_absolute_form_cannot_make_an_open_proxy() {
    let s = site("").await;
    let target = s.admin.addr;
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 405, "{resp}");
    // Absolute-form naming the admin service's address: routed by the configured routes only
    // (here: /api/admin, which needs its token), never to the named address.
    let req = format!(
        "GET http://{target}/api/admin HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 401, "{resp}");
    let req = format!(
        "GET http://{target}/elsewhere HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_of(&raw_request(s.gw.port, req.as_bytes())), 404);
    // A Host that disagrees with the absolute-form authority is refused (by Pingora's parser).
    let req =
        "GET http://a.test/api/public/x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw_request(s.gw.port, req.as_bytes())), 400);
    let req =
        "GET http://a.test/api/public/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let resp = raw_request(s.gw.port, req.as_bytes());
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(r#""host":"a.test""#), "{resp}");
    assert!(resp.contains(r#""path":"/x""#), "{resp}");
    assert_eq!(s.admin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_every_response_with_route_overrides() {
    let public = EchoServer::start("public", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  public: {{backends: ['{}']}}\n\
         security_headers:\n  headers: {{Content-Security-Policy: \"default-src 'none'\"}}\n\
         routes:\n\
         \x20 - {{path: /a, service: public}}\n\
         \x20 - {{path: /b, service: public, security_headers: {{headers: {{X-Frame-Options: SAMEORIGIN}}, hide: []}}}}\n\
         \x20 - {{path: /c, service: public, security_headers: {{enabled: false}}}}\n",
        public.addr
    ));
    let c = client();
    for path in ["/a/x?hop=1", "/nowhere"] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cross-origin-opener-policy"], "same-origin");
        assert_eq!(h["cross-origin-resource-policy"], "same-origin");
        assert_eq!(h["content-security-policy"], "default-src 'none'");
        assert!(h.get("server").is_none() && h.get("x-powered-by").is_none());
        // Plain HTTP listener: no HSTS.
        assert!(h.get("strict-transport-security").is_none());
    }
    let r = c.get(gw.url("/b/x?hop=1")).send().await.unwrap();
    assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
    assert_eq!(r.headers()["server"], "echo/1.0");
    let r = c.get(gw.url("/c/x")).send().await.unwrap();
    assert!(r.headers().get("x-content-type-options").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_that_is_not_plain_digits_is_refused_and_closes() {
    // Pingora 0.9.1's parser refuses these itself (0.8 accepted `+5` and `-0`); the gateway
    // re-checks them anyway (`edge::check_framing`, unit-tested), so either way: 400, the
    // connection closed, and the bytes after the ambiguous body never parsed as a request.
    let s = site("").await;
    for cl in ["+5", "-0", "5,6", " 0x5", "5_0"] {
        let req = format!(
            "POST /api/public/x HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\nhelloGET /api/admin HTTP/1.1\r\nHost: t\r\n\r\n"
        );
        let resp = raw_request(s.gw.port, req.as_bytes());
        let status = status_of(&resp);
        assert!(
            status == 400,
            "Content-Length {cl:?} answered {status}: {resp}"
        );
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{resp}"
        );
        assert_eq!(
            resp.matches("HTTP/1.1 ").count(),
            1,
            "a second request was answered: {resp}"
        );
    }
    // Plain digits pass.
    let req = "POST /api/public/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(status_of(&raw_request(s.gw.port, req.as_bytes())), 200);
    assert_eq!(s.admin.requests(), 0);
}
