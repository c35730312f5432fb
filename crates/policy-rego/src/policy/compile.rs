//! Compilation: a loaded bundle becomes a [`PolicySet`] (parse, roots, OPA-semantics check,
//! test rules, the compiled form where it is shown equal, the set's own tests).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::unstable::{Rule, RuleHead};
use regorus::{Engine, Value};

use super::options::normalize_rule;
use super::{
    Evaluator, NEXT_SET_ID, PolicyOptions, PolicySet, SetInner, bytecode_scope, opa_semantics,
    scalar_iteration, test_inputs, timer,
};
use crate::bundle::{Bundle, under_roots};
use crate::error::{PolicyError, Result};
use crate::test_report::TestOutcome;

impl PolicySet {
    /// Loads a directory or `.tar.gz` bundle and compiles it (running its tests unless
    /// [`PolicyOptions::allow_untested`]).
    ///
    /// # Errors
    ///
    /// Any [`PolicyError`] from loading, compiling or testing.
    pub fn load(path: impl AsRef<Path>, options: &PolicyOptions) -> Result<Self> {
        let bundle = options.loader.load_path(path)?;
        Self::compile(bundle, options)
    }

    /// Compiles a loaded bundle (running its tests unless
    /// [`PolicyOptions::allow_untested`]).
    ///
    /// # Errors
    ///
    /// - [`PolicyError::Config`] for a malformed decision rule;
    /// - [`PolicyError::Parse`] for a module that does not parse;
    /// - [`PolicyError::Manifest`] for a package outside the manifest's roots;
    /// - [`PolicyError::Compile`] if the decision rule does not exist or the set does not
    ///   compile (or, with [`Evaluator::Compiled`], is not shown equal on the compiled form:
    ///   the message names the rule or test);
    /// - [`PolicyError::OpaDivergence`] if a statement would be decided otherwise than OPA
    ///   decides it (unless [`PolicyOptions::allow_regorus_semantics`]);
    /// - [`PolicyError::TestsFailed`] if a `test_*` rule fails.
    pub fn compile(bundle: Bundle, options: &PolicyOptions) -> Result<Self> {
        let rule = normalize_rule(&options.decision_rule)?;
        let compile_err = |detail: String| PolicyError::Compile {
            rule: rule.clone(),
            detail,
        };
        let roots = crate::bundle::manifest_roots_of(&bundle.manifest)?;

        let mut engine = Engine::new();
        if bundle.manifest.rego_version == Some(0) {
            engine.set_rego_v0(true);
        }
        for (path, src) in &bundle.modules {
            let package =
                engine
                    .add_policy(path.clone(), src.clone())
                    .map_err(|e| PolicyError::Parse {
                        path: path.clone(),
                        detail: e.to_string().trim().to_owned(),
                    })?;
            let pkg_path: Vec<&str> = package
                .strip_prefix("data.")
                .unwrap_or(&package)
                .split('.')
                .collect();
            if !under_roots(&pkg_path, &roots) {
                return Err(PolicyError::Manifest(format!(
                    "{path}: package {package} is outside the manifest roots"
                )));
            }
        }
        engine
            .add_data(bundle.data.clone())
            .map_err(|e| PolicyError::Data {
                path: bundle.name.clone(),
                detail: e.to_string(),
            })?;
        engine.set_execution_timer_config(timer(options.time_budget, 32));

        // Analysis of the whole set (unsafe variables, recursion, ...) happens here.
        let compiled = engine
            .compile_with_entrypoint(&rule.as_str().into())
            .map_err(|e| compile_err(e.to_string().trim().to_owned()))?;

        if !options.regorus_semantics {
            opa_semantics::check(compiled.get_rules(), engine.get_modules())
                .map_err(|d| PolicyError::OpaDivergence(d.to_string()))?;
        }

        let mut test_rules = Vec::new();
        let mut rule_found = false;
        for (path, rules) in compiled.get_rules() {
            if *path == rule {
                rule_found = true;
            }
            let Some(last) = path.rsplit('.').next() else {
                continue;
            };
            let is_function = rules.iter().any(|r| {
                matches!(
                    r.as_ref(),
                    Rule::Spec {
                        head: RuleHead::Func { .. },
                        ..
                    }
                )
            });
            if is_function {
                continue;
            }
            if last.starts_with("test_") {
                test_rules.push((path.clone(), false));
            } else if last.starts_with("todo_test_") {
                test_rules.push((path.clone(), true));
            }
        }
        test_rules.sort();
        if !rule_found {
            // A rule with only a `default` may not be listed; ask the engine.
            if let Err(e) = engine.clone().eval_rule(rule.clone())
                && e.to_string().contains("not a valid rule path")
            {
                return Err(compile_err("the decision rule does not exist".into()));
            }
        }

        let program = match options.evaluator {
            Evaluator::Interpreter => None,
            Evaluator::Compiled | Evaluator::Auto => {
                match compile_bytecode(&mut engine, &bundle, &rule, options) {
                    Ok(p) => Some(p),
                    Err(e) if options.evaluator == Evaluator::Compiled => {
                        return Err(compile_err(e));
                    }
                    Err(e) => {
                        tracing::info!(
                            rule = %rule,
                            reason = %e,
                            "policy does not compile to bytecode; using the interpreter"
                        );
                        None
                    }
                }
            }
        };

        let (program, bytecode_source) = match program {
            Some((p, g)) => (Some(p), Some(g)),
            None => (None, None),
        };
        let log_path = rule
            .strip_prefix("data.")
            .unwrap_or(&rule)
            .replace('.', "/");
        let iteration_sites = scalar_iteration::IterationSites::of(engine.get_modules());
        let set = Self {
            inner: Arc::new(SetInner {
                id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
                revision: bundle.manifest.revision.clone(),
                bundle_name: bundle.name.clone(),
                manifest: bundle.manifest.clone(),
                rule,
                log_path,
                data: engine.get_data(),
                modules: bundle.modules.clone(),
                template: engine,
                iteration_sites,
                program,
                bytecode_source,
                vm_disabled: AtomicBool::new(false),
                decisions: AtomicU64::new(0),
                test_rules,
                options: options.clone(),
            }),
        };
        if options.run_tests {
            let report = set.run_tests();
            if !report.is_success() {
                let names: Vec<String> = report
                    .results
                    .iter()
                    .filter(|r| matches!(r.outcome, TestOutcome::Fail | TestOutcome::Error(_)))
                    .map(|r| r.name.clone())
                    .collect();
                return Err(PolicyError::TestsFailed {
                    failed: names.len(),
                    total: report.results.len(),
                    names,
                });
            }
        }
        Ok(set)
    }
}

/// Compiles the decision rule to RVM bytecode, if the set is inside the class the compiled
/// form is trusted with ([`bytecode_scope`]) and the compiled form gives the interpreter's
/// value on every input the set's tests supply ([`test_inputs`]). The error says which rule
/// or test keeps the set on the interpreter.
fn compile_bytecode(
    engine: &mut Engine,
    bundle: &Bundle,
    rule: &str,
    options: &PolicyOptions,
) -> std::result::Result<(Arc<Program>, BytecodeSource), String> {
    let compiled = engine
        .compile_with_entrypoint(&rule.into())
        .map_err(|e| e.to_string())?;
    let program = Compiler::compile_from_policy(&compiled, &[rule]).map_err(|e| e.to_string())?;
    // Only the rules the program holds (those the decision rule reaches) are checked.
    let in_program: std::collections::BTreeSet<&str> =
        program.rule_infos.iter().map(|r| r.name.as_str()).collect();
    let reached = compiled
        .get_rules()
        .iter()
        .filter(|(path, _)| in_program.contains(path.as_str()));
    bytecode_scope::check(reached, engine.get_modules()).map_err(|e| e.to_string())?;
    let data = engine.get_data();
    let new_vm = || -> std::result::Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        vm.load_program(program.clone());
        vm.set_data(data.clone())
            .map_err(|e| format!("data conflicts with rules: {e}"))?;
        vm.set_max_instructions(options.max_instructions);
        vm.set_execution_timer_config(Some(timer(options.test_time_budget, 256)));
        Ok(vm)
    };
    // Catches data/rule conflicts once instead of on every thread.
    let mut vm = new_vm()?;
    let inputs = test_inputs::collect(compiled.get_rules()).map_err(|test| {
        format!(
            "test {test} supplies its input other than `with input as <literal>`, so it cannot \
             be replayed on the compiled form"
        )
    })?;
    for (test, input) in inputs {
        let mut interpreter = engine.clone();
        interpreter.set_execution_timer_config(timer(options.test_time_budget, 32));
        interpreter.set_input(input.clone());
        let expected = interpreter
            .eval_rule(rule.to_owned())
            .map_err(|e| e.to_string());
        vm.set_input(input);
        let got = vm.execute().map_err(|e| e.to_string());
        let agree = match (&expected, &got) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !agree {
            return Err(format!(
                "the compiled form and the interpreter disagree on {rule} for the input of {test}"
            ));
        }
        if got.is_err() {
            // Do not reuse a VM that stopped mid-run.
            vm = new_vm()?;
        }
    }
    let source = BytecodeSource {
        modules: bundle.modules.clone(),
        rego_v0: bundle.manifest.rego_version == Some(0),
        data_json: data.to_json_str().map_err(|e| e.to_string())?,
        rule: rule.to_owned(),
    };
    Ok((program, source))
}

/// What a thread needs to build its own copy of the bytecode: the modules as loaded, the
/// data as JSON, the rule. regorus values are reference counted; a program and data that
/// two threads share bounce those counts between cores on every decision, so each
/// thread's VM is built from source once (a one-time cost per thread and policy set).
pub(super) struct BytecodeSource {
    modules: Vec<(String, String)>,
    rego_v0: bool,
    data_json: String,
    rule: String,
}

impl BytecodeSource {
    pub(super) fn build(&self) -> std::result::Result<(Arc<Program>, Value), String> {
        let mut engine = Engine::new();
        if self.rego_v0 {
            engine.set_rego_v0(true);
        }
        for (path, src) in &self.modules {
            engine
                .add_policy(path.clone(), src.clone())
                .map_err(|e| e.to_string())?;
        }
        let data = Value::from_json_str(&self.data_json).map_err(|e| e.to_string())?;
        engine.add_data(data).map_err(|e| e.to_string())?;
        let compiled = engine
            .compile_with_entrypoint(&self.rule.as_str().into())
            .map_err(|e| e.to_string())?;
        let program = Compiler::compile_from_policy(&compiled, &[self.rule.as_str()])
            .map_err(|e| e.to_string())?;
        let own_data = Value::from_json_str(&self.data_json).map_err(|e| e.to_string())?;
        Ok((program, own_data))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_set;
    use super::*;

    #[test]
    fn test_rules_are_collected_and_functions_are_not_tests() {
        let rego = "package p\nallow if true\ntest_a if allow\ntodo_test_b if false\n\
                    test_f(x) := x\n";
        let set = test_set(rego, "{}", &PolicyOptions::new().decision_rule("p/allow")).unwrap();
        assert_eq!(
            set.inner.test_rules,
            [
                ("data.p.test_a".to_owned(), false),
                ("data.p.todo_test_b".to_owned(), true)
            ]
        );
    }

    #[test]
    fn a_missing_decision_rule_is_a_compile_error() {
        let err = test_set(
            "package p\nx := 1",
            "{}",
            &PolicyOptions::new().decision_rule("p/allow"),
        )
        .unwrap_err();
        assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
    }

    #[test]
    fn a_failing_test_refuses_the_set() {
        let err = test_set(
            "package p\nallow if false\ntest_allow if allow",
            "{}",
            &PolicyOptions::new().decision_rule("p/allow"),
        )
        .unwrap_err();
        assert!(
            matches!(err, PolicyError::TestsFailed { failed: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_compiled_form_is_chosen_only_when_allowed() {
        let rego = "package p\nallow if input.x == 1";
        let opts = PolicyOptions::new().decision_rule("p/allow");
        assert!(test_set(rego, "{}", &opts).unwrap().is_compiled());
        let interp = opts.evaluator(Evaluator::Interpreter);
        assert!(!test_set(rego, "{}", &interp).unwrap().is_compiled());
    }

    #[test]
    fn a_thread_builds_its_own_bytecode_from_the_source() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set(
            "package p\nallow if input.x == data.p.v",
            r#"{"v": 2}"#,
            &opts,
        )
        .unwrap();
        let source = set.inner.bytecode_source.as_ref().unwrap();
        let (_program, data) = source.build().unwrap();
        assert_eq!(
            serde_json::to_value(&data).unwrap(),
            serde_json::json!({"p": {"v": 2}})
        );
    }
}
