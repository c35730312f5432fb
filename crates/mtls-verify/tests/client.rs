//! Outbound mTLS with `ClientTls` against a `ServerTls` server: hostname check, server
//! authorizer, the named opt-in that replaces the hostname check, and client-side reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use std::time::Duration;

use mtls_verify::{ClientTlsBuilder, Error, IdentityAuthorizer};
use support::{TestServer, connect_named, server_builder, wait_for};
use ztkit_test_support::{TestCa, TestCert};

struct Mesh {
    ca: TestCa,
    server: TestCert,
    client: TestCert,
}

fn mesh() -> Mesh {
    mesh_named("mesh CA")
}

fn mesh_named(ca_name: &str) -> Mesh {
    let ca = TestCa::new(ca_name);
    let server = ca
        .leaf("api")
        .spiffe_id("spiffe://example.org/ns/prod/sa/api")
        .dns("localhost")
        .server_auth()
        .issue();
    let client = ca
        .leaf("web")
        .spiffe_id("spiffe://example.org/ns/prod/sa/web")
        .client_auth()
        .issue();
    Mesh { ca, server, client }
}

async fn start(m: &Mesh) -> TestServer {
    let tls = server_builder(&m.ca, &m.server)
        .authorizer(IdentityAuthorizer::trust_domain("example.org").unwrap())
        .build()
        .unwrap();
    TestServer::start(tls).await
}

fn client(m: &Mesh) -> ClientTlsBuilder {
    ClientTlsBuilder::from_pem(
        m.client.chain_pem.as_bytes(),
        m.client.key_pem.as_bytes(),
        m.ca.cert_pem.as_bytes(),
    )
}

#[tokio::test]
async fn client_presents_its_certificate_and_checks_the_server_name_and_identity() {
    let m = mesh();
    let mut srv = start(&m).await;

    let tls = client(&m)
        .server_authorizer(
            IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/prod/sa/api"]).unwrap(),
        )
        .build()
        .unwrap();
    let (out, _) = connect_named(srv.addr, tls.config(), "localhost").await;
    assert_eq!(
        out.line.as_deref().unwrap(),
        format!(
            "ok {} spiffe://example.org/ns/prod/sa/web",
            m.server.serial_hex()
        )
    );
    let ev = srv.next_event().await;
    assert_eq!(ev.alpn.as_deref(), Some(&b"h2"[..]));

    // The hostname is still checked by default.
    let (out, _) = connect_named(srv.addr, tls.config(), "api.prod.svc").await;
    assert!(!out.accepted(), "{out:?}");
    assert!(out.line.unwrap_err().to_lowercase().contains("name"));
    let _ = srv.next_event().await;

    // A server with the wrong SPIFFE ID is refused.
    let wrong = client(&m)
        .server_authorizer(
            IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/prod/sa/db"]).unwrap(),
        )
        .build()
        .unwrap();
    let (out, _) = connect_named(srv.addr, wrong.config(), "localhost").await;
    let reason = out.line.unwrap_err();
    assert!(reason.contains("not in the allowed list"), "{reason}");
    let _ = srv.next_event().await;
}

#[tokio::test]
async fn the_hostname_check_can_be_replaced_by_a_spiffe_authorizer_only_by_opt_in() {
    let m = mesh();
    let mut srv = start(&m).await;
    let tls = client(&m)
        .server_authorizer(
            IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/prod/sa/api"]).unwrap(),
        )
        .allow_any_hostname()
        .build()
        .unwrap();
    let (out, _) = connect_named(srv.addr, tls.config(), "api.prod.svc").await;
    assert!(out.accepted(), "{out:?}");
    let _ = srv.next_event().await;

    let wrong = client(&m)
        .server_authorizer(IdentityAuthorizer::trust_domain("other.org").unwrap())
        .allow_any_hostname()
        .build()
        .unwrap();
    let (out, _) = connect_named(srv.addr, wrong.config(), "api.prod.svc").await;
    assert!(!out.accepted(), "{out:?}");
    let _ = srv.next_event().await;

    // Without a SPIFFE authorizer the opt-in is refused at build time.
    for builder in [
        client(&m).allow_any_hostname(),
        client(&m)
            .server_authorizer(IdentityAuthorizer::any())
            .allow_any_hostname(),
        client(&m)
            .server_authorizer(IdentityAuthorizer::dns_san_patterns(["localhost"]).unwrap())
            .allow_any_hostname(),
    ] {
        assert!(matches!(builder.build(), Err(Error::Config(_))));
    }
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let m = mesh();
    let other = mesh_named("other mesh CA");
    let mut srv = start(&other).await;
    // Our client trusts only m.ca; the server's chain is from other.ca.
    let tls = client(&m).build().unwrap();
    let (out, _) = connect_named(srv.addr, tls.config(), "localhost").await;
    let reason = out.line.unwrap_err();
    assert!(reason.contains("trusted CA"), "{reason}");
    let _ = srv.next_event().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_material_reloads_from_files() {
    let m = mesh();
    let mut srv = start(&m).await;
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = m.client.write_to(dir.path(), "client");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &m.ca.cert_pem).unwrap();
    let tls = ClientTlsBuilder::from_files(&crt, &key, &ca)
        .reload_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(tls.status().serial, m.client.serial_hex());
    let _reloader = tls.spawn_reloader();

    let renewed =
        m.ca.leaf("web")
            .spiffe_id("spiffe://example.org/ns/prod/sa/web")
            .client_auth()
            .issue();
    renewed.write_to(dir.path(), "client");
    wait_for("client generation 2", || tls.status().generation == 2).await;
    let (out, _) = connect_named(srv.addr, tls.config(), "localhost").await;
    assert!(out.accepted(), "{out:?}");
    let id = srv.next_event().await.identity.unwrap().unwrap().unwrap();
    assert_eq!(id.serial_hex(), renewed.serial_hex());

    // A mismatched key is rejected and the renewed certificate keeps being used.
    std::fs::write(&key, &m.server.key_pem).unwrap();
    let err = tls.reload_now().await.unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert_eq!(tls.status().generation, 2);
    assert_eq!(tls.status().rejected_updates, 1);
}
