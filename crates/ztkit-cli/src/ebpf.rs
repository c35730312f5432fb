//! `ztkit ebpf …`: the kernel L7 filter's rule file, and the filter itself.

use std::path::PathBuf;

use clap::Subcommand;
use ebpf_l7_filter::{FilterError, RuleSet};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum EbpfCommand {
    /// Validate a rule file as the filter and L7RulesLayer load it; print its rules, or the
    /// error naming the rule and exit 1.
    Check {
        /// The rule file (YAML).
        file: PathBuf,
        /// Also decide a request, given as "METHOD TARGET" (e.g. "GET /api/orders/7?x=1"),
        /// as the in-process layer and the kernel (for a whole request line) do; repeatable.
        #[arg(long = "request", value_name = "METHOD TARGET")]
        requests: Vec<String>,
    },
    /// Attach the kernel filter (needs root) at ingress of an interface for some TCP ports
    /// with a rule file, and print its events (deny, audit, refusals) until Ctrl-C; the
    /// filter is detached on exit.
    Run {
        /// The interface (in this network namespace).
        #[arg(long)]
        iface: String,
        /// The TCP destination ports to filter (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<u16>,
        /// The rule file (YAML).
        #[arg(long)]
        rules: PathBuf,
    },
}

pub(crate) fn run(cmd: EbpfCommand) -> Result<(), Failure> {
    match cmd {
        EbpfCommand::Check { file, requests } => check(&file, &requests),
        EbpfCommand::Run {
            iface,
            ports,
            rules,
        } => run_filter(&iface, &ports, &rules),
    }
}

fn run_filter(iface: &str, ports: &[u16], file: &std::path::Path) -> Result<(), Failure> {
    use futures_util::StreamExt;

    let rules = RuleSet::load(file).map_err(|e| match e {
        FilterError::Io { .. } => Failure::Usage(e.to_string()),
        _ => Failure::Refused(format!("{}: {e}", file.display())),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("tokio runtime: {e}")))?;
    let _guard = runtime.enter();
    let mut filter = ebpf_l7_filter::L7Filter::builder()
        .interface(iface)
        .ports(ports.iter().copied())
        .rules(rules.clone())
        .build()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let mut events = filter
        .events()
        .ok_or_else(|| Failure::Usage("events already taken".into()))?;
    eprintln!(
        "attached to {iface} ingress, ports {ports:?}, {} rule(s), default {}; Ctrl-C to detach",
        rules.rules().len(),
        rules.default_verdict()
    );
    runtime.block_on(async {
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => {
                        let rule = usize::try_from(event.rule_id)
                            .ok()
                            .and_then(|id| id.checked_sub(1))
                            .and_then(|i| rules.rules().get(i))
                            .map_or("-", |r| r.id());
                        println!("{event} id={rule}");
                    }
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    });
    if let Ok(c) = filter.counters() {
        eprintln!(
            "detaching: {} request(s), {} allowed, {} denied, {} audited, {} refused, {} event(s) lost",
            c.requests,
            c.allowed,
            c.denied,
            c.audited,
            c.refused,
            c.events_lost + c.events_dropped
        );
    }
    drop(filter);
    Ok(())
}

fn check(file: &std::path::Path, requests: &[String]) -> Result<(), Failure> {
    let rules = RuleSet::load(file).map_err(|e| match e {
        FilterError::Io { .. } => Failure::Usage(e.to_string()),
        _ => Failure::Refused(format!("{}: {e}", file.display())),
    })?;
    println!(
        "ok: {} rule(s), default {}, strict_paths {}",
        rules.rules().len(),
        rules.default_verdict(),
        rules.strict_paths()
    );
    let width = rules
        .rules()
        .iter()
        .map(|r| r.id().len())
        .max()
        .unwrap_or(2)
        .max(2);
    if !rules.rules().is_empty() {
        println!(
            "{:>4}  {:width$}  {:6}  {:24}  path",
            "#", "id", "action", "methods"
        );
    }
    for (i, rule) in rules.rules().iter().enumerate() {
        let methods = rule.methods().map_or("any".to_owned(), |set| {
            set.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
        });
        println!(
            "{:>4}  {:width$}  {:6}  {:24}  {} {}",
            i + 1,
            rule.id(),
            rule.action().as_str(),
            methods,
            rule.path().kind(),
            rule.path().path(),
        );
    }
    for request in requests {
        let Some((method, target)) = request.split_once(' ') else {
            return Err(Failure::Usage(format!(
                "--request {request:?}: expected \"METHOD TARGET\""
            )));
        };
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| Failure::Usage(format!("--request {request:?}: invalid method")))?;
        let d = rules.decide(&method, target);
        let rule = d
            .rule_index()
            .and_then(|i| rules.rules().get(i))
            .map_or("-", |r| r.id());
        println!("{request}: {} ({}, rule {rule})", d.verdict(), d.reason());
    }
    Ok(())
}
