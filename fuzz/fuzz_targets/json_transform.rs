//! JSON body transforms on arbitrary bodies: never a panic; the output of a successful rewrite
//! is a JSON object.
#![no_main]

use apigateway::template::{TemplateScope, TemplateVars};
use apigateway::transform::json::{JsonOps, JsonOpsConfig};
use libfuzzer_sys::fuzz_target;
use once_cell::sync::Lazy;

static OPS: Lazy<JsonOps> = Lazy::new(|| {
    let cfg: JsonOpsConfig = serde_yaml::from_str(
        "remove: [password, user.secret, a.b.c.d]
rename: {user.name: user.full_name, id: user.id}
set: {meta.request: '{request_id}', meta.id: '{id}', flag: true}
add: {user.tags: [], count: 0}
",
    )
    .expect("ops parse");
    let params = vec!["id".to_string()];
    let scope = TemplateScope {
        params: &params,
        claims: false,
    };
    JsonOps::compile(&cfg, "fuzz", &scope).expect("ops compile")
});

fuzz_target!(|data: &[u8]| {
    let params = [(std::sync::Arc::from("id"), "42".to_string())];
    let vars = TemplateVars {
        params: &params,
        identity: None,
        request_id: "fuzz",
        client_ip: None,
    };
    if let Ok(out) = OPS.apply(data, &vars) {
        let value: serde_json::Value = serde_json::from_slice(&out).expect("output is JSON");
        assert!(value.is_object());
    }
});
