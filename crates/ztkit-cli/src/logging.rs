//! The command's stderr: library log lines (`RUST_LOG`, default `error`) and the final
//! `refused:` / `error:` line, as text or, with `--log-format json`, one JSON object per
//! line. Text is coloured only when stderr is a terminal and `NO_COLOR` is unset: a file or
//! a pipe never gets ANSI codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Installs the subscriber for library log events.
    pub(crate) fn install(self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self {
            LogFormat::Text => subscriber.with_ansi(colour()).try_init(),
            LogFormat::Json => subscriber.json().try_init(),
        };
    }

    /// Writes how the command ended (`refused: …` or `error: …`) on stderr. Always
    /// printed, whatever `RUST_LOG` says: it is the command's answer, not a log event.
    pub(crate) fn outcome(self, outcome: &str, reason: &str) {
        match self {
            LogFormat::Text => eprintln!("{outcome}: {reason}"),
            LogFormat::Json => eprintln!(
                "{}",
                serde_json::json!({
                    "level": "ERROR",
                    "target": "ztkit",
                    "fields": { "outcome": outcome, "message": reason },
                })
            ),
        }
    }
}

fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
