//! Route scripts through the real gateway and real upstreams: each hook's reads and writes,
//! direct answers, JSON bodies both ways, every limit tripping with 500 and nothing
//! forwarded, errors never leaking, `-t` reporting syntax errors, a reload under load, and
//! requests never seeing each other's data.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "script-secret-0123456789-abcdefghijklmn";

/// A gateway in front of one echo upstream with `routes`; `files` (the scripts) beside it.
async fn setup(routes: &str, files: &[(&str, &str)], admin: Option<u16>) -> (EchoServer, Gateway) {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let admin = admin.map_or(String::new(), |p| {
        format!("admin: {{listen: '127.0.0.1:{p}'}}\n")
    });
    let body = format!(
        "{admin}services:\n  api: {{backends: ['{}']}}\nauth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\nroutes:\n{routes}",
        up.addr
    );
    (up, Gateway::start_with_files(&body, files))
}

fn bearer(claims: Value) -> String {
    format!("Bearer {}", hs256_token(SECRET, claims))
}

const HOOKS: &str = r#"
fn on_request(req) {
    req.set_header("x-role", if req.has_role("admin") { "admin" } else { "other" });
    req.set_header("x-sub", req.subject);
    req.set_header("x-team", req.claim("org.team"));
    req.set_header("x-id", req.param("id"));
    req.set_header("x-seen", `${req.method} ${req.path} ${req.query}`);
    req.set_header("x-rid", req.request_id);
    req.set_header("x-ip", req.client_ip);
    req.remove_header("x-drop");
    req.upstream_path = "/v2" + req.upstream_path;
    req.upstream_query = req.query + "&page=" + req.param("id");
    req.vars.started = req.header("x-tag");
}

fn on_response(req, res) {
    res.set_header("x-tag-back", req.vars.started);
    res.set_header("x-upstream-status", res.status);
    res.remove_header("x-kept");
    if res.status == 404 { res.status = 410; }
}
"#;

#[tokio::test]
async fn request_and_response_hooks_read_and_write() {
    let route = "  - path: /items/:id\n    service: api\n    strip_prefix: false\n    auth: optional\n    script: {file: hooks.rhai}\n";
    let (_up, gw) = setup(route, &[("hooks.rhai", HOOKS)], None).await;
    let r = client()
        .get(gw.url("/items/7?q=1&hop=1"))
        .header(
            "authorization",
            bearer(json!({"sub": "ann", "role": "admin", "org": {"team": "blue"}})),
        )
        .header("x-drop", "1")
        .header("x-tag", "t-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-tag-back"], "t-1");
    assert_eq!(h["x-upstream-status"], "200");
    assert!(h.get("x-kept").is_none());
    let rid = h["x-request-id"].to_str().unwrap().to_string();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["path"], "/v2/items/7");
    assert_eq!(echo["query"], "q=1&hop=1&page=7");
    let sent = &echo["headers"];
    assert_eq!(sent["x-role"], "admin");
    assert_eq!(sent["x-sub"], "ann");
    assert_eq!(sent["x-team"], "blue");
    assert_eq!(sent["x-id"], "7");
    assert_eq!(sent["x-seen"], "GET /items/7 q=1&hop=1");
    assert_eq!(sent["x-rid"], rid.as_str());
    assert_eq!(sent["x-ip"], "127.0.0.1");
    assert!(sent.get("x-drop").is_none());
    // The status a script sets is what the client gets.
    let r = client()
        .get(gw.url("/items/8?status=404"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(r.headers()["x-upstream-status"], "404");
}

const ORDERS: &str = r#"
fn on_request_body(req, body) {
    if req.has_role("user") && body.amount > 1000 {
        return respond(403, #{error: "amount over your limit", limit: 1000}, #{"x-limit": 1000});
    }
    body.checked_by = "gateway";
    body
}

fn on_response_body(req, res, body) {
    #{order: body.body, status: res.status}
}
"#;

#[tokio::test]
async fn json_bodies_both_ways_and_direct_answers_forward_nothing() {
    let route = "  - path: /orders\n    service: api\n    auth: required\n    script: {file: orders.rhai}\n";
    let (up, gw) = setup(route, &[("orders.rhai", ORDERS)], None).await;
    let user = bearer(json!({"sub": "u", "role": "user"}));
    let post = |json: &Value| {
        client()
            .post(gw.url("/orders"))
            .header("authorization", &user)
            .json(json)
            .send()
    };
    let r = post(&json!({"amount": 5000})).await.unwrap();
    let status = r.status();
    assert_eq!(status, 403, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["x-limit"], "1000");
    assert!(r.headers()["x-request-id"].len() > 10);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(
        refused,
        json!({"error": "amount over your limit", "limit": 1000})
    );
    assert_eq!(up.requests(), 0, "a refused body is never forwarded");

    let r = post(&json!({"amount": 10})).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["status"], 200);
    // The upstream got the script's body, with its exact length.
    let forwarded: Value = serde_json::from_str(answer["order"].as_str().unwrap()).unwrap();
    assert_eq!(forwarded, json!({"amount": 10, "checked_by": "gateway"}));
    assert_eq!(up.requests(), 1);

    // Not JSON: 400 from the gateway, nothing forwarded.
    let r = client()
        .post(gw.url("/orders"))
        .header("authorization", &user)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Over the script's body cap: 413.
    let r = post(&json!({"amount": 1, "pad": "x".repeat(70_000)}))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(up.requests(), 1);
}

/// A route per misbehaving script, named after it.
fn failing_routes() -> (String, Vec<(&'static str, &'static str)>) {
    let scripts = [
        ("loop", "fn on_request(req) { loop {} }", "timeout: 1s"),
        (
            "deep",
            "fn f(n) { f(n + 1) } fn on_request(req) { f(0) }",
            "timeout: 1s",
        ),
        (
            "big",
            "fn on_request(req) { let s = \"x\"; loop { s += s; } }",
            "max_operations: 100000000, timeout: 1s",
        ),
        (
            "slow",
            "fn on_request(req) { let n = 0; loop { n += 1; } }",
            "max_operations: 100000000000, timeout: 30ms",
        ),
        (
            "throws",
            "fn on_request(req) { throw \"db password is hunter2\" }",
            "",
        ),
        (
            "crlf",
            "fn on_request(req) { req.set_header(\"x-a\", \"v\\r\\nx-injected: 1\"); }",
            "",
        ),
        ("type", "fn on_request(req) { \"a string\" }", ""),
        (
            "body",
            "fn on_request_body(req, body) { loop {} }",
            "timeout: 1s",
        ),
    ];
    let mut routes = String::new();
    for (name, _, limits) in scripts {
        routes.push_str(&format!(
            "  - path: /{name}\n    name: {name}\n    service: api\n    script: {{file: {name}.rhai, limits: {{{limits}}}}}\n"
        ));
    }
    let files = scripts.iter().map(|(n, s, _)| (*n, *s)).collect::<Vec<_>>();
    (routes, files)
}

#[tokio::test]
async fn every_limit_and_error_is_a_500_that_forwards_and_leaks_nothing() {
    let (routes, scripts) = failing_routes();
    let names: Vec<String> = scripts.iter().map(|(n, _)| format!("{n}.rhai")).collect();
    let files: Vec<(&str, &str)> = names
        .iter()
        .zip(&scripts)
        .map(|(file, (_, text))| (file.as_str(), *text))
        .collect();
    let admin = free_port();
    let (up, gw) = setup(&routes, &files, Some(admin)).await;
    for (name, _) in &scripts {
        let r = client()
            .post(gw.url(&format!("/{name}")))
            .json(&json!({"a": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500, "{name}");
        let body = r.text().await.unwrap();
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"], "Script error", "{name}");
        assert!(
            !body.contains("hunter2") && !body.contains("x-injected"),
            "{body}"
        );
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
    let text = metrics_text(admin).await;
    for (route, hook, reason) in [
        ("loop", "on_request", "operations"),
        ("deep", "on_request", "call_depth"),
        ("big", "on_request", "size"),
        ("slow", "on_request", "timeout"),
        ("throws", "on_request", "error"),
        ("crlf", "on_request", "error"),
        ("type", "on_request", "return_type"),
        ("body", "on_request_body", "operations"),
    ] {
        let line = format!(
            "apigateway_script_errors_total{{hook=\"{hook}\",reason=\"{reason}\",route=\"{route}\"}} 1"
        );
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    let log = gw.stderr();
    assert!(
        log.contains("route throws: script on_request failed"),
        "{log}"
    );
    // The gateway still serves.
    let r = client().get(gw.url("/type")).send().await.unwrap();
    assert_eq!(r.status(), 500);
}

#[tokio::test]
async fn a_failing_response_body_script_cuts_the_answer_short() {
    let script = "fn on_response_body(req, res, body) { throw \"no\" }";
    let route = "  - path: /cut\n    service: api\n    script: {file: cut.rhai}\n";
    let (_up, gw) = setup(route, &[("cut.rhai", script)], None).await;
    // A small answer may still be held whole when the call fails: then it is a 500. A larger
    // one has its head sent first: then it is cut. Never a complete 200.
    for pad in [100, 500_000] {
        let r = client()
            .get(gw.url(&format!("/cut?pad={pad}")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await;
        match status {
            500 => assert_eq!(
                serde_json::from_slice::<Value>(&body.unwrap()).unwrap()["error"],
                "Script error"
            ),
            200 => assert!(body.is_err(), "pad {pad}: the body must not complete"),
            other => panic!("pad {pad}: status {other}"),
        }
    }
}

#[test]
fn syntax_errors_are_reported_by_dash_t_with_line_and_column() {
    let (dir, path) = write_config(
        "listen: ['127.0.0.1:0']\nservices:\n  api: {backends: ['127.0.0.1:1']}\nroutes:\n  - path: /a\n    service: api\n    script: {file: bad.rhai}\n",
    );
    std::fs::write(
        dir.path().join("bad.rhai"),
        "fn on_request(req) {\n    let x = ;\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &*String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("routes[0].script.file"), "{text}");
    assert!(text.contains("bad.rhai:2:"), "{text}");
    let (ok, text, _) = check_config(
        "listen: ['127.0.0.1:0']\nservices:\n  api: {backends: ['127.0.0.1:1']}\nroutes:\n  - path: /a\n    service: api\n    script: {source: 'fn on_requets(req) {}'}\n",
    );
    assert!(!ok);
    assert!(
        text.contains("routes[0].script.source") && text.contains("not a hook"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_swaps_the_script_under_load_without_a_failed_request() {
    let version = |v: u32| {
        format!(
            "fn on_request(req) {{ req.set_header(\"x-v\", {v}); }}\nfn on_response(req, res) {{ res.set_header(\"x-v\", {v}); }}\n"
        )
    };
    let route = "  - path: /v\n    service: api\n    script: {file: v.rhai}\n";
    let (_up, gw) = setup(route, &[("v.rhai", &version(1))], None).await;
    let url = gw.url("/v");
    let load = tokio::spawn(async move {
        let c = client();
        let mut seen = Vec::new();
        for _ in 0..400 {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            seen.push(r.headers()["x-v"].to_str().unwrap().to_string());
        }
        seen
    });
    std::fs::write(gw.dir().join("v.rhai"), version(2)).unwrap();
    gw.signal("HUP");
    let swapped = eventually(Duration::from_secs(10), || async {
        let r = client().get(gw.url("/v")).send().await.unwrap();
        r.headers()["x-v"] == "2"
    })
    .await;
    assert!(swapped, "{}", gw.stderr());
    let seen = load.await.unwrap();
    assert!(seen.iter().all(|v| v == "1" || v == "2"));
    // A script that no longer compiles is refused with its place; version 2 keeps serving.
    std::fs::write(
        gw.dir().join("v.rhai"),
        "fn on_request(req) {\n  req.set_header(\n}\n",
    )
    .unwrap();
    gw.signal("HUP");
    let refused = eventually(Duration::from_secs(10), || async {
        gw.stderr().contains("v.rhai:3:")
    })
    .await;
    assert!(refused, "{}", gw.stderr());
    let r = client().get(gw.url("/v")).send().await.unwrap();
    assert_eq!(r.headers()["x-v"], "2");
}

#[tokio::test]
async fn concurrent_requests_never_see_each_others_data() {
    let script = r#"
fn on_request(req) { req.vars.mine = req.header("x-tag"); }
fn on_response(req, res) { res.set_header("x-tag-back", req.vars.mine + "/" + req.header("x-tag")); }
"#;
    let route = "  - path: /iso\n    service: api\n    script: {file: iso.rhai}\n";
    let (_up, gw) = setup(route, &[("iso.rhai", script)], None).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = gw.url("/iso?sleep_ms=2");
        tasks.push(tokio::spawn(async move {
            let tag = format!("tag-{i}");
            let r = client()
                .get(&url)
                .header("x-tag", &tag)
                .send()
                .await
                .unwrap();
            (tag, r.headers()["x-tag-back"].to_str().unwrap().to_string())
        }));
    }
    for task in tasks {
        let (tag, back) = task.await.unwrap();
        assert_eq!(back, format!("{tag}/{tag}"));
    }
}

#[tokio::test]
async fn the_demo_orders_script_sets_the_tier_and_caps_users() {
    let demo = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/scripts/orders.rhai"),
    )
    .unwrap();
    let route = "  - path: /api/orders\n    service: api\n    auth: required\n    script: {file: orders.rhai}\n";
    let (up, gw) = setup(route, &[("orders.rhai", &demo)], None).await;
    let post = |role: &str, amount: u32| {
        client()
            .post(gw.url("/api/orders"))
            .header("authorization", bearer(json!({"sub": "s", "role": role})))
            .json(&json!({"amount": amount}))
            .send()
    };
    let r = post("user", 5000).await.unwrap();
    assert_eq!(r.status(), 403);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["limit"], 1000);
    assert_eq!(up.requests(), 0);
    for (role, amount, tier) in [("user", 50, "standard"), ("admin", 5000, "gold")] {
        let r = post(role, amount).await.unwrap();
        assert_eq!(r.status(), 200);
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["x-order-tier"], tier);
    }
}

#[tokio::test]
async fn a_compressing_upstream_is_decompressed_for_the_body_script() {
    let script = "fn on_response_body(req, res, body) { #{seen: body.service} }";
    let route = "  - path: /gz\n    service: api\n    script: {file: gz.rhai}\n";
    let (_up, gw) = setup(route, &[("gz.rhai", script)], None).await;
    // gzip=1 makes the echo compress whatever the request asked for.
    let r = client().get(gw.url("/gz?gzip=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"seen": "api"}));
}

#[tokio::test]
async fn members_a_body_script_never_names_pass_through_unchanged() {
    let script = "fn on_response_body(req, res, body) { body.seen = body.method; body.remove(\"body\"); body }";
    let route = "  - path: /part\n    service: api\n    script: {file: part.rhai}\n";
    let (_up, gw) = setup(route, &[("part.rhai", script)], None).await;
    let r = client()
        .get(gw.url("/part?q=1"))
        .header("x-probe", "a \"quoted\" value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["seen"], "GET");
    assert!(body.get("body").is_none());
    // `headers` was never named: it comes through as the upstream wrote it.
    assert_eq!(body["headers"]["x-probe"], "a \"quoted\" value");
    assert_eq!(body["query"], "q=1");
}

/// Data segments the kernel counted in on `stream` (`ss -ti`: `data_segs_in`).
fn data_segments_in(stream: &std::net::TcpStream) -> u64 {
    let local = stream.local_addr().unwrap();
    let out = std::process::Command::new("ss")
        .args(["-tinH", "src", &local.to_string()])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("data_segs_in:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no data_segs_in in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_body_leaves_in_one_write_with_its_head() {
    use std::io::{Read, Write};
    let script = "fn on_response_body(req, res, body) { body.seen = true; body }";
    let route = "  - path: /one\n    service: api\n    script: {file: one.rhai}\n";
    let (_up, gw) = setup(route, &[("one.rhai", script)], None).await;
    let port = gw.port;
    let segments = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).contains("\"seen\":true"));
        data_segments_in(&s)
    })
    .await
    .unwrap();
    // Pingora would flush the head alone (no Content-Length), then the chunk, then the last
    // chunk: three segments. `WholeBody` (vendor/pingora-core/PATCH.md) makes it one.
    assert_eq!(segments, 1);
}
