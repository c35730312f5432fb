//! `cargo run --example demo` run as a child process: every case behaves as expected, and a
//! refused handshake shows the server's reason (the TLS alert) for HTTP and for gRPC, not
//! "Unknown transport error".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};

#[test]
fn the_demo_passes_and_shows_why_handshakes_were_refused() {
    let out = Command::new(support::example_bin("demo"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (case, alert) in [
        ("no client certificate", "CertificateRequired alert"),
        ("certificate from another CA", "UnknownCA alert"),
        ("expired certificate", "CertificateExpired alert"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no row for {case}:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // case | expected | HTTP | gRPC | ok
        assert_eq!(cells[2], format!("refused: {alert}"), "HTTP: {row}");
        assert_eq!(cells[3], format!("refused: {alert}"), "gRPC: {row}");
        assert_eq!(cells[4], "yes", "{row}");
    }
    assert!(!stdout.contains("transport error"), "{stdout}");
}
