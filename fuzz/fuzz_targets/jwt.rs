//! JWT header and claims parsing and verification with arbitrary tokens against HS256 and
//! RS256 keys: never a panic, and nothing random verifies.
#![no_main]

use apigateway::auth::{Auth, AuthConfig};
use libfuzzer_sys::fuzz_target;
use once_cell::sync::Lazy;

static AUTH: Lazy<Auth> = Lazy::new(|| {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keys");
    let yaml = format!(
        "keys:
  - {{kid: hs, alg: HS256, secret: fuzz-secret-0123456789-abcdefghijklmnop}}
  - {{kid: rs, alg: RS256, public_key_file: {keys}/rsa.pub.pem}}
issuer: fuzz
audience: [api]
max_lifetime: 1d
"
    );
    let cfg: AuthConfig = serde_yaml::from_str(&yaml).expect("auth config parses");
    Auth::compile(&cfg).expect("auth compiles")
});

static RUNTIME: Lazy<tokio::runtime::Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verified = RUNTIME.block_on(AUTH.verifier.verify(token));
    assert!(verified.is_err(), "a fuzzed token verified: {token:?}");
});
