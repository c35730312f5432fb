//! The differential suite over arbitrary inputs: every case of the policy corpus
//! (`crates/policy-rego/tests/differential/corpus.yaml`) decided on a fuzzed input document
//! with default options (the compiled form wherever it is shown equal) and with the
//! interpreter. They must agree, except where the interpreter stops with its known error on
//! iterating a string (OPA iterates nothing there, as the compiled form does); a set refused
//! for diverging from OPA is compared under `allow_regorus_semantics`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use policy_rego::{BundleLoader, BundleWriter, Evaluator, PolicyInput, PolicyOptions, PolicySet};

const CORPUS: &str = include_str!("../../crates/policy-rego/tests/differential/corpus.yaml");

struct Case {
    name: String,
    default: PolicySet,
    interpreter: PolicySet,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let corpus: serde_json::Value = serde_saphyr::from_str(CORPUS).expect("corpus parses");
        let mut out = Vec::new();
        for case in corpus["cases"].as_array().expect("cases") {
            let name = case["name"].as_str().expect("name").to_owned();
            let rule = case["rule"].as_str().unwrap_or("data.t.r").to_owned();
            let mut writer =
                BundleWriter::new().file("t.rego", case["rego"].as_str().expect("rego"));
            if !case["data"].is_null() {
                writer = writer.file("data.json", case["data"].to_string());
            }
            let archive = writer.to_tar_gz().expect("archive");
            let refused = case["refused"].as_bool().unwrap_or(false);
            let set = |evaluator: Evaluator| {
                let bundle = BundleLoader::new()
                    .load_tar_gz(&name, &archive)
                    .expect("bundle");
                let mut options = PolicyOptions::new()
                    .decision_rule(rule.clone())
                    .evaluator(evaluator)
                    .time_budget(Duration::from_secs(5));
                if refused {
                    options = options.allow_regorus_semantics();
                }
                PolicySet::compile(bundle, &options).expect("compiles")
            };
            out.push(Case {
                name: name.clone(),
                default: set(Evaluator::Auto),
                interpreter: set(Evaluator::Interpreter),
            });
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if !json.is_object() {
        return;
    }
    let input = PolicyInput::from_json(json);
    for case in cases() {
        let reference = case.interpreter.evaluate(&input);
        let got = case.default.evaluate(&input);
        match (&reference, &got) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{}: {input:?}", case.name),
            (Err(_), Err(_)) => {}
            (Err(e), Ok(_)) if e.to_string().contains("`some .. in collection` expects") => {}
            _ => panic!(
                "{}: default options give {got:?}, the interpreter {reference:?}",
                case.name
            ),
        }
    }
});
