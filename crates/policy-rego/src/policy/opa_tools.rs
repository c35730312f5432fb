//! The `opa eval` and `opa test` tooling: rules and queries evaluated on the interpreter, and
//! the set's `test_*` rules run like `opa test`.

use std::time::Instant;

use regorus::Value;

use super::options::normalize_rule;
use super::{PolicySet, timer};
use crate::decision::error_reason;
use crate::error::{PolicyError, Result};
use crate::input::PolicyInput;
use crate::test_report::{TestOutcome, TestReport, TestResult};

impl PolicySet {
    /// Evaluates a rule (`data.pkg.rule` or `pkg/rule`) with the interpreter; `None` when it
    /// is undefined. What OPA's `POST /v1/data/{path}` returns as `result`.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] for a malformed path, [`PolicyError::Eval`] if evaluation fails.
    pub fn eval_rule(
        &self,
        rule: &str,
        input: Option<&PolicyInput>,
    ) -> Result<Option<serde_json::Value>> {
        let rule = normalize_rule(rule)?;
        let mut engine = self.inner.template.clone();
        engine.set_execution_timer_config(timer(self.inner.options.test_time_budget, 32));
        if let Some(i) = input {
            engine.set_input(i.value.clone());
        }
        let v = engine
            .eval_rule(rule.clone())
            .map_err(|e| PolicyError::Eval {
                query: rule,
                detail: e.to_string().trim().to_owned(),
            })?;
        Ok(match v {
            Value::Undefined => None,
            v => Some(serde_json::to_value(&v).unwrap_or(serde_json::Value::Null)),
        })
    }

    /// Evaluates a Rego query with the interpreter and returns what `opa eval --format json`
    /// prints: `{"result": [{"expressions": [{"value": …, "text": …, "location": …}],
    /// "bindings": {…}}]}`, or `{}` when the query is undefined.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Eval`] if the query does not parse or evaluation fails.
    pub fn eval_query(
        &self,
        query: &str,
        input: Option<&PolicyInput>,
    ) -> Result<serde_json::Value> {
        let mut engine = self.inner.template.clone();
        engine.set_execution_timer_config(timer(self.inner.options.test_time_budget, 32));
        if let Some(i) = input {
            engine.set_input(i.value.clone());
        }
        let results =
            engine
                .eval_query(query.to_owned(), false)
                .map_err(|e| PolicyError::Eval {
                    query: query.to_owned(),
                    detail: e.to_string().trim().to_owned(),
                })?;
        serde_json::to_value(&results).map_err(|e| PolicyError::Eval {
            query: query.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Runs every `test_*` rule (in any package) like `opa test`: a test passes when its
    /// value is `true`, fails when it is `false` or undefined, and errors when evaluation
    /// fails; `todo_test_*` rules are reported as skipped. Rules with arguments are not tests.
    pub fn run_tests(&self) -> TestReport {
        let mut results = Vec::with_capacity(self.inner.test_rules.len());
        for (name, todo) in &self.inner.test_rules {
            if *todo {
                results.push(TestResult {
                    name: name.clone(),
                    outcome: TestOutcome::Skip,
                    duration_ns: 0,
                });
                continue;
            }
            let mut engine = self.inner.template.clone();
            engine.set_execution_timer_config(timer(self.inner.options.test_time_budget, 32));
            let start = Instant::now();
            let r = engine.eval_rule(name.clone());
            let duration_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let outcome = match r {
                Ok(Value::Bool(true)) => TestOutcome::Pass,
                Ok(_) => TestOutcome::Fail,
                Err(e) => TestOutcome::Error(error_reason(&e.to_string())),
            };
            results.push(TestResult {
                name: name.clone(),
                outcome,
                duration_ns,
            });
        }
        TestReport { results }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PolicyOptions, test_set};
    use super::*;

    #[test]
    fn tests_are_run_like_opa_test() {
        let rego = "package p\nallow if true\ntest_pass if allow\ntest_fail if false\n\
                    test_error if 1 / 0\ntodo_test_later if false\n";
        let opts = PolicyOptions::new()
            .decision_rule("p/allow")
            .allow_untested();
        let report = test_set(rego, "{}", &opts).unwrap().run_tests();
        assert_eq!(
            (
                report.passed(),
                report.failed(),
                report.errors(),
                report.skipped()
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(report.results[0].name, "data.p.test_error");
    }

    #[test]
    fn rules_and_queries_evaluate_like_opa_eval() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if input.x == 1\nn := 3", "{}", &opts).unwrap();
        assert_eq!(
            set.eval_rule("p/n", None).unwrap(),
            Some(serde_json::json!(3))
        );
        assert_eq!(set.eval_rule("data.p.allow", None).unwrap(), None);
        assert!(set.eval_rule("p", None).is_err());
        let input = PolicyInput::from_json(serde_json::json!({"x": 1}));
        let out = set.eval_query("data.p.allow", Some(&input)).unwrap();
        assert_eq!(
            out["result"][0]["expressions"][0]["value"],
            serde_json::json!(true)
        );
        assert_eq!(
            set.eval_query("data.p.allow", None).unwrap(),
            serde_json::json!({})
        );
        assert!(matches!(
            set.eval_query("data.p.[", None),
            Err(PolicyError::Eval { .. })
        ));
    }
}
