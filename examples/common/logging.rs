//! Where the examples' logs go and how they look: stderr, filtered by `RUST_LOG`, as text
//! (coloured only when stderr is a terminal and `NO_COLOR` is unset, so a file or a pipe
//! gets no ANSI codes) or as JSON, one object per line (`--log-format json`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines; colour only on a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// The `--log-format` flag.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LogArgs {
    /// Log lines on stderr as `text` (coloured only on a terminal) or `json` (one object
    /// per line).
    #[arg(long, env = "ZTKIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Logs to stderr in `args`' format, filtered by `RUST_LOG` (default `default_filter`).
pub(crate) fn init(args: &LogArgs, default_filter: &str) {
    let _ = FORMAT.set(args.log_format);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => fmt.with_ansi(stderr_wants_colour()).try_init(),
        LogFormat::Json => fmt.json().try_init(),
    };
}

/// Colour only for a person at a terminal who has not asked for none.
fn stderr_wants_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints the error that ended the program to stderr: `error: …`, or in JSON mode an
/// object shaped like the log lines, so every stderr line parses.
pub(crate) fn print_fatal(error: &dyn std::fmt::Display) {
    match FORMAT.get() {
        Some(LogFormat::Json) => eprintln!(
            "{}",
            serde_json::json!({
                "level": "ERROR",
                "target": "example",
                "fields": { "message": error.to_string() },
            })
        ),
        _ => eprintln!("error: {error}"),
    }
}
