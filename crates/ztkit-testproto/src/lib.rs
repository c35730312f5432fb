//! The `helloworld.Greeter` gRPC service (the one in gRPC's own examples), used by ztkit's
//! examples, tests and benches.
//!
//! It is generated at build time without `protoc`: the two messages are written here with
//! prost's derive, the client and server stubs come from tonic-build's manual builder.
//! The wire format is the same as the upstream `helloworld.proto`, so any gRPC client
//! (grpcurl, Python grpcio) can call it.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// The name to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

include!(concat!(env!("OUT_DIR"), "/helloworld.Greeter.rs"));
