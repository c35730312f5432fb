//! Cost of one client-certificate verification: rustls's bare `WebPkiClientVerifier`
//! against `mtls-verify`'s wrapper (chain policy, identity parse, authorizer, cache), on
//! the same certificates in the same run, and the same with SPIFFE trust (the bundle chosen
//! by the peer's trust domain). The full-handshake comparison lives in the
//! workspace bench `benches/handshake.rs`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mtls_verify::{IdentityAuthorizer, PeerIdentity, ServerTlsBuilder, TrustDomainPolicy};
use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use ztkit_test_support::{KeyAlg, TestCa};

fn bench(c: &mut Criterion) {
    for (name, alg) in [
        ("ecdsa_p256", KeyAlg::EcdsaP256),
        ("rsa2048", KeyAlg::Rsa2048),
    ] {
        let ca = TestCa::with_key_alg("bench root", alg);
        let server = ca
            .leaf("localhost")
            .dns("localhost")
            .server_auth()
            .key_alg(alg)
            .issue();
        let client = ca
            .leaf("client")
            .spiffe_id("spiffe://example.org/ns/bench/sa/client")
            .client_auth()
            .key_alg(alg)
            .issue();

        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let bare = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            mtls_verify::crypto_provider(),
        )
        .build()
        .unwrap();
        let tls = ServerTlsBuilder::from_pem(
            server.chain_pem.as_bytes(),
            server.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .authorizer(IdentityAuthorizer::trust_domain("example.org").unwrap())
        .build()
        .unwrap();
        let ours = tls.client_verifier();
        // SPIFFE trust: the bundle picked by the client's trust domain out of a set of two.
        let svid_server = ca
            .leaf("server")
            .spiffe_id("spiffe://example.org/server")
            .key_alg(alg)
            .issue();
        let partner = TestCa::with_key_alg("partner root", alg);
        let spiffe = ServerTlsBuilder::from_pem(
            svid_server.chain_pem.as_bytes(),
            svid_server.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .federated_bundle("partner.org", partner.cert_pem.as_bytes())
        .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
        .authorizer(IdentityAuthorizer::trust_domain("example.org").unwrap())
        .build()
        .unwrap();
        let per_trust_domain = spiffe.client_verifier();
        let now = UnixTime::now();
        let leaf = &client.cert_der;

        let mut group = c.benchmark_group(format!("verify_client_cert/{name}"));
        group.bench_function("rustls_webpki", |b| {
            b.iter(|| bare.verify_client_cert(leaf, &[], now).unwrap())
        });
        group.bench_function("mtls_verify", |b| {
            b.iter(|| ours.verify_client_cert(leaf, &[], now).unwrap())
        });
        group.bench_function("mtls_verify_spiffe_trust", |b| {
            b.iter(|| per_trust_domain.verify_client_cert(leaf, &[], now).unwrap())
        });
        group.finish();

        c.bench_function(&format!("peer_identity_parse/{name}"), |b| {
            b.iter(|| PeerIdentity::from_der(leaf).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
