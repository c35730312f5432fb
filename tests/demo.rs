//! `cargo run --example demo` run as a child process: every case behaves as expected, a
//! refused handshake shows the server's reason (the TLS alert) for HTTP and for gRPC, not
//! "Unknown transport error", and the SPIFFE part (a test Workload API in-process, a tonic
//! server on its SVID) shows an authenticated call, a refusal from another trust domain and
//! a rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The demo's stdout, from one run shared by the tests of this file (it fails the test if
/// the demo exits with an error).
fn demo_output() -> &'static str {
    static OUTPUT: OnceLock<Result<String, String>> = OnceLock::new();
    let output = OUTPUT.get_or_init(|| {
        let out = Command::new(support::example_bin("demo"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run the demo");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "demo failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match output {
        Ok(stdout) => stdout,
        Err(e) => panic!("{e}"),
    }
}

/// The cells of the table row for `case`: case | expected | third | fourth | ok.
fn row<'a>(stdout: &'a str, case: &str) -> Vec<&'a str> {
    let row = stdout
        .lines()
        .find(|l| l.starts_with(case))
        .unwrap_or_else(|| panic!("no row for {case}:\n{stdout}"));
    row.split('|').map(str::trim).collect()
}

#[test]
fn the_demo_passes_and_shows_why_handshakes_were_refused() {
    let stdout = demo_output();
    for (case, alert) in [
        ("no client certificate", "CertificateRequired alert"),
        ("certificate from another CA", "UnknownCA alert"),
        ("expired certificate", "CertificateExpired alert"),
    ] {
        let cells = row(stdout, case);
        // case | expected | HTTP | gRPC | ok
        assert_eq!(cells[2], format!("refused: {alert}"), "HTTP: {cells:?}");
        assert_eq!(cells[3], format!("refused: {alert}"), "gRPC: {cells:?}");
        assert_eq!(cells[4], "yes", "{cells:?}");
    }
    assert!(!stdout.contains("transport error"), "{stdout}");
}

#[test]
fn the_demo_shows_a_spiffe_call_a_foreign_trust_domain_refused_and_a_rotation() {
    let stdout = demo_output();
    assert!(
        stdout.contains("SPIFFE (test Workload API in-process"),
        "{stdout}"
    );

    // case | expected | peer / certificate | gRPC (tonic on SVIDs) | ok
    let member = row(stdout, "SVID of the server's trust domain");
    assert_eq!(
        member[2], "server saw spiffe://example.org/client",
        "{member:?}"
    );
    assert!(member[3].starts_with("OK hello demo"), "{member:?}");
    assert_eq!(member[4], "yes", "{member:?}");

    // Refused by the server (the alert it sent), not by the client's own checks.
    let foreign = row(stdout, "SVID of another trust domain");
    assert_eq!(
        foreign[3], "refused: CertificateUnknown alert",
        "{foreign:?}"
    );
    assert_eq!(foreign[4], "yes", "{foreign:?}");

    let rotation = row(stdout, "agent rotates the server's SVID");
    let serials = rotation[2]
        .strip_prefix("serial ")
        .and_then(|s| s.split_once(" -> "))
        .unwrap_or_else(|| panic!("no serials: {rotation:?}"));
    assert_ne!(serials.0, serials.1, "{rotation:?}");
    assert!(rotation[3].starts_with("OK hello demo"), "{rotation:?}");
    assert_eq!(rotation[4], "yes", "{rotation:?}");
}
