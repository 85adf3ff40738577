//! The systemd unit: `systemd-analyze verify` (with the unit pointed at the built binary) and
//! the invariants the upgrade depends on.

mod common;
use common::binary;

const UNIT: &str = include_str!("../systemd/apigateway.service");

fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn reload_validates_then_signals_then_upgrades() {
    let reload = values("ExecReload");
    assert_eq!(reload.len(), 3, "{reload:?}");
    assert!(reload[0].contains(" -t -c "), "{reload:?}");
    assert!(reload[1].contains("kill -QUIT $MAINPID"), "{reload:?}");
    assert!(reload[2].contains(" -u -d -c "), "{reload:?}");
    assert!(values("ExecStartPre")[0].contains(" -t -c "));
    assert_eq!(values("Type"), ["forking"]);
    assert_eq!(values("PIDFile"), ["/run/apigateway/apigateway.pid"]);
    // TimeoutStopSec must outlast Pingora's grace period plus its shutdown timeout.
    let defaults = apigateway::config::ServerSettings::default();
    let stop: u64 = values("TimeoutStopSec")[0].parse().unwrap();
    assert!(
        stop > defaults.grace_period_seconds + defaults.graceful_shutdown_timeout_seconds,
        "TimeoutStopSec={stop}"
    );
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "RuntimeDirectory",
    ] {
        assert_eq!(values(key).len(), 1, "{key} missing");
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed; the structural test above still runs");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("apigateway.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/apigateway", binary())).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &*String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert!(
        !text.contains("apigateway.service:"),
        "warnings about the unit:\n{text}"
    );
}
