//! Setting up the gRPC tests: the greeter behind a gateway with h2c on, a tonic client, and
//! requests.
#![allow(dead_code)]

use crate::common::Gateway;
use crate::greeter::GreeterServer;
use crate::greeter::demo::HelloRequest;
use crate::greeter::demo::greeter_client::GreeterClient;
use tonic::Code;
use tonic::transport::Channel;

/// A gateway (h2c on) with the greeter as service `greeter` and `routes` (YAML list items).
pub fn gateway_with(up: &GreeterServer, extra: &str, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "h2c: true\n{extra}services:\n  greeter: {{backends: ['{}'], http2: true}}\nroutes:\n{routes}",
        up.addr
    ))
}

/// The greeter behind one `protocol: grpc` route with `more` settings.
pub fn gateway(up: &GreeterServer, more: &str) -> Gateway {
    gateway_with(
        up,
        "",
        &format!(
            "  - {{path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc{more}}}\n"
        ),
    )
}

pub async fn client(gw: &Gateway) -> GreeterClient<Channel> {
    GreeterClient::connect(gw.url(""))
        .await
        .expect("connect to the gateway")
}

pub fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

pub fn failing(name: &str, code: Code) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        fail_code: code as u32,
        ..Default::default()
    }
}
