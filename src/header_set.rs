//! A small compiled set of header names, for removing whichever of them a message carries.
//!
//! Most of the names the gateway strips (hop-by-hop, hidden, client-sent identity and
//! forwarding headers) are absent from a typical message. Pingora's `remove_header` parses the
//! name and probes two hash maps per call even then, so a set looks at the message's few
//! header names once and removes only what is there.

use crate::header_edit::HeaderEdit;
use http::{HeaderMap, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};

/// Up to 64 header names, kept in order.
#[derive(Debug, Clone, Default)]
pub struct HeaderSet {
    names: Vec<HeaderName>,
}

/// More names than a [`HeaderSet`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyNames;

impl std::fmt::Display for TooManyNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at most {} distinct header names", HeaderSet::MAX)
    }
}

impl HeaderSet {
    /// The most names a set holds (one bit each in a `u64`).
    pub const MAX: usize = 64;

    /// A set of `names` (repeats count once); more than [`HeaderSet::MAX`] is an error the
    /// config compiler reports with its key path.
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Result<Self, TooManyNames> {
        let mut set = HeaderSet { names: Vec::new() };
        for name in names {
            if !set.names.contains(&name) {
                if set.names.len() == Self::MAX {
                    return Err(TooManyNames);
                }
                set.names.push(name);
            }
        }
        Ok(set)
    }

    /// The names of the set, in order.
    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// Which members `headers` holds, as a bit per member (bit `i` for `names()[i]`).
    pub fn present_in(&self, headers: &HeaderMap) -> u64 {
        let mut found = 0u64;
        if self.names.is_empty() {
            return found;
        }
        for key in headers.keys() {
            if let Some(i) = self.names.iter().position(|n| n == key) {
                found |= 1 << i;
            }
        }
        found
    }

    /// Removes the members `mask` selects from a request.
    pub fn remove_from_request(&self, req: &mut RequestHeader, mask: u64) {
        self.remove_from(&mut HeaderEdit::CasedRequest(req), mask);
    }

    /// Removes the members `mask` selects from a response.
    pub fn remove_from_response(&self, resp: &mut ResponseHeader, mask: u64) {
        self.remove_from(&mut HeaderEdit::CasedResponse(resp), mask);
    }

    /// Removes the members `mask` selects from headers being edited.
    pub fn remove_from(&self, edit: &mut HeaderEdit<'_>, mask: u64) {
        for (i, name) in self.names.iter().enumerate() {
            if mask & (1 << i) != 0 {
                edit.remove(name);
            }
        }
    }

    /// Removes every member a request carries.
    pub fn strip_request(&self, req: &mut RequestHeader) {
        let mask = self.present_in(&req.headers);
        self.remove_from_request(req, mask);
    }

    /// Removes every member a response carries.
    pub fn strip_response(&self, resp: &mut ResponseHeader) {
        let mask = self.present_in(&resp.headers);
        self.remove_from_response(resp, mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_removes_only_members_present() {
        let set = HeaderSet::new([
            HeaderName::from_static("x-a"),
            http::header::SERVER,
            HeaderName::from_static("x-a"),
        ])
        .unwrap();
        assert_eq!(set.names().len(), 2);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Server", "nginx").unwrap();
        resp.insert_header("X-Kept", "1").unwrap();
        assert_eq!(set.present_in(&resp.headers), 0b10);
        set.strip_response(&mut resp);
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers["x-kept"], "1");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-a", "1").unwrap();
        req.append_header("x-a", "2").unwrap();
        set.strip_request(&mut req);
        assert!(req.headers.get("x-a").is_none());
        assert_eq!(HeaderSet::default().present_in(&req.headers), 0);
    }

    #[test]
    fn more_than_64_names_are_refused() {
        let names = |n: usize| {
            (0..n).map(|i| HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap())
        };
        assert!(HeaderSet::new(names(64)).is_ok());
        assert_eq!(HeaderSet::new(names(65)).err(), Some(TooManyNames));
    }
}
