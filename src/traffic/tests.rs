use super::*;
use std::collections::HashMap;

fn entries(yaml: &str) -> Vec<SplitEntryConfig> {
    serde_yaml::from_str(yaml).unwrap()
}

fn find(name: &str) -> Result<usize, String> {
    match name {
        "a" => Ok(0),
        "b" => Ok(1),
        other => Err(format!("unknown service {other:?}")),
    }
}

fn split(yaml: &str, sticky: Option<&str>) -> Split {
    Split::compile(&entries(yaml), sticky, "split", find, "r").unwrap()
}

fn error(yaml: &str, sticky: Option<&str>) -> String {
    Split::compile(&entries(yaml), sticky, "split", find, "r")
        .unwrap_err()
        .to_string()
}

fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
    for (n, v) in headers {
        req.append_header(n.to_string(), *v).unwrap();
    }
    req
}

fn choose(s: &Split, req: &RequestHeader, ip: Option<IpAddr>) -> usize {
    s.choose(&SplitInputs {
        req,
        identity: None,
        client_ip: ip,
    })
}

#[test]
fn weights_share_the_traffic_and_zero_drains() {
    let s = split("[{service: a, weight: 3}, {service: b, weight: 1}]", None);
    let req = request("/", &[]);
    let mut counts = [0usize; 2];
    for _ in 0..4000 {
        counts[choose(&s, &req, None)] += 1;
    }
    // 3:1 of 4,000 is 3,000:1,000; five standard deviations (~137) either side.
    assert!((2863..=3137).contains(&counts[0]), "{counts:?}");
    let drained = split("[{service: a, weight: 0}, {service: b, weight: 5}]", None);
    assert!((0..500).all(|_| choose(&drained, &req, None) == 1));
}

#[test]
fn a_matching_variant_wins_over_the_weights() {
    let s = split(
        "[{service: a, weight: 1}, {service: b, weight: 0, when: {headers: {x-canary: always}}}]",
        None,
    );
    assert_eq!(
        choose(&s, &request("/", &[("x-canary", "always")]), None),
        1
    );
    assert_eq!(choose(&s, &request("/", &[("x-canary", "never")]), None), 0);
    let rules = split(
        "[{service: a, weight: 1}, {service: b, weight: 0, when: {cookies: {tier: {prefix: beta}}, query: {v: {regex: '^2(\\.\\d+)?$'}}}}]",
        None,
    );
    let beta = [("cookie", "a=1; tier=beta-7")];
    assert_eq!(choose(&rules, &request("/x?v=2.1", &beta), None), 1);
    assert_eq!(
        choose(&rules, &request("/x?v=3", &beta), None),
        0,
        "all must hold"
    );
    assert_eq!(choose(&rules, &request("/x?v=2", &[]), None), 0);
}

#[test]
fn a_sticky_caller_stays_on_one_side() {
    let s = split(
        "[{service: a, weight: 1}, {service: b, weight: 1}]",
        Some("client_ip"),
    );
    let req = request("/", &[]);
    let mut sides = HashMap::new();
    for i in 0..200u8 {
        let ip = IpAddr::from([10, 0, 0, i]);
        let first = choose(&s, &req, Some(ip));
        assert!((0..20).all(|_| choose(&s, &req, Some(ip)) == first));
        *sides.entry(first).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "callers land on both sides: {sides:?}");
    let by_cookie = split(
        "[{service: a, weight: 1}, {service: b, weight: 1}]",
        Some("cookie:uid"),
    );
    let req = request("/", &[("cookie", "uid=42")]);
    let first = choose(&by_cookie, &req, None);
    assert!((0..20).all(|_| choose(&by_cookie, &req, None) == first));
}

#[test]
fn bad_splits_name_their_key() {
    assert_eq!(
        error("[{service: a, weight: 0}, {service: b, weight: 0}]", None),
        "split: every weight is 0: at least one service must take traffic"
    );
    assert!(
        error("[{service: c, weight: 1}]", None)
            .starts_with("split[0].service: unknown service \"c\"")
    );
    assert!(
        error(
            "[{service: a, weight: 1, when: {headers: {x: {regex: '('}}}}]",
            None
        )
        .starts_with("split[0].when.headers.x.regex: bad regex")
    );
    assert!(
        error(
            "[{service: a, weight: 1, when: {headers: {x: {prefix: p, exact: e}}}}]",
            None
        )
        .starts_with("split[0].when.headers.x: set exactly one")
    );
    assert!(
        error("[{service: a, weight: 1}]", Some("session"))
            .starts_with("sticky: unknown sticky key")
    );
    assert!(error("[]", None).starts_with("split: list at least one"));
    assert!(serde_yaml::from_str::<Vec<SplitEntryConfig>>("[{service: a, weight: -1}]").is_err());
}
