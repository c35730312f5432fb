//! Evaluation: one decision on the compiled form or the interpreter, with the sampled
//! cross-check of [`Evaluator::Auto`](super::Evaluator::Auto).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::{Engine, Value};

use super::thread_slots::{Slot, with_thread_slot};
use super::{Evaluator, PolicySet, timer};
use crate::decision::{PolicyDecision, Verdict, error_reason, interpret, new_decision_id};
use crate::error::{PolicyError, Result};
use crate::input::PolicyInput;

impl PolicySet {
    /// Decides on `input`. Never fails: an evaluation error, a budget overrun or an
    /// undefined or malformed result denies, with a reason saying which.
    pub fn decide(&self, input: &PolicyInput) -> PolicyDecision {
        self.decide_raw(input).0
    }

    /// The decision rule's value for `input`, evaluated exactly as [`PolicySet::decide`]
    /// evaluates it (same evaluator, same per-thread state); `None` when it is undefined.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Eval`] when evaluation fails (a decision would deny).
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Option<serde_json::Value>> {
        match self.evaluate_value(&input.value) {
            Ok(Value::Undefined) => Ok(None),
            Ok(v) => serde_json::to_value(&v)
                .map(Some)
                .map_err(|e| PolicyError::Eval {
                    query: self.inner.rule.clone(),
                    detail: e.to_string(),
                }),
            Err(detail) => Err(PolicyError::Eval {
                query: self.inner.rule.clone(),
                detail: detail.trim().to_owned(),
            }),
        }
    }

    /// Decides and also returns the rule's raw value (for decision logs).
    pub(crate) fn decide_raw(&self, input: &PolicyInput) -> (PolicyDecision, Option<Value>) {
        let start = Instant::now();
        let result = self.evaluate_value(&input.value);
        let eval_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (verdict, raw) = match result {
            Ok(v) => (interpret(&self.inner.rule, &v), Some(v)),
            Err(msg) => {
                tracing::warn!(
                    rule = %self.inner.rule,
                    revision = %self.inner.revision,
                    error = %msg,
                    "policy evaluation failed; denying"
                );
                (Verdict::deny(error_reason(&msg)), None)
            }
        };
        let decision = PolicyDecision {
            allow: verdict.allow,
            reasons: verdict.reasons,
            revision: self.inner.revision.clone(),
            decision_id: new_decision_id(),
            eval_ns,
            headers: verdict.headers,
        };
        (decision, raw)
    }

    fn evaluate_value(&self, input: &Value) -> std::result::Result<Value, String> {
        let inner = &self.inner;
        let Some(program) = &inner.program else {
            return self.interpret(input);
        };
        if inner.vm_disabled.load(Ordering::Relaxed) {
            return self.interpret(input);
        }
        let vm_result = self.with_vm(program, |vm| {
            vm.set_input(input.clone());
            let r = vm.execute().map_err(|e| e.to_string());
            vm.set_input(Value::Undefined);
            r
        });
        if inner.options.evaluator == Evaluator::Auto {
            // The set-wide count only grows during the first decisions; after that each
            // thread samples on its own counter, so no shared cache line is written per
            // decision.
            let shadow = if inner.decisions.load(Ordering::Relaxed) < SHADOW_FIRST {
                inner.decisions.fetch_add(1, Ordering::Relaxed) < SHADOW_FIRST
            } else {
                SHADOW_SAMPLE.with(|c| {
                    let n = c.get().wrapping_add(1);
                    c.set(n);
                    n.is_multiple_of(SHADOW_EVERY)
                })
            };
            if shadow {
                let checked = self.interpret(input);
                let agree = match (&vm_result, &checked) {
                    (Ok(a), Ok(b)) => a == b,
                    (Err(_), Err(_)) => true,
                    // The interpreter could not decide this input (it stops on a `some … in`
                    // over a non-collection, where OPA and the compiled form iterate
                    // nothing): the compiled form's value stands (`scalar_iteration`).
                    (Ok(_), Err(e)) => inner.iteration_sites.is_scalar_iteration(e),
                    (Err(_), Ok(_)) => false,
                };
                if !agree {
                    tracing::error!(
                        rule = %inner.rule,
                        revision = %inner.revision,
                        "bytecode and interpreter disagree on a decision; \
                         this policy set now uses the interpreter only"
                    );
                    inner.vm_disabled.store(true, Ordering::Relaxed);
                    return checked;
                }
            }
        }
        vm_result
    }

    fn interpret(&self, input: &Value) -> std::result::Result<Value, String> {
        self.with_engine(|engine| {
            engine.set_input(input.clone());
            let r = engine
                .eval_rule(self.inner.rule.clone())
                .map_err(|e| e.to_string());
            engine.set_input(Value::Undefined);
            r
        })
    }

    fn new_vm(&self, program: &Arc<Program>) -> std::result::Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        // This VM's own program and data (see `BytecodeSource`); sharing is the fallback.
        let own = self.inner.bytecode_source.as_ref().and_then(|g| match g.build() {
            Ok(built) => Some(built),
            Err(e) => {
                tracing::warn!(error = %e, "per-thread bytecode build failed; sharing the set's program");
                None
            }
        });
        let (program, data) = match own {
            Some((p, d)) => (p, d),
            None => (program.clone(), self.inner.data.clone()),
        };
        vm.load_program(program);
        vm.set_data(data).map_err(|e| e.to_string())?;
        vm.set_max_instructions(self.inner.options.max_instructions);
        vm.set_execution_timer_config(Some(timer(self.inner.options.time_budget, 256)));
        Ok(vm)
    }

    /// Runs `f` on this thread's VM for the set (one per thread and set, in a thread-local
    /// slot: no lock on the decision path).
    fn with_vm(
        &self,
        program: &Arc<Program>,
        f: impl FnOnce(&mut RegoVM) -> std::result::Result<Value, String>,
    ) -> std::result::Result<Value, String> {
        with_thread_slot(
            &self.inner,
            0,
            || self.new_vm(program).map(|vm| Slot::Vm(Box::new(vm))),
            |slot| match slot {
                Slot::Vm(vm) => f(vm),
                Slot::Engine(_) => Err("internal: evaluator slot mismatch".into()),
            },
        )
    }

    /// Runs `f` on this thread's interpreter for the set.
    fn with_engine(
        &self,
        f: impl FnOnce(&mut Engine) -> std::result::Result<Value, String>,
    ) -> std::result::Result<Value, String> {
        with_thread_slot(
            &self.inner,
            1,
            || Ok(Slot::Engine(Box::new(self.inner.template.clone()))),
            |slot| match slot {
                Slot::Engine(e) => f(e),
                Slot::Vm(_) => Err("internal: evaluator slot mismatch".into()),
            },
        )
    }
}

/// Decisions of an [`Evaluator::Auto`] set that are cross-checked by the interpreter: the
/// first `SHADOW_FIRST`, then one in `SHADOW_EVERY`.
const SHADOW_FIRST: u64 = 16;

thread_local! {
    /// Per-thread decision count for sampling cross-checks after the first ones.
    static SHADOW_SAMPLE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
const SHADOW_EVERY: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::super::{PolicyOptions, test_set};
    use super::*;

    fn input(x: i64) -> PolicyInput {
        PolicyInput::from_json(serde_json::json!({ "x": x }))
    }

    #[test]
    fn every_evaluator_decides_alike() {
        for evaluator in [Evaluator::Auto, Evaluator::Compiled, Evaluator::Interpreter] {
            {
                let opts = PolicyOptions::new()
                    .decision_rule("p/allow")
                    .evaluator(evaluator);
                let set = test_set("package p\nallow if input.x == 1", "{}", &opts).unwrap();
                for _ in 0..3 {
                    assert!(set.decide(&input(1)).allow);
                    assert!(!set.decide(&input(2)).allow);
                }
                assert_eq!(set.evaluate(&input(2)).unwrap(), None);
                assert_eq!(
                    set.evaluate(&input(1)).unwrap(),
                    Some(serde_json::json!(true))
                );
            }
        }
    }

    #[test]
    fn an_evaluation_error_denies_with_a_reason() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if 1 / input.x > 0", "{}", &opts).unwrap();
        let d = set.decide(&input(0));
        assert!(!d.allow);
        assert_eq!(d.reasons.len(), 1);
        assert!(set.evaluate(&input(0)).is_err());
    }

    #[test]
    fn auto_cross_checks_its_first_decisions() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if input.x == 1", "{}", &opts).unwrap();
        assert!(set.is_compiled());
        for _ in 0..SHADOW_FIRST + 1 {
            set.decide(&input(1));
        }
        assert_eq!(set.inner.decisions.load(Ordering::Relaxed), SHADOW_FIRST);
        assert!(
            set.is_compiled(),
            "agreeing evaluators keep the compiled form"
        );
    }
}
