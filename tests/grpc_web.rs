//! gRPC-Web through the gateway to a native gRPC service: binary and text, unary and server
//! streaming, over HTTP/1.1 as browsers send it, with CORS. The requests and answers are
//! framed here from the gRPC-Web spec (PROTOCOL-WEB.md), independently of the gateway.

mod common;
#[path = "common/greeter.rs"]
mod greeter;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::Gateway;
use greeter::GreeterServer;
use greeter::demo::{HelloReply, HelloRequest};
use prost::Message;

const ORIGIN: &str = "https://app.example";

fn gateway(up: &GreeterServer, web: bool) -> Gateway {
    Gateway::start(&format!(
        "services:\n  greeter: {{backends: ['{}'], http2: true}}\nroutes:\n  - {{path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc, grpc: {{web: {web}}}, cors: {{allow_origins: ['{ORIGIN}']}}}}\n",
        up.addr
    ))
}

/// A message behind its 5-byte prefix.
fn frame(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend(bytes);
    out
}

/// An answer body's messages and its trailer frame's text.
fn unframe(mut body: &[u8]) -> (Vec<HelloReply>, Option<String>) {
    let (mut messages, mut trailers) = (Vec::new(), None);
    while !body.is_empty() {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if body[0] & 0x80 != 0 {
            trailers = Some(String::from_utf8(payload.to_vec()).unwrap());
        } else {
            messages.push(HelloReply::decode(payload).unwrap());
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

/// Posts a gRPC-Web call over HTTP/1.1 from the browser's origin.
async fn call(
    gw: &Gateway,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let resp = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(gw.url(&format!("/demo.Greeter/{method}")))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("origin", ORIGIN)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap())
}

fn hello(name: &str, count: u32) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        count,
        ..Default::default()
    }
}

#[tokio::test]
async fn binary_grpc_web_calls_reach_a_native_service() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, true);
    let (status, headers, body) = call(
        &gw,
        "SayHello",
        "application/grpc-web+proto",
        frame(&hello("web", 0)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc-web+proto");
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    // A browser reads this answer: it keeps the security headers.
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("Grpc-Status"), "{exposed}");
    let (messages, trailers) = unframe(&body);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].message, "Hello, web!");
    // The service saw native gRPC.
    assert_eq!(
        messages[0].metadata["content-type"],
        "application/grpc+proto"
    );
    assert_eq!(messages[0].metadata["te"], "trailers");
    let trailers = trailers.expect("the trailers come as the body's last frame");
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");

    // A failure the service reports: a gRPC-Web client reads it from the head.
    let failing = HelloRequest {
        name: "gone".into(),
        fail_code: 5,
        ..Default::default()
    };
    let (_, headers, body) = call(&gw, "SayHello", "application/grpc-web", frame(&failing)).await;
    let (messages, trailers) = unframe(&body);
    assert!(messages.is_empty());
    let status = match trailers {
        Some(t) => t.contains("grpc-status:5").then_some("5"),
        None => headers.get("grpc-status").map(|s| s.to_str().unwrap()),
    };
    assert_eq!(status, Some("5"), "{headers:?}");
}

#[tokio::test]
async fn text_grpc_web_streams_in_base64_both_ways() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, true);
    let request = STANDARD.encode(frame(&hello("txt", 3)));
    let (status, headers, body) = call(
        &gw,
        "SayHellos",
        "application/grpc-web-text",
        request.into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc-web-text+proto");
    let decoded = STANDARD
        .decode(&body)
        .expect("one base64 stream, trailers included");
    let (messages, trailers) = unframe(&decoded);
    let texts: Vec<_> = messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(
        texts,
        ["Hello, txt #0!", "Hello, txt #1!", "Hello, txt #2!"]
    );
    assert!(trailers.unwrap().contains("grpc-status:0"));

    // Base64 that is not: INTERNAL, in the head, the service never called.
    let calls = up.calls();
    let (status, headers, body) = call(
        &gw,
        "SayHello",
        "application/grpc-web-text",
        b"AA*A".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "13", "{headers:?}");
    assert_eq!(headers["content-type"], "application/grpc-web-text+proto");
    assert!(body.is_empty());
    assert_eq!(up.calls(), calls);
}

#[tokio::test]
async fn browsers_get_preflights_and_refusals_they_can_read() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, true);
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, gw.url("/demo.Greeter/SayHello"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent,grpc-timeout",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    // The gateway's own refusal of a gRPC-Web call: trailers-only, in gRPC-Web's type.
    let (status, headers, body) = call(
        &gw,
        "SayHello",
        "application/grpc-web+proto",
        b"\x05\0\0\0\0".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "13");
    assert_eq!(headers["content-type"], "application/grpc-web+proto");
    assert_eq!(headers["content-length"], "0");
    assert!(body.is_empty());

    // A gRPC route without `grpc.web` refuses gRPC-Web: UNIMPLEMENTED.
    let gw = gateway(&up, false);
    let (_, headers, _) = call(
        &gw,
        "SayHello",
        "application/grpc-web",
        frame(&hello("x", 0)),
    )
    .await;
    assert_eq!(headers["grpc-status"], "12");
    assert_eq!(up.calls(), 0);
}
