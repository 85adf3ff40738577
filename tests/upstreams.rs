//! Upstream behaviour through the real gateway: failover, health checks, timeouts, retries,
//! load balancing, and the JSON 502/504 answers.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn route_all(service: &str) -> String {
    format!("routes:\n  - path: /\n    service: {service}\n")
}

#[tokio::test]
async fn refused_connection_is_json_502() {
    let gw = Gateway::start(&format!(
        "services:\n  down:\n    backends: ['{}']\n    retries: 0\n{}",
        dead_addr(),
        route_all("down")
    ));
    let (status, headers, body) = send(client().get(gw.url("/x"))).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"], "Upstream unavailable");
    assert_eq!(body["status"], 502);
    assert_eq!(
        body["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn connect_failure_fails_over_to_the_other_backend() {
    let live = EchoServer::start("live", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  pair:\n    backends: ['{}', '{}']\n    retries: 1\n{}",
        dead_addr(),
        live.addr,
        route_all("pair")
    ));
    let c = client();
    for i in 0..10 {
        let (status, _, body) = send(c.post(gw.url("/x")).body("payload")).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["service"], "live");
    }
    assert_eq!(live.requests(), 10);
}

#[tokio::test]
async fn slow_upstream_is_json_504() {
    let slow = EchoServer::start("slow", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  slow:\n    backends: ['{}']\n    retries: 0\n    timeouts: {{read: 200ms}}\n{}",
        slow.addr,
        route_all("slow")
    ));
    let (status, _, body) = send(client().get(gw.url("/x?sleep_ms=3000"))).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"], "Upstream timed out");
    let (status, _, _) = send(client().get(gw.url("/x?sleep_ms=10"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_check_removes_and_readds_a_backend() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let b = EchoServer::start("b", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  ab:\n    backends: ['{}', '{}']\n    health_check: {{type: http, path: /health, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n{}",
        a.addr,
        b.addr,
        route_all("ab")
    ));
    let c = client();
    let served_by = |n: usize| {
        let c = c.clone();
        let url = gw.url("/x");
        async move {
            let mut seen = HashMap::new();
            for _ in 0..n {
                let (_, _, body) = send(c.get(&url)).await;
                *seen
                    .entry(body["service"].as_str().unwrap_or("error").to_string())
                    .or_insert(0) += 1;
            }
            seen
        }
    };
    let both = served_by(10).await;
    assert_eq!(both.len(), 2, "{both:?}");

    a.set_healthy(false);
    let only_b = eventually(Duration::from_secs(10), || async {
        let seen = served_by(6).await;
        seen.len() == 1 && seen.contains_key("b")
    })
    .await;
    assert!(only_b, "backend a was never taken out");

    a.set_healthy(true);
    let back = eventually(Duration::from_secs(10), || async {
        served_by(6).await.len() == 2
    })
    .await;
    assert!(back, "backend a never came back");
}

#[tokio::test]
async fn all_backends_unhealthy_is_json_502_naming_the_service() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    a.set_healthy(false);
    let gw = Gateway::start(&format!(
        "services:\n  lonely:\n    backends: ['{}']\n    health_check: {{type: http, path: /health, interval: 100ms, unhealthy_threshold: 1}}\n{}",
        a.addr,
        route_all("lonely")
    ));
    let down = eventually(Duration::from_secs(10), || async {
        let (status, _, body) = send(client().get(gw.url("/x"))).await;
        status == 502 && body["error"] == "No healthy backend for service lonely"
    })
    .await;
    assert!(down);
}

#[tokio::test]
async fn tcp_health_check_takes_out_a_closed_port() {
    let live = EchoServer::start("live", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  pair:\n    backends: ['{}', '{}']\n    retries: 0\n    health_check: {{type: tcp, interval: 100ms, unhealthy_threshold: 1}}\n{}",
        dead_addr(),
        live.addr,
        route_all("pair")
    ));
    // With retries off, only the health check can keep requests away from the dead backend.
    let healthy = eventually(Duration::from_secs(10), || async {
        for _ in 0..6 {
            if send(client().get(gw.url("/x"))).await.0 != 200 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(healthy);
}

#[tokio::test]
async fn weighted_round_robin_and_consistent_hash() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let b = EchoServer::start("b", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:
  weighted:
    backends: [{{addr: '{a}', weight: 3}}, {{addr: '{b}', weight: 1}}]
  sticky:
    backends: ['{a}', '{b}']
    load_balancing: consistent_hash
    hash_key: header:x-user
routes:
  - path: /w
    service: weighted
  - path: /s
    service: sticky
",
        a = a.addr,
        b = b.addr
    ));
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..40 {
        let (_, _, body) = send(c.get(gw.url("/w"))).await;
        *counts
            .entry(body["service"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(counts["a"] >= 25 && counts["b"] >= 5, "{counts:?}");
    for user in ["alice", "bob", "carol", "dave"] {
        let first = send(c.get(gw.url("/s")).header("x-user", user)).await.2["service"].clone();
        for _ in 0..5 {
            assert_eq!(
                send(c.get(gw.url("/s")).header("x-user", user)).await.2["service"],
                first
            );
        }
    }
}

/// An upstream that reads a request and closes without answering, counting requests.
fn black_hole() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut buf = [0u8; 4096];
            if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let _ = s.write_all(b"");
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn post_that_reached_the_upstream_is_never_retried() {
    let (hole, seen) = black_hole();
    let live = EchoServer::start("live", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  svc:\n    backends: ['{hole}']\n    retries: 3\n  live:\n    backends: ['{}']\nroutes:\n  - path: /hole\n    service: svc\n  - path: /live\n    service: live\n",
        live.addr
    ));
    let (status, _, body) = send(client().post(gw.url("/hole")).body("once")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["status"], 502);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the POST was sent more than once"
    );
}
