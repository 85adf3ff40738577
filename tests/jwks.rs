//! JWKS key sets through the real gateway: rotation with single-flight refresh and
//! stale-if-error, a key-set URL down at startup, key sets from files.

mod common;
use common::tokens::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::Duration;

fn jwks_doc(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, file)| {
            let key = EncodingKey::from_rsa_pem(&pem(file)).unwrap();
            let mut jwk = serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap(),
            )
            .unwrap();
            jwk["kid"] = json!(kid);
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn mint_rs(kid: &str, file: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        &claims(json!({})),
        &EncodingKey::from_rsa_pem(&pem(file)).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn jwks_rotation_single_flight_and_stale_if_error() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let mut jwks = JsonServer::start(jwks_doc(&[("k1", "rsa.pem")])).await;
    let gw = Gateway::start(&format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  jwks:\n    - {{url: 'http://{}/jwks', ttl: 1h, min_refresh_interval: 2s}}\nroutes:\n  - {{path: /, service: api, auth: required}}\n",
        up.addr, jwks.addr
    ));
    // The startup fetch happens in the background; wait until k1 is usable.
    let k1 = mint_rs("k1", "rsa.pem");
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&gw, "/", Some(&k1)).await.0 == 200
        })
        .await
    );
    let after_start = jwks.hits();

    // A concurrent flood of unknown kids costs at most one fetch per interval.
    let flood = (0..40).map(|i| {
        let t = mint_rs(&format!("unknown-{i}"), "rsa.pem");
        let gw = &gw;
        async move { get(gw, "/", Some(&t)).await.0 }
    });
    for status in futures::future::join_all(flood).await {
        assert_eq!(status, 401);
    }
    assert!(
        jwks.hits() - after_start <= 1,
        "{} fetches for the flood",
        jwks.hits() - after_start
    );

    // A new key published upstream is picked up without a restart.
    jwks.set_body(jwks_doc(&[("k1", "rsa.pem"), ("k2", "rsa2.pem")]));
    let k2 = mint_rs("k2", "rsa2.pem");
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&gw, "/", Some(&k2)).await.0 == 200
        })
        .await
    );

    // With the JWKS server gone, known keys keep working (fresh tokens, not cached ones).
    jwks.stop();
    tokio::time::sleep(Duration::from_millis(2100)).await; // let the refresh interval pass
    let unknown = mint_rs("k3", "rsa.pem");
    assert_eq!(get(&gw, "/", Some(&unknown)).await.0, 401);
    let fresh_k1 = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("k1".into());
            h
        },
        &claims(json!({"sub": "after-outage"})),
        &EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(get(&gw, "/", Some(&fresh_k1)).await.0, 200);
    assert!(gw.stderr().contains("fetch failed"), "outage not logged");
}

#[tokio::test]
async fn gateway_starts_when_jwks_url_is_down() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  jwks:\n    - {{url: 'http://{}/jwks', min_refresh_interval: 1s}}\nroutes:\n  - {{path: /, service: api, auth: required}}\n",
        up.addr,
        dead_addr()
    ));
    let t = mint_rs("k1", "rsa.pem");
    assert_eq!(get(&gw, "/", Some(&t)).await.0, 401);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.stderr().contains("fetch failed")
        })
        .await
    );
}

#[tokio::test]
async fn jwks_file_keys_are_loaded_at_startup() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_doc(&[("file-key", "rsa2.pem")])).unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  jwks:\n    - {{file: '{}'}}\nroutes:\n  - {{path: /, service: api, auth: required}}\n",
        up.addr,
        path.display()
    ));
    assert_eq!(
        get(&gw, "/", Some(&mint_rs("file-key", "rsa2.pem")))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&gw, "/", Some(&mint_rs("file-key", "rsa.pem"))).await.0,
        401
    );
}
