//! Merge and fan-out decisions of an aggregate route, without the network.

use super::*;
use crate::identity::Identity;

fn aggregate(yaml: &str, authenticated: bool) -> Aggregate {
    let cfg: AggregateConfig = serde_yaml::from_str(yaml).unwrap();
    let services: HashMap<&str, usize> = [("users", 0), ("orders", 1)].into_iter().collect();
    Aggregate::compile(
        &cfg,
        "aggregate",
        &services,
        &["id".to_string()],
        authenticated,
    )
    .unwrap()
}

fn body(o: Outcome) -> (Value, bool) {
    match o {
        Outcome::Merged { body, complete } => (serde_json::from_slice(&body).unwrap(), complete),
        other => panic!("{other:?}"),
    }
}

const TWO: &str = "calls:\n  - {key: user, service: users, path: /u}\n  - {key: orders, service: orders, path: /o, required: false}\n";

#[test]
fn keyed_merge_puts_each_answer_under_its_key() {
    let a = aggregate(TWO, false);
    let (v, complete) = body(a.merge(vec![Ok(serde_json::json!({"n": 1})), Ok(Value::Null)]));
    assert_eq!(v, serde_json::json!({"user": {"n": 1}, "orders": null}));
    assert!(complete);
}

#[test]
fn optional_failure_is_null_and_reported_required_failure_fails_the_route() {
    let a = aggregate(TWO, false);
    let (v, complete) = body(a.merge(vec![Ok(serde_json::json!(1)), Err("timed out".into())]));
    assert_eq!(
        v,
        serde_json::json!({"user": 1, "orders": null, "_errors": {"orders": "timed out"}})
    );
    assert!(!complete);
    let failed = a.merge(vec![Err("refused".into()), Ok(serde_json::json!(2))]);
    assert_eq!(
        failed.into_answer().err(),
        Some(GatewayError::AggregateCallFailed {
            call: "user".into(),
            reason: "refused".into()
        })
    );
}

#[test]
fn top_level_conflicts_follow_the_policy() {
    let answers = || {
        vec![
            Ok(serde_json::json!({"a": 1, "b": 2})),
            Ok(serde_json::json!({"a": 3})),
        ]
    };
    let top = |policy: &str| {
        aggregate(
            &format!("{TWO}merge: top_level\non_conflict: {policy}\n"),
            false,
        )
    };
    assert!(matches!(
        top("error").merge(answers()),
        Outcome::Conflict { ref field, ref first, ref second }
            if field == "a" && first == "user" && second == "orders"
    ));
    assert_eq!(
        body(top("first").merge(answers())).0,
        serde_json::json!({"a": 1, "b": 2})
    );
    assert_eq!(
        body(top("last").merge(answers())).0,
        serde_json::json!({"a": 3, "b": 2})
    );
}

#[test]
fn call_paths_percent_encode_claims_and_pass_the_query_when_asked() {
    let a = aggregate(
        "calls:\n  - {key: u, service: users, path: '/u/{id}/{claim.sub}', pass_query: true}\n",
        true,
    );
    let identity = Identity::for_test(None, r#"{"sub": "a/b?c"}"#);
    let params = [(Arc::<str>::from("id"), "42".to_string())];
    let connector = Connector::new(None);
    let cx = CallContext {
        services: &[],
        connector: &connector,
        params: &params,
        identity: Some(&identity),
        query: Some("x=1"),
        request_id: "rid",
        client_ip: None,
        trace: None,
    };
    assert_eq!(a.render(&a.calls[0], &cx).unwrap(), "/u/42/a%2Fb%3Fc?x=1");
}

#[test]
fn compile_errors_name_the_call_key() {
    let services: HashMap<&str, usize> = [("users", 0)].into_iter().collect();
    let bad = |yaml: &str| {
        let cfg: AggregateConfig = serde_yaml::from_str(yaml).unwrap();
        Aggregate::compile(&cfg, "aggregate", &services, &[], false)
            .err()
            .unwrap()
            .key
    };
    assert_eq!(bad("calls: []\n"), "aggregate.calls");
    assert_eq!(
        bad("calls:\n  - {key: u, service: nope, path: /u}\n"),
        "aggregate.calls[0].service"
    );
    assert_eq!(
        bad("calls:\n  - {key: u, service: users, path: '/u/{claim.sub}'}\n"),
        "aggregate.calls[0].path"
    );
}
