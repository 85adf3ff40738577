//! Which responses are compressed, and how their headers change.

use super::*;
use crate::testing::response;
use bytes::Bytes;

fn compression(yaml: &str) -> Compression {
    let cfg: CompressionConfig = serde_yaml::from_str(yaml).unwrap();
    Compression::compile(&cfg, "compression").unwrap().unwrap()
}

fn request(method: &str, accept: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build(method, b"/", None).unwrap();
    if let Some(a) = accept {
        req.insert_header("accept-encoding", a).unwrap();
    }
    req
}

const JSON_2K: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("content-length", "2048"),
];

fn decide(c: &Compression, req: &RequestHeader, resp: &mut ResponseHeader) -> Option<String> {
    c.on_response_header(req, resp, true)
        .is_active()
        .then(|| resp.headers[CONTENT_ENCODING].to_str().unwrap().to_string())
}

#[test]
fn a_compressed_response_changes_its_headers() {
    let c = compression("{}");
    let mut resp = response(
        200,
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "5000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
            ("vary", "Origin"),
        ],
    );
    let enc = decide(&c, &request("GET", Some("gzip, br")), &mut resp);
    assert_eq!(enc.as_deref(), Some("br"));
    assert!(resp.headers.get(CONTENT_LENGTH).is_none());
    assert!(resp.headers.get(ACCEPT_RANGES).is_none());
    assert_eq!(resp.headers[TRANSFER_ENCODING], "chunked");
    assert_eq!(resp.headers[ETAG], "W/\"v1\"");
    let vary: Vec<_> = resp.headers.get_all(VARY).iter().collect();
    assert_eq!(vary, ["Origin", "Accept-Encoding"]);
}

#[test]
fn what_is_never_compressed() {
    let c = compression("{}");
    let gzip = request("GET", Some("gzip"));
    type Case<'a> = (&'a RequestHeader, u16, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        (&request("HEAD", Some("gzip")), 200, JSON_2K),
        (&gzip, 204, JSON_2K),
        (&gzip, 206, JSON_2K),
        (&gzip, 304, JSON_2K),
        (
            &gzip,
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "2048"),
                ("content-encoding", "br"),
            ],
        ),
        (
            &gzip,
            200,
            &[
                ("content-type", "application/json"),
                ("cache-control", "public, No-Transform"),
            ],
        ),
        (
            &gzip,
            200,
            &[("content-type", "image/png"), ("content-length", "9000")],
        ),
        (&gzip, 200, &[("content-length", "9000")]),
        (
            &gzip,
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "1023"),
            ],
        ),
    ];
    for (req, status, headers) in cases {
        let mut resp = response(*status, headers);
        assert_eq!(decide(&c, req, &mut resp), None, "{status} {headers:?}");
    }
    let mut ranged = request("GET", Some("gzip"));
    ranged.insert_header("range", "bytes=0-10").unwrap();
    assert_eq!(decide(&c, &ranged, &mut response(200, JSON_2K)), None);
}

#[test]
fn vary_is_added_whenever_the_answer_depends_on_accept_encoding() {
    let c = compression("{}");
    let mut resp = response(200, JSON_2K);
    assert_eq!(decide(&c, &request("GET", None), &mut resp), None);
    assert_eq!(
        resp.headers[VARY], "Accept-Encoding",
        "a cache must not reuse it for gzip clients"
    );
    let mut png = response(200, &[("content-type", "image/png")]);
    decide(&c, &request("GET", Some("gzip")), &mut png);
    assert!(png.headers.get(VARY).is_none());
}

#[test]
fn unknown_lengths_types_and_identity_refusal() {
    let c = compression("{types: ['text/*', '+json'], min_size: 100}");
    let gzip = request("GET", Some("gzip"));
    let streamed = &[("content-type", "application/problem+json")];
    assert_eq!(
        decide(&c, &gzip, &mut response(200, streamed)).as_deref(),
        Some("gzip")
    );
    let small = &[("content-type", "text/plain"), ("content-length", "10")];
    let mut plain = response(200, small);
    assert_eq!(decide(&c, &gzip, &mut plain), None);
    assert!(
        plain.headers.get(VARY).is_none(),
        "small answers carry no Vary (nginx)"
    );
    let strict = request("GET", Some("gzip, identity;q=0"));
    assert_eq!(
        decide(&c, &strict, &mut response(200, small)).as_deref(),
        Some("gzip")
    );
    let mut weak = response(200, &[("content-type", "text/html"), ("etag", "W/\"x\"")]);
    decide(&c, &gzip, &mut weak);
    assert_eq!(weak.headers[ETAG], "W/\"x\"");
    let mut bad = response(200, &[("content-type", "text/html"), ("etag", "unquoted")]);
    decide(&c, &gzip, &mut bad);
    assert!(bad.headers.get(ETAG).is_none());
}

#[test]
fn bad_settings_name_their_key() {
    let err = |yaml: &str| {
        let cfg: CompressionConfig = serde_yaml::from_str(yaml).unwrap();
        Compression::compile(&cfg, "compression")
            .err()
            .unwrap()
            .to_string()
    };
    assert!(
        err("{algorithms: [gzip, deflate]}")
            .starts_with("compression.algorithms[1]: unknown algorithm")
    );
    assert!(err("{algorithms: []}").starts_with("compression.algorithms: list at least one"));
    assert!(err("{level: {gzip: 10}}").starts_with("compression.level.gzip: 10 is out of range"));
    assert!(err("{level: {lz4: 1}}").starts_with("compression.level.lz4: unknown algorithm"));
    assert!(err("{types: ['json']}").starts_with("compression.types[0]:"));
    let off: CompressionConfig = serde_yaml::from_str("{enabled: false}").unwrap();
    assert!(Compression::compile(&off, "compression").unwrap().is_none());
}

#[test]
fn the_body_streams_through_the_encoder() {
    use std::io::Read;
    let c = compression("{algorithms: [gzip]}");
    let mut resp = response(200, JSON_2K);
    let mut enc = c.on_response_header(&request("GET", Some("gzip")), &mut resp, true);
    let text = "{\"k\": \"value\"},".repeat(20_000);
    let mut out = Vec::new();
    for (i, chunk) in text.as_bytes().chunks(4096).enumerate() {
        let mut body = Some(Bytes::copy_from_slice(chunk));
        enc.on_body(&mut body, false);
        if let Some(b) = body {
            assert!(!b.is_empty());
            out.extend_from_slice(&b);
        }
        if i == 40 {
            assert!(
                !out.is_empty(),
                "output before the end: the body is not held whole"
            );
        }
    }
    let mut last = None;
    enc.on_body(&mut last, true);
    out.extend_from_slice(&last.unwrap());
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, text);
}

#[test]
fn reused_zstd_and_deflate_states_start_each_body_afresh() {
    use std::io::Read;
    for coding in ["zstd", "gzip"] {
        reuse_across_bodies(coding, |out| match coding {
            "zstd" => zstd::decode_all(out).unwrap(),
            _ => {
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(out)
                    .read_to_end(&mut plain)
                    .unwrap();
                plain
            }
        });
    }
}

fn reuse_across_bodies(coding: &str, decode: impl Fn(&[u8]) -> Vec<u8>) {
    let c = compression(&format!("{{algorithms: [{coding}], min_size: 0}}"));
    // Known then unknown length, on one thread: the second runs on the first's context.
    for (i, length) in [Some("3000"), None, Some("50")].into_iter().enumerate() {
        let text = format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "x".repeat(3000));
        let text = match length {
            Some(n) => text[..n.parse::<usize>().unwrap()].to_string(),
            None => text,
        };
        let mut headers = vec![("content-type", "application/json")];
        if let Some(n) = length {
            headers.push(("content-length", n));
        }
        let mut resp = response(200, &headers);
        let mut enc = c.on_response_header(&request("GET", Some(coding)), &mut resp, true);
        assert!(enc.is_active());
        let (a, b) = text.as_bytes().split_at(text.len() / 2);
        let mut out = Vec::new();
        for (part, end) in [(a, false), (b, true)] {
            let mut body = Some(Bytes::copy_from_slice(part));
            enc.on_body(&mut body, end);
            out.extend_from_slice(body.as_deref().unwrap_or_default());
        }
        assert_eq!(decode(&out), text.as_bytes(), "{coding} body {i}");
    }
}
