//! Bad configurations never start: `apigateway -t` (and a normal start) exits non-zero with a
//! message naming the file, the key path and the line (for compile errors, where the key can be
//! found in the file).

mod common;
use common::*;

const SERVICES: &str = "services:\n  users:\n    backends: ['127.0.0.1:3001']\n";

fn config(services: &str, routes: &str) -> String {
    format!("listen: ['127.0.0.1:0']\n{services}routes:\n{routes}")
}

fn assert_rejected(yaml: &str, expected: &[&str]) {
    let (ok, out, path) = check_config(yaml);
    assert!(!ok, "accepted:\n{yaml}");
    assert!(
        out.contains(&path.display().to_string()),
        "no file name in: {out}"
    );
    for e in expected {
        assert!(out.contains(e), "{e:?} missing from: {out}");
    }
}

#[test]
fn valid_config_passes_test_mode_without_binding() {
    // The port is held by this test: -t must not try to bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let yaml = format!(
        "listen: ['127.0.0.1:{port}']\n{SERVICES}routes:\n  - path: /api/users\n    service: users\n"
    );
    let (ok, out, _) = check_config(&yaml);
    assert!(ok, "{out}");
    assert!(out.contains("is valid (1 routes, 1 services)"), "{out}");
}

#[test]
fn shipped_demo_config_is_valid() {
    // A copy next to the TLS files `make run` generates (conf/tls/ is not in the repository).
    let dir = tempfile::tempdir().unwrap();
    for f in ["gateway.yaml", "users.yaml", "consumers.yaml"] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("conf")
                .join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/scripts/orders.rhai"),
        dir.path().join("scripts/orders.rhai"),
    )
    .unwrap();
    let ca = common::pki::TestCa::new("demo");
    ca.issue(&dir.path().join("tls"), "localhost", &["localhost"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apigateway"))
        .args(["-t", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_key_names_key_and_line() {
    let yaml = config(
        SERVICES,
        "  - path: /a\n    service: users\n    strip_prefx: false\n",
    );
    assert_rejected(
        &yaml,
        &["routes[0]", "unknown field `strip_prefx`", "line 8"],
    );
}

#[test]
fn route_naming_missing_service() {
    let yaml = config(
        SERVICES,
        "  - path: /a\n    service: users\n  - path: /b\n    service: user\n",
    );
    assert_rejected(
        &yaml,
        &[
            "routes[1].service",
            "unknown service \"user\"",
            "users",
            "(line 9)",
        ],
    );
}

#[test]
fn duplicate_and_conflicting_routes() {
    let dup = config(
        SERVICES,
        "  - path: /a\n    service: users\n  - path: /a/\n    service: users\n",
    );
    assert_rejected(&dup, &["routes[1].path", "duplicates routes[0]"]);
    let params = config(
        SERVICES,
        "  - path: /u/:id\n    service: users\n  - path: /u/:name\n    service: users\n",
    );
    assert_rejected(&params, &["routes[1].path", "duplicates routes[0]"]);
}

#[test]
fn invalid_patterns_and_templates() {
    for (routes, key) in [
        ("  - path: api\n    service: users\n", "routes[0].path"),
        ("  - path: /a/*/b\n    service: users\n", "routes[0].path"),
        (
            "  - path: /a/:id\n    service: users\n    rewrite: /b/{user}\n",
            "routes[0].rewrite",
        ),
        (
            "  - path: /a\n    service: users\n    methods: [GETT]\n",
            "routes[0].methods",
        ),
        (
            "  - path: /a\n    service: users\n    match: regex\n",
            "routes[0].match",
        ),
    ] {
        assert_rejected(&config(SERVICES, routes), &[key]);
    }
}

#[test]
fn unparsable_addresses_and_zero_backends() {
    let route = "  - path: /a\n    service: users\n";
    let bad_backend = "services:\n  users:\n    backends: ['127.0.0.1:3001', 'not an address']\n";
    assert_rejected(
        &config(bad_backend, route),
        &["services.users.backends[1]", "not an address"],
    );
    let no_backends = "services:\n  users:\n    backends: []\n";
    assert_rejected(
        &config(no_backends, route),
        &["services.users.backends", "at least one backend"],
    );
    let bad_listen = format!("listen: ['8080']\n{SERVICES}routes:\n{route}");
    assert_rejected(&bad_listen, &["listen[0]", "not an ip:port"]);
    let bad_duration =
        "services:\n  users:\n    backends: ['127.0.0.1:1']\n    timeouts: {read: soon}\n";
    assert_rejected(
        &config(bad_duration, route),
        &["services.users.timeouts", "invalid duration"],
    );
    let bad_hash = "services:\n  users:\n    backends: ['127.0.0.1:1']\n    load_balancing: consistent_hash\n    hash_key: cookie\n";
    assert_rejected(&config(bad_hash, route), &["services.users.hash_key"]);
    let zero_deadline = format!("client: {{header_timeout: 0s}}\n{SERVICES}");
    assert_rejected(
        &config(&zero_deadline, route),
        &["client.header_timeout", "greater than 0"],
    );
    let no_connections = format!("client: {{max_connections: 0}}\n{SERVICES}");
    assert_rejected(&config(&no_connections, route), &["client.max_connections"]);
}

#[test]
fn missing_file_and_bad_config_fail_a_normal_start_too() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apigateway"))
        .args(["-c", "/nonexistent/gateway.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/gateway.yaml: cannot read config file"),
        "{err}"
    );

    let (_dir, path) = write_config(&config(SERVICES, "  - path: /a\n    service: nobody\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apigateway"))
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].service"));
}

#[test]
fn weak_secrets_and_inconsistent_auth_are_refused() {
    let route = "  - path: /a\n    service: users\n    auth: required\n";
    let auth = |keys: &str| format!("{SERVICES}auth:\n  keys:\n{keys}");
    assert_rejected(
        &config(&auth("    - {alg: HS256, secret: short}\n"), route),
        &["auth.keys[0].secret", "at least 32 bytes"],
    );
    assert_rejected(
        &config(
            &auth("    - {alg: HS256, secret_env: APIGW_TEST_UNSET_VARIABLE}\n"),
            route,
        ),
        &[
            "auth.keys[0].secret_env",
            "APIGW_TEST_UNSET_VARIABLE is not set",
        ],
    );
    assert_rejected(
        &config(
            &auth("    - {alg: RS256, public_key_file: /nonexistent.pem}\n"),
            route,
        ),
        &["auth.keys[0].public_key_file", "cannot read"],
    );
    assert_rejected(
        &config(&auth("    - {alg: HS999, secret: x}\n"), route),
        &["auth.keys[0]", "HS999"],
    );
    assert_rejected(&config(SERVICES, route), &["routes[0].auth", "auth:"]);
    let roles_without_auth = "  - path: /a\n    service: users\n    roles: [admin]\n";
    assert_rejected(
        &config(
            &auth("    - {alg: HS256, secret: 0123456789abcdef0123456789abcdef}\n"),
            roles_without_auth,
        ),
        &["routes[0].auth", "roles"],
    );
    let login_without_private = format!(
        "{SERVICES}auth:\n  keys:\n    - {{kid: k, alg: ES256, public_key_file: {}}}\n  login: {{users_file: {}, signing_key: k}}\n",
        fixture("keys/ec256.pub.pem"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/users.yaml")
    );
    assert_rejected(
        &config(&login_without_private, route),
        &["auth.keys[0]", "private_key_file"],
    );
}

#[test]
fn hash_password_prints_an_argon2id_hash_the_users_file_accepts() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_apigateway"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    // The hash works in a users file the gateway loads.
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.yaml");
    std::fs::write(
        &users,
        format!(
            "users:\n  - {{email: a@b.c, password_hash: '{}', roles: [user]}}\n",
            hash.trim()
        ),
    )
    .unwrap();
    let yaml = format!(
        "{SERVICES}auth:\n  keys: [{{kid: k, alg: HS256, secret: 0123456789abcdef0123456789abcdef}}]\n  login: {{users_file: {}, signing_key: k}}\n",
        users.display()
    );
    let (ok, out, _) = check_config(&config(&yaml, "  - path: /a\n    service: users\n"));
    assert!(ok, "{out}");
}
