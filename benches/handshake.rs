//! Full mutual-TLS handshakes: ztkit (`mtls-verify` verifier + identity extraction + an
//! authorizer) against bare rustls with `WebPkiClientVerifier`, on the same certificates,
//! side by side in one run.
//!
//! Each iteration is one complete TLS 1.3 handshake with client authentication, client
//! and server in this thread, bytes moved in memory (no sockets, so the figure is the CPU
//! cost of both ends, without loopback noise). Resumption is off on the client so every
//! handshake is full. Groups: {ECDSA P-256, RSA-2048} × {default (X25519MLKEM768), X25519}.
//!
//! Target: ztkit's median within 5 % of bare rustls's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group};
use mtls_verify::{IdentityAuthorizer, ServerTls, ServerTlsBuilder, crypto_provider};
use rustls::client::Resumption;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, NamedGroup, RootCertStore, ServerConfig, ServerConnection,
};
use ztkit_test_support::{KeyAlg, TestCa, TestCert};

struct Pki {
    ca: TestCa,
    server: TestCert,
    client: TestCert,
}

fn pki(alg: KeyAlg) -> Pki {
    let ca = TestCa::with_key_alg("bench root", alg);
    let server = ca
        .leaf("localhost")
        .dns("localhost")
        .key_alg(alg)
        .server_auth()
        .issue();
    let client = ca
        .leaf("client")
        .spiffe_id("spiffe://example.org/ns/bench/sa/client")
        .key_alg(alg)
        .client_auth()
        .issue();
    Pki { ca, server, client }
}

fn provider_with(groups: Option<&[NamedGroup]>) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = (*crypto_provider()).clone();
    if let Some(groups) = groups {
        provider.kx_groups.retain(|g| groups.contains(&g.name()));
    }
    Arc::new(provider)
}

fn client_config(pki: &Pki, groups: Option<&[NamedGroup]>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert_der.clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(provider_with(groups))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pki.client.chain_der.clone(), pki.client.private_key())
        .unwrap();
    cfg.resumption = Resumption::disabled();
    Arc::new(cfg)
}

fn bare_server(pki: &Pki, groups: Option<&[NamedGroup]>) -> Arc<ServerConfig> {
    let provider = provider_with(groups);
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert_der.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.chain_der.clone(), pki.server.private_key())
        .unwrap();
    Arc::new(cfg)
}

fn ztkit_server(pki: &Pki, groups: Option<&[NamedGroup]>) -> ServerTls {
    let mut builder = ServerTlsBuilder::from_pem(
        pki.server.chain_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        pki.ca.cert_pem.as_bytes(),
    )
    .authorizer(IdentityAuthorizer::trust_domain("example.org").unwrap());
    if let Some(groups) = groups {
        builder = builder.key_exchange_groups(groups);
    }
    builder.build().unwrap()
}

fn pump(from: &mut impl WriteTls, to: &mut impl ReadTls) {
    let mut buf = Vec::with_capacity(8192);
    while from.wants_write_tls() {
        from.write_to(&mut buf);
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_from(&mut rd);
    }
}

trait WriteTls {
    fn wants_write_tls(&self) -> bool;
    fn write_to(&mut self, buf: &mut Vec<u8>);
}
trait ReadTls {
    fn read_from(&mut self, rd: &mut &[u8]);
}

macro_rules! conn_io {
    ($t:ty) => {
        impl WriteTls for $t {
            fn wants_write_tls(&self) -> bool {
                self.wants_write()
            }
            fn write_to(&mut self, buf: &mut Vec<u8>) {
                self.write_tls(buf).unwrap();
            }
        }
        impl ReadTls for $t {
            fn read_from(&mut self, rd: &mut &[u8]) {
                self.read_tls(rd).unwrap();
                self.process_new_packets().unwrap();
            }
        }
    };
}
conn_io!(ClientConnection);
conn_io!(ServerConnection);

/// One full handshake, in memory; returns the server side for identity extraction.
fn handshake(client_cfg: &Arc<ClientConfig>, server_cfg: Arc<ServerConfig>) -> ServerConnection {
    let mut client =
        ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut server = ServerConnection::new(server_cfg).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        pump(&mut client, &mut server);
        pump(&mut server, &mut client);
    }
    server
}

fn bench_handshakes(c: &mut Criterion) {
    let x25519 = [NamedGroup::X25519];
    for (alg_name, alg) in [
        ("ecdsa-p256", KeyAlg::EcdsaP256),
        ("rsa-2048", KeyAlg::Rsa2048),
    ] {
        let pki = pki(alg);
        for (kx_name, groups) in [("default-pq-hybrid", None), ("x25519", Some(&x25519[..]))] {
            let client_cfg = client_config(&pki, groups);
            let bare = bare_server(&pki, groups);
            let ztkit = ztkit_server(&pki, groups);

            // Sanity: both complete, and ztkit's identity is the client's.
            let conn = handshake(&client_cfg, ztkit.config());
            let id = ztkit.peer_identity(&conn).unwrap().unwrap();
            assert!(id.spiffe_id().is_some());
            if groups.is_none() {
                assert_eq!(
                    conn.negotiated_key_exchange_group().map(|g| g.name()),
                    Some(NamedGroup::X25519MLKEM768)
                );
            }

            let mut group = c.benchmark_group(format!("mtls_handshake/{alg_name}/{kx_name}"));
            group.bench_function("bare_rustls_webpki", |b| {
                b.iter(|| handshake(&client_cfg, bare.clone()))
            });
            group.bench_function("ztkit_verify_identity_authz", |b| {
                b.iter(|| {
                    let conn = handshake(&client_cfg, ztkit.config());
                    ztkit.peer_identity(&conn).unwrap()
                })
            });
            group.finish();
        }
    }
}

/// Criterion runs one function's samples back to back, so a load change on this noisy
/// 2-core machine between the two can pass for overhead. This second measurement
/// alternates the two servers in short rounds and reports the median per-handshake time of
/// each and the median of the per-round ratios.
fn interleaved_ratios(rounds: usize, per_round: usize) {
    let x25519 = [NamedGroup::X25519];
    println!("\ninterleaved: {rounds} rounds x {per_round} handshakes each, alternating");
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "case", "bare µs", "ztkit µs", "ztkit/bare"
    );
    for (alg_name, alg) in [
        ("ecdsa-p256", KeyAlg::EcdsaP256),
        ("rsa-2048", KeyAlg::Rsa2048),
    ] {
        let pki = pki(alg);
        for (kx_name, groups) in [("default-pq-hybrid", None), ("x25519", Some(&x25519[..]))] {
            let client_cfg = client_config(&pki, groups);
            let bare = bare_server(&pki, groups);
            let ztkit = ztkit_server(&pki, groups);
            let (mut bare_t, mut zt_t, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let time_bare = || {
                    let t = std::time::Instant::now();
                    for _ in 0..per_round {
                        std::hint::black_box(handshake(&client_cfg, bare.clone()));
                    }
                    t.elapsed().as_secs_f64() * 1e6 / per_round as f64
                };
                let time_zt = || {
                    let t = std::time::Instant::now();
                    for _ in 0..per_round {
                        let conn = handshake(&client_cfg, ztkit.config());
                        std::hint::black_box(ztkit.peer_identity(&conn).unwrap());
                    }
                    t.elapsed().as_secs_f64() * 1e6 / per_round as f64
                };
                // Alternate which goes first so neither always gets the warmer cache.
                let (b, z) = if round % 2 == 0 {
                    let b = time_bare();
                    (b, time_zt())
                } else {
                    let z = time_zt();
                    (time_bare(), z)
                };
                bare_t.push(b);
                zt_t.push(z);
                ratios.push(z / b);
            }
            println!(
                "{:<34} {:>12.1} {:>12.1} {:>10.3}",
                format!("{alg_name}/{kx_name}"),
                median(&mut bare_t),
                median(&mut zt_t),
                median(&mut ratios)
            );
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60);
    targets = bench_handshakes
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` passes `--test`: keep that run short.
    let smoke = std::env::args().any(|a| a == "--test");
    if smoke {
        interleaved_ratios(2, 2);
    } else {
        interleaved_ratios(31, 40);
    }
}
