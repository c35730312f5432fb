//! The `ztkit` command: check certificates, tokens, policies, audit logs and L7 rule files exactly as
//! the libraries do at run time.
//!
//! Exit codes: 0 success, 1 the thing checked was refused (the reason is printed),
//! 2 bad usage or unreadable input.
//!
//! Results go to stdout; stderr carries the reason of a refusal or error and the libraries'
//! log lines (`RUST_LOG`, default `error`), as text (coloured only on a terminal) or, with
//! `--log-format json`, one JSON object per line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod cert;
mod dev_agent;
mod ebpf;
mod jwt;
mod logging;
mod policy;
mod spiffe;

#[derive(Debug, Parser)]
#[command(
    name = "ztkit",
    version,
    about = "ztkit: inspect and verify zero-trust material"
)]
struct Cli {
    /// How stderr lines look: `text` (coloured only on a terminal) or `json` (one object
    /// per line).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// X.509 certificates: inspect, verify a client chain.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// JWT access tokens: verify.
    #[command(subcommand)]
    Jwt(jwt::JwtCommand),
    /// Rego policies: evaluate, test.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Audit logs: verify the hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// SPIFFE federation: serve this trust domain's bundle endpoint.
    #[command(subcommand)]
    Spiffe(spiffe::SpiffeCommand),
    /// A SPIFFE Workload API for local development: X.509- and JWT-SVIDs for the given IDs
    /// from a throw-away CA. NOT for production (no workload attestation).
    DevAgent(dev_agent::DevAgentArgs),
    /// The kernel L7 filter: check a rule file, or attach the filter and print its events.
    #[command(subcommand)]
    Ebpf(ebpf::EbpfCommand),
}

/// How a command ended.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The input was checked and refused (exit 1).
    Refused(String),
    /// The input could not be read or the call was wrong (exit 2).
    Usage(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli.log_format;
    log.install();
    let result = match cli.command {
        Command::Cert(cmd) => cert::run(cmd),
        Command::Jwt(cmd) => jwt::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Spiffe(cmd) => spiffe::run(cmd),
        Command::Ebpf(cmd) => ebpf::run(cmd),
        Command::DevAgent(args) => dev_agent::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(reason)) => {
            log.outcome("refused", &reason);
            ExitCode::from(1)
        }
        Err(Failure::Usage(reason)) => {
            log.outcome("error", &reason);
            ExitCode::from(2)
        }
    }
}
