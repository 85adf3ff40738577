//! Loopback ports for servers the tests start as processes (the gateway, redis, etcd, dnsmasq).
//!
//! A port taken with `bind(127.0.0.1:0)` and released for a child process to bind again can be
//! handed by the kernel to any other `bind(…:0)` in the meantime, and Pingora then retries its
//! bind while the test talks to a stranger's listener (seen in CI as a closed HTTP/2 channel).
//! So ports come from below the kernel's ephemeral range, where `bind(0)` and `connect` never
//! pick, and each one is reserved with a file lock for the life of the test process: no other
//! test thread or test process is handed it again.

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

/// Where this process's search goes on, and the lock files of the ports it handed out.
struct Reserved {
    next: usize,
    locks: Vec<File>,
}

static RESERVED: Mutex<Reserved> = Mutex::new(Reserved {
    next: 0,
    locks: Vec::new(),
});

/// The lowest port candidates start at: clear of well-known and registered service ports.
const LOWEST: u16 = 12_000;

/// A loopback port that is free and reserved for this process: nothing else in any test
/// process gets it, and the kernel does not hand it to `bind(0)` or outgoing connections.
pub fn reserve() -> u16 {
    static CANDIDATES: OnceLock<Vec<u16>> = OnceLock::new();
    let candidates = CANDIDATES.get_or_init(candidates);
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join("apigateway-test-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    // Start somewhere different in each process so parallel test binaries rarely contend,
    // and go on past the ports already handed out.
    let start = (std::process::id() as usize).wrapping_mul(7919);
    while reserved.next < candidates.len() {
        let port = candidates[(start + reserved.next) % candidates.len()];
        reserved.next += 1;
        let Ok(lock) = File::create(dir.join(port.to_string())) else {
            continue;
        };
        // The lock goes with the process, so a crashed run leaves nothing reserved.
        if lock.try_lock().is_err() || !bindable(port) {
            continue;
        }
        reserved.locks.push(lock);
        return port;
    }
    panic!("no free loopback port below the ephemeral range");
}

/// Ports below the kernel's ephemeral range (and above it, when that starts low).
fn candidates() -> Vec<u16> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let below = LOWEST..low.max(LOWEST);
    let above = high.saturating_add(1).max(LOWEST)..u16::MAX;
    below.chain(above).collect()
}

/// Whether nothing listens on the port, over TCP or UDP (dnsmasq takes both).
fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}
