//! The admin API through the real binary: the bearer token, the config read and replaced
//! (file mode: compare-and-swap on the file's hash, written atomically, kept across a
//! restart; fleet mode: on the etcd revision), routes, services and nodes.

mod common;
use common::etcd::EtcdServer;
use common::*;
use serde_json::Value;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

async fn call(
    admin: u16,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Option<&str>)>,
) -> (u16, Value) {
    let mut req = client().request(method, format!("http://127.0.0.1:{admin}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some((text, if_match)) = body {
        req = req.body(text.to_string());
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn routes(upstream: &JsonServer, extra: &str) -> String {
    format!(
        "services:\n  api: {{backends: ['{}']}}\nroutes:\n  - {{path: /one, service: api}}\n{extra}",
        upstream.addr
    )
}

#[tokio::test]
async fn file_mode_config_is_guarded_validated_swapped_and_kept() {
    let upstream = JsonServer::start(r#"{"ok":true}"#.into()).await;
    let admin = free_port();
    let head = format!("admin: {{listen: '127.0.0.1:{admin}', token_file: token}}\n");
    let mut gw = Gateway::start_with_files(
        &format!("{head}{}", routes(&upstream, "")),
        &[("token", TOKEN)],
    );
    let get = reqwest::Method::GET;
    assert_eq!(
        call(admin, get.clone(), "/admin/routes", None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(admin, get.clone(), "/admin/routes", Some("wrong"), None)
            .await
            .0,
        401
    );
    let (status, body) = call(admin, get.clone(), "/admin/routes", Some(TOKEN), None).await;
    assert_eq!(
        (status, body["routes"][0]["path"].as_str()),
        (200, Some("/one"))
    );
    let (status, body) = call(admin, get.clone(), "/admin/services", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["services"][0]["backends"][0]["healthy"], true,
        "{body}"
    );
    assert_eq!(
        call(admin, reqwest::Method::DELETE, "/cache?url=x", None, None)
            .await
            .0,
        401
    );

    let (_, config) = call(admin, get.clone(), "/admin/config", Some(TOKEN), None).await;
    let hash = config["hash"].as_str().unwrap().to_string();
    let current = config["yaml"].as_str().unwrap().to_string();

    // Invalid: 400 naming the key, nothing written.
    // Every route's error at once.
    let broken = format!(
        "{}  - {{path: /bad, service: nope}}\n",
        current.replace("service: api}", "service: ghost}")
    );
    let put = reqwest::Method::PUT;
    let (status, body) = call(
        admin,
        put.clone(),
        "/admin/config",
        Some(TOKEN),
        Some((&broken, Some(&hash))),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["key"], "routes[0].service", "{body}");
    assert_eq!(body["errors"][1]["key"], "routes[1].service", "{body}");
    let on_disk = std::fs::read_to_string(gw.dir().join("gateway.yaml")).unwrap();
    assert_eq!(on_disk, current);

    // A stale hash: 409.
    let next = format!("{current}  - {{path: /two, service: api}}\n");
    let (status, _) = call(
        admin,
        put.clone(),
        "/admin/config",
        Some(TOKEN),
        Some((&next, Some("0000"))),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = call(
        admin,
        put.clone(),
        "/admin/config",
        Some(TOKEN),
        Some((&next, Some(&hash))),
    )
    .await;
    assert_eq!(
        (status, &body["applied"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    assert_eq!(send(client().get(gw.url("/two"))).await.0, 200);

    // Written to the file: a restart keeps it.
    gw.restart();
    assert_eq!(send(client().get(gw.url("/two"))).await.0, 200);
}

#[test]
fn a_short_admin_token_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "short").unwrap();
    let yaml = format!(
        "listen: ['127.0.0.1:0']\nadmin: {{token_file: {}}}\nservices:\n  a: {{backends: ['127.0.0.1:1']}}\nroutes:\n  - {{path: /, service: a}}\n",
        dir.path().join("token").display()
    );
    let (ok, out, _) = check_config(&yaml);
    assert!(
        !ok && out.contains("admin.token_file") && out.contains("at least 32"),
        "{out}"
    );
}

#[tokio::test]
async fn fleet_mode_puts_with_compare_and_swap_and_lists_nodes() {
    let etcd = EtcdServer::start();
    let upstream = JsonServer::start(r#"{"ok":true}"#.into()).await;
    etcd.put("/adm/config", &routes(&upstream, ""));
    let admin = free_port();
    let cache = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\nconfig_source:\n  etcd:\n    endpoints: ['{}']\n    prefix: /adm\n    node_id: n1\n    cache_file: {}\n",
        etcd.endpoint(),
        cache.path().join("c.json").display()
    ));
    let get = reqwest::Method::GET;
    let (_, config) = call(admin, get.clone(), "/admin/config", None, None).await;
    let revision = config["revision"].as_i64().unwrap().to_string();
    let next = format!(
        "{}  - {{path: /two, service: api}}\n",
        config["yaml"].as_str().unwrap()
    );
    let put = reqwest::Method::PUT;
    let (status, body) = call(
        admin,
        put.clone(),
        "/admin/config",
        None,
        Some((&next, Some("1"))),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = call(
        admin,
        put.clone(),
        "/admin/config",
        None,
        Some((&next, Some(&revision))),
    )
    .await;
    assert_eq!(
        (status, &body["applied"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    assert_eq!(send(client().get(gw.url("/two"))).await.0, 200);
    // The same revision again is now stale.
    let (status, _) = call(
        admin,
        put,
        "/admin/config",
        None,
        Some((&next, Some(&revision))),
    )
    .await;
    assert_eq!(status, 409);
    let listed = eventually(std::time::Duration::from_secs(5), || async {
        let (_, nodes) = call(admin, get.clone(), "/admin/nodes", None, None).await;
        nodes["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["node"] == "n1")
    })
    .await;
    assert!(listed);
}
