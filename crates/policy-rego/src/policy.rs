//! Compiled policy sets and how they evaluate.
//!
//! - [`options`]: what can be chosen ([`PolicyOptions`], [`Evaluator`]);
//! - [`compile`]: a bundle becomes a [`PolicySet`], on the compiled form where it is shown
//!   equal to the interpreter;
//! - [`evaluate`]: one decision, and the cross-check of [`Evaluator::Auto`];
//! - [`opa_tools`]: `opa eval` and `opa test` on a set;
//! - [`thread_slots`]: the per-thread evaluators.

mod ast_walk;
mod bytecode_scope;
mod compile;
mod evaluate;
mod opa_semantics;
mod opa_tools;
mod options;
mod scalar_iteration;
mod test_inputs;
mod thread_slots;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use regorus::rvm::program::Program;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use crate::bundle::Manifest;

use compile::BytecodeSource;
pub use options::{Evaluator, PolicyOptions};

pub(super) static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// An immutable, compiled policy set: modules and data from one bundle, ready to decide.
///
/// Cheap to clone. Every decision made through one `PolicySet` sees exactly its modules, data
/// and revision.
#[derive(Clone)]
pub struct PolicySet {
    inner: Arc<SetInner>,
}

pub(super) struct SetInner {
    id: u64,
    revision: String,
    bundle_name: String,
    manifest: Manifest,
    rule: String,
    log_path: String,
    template: Engine,
    program: Option<Arc<Program>>,
    bytecode_source: Option<BytecodeSource>,
    /// The set's `some … in` collections, to recognise the interpreter's one known error.
    iteration_sites: scalar_iteration::IterationSites,
    vm_disabled: AtomicBool,
    decisions: AtomicU64,
    data: Value,
    modules: Vec<(String, String)>,
    test_rules: Vec<(String, bool)>,
    options: PolicyOptions,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("revision", &self.inner.revision)
            .field("bundle", &self.inner.bundle_name)
            .field("rule", &self.inner.rule)
            .field("compiled", &self.inner.program.is_some())
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// The revision from the bundle's manifest (empty when it has none).
    pub fn revision(&self) -> &str {
        &self.inner.revision
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Where the bundle came from.
    pub fn bundle_name(&self) -> &str {
        &self.inner.bundle_name
    }

    /// The decision rule, as `data.package.rule`.
    pub fn decision_rule(&self) -> &str {
        &self.inner.rule
    }

    /// The decision rule as OPA writes it in decision logs (`package/rule`).
    pub fn decision_path(&self) -> &str {
        &self.inner.log_path
    }

    /// Whether decisions run on the compiled (bytecode) form.
    pub fn is_compiled(&self) -> bool {
        self.inner.program.is_some() && !self.inner.vm_disabled.load(Ordering::Relaxed)
    }

    /// The options the set was compiled with.
    pub fn options(&self) -> &PolicyOptions {
        &self.inner.options
    }

    /// The merged data document as JSON.
    pub fn data_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.inner.data).unwrap_or(serde_json::Value::Null)
    }

    /// Whether this set was compiled from `bundle`'s modules, data and manifest.
    pub(crate) fn holds(&self, bundle: &crate::Bundle) -> bool {
        self.inner.manifest == bundle.manifest
            && self.inner.modules == bundle.modules
            && self.inner.data == bundle.data
    }
}

pub(super) fn timer(limit: Duration, check_interval: u32) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(check_interval).unwrap_or(NonZeroU32::MIN),
    }
}

/// A policy set compiled from one module (and data) for the unit tests of the parts.
#[cfg(test)]
pub(super) fn test_set(
    rego: &str,
    data: &str,
    options: &PolicyOptions,
) -> crate::Result<PolicySet> {
    let files = std::collections::BTreeMap::from([
        ("p/policy.rego".to_owned(), rego.as_bytes().to_vec()),
        ("p/data.json".to_owned(), data.as_bytes().to_vec()),
    ]);
    let bundle = crate::bundle::BundleLoader::new().assemble("unit".into(), files)?;
    PolicySet::compile(bundle, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_report_the_set() {
        let opts = PolicyOptions::new().decision_rule("p/allow");
        let set = test_set("package p\nallow if true", r#"{"x": 1}"#, &opts).unwrap();
        assert_eq!(set.decision_rule(), "data.p.allow");
        assert_eq!(set.decision_path(), "p/allow");
        assert_eq!(set.bundle_name(), "unit");
        assert_eq!(set.data_json(), serde_json::json!({"p": {"x": 1}}));
        assert!(format!("{set:?}").contains("data.p.allow"));
    }

    #[test]
    fn the_timer_never_checks_every_zero_instructions() {
        assert_eq!(timer(Duration::from_millis(5), 0).check_interval.get(), 1);
        assert_eq!(timer(Duration::from_millis(5), 32).check_interval.get(), 32);
    }
}
