//! Response compression through the real gateway, each coding decoded by an independent
//! decoder (flate2, brotli-decompressor, zstd), against a scriptable origin.

mod common;
use common::origin::{Origin, json_body};
use common::*;
use std::io::Read;
use std::time::Duration;

fn gateway(origin: &Origin) -> Gateway {
    Gateway::start(&format!(
        "compression: {{}}\n\
         services:\n  origin: {{backends: ['{}']}}\n\
         routes:\n\
         \x20 - {{path: /plain, service: origin, compression: {{enabled: false}}}}\n\
         \x20 - {{path: /gzip, service: origin, compression: {{algorithms: [gzip], level: {{gzip: 1}}, min_size: 10}}}}\n\
         \x20 - path: /agg\n    aggregate:\n      calls:\n\
         \x20       - {{key: a, service: origin, path: '/data?size=4000'}}\n\
         \x20       - {{key: b, service: origin, path: '/data?size=3000'}}\n\
         \x20 - {{path: /, service: origin}}\n",
        origin.addr
    ))
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli_decompressor::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// GET `path` with `accept` (None: no Accept-Encoding); (status, headers, raw body).
async fn get(
    gw: &Gateway,
    path: &str,
    accept: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client().get(gw.url(path));
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn each_coding_is_negotiated_and_decodes_to_the_original() {
    let origin = Origin::start().await;
    let gw = gateway(&origin);
    let original = json_body(10_000);
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip, br", "br"),
        ("gzip;q=1.0, br;q=0.5, zstd;q=0.2", "gzip"),
        ("GZIP", "gzip"),
        ("*", "zstd"),
        ("zstd;q=0, *;q=0.5", "br"),
    ] {
        let (status, h, body) = get(&gw, "/data?size=10000&etag=%22v7%22", Some(accept)).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-encoding"), Some(coding), "{accept}");
        assert_eq!(decode(coding, &body), original, "{accept}");
        assert!(
            body.len() < original.len() / 3,
            "{coding}: {} bytes",
            body.len()
        );
        assert_eq!(header(&h, "vary"), Some("Accept-Encoding"));
        assert_eq!(header(&h, "etag"), Some("W/\"v7\""), "strong ETag weakened");
        assert!(h.get("content-length").is_none());
    }
    // Unknown length (chunked from the origin): each encoder sized for the worst case.
    for (accept, coding) in [("zstd", "zstd"), ("br", "br"), ("gzip", "gzip")] {
        let (_, h, body) = get(&gw, "/data?size=300000&chunked=1", Some(accept)).await;
        assert_eq!(header(&h, "content-encoding"), Some(coding));
        assert_eq!(
            decode(coding, &body),
            json_body(300_000),
            "{coding} streamed"
        );
    }
    let (_, h, body) = get(&gw, "/data?size=10000", None).await;
    assert!(h.get("content-encoding").is_none());
    assert_eq!(header(&h, "vary"), Some("Accept-Encoding"));
    assert_eq!(body, original);
    let (_, h, _) = get(&gw, "/data?size=10000", Some("deflate, identity")).await;
    assert!(h.get("content-encoding").is_none());
}

#[tokio::test]
async fn what_is_passed_through_untouched() {
    let origin = Origin::start().await;
    let gw = gateway(&origin);
    let gzip = Some("gzip");
    // Already compressed by the origin, which was sent the client's Accept-Encoding.
    let (_, h, body) = get(&gw, "/data?size=5000&ce=gzip", Some("gzip, br")).await;
    assert_eq!(origin.last_accept_encoding().as_deref(), Some("gzip, br"));
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(
        decode("gzip", &body),
        json_body(5000),
        "not compressed twice"
    );
    for (path, why) in [
        ("/data?size=1000", "under min_size (1 KiB)"),
        (
            "/data?size=5000&cc=no-transform",
            "Cache-Control: no-transform",
        ),
        ("/data?size=5000&type=image/png", "a type not listed"),
        ("/plain/data?size=5000", "the route turned it off"),
    ] {
        let (_, h, body) = get(&gw, path, gzip).await;
        assert!(h.get("content-encoding").is_none(), "{why}");
        assert_eq!(body.len(), json_body(body.len()).len(), "{why}");
    }
    let head = client()
        .head(gw.url("/data?size=5000"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(head.headers().get("content-encoding").is_none(), "HEAD");
    let ranged = client()
        .get(gw.url("/data?size=5000"))
        .header("accept-encoding", "gzip")
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert!(ranged.headers().get("content-encoding").is_none(), "Range");
}

#[tokio::test]
async fn a_route_sets_its_own_codings_levels_and_floor() {
    let origin = Origin::start().await;
    let gw = gateway(&origin);
    let (_, h, body) = get(&gw, "/gzip/data?size=100", Some("zstd, br, gzip")).await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &body), json_body(100));
    // A client refusing identity gets its coding under min_size too.
    let (_, h, _) = get(&gw, "/data?size=200", Some("gzip, identity;q=0")).await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
}

#[tokio::test]
async fn a_large_body_is_compressed_as_it_streams() {
    let origin = Origin::start().await;
    let gw = gateway(&origin);
    // 4 MiB, chunked, whose second half the origin sends only when told.
    let size = 4 * 1024 * 1024;
    let mut resp = client()
        .get(gw.url(&format!("/data?size={size}&hold=1")))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(resp.headers(), "content-encoding"), Some("gzip"));
    let mut received = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("compressed bytes arrive while the origin still holds half the body")
        .unwrap()
        .unwrap();
    received.extend_from_slice(&first);
    origin.release();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(decode("gzip", &received), json_body(size));
}

#[tokio::test]
async fn an_aggregate_answer_is_compressed_whole_with_its_length() {
    let origin = Origin::start().await;
    let gw = gateway(&origin);
    let (status, h, plain) = get(&gw, "/agg", None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&plain));
    assert!(h.get("content-encoding").is_none());
    assert!(
        plain.len() > 4000,
        "{}",
        String::from_utf8_lossy(&plain[..plain.len().min(300)])
    );
    let (status, h, body) = get(&gw, "/agg", Some("gzip")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(header(&h, "vary"), Some("Accept-Encoding"));
    assert_eq!(
        header(&h, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(h.get("transfer-encoding").is_none(), "whole: not chunked");
    let decoded: serde_json::Value = serde_json::from_slice(&decode("gzip", &body)).unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(decoded, expected);
}
