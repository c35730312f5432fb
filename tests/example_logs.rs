//! The example servers' logs on a pipe: no ANSI colour codes even with `NO_COLOR` unset
//! (colour is for terminals only), and with `--log-format json` every stderr line is a JSON
//! object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use support::{ExampleServer, ServerFiles, client_config, https_get, roots};

/// Starts `axum_mtls` with stderr on a pipe and `NO_COLOR` unset, makes it log a refused
/// handshake (a client without a certificate), and returns everything it logged.
async fn logs_of_a_refused_handshake(extra: &[&str]) -> String {
    let files = ServerFiles::new();
    let mut args = files.server_args();
    args.extend(extra.iter().map(Into::into));
    let server = ExampleServer::start_with_env("axum_mtls", &args, &[("NO_COLOR", None)]);
    let anonymous = Arc::new(client_config(&roots(&files.ca), None, &[b"http/1.1"]));
    assert!(https_get(&anonymous, server.addr, "/").await.is_err());
    server.wait_for_log_lines(&["TLS handshake refused"], 1);
    server.stderr()
}

#[tokio::test]
async fn text_logs_on_a_pipe_carry_no_colour_codes() {
    for extra in [&[][..], &["--log-format", "text"][..]] {
        let log = logs_of_a_refused_handshake(extra).await;
        assert!(!log.contains('\x1b'), "ANSI escape in piped log:\n{log:?}");
        assert!(log.contains(" INFO "), "{log}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let log = logs_of_a_refused_handshake(&["--log-format", "json"]).await;
    assert!(!log.contains('\x1b'), "{log:?}");
    let mut refused = 0;
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        if value["fields"]["message"] == "TLS handshake refused" {
            assert!(value["fields"]["remote_addr"].is_string(), "{line}");
            refused += 1;
        }
    }
    assert!(refused >= 1, "{log}");
}
