//! SVID-backed TLS against static mtls-verify configs (issue 9 §4), on equal certificates,
//! side by side in one run, and the time to swap in a rotated SVID.
//!
//! 1. Handshakes: a `ServerTls` built from PEM (static) and one built and fed by
//!    `SvidSource` from the test Workload API, serving the same certificate and trusting the
//!    same CA, with the same authorizer. Each handshake is a full TLS 1.3 mutual handshake in
//!    memory (ECDSA P-256, X25519) plus the `PeerIdentity`; the two alternate in short rounds
//!    and the median per-round ratio is reported (target: SVID/static ≤ 1.05).
//! 2. Swap: the agent pushes a new SVID; the time until the source has put it into the
//!    holder (so the next handshake presents it) is measured over many rotations and the
//!    handshake after each is checked to present the new certificate.
//!
//! Plain `main` (no criterion): both figures are printed; `--test` (cargo test --benches)
//! keeps it short.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mtls_verify::{ServerTls, ServerTlsBuilder, crypto_provider};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, NamedGroup, RootCertStore, ServerConnection};
use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{SvidSource, authorize};
use ztkit_test_support::{TestCa, TestCert};

const SERVER_ID: &str = "spiffe://example.org/server";

fn server_cert(ca: &TestCa) -> TestCert {
    ca.leaf("server")
        .spiffe_id(SERVER_ID)
        .dns("localhost")
        .server_auth()
        .issue()
}

fn test_svid(ca: &TestCa, cert: &TestCert) -> TestSvid {
    TestSvid::new(
        SERVER_ID,
        cert.chain_der.iter().map(|c| c.to_vec()).collect(),
        cert.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )
}

fn client_config(ca: &TestCa) -> Arc<ClientConfig> {
    let client = ca
        .leaf("client")
        .spiffe_id("spiffe://example.org/client")
        .client_auth()
        .issue();
    let mut provider = (*crypto_provider()).clone();
    provider
        .kx_groups
        .retain(|g| g.name() == NamedGroup::X25519);
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(client.chain_der.clone(), client.private_key())
        .unwrap();
    cfg.resumption = Resumption::disabled();
    Arc::new(cfg)
}

/// One full handshake in memory; the server's leaf as the client saw it.
fn handshake(client_cfg: &Arc<ClientConfig>, server: &ServerTls) -> Vec<u8> {
    let mut client =
        ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut conn = ServerConnection::new(server.config()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    while client.is_handshaking() || conn.is_handshaking() {
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        conn.read_tls(&mut &buf[..]).unwrap();
        conn.process_new_packets().unwrap();
        buf.clear();
        while conn.wants_write() {
            conn.write_tls(&mut buf).unwrap();
        }
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
        buf.clear();
    }
    std::hint::black_box(server.peer_identity(&conn).unwrap().unwrap());
    client.peer_certificates().unwrap()[0].to_vec()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let (rounds, per_round, swaps) = if smoke { (2, 2, 3) } else { (31, 40, 50) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bench root");
    let cert = server_cert(&ca);
    let client_cfg = client_config(&ca);
    let member = || authorize::member_of("example.org").unwrap();

    let static_tls = ServerTlsBuilder::from_pem(
        cert.chain_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        ca.cert_pem.as_bytes(),
    )
    .authorizer(member())
    .key_exchange_groups(&[NamedGroup::X25519])
    .build()
    .unwrap();
    let (agent, source) = runtime.block_on(async {
        let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
        agent.set_svids(vec![test_svid(&ca, &cert)]);
        let source = SvidSource::builder()
            .endpoint(agent.endpoint())
            .connect()
            .await
            .unwrap();
        (agent, source)
    });
    let svid_tls = source
        .server_tls(|tls| {
            tls.authorizer(member())
                .key_exchange_groups(&[NamedGroup::X25519])
        })
        .unwrap();
    assert_eq!(
        handshake(&client_cfg, &static_tls),
        handshake(&client_cfg, &svid_tls)
    );

    let (mut static_t, mut svid_t, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let time = |tls: &ServerTls| {
            let t = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(handshake(&client_cfg, tls));
            }
            t.elapsed().as_secs_f64() * 1e6 / per_round as f64
        };
        let (s, v) = if round % 2 == 0 {
            let s = time(&static_tls);
            (s, time(&svid_tls))
        } else {
            let v = time(&svid_tls);
            (time(&static_tls), v)
        };
        static_t.push(s);
        svid_t.push(v);
        ratios.push(v / s);
    }
    println!(
        "svid_handshake: {rounds} rounds x {per_round} mutual handshakes (ECDSA P-256, X25519), alternating"
    );
    println!(
        "static {:.1} µs, SVID-backed {:.1} µs per handshake; SVID/static median ratio {:.3}",
        median(&mut static_t),
        median(&mut svid_t),
        median(&mut ratios)
    );

    // Swap: pushed by the agent → in the holder (the next handshake presents it).
    let mut swap_us = Vec::new();
    for _ in 0..swaps {
        let next = server_cert(&ca);
        let serial = mtls_verify::PeerIdentity::from_der(&next.cert_der)
            .unwrap()
            .serial_hex()
            .to_owned();
        let t = Instant::now();
        agent.set_svids(vec![test_svid(&ca, &next)]);
        while source.status().identity.serial_hex() != serial {
            assert!(t.elapsed() < Duration::from_secs(10), "no rotation");
            std::hint::spin_loop();
        }
        swap_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(handshake(&client_cfg, &svid_tls), next.cert_der.to_vec());
    }
    let mut sorted = swap_us.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "svid_swap: {swaps} rotations, pushed → next handshake uses it: median {:.0} µs, max {:.0} µs",
        median(&mut swap_us),
        sorted.last().copied().unwrap_or_default()
    );
    drop(source);
    drop(agent);
}
