//! Compiled policy sets and how they evaluate.

mod ast_walk;
mod bytecode_scope;
mod opa_semantics;
mod test_inputs;

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::unstable::{Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use crate::bundle::{Bundle, BundleLimits, BundleLoader, Manifest, SignatureVerifier, under_roots};
use crate::decision::{PolicyDecision, Verdict, error_reason, interpret, new_decision_id};
use crate::error::{PolicyError, Result};
use crate::input::PolicyInput;
use crate::testing::{TestOutcome, TestReport, TestResult};

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
    /// choice and its reason are logged, and [`PolicySet::is_compiled`] tells which. As a
    /// further guard the first 16 decisions of each set and every 1024th after that are also
    /// evaluated by the interpreter; if the two ever disagree, the interpreter's answer is
    /// used, the disagreement is logged as an error and the set switches to the interpreter
    /// for good.
    #[default]
    Auto,
    /// The compiled form only, without the run-time cross-checks of [`Evaluator::Auto`]; a set
    /// that is not shown equal (see above) is refused with [`PolicyError::Compile`] naming the
    /// rule or test that keeps it off the compiled form.
    Compiled,
    /// regorus's tree-walking interpreter.
    Interpreter,
}

/// How evaluators are reused across decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EngineReuse {
    /// One prepared evaluator per thread and policy set, kept in a thread-local slot (no
    /// locking on the decision path).
    #[default]
    PerThread,
    /// A pool of prepared evaluators per policy set behind a mutex.
    Pool,
}

/// How a policy set is loaded, compiled and evaluated.
///
/// Defaults: decision rule `data.http.authz.allow`, [`Evaluator::Auto`],
/// [`EngineReuse::PerThread`], a 50 ms time budget and a 5,000,000-instruction budget per
/// decision, the set's own tests run on load (10 s budget each), default [`BundleLimits`], no
/// signature required.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    pub(crate) decision_rule: String,
    pub(crate) evaluator: Evaluator,
    pub(crate) reuse: EngineReuse,
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
            reuse: EngineReuse::PerThread,
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

    /// Chooses how evaluators are reused.
    #[must_use]
    pub const fn engine_reuse(mut self, reuse: EngineReuse) -> Self {
        self.reuse = reuse;
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
    pub fn get_decision_rule(&self) -> &str {
        &self.decision_rule
    }
}

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// An immutable, compiled policy set: modules and data from one bundle, ready to decide.
///
/// Cheap to clone. Every decision made through one `PolicySet` sees exactly its modules, data
/// and revision.
#[derive(Clone)]
pub struct PolicySet {
    inner: Arc<SetInner>,
}

struct SetInner {
    id: u64,
    revision: String,
    bundle_name: String,
    manifest: Manifest,
    rule: String,
    log_path: String,
    template: Engine,
    program: Option<Arc<Program>>,
    bytecode_source: Option<BytecodeSource>,
    vm_disabled: AtomicBool,
    decisions: AtomicU64,
    data: Value,
    test_rules: Vec<(String, bool)>,
    options: PolicyOptions,
    vm_pool: Mutex<Vec<RegoVM>>,
    engine_pool: Mutex<Vec<Engine>>,
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
        let set = Self {
            inner: Arc::new(SetInner {
                id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
                revision: bundle.manifest.revision.clone(),
                bundle_name: bundle.name.clone(),
                manifest: bundle.manifest.clone(),
                rule,
                log_path,
                data: engine.get_data(),
                template: engine,
                program,
                bytecode_source,
                vm_disabled: AtomicBool::new(false),
                decisions: AtomicU64::new(0),
                test_rules,
                options: options.clone(),
                vm_pool: Mutex::new(Vec::new()),
                engine_pool: Mutex::new(Vec::new()),
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
                    _ => false,
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

    fn with_vm(
        &self,
        program: &Arc<Program>,
        f: impl FnOnce(&mut RegoVM) -> std::result::Result<Value, String>,
    ) -> std::result::Result<Value, String> {
        match self.inner.options.reuse {
            EngineReuse::PerThread => with_thread_slot(
                &self.inner,
                0,
                || self.new_vm(program).map(|vm| Slot::Vm(Box::new(vm))),
                |slot| match slot {
                    Slot::Vm(vm) => f(vm),
                    Slot::Engine(_) => Err("internal: evaluator slot mismatch".into()),
                },
            ),
            EngineReuse::Pool => {
                let pooled = self.inner.vm_pool.lock().ok().and_then(|mut p| p.pop());
                let mut vm = match pooled {
                    Some(vm) => vm,
                    None => self.new_vm(program)?,
                };
                let r = f(&mut vm);
                if r.is_ok()
                    && let Ok(mut p) = self.inner.vm_pool.lock()
                {
                    p.push(vm);
                }
                r
            }
        }
    }

    fn with_engine(
        &self,
        f: impl FnOnce(&mut Engine) -> std::result::Result<Value, String>,
    ) -> std::result::Result<Value, String> {
        match self.inner.options.reuse {
            EngineReuse::PerThread => with_thread_slot(
                &self.inner,
                1,
                || Ok(Slot::Engine(Box::new(self.inner.template.clone()))),
                |slot| match slot {
                    Slot::Engine(e) => f(e),
                    Slot::Vm(_) => Err("internal: evaluator slot mismatch".into()),
                },
            ),
            EngineReuse::Pool => {
                let pooled = self.inner.engine_pool.lock().ok().and_then(|mut p| p.pop());
                let mut engine = pooled.unwrap_or_else(|| self.inner.template.clone());
                let r = f(&mut engine);
                if r.is_ok()
                    && let Ok(mut p) = self.inner.engine_pool.lock()
                {
                    p.push(engine);
                }
                r
            }
        }
    }

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
struct BytecodeSource {
    modules: Vec<(String, String)>,
    rego_v0: bool,
    data_json: String,
    rule: String,
}

impl BytecodeSource {
    fn build(&self) -> std::result::Result<(Arc<Program>, Value), String> {
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

/// Decisions of an [`Evaluator::Auto`] set that are cross-checked by the interpreter: the
/// first `SHADOW_FIRST`, then one in `SHADOW_EVERY`.
const SHADOW_FIRST: u64 = 16;

thread_local! {
    /// Per-thread decision count for sampling cross-checks after the first ones.
    static SHADOW_SAMPLE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
const SHADOW_EVERY: u64 = 1024;

fn timer(limit: Duration, check_interval: u32) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(check_interval).unwrap_or(NonZeroU32::MIN),
    }
}

// === per-thread evaluators ===

enum Slot {
    Vm(Box<RegoVM>),
    Engine(Box<Engine>),
}

/// How many evaluators a thread keeps (most recently used first): a bytecode VM and an
/// interpreter for the old and the new set during a reload, and room for a few more engines.
const THREAD_SLOTS: usize = 6;

/// A thread's evaluator for one policy set: (set id, kind), the set (weakly, so evaluators
/// of replaced sets are dropped), the evaluator.
type SlotEntry = ((u64, u8), std::sync::Weak<SetInner>, Slot);

thread_local! {
    static SLOTS: RefCell<Vec<SlotEntry>> = const { RefCell::new(Vec::new()) };
}

fn with_thread_slot(
    set: &Arc<SetInner>,
    kind: u8,
    init: impl FnOnce() -> std::result::Result<Slot, String>,
    f: impl FnOnce(&mut Slot) -> std::result::Result<Value, String>,
) -> std::result::Result<Value, String> {
    SLOTS.with(|cell| {
        let Ok(mut slots) = cell.try_borrow_mut() else {
            // Re-entered from inside a decision (e.g. a decision-log sink deciding again):
            // use a fresh evaluator.
            return f(&mut init()?);
        };
        let key = (set.id, kind);
        let idx = match slots.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let slot = init()?;
                // Drop evaluators of sets that were replaced and are gone.
                slots.retain(|(_, weak, _)| weak.strong_count() > 0);
                if slots.len() >= THREAD_SLOTS {
                    slots.pop();
                }
                slots.insert(0, (key, Arc::downgrade(set), slot));
                0
            }
        };
        let Some((_, _, slot)) = slots.get_mut(idx) else {
            return Err("internal: evaluator slot vanished".into());
        };
        let r = f(slot);
        if r.is_err() {
            // Do not keep an evaluator that failed mid-run.
            slots.remove(idx);
        } else if idx != 0 {
            let entry = slots.remove(idx);
            slots.insert(0, entry);
        }
        r
    })
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
}
