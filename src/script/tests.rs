use super::*;
use crate::errors::GatewayError;
use crate::testing::{request, response};
use bytes::Bytes;
use std::sync::Arc;

fn compile(source: &str) -> Result<RouteScript, Invalid> {
    compile_with(source, "")
}

fn compile_with(source: &str, limits: &str) -> Result<RouteScript, Invalid> {
    let yaml = format!("source: {source:?}\n{limits}");
    let cfg: ScriptConfig = serde_yaml::from_str(&yaml).unwrap();
    RouteScript::compile(&cfg, Path::new("."), "script", "orders")
}

fn started(script: RouteScript, req: &pingora::http::RequestHeader) -> ScriptRun {
    let mut run = ScriptRun::default();
    run.start(
        &Arc::new(script),
        RequestInput {
            req,
            path: req.uri.path(),
            params: &[],
            upstream_path: "/up",
            identity: None,
            request_id: "r-1",
            client_ip: None,
        },
    );
    run
}

fn reason(source: &str, limits: &str) -> String {
    compile_with(source, limits).unwrap_err().to_string()
}

#[test]
fn syntax_errors_name_the_line_and_column() {
    let err = compile("fn on_request(req) {\n  let x = ;\n}").unwrap_err();
    assert_eq!(err.key, "script.source");
    assert!(err.reason.starts_with("source:2:"), "{err}");
}

#[test]
fn hooks_are_checked_by_name_arity_and_presence() {
    assert!(reason("fn on_requst(req) {}", "").contains("not a hook"));
    assert!(reason("fn on_request(req, x) {}", "").contains("takes (req)"));
    assert!(reason("fn helper(x) {}", "").contains("defines none"));
    assert!(reason("let x = 1; fn on_request(req) {}", "").contains("outside functions"));
    let ok = compile("fn helper(x) { x } fn on_response(req, res) {}").unwrap();
    assert!(ok.has(Hook::OnResponse) && !ok.has(Hook::OnRequest));
}

#[test]
fn limits_must_be_usable() {
    let limits = |l: &str| reason("fn on_request(req) {}", &format!("limits: {{{l}}}"));
    assert!(limits("max_operations: 0").contains("limits.max_operations"));
    assert!(limits("timeout: 5s").contains("at most 1s"));
    assert!(limits("max_request_body_bytes: 100000").contains("64 KiB"));
    let cfg: ScriptConfig = serde_yaml::from_str("limits: {}").unwrap();
    let both = RouteScript::compile(&cfg, Path::new("."), "script", "r").unwrap_err();
    assert!(both.reason.contains("exactly one"), "{both}");
}

#[test]
fn a_missing_file_names_the_path() {
    let cfg: ScriptConfig = serde_yaml::from_str("file: nowhere.rhai").unwrap();
    let err = RouteScript::compile(&cfg, Path::new("/tmp"), "script", "r").unwrap_err();
    assert_eq!(err.key, "script.file");
    assert!(err.reason.contains("/tmp/nowhere.rhai"), "{err}");
}

fn failure(source: &str, limits: &str) -> ScriptError {
    let script = compile_with(source, limits).unwrap();
    let req = request("GET", "/orders", &[]);
    let view = api::RequestView::new(empty_state(&req));
    script.call(Hook::OnRequest, (view,)).unwrap_err()
}

fn empty_state(req: &pingora::http::RequestHeader) -> api::RequestState {
    api::RequestState {
        method: req.method.as_str().into(),
        path: req.uri.path().into(),
        query: "".into(),
        headers: req.headers.clone(),
        params: Vec::new(),
        identity: None,
        request_id: "r".into(),
        client_ip: None,
        route: "r".into(),
        edits: Vec::new(),
        upstream_path: "/".into(),
        path_changed: false,
        upstream_query: None,
        vars: rhai::Map::new(),
    }
}

#[test]
fn every_limit_ends_the_call_with_its_reason() {
    let looped = failure("fn on_request(req) { loop {} }", "");
    assert_eq!(looped, ScriptError::Operations);
    let deep = failure("fn f(n) { f(n + 1) } fn on_request(req) { f(0) }", "");
    assert_eq!(deep, ScriptError::CallDepth);
    let big = failure(
        "fn on_request(req) { let s = \"x\"; loop { s += s; } }",
        "limits: {max_operations: 1000000000}",
    );
    assert_eq!(big.reason(), "size");
    let array = failure(
        "fn on_request(req) { let a = []; loop { a.push(1); } }",
        "limits: {max_operations: 1000000000, max_array_len: 100, timeout: 1s}",
    );
    assert_eq!(array.reason(), "size");
    let slow = failure(
        "fn on_request(req) { let n = 0; loop { n += 1; } }",
        "limits: {max_operations: 100000000000, timeout: 5ms}",
    );
    assert_eq!(slow, ScriptError::Timeout);
    let thrown = failure("fn on_request(req) { throw \"secret detail\" }", "");
    assert_eq!(thrown.reason(), "error");
}

#[test]
fn on_request_edits_headers_path_and_scratch_and_may_answer() {
    let source = "fn on_request(req) {
        req.set_header(\"X-Tier\", if req.header(\"x-plan\") == \"gold\" { \"gold\" } else { \"std\" });
        req.remove_header(\"x-plan\");
        req.upstream_path = \"/v2\" + req.upstream_path;
        req.vars.seen = req.method;
        if req.header(\"x-stop\") != () { return respond(418, #{why: \"stop\"}, #{\"x-a\": 1}); }
    }";
    let req = request("GET", "/orders", &[("x-plan", "gold")]);
    let mut run = started(compile(source).unwrap(), &req);
    assert!(matches!(run.on_request(), Ok(Step::Continue)));
    assert_eq!(run.upstream_path().as_deref(), Some("/v2/up"));
    let mut upstream = req.clone();
    run.on_upstream_request(&mut upstream).unwrap();
    assert_eq!(upstream.headers["x-tier"], "gold");
    assert!(upstream.headers.get("x-plan").is_none());

    let stop = request("GET", "/orders", &[("x-stop", "1")]);
    let mut run = started(compile(source).unwrap(), &stop);
    let Ok(Step::Answer(answer)) = run.on_request() else {
        panic!("expected an answer");
    };
    assert_eq!(answer.status, 418);
    assert_eq!(&answer.body[..], br#"{"why":"stop"}"#);
    assert_eq!(answer.headers[0].1, "1");
}

#[test]
fn bad_headers_and_return_values_fail_the_call() {
    let cases = [
        "fn on_request(req) { req.set_header(\"x-a\", \"a\\r\\nb: c\"); }",
        "fn on_request(req) { req.set_header(\"bad name\", \"v\"); }",
        "fn on_request(req) { req.set_header(\"content-length\", \"5\"); }",
        "fn on_request(req) { req.upstream_path = \"no-slash\"; }",
        "fn on_request(req) { 42 }",
        "fn on_request(req) { respond(99, #{}) }",
    ];
    for source in cases {
        let req = request("GET", "/", &[]);
        let mut run = started(compile(source).unwrap(), &req);
        assert!(
            matches!(run.on_request(), Err(GatewayError::ScriptFailed)),
            "{source}"
        );
    }
}

#[test]
fn bodies_are_replaced_kept_or_refused() {
    let source = "fn on_request_body(req, body) {
        if body.amount > 1000 { return respond(403, #{error: \"too much\"}); }
        if body.keep == true { return; }
        body.seen = true;
        body
    }";
    let req = request("POST", "/", &[("content-type", "application/json")]);
    let mut run = started(compile(source).unwrap(), &req);
    assert_eq!(
        run.request_body_need(&req, true),
        BodyNeed::Read(REQUEST_BODY_CEILING)
    );
    assert!(matches!(
        run.on_request_body(&Bytes::from_static(br#"{"amount": 5000}"#)),
        Ok(Step::Answer(a)) if a.status == 403
    ));
    run.on_request_body(&Bytes::from_static(br#"{"amount": 5}"#))
        .unwrap();
    let mut chunk = Some(Bytes::from_static(b"original"));
    run.on_request_chunk(&mut chunk, true);
    assert_eq!(chunk.unwrap(), br#"{"amount":5,"seen":true}"#[..]);
    let mut kept = started(compile(source).unwrap(), &req);
    kept.on_request_body(&Bytes::from_static(br#"{"keep": true}"#))
        .unwrap();
    let mut chunk = Some(Bytes::from_static(b"original"));
    kept.on_request_chunk(&mut chunk, true);
    assert_eq!(chunk.unwrap(), "original");
    assert!(matches!(
        kept.on_request_body(&Bytes::from_static(b"not json")),
        Err(GatewayError::InvalidJsonBody)
    ));
    let plain = request("POST", "/", &[("content-type", "text/plain")]);
    assert_eq!(kept.request_body_need(&plain, true), BodyNeed::None);
}

#[test]
fn response_hooks_edit_the_head_and_rewrite_the_body() {
    let source = "fn on_response(req, res) {
        res.set_header(\"x-upstream-status\", res.status);
        res.status = 203;
    }
    fn on_response_body(req, res, body) {
        #{wrapped: body, status: res.status}
    }";
    let req = request("GET", "/", &[]);
    let mut run = started(compile(source).unwrap(), &req);
    let mut resp = response(
        200,
        &[
            ("content-type", "application/json"),
            ("content-length", "7"),
        ],
    );
    run.on_response_header(&req, &mut resp).unwrap();
    assert_eq!(resp.status.as_u16(), 203);
    assert_eq!(resp.headers["x-upstream-status"], "200");
    assert!(resp.headers.get("content-length").is_none());
    let mut first = Some(Bytes::from_static(b"[1,"));
    run.on_response_body(&mut first, false).unwrap();
    assert!(first.is_none());
    let mut last = Some(Bytes::from_static(b"2]"));
    run.on_response_body(&mut last, true).unwrap();
    assert_eq!(last.unwrap(), br#"{"status":203,"wrapped":[1,2]}"#[..]);
}

#[test]
fn the_head_is_read_only_once_sent() {
    let source = "fn on_response_body(req, res, body) { res.set_header(\"x-late\", 1); body }";
    let req = request("GET", "/", &[]);
    let mut run = started(compile(source).unwrap(), &req);
    let mut resp = response(200, &[("content-type", "application/json")]);
    run.on_response_header(&req, &mut resp).unwrap();
    let mut body = Some(Bytes::from_static(b"{}"));
    assert!(matches!(
        run.on_response_body(&mut body, true),
        Err(GatewayError::ScriptFailed)
    ));
}

#[test]
fn eval_and_import_are_not_available() {
    assert!(compile("fn on_request(req) { eval(\"1\") }").is_err());
    assert!(compile("import \"x\" as y; fn on_request(req) {}").is_err());
}
