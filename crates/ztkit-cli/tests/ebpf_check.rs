//! `ztkit ebpf check` as a real process: a good file's rules and decisions, a bad file's
//! error naming the rule (exit 1), an unreadable file (exit 2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn ztkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztkit"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_prints_the_rules_and_decides_requests() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        r#"
default: deny
rules:
  - id: health
    action: allow
    methods: [GET]
    path: { exact: "/health" }
  - id: orders-read
    action: allow
    methods: [GET, HEAD]
    path: { prefix: "/api/orders" }
"#,
    )
    .unwrap();
    let out = ztkit(&[
        "ebpf",
        "check",
        file.to_str().unwrap(),
        "--request",
        "GET /api/orders/7?x=1",
        "--request",
        "GET /api/orders-internal",
        "--request",
        "GET /api/../admin",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok: 2 rule(s), default deny, strict_paths true\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("   1  health       allow   GET                       exact /health"),
        "{stdout}"
    );
    assert!(
        stdout.contains("   2  orders-read  allow   GET,HEAD                  prefix /api/orders"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /api/orders/7?x=1: allow (rule, rule orders-read)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /api/orders-internal: deny (default, rule -)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /api/../admin: deny (non_canonical, rule -)"),
        "{stdout}"
    );
}

#[test]
fn check_names_the_bad_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        "rules:\n  - { id: ok, action: allow, path: { exact: \"/a\" } }\n  - { id: broken, action: allow, path: { prefix: \"api\" } }\n",
    )
    .unwrap();
    let out = ztkit(&["ebpf", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("broken") && stderr.contains("start with '/'"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = ztkit(&[
        "ebpf",
        "check",
        dir.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.yaml"));
}
