//! Client network lists through the real gateway (issue #17): IP allow/deny lists on the
//! client address as `trusted_proxies` resolves it, top level and per route.

mod common;
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_refuse_before_routing_and_authentication() {
    let (_up, gw) = echo_gateway(
        "trusted_proxies: ['127.0.0.2']\n\
         ip_restriction: {deny: ['127.0.0.3']}\n\
         auth:\n  keys: [{alg: HS256, secret: ip-list-secret-0123456789-abcdefghij}]\n",
        "  - {path: /open, service: up}\n\
         \x20 - {path: /internal, service: up, auth: required, ip_restriction: {allow: ['10.0.0.0/8', '2001:db8::/32'], deny: ['10.66.0.0/16', '2001:db8:bad::/48']}}\n",
    )
    .await;
    // Top level: refused on a routed path and on an unknown one alike, as JSON.
    let denied = client_from("127.0.0.3");
    for path in ["/open", "/nowhere"] {
        let (status, headers, body) = send(denied.get(gw.url(path))).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["error"], "Forbidden");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.get("www-authenticate").is_none());
    }
    assert_eq!(send(client().get(gw.url("/open"))).await.0, 200);

    // Route list: loopback is outside it, and that is decided before the missing token.
    let (status, _, body) = send(client().get(gw.url("/internal"))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("Forbidden")));

    // Behind the trusted proxy, the forwarded address decides (IPv4 and IPv6, deny wins).
    let proxy = client_from("127.0.0.2");
    let via = |xff: &str| {
        proxy
            .get(gw.url("/internal"))
            .header("x-forwarded-for", xff)
    };
    for (xff, expected) in [
        ("10.1.2.3", 401),
        ("10.66.0.9", 403),
        ("192.0.2.1", 403),
        ("2001:db8::5", 401),
        ("2001:db8:bad::5", 403),
        ("2001:db9::5", 403),
    ] {
        assert_eq!(send(via(xff)).await.0, expected, "X-Forwarded-For {xff}");
    }
    // An untrusted peer cannot claim an allowed address.
    let spoof = client()
        .get(gw.url("/internal"))
        .header("x-forwarded-for", "10.1.2.3");
    let (status, _, body): (u16, _, Value) = send(spoof).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("Forbidden")));
}

#[test]
fn bad_network_entries_are_config_errors_naming_the_key() {
    let (ok, out, _) = check_config(
        "listen: ['127.0.0.1:0']\nservices: {up: {backends: ['127.0.0.1:1']}}\n\
         routes:\n  - {path: /a, service: up, ip_restriction: {allow: ['10.0.0.0/8', '300.1.1.1']}}\n",
    );
    assert!(!ok);
    assert!(out.contains("routes[0].ip_restriction.allow[1]"), "{out}");
    let (ok, out, _) = check_config(
        "listen: ['127.0.0.1:0']\nservices: {up: {backends: ['127.0.0.1:1']}}\nip_restriction: {deny: ['fe80::/129']}\n\
         routes:\n  - {path: /a, service: up}\n",
    );
    assert!(!ok);
    assert!(out.contains("ip_restriction.deny[0]"), "{out}");
}
