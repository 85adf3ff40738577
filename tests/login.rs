//! The login endpoint through the real gateway: tokens it issues are accepted by its own routes,
//! failures never say which users exist, and attempts are throttled per client IP.

mod common;
use common::*;
use serde_json::Value;

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    send(client().get(gw.url(path)).bearer_auth(token)).await
}

fn login_config(upstream: &EchoServer, attempts: u32) -> String {
    format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  keys:\n    - {{kid: login, alg: ES256, public_key_file: {pub_}, private_key_file: {priv_}}}\n  login: {{users_file: {users}, signing_key: login, token_ttl: 10m, attempts_per_minute: {attempts}}}\nroutes:\n  - {{path: /api, service: api, auth: required}}\n",
        upstream.addr,
        pub_ = fixture("keys/ec256.pub.pem"),
        priv_ = fixture("keys/ec256.pem"),
        users = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/users.yaml"),
    )
}

async fn login(gw: &Gateway, body: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    send(
        client()
            .post(gw.url("/auth/login"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

#[tokio::test]
async fn login_issues_tokens_that_the_gateway_accepts() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&login_config(&up, 20));
    let (status, _, body) =
        login(&gw, r#"{"email":"test@example.com","password":"password"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    let token = body["token"].as_str().unwrap();
    let (status, _, echoed) = get(&gw, "/api/x", token).await;
    assert_eq!(status, 200);
    assert_eq!(echoed["headers"]["x-user-id"], "test@example.com");
    assert_eq!(echoed["headers"]["x-user-role"], "user");

    let wrong = login(&gw, r#"{"email":"test@example.com","password":"nope"}"#).await;
    let unknown = login(
        &gw,
        r#"{"email":"ghost@example.com","password":"password"}"#,
    )
    .await;
    assert_eq!(wrong.0, 401);
    assert_eq!(unknown.0, 401);
    assert_eq!(
        wrong.2["error"], unknown.2["error"],
        "responses must not reveal which users exist"
    );
    assert_eq!(login(&gw, "{not json").await.0, 400);
    assert_eq!(login(&gw, r#"{"email":"test@example.com"}"#).await.0, 400);
    let (status, headers, _) = send(client().get(gw.url("/auth/login"))).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    let big = format!(r#"{{"email":"a","password":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(login(&gw, &big).await.0, 413);
}

#[tokio::test]
async fn login_attempts_are_throttled_per_client_ip() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&login_config(&up, 3));
    for _ in 0..3 {
        assert_eq!(
            login(&gw, r#"{"email":"test@example.com","password":"bad"}"#)
                .await
                .0,
            401
        );
    }
    let (status, headers, body) =
        login(&gw, r#"{"email":"test@example.com","password":"password"}"#).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "Too many login attempts");
    assert_eq!(headers["retry-after"], "60");
}
