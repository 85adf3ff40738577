//! DNS discovery through the real gateway: `dns:` backends resolved by a real DNS server
//! (dnsmasq) started by the test, answering A and AAAA records for loopback upstreams.

mod common;
use common::dns::DnsServer;
use common::echo::EchoServer;
use common::*;
use std::collections::HashSet;
use std::time::Duration;

/// An echo upstream on 127.0.0.1 and another on [::1], both on one port: a name with an A and
/// an AAAA record then reaches either (DNS answers carry addresses, not ports).
async fn upstreams_on_one_port() -> (EchoServer, EchoServer, u16) {
    for _ in 0..20 {
        let v4 = EchoServer::start("v4", "127.0.0.1:0")
            .await
            .expect("bind v4");
        let port = v4.addr.port();
        if let Ok(v6) = EchoServer::start("v6", &format!("[::1]:{port}")).await {
            return (v4, v6, port);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1 in 20 tries");
}

fn gateway(dns: &DnsServer, port: u16, admin: u16, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         resolver: {{servers: ['{}'], interval: 200ms, timeout: 1s}}\n\
         services:\n  api:\n    backends: [{{dns: 'api.test:{port}'}}]\n{extra}\
         routes:\n  - {{path: /api, service: api}}\n",
        dns.addr()
    ))
}

/// The `service` fields of `n` answers to `/api`, all of which must be 200.
async fn answering(gw: &Gateway, n: usize) -> HashSet<String> {
    let c = client();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let (status, _, body) = send(c.get(gw.url("/api"))).await;
        assert_eq!(status, 200, "{body}\n{}", gw.stderr());
        seen.insert(body["service"].as_str().unwrap_or_default().to_string());
    }
    seen
}

/// The value of the sample `name{labels}` in the gateway's metrics, 0 when absent.
async fn metric(admin: u16, sample: &str) -> f64 {
    metrics_text(admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_dns_backend_follows_its_name_and_keeps_the_last_answer_when_dns_goes_away() {
    let (_v4, _v6, port) = upstreams_on_one_port().await;
    let mut dns = DnsServer::start("127.0.0.1 api.test\n");
    let admin = free_port();
    let gw = gateway(&dns, port, admin, "");
    assert_eq!(answering(&gw, 10).await, HashSet::from(["v4".to_string()]));

    dns.set_hosts("127.0.0.1 api.test\n::1 api.test\n");
    let both = HashSet::from(["v4".to_string(), "v6".to_string()]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            answering(&gw, 10).await == both
        })
        .await,
        "the AAAA record added was not picked up:\n{}",
        gw.stderr()
    );
    assert!(
        gw.stderr().contains("api.test resolves to"),
        "change logged"
    );
    let changed = r#"apigateway_dns_resolutions_total{outcome="changed",service="api"}"#;
    assert!(metric(admin, changed).await >= 2.0, "changes counted");
    let backends = r#"apigateway_backends{service="api"}"#;
    assert_eq!(metric(admin, backends).await, 2.0);

    dns.stop();
    let failed = r#"apigateway_dns_resolutions_total{outcome="failed",service="api"}"#;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(admin, failed).await >= 2.0
        })
        .await,
        "refreshes against a dead server were not counted as failed"
    );
    assert_eq!(answering(&gw, 20).await, both, "the last good set is kept");
    assert_eq!(metric(admin, backends).await, 2.0);
}

#[tokio::test]
async fn health_checks_take_a_dead_discovered_address_out() {
    // Only the IPv4 upstream runs: the AAAA record points at a closed port.
    let v4 = EchoServer::start("v4", "127.0.0.1:0").await.expect("bind");
    let port = v4.addr.port();
    let dns = DnsServer::start("127.0.0.1 api.test\n::1 api.test\n");
    let admin = free_port();
    let gw = gateway(
        &dns,
        port,
        admin,
        "    retries: 0\n    passive_health: {failures: 0}\n    health_check: {type: tcp, interval: 100ms, unhealthy_threshold: 1}\n",
    );
    let down = format!(r#"apigateway_backend_healthy{{backend="[::1]:{port}",service="api"}}"#);
    let up = format!(r#"apigateway_backend_healthy{{backend="127.0.0.1:{port}",service="api"}}"#);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metrics_text(admin).await.contains(&format!("{down} 0"))
        })
        .await,
        "the discovered [::1] address was never checked:\n{}",
        metrics_text(admin).await
    );
    assert_eq!(metric(admin, &up).await, 1.0);
    // No retries and no breaker: only the health check keeps requests off the dead address.
    assert_eq!(answering(&gw, 30).await, HashSet::from(["v4".to_string()]));
}

#[tokio::test]
async fn a_name_that_does_not_resolve_at_startup_is_a_warning_and_the_gateway_starts_without_it() {
    let dns = DnsServer::start("127.0.0.1 other.test\n");
    let cfg = format!(
        "listen: ['127.0.0.1:{}']\nresolver: {{servers: ['{}'], timeout: 1s}}\n\
         services:\n  api:\n    backends: [{{dns: 'api.test:80'}}]\n\
         routes:\n  - {{path: /api, service: api}}\n",
        free_port(),
        dns.addr()
    );
    let (ok, out, _) = check_config(&cfg);
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"warning: services.api.backends[0].dns: cannot resolve "api.test""#),
        "{out}"
    );

    let admin = free_port();
    let gw = gateway(&dns, 80, admin, "");
    let (status, _, body) = send(client().get(gw.url("/api"))).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "No healthy backend for service api");
    assert!(gw.stderr().contains("cannot resolve"), "{}", gw.stderr());
}

#[test]
fn bad_dns_backends_and_resolver_settings_are_config_errors() {
    for (yaml, key) in [
        (
            "backends: [{dns: 'api.test'}]",
            "services.api.backends[0].dns",
        ),
        (
            "backends: [{dns: 'api.test:99999'}]",
            "services.api.backends[0].dns",
        ),
        (
            "backends: [{dns: 'api.test:80', weight: 0}]",
            "services.api.backends[0].weight",
        ),
        (
            "backends: [{dns: 'a.test:80'}, {dns: 'a.test:80'}]",
            "services.api.backends[1]",
        ),
    ] {
        let cfg = format!(
            "listen: ['127.0.0.1:1']\nresolver: {{servers: ['127.0.0.1:1']}}\n\
             services:\n  api:\n    {yaml}\nroutes:\n  - {{path: /api, service: api}}\n"
        );
        let (ok, out, _) = check_config(&cfg);
        assert!(!ok && out.contains(key), "{yaml}: {out}");
    }
    let cfg = "listen: ['127.0.0.1:1']\nresolver: {servers: ['ns.example']}\n\
               services:\n  api:\n    backends: ['127.0.0.1:1']\n\
               routes:\n  - {path: /api, service: api}\n";
    let (ok, out, _) = check_config(cfg);
    assert!(!ok && out.contains("resolver.servers[0]"), "{out}");
}
