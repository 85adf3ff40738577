//! Fleet mode against a real etcd: two gateways watch one prefix; new revisions go live on
//! both under load, broken ones are refused and reported under `nodes/`, a node restarts
//! from its disk cache while etcd is down, and the admin API writes with compare-and-swap.

mod common;
use common::etcd::EtcdServer;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PREFIX: &str = "/fleet";

/// The shared document: services and routes, no listeners (each node's bootstrap has them).
fn shared_config(upstream: &JsonServer, extra_routes: &str) -> String {
    format!(
        "services:\n  api: {{backends: ['{}']}}\nroutes:\n  - {{path: /one, service: api}}\n{extra_routes}",
        upstream.addr
    )
}

/// A bootstrap file's body: the etcd source, and (optionally) the node's admin listener.
fn bootstrap(etcd: &EtcdServer, node: &str, cache: &std::path::Path, admin: &str) -> String {
    format!(
        "{admin}config_source:\n  etcd:\n    endpoints: ['{}']\n    prefix: {PREFIX}\n    node_id: {node}\n    cache_file: {}\n",
        etcd.endpoint(),
        cache.display()
    )
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    match client().get(gw.url(path)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn two_gateways_follow_one_prefix_refuse_bad_revisions_and_survive_etcd_outages() {
    let mut etcd = EtcdServer::start();
    let upstream = JsonServer::start(r#"{"ok":true}"#.into()).await;
    let caches = tempfile::tempdir().unwrap();
    let key = format!("{PREFIX}/config");
    etcd.put(&key, &shared_config(&upstream, ""));
    let cache_a = caches.path().join("a.json");
    let mut a = Gateway::start(&bootstrap(&etcd, "a", &cache_a, ""));
    let b = Gateway::start(&bootstrap(&etcd, "b", &caches.path().join("b.json"), ""));
    assert_eq!(
        (status(&a, "/one").await, status(&b, "/one").await),
        (200, 200)
    );

    // Steady load on both while a revision lands: nothing may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures) = (stop.clone(), failures.clone());
        let urls = [a.url("/one"), b.url("/one")];
        tokio::spawn(async move {
            let c = client();
            // Bounded: at most 20,000 requests even if `stop` never comes.
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ok = matches!(c.get(&urls[i % 2]).send().await, Ok(r) if r.status() == 200);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    etcd.put(
        &key,
        &shared_config(&upstream, "  - {path: /two, service: api}\n"),
    );
    let put_at = Instant::now();
    let live = eventually(Duration::from_secs(3), || async {
        status(&a, "/two").await == 200 && status(&b, "/two").await == 200
    })
    .await;
    let took = put_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(live, "revision 2 never went live:\n{}", a.stderr());
    assert!(took < Duration::from_secs(1), "live on both after {took:?}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the change"
    );

    // A broken revision: refused by both, reported under nodes/, the old one still serves.
    etcd.put(
        &key,
        "services: {}\nroutes:\n  - {path: /x, service: ghost}\n",
    );
    let reported = eventually(Duration::from_secs(5), || async {
        let nodes = etcd.values(&format!("{PREFIX}/nodes/"));
        nodes.len() == 2
            && nodes
                .iter()
                .all(|n| n.contains(r#""error_key":"routes[0].service""#))
    })
    .await;
    assert!(reported, "{:?}", etcd.values(&format!("{PREFIX}/nodes/")));
    assert_eq!(
        (status(&a, "/two").await, status(&b, "/two").await),
        (200, 200)
    );

    // etcd down: both keep serving, and a node restarts from its cache.
    etcd.stop();
    assert_eq!(
        (status(&a, "/two").await, status(&b, "/two").await),
        (200, 200)
    );
    drop(a);
    a = Gateway::start(&bootstrap(&etcd, "a", &cache_a, ""));
    assert_eq!(status(&a, "/two").await, 200, "{}", a.stderr());
    assert!(
        a.stderr().contains("starting from the cached config"),
        "{}",
        a.stderr()
    );

    // etcd back: the next revision applies on both.
    etcd.restart();
    etcd.put(
        &key,
        &shared_config(&upstream, "  - {path: /three, service: api}\n"),
    );
    let live = eventually(Duration::from_secs(15), || async {
        status(&a, "/three").await == 200 && status(&b, "/three").await == 200
    })
    .await;
    assert!(
        live,
        "revision after the outage never applied:\n{}",
        a.stderr()
    );
    let ok = eventually(Duration::from_secs(5), || async {
        let nodes = etcd.values(&format!("{PREFIX}/nodes/"));
        nodes.len() == 2 && nodes.iter().all(|n| n.contains(r#""status":"ok""#))
    })
    .await;
    assert!(ok, "{:?}", etcd.values(&format!("{PREFIX}/nodes/")));
}

#[test]
fn without_etcd_or_a_cache_a_node_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let boot = format!(
        "listen: ['127.0.0.1:0']\nconfig_source:\n  etcd:\n    endpoints: ['{}']\n    prefix: /none\n    cache_file: {}\n",
        dead_addr(),
        dir.path().join("cache.json").display()
    );
    let (ok, out, _) = check_config(&boot);
    assert!(!ok);
    assert!(out.contains("cannot reach etcd"), "{out}");
    assert!(out.contains("no cached config"), "{out}");
}

#[tokio::test]
async fn a_node_logs_in_with_a_user_and_a_password_file() {
    let mut etcd = EtcdServer::start();
    let upstream = JsonServer::start(r#"{"ok":true}"#.into()).await;
    etcd.put("/secured/config", &shared_config(&upstream, ""));
    etcd.enable_auth("s3cret-pass");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret-pass\n").unwrap();
    let boot = |password_file: &str| {
        format!(
            "config_source:\n  etcd:\n    endpoints: ['{}']\n    prefix: /secured\n    username: root\n    password_file: {}\n    cache_file: {}\n",
            etcd.endpoint(),
            dir.path().join(password_file).display(),
            dir.path().join("cache.json").display()
        )
    };
    let gw = Gateway::start(&boot("pw"));
    assert_eq!(status(&gw, "/one").await, 200);
    drop(gw);
    std::fs::write(dir.path().join("wrong"), "nope").unwrap();
    std::fs::remove_file(dir.path().join("cache.json")).unwrap();
    let (ok, out, _) = check_config(&format!("listen: ['127.0.0.1:0']\n{}", boot("wrong")));
    assert!(!ok, "{out}");
    assert!(out.contains("no cached config"), "{out}");
}
