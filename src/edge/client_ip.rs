//! The client address behind trusted proxies.

use crate::invalid::Invalid;
/// Decides the client address: the socket peer, unless the peer is a trusted proxy, in which
/// case `X-Forwarded-For` is walked right to left past trusted hops. Entries a client could
/// have written (left of the first untrusted hop) are never used.
#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    trusted: Vec<ipnet::IpNet>,
}

impl ClientIpResolver {
    /// Parses `trusted_proxies` (CIDRs or single addresses).
    pub fn compile(entries: &[String]) -> Result<Self, Invalid> {
        let mut trusted = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let net = e
                .parse::<ipnet::IpNet>()
                .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    Invalid::new(
                        format!("trusted_proxies[{i}]"),
                        format!("{e:?} is not an IP address or CIDR"),
                    )
                })?;
            trusted.push(net);
        }
        Ok(ClientIpResolver { trusted })
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: &std::net::IpAddr) -> bool {
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
