//! The differential suite: every case of `tests/differential/corpus.yaml` × its generated inputs,
//! decided thousands of times in one process through `PolicyEngine` with default options (and
//! with `Evaluator::Compiled` wherever that accepts the set), compared with regorus's
//! interpreter and with the values real OPA returned, recorded in
//! `tests/differential/opa_results.json`.
//!
//! `opa_recordings_match_real_opa` (ignored unless node and the OPA library are installed;
//! `cargo xtask test` installs them) evaluates the corpus with real OPA again and checks the
//! recording; with `ZTKIT_RECORD_OPA=1` it rewrites the recording instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use policy_rego::{
    BundleLoader, BundleWriter, Evaluator, PolicyEngine, PolicyInput, PolicyOptions, PolicySet,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    rule: Option<String>,
    rego: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    vary: BTreeMap<String, Vec<Value>>,
    /// Refused under default options (`PolicyError::OpaDivergence`): regorus would decide
    /// otherwise than OPA. Decided with `allow_regorus_semantics` only to compare evaluators.
    #[serde(default)]
    refused: bool,
    /// regorus stops with an error (the decision denies) where OPA gives a value: the one
    /// disagreement left, in the failing-closed direction, named here.
    #[serde(default)]
    known_divergence: Option<String>,
    /// regorus's interpreter stops with an error where OPA gives a value, but the set is
    /// decided on the compiled form, which gives OPA's value: the default engine must give
    /// exactly OPA's values (no error tolerated), and the set must be on the compiled form.
    #[serde(default)]
    interpreter_divergence: Option<String>,
}

impl Case {
    fn rule(&self) -> &str {
        self.rule.as_deref().unwrap_or("data.t.r")
    }

    /// The cartesian product of `vary`, in a fixed order.
    fn inputs(&self) -> Vec<Value> {
        let mut inputs = vec![json!({})];
        for (path, values) in &self.vary {
            let mut next = Vec::new();
            for input in &inputs {
                for v in values {
                    let mut input = input.clone();
                    if v != "<absent>" {
                        set_path(&mut input, path, v.clone());
                    }
                    next.push(input);
                }
            }
            inputs = next;
        }
        inputs
    }
}

fn set_path(doc: &mut Value, path: &str, value: Value) {
    let mut at = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let obj = at.as_object_mut().expect("object along the path");
        if parts.peek().is_none() {
            obj.insert(part.to_owned(), value);
            return;
        }
        at = obj.entry(part.to_owned()).or_insert_with(|| json!({}));
    }
}

/// One evaluation's outcome, as OPA reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Value(Value),
    Undefined(bool),
    Error(String),
}

impl Outcome {
    fn of(r: Result<Option<Value>, policy_rego::PolicyError>) -> Self {
        match r {
            Ok(Some(v)) => Outcome::Value(v),
            Ok(None) => Outcome::Undefined(true),
            Err(e) => Outcome::Error(e.to_string()),
        }
    }

    /// Equal values (sets compared as sets), or both undefined, or both errors.
    fn agrees_with(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Value(a), Outcome::Value(b)) => canonical(a) == canonical(b),
            (Outcome::Undefined(_), Outcome::Undefined(_)) => true,
            (Outcome::Error(_), Outcome::Error(_)) => true,
            _ => false,
        }
    }
}

/// Sorts arrays of scalars' order-insensitive serialization: OPA and regorus both serialize
/// sets as arrays, in their own orders.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(canonical).collect();
            items.sort_by_key(|a| a.to_string());
            Value::Array(items)
        }
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        v => v.clone(),
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Recorded {
    rule: String,
    rego: String,
    data: Option<Value>,
    results: Vec<RecordedResult>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct RecordedResult {
    input: Value,
    opa: Outcome,
}

#[derive(Debug, Serialize, Deserialize)]
struct Recording {
    opa: String,
    cases: BTreeMap<String, Recorded>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential")
}

fn corpus() -> Corpus {
    let text = std::fs::read_to_string(dir().join("corpus.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn recording() -> Recording {
    let text = std::fs::read_to_string(dir().join("opa_results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn set_for(case: &Case, evaluator: Evaluator) -> Result<PolicySet, policy_rego::PolicyError> {
    set_with(case, PolicyOptions::new().evaluator(evaluator))
}

fn set_with(case: &Case, options: PolicyOptions) -> Result<PolicySet, policy_rego::PolicyError> {
    let mut writer = BundleWriter::new().file("t.rego", case.rego.clone());
    if let Some(data) = &case.data {
        writer = writer.file("data.json", data.to_string());
    }
    let archive = writer.to_tar_gz().unwrap();
    let bundle = BundleLoader::new()
        .load_tar_gz(&case.name, &archive)
        .unwrap();
    PolicySet::compile(bundle, &options.decision_rule(case.rule()))
}

/// Decisions per case and evaluator.
const DECISIONS: usize = 2_000;

/// Decides each input `DECISIONS` times in all, first many times on the first input alone
/// (warming whatever a fast path keeps), then round-robin from a rotating start, and checks
/// every value against `expected`. Returns the number of decisions made.
fn hammer(
    name: &str,
    label: &str,
    decide: &dyn Fn(&PolicyInput) -> Outcome,
    inputs: &[PolicyInput],
    expected: &[Outcome],
    error_tolerated: &[bool],
) -> usize {
    let check = |i: usize, made: usize| {
        let got = decide(&inputs[i]);
        assert!(
            got.agrees_with(&expected[i])
                || (error_tolerated[i] && matches!(got, Outcome::Error(_))),
            "{name}: {label} gives {got:?} for input {} after {made} decisions; expected {:?}",
            inputs[i].to_json(),
            expected[i]
        );
    };
    let mut made = 0;
    while made < DECISIONS / 4 {
        check(0, made);
        made += 1;
    }
    let mut round = 0;
    while made < DECISIONS {
        for k in 0..inputs.len() {
            check((k + round) % inputs.len(), made);
            made += 1;
        }
        round += 1;
    }
    made
}

#[test]
fn every_evaluator_agrees_with_the_interpreter_and_with_opa() {
    let corpus = corpus();
    let recording = recording();
    let mut decisions = 0;
    let mut compiled_cases = Vec::new();
    let mut refused = Vec::new();
    for case in &corpus.cases {
        let recorded = recording
            .cases
            .get(&case.name)
            .unwrap_or_else(|| panic!("{}: not recorded; run the OPA recording", case.name));
        let inputs_json = case.inputs();
        assert_eq!(
            (recorded.rule.as_str(), &recorded.rego, &recorded.data),
            (case.rule(), &case.rego, &case.data),
            "{}: the recording is stale; re-record with ZTKIT_RECORD_OPA=1",
            case.name
        );
        let recorded_inputs: Vec<&Value> = recorded.results.iter().map(|r| &r.input).collect();
        assert_eq!(
            recorded_inputs,
            inputs_json.iter().collect::<Vec<_>>(),
            "{}: the recording is stale",
            case.name
        );
        let inputs: Vec<PolicyInput> = inputs_json
            .iter()
            .map(|i| PolicyInput::from_json(i.clone()))
            .collect();

        // Sets regorus would decide otherwise than OPA are refused; the evaluators must still
        // agree with each other under `allow_regorus_semantics`.
        // Default options but for the time budget: a debug build on a loaded 2-core machine
        // can be preempted past 50 ms, and a budget overrun (which denies) is not what this
        // suite compares.
        let defaults = PolicyOptions::new().time_budget(std::time::Duration::from_secs(10));
        let regorus = if case.refused {
            let err = set_for(case, Evaluator::Auto).expect_err(&case.name);
            assert!(
                matches!(err, policy_rego::PolicyError::OpaDivergence(_)),
                "{}: {err}",
                case.name
            );
            refused.push(case.name.clone());
            defaults.allow_regorus_semantics()
        } else {
            defaults
        };

        // The reference: the interpreter, which must itself give OPA's values.
        let interpreter =
            set_with(case, regorus.clone().evaluator(Evaluator::Interpreter)).unwrap();
        let expected: Vec<Outcome> = inputs
            .iter()
            .map(|i| Outcome::of(interpreter.evaluate(i)))
            .collect();
        let interpreter_values = expected.clone();
        let mut disagreements = 0;
        let mut error_tolerated = vec![false; inputs.len()];
        for (i, ((input, got), rec)) in inputs_json
            .iter()
            .zip(&expected)
            .zip(&recorded.results)
            .enumerate()
        {
            if got.agrees_with(&rec.opa) {
                continue;
            }
            disagreements += 1;
            error_tolerated[i] = !case.refused && case.known_divergence.is_some();
            assert!(
                case.refused
                    || ((case.known_divergence.is_some() || case.interpreter_divergence.is_some())
                        && matches!(got, Outcome::Error(_))),
                "{}: the interpreter gives {got:?} for {input}; OPA gives {:?}",
                case.name,
                rec.opa
            );
        }
        if case.refused || case.known_divergence.is_some() || case.interpreter_divergence.is_some()
        {
            assert!(
                disagreements > 0,
                "{}: marked as diverging from OPA, but every input agrees",
                case.name
            );
        }

        // What every evaluator must give: OPA's values (where the interpreter stops with an
        // error on a known divergence, an error too); for a refused set, the interpreter's.
        let expected: Vec<Outcome> = if case.refused {
            expected
        } else {
            recorded.results.iter().map(|r| r.opa.clone()).collect()
        };

        // Default options, through the engine a server uses.
        let set = set_with(case, regorus.clone()).unwrap();
        if case.interpreter_divergence.is_some() {
            assert!(
                set.is_compiled(),
                "{}: the interpreter diverges, so the set must be decided on the compiled form",
                case.name
            );
            // A fresh set whose first decisions (all cross-checked by the interpreter) are the
            // inputs the interpreter cannot decide: still OPA's values, still compiled.
            let fresh = set_with(case, regorus.clone()).unwrap();
            let diverging: Vec<usize> = (0..inputs.len())
                .filter(|&i| {
                    !matches!(
                        interpreter_values[i],
                        Outcome::Value(_) | Outcome::Undefined(_)
                    )
                })
                .collect();
            for round in 0..4 {
                for &i in &diverging {
                    let got = Outcome::of(fresh.evaluate(&inputs[i]));
                    assert!(
                        got.agrees_with(&recorded.results[i].opa),
                        "{}: decision {round} for {} gives {got:?}, OPA {:?}",
                        case.name,
                        inputs_json[i],
                        recorded.results[i].opa
                    );
                }
            }
            assert!(
                fresh.is_compiled(),
                "{}: switched to the interpreter",
                case.name
            );
        }
        let engine = PolicyEngine::with_set(set, regorus.clone().decision_rule(case.rule()));
        decisions += hammer(
            &case.name,
            "PolicyEngine (default options)",
            &|i| Outcome::of(engine.evaluate(i)),
            &inputs,
            &expected,
            &error_tolerated,
        );
        // The decision itself follows the value.
        for (i, (input, want)) in inputs.iter().zip(&expected).enumerate() {
            let allow = engine.decide(input).allow;
            if error_tolerated[i] && !allow {
                continue;
            }
            let want_allow = match want {
                Outcome::Value(Value::Bool(b)) => *b,
                Outcome::Value(Value::Object(o)) => {
                    o.get("allow").or_else(|| o.get("allowed")) == Some(&Value::Bool(true))
                }
                _ => false,
            };
            assert_eq!(
                allow,
                want_allow,
                "{}: decision for {}",
                case.name,
                input.to_json()
            );
        }
        // From a second thread too (its own evaluator).
        std::thread::scope(|s| {
            s.spawn(|| {
                hammer(
                    &case.name,
                    "PolicyEngine on a second thread",
                    &|i| Outcome::of(engine.evaluate(i)),
                    &inputs,
                    &expected,
                    &error_tolerated,
                )
            });
        });

        // The compiled form, wherever it accepts the set.
        if let Ok(compiled) = set_with(case, regorus.clone().evaluator(Evaluator::Compiled)) {
            compiled_cases.push(case.name.clone());
            decisions += hammer(
                &case.name,
                "Evaluator::Compiled",
                &|i| Outcome::of(compiled.evaluate(i)),
                &inputs,
                &expected,
                &error_tolerated,
            );
        }
    }
    eprintln!(
        "{decisions} decisions over {} cases; compiled form used for: {compiled_cases:?}; \
         refused: {refused:?}",
        corpus.cases.len()
    );
    // The suite must exercise the compiled form, or it proves nothing about it: at least ten
    // cases, among them the RBAC shape the benchmarks measure.
    assert!(
        compiled_cases.len() >= 10 && compiled_cases.iter().any(|c| c == "rbac_with_data"),
        "only {compiled_cases:?} run on the compiled form"
    );
}

/// Runs the corpus through real OPA (`tests/peers/opa/eval.js`: OPA v1.20.2 loaded from the
/// `opa-golib-python-bindings` wheel) and compares with the recording.
#[test]
#[ignore = "needs node and the OPA library (cargo xtask test installs them)"]
fn opa_recordings_match_real_opa() {
    let corpus = corpus();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/opa/eval.js");
    let mut fresh = BTreeMap::new();
    let mut engine_name = String::new();
    for case in &corpus.cases {
        let inputs = case.inputs();
        let request = json!({
            "modules": {"t.rego": case.rego},
            "data": case.data.clone().unwrap_or(json!({})),
            "cases": inputs.iter().map(|i| json!({"query": case.rule(), "input": i})).collect::<Vec<_>>(),
        });
        let out = run_node(&script, &request);
        engine_name = out["engine"].as_str().unwrap_or_default().to_owned();
        let results: Vec<RecordedResult> = inputs
            .into_iter()
            .zip(out["results"].as_array().expect("results"))
            .map(|(input, r)| RecordedResult {
                input,
                opa: if let Some(v) = r.get("value") {
                    Outcome::Value(v.clone())
                } else if let Some(e) = r.get("error") {
                    Outcome::Error(e.as_str().unwrap_or_default().to_owned())
                } else {
                    Outcome::Undefined(true)
                },
            })
            .collect();
        fresh.insert(
            case.name.clone(),
            Recorded {
                rule: case.rule().to_owned(),
                rego: case.rego.clone(),
                data: case.data.clone(),
                results,
            },
        );
    }
    if std::env::var_os("ZTKIT_RECORD_OPA").is_some() {
        let recording = Recording {
            opa: engine_name,
            cases: fresh,
        };
        let text = serde_json::to_string_pretty(&recording).unwrap();
        std::fs::write(dir().join("opa_results.json"), text + "\n").unwrap();
        return;
    }
    let recorded = recording();
    for (name, case) in &fresh {
        assert_eq!(
            recorded.cases.get(name),
            Some(case),
            "{name}: real OPA now gives other results than recorded"
        );
    }
    assert_eq!(recorded.cases.len(), fresh.len());
}

fn run_node(script: &Path, request: &Value) -> Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "eval.js failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
