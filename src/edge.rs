//! Edge hygiene applied before routing: path normalization, host extraction, request ids.
//!
//! The router and every later check must see the same path the upstream receives, so the path
//! is normalized once here and the normalized form is what gets routed and forwarded.

/// A normalized request path: dot segments resolved and empty segments dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The normalized path, always starting with `/`.
    pub path: String,
    /// Whether the original path ended with `/` (after at least one segment).
    pub trailing_slash: bool,
}

impl NormalizedPath {
    /// The path's segments, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// Resolves `.` and `..` (also percent-encoded) and merges repeated slashes, like nginx's
/// `merge_slashes`. A path that climbs above `/` is rejected rather than clamped, because a
/// client sending one is probing for traversal.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, &'static str> {
    if !raw.starts_with('/') {
        return Err("path must start with /");
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match dot_kind(seg) {
            Dot::Empty | Dot::One => {}
            Dot::Two => {
                if out.pop().is_none() {
                    return Err("path escapes the root");
                }
            }
            Dot::None => out.push(seg),
        }
    }
    let last = raw.rsplit('/').next().unwrap_or("");
    let trailing_slash = !out.is_empty() && (last.is_empty() || dot_kind(last) != Dot::None);
    let mut path = String::with_capacity(raw.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(NormalizedPath {
        path,
        trailing_slash,
    })
}

#[derive(PartialEq, Eq)]
enum Dot {
    Empty,
    One,
    Two,
    None,
}

fn dot_kind(seg: &str) -> Dot {
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    match seg.len() {
        0 => Dot::Empty,
        _ if is_dot(seg) => Dot::One,
        2 | 4 | 6 => {
            // "..", ".%2e", "%2e.", "%2e%2e"
            let split = if seg.starts_with('.') {
                1
            } else {
                3.min(seg.len())
            };
            let (a, b) = seg.split_at(split);
            if is_dot(a) && is_dot(b) {
                Dot::Two
            } else {
                Dot::None
            }
        }
        _ => Dot::None,
    }
}

/// The request's host, lowercase, without port or trailing dot; empty if absent.
pub fn request_host(host_header: Option<&[u8]>, uri_host: Option<&str>) -> String {
    let raw = host_header
        .and_then(|h| std::str::from_utf8(h).ok())
        .or(uri_host)
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// Keeps a client's `X-Request-Id` when it is well formed (1–128 of `[A-Za-z0-9._:-]`), so
/// traces can span the gateway; otherwise generates a fresh UUID.
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b)) =>
        {
            // Checked ASCII above, so this cannot fail.
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dots_and_slashes() {
        let n = |p| normalize_path(p).map(|n| n.path);
        assert_eq!(n("/"), Ok("/".into()));
        assert_eq!(n("//api///users"), Ok("/api/users".into()));
        assert_eq!(n("/api/./users/../orders"), Ok("/api/orders".into()));
        assert_eq!(n("/api/%2e%2E/admin"), Ok("/admin".into()));
        assert_eq!(n("/api/.%2e/admin"), Ok("/admin".into()));
        assert_eq!(n("/api/users/"), Ok("/api/users/".into()));
        assert_eq!(n("/api/users/."), Ok("/api/users/".into()));
        assert_eq!(n("/.."), Err("path escapes the root"));
        assert_eq!(n("/a/../../etc"), Err("path escapes the root"));
        assert_eq!(n("/a..b/..."), Ok("/a..b/...".into()));
        assert!(n("relative").is_err());
    }

    #[test]
    fn host_strips_port_case_and_dot() {
        assert_eq!(
            request_host(Some(b"API.Example.com.:8080"), None),
            "api.example.com"
        );
        assert_eq!(request_host(Some(b"[::1]:8080"), None), "[::1]");
        assert_eq!(request_host(None, Some("h.test")), "h.test");
        assert_eq!(request_host(None, None), "");
    }

    #[test]
    fn request_id_kept_only_when_well_formed() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        assert_ne!(request_id(Some(b"bad id\r\n")), "bad id\r\n");
        assert_eq!(request_id(Some(&[b'a'; 129])).len(), 36);
        assert_eq!(request_id(None).len(), 36);
    }
}

/// Decides the client address: the socket peer, unless the peer is a trusted proxy, in which
/// case `X-Forwarded-For` is walked right to left past trusted hops. Entries a client could
/// have written (left of the first untrusted hop) are never used.
#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    trusted: Vec<ipnet::IpNet>,
}

impl ClientIpResolver {
    /// Parses `trusted_proxies` (CIDRs or single addresses).
    pub fn compile(entries: &[String]) -> Result<Self, (String, String)> {
        let mut trusted = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let net = e
                .parse::<ipnet::IpNet>()
                .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    (
                        format!("trusted_proxies[{i}]"),
                        format!("{e:?} is not an IP address or CIDR"),
                    )
                })?;
            trusted.push(net);
        }
        Ok(ClientIpResolver { trusted })
    }

    fn is_trusted(&self, ip: &std::net::IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The client address for a request from `peer` carrying these `X-Forwarded-For` values.
    pub fn resolve<'a>(
        &self,
        peer: std::net::IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> std::net::IpAddr {
        if self.trusted.is_empty() || !self.is_trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        // Header lines in order, each a comma list: walk everything from the right.
        for line in forwarded_for.rev() {
            let Ok(line) = std::str::from_utf8(line) else {
                return client;
            };
            for hop in line.rsplit(',') {
                match hop.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) if self.is_trusted(&ip) => client = ip,
                    Ok(ip) => return ip,
                    // Garbage from here on was written by someone we do not trust.
                    Err(_) => return client,
                }
            }
        }
        client
    }
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let r = ClientIpResolver::compile(&["10.0.0.0/8".into()]).unwrap();
        let xff: Vec<&[u8]> = vec![b"1.2.3.4"];
        assert_eq!(r.resolve(ip("192.0.2.9"), xff.into_iter()), ip("192.0.2.9"));
    }

    #[test]
    fn trusted_hops_are_skipped_right_to_left() {
        let r = ClientIpResolver::compile(&["10.0.0.0/8".into(), "127.0.0.2".into()]).unwrap();
        let xff: Vec<&[u8]> = vec![b"6.6.6.6, 203.0.113.7", b"10.1.1.1"];
        assert_eq!(
            r.resolve(ip("127.0.0.2"), xff.into_iter()),
            ip("203.0.113.7")
        );
        let garbage: Vec<&[u8]> = vec![b"nonsense, 10.1.1.1"];
        assert_eq!(
            r.resolve(ip("127.0.0.2"), garbage.into_iter()),
            ip("10.1.1.1")
        );
        let none: Vec<&[u8]> = vec![];
        assert_eq!(
            r.resolve(ip("127.0.0.2"), none.into_iter()),
            ip("127.0.0.2")
        );
        assert!(ClientIpResolver::compile(&["not-an-ip".into()]).is_err());
    }
}
