use super::*;

const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$3My0nZLtUrooFSjOACnx5w$Nsq0T9eEM1lCRP/kPX+iedNiuN9hcrEQwDsrI3LdUjQ";

fn consumers(yaml: &str) -> Result<Consumers, Invalid> {
    let list: Vec<ConsumerConfig> = serde_yaml::from_str(yaml).unwrap();
    let entries: Vec<(String, &ConsumerConfig)> = list
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("consumers[{i}]"), c))
        .collect();
    Consumers::compile(&entries, &ConsumerAuthConfig::default())
}

#[test]
fn a_key_finds_its_consumer_with_identity_and_headers_built_once() {
    let k = key::new_key().unwrap();
    let c = consumers(&format!(
        "- {{id: partner, username: Partner Inc, groups: [partners, beta], headers: {{X-Tier: gold}}, api_keys: [{{hash: '{}', expires: '2999-01-01'}}]}}\n- {{id: other}}\n",
        key::hash_line(&k)
    ))
    .unwrap();
    let found = c.verify_api_key(&k, 0).unwrap();
    assert_eq!(&*found.id, "partner");
    let id = &found.identity;
    assert_eq!(id.roles, ["partners", "beta"]);
    assert_eq!(id.consumer.as_ref().map(|t| t.index), Some(0));
    let headers: Vec<(String, String)> = id
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        headers,
        [
            ("x-consumer-id", "partner"),
            ("x-consumer-username", "Partner Inc"),
            ("x-consumer-groups", "partners,beta"),
            ("x-tier", "gold")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(
        c.verify_api_key(&k, 32_503_680_000).is_none(),
        "expired in 2999"
    );
    assert!(c.verify_api_key("agk_unknown", 0).is_none());
}

#[test]
fn bad_entries_name_their_key_path() {
    let err = |yaml: &str| consumers(yaml).err().expect("refused");
    let e = err("- {id: a}\n- {id: a}\n");
    assert_eq!(e.key, "consumers[1].id");
    let e = err("- {id: a, api_keys: [{hash: 'sha256:beef'}]}\n");
    assert_eq!(e.key, "consumers[0].api_keys[0].hash");
    let h = key::hash_line("agk_x");
    let e = err(&format!(
        "- {{id: a, api_keys: [{{hash: '{h}'}}]}}\n- {{id: b, api_keys: [{{hash: '{h}'}}]}}\n"
    ));
    assert_eq!(e.key, "consumers[1].api_keys[0].hash");
    let e = err(&format!(
        "- {{id: a, api_keys: [{{hash: '{h}', expires: soon}}]}}\n"
    ));
    assert_eq!(e.key, "consumers[0].api_keys[0].expires");
    let e = err("- {id: a, basic: {username: u, password_hash: plain-text}}\n");
    assert_eq!(e.key, "consumers[0].basic.password_hash");
    let e = err("- {id: a, quotas: [{requests: 5}]}\n");
    assert_eq!(e.key, "consumers[0].quotas[0].period");
    let e = err("- {id: \"a\\nb\"}\n");
    assert_eq!(e.key, "consumers[0].id");
}

#[tokio::test]
async fn basic_credentials_verify_once_then_come_from_the_cache() {
    let c = consumers(&format!(
        "- {{id: ann, basic: {{username: test@example.com, password_hash: '{PASSWORD_HASH}'}}}}\n"
    ))
    .unwrap();
    let pair = |p: &str| basic::BasicPair {
        username: "test@example.com".into(),
        password: p.into(),
    };
    assert_eq!(c.basic.cached(&pair("password")), None);
    assert_eq!(c.basic.verify(pair("password")).await, Some(0));
    assert_eq!(c.basic.cached(&pair("password")), Some(0));
    assert_eq!(c.basic.verify(pair("wrong")).await, None);
    assert_eq!(c.basic.cached(&pair("wrong")), None);
}

#[test]
fn api_keys_are_read_from_headers_and_two_different_ones_are_refused() {
    let c = consumers("- {id: a}\n").unwrap();
    let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
    assert_eq!(c.api_key_in(&req), Ok(None));
    req.insert_header("apikey", "k1").unwrap();
    assert_eq!(c.api_key_in(&req).unwrap().as_deref(), Some("k1"));
    req.append_header("apikey", "k2").unwrap();
    assert_eq!(c.api_key_in(&req), Err(TwoKeys));
}
