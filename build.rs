//! Generates the demo gRPC service's messages, client and server (proto/demo.proto) for the
//! examples and the tests; the gateway itself does not use them.

fn main() {
    println!("cargo:rerun-if-changed=proto/demo.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/demo.proto"], &["proto"])
        .expect("compile proto/demo.proto (needs protoc: `make deps` installs it)");
}
