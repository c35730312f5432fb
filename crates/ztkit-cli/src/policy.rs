//! `ztkit policy …`

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use policy_rego::{Evaluator, PolicyEngine, PolicyInput, PolicyOptions, PolicySet};

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
        #[arg(long, required_unless_present = "inputs", conflicts_with = "inputs")]
        input: Option<PathBuf>,
        /// A file of input documents, one JSON object per line (`-` for stdin). They are
        /// decided one after another in this process through the engine a server uses (its
        /// default options: the set's tests must pass, `--evaluator auto`), and one result is
        /// printed per line: the document the `--input` form prints, on one line, or
        /// `{"error": "…"}` for a line that is not a valid input (exit 1 at the end).
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// The evaluator for `--inputs` (default: the engine's default, `auto`).
        #[arg(long, value_enum, default_value_t = EvaluatorArg::Auto, requires = "inputs")]
        evaluator: EvaluatorArg,
        /// With `--inputs`: load the set even if its tests fail.
        #[arg(long, requires = "inputs")]
        allow_untested: bool,
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

/// `--evaluator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EvaluatorArg {
    /// The compiled form where it is shown equal to the interpreter, else the interpreter.
    Auto,
    /// The compiled form only (a set it does not decide is refused).
    Compiled,
    /// The interpreter.
    Interpreter,
}

impl From<EvaluatorArg> for Evaluator {
    fn from(e: EvaluatorArg) -> Self {
        match e {
            EvaluatorArg::Auto => Evaluator::Auto,
            EvaluatorArg::Compiled => Evaluator::Compiled,
            EvaluatorArg::Interpreter => Evaluator::Interpreter,
        }
    }
}

fn load(path: &Path, options: &PolicyOptions) -> Result<PolicySet, Failure> {
    PolicySet::load(path, options).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

pub(crate) fn run(cmd: PolicyCommand) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Eval {
            bundle,
            input: None,
            inputs: Some(inputs),
            query,
            decision_rule,
            evaluator,
            allow_untested,
        } => {
            let mut options = PolicyOptions::new()
                .decision_rule(decision_rule)
                .evaluator(evaluator.into());
            if allow_untested {
                options = options.allow_untested();
            }
            let engine = PolicyEngine::load(&bundle, options)
                .map_err(|e| Failure::Usage(format!("{}: {e}", bundle.display())))?;
            eval_lines(&engine, &inputs, query.as_deref())
        }
        PolicyCommand::Eval {
            bundle,
            input: Some(input),
            query,
            decision_rule,
            ..
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
        PolicyCommand::Eval { .. } => Err(Failure::Usage(
            "give --input FILE or --inputs FILE.jsonl".into(),
        )),
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

/// Decides every line of `path` with `engine` and prints one result per line.
fn eval_lines(engine: &PolicyEngine, path: &Path, query: Option<&str>) -> Result<(), Failure> {
    use std::io::{BufRead, Write};
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        Box::new(std::io::BufReader::new(file))
    };
    let set = engine.current();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut bad = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line_no = n + 1;
        let line =
            line.map_err(|e| Failure::Usage(format!("{}:{line_no}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = PolicyInput::from_json_str(&line)
            .map_err(|e| e.to_string())
            .and_then(|input| match query {
                Some(q) => set.eval_query(q, Some(&input)).map_err(|e| e.to_string()),
                None => serde_json::to_value(engine.decide(&input)).map_err(|e| e.to_string()),
            });
        let json = match result {
            Ok(v) => v,
            Err(e) => {
                bad.push(line_no);
                serde_json::json!({ "error": format!("line {line_no}: {e}") })
            }
        };
        writeln!(out, "{json}")
            .map_err(|e| Failure::Usage(format!("cannot write the result: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Usage(format!("cannot write the result: {e}")))?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure::Refused(format!(
            "{}: {} line(s) are not valid inputs: {:?}",
            path.display(),
            bad.len(),
            bad
        )))
    }
}
