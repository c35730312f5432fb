//! The input document built from HTTP requests: OPA-Envoy's shape, secret headers left out,
//! gRPC detection, identity and token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use policy_rego::{InputBuilder, InputOptions};
use serde_json::json;

fn parts(req: http::request::Builder) -> http::request::Parts {
    req.body(()).unwrap().into_parts().0
}

#[test]
fn the_document_has_opa_envoys_shape() {
    let p = parts(
        http::Request::builder()
            .method("GET")
            .uri("https://api.example.org:8443/api/v1/users/42?x=1&x=2&q=a+b")
            .version(http::Version::HTTP_2)
            .header("accept", "*/*")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2"),
    );
    let input = InputBuilder::from_parts(&p)
        .peer_addr("10.0.0.7:51234".parse().unwrap())
        .local_addr("[2001:db8::1]:8443".parse().unwrap())
        .identity(json!({
            "spiffe_id": "spiffe://example.org/ns/web/sa/frontend",
            "dns_sans": ["web.local"],
            "subject_cn": "frontend",
            "fingerprint_sha256": "ab12"
        }))
        .token(json!({"iss": "https://idp", "sub": "alice", "scope": "read write"}))
        .build(&InputOptions::default())
        .to_json();
    assert_eq!(
        input,
        json!({
            "attributes": {
                "request": {"http": {
                    "method": "GET",
                    "path": "/api/v1/users/42?x=1&x=2&q=a+b",
                    "host": "api.example.org:8443",
                    "scheme": "https",
                    "protocol": "HTTP/2",
                    "headers": {"accept": "*/*", "x-forwarded-for": "10.0.0.1,10.0.0.2"}
                }},
                "source": {
                    "address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}},
                    "principal": "spiffe://example.org/ns/web/sa/frontend"
                },
                "destination": {
                    "address": {"socketAddress": {"address": "2001:db8::1", "portValue": 8443}}
                }
            },
            "parsed_path": ["api", "v1", "users", "42"],
            "parsed_query": {"x": ["1", "2"], "q": ["a b"]},
            "version": {"encoding": "protojson", "ext_authz": "v3"},
            "identity": {
                "spiffe_id": "spiffe://example.org/ns/web/sa/frontend",
                "dns_sans": ["web.local"],
                "subject_cn": "frontend",
                "fingerprint_sha256": "ab12"
            },
            "token": {"iss": "https://idp", "sub": "alice", "scope": "read write"}
        })
    );
}

#[test]
fn credential_headers_are_left_out_unless_allowed() {
    let p = parts(
        http::Request::builder()
            .uri("/")
            .header("authorization", "Bearer secret")
            .header("cookie", "session=secret")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("x-api-key", "k")
            .header("host", "h.example"),
    );
    let headers = |opts: &InputOptions| {
        InputBuilder::from_parts(&p).build(opts).to_json()["attributes"]["request"]["http"]
            ["headers"]
            .clone()
    };
    let default = headers(&InputOptions::default());
    assert_eq!(default, json!({"x-api-key": "k", "host": "h.example"}));
    assert!(!default.to_string().contains("secret"));

    let allowed = headers(&InputOptions::new().allow_secret_header(AUTHORIZATION));
    assert_eq!(allowed["authorization"], "Bearer secret");
    assert!(allowed.get("cookie").is_none());

    let more = headers(&InputOptions::new().exclude_header(HeaderName::from_static("x-api-key")));
    assert!(more.get("x-api-key").is_none());
    assert!(more.get(COOKIE.as_str()).is_none());
}

#[test]
fn host_comes_from_the_host_header_for_origin_form_requests() {
    let p = parts(
        http::Request::builder()
            .uri("/x")
            .header("host", "svc.local:80"),
    );
    let v = InputBuilder::from_parts(&p)
        .build(&InputOptions::default())
        .to_json();
    assert_eq!(v["attributes"]["request"]["http"]["host"], "svc.local:80");
    assert_eq!(v["attributes"]["request"]["http"]["protocol"], "HTTP/1.1");
    assert!(v["attributes"]["request"]["http"].get("scheme").is_none());
    // No peer and no identity: no source at all.
    assert!(v["attributes"].get("source").is_none());
    assert!(v.get("identity").is_none() && v.get("token").is_none() && v.get("grpc").is_none());
}

#[test]
fn pseudo_headers_on_request() {
    let p = parts(
        http::Request::builder()
            .method("POST")
            .uri("http://a.b/c?d=1"),
    );
    let v = InputBuilder::from_parts(&p)
        .build(&InputOptions::new().include_pseudo_headers())
        .to_json();
    assert_eq!(
        v["attributes"]["request"]["http"]["headers"],
        json!({":method": "POST", ":path": "/c?d=1", ":authority": "a.b", ":scheme": "http"})
    );
}

#[test]
fn grpc_service_and_method_are_detected_or_given() {
    let grpc = |ct: &str, path: &str| {
        let p = parts(
            http::Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", ct),
        );
        InputBuilder::from_parts(&p)
            .build(&InputOptions::default())
            .to_json()["grpc"]
            .clone()
    };
    assert_eq!(
        grpc("application/grpc", "/helloworld.Greeter/SayHello"),
        json!({"service": "helloworld.Greeter", "method": "SayHello"})
    );
    assert_eq!(
        grpc("application/grpc+proto", "/pkg.v1.Svc/Do"),
        json!({"service": "pkg.v1.Svc", "method": "Do"})
    );
    assert_eq!(
        grpc("application/json", "/helloworld.Greeter/SayHello"),
        json!(null)
    );
    assert_eq!(grpc("application/grpc", "/too/many/parts"), json!(null));
    assert_eq!(grpc("application/grpc", "/missing"), json!(null));

    let p = parts(http::Request::builder().uri("/anything"));
    let v = InputBuilder::from_parts(&p)
        .grpc("a.B", "C")
        .build(&InputOptions::default())
        .to_json();
    assert_eq!(v["grpc"], json!({"service": "a.B", "method": "C"}));
}

#[test]
fn principal_prefers_the_explicit_value() {
    let p = parts(http::Request::builder().uri("/"));
    let v = InputBuilder::from_parts(&p)
        .identity(json!({"spiffe_id": "spiffe://a/b"}))
        .principal("spiffe://c/d")
        .build(&InputOptions::default())
        .to_json();
    assert_eq!(v["attributes"]["source"]["principal"], "spiffe://c/d");
    // A certificate without a SPIFFE ID gives no principal.
    let v = InputBuilder::from_parts(&p)
        .identity(json!({"spiffe_id": null, "dns_sans": ["x"]}))
        .build(&InputOptions::default())
        .to_json();
    assert!(v["attributes"].get("source").is_none());
}

#[test]
fn non_utf8_header_values_do_not_break_the_input() {
    let mut p = parts(http::Request::builder().uri("/"));
    p.headers.insert(
        "x-bin",
        http::HeaderValue::from_bytes(&[0x66, 0xff, 0x6f]).unwrap(),
    );
    let v = InputBuilder::from_parts(&p)
        .build(&InputOptions::default())
        .to_json();
    assert_eq!(
        v["attributes"]["request"]["http"]["headers"]["x-bin"],
        "f\u{fffd}o"
    );
}
