//! gRPC through the gateway: a real tonic server behind it, a real tonic client in front
//! (h2c, and TLS with ALPN h2): streams of every kind with their trailers, long-lived streams,
//! cancellation both ways.

mod common;
#[path = "common/greeter.rs"]
mod greeter;
#[path = "common/grpc_setup.rs"]
mod grpc_setup;

use common::{Gateway, eventually, free_port};
use greeter::GreeterServer;
use greeter::demo::HelloRequest;
use greeter::demo::greeter_client::GreeterClient;
use grpc_setup::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

#[tokio::test]
async fn every_call_kind_streams_through_with_its_trailers() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, "");
    let mut c = client(&gw).await;

    let reply = c.say_hello(hello("Ada")).await.expect("unary");
    // The request id comes back; headers that guard browser documents do not.
    assert!(reply.metadata().get("x-request-id").is_some());
    assert!(reply.metadata().get("x-frame-options").is_none());
    assert!(reply.metadata().get("content-security-policy").is_none());
    let reply = reply.into_inner();
    assert_eq!(reply.message, "Hello, Ada!");
    // gRPC servers insist on `TE: trailers`; hop-by-hop or not, it reaches them.
    assert_eq!(reply.metadata["te"], "trailers");
    assert_eq!(reply.metadata["content-type"], "application/grpc");

    let err = c
        .say_hello(failing("nope", Code::NotFound))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "nope");
    assert_eq!(err.details(), b"nope", "grpc-status-details-bin intact");

    let mut stream = c
        .say_hellos(HelloRequest {
            name: "s".into(),
            count: 3,
            ..Default::default()
        })
        .await
        .expect("server streaming")
        .into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.message().await.expect("stream item") {
        got.push(item.message);
    }
    assert_eq!(got, ["Hello, s #0!", "Hello, s #1!", "Hello, s #2!"]);

    // A stream that fails after its first message: the status comes in the trailers.
    let mut stream = c
        .say_hellos(HelloRequest {
            name: "late".into(),
            count: 3,
            fail_code: Code::Aborted as u32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.message().await.unwrap().unwrap().message,
        "Hello, late #0!"
    );
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(err.message(), "late #1");

    let names = futures::stream::iter(["a", "b", "c"].map(hello));
    let reply = c.collect_hellos(names).await.expect("client streaming");
    assert_eq!(reply.into_inner().message, "Hello, a, b, c!");

    // Bidirectional: each reply arrives before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<HelloRequest>(1);
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut replies = c.chat(requests).await.expect("bidi").into_inner();
    for name in ["x", "y"] {
        tx.send(hello(name)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply before the stream ends: nothing is buffered")
            .unwrap()
            .unwrap();
        assert_eq!(reply.message, format!("Hello, {name}!"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn calls_go_through_tls_with_alpn_h2() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let pki = tempfile::tempdir().unwrap();
    let ca = common::pki::TestCa::new("grpc ca");
    let leaf = ca.issue(pki.path(), "site", &["localhost"]);
    let tls_port = free_port();
    let _gw = gateway_with(
        &up,
        &format!(
            "tls:\n  listen: ['127.0.0.1:{tls_port}']\n  certificates: [{{cert: '{}', key: '{}'}}]\n",
            leaf.cert.display(),
            leaf.key.display()
        ),
        "  - {path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc}\n",
    );
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{tls_port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    let mut c = GreeterClient::new(channel);
    let reply = c.say_hello(hello("tls")).await.expect("unary over TLS");
    assert_eq!(reply.get_ref().message, "Hello, tls!");
    let mut stream = c
        .say_hellos(HelloRequest {
            name: "t".into(),
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn long_streams_outlive_the_services_http_timeouts() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway_with(
        &up,
        "",
        "  - {path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc}\n",
    );
    gw.rewrite_config(&format!(
        "h2c: true\nservices:\n  greeter: {{backends: ['{}'], http2: true, timeouts: {{read: 300ms, write: 300ms}}}}\nclient: {{body_deadline: 1s}}\nroutes:\n  - {{path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc}}\n",
        up.addr
    ));
    gw.signal("HUP");
    let mut c = client(&gw).await;
    // Messages 500 ms apart: longer than the service's read timeout, and the whole call
    // longer than the client body deadline.
    let reloaded = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            let mut req = tonic::Request::new(hello("x"));
            req.set_timeout(Duration::from_millis(2500));
            c.say_hello(req)
                .await
                .is_ok_and(|r| r.into_inner().metadata.contains_key("grpc-timeout"))
        }
    })
    .await;
    assert!(reloaded);
    let mut stream = c
        .say_hellos(HelloRequest {
            name: "slow".into(),
            count: 3,
            delay_ms: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        assert!(
            stream
                .message()
                .await
                .expect("no timeout mid-stream")
                .is_some()
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<HelloRequest>(1);
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let call = tokio::spawn({
        let mut c = c.clone();
        async move { c.collect_hellos(requests).await }
    });
    for name in ["p", "q", "r"] {
        tx.send(hello(name)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(tx);
    let reply = call
        .await
        .unwrap()
        .expect("a slow client stream is not cut");
    assert_eq!(reply.into_inner().message, "Hello, p, q, r!");
}

#[tokio::test]
async fn cancellation_travels_both_ways() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, "");
    let mut c = client(&gw).await;
    let mut stream = c
        .say_hellos(HelloRequest {
            name: "c".into(),
            count: 1000,
            delay_ms: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    let cancelled = eventually(Duration::from_secs(5), || async {
        up.seen.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(cancelled, "the service saw the client's RST_STREAM");

    // An upstream that resets a started stream: the client hears of it, it does not hang.
    let reset = ResettingServer::start().await;
    let gw = Gateway::start(&format!(
        "h2c: true\nservices:\n  r: {{backends: ['{}'], http2: true}}\nroutes:\n  - {{path: /demo.Greeter/, service: r, strip_prefix: false, protocol: grpc}}\n",
        reset.addr
    ));
    let mut c = client(&gw).await;
    let mut stream = c.say_hellos(hello("r")).await.unwrap().into_inner();
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the reset reaches the client");
    let err = next.expect_err("a reset stream is no clean end");
    assert_ne!(err.code(), Code::Ok);
}

/// An HTTP/2 server that answers each stream's head and one message, then resets it.
struct ResettingServer {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ResettingServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    // The connection is polled while each stream waits to be reset.
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let head = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            let mut send = respond.send_response(head, false).unwrap();
                            let message = bytes::Bytes::from_static(b"\0\0\0\0\x02\x0a\0");
                            let _ = send.send_data(message, false);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            send.send_reset(h2::Reason::INTERNAL_ERROR);
                        });
                    }
                });
            }
        });
        ResettingServer { addr, task }
    }
}

impl Drop for ResettingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
