//! With the `testing` feature: generates the server side of the SPIFFE Workload API
//! (`SpiffeWorkloadAPI` of SPIFFE's public `workload.proto`) without protoc. The messages are
//! hand-written prost structs in `src/testing/proto.rs`; the service code comes from
//! tonic-build's manual builder. Without the feature there is nothing to generate.
fn main() {
    // Features reach build scripts as environment variables, not as `cfg`s.
    if std::env::var_os("CARGO_FEATURE_TESTING").is_some() {
        generate_workload_api_server();
    }
}

fn generate_workload_api_server() {
    use tonic_build::manual::{Builder, Method, Service};

    let method = |name: &str, route: &str, input: &str, output: &str, streaming: bool| {
        let builder = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::testing::proto::{input}"))
            .output_type(format!("crate::testing::proto::{output}"))
            .codec_path("tonic_prost::ProstCodec");
        if streaming {
            builder.server_streaming().build()
        } else {
            builder.build()
        }
    };
    let service = Service::builder()
        // Routes are `/<package>.<name>/<route>`: the proto declares no package, and the
        // route must read `/SpiffeWorkloadAPI/FetchX509SVID` as real clients call it.
        .name("SpiffeWorkloadAPI")
        .package("")
        .method(method(
            "fetch_x509_svid",
            "FetchX509SVID",
            "X509SvidRequest",
            "X509SvidResponse",
            true,
        ))
        .method(method(
            "fetch_x509_bundles",
            "FetchX509Bundles",
            "X509BundlesRequest",
            "X509BundlesResponse",
            true,
        ))
        .method(method(
            "fetch_jwt_svid",
            "FetchJWTSVID",
            "JwtSvidRequest",
            "JwtSvidResponse",
            false,
        ))
        .method(method(
            "fetch_jwt_bundles",
            "FetchJWTBundles",
            "JwtBundlesRequest",
            "JwtBundlesResponse",
            true,
        ))
        .method(method(
            "validate_jwt_svid",
            "ValidateJWTSVID",
            "ValidateJwtSvidRequest",
            "ValidateJwtSvidResponse",
            false,
        ))
        .build();
    Builder::new().build_client(false).compile(&[service]);
}
