//! Secrets never reach the file: checked by searching the file's bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::json;
use zt_audit::{AuditLog, Durability, REDACTED, Record, Redactor, verify_files};

const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsInNjb3BlIjoicmVhZCJ9.U0lHTkFUVVJFX0JZVEVT";

/// Appends one request record full of secrets through a log with `redactor`; returns
/// the file's bytes.
fn log_secrets(dir: &Path, redactor: Redactor) -> Vec<u8> {
    let log = AuditLog::builder(dir)
        .durability(Durability::None)
        .redactor(redactor.clone())
        .open()
        .unwrap();
    let headers = redactor.redact_headers([
        ("Authorization", "Bearer SECRET-authz-1"),
        ("Cookie", "sid=SECRET-cookie-2"),
        ("Proxy-Authorization", "Basic SECRET-proxy-3"),
        ("X-Api-Key", "SECRET-apikey-4"),
        ("Accept", "application/json"),
        ("X-Forwarded-Token", JWT),
    ]);
    log.append(
        Record::new("http.request")
            .subject("alice")
            .reason(format!("token {JWT} expired"))
            .field(
                "input",
                json!({
                    "attributes": {"request": {"http": {"method": "GET", "headers": headers}}},
                    "password": "SECRET-password-5",
                }),
            )
            // Headers given as a raw object with their original case.
            .field(
                "response_headers",
                json!({"Set-Cookie": "sid=SECRET-setcookie-6", "Server": "ztkit"}),
            )
            .field("AUTHORIZATION", "Bearer SECRET-toplevel-7"),
    )
    .unwrap();
    assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
    std::fs::read(log.current_file()).unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn default_and_configured_secrets_never_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let redactor = Redactor::new()
        .header("x-api-key")
        .pointer("/input/password");
    let bytes = log_secrets(dir.path(), redactor);
    for secret in [
        "SECRET-authz-1",
        "SECRET-cookie-2",
        "SECRET-proxy-3",
        "SECRET-apikey-4",
        "SECRET-password-5",
        "SECRET-setcookie-6",
        "SECRET-toplevel-7",
        "SECRET",
        "eyJ",
        "U0lHTkFUVVJFX0JZVEVT",
    ] {
        assert!(!contains(&bytes, secret), "{secret} reached the file");
    }
    // What is not secret is still there, and the redactions are marked.
    for kept in [
        "application/json",
        "ztkit",
        "alice",
        "\"method\":\"GET\"",
        "token [REDACTED] expired",
    ] {
        assert!(contains(&bytes, kept), "{kept} missing");
    }
    assert!(contains(&bytes, REDACTED));
}

#[test]
fn without_redaction_the_same_record_would_leak() {
    // Proves the search above can see secrets when they are written.
    let dir = tempfile::tempdir().unwrap();
    let bytes = log_secrets(dir.path(), Redactor::insecure_empty());
    for secret in [
        "SECRET-authz-1",
        "SECRET-cookie-2",
        "SECRET-password-5",
        "SECRET-toplevel-7",
        JWT,
    ] {
        assert!(contains(&bytes, secret), "{secret}");
    }
}

#[test]
fn default_headers_need_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = log_secrets(dir.path(), Redactor::new());
    for secret in [
        "SECRET-authz-1",
        "SECRET-cookie-2",
        "SECRET-proxy-3",
        "SECRET-setcookie-6",
        "SECRET-toplevel-7",
    ] {
        assert!(!contains(&bytes, secret), "{secret} reached the file");
    }
    // Not configured: these stay.
    assert!(contains(&bytes, "SECRET-apikey-4"));
    assert!(contains(&bytes, "SECRET-password-5"));
}

#[test]
fn pointers_reach_the_fixed_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .redactor(Redactor::new().pointer("/subject").pointer("/input/a/1"))
        .open()
        .unwrap();
    log.append(
        Record::new("k")
            .subject("SECRET-subject")
            .field("input", json!({"a": ["keep", "SECRET-elem"]})),
    )
    .unwrap();
    let bytes = std::fs::read(log.current_file()).unwrap();
    assert!(!contains(&bytes, "SECRET"));
    assert!(contains(&bytes, "\"subject\":\"[REDACTED]\""));
    assert!(contains(&bytes, "\"a\":[\"keep\",\"[REDACTED]\"]"));
}
