//! The axum example's `--allow-unauthenticated` mode (the TLS-only baseline of the load
//! run): a client without a certificate is served as anonymous, a presented certificate is
//! still verified, and without the flag a certificate stays mandatory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use support::{
    CLIENT_ID, ExampleServer, ServerFiles, client_cert, client_config, https_get, roots,
};
use ztkit_test_support::TestCa;

#[tokio::test]
async fn optional_client_auth_serves_anonymous_but_still_verifies_certificates() {
    let files = ServerFiles::new();
    let mut args = files.server_args();
    args.push("--allow-unauthenticated".into());
    let server = ExampleServer::start("axum_mtls", &args);
    let roots = roots(&files.ca);

    let anonymous = Arc::new(client_config(&roots, None, &[b"http/1.1"]));
    let (status, body) = https_get(&anonymous, server.addr, "/").await.unwrap();
    assert_eq!((status, body.trim()), (200, "hello, anonymous"));

    let valid = client_cert(&files.ca, CLIENT_ID);
    let with_cert = Arc::new(client_config(&roots, Some(&valid), &[b"http/1.1"]));
    let (status, body) = https_get(&with_cert, server.addr, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(CLIENT_ID), "{body}");

    // A presented certificate from another CA is refused even though auth is optional.
    let other = TestCa::new("other root");
    let foreign = client_cert(&other, CLIENT_ID);
    let foreign_cfg = Arc::new(client_config(&roots, Some(&foreign), &[b"http/1.1"]));
    assert!(https_get(&foreign_cfg, server.addr, "/").await.is_err());
}

#[tokio::test]
async fn without_the_flag_a_certificate_is_mandatory() {
    let files = ServerFiles::new();
    let server = ExampleServer::start("axum_mtls", &files.server_args());
    let anonymous = Arc::new(client_config(&roots(&files.ca), None, &[b"http/1.1"]));
    assert!(https_get(&anonymous, server.addr, "/").await.is_err());
}
