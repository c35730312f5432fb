//! Building the policy input from arbitrary HTTP request bytes (request line and headers
//! parsed with `http`'s types), then deciding on it with an OPA-Envoy-style policy. Never
//! panics; credential headers never reach the input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use policy_rego::{BundleLoader, BundleWriter, InputBuilder, InputOptions, PolicyOptions, PolicySet};

const POLICY: &str = r#"
package envoy.authz

import input.attributes.request.http as http_request

default allow := false

allow if {
	http_request.method == "GET"
	input.parsed_path[0] == "public"
}

allow if {
	some v in input.parsed_query.token
	startswith(v, "ok-")
	input.attributes.source.principal == "spiffe://example.org/ok"
}

allow if {
	input.grpc.service == "helloworld.Greeter"
	glob.match("Say*", [], input.grpc.method)
}
"#;

fn policy() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let archive = BundleWriter::new().file("p.rego", POLICY).to_tar_gz().unwrap();
        let bundle = BundleLoader::new().load_tar_gz("fuzz", &archive).unwrap();
        PolicySet::compile(bundle, &PolicyOptions::new().decision_rule("envoy/authz/allow")).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return;
    };
    let mut parts = request_line.splitn(3, |b| *b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let version = match parts.next() {
        Some(b"HTTP/2") => http::Version::HTTP_2,
        Some(b"HTTP/1.0") => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut headers = http::HeaderMap::new();
    let mut identity = None;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            // A line without a colon is taken as the peer identity's SPIFFE ID.
            identity = Some(String::from_utf8_lossy(line).into_owned());
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let mut b = InputBuilder::new(&method, &uri, &headers)
        .version(version)
        .peer_addr("192.0.2.1:1234".parse().unwrap());
    if let Some(id) = identity {
        b = b.identity(serde_json::json!({ "spiffe_id": id }));
    }
    let input = b.build(&InputOptions::default());
    let json = input.to_json();
    let h = &json["attributes"]["request"]["http"]["headers"];
    for secret in ["authorization", "cookie", "proxy-authorization"] {
        assert!(h.get(secret).is_none());
    }
    assert!(json["parsed_path"].is_array());
    assert!(json["parsed_query"].is_object());
    let d = policy().decide(&input);
    assert!(d.allow || !d.reasons.is_empty());
});
