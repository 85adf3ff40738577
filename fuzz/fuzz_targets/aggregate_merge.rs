//! Aggregate merging of arbitrary call answers (JSON or failures), keyed and top-level with
//! each conflict policy: never a panic; a merged body is a JSON object.
#![no_main]

use apigateway::aggregate::{Aggregate, AggregateConfig, Outcome};
use libfuzzer_sys::fuzz_target;
use once_cell::sync::Lazy;
use std::collections::HashMap;

fn aggregate(merge: &str, on_conflict: &str) -> Aggregate {
    let cfg: AggregateConfig = serde_yaml::from_str(&format!(
        "merge: {merge}
on_conflict: {on_conflict}
calls:
  - {{key: a, service: s, path: /a}}
  - {{key: b, service: s, path: /b, required: false}}
  - {{key: c, service: s, path: /c, required: false}}
"
    ))
    .expect("aggregate parses");
    let services = HashMap::from([("s", 0usize)]);
    Aggregate::compile(&cfg, "fuzz", &services, &[], false).expect("aggregate compiles")
}

static AGGREGATES: Lazy<Vec<Aggregate>> = Lazy::new(|| {
    vec![
        aggregate("keyed", "error"),
        aggregate("top_level", "error"),
        aggregate("top_level", "first"),
        aggregate("top_level", "last"),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // Three answers separated by NUL; an answer that is not JSON stands for a failed call.
    let mut parts = rest.split(|b| *b == 0);
    let results = (0..3)
        .map(|_| {
            let part = parts.next().unwrap_or_default();
            serde_json::from_slice(part).map_err(|_| "call failed".to_string())
        })
        .collect();
    let aggregate = &AGGREGATES[selector as usize % AGGREGATES.len()];
    if let Outcome::Merged { body, .. } = aggregate.merge(results) {
        let value: serde_json::Value = serde_json::from_slice(&body).expect("merged is JSON");
        assert!(value.is_object());
    }
});
