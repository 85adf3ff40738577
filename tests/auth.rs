//! Authentication through the real gateway: tokens are minted here with the keys in
//! tests/fixtures (never by the gateway), sent to the gateway binary, and the upstream's echo
//! shows what identity reached it.

mod common;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::tokens::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn every_supported_algorithm_is_accepted_and_identity_forwarded() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let token = mint(alg, &claims(json!({"sub": format!("u-{alg:?}")})));
        let (status, _, body) = get(&gw, "/user/x", Some(&token)).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(body["headers"]["x-user-id"], format!("u-{alg:?}"));
        assert_eq!(body["headers"]["x-user-role"], "user");
        assert!(
            body["headers"].get("authorization").is_none(),
            "token forwarded by default"
        );
    }
    // The same token twice (second from the cache) still works.
    let token = mint(Algorithm::RS256, &claims(json!({})));
    assert_eq!(get(&gw, "/user", Some(&token)).await.0, 200);
    assert_eq!(get(&gw, "/user", Some(&token)).await.0, 200);
}

#[tokio::test]
async fn forged_malformed_and_out_of_policy_tokens_are_401() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let rsa_public_pem = pem("rsa.pub.pem");
    let confusion_key = EncodingKey::from_secret(&rsa_public_pem);
    let good = mint(Algorithm::HS256, &claims(json!({})));
    let (head, _) = good.split_once('.').unwrap();
    let payload = serde_json::to_string(&claims(json!({}))).unwrap();
    let exp = now() + 300;
    let mut cases: Vec<(&str, String)> = vec![
        (
            "tampered payload",
            format!(
                "{head}.{}.{}",
                B64.encode(serde_json::to_string(&claims(json!({"role": "admin"}))).unwrap()),
                good.rsplit('.').next().unwrap()
            ),
        ),
        (
            "stripped signature",
            format!("{}.", good.rsplit_once('.').unwrap().0),
        ),
        (
            "garbage signature",
            format!(
                "{}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                good.rsplit_once('.').unwrap().0
            ),
        ),
        ("two segments", good.rsplit_once('.').unwrap().0.to_string()),
        ("four segments", format!("{good}.x")),
        (
            "HS256 signed with the RSA public key, rs kid",
            raw(
                r#"{"alg":"HS256","kid":"rs"}"#,
                &payload,
                Some((Algorithm::HS256, &confusion_key)),
            ),
        ),
        (
            "HS256 signed with the RSA public key, no kid",
            raw(
                r#"{"alg":"HS256"}"#,
                &payload,
                Some((Algorithm::HS256, &confusion_key)),
            ),
        ),
        (
            "RS256 header on the HS key",
            raw(
                r#"{"alg":"RS256","kid":"hs"}"#,
                &payload,
                Some((Algorithm::RS256, &encoding_key(Algorithm::RS256))),
            ),
        ),
        (
            "expired beyond leeway",
            mint(Algorithm::HS256, &claims(json!({"exp": now() - 120}))),
        ),
        (
            "future nbf",
            mint(Algorithm::HS256, &claims(json!({"nbf": now() + 3600}))),
        ),
        (
            "nbf as a string",
            raw(
                r#"{"alg":"HS256","kid":"hs"}"#,
                &format!(
                    r#"{{"sub":"u","iss":"{ISSUER}","aud":"api","exp":{exp},"nbf":"99999999999"}}"#
                ),
                Some((Algorithm::HS256, &hs)),
            ),
        ),
        (
            "missing exp",
            mint(Algorithm::HS256, &claims(json!({"exp": null}))),
        ),
        (
            "exp as a string",
            raw(
                r#"{"alg":"HS256","kid":"hs"}"#,
                &format!(r#"{{"sub":"u","iss":"{ISSUER}","aud":"api","exp":"{exp}"}}"#),
                Some((Algorithm::HS256, &hs)),
            ),
        ),
        (
            "wrong iss",
            mint(
                Algorithm::HS256,
                &claims(json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "missing iss",
            mint(Algorithm::HS256, &claims(json!({"iss": null}))),
        ),
        (
            "wrong aud",
            mint(Algorithm::HS256, &claims(json!({"aud": "billing"}))),
        ),
        (
            "missing aud",
            mint(Algorithm::HS256, &claims(json!({"aud": null}))),
        ),
        (
            "lifetime over max_lifetime",
            mint(Algorithm::HS256, &claims(json!({"exp": now() + 3 * 86400}))),
        ),
        (
            "crit header",
            raw(
                r#"{"alg":"HS256","kid":"hs","crit":["x-custom"],"x-custom":1}"#,
                &payload,
                Some((Algorithm::HS256, &hs)),
            ),
        ),
        (
            "duplicate role claim",
            raw(
                r#"{"alg":"HS256","kid":"hs"}"#,
                &payload.replacen('{', r#"{"role":"admin","#, 1),
                Some((Algorithm::HS256, &hs)),
            ),
        ),
        (
            "unknown kid",
            raw(
                r#"{"alg":"HS256","kid":"../../etc/passwd"}"#,
                &payload,
                Some((Algorithm::HS256, &hs)),
            ),
        ),
        (
            "oversized",
            mint(Algorithm::HS256, &claims(json!({"pad": "x".repeat(5000)}))),
        ),
    ];
    for alg in ["none", "None", "NONE", "nOnE"] {
        cases.push((
            "alg none",
            raw(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), &payload, None),
        ));
    }
    for (name, token) in &cases {
        let (status, headers, body) = get(&gw, "/user", Some(token)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"], "Invalid token", "{name}");
        assert_eq!(
            headers["www-authenticate"], r#"Bearer realm="apigateway", error="invalid_token""#,
            "{name}"
        );
        assert!(
            !body.to_string().contains(token.as_str()),
            "{name}: token echoed"
        );
    }
    assert_eq!(up.requests(), 0, "a refused request reached the upstream");
    assert!(!gw.stderr().contains(&good[..40]), "token in the log");
}

#[tokio::test]
async fn leeway_edges_and_header_forms() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    let within = mint(Algorithm::HS256, &claims(json!({"exp": now() - 10})));
    assert_eq!(
        get(&gw, "/user", Some(&within)).await.0,
        200,
        "expired within leeway"
    );

    let token = mint(Algorithm::HS256, &claims(json!({})));
    let c = client();
    let lower = send(
        c.get(gw.url("/user"))
            .header("authorization", format!("bearer {token}")),
    )
    .await;
    assert_eq!(lower.0, 200, "lowercase scheme");
    let double_space = send(
        c.get(gw.url("/user"))
            .header("authorization", format!("Bearer  {token}")),
    )
    .await;
    assert_eq!(double_space.0, 401);
    let two = send(
        c.get(gw.url("/user"))
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", format!("Bearer {token}")),
    )
    .await;
    assert_eq!(two.0, 401, "two Authorization headers");
    let empty = send(c.get(gw.url("/user")).header("authorization", "Bearer")).await;
    assert_eq!(empty.0, 401);
}

#[tokio::test]
async fn missing_token_roles_scopes_and_optional_routes() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    let (status, headers, body) = get(&gw, "/user", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "No token provided");
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="apigateway""#);

    let user = mint(Algorithm::HS256, &claims(json!({})));
    let admin = mint(Algorithm::HS256, &claims(json!({"role": "admin"})));
    let (status, headers, body) = get(&gw, "/admin", Some(&user)).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "Insufficient permissions");
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer realm="apigateway", error="insufficient_scope""#
    );
    assert_eq!(get(&gw, "/admin", Some(&admin)).await.0, 200);
    let case_differs = mint(Algorithm::HS256, &claims(json!({"role": "Admin"})));
    assert_eq!(get(&gw, "/admin", Some(&case_differs)).await.0, 403);

    let read = mint(Algorithm::HS256, &claims(json!({"scope": "read"})));
    let both = mint(
        Algorithm::HS256,
        &claims(json!({"scope": "write read profile"})),
    );
    assert_eq!(get(&gw, "/scoped-all", Some(&read)).await.0, 403);
    assert_eq!(get(&gw, "/scoped-all", Some(&both)).await.0, 200);
    assert_eq!(get(&gw, "/scoped-any", Some(&read)).await.0, 200);

    let (status, _, body) = get(&gw, "/maybe", None).await;
    assert_eq!(status, 200);
    assert!(body["headers"].get("x-user-id").is_none());
    assert_eq!(
        get(&gw, "/maybe", Some(&user)).await.2["headers"]["x-user-id"],
        "user-1"
    );
    assert_eq!(
        get(&gw, "/maybe", Some("not.a.token")).await.0,
        401,
        "bad token on optional route"
    );
}

#[tokio::test]
async fn cookie_and_query_tokens_are_used_then_removed() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    let token = mint(Algorithm::ES256, &claims(json!({})));
    let c = client();
    let (status, _, body) = send(
        c.get(gw.url("/user"))
            .header("cookie", format!("theme=dark; session={token}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["cookie"], "theme=dark");
    let (status, _, body) =
        send(c.get(gw.url(&format!("/user?a=1&access_token={token}&b=2")))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["query"], "a=1&b=2");
    assert_eq!(body["headers"]["x-user-id"], "user-1");
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_upstreams() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    let c = client();
    let spoof = |req: reqwest::RequestBuilder| {
        req.header("x-user-id", "admin")
            .header("X-User-Role", "admin")
    };
    let (_, _, body) = send(spoof(c.get(gw.url("/open")))).await;
    assert!(body["headers"].get("x-user-id").is_none(), "{body}");
    assert!(body["headers"].get("x-user-role").is_none(), "{body}");
    let token = mint(Algorithm::HS256, &claims(json!({})));
    let (_, _, body) = send(spoof(c.get(gw.url("/user"))).bearer_auth(&token)).await;
    assert_eq!(body["headers"]["x-user-id"], "user-1");
    assert_eq!(body["headers"]["x-user-role"], "user");
    // Authorization is forwarded only where the route asks for it.
    let (_, _, body) = send(c.get(gw.url("/fwd")).bearer_auth(&token)).await;
    assert_eq!(body["headers"]["authorization"], format!("Bearer {token}"));
}

#[tokio::test]
async fn claims_that_would_inject_headers_are_refused() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&auth_config(&up));
    let token = mint(Algorithm::HS256, &claims(json!({"sub": "x\r\nX-Admin: 1"})));
    assert_eq!(get(&gw, "/user", Some(&token)).await.0, 401);
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn cached_tokens_stop_working_at_exp() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  keys: [{{kid: hs, alg: HS256, secret: {SECRET}}}]\n  leeway: 0s\nroutes:\n  - {{path: /, service: api, auth: required}}\n",
        up.addr
    ));
    let short = mint(Algorithm::HS256, &json!({"sub": "u", "exp": now() + 2}));
    assert_eq!(get(&gw, "/", Some(&short)).await.0, 200);
    assert_eq!(
        get(&gw, "/", Some(&short)).await.0,
        200,
        "served from the cache"
    );
    // Expiry is a wall-clock property: nothing to poll for but the clock itself.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        get(&gw, "/", Some(&short)).await.0,
        401,
        "the cache outlived exp"
    );
}

#[tokio::test]
async fn a_flood_of_invalid_tokens_from_one_ip_is_refused_before_verification() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let admin_port = free_port();
    let config = auth_config(&up).replace(
        "  max_token_bytes: 4096\n",
        "  max_token_bytes: 4096\n  invalid_token_limit: {failures: 5, period: 1m}\n",
    );
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin_port}'}}\n{config}"
    ));
    let known = mint(Algorithm::RS256, &claims(json!({})));
    assert_eq!(get(&gw, "/user", Some(&known)).await.0, 200);
    // A correctly shaped RS256 token with a forged signature: each costs a signature check.
    let forged = format!(
        "{}x",
        mint(Algorithm::RS256, &claims(json!({"sub": "mallory"})))
    );
    for _ in 0..5 {
        assert_eq!(get(&gw, "/user", Some(&forged)).await.0, 401);
    }
    let (status, headers, body) = get(&gw, "/user", Some(&forged)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "Too many requests with invalid tokens");
    assert_eq!(headers["retry-after"], "60");
    // While throttled, a token never verified before is refused unverified too...
    let fresh = mint(Algorithm::RS256, &claims(json!({"sub": "new"})));
    assert_eq!(get(&gw, "/user", Some(&fresh)).await.0, 429);
    // ...but one the gateway already verified still works (no signature check needed),
    assert_eq!(get(&gw, "/user", Some(&known)).await.0, 200);
    // routes without auth are untouched, and another client IP is not throttled.
    assert_eq!(get(&gw, "/open", Some(&forged)).await.0, 200);
    let other = client_from("127.0.0.2");
    let (status, _, _) = send(
        other
            .get(gw.url("/user"))
            .header("authorization", format!("Bearer {forged}")),
    )
    .await;
    assert_eq!(status, 401);
    let metrics = metrics_text(admin_port).await;
    assert!(
        metrics.contains(r#"apigateway_auth_failures_total{reason="invalid_token_throttled"} 2"#),
        "{metrics}"
    );
}
