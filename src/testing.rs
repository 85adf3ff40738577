//! Helpers for the unit tests of every layer: request and response heads built from lists.

use pingora::http::{RequestHeader, ResponseHeader};

/// A request head with `method`, `uri` and `headers` (each name once).
pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
    for (k, v) in headers {
        req.insert_header(k.to_string(), *v).unwrap();
    }
    req
}

/// A response head with `status` and `headers` (a name may repeat).
pub fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).unwrap();
    for (k, v) in headers {
        resp.append_header(k.to_string(), *v).unwrap();
    }
    resp
}
