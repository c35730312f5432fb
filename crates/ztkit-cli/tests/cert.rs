//! `ztkit cert inspect|verify` run as a real process on real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use ztkit_test_support::TestCa;

fn ztkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztkit"))
        .args(args)
        .output()
        .expect("run ztkit")
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const ID: &str = "spiffe://example.org/ns/web/sa/frontend";

#[test]
fn inspect_prints_identity_json_from_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("root");
    let leaf = ca
        .leaf("frontend")
        .spiffe_id(ID)
        .dns("web.internal")
        .issue();
    let pem = write(dir.path(), "leaf.pem", &leaf.cert_pem);
    let der = write(dir.path(), "leaf.der", leaf.cert_der.as_ref());

    for file in [&pem, &der] {
        let out = ztkit(&["cert", "inspect", file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = stdout_json(&out);
        assert_eq!(json["spiffe_id"], ID);
        assert_eq!(json["dns_sans"][0], "web.internal");
        assert_eq!(json["subject_cn"], "frontend");
        assert_eq!(json["serial"], leaf.serial_hex());
        assert_eq!(json["fingerprint_sha256"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn inspect_garbage_names_the_file_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    let out = ztkit(&["cert", "inspect", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.pem"));

    let out = ztkit(&[
        "cert",
        "inspect",
        &dir.path().join("missing.pem").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
}

#[test]
fn verify_accepts_a_valid_chain_through_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::new("root");
    let mid = root.intermediate("issuing");
    let leaf = mid.leaf("frontend").spiffe_id(ID).client_auth().issue();
    let ca = write(dir.path(), "ca.pem", &root.cert_pem);
    let leaf_only = write(dir.path(), "leaf.pem", &leaf.cert_pem);
    let inter = write(dir.path(), "inter.pem", mid.chain_pem());

    let out = ztkit(&[
        "cert",
        "verify",
        "--ca",
        &ca,
        "--intermediates",
        &inter,
        "--spiffe-id",
        ID,
        &leaf_only,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["spiffe_id"], ID);

    // Without the intermediate the chain does not lead to the root.
    let out = ztkit(&["cert", "verify", "--ca", &ca, &leaf_only]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn verify_refuses_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::new("root");
    let other = TestCa::new("other");
    let ca = write(dir.path(), "ca.pem", &root.cert_pem);

    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        (
            "expired",
            root.leaf("old")
                .spiffe_id(ID)
                .client_auth()
                .expired()
                .issue()
                .cert_pem,
            vec![],
            "expired",
        ),
        (
            "other CA",
            other.leaf("x").spiffe_id(ID).client_auth().issue().cert_pem,
            vec![],
            "trusted",
        ),
        (
            "serverAuth only",
            root.leaf("srv")
                .spiffe_id(ID)
                .server_auth()
                .issue()
                .cert_pem,
            vec![],
            "usage",
        ),
        (
            "wrong SPIFFE ID",
            root.leaf("x")
                .spiffe_id("spiffe://example.org/ns/web/sa/other")
                .client_auth()
                .issue()
                .cert_pem,
            vec!["--spiffe-id".into(), ID.into()],
            "spiffe://example.org/ns/web/sa/other",
        ),
        (
            "other trust domain",
            root.leaf("x")
                .spiffe_id("spiffe://evil.org/x")
                .client_auth()
                .issue()
                .cert_pem,
            vec!["--trust-domain".into(), "example.org".into()],
            "evil.org",
        ),
    ];
    for (name, pem, extra, needle) in cases {
        let leaf = write(dir.path(), "leaf.pem", pem);
        let mut args = vec![
            "cert".to_owned(),
            "verify".into(),
            "--ca".into(),
            ca.clone(),
        ];
        args.extend(extra);
        args.push(leaf);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ztkit(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(needle),
            "{name}: reason {stderr:?} lacks {needle:?}"
        );
    }
}

#[test]
fn verify_checks_crls() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::new("root");
    let revoked = root.leaf("gone").spiffe_id(ID).client_auth().issue();
    let fine = root.leaf("fine").spiffe_id(ID).client_auth().issue();
    let ca = write(dir.path(), "ca.pem", &root.cert_pem);
    let crl = write(dir.path(), "ca.crl", root.crl(&[&revoked]).pem);
    let revoked_path = write(dir.path(), "revoked.pem", &revoked.cert_pem);
    let fine_path = write(dir.path(), "fine.pem", &fine.cert_pem);

    let out = ztkit(&["cert", "verify", "--ca", &ca, "--crl", &crl, &revoked_path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("revoked")
    );

    let out = ztkit(&["cert", "verify", "--ca", &ca, "--crl", &crl, &fine_path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A version 1 CRL (what `openssl ca -gencrl` writes without `crlnumber`) is a usage
/// error naming the file, what is wrong and how to fix it, not `BadDer`.
#[test]
fn verify_explains_a_version_1_crl() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::new("root");
    let leaf = root.leaf("fine").spiffe_id(ID).client_auth().issue();
    let ca = write(dir.path(), "ca.pem", &root.cert_pem);
    let crl = write(dir.path(), "v1.crl", root.crl_v1(&[]).pem);
    let leaf = write(dir.path(), "leaf.pem", &leaf.cert_pem);

    let out = ztkit(&["cert", "verify", "--ca", &ca, "--crl", &crl, &leaf]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("v1.crl"), "{stderr}");
    assert!(stderr.contains("version 1 CRL"), "{stderr}");
    assert!(
        stderr.contains("only version 2 CRLs are accepted"),
        "{stderr}"
    );
    assert!(stderr.contains("crlnumber"), "{stderr}");
    assert!(!stderr.contains("BadDer"), "{stderr}");
}

#[test]
fn verify_with_spiffe_trust_picks_the_bundle_of_the_leafs_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (
        TestCa::new("CA of a.example"),
        TestCa::new("CA of b.example"),
    );
    let ca = write(dir.path(), "a.pem", &ca_a.cert_pem);
    let b_bundle = format!("b.example={}", write(dir.path(), "b.pem", &ca_b.cert_pem));
    let client_b = ca_b
        .leaf("b")
        .spiffe_id("spiffe://b.example/web")
        .client_auth()
        .issue();
    let forged = ca_b
        .leaf("forged")
        .spiffe_id("spiffe://a.example/admin")
        .client_auth()
        .issue();
    let b_path = write(dir.path(), "client-b.pem", &client_b.chain_pem);
    let forged_path = write(dir.path(), "forged.pem", &forged.chain_pem);
    let verify = |leaf: &str, extra: &[&str]| {
        let mut args = vec![
            "cert",
            "verify",
            "--ca",
            &ca,
            "--local-trust-domain",
            "a.example",
        ];
        args.extend_from_slice(&["--federated-bundle", &b_bundle]);
        args.extend_from_slice(extra);
        args.push(leaf);
        ztkit(&args)
    };
    let out = verify(&b_path, &["--allow-trust-domain", "b.example"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["spiffe_id"], "spiffe://b.example/web");
    let out = verify(&b_path, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("excluded by the trust-domain policy"));
    let out = verify(&forged_path, &["--any-trust-domain"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown issuer"));
}
