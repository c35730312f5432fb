//! What this crate logs: refusals with a human reason (subject, serial — never the
//! certificate), and expiry warnings ahead of time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine;
use mtls_verify::{ChainVerifyOptions, IdentityAuthorizer, ServerTlsBuilder, verify_client_chain};
use ztkit_test_support::{TestCa, TestPki, capture_warnings as capture};

#[test]
fn refusals_are_logged_with_subject_serial_and_reason_but_not_the_certificate() {
    let pki = TestPki::new();
    let options = ChainVerifyOptions::new(vec![pki.ca.cert_der.clone()])
        .authorizer(IdentityAuthorizer::trust_domain("other.org").unwrap());
    let logs = capture(|| {
        verify_client_chain(&pki.client.chain_der, &options).unwrap_err();
    });
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("client not authorized"), "{logs}");
    assert!(logs.contains(&pki.client.serial_hex()), "{logs}");
    assert!(logs.contains("CN=client"), "{logs}");
    assert!(logs.contains("not in trust domain other.org"), "{logs}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pki.client.cert_der);
    assert!(
        !logs.contains(&b64[..40]),
        "certificate leaked into logs: {logs}"
    );

    let stranger = TestCa::new("stranger CA").leaf("x").client_auth().issue();
    let logs = capture(|| {
        verify_client_chain(&stranger.chain_der, &options).unwrap_err();
    });
    assert!(logs.contains("client certificate refused"), "{logs}");
    assert!(logs.contains("unknown issuer"), "{logs}");
}

#[test]
fn expiry_within_the_window_is_logged_at_build() {
    let ca = TestCa::new("root");
    let soon = ca
        .leaf("localhost")
        .server_auth()
        .valid_for(Duration::from_secs(2 * 86400))
        .issue();
    let build = |window: Duration| {
        ServerTlsBuilder::from_pem(
            soon.chain_pem.as_bytes(),
            soon.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .expiry_warning(window)
        .build()
        .unwrap()
    };
    let logs = capture(|| {
        build(Duration::from_secs(7 * 86400));
    });
    assert!(logs.contains("expires soon"), "{logs}");
    assert!(logs.contains(&soon.serial_hex()), "{logs}");
    let logs = capture(|| {
        build(Duration::from_secs(86400));
    });
    assert!(!logs.contains("expires soon"), "{logs}");
}
