//! The command's stderr on a pipe: library log lines and the final `refused:` line carry no
//! ANSI colour codes (even with `NO_COLOR` unset), and with `--log-format json` every
//! stderr line is a JSON object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use ztkit_test_support::TestCa;

const ID: &str = "spiffe://example.org/ns/web/sa/frontend";

/// `ztkit cert verify` of a revoked certificate with `RUST_LOG=warn`: mtls-verify logs the
/// refusal (a warning) and the command prints its `refused` line. stderr is a pipe.
fn verify_revoked(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::new("root");
    let revoked = root.leaf("gone").spiffe_id(ID).client_auth().issue();
    let write = |name: &str, contents: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = write("ca.pem", root.cert_pem.as_bytes());
    let crl = write("ca.crl", root.crl(&[&revoked]).pem.as_bytes());
    let leaf = write("leaf.pem", revoked.cert_pem.as_bytes());
    let out = Command::new(env!("CARGO_BIN_EXE_ztkit"))
        .args(extra)
        .args(["cert", "verify", "--ca", &ca, "--crl", &crl, &leaf])
        .env("RUST_LOG", "warn")
        .env_remove("NO_COLOR")
        .output()
        .expect("run ztkit");
    assert_eq!(out.status.code(), Some(1));
    out
}

#[test]
fn text_on_a_pipe_has_no_colour_codes() {
    for extra in [&[][..], &["--log-format", "text"][..]] {
        let out = verify_revoked(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.stderr.contains(&0x1b),
            "ANSI escape in piped stderr: {stderr:?}"
        );
        assert!(stderr.contains(" WARN "), "{stderr}");
        assert!(stderr.contains("client certificate refused"), "{stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with("refused: ")),
            "{stderr}"
        );
    }
}

#[test]
fn json_is_one_object_per_line() {
    let out = verify_revoked(&["--log-format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.stderr.contains(&0x1b), "{stderr:?}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{stderr}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "WARN" && v["fields"]["message"] == "client certificate refused"),
        "{stderr}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["fields"]["outcome"], "refused", "{stderr}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{stderr}"
    );
}
