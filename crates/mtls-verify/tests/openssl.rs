//! Weak certificates made by the real `openssl` CLI (RSA-1024 keys, SHA-1 signatures, which
//! rcgen cannot produce), presented by `openssl s_client` to a `ServerTls` server; and the
//! version 1 CRL `openssl ca -gencrl` writes without `crlnumber`.
//! Run by `cargo xtask test` (`cargo test -- --ignored` with openssl installed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use mtls_verify::{ChainVerifyOptions, Error, verify_client_chain};
use support::{TestServer, server_builder};
use ztkit_test_support::TestPki;

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Issues `name.crt`/`name.key` with openssl: a new key (`keyalg` args for genpkey), signed
/// by the test CA with `digest`, clientAuth EKU.
fn openssl_client_cert(dir: &Path, pki: &TestPki, name: &str, keyalg: &[&str], digest: &str) {
    std::fs::write(dir.join("ca.crt"), &pki.ca.cert_pem).unwrap();
    std::fs::write(dir.join("ca.key"), pki.ca.key_pem()).unwrap();
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let mut genpkey = vec!["genpkey", "-out", &key];
    genpkey.extend_from_slice(keyalg);
    openssl(dir, &genpkey);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            digest,
            "-extfile",
            "ext.cnf",
            "-out",
            &crt,
        ],
    );
}

/// Runs `openssl s_client` with the given client certificate against `srv` and returns the
/// server's refusal reason.
async fn s_client_reason(srv: &mut TestServer, dir: &Path, name: &str) -> String {
    let addr = srv.addr.to_string();
    let dir = dir.to_owned();
    let name = name.to_owned();
    let child = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-servername",
                "localhost",
                "-tls1_3",
                "-cert",
                &format!("{name}.crt"),
                "-key",
                &format!("{name}.key"),
                "-CAfile",
                "ca.crt",
                // Let openssl itself use the weak material; the server must refuse it.
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client")
    });
    let ev = srv.next_event().await;
    let _ = child.await;
    ev.refused_reason()
}

async fn server(pki: &TestPki) -> TestServer {
    let tls = server_builder(&pki.ca, &pki.server).build().unwrap();
    TestServer::start(tls).await
}

fn chain_of(dir: &Path, name: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    mtls_verify::pem::read_certificates_file(&dir.join(format!("{name}.crt"))).unwrap()
}

#[tokio::test]
#[ignore = "needs openssl: run by cargo xtask test"]
async fn openssl_rsa_1024_client_certificate_is_refused() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    openssl_client_cert(
        dir.path(),
        &pki,
        "weak",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        "-sha256",
    );
    let options = ChainVerifyOptions::new(vec![pki.ca.cert_der.clone()]);
    let err = verify_client_chain(&chain_of(dir.path(), "weak"), &options).unwrap_err();
    assert!(matches!(err, Error::Certificate(_)), "{err}");
    assert!(err.to_string().contains("1024-bit RSA key"), "{err}");

    let mut srv = server(&pki).await;
    let reason = s_client_reason(&mut srv, dir.path(), "weak").await;
    assert!(reason.contains("1024-bit RSA key"), "{reason}");

    // Control: an openssl-made RSA-2048 certificate from the same CA is accepted.
    openssl_client_cert(
        dir.path(),
        &pki,
        "strong",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "-sha256",
    );
    verify_client_chain(&chain_of(dir.path(), "strong"), &options).unwrap();
    let reason = s_client_reason(&mut srv, dir.path(), "strong").await;
    assert_eq!(reason, "", "strong certificate refused");
}

#[tokio::test]
#[ignore = "needs openssl: run by cargo xtask test"]
async fn openssl_sha1_signed_client_certificate_is_refused() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    openssl_client_cert(
        dir.path(),
        &pki,
        "sha1",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "-sha1",
    );
    let options = ChainVerifyOptions::new(vec![pki.ca.cert_der.clone()]);
    let err = verify_client_chain(&chain_of(dir.path(), "sha1"), &options).unwrap_err();
    assert!(err.to_string().contains("ecdsa-with-SHA1"), "{err}");

    let mut srv = server(&pki).await;
    let reason = s_client_reason(&mut srv, dir.path(), "sha1").await;
    assert!(reason.contains("SHA-1"), "{reason}");
}

/// A CA directory for `openssl ca -gencrl`: the test CA's certificate and key, an empty
/// index, and a config without `crlnumber` (so openssl writes a version 1 CRL).
fn openssl_ca_dir(dir: &Path, pki: &TestPki) {
    std::fs::write(dir.join("ca.crt"), &pki.ca.cert_pem).unwrap();
    std::fs::write(dir.join("ca.key"), pki.ca.key_pem()).unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ ca ]\ndefault_ca = test_ca\n[ test_ca ]\ndatabase = index.txt\n\
         certificate = ca.crt\nprivate_key = ca.key\ndefault_md = sha256\n\
         default_crl_days = 1\n",
    )
    .unwrap();
}

#[test]
#[ignore = "needs openssl: run by cargo xtask test"]
fn openssl_version_1_crl_is_refused_saying_how_to_fix_it() {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    openssl_ca_dir(dir, &pki);
    openssl(
        dir,
        &["ca", "-gencrl", "-config", "ca.cnf", "-out", "v1.crl"],
    );
    let text = openssl(dir, &["crl", "-in", "v1.crl", "-noout", "-text"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Version 1 (0x0)"));

    let build = |crl: &str| {
        server_builder(&pki.ca, &pki.server)
            .crl_file(dir.join(crl))
            .build()
    };
    let err = build("v1.crl").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Crl { .. }), "{text}");
    assert!(text.contains("v1.crl"), "{text}");
    assert!(text.contains("version 1 CRL"), "{text}");
    assert!(text.contains("only version 2 CRLs are accepted"), "{text}");
    assert!(text.contains("crlnumber"), "{text}");

    // Following the advice works: with `crlnumber` openssl writes version 2, which loads.
    let mut cnf = std::fs::read_to_string(dir.join("ca.cnf")).unwrap();
    cnf.push_str("crlnumber = crlnumber\n");
    std::fs::write(dir.join("ca.cnf"), cnf).unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    openssl(
        dir,
        &["ca", "-gencrl", "-config", "ca.cnf", "-out", "v2.crl"],
    );
    build("v2.crl").unwrap();

    // The version 1 CRL built in Rust (used where openssl is absent) is what openssl calls
    // version 1, and its signature verifies against the CA.
    std::fs::write(dir.join("rust-v1.crl"), pki.ca.crl_v1(&[&pki.client]).pem).unwrap();
    let out = openssl(
        dir,
        &[
            "crl",
            "-in",
            "rust-v1.crl",
            "-CAfile",
            "ca.crt",
            "-noout",
            "-text",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Version 1 (0x0)"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pki.client.serial_hex().to_uppercase()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("verify OK"));
}
