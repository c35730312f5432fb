//! Generates the helloworld.Greeter client and server without protoc: the messages are
//! hand-written prost structs in `src/lib.rs`, the service code comes from tonic-build's
//! manual builder.
fn main() {
    let say_hello = tonic_build::manual::Method::builder()
        .name("say_hello")
        .route_name("SayHello")
        .input_type("crate::HelloRequest")
        .output_type("crate::HelloReply")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let greeter = tonic_build::manual::Service::builder()
        .name("Greeter")
        .package("helloworld")
        .method(say_hello)
        .build();
    tonic_build::manual::Builder::new().compile(&[greeter]);
}
