//! Bad input against the example servers (issue #2, section 6), run as child processes:
//!
//! * bad material at start-up (malformed PEM, a key that does not match the certificate, an
//!   expired certificate, an empty CA bundle): the server exits non-zero *before* it prints
//!   `listening on`, and its error names the offending file;
//! * garbage bytes and half-open handshakes on the TLS port: those connections are closed
//!   (the stalled ones by the handshake timeout, not before it) while a valid client is
//!   served meanwhile;
//! * a client chain with 20 intermediates and a 1 MiB client certificate: refused, the
//!   server keeps serving, and its peak RSS (`VmHWM`) stays bounded.
//!
//! Only Rust clients are used, so these tests run in plain `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use support::{
    CLIENT_ID, ExampleServer, GUARD, ServerFiles, client_cert, client_config, https_get, roots,
    run_to_exit, server_cert, write_file,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztkit_test_support::TestCa;

const EXAMPLES: [&str; 2] = ["axum_mtls", "tonic_mtls"];

// === (a) bad material at start-up ===

/// Starts each example with `cert`/`key`/`ca` and checks it exits non-zero before listening,
/// with the typed error naming `culprit`. `what` is the `mtls_verify::Error` variant and
/// the words of its message: `main` returns the error, which Rust prints with `{:?}` (the
/// variant), and an example that logs it with `{}` shows the message; either will do.
fn assert_refuses_to_start(cert: &Path, key: &Path, ca: &Path, culprit: &Path, what: [&str; 2]) {
    for example in EXAMPLES {
        let args: Vec<OsString> = vec![
            "--cert".into(),
            cert.into(),
            "--key".into(),
            key.into(),
            "--client-ca".into(),
            ca.into(),
        ];
        let exited = run_to_exit(example, &args);
        assert!(
            !exited.status.success(),
            "{example} exited successfully with bad input: {exited:?}"
        );
        assert!(
            !exited.stdout.contains("listening on"),
            "{example} listened before failing: {exited:?}"
        );
        let culprit = culprit.to_str().expect("utf-8 temp path");
        assert!(
            exited.stderr.contains(culprit),
            "{example}: the error does not name {culprit}: {}",
            exited.stderr
        );
        assert!(
            what.iter().any(|w| exited.stderr.contains(w)),
            "{example}: the error is not {what:?}: {}",
            exited.stderr
        );
    }
}

#[test]
fn startup_refuses_malformed_pem_certificate() {
    let files = ServerFiles::new();
    let malformed = write_file(
        files.dir.path(),
        "malformed.crt",
        "-----BEGIN CERTIFICATE-----\nthis is not base64 *** !!!\n-----END CERTIFICATE-----\n",
    );
    assert_refuses_to_start(
        &malformed,
        &files.key,
        &files.ca_pem,
        &malformed,
        ["Pem {", "is not valid PEM"],
    );
    // Valid base64 that is not DER: the certificate itself is malformed.
    let truncated = {
        let good = std::fs::read_to_string(&files.cert).unwrap();
        let body: Vec<&str> = good.lines().collect();
        // Keep the armour, drop half of the base64 lines.
        let keep = (body.len() - 2) / 2;
        let mut pem = vec![body[0]];
        pem.extend(&body[1..=keep]);
        pem.push(body[body.len() - 1]);
        write_file(files.dir.path(), "truncated.crt", pem.join("\n") + "\n")
    };
    assert_refuses_to_start(
        &truncated,
        &files.key,
        &files.ca_pem,
        &truncated,
        ["Pem {", "is not valid PEM"],
    );
}

#[test]
fn startup_refuses_key_that_does_not_match_certificate() {
    let files = ServerFiles::new();
    let other = server_cert(&files.ca);
    let (_, other_key) = other.write_to(files.dir.path(), "other");
    let mismatched = files.dir.path().join("mismatched.key");
    std::fs::rename(&other_key, &mismatched).unwrap();
    assert_refuses_to_start(
        &files.cert,
        &mismatched,
        &files.ca_pem,
        &mismatched,
        ["KeyMismatch {", "does not match the certificate"],
    );
}

#[test]
fn startup_refuses_expired_certificate() {
    let files = ServerFiles::new();
    let expired = files
        .ca
        .leaf("localhost")
        .dns("localhost")
        .server_auth()
        .expired()
        .issue();
    let (cert, key) = expired.write_to(files.dir.path(), "expired");
    assert_refuses_to_start(
        &cert,
        &key,
        &files.ca_pem,
        &cert,
        ["CertificateExpired {", "expired at"],
    );
}

#[test]
fn startup_refuses_empty_ca_bundle() {
    let files = ServerFiles::new();
    let empty = write_file(files.dir.path(), "empty-ca.pem", "");
    assert_refuses_to_start(
        &files.cert,
        &files.key,
        &empty,
        &empty,
        ["EmptyCaBundle {", "contains no certificate"],
    );
    // Only comments and whitespace: still no CA.
    let blank = write_file(
        files.dir.path(),
        "blank-ca.pem",
        "# the CA goes here\n\n   \n",
    );
    assert_refuses_to_start(
        &files.cert,
        &files.key,
        &blank,
        &blank,
        ["EmptyCaBundle {", "contains no certificate"],
    );
}

// === (b) garbage and half-open handshakes ===

/// Reads until the server closes the connection (EOF or reset); the time it took.
async fn wait_closed(mut conn: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an alert, then EOF
            }
        }
    };
    tokio::time::timeout(GUARD, read_all)
        .await
        .expect("the server never closed the connection");
    started.elapsed()
}

/// The first flight of a real rustls client: a TLS record holding a ClientHello.
fn client_hello(cfg: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap())
        .expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_half_open_handshakes_are_closed_while_valid_clients_are_served() {
    // Long enough that serving the valid client below surely ends before it, short enough
    // to keep the test quick.
    const TIMEOUT: Duration = Duration::from_millis(3000);
    let files = ServerFiles::new();
    let valid = client_cert(&files.ca, CLIENT_ID);
    let mut args = files.server_args();
    args.extend([
        OsString::from("--handshake-timeout-ms"),
        TIMEOUT.as_millis().to_string().into(),
    ]);
    let mut server = ExampleServer::start("axum_mtls", &args);
    let roots = roots(&files.ca);
    let cfg = Arc::new(client_config(&roots, Some(&valid), &[b"http/1.1"]));
    let hello = client_hello(cfg.clone());

    // Stalled handshakes: the server can only end them by its handshake timeout.
    let mut stalled = Vec::new();
    for i in 0..20 {
        // Taken before connecting: the server's timer cannot start earlier.
        let opened = Instant::now();
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        match i % 3 {
            // Connect and send nothing.
            0 => {}
            // Half a ClientHello.
            1 => conn.write_all(&hello[..hello.len() / 2]).await.unwrap(),
            // A handshake record header announcing 16 KiB, then a few bytes.
            _ => conn
                .write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00])
                .await
                .unwrap(),
        }
        stalled.push((opened, conn));
    }
    // Garbage the server can refuse at once: plaintext HTTP and random-looking bytes.
    let mut garbage = Vec::new();
    for bytes in [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        (0u8..=255).rev().cycle().take(3000).collect(),
        vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28], // an alert before any hello
    ] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        garbage.push(conn);
    }

    // Meanwhile a valid client is served, on several new connections.
    for _ in 0..5 {
        let (status, body) = https_get(&cfg, server.addr, "/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(CLIENT_ID), "{body}");
    }

    // The valid client did not wait for the stalled handshakes to expire: they are all
    // still open.
    for (i, (_, conn)) in stalled.iter().enumerate() {
        let mut buf = [0u8; 16];
        match conn.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("stalled connection {i} was already closed or answered: {other:?}"),
        }
    }

    // Every bad connection gets closed; the stalled ones not before the timeout.
    for conn in garbage {
        wait_closed(conn).await;
    }
    let closing: Vec<_> = stalled
        .into_iter()
        .map(|(opened, conn)| {
            tokio::spawn(async move {
                wait_closed(conn).await;
                opened.elapsed()
            })
        })
        .collect();
    for (i, task) in closing.into_iter().enumerate() {
        let lived = task.await.unwrap();
        assert!(
            lived >= TIMEOUT,
            "stalled connection {i} was closed after {lived:?}, before the {TIMEOUT:?} handshake timeout"
        );
    }
    assert!(server.is_running(), "the server died");
    // And it still serves afterwards.
    let (status, _) = https_get(&cfg, server.addr, "/").await.unwrap();
    assert_eq!(status, 200);
    server.wait_for_log_lines(&["TLS handshake timed out"], 20);
}

// === (c) oversized chains and certificates ===

/// A leaf issued at the end of a chain of `n` intermediates below `root`.
fn deep_chain_leaf(root: &TestCa, n: usize) -> ztkit_test_support::TestCert {
    let mut ca = root.intermediate("intermediate 1");
    for i in 2..=n {
        ca = ca.intermediate(&format!("intermediate {i}"));
    }
    let leaf = client_cert(&ca, CLIENT_ID);
    assert_eq!(leaf.chain_der.len(), n + 1, "leaf + {n} intermediates");
    leaf
}

/// A client certificate of about `size` bytes (one large private extension).
fn huge_leaf(root: &TestCa, size: usize) -> ztkit_test_support::TestCert {
    let leaf = root
        .leaf("huge")
        .spiffe_id(CLIENT_ID)
        .client_auth()
        .custom_extension(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x5a; size])
        .issue();
    assert!(leaf.cert_der.len() > size, "{} bytes", leaf.cert_der.len());
    leaf
}

/// A TLS 1.3 client config presenting `cert` without rustls's own check that the key
/// matches (which refuses to parse a 1 MiB certificate before it is ever sent).
fn unchecked_client_config(
    roots: &Arc<rustls::RootCertStore>,
    cert: &ztkit_test_support::TestCert,
) -> Arc<rustls::ClientConfig> {
    let provider = mtls_verify::crypto_provider();
    let key = provider
        .key_provider
        .load_private_key(cert.private_key())
        .expect("signing key");
    let certified = rustls::sign::CertifiedKey::new(cert.chain_der.clone(), key);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots.clone())
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Sends `count` handshakes with `cfg` at once; each must end without an HTTP response.
async fn assert_all_refused(
    what: &str,
    cfg: &Arc<rustls::ClientConfig>,
    server: &ExampleServer,
    count: usize,
) {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let cfg = cfg.clone();
            let addr = server.addr;
            tokio::spawn(async move { https_get(&cfg, addr, "/").await })
        })
        .collect();
    for task in tasks {
        let result = task.await.unwrap();
        assert!(
            result.is_err(),
            "{what}: the server answered {result:?}\nserver log:\n{}",
            server.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_client_chains_are_refused_with_bounded_memory() {
    const MIB: u64 = 1024 * 1024;
    let files = ServerFiles::new();
    let mut server = ExampleServer::start("axum_mtls", &files.server_args());
    let roots = roots(&files.ca);
    let valid = client_cert(&files.ca, CLIENT_ID);
    let valid_cfg = Arc::new(client_config(&roots, Some(&valid), &[b"http/1.1"]));
    let (status, _) = https_get(&valid_cfg, server.addr, "/").await.unwrap();
    assert_eq!(status, 200);
    let rss_before = server.proc_status_kib("VmRSS");

    // 20 intermediates: over the default depth limit, refused before any signature check.
    let deep = deep_chain_leaf(&files.ca, 20);
    let deep_cfg = Arc::new(client_config(&roots, Some(&deep), &[b"http/1.1"]));
    assert_all_refused("20 intermediates", &deep_cfg, &server, 32).await;

    // 1 MiB certificate, 128 clients at once: 128 MiB offered in total. The server refuses
    // each as soon as the handshake message header announces more than it accepts, so it
    // never buffers them.
    let huge = huge_leaf(&files.ca, MIB as usize);
    let huge_cfg = unchecked_client_config(&roots, &huge);
    assert_all_refused("1 MiB certificate", &huge_cfg, &server, 128).await;

    assert!(server.is_running(), "the server died");
    let (status, body) = https_get(&valid_cfg, server.addr, "/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(CLIENT_ID), "{body}");

    // The refusals were for the reasons meant (the log line follows the close).
    server.wait_for_log_lines(&["TLS handshake refused", "exceeds the maximum depth"], 32);
    server.wait_for_log_lines(&["TLS handshake refused", "HandshakePayloadTooLarge"], 128);
    let peak = server.proc_status_kib("VmHWM");
    eprintln!("example server RSS: {rss_before} KiB before, peak {peak} KiB after the attack");
    assert!(
        peak < 100 * 1024,
        "the server's peak RSS reached {peak} KiB (started at {rss_before} KiB)"
    );
}
