//! Request/response transforms and CORS through the real gateway: every header, query and JSON
//! body operation, framing after a rewrite, compressed upstreams, HEAD/204, CRLF in templated
//! values, preflights, and the same policies on aggregate answers.

mod common;
use common::*;
use serde_json::{Value, json};

const SECRET: &str = "transform-secret-0123456789-abcdefghijk";

fn token(claims: Value) -> String {
    hs256_token(SECRET, claims)
}

async fn setup(routes: &str, extra: &str) -> (EchoServer, Gateway) {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n{extra}routes:\n{routes}",
        up.addr
    ));
    (up, gw)
}

const HEADER_ROUTE: &str = "  - path: /h/:id
    service: api
    auth: optional
    request:
      headers:
        remove: [x-drop]
        rename: {x-old: x-new}
        set: {x-user: '{claim.sub}', x-team: '{claim.team}', x-item: 'item-{id}', x-rid: '{request_id}', x-ip: '{client_ip}'}
        add: {x-default: d, x-present: added}
        append: {x-multi: two}
      query:
        remove: [secret]
        rename: {q: search}
        set: {page: '{id}'}
        add: {lang: en}
    response:
      headers:
        remove: [x-kept]
        set: {x-served-by: gateway}
        add: {cache-control: no-cache}
        append: {x-multi: b}
";

#[tokio::test]
async fn header_and_query_operations_on_request_and_response() {
    let (_up, gw) = setup(HEADER_ROUTE, "").await;
    let c = client();
    let r = c
        .get(gw.url("/h/7?q=x&secret=s&page=1&flag&hop=1"))
        .header(
            "authorization",
            format!("Bearer {}", token(json!({"sub": "alice"}))),
        )
        .header("x-drop", "1")
        .header("x-old", "o")
        .header("x-present", "mine")
        .header("x-multi", "one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rh = r.headers().clone();
    let body: Value = r.json().await.unwrap();
    let h = &body["headers"];
    assert!(h.get("x-drop").is_none() && h.get("x-old").is_none(), "{h}");
    assert_eq!(h["x-new"], "o");
    assert_eq!(h["x-user"], "alice");
    assert_eq!(h["x-item"], "item-7");
    assert_eq!(h["x-rid"], rh["x-request-id"].to_str().unwrap());
    assert_eq!(h["x-ip"], "127.0.0.1");
    assert_eq!(h["x-default"], "d");
    assert_eq!(h["x-present"], "mine");
    assert_eq!(h["x-multi"], json!(["one", "two"]));
    assert_eq!(body["query"], "search=x&flag&hop=1&page=7&lang=en");
    assert_eq!(rh["x-served-by"], "gateway");
    assert_eq!(rh["cache-control"], "no-cache");
    assert!(rh.get("x-kept").is_none());
    // Anonymous caller on `auth: optional`: the claim-based header is skipped, not empty.
    let (_, _, body) = send(c.get(gw.url("/h/8"))).await;
    assert!(body["headers"].get("x-user").is_none(), "{body}");
    assert_eq!(body["headers"]["x-item"], "item-8");
}

#[tokio::test]
async fn crlf_in_a_claim_or_parameter_never_reaches_a_header() {
    let (up, gw) = setup(HEADER_ROUTE, "").await;
    let c = client();
    // (`sub` with CR/LF is already refused by auth, which derives identity headers from it.)
    let evil = token(json!({"sub": "eve", "team": "x\r\nX-Admin: 1"}));
    let (status, _, body) = send(
        c.get(gw.url("/h/1"))
            .header("authorization", format!("Bearer {evil}")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("x-team"), "{body}");
    assert_eq!(up.requests(), 0, "the request reached the upstream");
    // A parameter cannot carry CR/LF: it stays percent-encoded in the header.
    let (status, _, body) = send(c.get(gw.url("/h/a%0d%0aX-Admin:%201"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-item"], "item-a%0D%0AX-Admin:%201");
    assert!(body["headers"].get("x-admin").is_none());
}

const BODY_ROUTES: &str = "  - path: /b
    service: api
    request:
      body:
        remove: [is_admin]
        rename: {name: user.name}
        set: {source: gateway}
        add: {tier: free}
        max_body_bytes: 200
    response:
      body:
        remove: [headers]
        rename: {service: backend}
        set: {transformed: true}
      headers:
        set: {x-transformed: yes}
  - path: /products
    service: api
    response:
      body: {rename: {service: origin}}
      headers: {add: {x-catalog: v1}}
";

#[tokio::test]
async fn json_bodies_are_rewritten_with_correct_framing() {
    let (_up, gw) = setup(BODY_ROUTES, "").await;
    let c = client();
    let r = c
        .post(gw.url("/b/x"))
        .json(&json!({"name": "n", "is_admin": true, "tier": "gold"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-transformed"], "yes");
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    let body: Value = r.json().await.unwrap();
    assert!(body.get("headers").is_none(), "{body}");
    assert_eq!(body["backend"], "api");
    assert_eq!(body["transformed"], true);
    let sent: Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"tier": "gold", "user": {"name": "n"}, "source": "gateway"})
    );
    // The upstream got a correctly framed (chunked) body of the new length.
    assert_eq!(
        body["body_bytes"].as_u64().unwrap() as usize,
        body["body"].as_str().unwrap().len()
    );
    // Not JSON: untouched (a text request body; a text response).
    let (status, _, body) = send(
        c.post(gw.url("/b/x"))
            .header("content-type", "text/plain")
            .body("hello"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["body"], "hello");
    let r = c.get(gw.url("/b/x?raw=1")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "20");
    assert_eq!(r.text().await.unwrap(), "plain text, not JSON");
    // JSON over the request transform cap: 413; invalid JSON declared as JSON: 400.
    let big = json!({"pad": "x".repeat(300)});
    let r = c.post(gw.url("/b/x")).json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(gw.url("/b/x"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn compressed_large_head_and_empty_responses() {
    let (_up, gw) = setup(
        &BODY_ROUTES.replace(
            "        set: {transformed: true}\n",
            "        set: {transformed: true}\n        max_body_bytes: 4096\n",
        ),
        "",
    )
    .await;
    let c = client();
    // The upstream gzips whatever we ask: the gateway decompresses and rewrites.
    let r = c.get(gw.url("/b/x?gzip=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["transformed"], true);
    assert_eq!(body["query"], "gzip=1");
    // Over the response cap (declared length): passed through untouched, length intact.
    let r = c.get(gw.url("/b/x?pad=5000")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["service"], "api");
    assert!(body.get("transformed").is_none());
    assert!(len > 5000);
    // HEAD and 204 are left alone.
    let r = c.head(gw.url("/b/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_some());
    let r = c.get(gw.url("/b/x?status=204")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("transfer-encoding").is_none());
    assert_eq!(r.bytes().await.unwrap().len(), 0);
}

const CORS: &str = "cors:\n  allow_origins: ['http://localhost:3000', 'https://*.example.com']\n";

#[tokio::test]
async fn cors_preflight_allowed_denied_and_actual_requests() {
    let routes = "  - {path: /api/secure, service: api, auth: required}\n  - {path: /api/creds, service: api, cors: {allow_origins: ['https://app.example.com'], allow_credentials: true, max_age: 1m}}\n  - {path: /api/nocors, service: api, cors: {enabled: false}}\n";
    let (up, gw) = setup(routes, CORS).await;
    let c = client();
    let preflight = |path: &str, origin: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
    };
    // Allowed: 204 at the gateway, before auth, without reaching the upstream.
    let r = preflight("/api/secure/1", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Authorization")
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert!(h.get("access-control-allow-credentials").is_none());
    let r = preflight("/api/secure/1", "https://a.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://a.example.com"
    );
    // Denied origin: no Allow-Origin.
    let r = preflight("/api/secure/1", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Credentials: the origin echoed, never `*`.
    let r = preflight("/api/creds", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert_eq!(r.headers()["access-control-max-age"], "60");
    assert_eq!(up.requests(), 0);
    // CORS off for a route: the OPTIONS goes to the upstream like any request.
    let r = preflight("/api/nocors", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(up.requests(), 1);
    // Actual requests, including gateway errors, carry the headers so browsers can read them.
    let r = c
        .get(gw.url("/api/secure/1"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(expose.contains("X-RateLimit-Remaining") && expose.contains("X-Request-Id"));
    let r = c
        .get(gw.url("/api/secure/1"))
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.headers()["vary"], "Origin");
}

#[tokio::test]
async fn star_with_credentials_is_refused_at_startup() {
    let (ok, out, _) = check_config(
        "listen: ['127.0.0.1:0']\nservices: {a: {backends: ['127.0.0.1:1']}}\ncors: {allow_origins: ['*'], allow_credentials: true}\nroutes: [{path: /a, service: a}]\n",
    );
    assert!(!ok);
    assert!(out.contains("cors.allow_credentials"), "{out}");
    let (ok, out, _) = check_config(
        "listen: ['127.0.0.1:0']\nservices: {a: {backends: ['127.0.0.1:1']}}\nroutes: [{path: /a/:id, service: a, request: {headers: {set: {x: '{nope}'}}}}]\n",
    );
    assert!(!ok);
    assert!(out.contains("routes[0].request.headers.set.x"), "{out}");
}

#[tokio::test]
async fn aggregate_answers_get_cors_security_headers_and_response_transforms() {
    let routes = "  - path: /agg
    aggregate: {calls: [{key: one, service: api, path: /1}]}
    response:
      body: {remove: [one.headers], set: {merged: true}}
      headers: {set: {x-agg: yes}}
";
    let (_up, gw) = setup(routes, CORS).await;
    let r = client()
        .get(gw.url("/agg"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-agg"], "yes");
    let len: usize = h["content-length"].to_str().unwrap().parse().unwrap();
    let raw = r.bytes().await.unwrap();
    assert_eq!(raw.len(), len);
    let body: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(body["merged"], true);
    assert_eq!(body["one"]["path"], "/1");
    assert!(body["one"].get("headers").is_none(), "{body}");
}
