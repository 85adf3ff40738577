//! Key building (whose budget a request spends) and policy compilation.

use super::*;
use crate::identity::Identity;

fn policy(key: &str) -> Policy {
    let cfg: PolicyConfig =
        serde_yaml::from_str(&format!("{{requests: 5, period: 1s, key: '{key}'}}")).unwrap();
    compile_policy("p", &cfg, "rate_limits.policies.p").unwrap()
}

fn identity(sub: Option<&str>, claims: &str) -> Identity {
    Identity::for_test(sub, claims)
}

fn key(p: &Policy, ip: &str, who: Option<&Identity>, headers: &http::HeaderMap) -> Vec<u8> {
    let inputs = KeyInputs {
        client_ip: ip.parse().unwrap(),
        identity: who,
        headers,
        route: 3,
    };
    let text = key_text(p, &inputs);
    [text.tag, text.value()].concat()
}

#[test]
fn user_keys_use_the_verified_subject_and_anonymous_callers_their_address() {
    let p = policy("user");
    let none = http::HeaderMap::new();
    let alice = identity(Some("alice"), "{}");
    assert_eq!(key(&p, "10.0.0.1", Some(&alice), &none), b"user:alice");
    assert_eq!(key(&p, "10.0.0.1", None, &none), b"ip:\x0a\x00\x00\x01");
}

#[test]
fn ipv6_callers_share_their_slash_64() {
    let p = policy("ip");
    let none = http::HeaderMap::new();
    let a = key(&p, "2001:db8:1:2::1", None, &none);
    let b = key(&p, "2001:db8:1:2:ffff::9", None, &none);
    let other = key(&p, "2001:db8:1:3::1", None, &none);
    assert_eq!(a, b);
    assert_ne!(a, other);
    assert!(a.starts_with(b"ip6/64:"));
}

#[test]
fn header_and_claim_keys_fall_back_to_the_address() {
    let mut headers = http::HeaderMap::new();
    let h = policy("header:x-api-key");
    assert!(key(&h, "10.0.0.1", None, &headers).starts_with(b"ip:"));
    headers.insert("x-api-key", "k1".parse().unwrap());
    assert_eq!(key(&h, "10.0.0.1", None, &headers), b"hdr:k1");
    let c = policy("claim:org.id");
    let member = identity(Some("bob"), r#"{"org": {"id": "acme"}}"#);
    assert!(key(&c, "10.0.0.1", Some(&member), &headers).ends_with(b"acme"));
    let outsider = identity(Some("eve"), "{}");
    assert!(key(&c, "10.0.0.1", Some(&outsider), &headers).starts_with(b"ip:"));
}

#[test]
fn policy_errors_name_the_key_and_the_policy_header_is_precomputed() {
    let bad = |yaml: &str| {
        let cfg: PolicyConfig = serde_yaml::from_str(yaml).unwrap();
        compile_policy("p", &cfg, "rate_limits.policies.p")
            .err()
            .unwrap()
            .key
    };
    assert_eq!(
        bad("{requests: 0, period: 1s}"),
        "rate_limits.policies.p.requests"
    );
    assert_eq!(
        bad("{requests: 1, period: 0s}"),
        "rate_limits.policies.p.period"
    );
    assert_eq!(
        bad("{requests: 1, period: 1s, key: cookie}"),
        "rate_limits.policies.p.key"
    );
    let p = policy("ip");
    assert_eq!(p.policy_value, "\"p\";q=5;w=1");
    assert_eq!(p.limit_value, "5");
}
