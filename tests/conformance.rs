//! RFC 9110/9112 rows of docs/conformance.md over raw sockets: `Host`, unsupported versions,
//! `TRACE`, `Expect`, `Max-Forwards`, `OPTIONS *`, and the `Via` a gateway must send.

mod common;
use common::*;

/// The echo upstream's view of the forwarded request (its JSON body), or the whole answer.
async fn site(extra: &str) -> (EchoServer, Gateway) {
    echo_gateway(extra, "  - {path: /, service: up}\n").await
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

// Multi-threaded: the raw client blocks this thread while the echo upstream must keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rules_of_rfc_9110_and_9112() {
    let (up, gw) = site("").await;
    let p = gw.port;
    for (request, status, says) in [
        (
            "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
            "400",
            "needs a Host header",
        ),
        // Pingora's parser refuses this one before any of our code runs (400, empty body).
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            "400",
            "",
        ),
        (
            "GET /x HTTP/2.0\r\nHost: a\r\n\r\n",
            "505",
            "HTTP version not supported",
        ),
        (
            "GET /x HTTP/3.1\r\nHost: a\r\n\r\n",
            "505",
            "HTTP version not supported",
        ),
        (
            "TRACE /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "405",
            "allow: GET, HEAD",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nConnection: close\r\n\r\n",
            "417",
            "100-continue",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "200",
            "allow: GET, HEAD",
        ),
        (
            "OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
            "200",
            "allow: GET",
        ),
    ] {
        let answer = raw_request(p, request.as_bytes());
        assert_eq!(status_of(&answer), status, "{request:?}\n{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&says.to_ascii_lowercase()),
            "{request:?}\n{answer}"
        );
    }
    assert_eq!(up.requests(), 0, "none of those reached the upstream");
    // A chunk size that overflows (RFC 9112 §7.1): the request fails (the upstream may have
    // had the head; its connection is dropped with the body incomplete).
    let answer = raw_request(
        p,
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    );
    assert!(
        answer.is_empty()
            || status_of(&answer).starts_with('4')
            || status_of(&answer).starts_with('5'),
        "{answer}"
    );

    // HTTP/1.0 needs no Host; the Via names the version received.
    let answer = raw_request(p, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(answer.contains(r#""via":"1.0 apigateway""#), "{answer}");
    // Via is appended to the client's; Max-Forwards on OPTIONS is decremented.
    let answer = raw_request(
        p,
        b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nVia: 1.1 edge\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
    );
    assert!(
        answer.contains(r#""via":["1.1 edge","1.1 apigateway"]"#),
        "{answer}"
    );
    assert!(answer.contains(r#""max-forwards":"2""#), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_via_pseudonym_is_configurable_and_can_be_turned_off() {
    let (_up, gw) = site("via: {pseudonym: edge-7}\n").await;
    let answer = raw_request(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.contains(r#""via":"1.1 edge-7""#), "{answer}");
    let (_up, gw) = site("via: {enabled: false}\n").await;
    let answer = raw_request(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(!answer.contains("\"via\""), "{answer}");
    let (ok, out, _) = check_config(
        "listen: ['127.0.0.1:0']\nvia: {pseudonym: 'two words'}\nservices:\n  a: {backends: ['127.0.0.1:1']}\nroutes:\n  - {path: /, service: a}\n",
    );
    assert!(!ok && out.contains("via.pseudonym"), "{out}");
}
