//! `explain` against the routing rules of tests/routing.rs (same expectations, through the
//! command line: no port bound), and `POST /admin/explain` with a verified token.

mod common;
use common::*;
use serde_json::Value;

const SERVICES: &str =
    "services:\n  users: {backends: ['127.0.0.1:3001']}\n  admin: {backends: ['127.0.0.1:3002']}\n";

/// `apigateway explain -c FILE METHOD URL -H ...` on `routes`.
fn explain(routes: &str, method: &str, url: &str, headers: &[&str]) -> Value {
    let (_dir, path) = write_config(&format!(
        "listen: ['127.0.0.1:0']\n{SERVICES}routes:\n{routes}"
    ));
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("explain").arg("-c").arg(&path).arg(method).arg(url);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd.output().expect("run apigateway explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain prints JSON")
}

fn verdict<'a>(answer: &'a Value, route: &str) -> &'a str {
    answer["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .and_then(|r| r["verdict"].as_str())
        .unwrap_or("(missing)")
}

#[test]
fn priority_is_by_specificity_not_file_order() {
    let routes = "  - {name: prefix, path: /api, service: users}\n\
                  \x20 - {name: wild, path: '/api/files/*rest', service: users}\n\
                  \x20 - {name: param, path: '/api/users/:id', service: users}\n\
                  \x20 - {name: literal, path: /api/users/me, service: users}\n\
                  \x20 - {name: exact, path: /api/users/me, match: exact, service: users}\n";
    for (path, route, upstream) in [
        ("/api/users/me", "exact", "/"),
        ("/api/users/me/settings", "literal", "/settings"),
        ("/api/users/7", "param", "/"),
        ("/api/users/7/orders", "param", "/orders"),
        ("/api/files/a/b.txt", "wild", "/a/b.txt"),
        ("/api/anything", "prefix", "/anything"),
    ] {
        let a = explain(routes, "GET", path, &[]);
        assert_eq!(a["route"], route, "{path}: {a}");
        assert_eq!(a["upstream"]["path"], upstream, "{path}");
    }
    let a = explain(routes, "GET", "/api/users/me", &[]);
    assert_eq!(verdict(&a, "literal"), "shadowed");
    assert_eq!(verdict(&a, "wild"), "path_differs");
}

#[test]
fn rewrites_and_strip_prefix_false() {
    let routes = "  - {name: orders, path: '/api/v2/orders/:id/items/:item', match: exact, service: users, rewrite: '/orders/{id}/lines/{item}'}\n\
                  \x20 - {name: legacy, path: /legacy, service: users, strip_prefix: false}\n";
    let a = explain(routes, "GET", "/api/v2/orders/17/items/3?full=1", &[]);
    assert_eq!(a["upstream"]["path"], "/orders/17/lines/3");
    assert_eq!(a["upstream"]["query"], "full=1");
    let a = explain(routes, "GET", "/api/v2/orders/17/items/3/extra", &[]);
    assert_eq!(a["answer"]["status"], 404, "{a}");
    assert_eq!(
        explain(routes, "GET", "/legacy/a/b", &[])["upstream"]["path"],
        "/legacy/a/b"
    );
}

#[test]
fn methods_give_405_with_allow_or_fall_through() {
    let routes = "  - {name: reader, path: /items, methods: [GET], service: users}\n\
                  \x20 - {name: writer, path: /items, methods: [POST, PUT], service: users}\n\
                  \x20 - {name: page, path: '/docs/:page', methods: [GET], service: users}\n\
                  \x20 - {name: fallback, path: /docs, service: users}\n";
    assert_eq!(explain(routes, "GET", "/items", &[])["route"], "reader");
    assert_eq!(explain(routes, "HEAD", "/items", &[])["route"], "reader");
    assert_eq!(explain(routes, "PUT", "/items/1", &[])["route"], "writer");
    let a = explain(routes, "DELETE", "/items/1", &[]);
    assert_eq!(a["answer"]["status"], 405, "{a}");
    assert_eq!(verdict(&a, "reader"), "method_not_allowed");
    let a = explain(routes, "DELETE", "/docs/intro", &[]);
    assert_eq!(a["route"], "fallback");
    assert_eq!(verdict(&a, "page"), "method_not_allowed");
}

#[test]
fn hosts_select_routes() {
    let routes = "  - {name: default, path: /, service: users}\n\
                  \x20 - {name: api, path: /, host: api.example.com, service: users}\n\
                  \x20 - {name: tenants, path: /, host: '*.tenants.example.com', service: users}\n";
    for (host, route) in [
        ("API.example.com:8080", "api"),
        ("acme.tenants.example.com", "tenants"),
        ("tenants.example.com", "default"),
        ("other.test", "default"),
    ] {
        let a = explain(routes, "GET", "/x", &[&format!("Host: {host}")]);
        assert_eq!(a["route"], route, "{host}");
    }
    let a = explain(routes, "GET", "http://other.test/x", &[]);
    assert_eq!(verdict(&a, "api"), "host_differs");
}

#[test]
fn paths_are_normalized_first() {
    let routes = "  - {name: users, path: /api/users, service: users}\n\
                  \x20 - {name: admin, path: /admin, service: admin}\n";
    let a = explain(routes, "GET", "/api//users/./7/../8", &[]);
    assert_eq!(
        (&a["route"], &a["upstream"]["path"]),
        (&"users".into(), &"/8".into())
    );
    let a = explain(routes, "GET", "/api/users/%2e%2e/%2e%2e/admin/x", &[]);
    assert_eq!(a["route"], "admin");
    assert_eq!(
        explain(routes, "GET", "/api/../../etc/passwd", &[])["answer"]["status"],
        400
    );
}

#[tokio::test]
async fn the_admin_api_explains_with_the_callers_token() {
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\nauth:\n  keys: [{{kid: k, alg: HS256, secret: explain-secret-explain-secret-0123}}]\n{SERVICES}routes:\n  - {{path: /me, service: users, auth: required, cache: {{vary_by_identity: true}}}}\n"
    ));
    let token = hs256_token(
        "explain-secret-explain-secret-0123",
        serde_json::json!({"sub": "alice"}),
    );
    let ask = |headers: Value| {
        let url = format!("http://127.0.0.1:{admin}/admin/explain");
        async move {
            let body = serde_json::json!({"method": "GET", "url": "/me/x", "headers": headers});
            client()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let a = ask(serde_json::json!({"Authorization": format!("Bearer {token}")})).await;
    assert_eq!(a["auth"]["caller"]["subject"], "alice", "{a}");
    assert!(
        a["cache"]["key"].as_str().unwrap().contains("sub:alice"),
        "{a}"
    );
    let a = ask(serde_json::json!({})).await;
    assert_eq!(a["answer"]["status"], 401, "{a}");
    drop(gw);
}
