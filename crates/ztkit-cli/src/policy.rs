//! `ztkit policy …`

use std::path::{Path, PathBuf};

use clap::Subcommand;
use policy_rego::{PolicyInput, PolicyOptions, PolicySet};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Evaluate a policy for an input and print the result as JSON (what OPA prints for the
    /// same policy and input).
    Eval {
        /// A bundle directory or `.tar.gz`.
        #[arg(long)]
        bundle: PathBuf,
        /// The input document (JSON).
        #[arg(long)]
        input: PathBuf,
        /// A Rego query (`data.http.authz.allow`, `x := data.a.b`); output is `opa eval
        /// --format json`'s. Without it, the decision of the decision rule is printed.
        #[arg(long)]
        query: Option<String>,
        /// The decision rule (a boolean or an `{allow, reasons, headers}` object).
        #[arg(long, default_value = "data.http.authz.allow")]
        decision_rule: String,
    },
    /// Run the `test_*` rules of a policy directory or bundle, like `opa test`; exit 1 if
    /// any fails.
    Test {
        /// A bundle directory or `.tar.gz`.
        dir: PathBuf,
        /// Print every test, not only failures.
        #[arg(short, long)]
        verbose: bool,
        /// The decision rule the set is compiled for.
        #[arg(long, default_value = "data.http.authz.allow")]
        decision_rule: String,
    },
}

fn load(path: &Path, options: &PolicyOptions) -> Result<PolicySet, Failure> {
    PolicySet::load(path, options).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

pub(crate) fn run(cmd: PolicyCommand) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Eval {
            bundle,
            input,
            query,
            decision_rule,
        } => {
            let text = std::fs::read_to_string(&input)
                .map_err(|e| Failure::Usage(format!("{}: {e}", input.display())))?;
            let input_doc = PolicyInput::from_json_str(&text)
                .map_err(|e| Failure::Usage(format!("{}: {e}", input.display())))?;
            // A plain `data.…` query is a rule the set can be compiled for.
            let rule = match &query {
                Some(q) if q.starts_with("data.") && !q.contains([' ', ':', '=', '[', '(']) => {
                    q.clone()
                }
                _ => decision_rule,
            };
            let options = PolicyOptions::new().decision_rule(rule).allow_untested();
            let set = load(&bundle, &options)?;
            let output = match query {
                Some(q) => set
                    .eval_query(&q, Some(&input_doc))
                    .map_err(|e| Failure::Refused(e.to_string()))?,
                None => serde_json::to_value(set.decide(&input_doc))
                    .map_err(|e| Failure::Usage(format!("cannot encode the decision: {e}")))?,
            };
            let json = serde_json::to_string_pretty(&output)
                .map_err(|e| Failure::Usage(format!("cannot encode the result: {e}")))?;
            println!("{json}");
            Ok(())
        }
        PolicyCommand::Test {
            dir,
            verbose,
            decision_rule,
        } => {
            let options = PolicyOptions::new()
                .decision_rule(decision_rule)
                .allow_untested();
            let set = load(&dir, &options)?;
            let report = set.run_tests();
            if verbose {
                print!("{}", report.verbose());
            }
            println!("{report}");
            if report.is_success() {
                Ok(())
            } else {
                Err(Failure::Refused(format!(
                    "{} failed, {} errors",
                    report.failed(),
                    report.errors()
                )))
            }
        }
    }
}
