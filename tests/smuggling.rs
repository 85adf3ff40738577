//! Request smuggling and framing attacks over raw sockets (security-cases §2): a request hidden
//! in another request's body, or behind an ambiguous length, must never reach an upstream.
//! Every case sends the attack, then a `Connection: close` canary, and reads until the gateway
//! closes: the hidden request to `/api/victim` must never be answered nor reach its upstream.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SECRET: &str = "smuggling-secret-0123456789-abcdefghijkl";
const HIDDEN: &str = "GET /api/victim/x HTTP/1.1\r\nHost: t\r\n\r\n";
const CANARY: &str = "GET /api/open/canary HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

struct Site {
    victim: EchoServer,
    open: EchoServer,
    gw: Gateway,
}

async fn site() -> Site {
    let victim = EchoServer::start("victim", "127.0.0.1:0").await.unwrap();
    let open = EchoServer::start("open", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  victim: {{backends: ['{}']}}\n  open: {{backends: ['{}']}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n\
         rate_limits:\n  policies:\n    once: {{requests: 1, period: 1h, key: ip}}\n\
         routes:\n\
         \x20 - {{path: /api/victim, service: victim}}\n\
         \x20 - {{path: /api/open, service: open}}\n\
         \x20 - {{path: /api/secure, service: open, auth: required}}\n\
         \x20 - {{path: /api/limited, service: open, rate_limits: [once]}}\n",
        victim.addr, open.addr
    ));
    Site { victim, open, gw }
}

/// Writes `bytes` then the canary, and reads until the gateway closes (5 s at most).
fn exchange(port: u16, bytes: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(bytes.as_bytes()).expect("write");
    // The gateway may already have answered and closed: a failed canary write is fine.
    let _ = stream.write_all(CANARY.as_bytes());
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(responses: &str) -> Vec<u16> {
    responses
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| responses[i + 9..].get(..3)?.parse().ok())
        .collect()
}

/// Neither the hidden request nor anything after an ambiguous body was executed.
fn assert_not_smuggled(site: &Site, case: &str, responses: &str) {
    assert_eq!(
        site.victim.requests(),
        0,
        "{case}: the hidden request reached the upstream:\n{responses}"
    );
    assert!(
        !responses.contains("\"service\":\"victim\""),
        "{case}: answered the hidden request:\n{responses}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_never_smuggles() {
    let s = site().await;
    let post = "POST /api/open/x HTTP/1.1\r\nHost: t\r\n";
    let chunked_then_hidden = format!("0\r\n\r\n{HIDDEN}");
    let cases = [
        // CL.TE: a front end honouring Content-Length would forward the hidden request as body.
        (
            "CL.TE",
            format!(
                "{post}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_then_hidden}",
                chunked_then_hidden.len()
            ),
        ),
        // TE.CL: the chunked body ends early; Content-Length claims the hidden request.
        (
            "TE.CL",
            format!(
                "{post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_then_hidden}"
            ),
        ),
        // Obfuscated Transfer-Encoding values one parser may ignore and another honour.
        (
            "TE xchunked",
            format!("{post}Transfer-Encoding: xchunked\r\n\r\n{chunked_then_hidden}"),
        ),
        (
            "TE chunked, identity",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n{chunked_then_hidden}"),
        ),
        (
            "TE twice",
            format!(
                "{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunked_then_hidden}"
            ),
        ),
        (
            "TE with space before colon",
            format!("{post}Transfer-Encoding : chunked\r\n\r\n{chunked_then_hidden}"),
        ),
        // HTTP/1.0 has no chunked coding: RFC 9112 §6.1 calls this faulty framing.
        (
            "HTTP/1.0 with TE",
            format!(
                "POST /api/open/x HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_then_hidden}"
            ),
        ),
    ];
    for (case, attack) in &cases {
        let responses = exchange(s.gw.port, attack);
        assert_not_smuggled(&s, case, &responses);
        let codes = statuses(&responses);
        assert!(
            codes.first().is_some_and(|c| *c == 400 || *c == 501),
            "{case}: expected 400/501 first, got {codes:?}:\n{responses}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_is_refused_or_unfolded_never_forwarded_raw() {
    let s = site().await;
    let attack =
        "GET /api/open/x HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n";
    let responses = raw_request(s.gw.port, attack.as_bytes());
    let code = statuses(&responses).first().copied();
    assert_eq!(code, Some(400), "obs-fold: {responses}");
    assert_eq!(s.open.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_never_run_a_request_hidden_in_the_body() {
    let s = site().await;
    // Use up the rate limit so the next /api/limited is a 429.
    let first = raw_request(
        s.gw.port,
        b"GET /api/limited/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&first), vec![200], "{first}");
    let token = hs256_token(SECRET, json!({"sub": "u1"}));
    for (case, head, expected) in [
        (
            "401 no token",
            "POST /api/secure/x HTTP/1.1\r\nHost: t\r\n".to_string(),
            401,
        ),
        (
            "401 bad token",
            format!("POST /api/secure/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}x\r\n"),
            401,
        ),
        (
            "429 limited",
            "POST /api/limited/x HTTP/1.1\r\nHost: t\r\n".to_string(),
            429,
        ),
        (
            "404 no route",
            "POST /nowhere HTTP/1.1\r\nHost: t\r\n".to_string(),
            404,
        ),
    ] {
        for framing in ["content-length", "chunked"] {
            let attack = match framing {
                "content-length" => {
                    format!("{head}Content-Length: {}\r\n\r\n{HIDDEN}", HIDDEN.len())
                }
                _ => format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{HIDDEN}\r\n0\r\n\r\n",
                    HIDDEN.len()
                ),
            };
            let responses = exchange(s.gw.port, &attack);
            let case = format!("{case} ({framing})");
            assert_not_smuggled(&s, &case, &responses);
            let codes = statuses(&responses);
            assert_eq!(codes.first(), Some(&expected), "{case}:\n{responses}");
            // The body was consumed as a body: the only possible second answer is the canary.
            assert!(
                codes.len() == 1
                    || (codes.len() == 2 && responses.contains("\"service\":\"open\"")),
                "{case}: unexpected answers {codes:?}:\n{responses}"
            );
        }
    }
}
