//! Refused TLS handshakes as audit records (issue #7, section 2): one `tls.handshake`
//! record per refusal with the peer's address, the reason and the presented certificate's
//! subject, serial and SHA-256 fingerprint; under a flood, at most the rate limit of them
//! plus summaries counting the rest, in a chain that verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mtls_verify::{IdentityAuthorizer, PeerIdentity, ServerTlsBuilder};
use rustls::pki_types::ServerName;
use serde_json::Value;
use support::{audit_lines, wait_for_audit_lines, wait_for_stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use zt_audit::AuditLog;
use zt_tower::{AcceptorStatsHandle, TlsListener, TlsListenerOptions};
use ztkit_test_support::{TestCa, TestCert, TestPki};

const GUARD: Duration = Duration::from_secs(60);
const CLIENT_ID: &str = "spiffe://example.org/ns/default/sa/client";

struct Server {
    addr: SocketAddr,
    pki: TestPki,
    stats: AcceptorStatsHandle,
    log: AuditLog,
    _dir: tempfile::TempDir,
}

/// A listener that allows only [`CLIENT_ID`] and audits refusals into a fresh log.
async fn serve(options: TlsListenerOptions) -> Server {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path()).open().unwrap();
    let tls = ServerTlsBuilder::from_pem(
        pki.server.chain_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        pki.ca.cert_pem.as_bytes(),
    )
    .authorizer(IdentityAuthorizer::spiffe_ids([CLIENT_ID]).unwrap())
    .build()
    .unwrap();
    let mut listener = TlsListener::bind_with_options(
        "127.0.0.1:0".parse().unwrap(),
        tls,
        options.audit_log(log.clone()),
    )
    .await
    .unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats_handle();
    tokio::spawn(async move {
        while let Some(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(b"pong").await;
                }
            });
        }
    });
    Server {
        addr,
        pki,
        stats,
        log,
        _dir: dir,
    }
}

fn client_config(pki: &TestPki, cert: Option<&TestCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain_der.clone(), c.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A handshake and a ping; `Ok` if the server answered. Returns the client's address.
async fn attempt(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> (SocketAddr, Result<(), String>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let exchange = async {
        let mut tls = TlsConnector::from(cfg.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the server's verdict on our certificate comes after our Finished.
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(())
    };
    let result = tokio::time::timeout(GUARD, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer".into()));
    (local, result)
}

/// The record whose `peer` is `addr`.
fn record_of(records: &[Value], addr: SocketAddr) -> &Value {
    records
        .iter()
        .find(|r| r["peer"] == addr.to_string())
        .unwrap_or_else(|| panic!("no record for {addr}: {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_handshake_is_a_record_with_the_presented_certificate() {
    let server =
        serve(TlsListenerOptions::default().first_byte_timeout(Duration::from_millis(200))).await;
    let pki = &server.pki;

    // A certificate from another CA.
    let other_ca = TestCa::new("another root");
    let stranger = other_ca
        .leaf("stranger")
        .spiffe_id(CLIENT_ID)
        .client_auth()
        .issue();
    let (stranger_addr, result) = attempt(server.addr, &client_config(pki, Some(&stranger))).await;
    assert!(result.is_err(), "a stranger was served");
    // The right CA, an identity the authorizer does not allow.
    let intruder = pki
        .ca
        .leaf("intruder")
        .spiffe_id("spiffe://example.org/ns/default/sa/intruder")
        .client_auth()
        .issue();
    let (intruder_addr, result) = attempt(server.addr, &client_config(pki, Some(&intruder))).await;
    assert!(result.is_err(), "an intruder was served");
    // No certificate.
    let (anonymous_addr, result) = attempt(server.addr, &client_config(pki, None)).await;
    assert!(result.is_err(), "a client without a certificate was served");
    // Not TLS.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Silent past the first-byte timeout.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // A health check (connect, close) and a valid client: no records.
    drop(TcpStream::connect(server.addr).await.unwrap());
    let (_, result) = attempt(server.addr, &client_config(pki, Some(&pki.client))).await;
    result.unwrap();

    let all = wait_for_audit_lines(&server.log, 5, GUARD).await;
    let stats = wait_for_stats(&server.stats, GUARD, |s| s.first_byte_timeouts == 1).await;
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_eq!(stats.refused, 4, "{stats:#?}");
    assert_eq!(stats.closed_by_client, 1, "{stats:#?}");
    assert_eq!(stats.handshakes_completed, 1, "{stats:#?}");
    assert_eq!(stats.audit_records, 5, "{stats:#?}");
    for r in &all {
        assert_eq!(r["kind"], "tls.handshake", "{r}");
        assert_eq!(r["action"], "handshake", "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["resource"], server.addr.to_string(), "{r}");
    }

    let fingerprint = |cert: &TestCert| {
        PeerIdentity::from_der(&cert.cert_der)
            .unwrap()
            .fingerprint_sha256_hex()
    };
    let r = record_of(&all, stranger_addr);
    assert_eq!(r["refusal"], "certificate", "{r}");
    assert!(r["subject"].as_str().unwrap().contains("stranger"), "{r}");
    assert_eq!(r["cert_serial"], stranger.serial_hex(), "{r}");
    assert_eq!(r["cert_fingerprint_sha256"], fingerprint(&stranger), "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("unknown issuer"),
        "{r}"
    );

    let r = record_of(&all, intruder_addr);
    assert_eq!(r["refusal"], "certificate", "{r}");
    assert!(r["subject"].as_str().unwrap().contains("intruder"), "{r}");
    assert_eq!(r["cert_serial"], intruder.serial_hex(), "{r}");
    assert_eq!(r["cert_fingerprint_sha256"], fingerprint(&intruder), "{r}");
    assert!(
        r["reason"].as_str().unwrap().starts_with("not authorized"),
        "{r}"
    );

    let r = record_of(&all, anonymous_addr);
    assert_eq!(r["refusal"], "tls", "{r}");
    assert_eq!(r["subject"], "anonymous", "{r}");
    assert!(r.get("cert_serial").is_none(), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("certificate"), "{r}");

    let r = record_of(&all, garbage_addr);
    assert_eq!(r["refusal"], "tls", "{r}");
    assert_eq!(r["subject"], "anonymous", "{r}");

    let r = record_of(&all, silent_addr);
    assert_eq!(r["refusal"], "timeout", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("no ClientHello byte"),
        "{r}"
    );

    let report = zt_audit::verify_files(&server.log.files().unwrap()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    drop((garbage, silent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_handshakes_writes_a_bounded_number_of_records_and_counts_the_rest() {
    const PER_SECOND: u32 = 5;
    const BURST: u32 = 10;
    const BAD_CERTS: usize = 120;
    const GARBAGE: usize = 300;
    let started = Instant::now();
    let server = serve(TlsListenerOptions::default().audit_rate_limit(PER_SECOND, BURST)).await;
    let other_ca = TestCa::new("another root");
    let stranger = other_ca.leaf("stranger").client_auth().issue();
    let cfg = client_config(&server.pki, Some(&stranger));

    // Bad certificates, eight at a time, and garbage, all at once.
    let addr = server.addr;
    let garbage: Vec<_> = (0..GARBAGE)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let _ = conn
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
                    .await;
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await
                    && n > 0
                {}
            })
        })
        .collect();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                for _ in 0..BAD_CERTS / 8 {
                    let (_, result) = attempt(addr, &cfg).await;
                    assert!(result.is_err(), "a bad certificate was served");
                }
            })
        })
        .collect();
    for task in garbage.into_iter().chain(workers) {
        task.await.unwrap();
    }
    let refusals = (BAD_CERTS + GARBAGE) as u64;
    wait_for_stats(&server.stats, GUARD, |s| s.refused == refusals).await;

    // Within a second, the summary of what was left out is written.
    let deadline = Instant::now() + GUARD;
    let (all, summaries, suppressed) = loop {
        let all = audit_lines(&server.log);
        let summaries: Vec<&Value> = all
            .iter()
            .filter(|r| r.get("suppressed").is_some())
            .collect();
        let suppressed: u64 = summaries
            .iter()
            .map(|r| r["suppressed"].as_u64().unwrap())
            .sum();
        let individual = (all.len() - summaries.len()) as u64;
        if individual + suppressed == refusals {
            let summaries = summaries.len();
            break (all, summaries, suppressed);
        }
        assert!(
            Instant::now() < deadline,
            "{individual} records and {suppressed} suppressed do not add up to {refusals}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let individual = all.len() - summaries;
    eprintln!(
        "{refusals} refusals in {elapsed:.1} s: {individual} records, {summaries} summaries \
         counting {suppressed} more"
    );

    // Bounded: the burst and the rate over the time elapsed, and a summary a second.
    let allowed = f64::from(BURST) + f64::from(PER_SECOND) * elapsed + 1.0;
    assert!(
        (individual as f64) <= allowed,
        "{individual} individual records in {elapsed:.1} s; the limit allows {allowed:.0}"
    );
    assert!(
        summaries as f64 <= elapsed + 1.0,
        "{summaries} summaries in {elapsed:.1} s"
    );
    assert!(suppressed > 0, "nothing was suppressed: {all:#?}");
    for r in all.iter().filter(|r| r.get("suppressed").is_some()) {
        assert_eq!(r["kind"], "tls.handshake", "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
        assert!(
            r["reason"].as_str().unwrap().contains("rate limited"),
            "{r}"
        );
        let by_kind: u64 = r["suppressed_by_refusal"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(by_kind, r["suppressed"].as_u64().unwrap(), "{r}");
    }
    let stats = server.stats.get();
    assert_eq!(stats.audit_records, all.len() as u64, "{stats:#?}");
    assert_eq!(stats.audit_suppressed, suppressed, "{stats:#?}");

    // The chain verifies (what `ztkit audit verify` checks).
    let report = zt_audit::verify_files(&server.log.files().unwrap()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, all.len() as u64);
}
