//! Routing through the real gateway binary to real upstreams: priorities, strip/rewrite,
//! parameters, methods, hosts, prefix boundaries and forwarded headers.

mod common;
use common::*;

/// Starts one echo upstream per name and returns them with a `services:` block naming each.
async fn upstreams(names: &[&str]) -> (Vec<EchoServer>, String) {
    let mut servers = Vec::new();
    let mut yaml = String::from("services:\n");
    for name in names {
        let s = EchoServer::start(name, "127.0.0.1:0").await.unwrap();
        yaml.push_str(&format!("  {name}:\n    backends: ['{}']\n", s.addr));
        servers.push(s);
    }
    (servers, yaml)
}

#[tokio::test]
async fn prefix_route_strips_prefix_keeps_query_and_sets_forwarded_headers() {
    let (_up, services) = upstreams(&["users"]).await;
    let gw = Gateway::start(&format!(
        "{services}routes:\n  - path: /api/users\n    service: users\n"
    ));
    let c = client();
    let (status, headers, body) = send(
        c.get(gw.url("/api/users/42?x=1&y=%20z"))
            .header("x-forwarded-for", "10.9.9.9"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "users");
    assert_eq!(body["path"], "/42");
    assert_eq!(body["query"], "x=1&y=%20z");
    let h = &body["headers"];
    assert_eq!(h["x-gateway-route"], "users");
    // The peer is not a trusted proxy, so its X-Forwarded-For is replaced, not extended.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));
    let rid = headers["x-request-id"].to_str().unwrap();
    assert_eq!(h["x-request-id"], rid);
    assert_eq!(rid.len(), 36);

    let (_, _, body) = send(c.get(gw.url("/api/users"))).await;
    assert_eq!(body["path"], "/");
    let (_, _, body) = send(c.get(gw.url("/api/users/"))).await;
    assert_eq!(body["path"], "/");
}

#[tokio::test]
async fn prefix_boundary_and_unknown_paths_are_json_404() {
    let (up, services) = upstreams(&["users"]).await;
    let gw = Gateway::start(&format!(
        "{services}routes:\n  - path: /api/users\n    service: users\n"
    ));
    for path in ["/api/usersX", "/api", "/", "/other/api/users"] {
        let (status, headers, body) =
            send(client().get(gw.url(path)).header("x-request-id", "trace-1")).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["error"], "Route not found");
        assert_eq!(body["status"], 404);
        assert_eq!(body["request_id"], "trace-1");
    }
    assert_eq!(up[0].requests(), 0);
}

#[tokio::test]
async fn priority_is_by_specificity_not_file_order() {
    let (_up, services) = upstreams(&["prefix", "param", "literal", "exact", "wild"]).await;
    let routes = "routes:
  - path: /api
    service: prefix
  - path: /api/files/*rest
    service: wild
  - path: /api/users/:id
    service: param
  - path: /api/users/me
    service: literal
  - path: /api/users/me
    match: exact
    service: exact
";
    let gw = Gateway::start(&format!("{services}{routes}"));
    let c = client();
    for (path, service, upstream_path) in [
        ("/api/users/me", "exact", "/"),
        ("/api/users/me/settings", "literal", "/settings"),
        ("/api/users/7", "param", "/"),
        ("/api/users/7/orders", "param", "/orders"),
        ("/api/files/a/b.txt", "wild", "/a/b.txt"),
        ("/api/anything", "prefix", "/anything"),
    ] {
        let (status, _, body) = send(c.get(gw.url(path))).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["service"], service, "{path}");
        assert_eq!(body["path"], upstream_path, "{path}");
    }
}

#[tokio::test]
async fn rewrite_template_parameters_and_strip_prefix_false() {
    let (_up, services) = upstreams(&["orders", "legacy"]).await;
    let routes = "routes:
  - path: /api/v2/orders/:id/items/:item
    match: exact
    service: orders
    rewrite: /orders/{id}/lines/{item}
  - path: /legacy
    service: legacy
    strip_prefix: false
";
    let gw = Gateway::start(&format!("{services}{routes}"));
    let c = client();
    let (_, _, body) = send(c.get(gw.url("/api/v2/orders/17/items/3?full=1"))).await;
    assert_eq!(body["path"], "/orders/17/lines/3");
    assert_eq!(body["query"], "full=1");
    let (status, _, _) = send(c.get(gw.url("/api/v2/orders/17/items/3/extra"))).await;
    assert_eq!(status, 404);
    let (_, _, body) = send(c.get(gw.url("/legacy/a/b"))).await;
    assert_eq!(body["path"], "/legacy/a/b");
}

#[tokio::test]
async fn method_mismatch_is_405_with_allow_and_falls_through_when_possible() {
    let (up, services) = upstreams(&["reader", "writer", "fallback"]).await;
    let routes = "routes:
  - path: /items
    methods: [GET]
    service: reader
  - path: /items
    methods: [POST, PUT]
    service: writer
  - path: /docs/:page
    methods: [GET]
    service: reader
  - path: /docs
    service: fallback
";
    let gw = Gateway::start(&format!("{services}{routes}"));
    let c = client();
    assert_eq!(send(c.get(gw.url("/items"))).await.2["service"], "reader");
    assert_eq!(send(c.head(gw.url("/items"))).await.0, 200);
    assert_eq!(send(c.put(gw.url("/items/1"))).await.2["service"], "writer");
    let (status, headers, body) = send(c.delete(gw.url("/items/1"))).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, POST, PUT, HEAD");
    assert_eq!(body["error"], "Method not allowed");
    assert_eq!(body["status"], 405);
    // A less specific route that admits the method wins over a 405.
    assert_eq!(
        send(c.delete(gw.url("/docs/intro"))).await.2["service"],
        "fallback"
    );
    assert_eq!(up[0].requests() + up[1].requests(), 3);
}

#[tokio::test]
async fn host_filters_select_routes() {
    let (_up, services) = upstreams(&["api", "tenants", "default"]).await;
    let routes = "routes:
  - path: /
    service: default
  - path: /
    host: api.example.com
    service: api
  - path: /
    host: '*.tenants.example.com'
    service: tenants
";
    let gw = Gateway::start(&format!("{services}{routes}"));
    let c = client();
    let host = |h: &'static str| c.get(gw.url("/x")).header("host", h);
    assert_eq!(send(host("API.example.com:8080")).await.2["service"], "api");
    assert_eq!(
        send(host("acme.tenants.example.com")).await.2["service"],
        "tenants"
    );
    assert_eq!(
        send(host("tenants.example.com")).await.2["service"],
        "default"
    );
    assert_eq!(send(host("other.test")).await.2["service"], "default");
}

#[tokio::test]
async fn request_id_is_kept_when_well_formed_and_replaced_otherwise() {
    let (_up, services) = upstreams(&["users"]).await;
    let gw = Gateway::start(&format!(
        "{services}routes:\n  - path: /\n    service: users\n"
    ));
    let c = client();
    let (_, headers, body) = send(c.get(gw.url("/")).header("x-request-id", "abc-123_x.y:z")).await;
    assert_eq!(headers["x-request-id"], "abc-123_x.y:z");
    assert_eq!(body["headers"]["x-request-id"], "abc-123_x.y:z");
    let (_, headers, body) = send(c.get(gw.url("/")).header("x-request-id", "has space")).await;
    let rid = headers["x-request-id"].to_str().unwrap();
    assert_ne!(rid, "has space");
    assert_eq!(body["headers"]["x-request-id"], rid);
}

// Multi-threaded: the raw client blocks this thread while the echo upstream must keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_is_normalized_before_routing_and_forwarding() {
    let (_up, services) = upstreams(&["users", "admin"]).await;
    let routes =
        "routes:\n  - path: /api/users\n    service: users\n  - path: /admin\n    service: admin\n";
    let gw = Gateway::start(&format!("{services}{routes}"));
    let resp = raw_request(
        gw.port,
        b"GET /api//users/./7/../8 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"path\":\"/8\""), "{resp}");
    // Traversal out of a route's prefix lands on the route the upstream would really serve.
    let resp = raw_request(
        gw.port,
        b"GET /api/users/%2e%2e/%2e%2e/admin/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.contains("\"service\":\"admin\""), "{resp}");
    let resp = raw_request(
        gw.port,
        b"GET /api/../../etc/passwd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("\"status\":400"), "{resp}");
    assert!(resp.contains("application/json"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_do_not_reach_the_upstream() {
    let (_up, services) = upstreams(&["users"]).await;
    let gw = Gateway::start(&format!(
        "{services}routes:\n  - path: /\n    service: users\n"
    ));
    let port = gw.port;
    let resp = tokio::task::spawn_blocking(move || {
        raw_request(
            port,
            b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body: serde_json::Value =
        serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let headers = body["headers"].as_object().unwrap();
    for h in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert!(!headers.contains_key(h), "{h} forwarded: {headers:?}");
    }
    assert_eq!(headers["x-kept"], "yes");
}
