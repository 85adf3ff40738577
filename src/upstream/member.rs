//! A service's members: what the gateway keeps about each backend beside Pingora's health
//! state.
//!
//! The state rides in the `Backend`'s extensions (Pingora's `Backend` compares and hashes only
//! address and weight), so it follows the backend through Pingora's selection without a lookup
//! table, and a backend that DNS discovery keeps across refreshes keeps its breaker and load.

use super::breaker::Breaker;
use super::least_request::Load;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use std::sync::Arc;

/// One backend's own state.
pub struct Member {
    /// The host as written in the config (or the DNS name): the default TLS server name.
    pub host: Box<str>,
    pub breaker: Breaker,
    pub load: Load,
}

/// A backend at `addr` with fresh state (`host` as written, or the DNS name).
pub fn backend(addr: std::net::SocketAddr, weight: usize, host: &str) -> Backend {
    let mut b = Backend {
        addr: SocketAddr::Inet(addr),
        weight,
        ext: Default::default(),
    };
    b.ext.insert(Arc::new(Member {
        host: host.into(),
        breaker: Breaker::default(),
        load: Load::default(),
    }));
    b
}

/// A backend chosen for an attempt: its address and its state. Cloning a `Backend` copies
/// its extensions map (two allocations) on every request.
#[derive(Clone)]
pub struct Chosen {
    pub addr: std::net::SocketAddr,
    pub member: Arc<Member>,
}

impl Chosen {
    /// The address and state of one of our pools' backends.
    pub fn of(b: &Backend) -> Chosen {
        let addr = match &b.addr {
            SocketAddr::Inet(a) => *a,
            // Backends are only ever built from resolved inet addresses (`backend` above).
            SocketAddr::Unix(_) => unreachable!("unix backends are not configurable"),
        };
        Chosen {
            addr,
            member: state(b).clone(),
        }
    }
}

/// The state of a backend of one of our pools.
pub fn of(b: &Backend) -> &Member {
    state(b)
}

fn state(b: &Backend) -> &Arc<Member> {
    // Every backend a pool holds is made by `backend` above (fixed ones at compile time,
    // discovered ones by `dns.rs`), so the extension is always there.
    b.ext
        .get::<Arc<Member>>()
        .expect("pool backends are built by member::backend")
}
