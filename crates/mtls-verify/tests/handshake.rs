//! Real TLS handshakes over loopback against `ServerTls`: what is accepted, what is refused,
//! and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use std::sync::Arc;

use mtls_verify::{IdentityAuthorizer, ServerTls, ServerTlsBuilder};
use rustls::{HandshakeKind, NamedGroup, ProtocolVersion};
use support::{ClientOpts, TestServer, client_config, client_with, connect, server_builder};
use ztkit_test_support::{KeyAlg, TestCa, TestCert, TestPki};

fn pki_server_builder(pki: &TestPki) -> ServerTlsBuilder {
    server_builder(&pki.ca, &pki.server)
}

async fn server(tls: ServerTls) -> TestServer {
    TestServer::start(tls).await
}

/// Connects with `cert` and returns (accepted by client view, server's refusal reason).
async fn try_client(srv: &mut TestServer, pki: &TestPki, cert: &TestCert) -> (bool, String) {
    let out = connect(srv.addr, client_with(&pki.ca, cert)).await;
    let ev = srv.next_event().await;
    (out.accepted(), ev.refused_reason())
}

#[tokio::test]
async fn valid_client_is_accepted_with_identity_tls13_and_h2() {
    let pki = TestPki::new();
    let tls = pki_server_builder(&pki)
        .authorizer(IdentityAuthorizer::trust_domain("example.org").unwrap())
        .build()
        .unwrap();
    let mut srv = server(tls).await;
    let out = connect(srv.addr, client_with(&pki.ca, &pki.client)).await;
    assert_eq!(
        out.line.as_deref().unwrap(),
        format!(
            "ok {} spiffe://example.org/ns/default/sa/client",
            pki.server.serial_hex()
        )
    );
    assert_eq!(out.version, Some(ProtocolVersion::TLSv1_3));
    let ev = srv.next_event().await;
    assert_eq!(ev.kind, Some(HandshakeKind::Full));
    assert_eq!(ev.alpn.as_deref(), Some(&b"h2"[..]));
    let id = ev.identity.unwrap().unwrap().unwrap();
    assert_eq!(id.serial_hex(), pki.client.serial_hex());
    assert_eq!(
        id.fingerprint_sha256_hex(),
        mtls_verify::PeerIdentity::from_der(&pki.client.cert_der)
            .unwrap()
            .fingerprint_sha256_hex()
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let out = connect(
        srv.addr,
        client_config(&pki.ca, None, &ClientOpts::default()),
    )
    .await;
    assert!(!out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert!(ev.handshake.is_err(), "{ev:?}");
    assert!(
        ev.refused_reason()
            .to_lowercase()
            .contains("no certificate"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn optional_client_auth_accepts_no_certificate_but_verifies_a_presented_one() {
    let pki = TestPki::new();
    let tls = pki_server_builder(&pki)
        .allow_unauthenticated()
        .build()
        .unwrap();
    let mut srv = server(tls).await;

    let out = connect(
        srv.addr,
        client_config(&pki.ca, None, &ClientOpts::default()),
    )
    .await;
    assert!(out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert!(matches!(ev.identity, Some(Ok(None))), "{ev:?}");

    let other = TestCa::new("other CA");
    let stranger = other.leaf("stranger").client_auth().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &stranger).await;
    assert!(!ok);
    assert!(reason.contains("trusted CA"), "{reason}");

    let (ok, reason) = try_client(&mut srv, &pki, &pki.client).await;
    assert!(ok, "{reason}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let other = TestCa::new("other CA");
    let cert = other.leaf("x").client_auth().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &cert).await;
    assert!(!ok);
    assert!(reason.contains("unknown issuer"), "{reason}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let expired = pki.ca.leaf("old").client_auth().expired().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &expired).await;
    assert!(!ok);
    assert!(reason.contains("expired at"), "{reason}");
    let future = pki.ca.leaf("new").client_auth().not_yet_valid().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &future).await;
    assert!(!ok);
    assert!(reason.contains("not valid before"), "{reason}");
}

#[tokio::test]
async fn server_auth_only_eku_is_refused() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let cert = pki.ca.leaf("srv").server_auth().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &cert).await;
    assert!(!ok);
    assert!(reason.contains("extended key usage"), "{reason}");
}

#[tokio::test]
async fn ca_true_leaf_is_refused() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let cert = pki.ca.leaf("sub-ca").client_auth().ca_true().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &cert).await;
    assert!(!ok);
    assert!(reason.contains("CA:TRUE"), "{reason}");
}

#[tokio::test]
async fn revoked_certificate_is_refused_and_others_pass() {
    let pki = TestPki::new();
    let revoked = pki.ca.leaf("gone").client_auth().issue();
    let crl = pki.ca.crl(&[&revoked]);
    let tls = pki_server_builder(&pki)
        .crl_pem(crl.pem.as_bytes())
        .build()
        .unwrap();
    let mut srv = server(tls).await;
    let (ok, reason) = try_client(&mut srv, &pki, &revoked).await;
    assert!(!ok);
    assert!(reason.contains("revoked"), "{reason}");
    let (ok, reason) = try_client(&mut srv, &pki, &pki.client).await;
    assert!(ok, "{reason}");
}

#[tokio::test]
async fn unknown_revocation_status_is_denied_by_default_and_allowed_with_the_opt_out() {
    let pki = TestPki::new();
    // The client chains through an intermediate; the only CRL is the root's, so the leaf's
    // status (which the intermediate would publish) is unknown.
    let mid = pki.ca.intermediate("mid");
    let client = mid.leaf("via-mid").client_auth().issue();
    let root_crl = pki.ca.crl(&[]);

    let strict = pki_server_builder(&pki)
        .crl_pem(root_crl.pem.as_bytes())
        .build()
        .unwrap();
    let mut srv = server(strict).await;
    let (ok, reason) = try_client(&mut srv, &pki, &client).await;
    assert!(!ok);
    assert!(reason.contains("revocation status unknown"), "{reason}");

    let relaxed = pki_server_builder(&pki)
        .crl_pem(root_crl.pem.as_bytes())
        .allow_unknown_revocation_status()
        .build()
        .unwrap();
    let mut srv = server(relaxed).await;
    let (ok, reason) = try_client(&mut srv, &pki, &client).await;
    assert!(ok, "{reason}");
}

#[tokio::test]
async fn spiffe_authorizers_refuse_other_ids_two_uris_and_malformed_uris() {
    let pki = TestPki::new();
    let tls = pki_server_builder(&pki)
        .authorizer(
            IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/default/sa/client"]).unwrap(),
        )
        .build()
        .unwrap();
    let mut srv = server(tls).await;

    let (ok, reason) = try_client(&mut srv, &pki, &pki.client).await;
    assert!(ok, "{reason}");

    let other = pki
        .ca
        .leaf("other")
        .spiffe_id("spiffe://example.org/ns/default/sa/other")
        .client_auth()
        .issue();
    let (ok, reason) = try_client(&mut srv, &pki, &other).await;
    assert!(!ok);
    assert!(reason.contains("not in the allowed list"), "{reason}");

    let two = pki
        .ca
        .leaf("two")
        .spiffe_id("spiffe://example.org/ns/default/sa/client")
        .spiffe_id("spiffe://example.org/ns/default/sa/other")
        .client_auth()
        .issue();
    let (ok, reason) = try_client(&mut srv, &pki, &two).await;
    assert!(!ok);
    assert!(reason.contains("exactly one URI SAN"), "{reason}");

    let malformed = pki
        .ca
        .leaf("bad")
        .spiffe_id("spiffe://example.org/ns/default/sa/client/")
        .client_auth()
        .issue();
    let (ok, reason) = try_client(&mut srv, &pki, &malformed).await;
    assert!(!ok);
    assert!(reason.contains("not a valid SPIFFE ID"), "{reason}");
}

#[tokio::test]
async fn closure_authorizer_decides() {
    let pki = TestPki::new();
    let tls = pki_server_builder(&pki)
        .authorizer(|p: &mtls_verify::PeerIdentity| p.subject_cn() == Some("client"))
        .build()
        .unwrap();
    let mut srv = server(tls).await;
    let (ok, _) = try_client(&mut srv, &pki, &pki.client).await;
    assert!(ok);
    let other = pki.ca.leaf("intruder").client_auth().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &other).await;
    assert!(!ok);
    assert!(reason.contains("predicate"), "{reason}");
}

#[tokio::test]
async fn rsa_keys_below_the_minimum_are_refused() {
    let pki = TestPki::new();
    let rsa2048 = pki
        .ca
        .leaf("rsa")
        .key_alg(KeyAlg::Rsa2048)
        .client_auth()
        .issue();

    let default = pki_server_builder(&pki).build().unwrap();
    let mut srv = server(default).await;
    let (ok, reason) = try_client(&mut srv, &pki, &rsa2048).await;
    assert!(ok, "{reason}");

    let strict = pki_server_builder(&pki).min_rsa_bits(3072).build().unwrap();
    let mut srv = server(strict).await;
    let (ok, reason) = try_client(&mut srv, &pki, &rsa2048).await;
    assert!(!ok);
    assert!(reason.contains("2048-bit RSA key"), "{reason}");
    let rsa3072 = pki
        .ca
        .leaf("rsa3k")
        .key_alg(KeyAlg::Rsa3072)
        .client_auth()
        .issue();
    let (ok, reason) = try_client(&mut srv, &pki, &rsa3072).await;
    assert!(ok, "{reason}");

    assert!(pki_server_builder(&pki).min_rsa_bits(1024).build().is_err());
}

#[tokio::test]
async fn chain_of_twenty_intermediates_is_refused_by_the_depth_cap() {
    let pki = TestPki::new();
    let mut ca = pki.ca.intermediate("i1");
    for i in 2..=20 {
        ca = ca.intermediate(&format!("i{i}"));
    }
    let deep = ca.leaf("deep").client_auth().issue();
    assert_eq!(deep.chain_der.len(), 21);
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let (ok, reason) = try_client(&mut srv, &pki, &deep).await;
    assert!(!ok);
    assert!(
        reason.contains("exceeds the maximum depth of 5"),
        "{reason}"
    );

    // A chain within the cap from the same PKI is fine.
    let mid = pki.ca.intermediate("m1").intermediate("m2");
    let ok_cert = mid.leaf("shallow").client_auth().issue();
    let (ok, reason) = try_client(&mut srv, &pki, &ok_cert).await;
    assert!(ok, "{reason}");
}

#[tokio::test]
async fn one_mebibyte_certificate_is_refused() {
    let pki = TestPki::new();
    let big = pki
        .ca
        .leaf("big")
        .client_auth()
        .custom_extension(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x42; 1024 * 1024])
        .issue();
    assert!(big.cert_der.len() > 1024 * 1024);
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let out = connect(srv.addr, client_with(&pki.ca, &big)).await;
    assert!(!out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert!(ev.handshake.is_err(), "{ev:?}");
    // The same certificate through the verifier code path is refused by size, unparsed.
    let options = mtls_verify::ChainVerifyOptions::new(vec![pki.ca.cert_der.clone()]);
    let err = mtls_verify::verify_client_chain(&big.chain_der, &options).unwrap_err();
    assert!(err.to_string().contains("65536-byte limit"), "{err}");
}

#[tokio::test]
async fn tls12_only_client_is_refused_by_default_and_accepted_with_allow_tls12() {
    let pki = TestPki::new();
    let tls12 = ClientOpts {
        versions: support::TLS12_ONLY,
        ..ClientOpts::default()
    };
    let config = client_config(
        &pki.ca,
        Some((&pki.client.chain_der, pki.client.private_key())),
        &tls12,
    );
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let out = connect(srv.addr, config.clone()).await;
    assert!(!out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert!(ev.handshake.is_err(), "{ev:?}");

    let mut srv = server(pki_server_builder(&pki).allow_tls12().build().unwrap()).await;
    let out = connect(srv.addr, config).await;
    assert!(out.accepted(), "{out:?}");
    assert_eq!(out.version, Some(ProtocolVersion::TLSv1_2));
    let ev = srv.next_event().await;
    assert_eq!(ev.version, Some(ProtocolVersion::TLSv1_2));
    let id = ev.identity.unwrap().unwrap().unwrap();
    assert_eq!(id.serial_hex(), pki.client.serial_hex());
}

#[tokio::test]
async fn key_exchange_prefers_the_post_quantum_hybrid_then_x25519_then_p256() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    for (offered, want) in [
        (vec![NamedGroup::X25519MLKEM768], NamedGroup::X25519MLKEM768),
        (vec![NamedGroup::X25519], NamedGroup::X25519),
        (vec![NamedGroup::secp256r1], NamedGroup::secp256r1),
        (
            vec![
                NamedGroup::X25519MLKEM768,
                NamedGroup::X25519,
                NamedGroup::secp256r1,
            ],
            NamedGroup::X25519MLKEM768,
        ),
    ] {
        let opts = ClientOpts {
            kx: Some(offered.clone()),
            ..ClientOpts::default()
        };
        let config = client_config(
            &pki.ca,
            Some((&pki.client.chain_der, pki.client.private_key())),
            &opts,
        );
        let out = connect(srv.addr, config).await;
        assert!(out.accepted(), "{offered:?}: {out:?}");
        assert_eq!(out.kx, Some(want), "{offered:?}");
        assert_eq!(srv.next_event().await.kx, Some(want));
    }
    // secp384r1 alone is not offered by the server.
    let opts = ClientOpts {
        kx: Some(vec![NamedGroup::secp384r1]),
        ..ClientOpts::default()
    };
    let config = client_config(
        &pki.ca,
        Some((&pki.client.chain_der, pki.client.private_key())),
        &opts,
    );
    assert!(!connect(srv.addr, config).await.accepted());

    // key_exchange_groups restricts the server (for benchmarks).
    let x25519_only = pki_server_builder(&pki)
        .key_exchange_groups(&[NamedGroup::X25519])
        .build()
        .unwrap();
    let mut srv = server(x25519_only).await;
    let out = connect(srv.addr, client_with(&pki.ca, &pki.client)).await;
    assert!(out.accepted(), "{out:?}");
    assert_eq!(out.kx, Some(NamedGroup::X25519));
    let _ = srv.next_event().await;
    assert!(
        pki_server_builder(&pki)
            .key_exchange_groups(&[NamedGroup::FFDHE2048])
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn alpn_is_configurable() {
    let pki = TestPki::new();
    let tls = pki_server_builder(&pki)
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()
        .unwrap();
    let mut srv = server(tls).await;
    assert!(
        connect(srv.addr, client_with(&pki.ca, &pki.client))
            .await
            .accepted()
    );
    assert_eq!(
        srv.next_event().await.alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
}

#[tokio::test]
async fn sessions_resume_and_peer_identity_is_available_after_resumption() {
    let pki = TestPki::new();
    let mut srv = server(pki_server_builder(&pki).build().unwrap()).await;
    let config = client_with(&pki.ca, &pki.client);
    assert!(connect(srv.addr, config.clone()).await.accepted());
    assert_eq!(srv.next_event().await.kind, Some(HandshakeKind::Full));
    let out = connect(srv.addr, config).await;
    assert!(out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert_eq!(ev.kind, Some(HandshakeKind::Resumed));
    let id = ev.identity.unwrap().unwrap().unwrap();
    assert_eq!(id.serial_hex(), pki.client.serial_hex());
}

#[tokio::test]
async fn handshake_timeout_is_exposed() {
    let pki = TestPki::new();
    let tls = pki_server_builder(&pki)
        .handshake_timeout(std::time::Duration::from_millis(1500))
        .build()
        .unwrap();
    assert_eq!(
        tls.handshake_timeout(),
        std::time::Duration::from_millis(1500)
    );
    let default = pki_server_builder(&pki).build().unwrap();
    assert_eq!(
        default.handshake_timeout(),
        mtls_verify::DEFAULT_HANDSHAKE_TIMEOUT
    );
    let _ = Arc::new(default);
}
