//! How a policy set is loaded, compiled and evaluated: [`PolicyOptions`] and its choices.

use std::time::Duration;

use crate::bundle::{BundleLimits, BundleLoader, SignatureVerifier};
use crate::error::{PolicyError, Result};

/// How decisions are evaluated.
///
/// regorus's tree-walking interpreter is the reference. The compiled form (regorus's RVM
/// bytecode, ≈ 2.5× faster) decides a set only where it is shown to give the interpreter's
/// values:
///
/// * the set stays inside the class of constructs on which the differential suite
///   (`tests/differential.rs`: set operations, comprehensions, `with`, `else`, `every`,
///   `some … in`, defaults, negation, partial rules, erroring builtins, × generated inputs,
///   compared with the interpreter and with values recorded from OPA) shows them equal. regorus
///   0.14's bytecode binds `x := expr` without checking that `expr` is defined, so a rule that
///   binds a variable to a value that may be undefined (`x := input.a`, `r := data.roles[u]`,
///   `s := a | b` with rule operands) keeps the set on the interpreter. The check reads the
///   parsed modules; policy source is never rewritten;
/// * the decision rule gives the same value on both evaluators for every input the set's
///   `test_*` rules supply with `with input as <literal>`; a test that supplies its input any
///   other way keeps the set on the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Evaluator {
    /// The compiled form where it is shown equal (see above), otherwise the interpreter; the
    /// choice and its reason are logged, and [`PolicySet::is_compiled`](crate::PolicySet::is_compiled) tells which. As a
    /// further guard the first 16 decisions of each set and every 1024th after that are also
    /// evaluated by the interpreter; if the two ever disagree, the interpreter's answer is
    /// used, the disagreement is logged as an error and the set switches to the interpreter
    /// for good. One interpreter error is not a disagreement: `some … in` over a value that
    /// is not a collection (`some x in input.xs` with `xs` a string), where regorus's
    /// interpreter stops with an error but OPA and the compiled form iterate nothing; there
    /// the compiled form's value (OPA's) stands. A set on the interpreter denies such an
    /// input instead (failing closed). See `docs/policy.md`.
    #[default]
    Auto,
    /// The compiled form only, without the run-time cross-checks of [`Evaluator::Auto`]; a set
    /// that is not shown equal (see above) is refused with [`PolicyError::Compile`] naming the
    /// rule or test that keeps it off the compiled form.
    Compiled,
    /// regorus's tree-walking interpreter.
    Interpreter,
}

/// How a policy set is loaded, compiled and evaluated.
///
/// Defaults: decision rule `data.http.authz.allow`, [`Evaluator::Auto`],
/// one prepared evaluator per thread and set, a 50 ms time budget and a 5,000,000-instruction budget per
/// decision, the set's own tests run on load (10 s budget each), default [`BundleLimits`], no
/// signature required.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    pub(crate) decision_rule: String,
    pub(crate) evaluator: Evaluator,
    pub(crate) time_budget: Duration,
    pub(crate) max_instructions: usize,
    pub(crate) run_tests: bool,
    pub(crate) regorus_semantics: bool,
    pub(crate) test_time_budget: Duration,
    pub(crate) loader: BundleLoader,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            decision_rule: "data.http.authz.allow".into(),
            evaluator: Evaluator::Auto,
            time_budget: Duration::from_millis(50),
            max_instructions: 5_000_000,
            run_tests: true,
            regorus_semantics: false,
            test_time_budget: Duration::from_secs(10),
            loader: BundleLoader::default(),
        }
    }
}

impl PolicyOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rule whose value is the decision, as `data.http.authz.allow` or in OPA-Envoy's
    /// slash form `http/authz/allow`. Its value may be a boolean or an object
    /// `{"allow": bool, "reasons": [...], "headers": {...}}` (OPA-Envoy's `allowed` is
    /// accepted for `allow`).
    #[must_use]
    pub fn decision_rule(mut self, rule: impl Into<String>) -> Self {
        self.decision_rule = rule.into();
        self
    }

    /// Chooses the evaluator.
    #[must_use]
    pub const fn evaluator(mut self, evaluator: Evaluator) -> Self {
        self.evaluator = evaluator;
        self
    }

    /// Wall-clock budget for one decision; a decision that exceeds it denies. Checked
    /// cooperatively by regorus every few hundred instructions, so a single slow builtin can
    /// overshoot it.
    #[must_use]
    pub const fn time_budget(mut self, budget: Duration) -> Self {
        self.time_budget = budget;
        self
    }

    /// Instruction budget for one decision with the compiled evaluator; exceeding it denies.
    #[must_use]
    pub const fn max_instructions(mut self, n: usize) -> Self {
        self.max_instructions = n;
        self
    }

    /// Loads a policy set without running its `test_*` rules first (the CLI's `policy test`
    /// uses this to report failures instead of refusing the set).
    #[must_use]
    pub const fn allow_untested(mut self) -> Self {
        self.run_tests = false;
        self
    }

    /// Accepts sets with statements that regorus evaluates differently from OPA instead of
    /// refusing them with [`PolicyError::OpaDivergence`]: a negated call or operator with an
    /// operand that may be undefined (`not input.user in banned` *succeeds* under regorus when
    /// `input.user` is undefined, and fails under OPA), and membership used as a value
    /// (`x := input.p in s` is `false` under regorus, undefined under OPA). With this option
    /// such sets decide by regorus's semantics, which can allow what OPA would deny.
    #[must_use]
    pub const fn allow_regorus_semantics(mut self) -> Self {
        self.regorus_semantics = true;
        self
    }

    /// Time budget for each `test_*` rule.
    #[must_use]
    pub const fn test_time_budget(mut self, budget: Duration) -> Self {
        self.test_time_budget = budget;
        self
    }

    /// Replaces the bundle limits.
    #[must_use]
    pub fn bundle_limits(mut self, limits: BundleLimits) -> Self {
        self.loader = self.loader.limits(limits);
        self
    }

    /// Requires bundles to be signed with this key.
    #[must_use]
    pub fn verification_key(mut self, verifier: SignatureVerifier) -> Self {
        self.loader = self.loader.verification_key(verifier);
        self
    }

    /// The bundle loader these options use.
    pub fn loader(&self) -> &BundleLoader {
        &self.loader
    }

    /// The decision rule as configured.
    pub fn configured_decision_rule(&self) -> &str {
        &self.decision_rule
    }
}

/// Normalizes `http/authz/allow` and `data.http.authz.allow` to the latter.
pub(crate) fn normalize_rule(rule: &str) -> Result<String> {
    let rule = rule.trim();
    let dotted = if rule.starts_with("data.") || rule == "data" {
        rule.to_owned()
    } else {
        let trimmed = rule.trim_matches('/');
        let trimmed = trimmed.strip_prefix("data/").unwrap_or(trimmed);
        format!("data.{}", trimmed.replace('/', "."))
    };
    let segments: Vec<&str> = dotted.split('.').collect();
    let valid = segments.len() >= 3
        && segments.iter().all(|s| {
            let mut chars = s.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid {
        return Err(PolicyError::Config(format!(
            "decision rule {rule:?} is not a rule path like data.package.rule"
        )));
    }
    Ok(dotted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_paths_are_normalized() {
        assert_eq!(
            normalize_rule("envoy/authz/allow").unwrap(),
            "data.envoy.authz.allow"
        );
        assert_eq!(normalize_rule("/data/x/y").unwrap(), "data.x.y");
        assert_eq!(normalize_rule("data.x.y").unwrap(), "data.x.y");
        assert!(normalize_rule("data.x").is_err());
        assert!(normalize_rule("data.x.y z").is_err());
        assert!(normalize_rule("").is_err());
    }

    #[test]
    fn defaults_are_the_strict_ones() {
        let o = PolicyOptions::new();
        assert_eq!(o.evaluator, Evaluator::Auto);
        assert!(o.run_tests);
        assert!(!o.regorus_semantics);
        assert_eq!(o.time_budget, Duration::from_millis(50));
        let o = o
            .allow_untested()
            .allow_regorus_semantics()
            .evaluator(Evaluator::Interpreter);
        assert!(!o.run_tests && o.regorus_semantics);
        assert_eq!(o.evaluator, Evaluator::Interpreter);
    }
}
