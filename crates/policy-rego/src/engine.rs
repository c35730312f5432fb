//! The policy engine: the policy set in force, swapped atomically on reload.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use zt_rotate::{MaterialHolder, RotationStatus, StatusRecorder};

use crate::bundle::Bundle;
use crate::decision::PolicyDecision;
use crate::error::{PolicyError, Result};
use crate::input::PolicyInput;
use crate::log::{BundleRevision, DecisionLogConfig, DecisionLogRecord, requested_by};
use crate::policy::{PolicyOptions, PolicySet};

/// Decides with the policy set in force and replaces it on reload.
///
/// Cheap to clone (all clones share the set in force). Each decision loads the current set
/// once and uses only it, so a reload never mixes modules, data or revision of two sets.
/// A reload compiles the new set and runs its tests *before* swapping; a set that fails is
/// refused, logged, and the old one keeps deciding.
#[derive(Clone)]
pub struct PolicyEngine {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<PolicySet>,
    options: PolicyOptions,
    log: Option<DecisionLogConfig>,
    reload_lock: Mutex<()>,
    loaded: AtomicU64,
    refused: AtomicU64,
    status: StatusRecorder<PolicyError>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("current", &**self.shared.current.load())
            .field("decision_log", &self.shared.log)
            .finish_non_exhaustive()
    }
}

/// Counts of reload attempts since the engine was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReloadStats {
    /// Policy sets swapped in (not counting the first).
    pub loaded: u64,
    /// Policy sets refused.
    pub refused: u64,
}

/// Builds a [`PolicyEngine`]; see [`PolicyEngine::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until build() or load() is called"]
pub struct PolicyEngineBuilder {
    options: PolicyOptions,
    log: Option<DecisionLogConfig>,
}

impl PolicyEngineBuilder {
    /// Sends a decision-log record for every decision to `config`'s sink.
    pub fn decision_log(mut self, config: DecisionLogConfig) -> Self {
        self.log = Some(config);
        self
    }

    /// The engine, deciding with `set` (already compiled and tested); reloads use the
    /// builder's options.
    pub fn build(self, set: PolicySet) -> PolicyEngine {
        tracing::info!(revision = %set.revision(), bundle = %set.bundle_name(), "policy set loaded");
        PolicyEngine {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(set),
                options: self.options,
                log: self.log,
                reload_lock: Mutex::new(()),
                loaded: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                status: StatusRecorder::loaded("policy set"),
            }),
        }
    }

    /// The engine, deciding with the bundle at `path` once it is loaded, compiled and its
    /// tests pass under the builder's options.
    ///
    /// # Errors
    ///
    /// Any [`PolicyError`](crate::PolicyError) from [`PolicySet::load`].
    pub fn load(self, path: impl AsRef<Path>) -> Result<PolicyEngine> {
        let set = PolicySet::load(path, &self.options)?;
        Ok(self.build(set))
    }
}

impl PolicyEngine {
    /// How to build an engine: the options its reloads use, a decision log, then the set it
    /// starts with ([`PolicyEngineBuilder::build`]) or the bundle it loads
    /// ([`PolicyEngineBuilder::load`]).
    ///
    /// Everything an engine is configured with is given here, before it exists, so there is
    /// one engine per policy set: every clone, every [`PolicyWatcher`](crate::PolicyWatcher)
    /// and every layer holding it decides, reloads and logs through the same one.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use policy_rego::{BundleLoader, BundleWriter, DecisionLogConfig, DecisionLogRecord,
    ///                   PolicyEngine, PolicyInput, PolicyOptions, PolicySet};
    ///
    /// let archive = BundleWriter::new()
    ///     .file("p.rego", "package http.authz\nallow if input.user == \"alice\"")
    ///     .to_tar_gz()?;
    /// let options = PolicyOptions::new();
    /// let set = PolicySet::compile(BundleLoader::new().load_tar_gz("p", &archive)?, &options)?;
    ///
    /// let records = Arc::new(Mutex::new(Vec::new()));
    /// let sink = records.clone();
    /// let engine = PolicyEngine::builder(options)
    ///     .decision_log(DecisionLogConfig::new(move |r: DecisionLogRecord| {
    ///         sink.lock().unwrap().push(r);
    ///     }))
    ///     .build(set);
    ///
    /// let input = PolicyInput::from_json(serde_json::json!({"user": "alice"}));
    /// assert!(engine.clone().decide(&input).allow);
    /// assert_eq!(records.lock().unwrap().len(), 1);
    /// # Ok::<(), policy_rego::PolicyError>(())
    /// ```
    pub fn builder(options: PolicyOptions) -> PolicyEngineBuilder {
        PolicyEngineBuilder { options, log: None }
    }

    /// Loads, compiles and tests the bundle at `path` and starts deciding with it, without a
    /// decision log (shorthand for `PolicyEngine::builder(options).load(path)`).
    ///
    /// # Errors
    ///
    /// Any [`PolicyError`](crate::PolicyError) from [`PolicySet::load`].
    pub fn load(path: impl AsRef<Path>, options: PolicyOptions) -> Result<Self> {
        Self::builder(options).load(path)
    }

    /// Starts deciding with an already compiled set, without a decision log; later reloads
    /// use `options` (shorthand for `PolicyEngine::builder(options).build(set)`).
    pub fn with_set(set: PolicySet, options: PolicyOptions) -> Self {
        Self::builder(options).build(set)
    }

    /// Decides on `input` with the set in force (see [`PolicySet::decide`]) and logs the
    /// decision when a decision log is configured.
    pub fn decide(&self, input: &PolicyInput) -> PolicyDecision {
        let set = self.shared.current.load();
        let Some(log) = &self.shared.log else {
            return set.decide(input);
        };
        let (decision, raw) = set.decide_raw(input);
        let input_json = input.to_json();
        let mut record = DecisionLogRecord {
            decision_id: decision.decision_id.clone(),
            labels: log.labels.clone(),
            path: set.decision_path().to_owned(),
            requested_by: requested_by(&input_json),
            input: Some(input_json),
            result: raw
                .filter(|v| *v != regorus::Value::Undefined)
                .and_then(|v| serde_json::to_value(&v).ok()),
            error: None,
            bundles: BTreeMap::from([(
                set.bundle_name().to_owned(),
                BundleRevision {
                    revision: set.revision().to_owned(),
                },
            )]),
            revision: set.revision().to_owned(),
            timestamp: now_rfc3339(),
            metrics: BTreeMap::from([("timer_rego_query_eval_ns".to_owned(), decision.eval_ns)]),
            erased: Vec::new(),
            masked: Vec::new(),
        };
        if record.result.is_none() && !decision.allow {
            record.error = decision.reasons.first().cloned();
        }
        log.redact(&mut record);
        log.sink.log(record);
        decision
    }

    /// The decision rule's value for `input` under the set in force, evaluated on the same
    /// path as [`PolicyEngine::decide`] (see [`PolicySet::evaluate`]); not decision-logged.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Eval`](crate::PolicyError::Eval) when evaluation fails.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Option<serde_json::Value>> {
        self.shared.current.load().evaluate(input)
    }

    /// The set in force.
    pub fn current(&self) -> PolicySet {
        PolicySet::clone(&self.shared.current.load())
    }

    /// The revision in force.
    pub fn revision(&self) -> String {
        self.shared.current.load().revision().to_owned()
    }

    /// The options reloads use.
    pub fn options(&self) -> &PolicyOptions {
        &self.shared.options
    }

    /// How many reloads were accepted and refused.
    pub fn reload_stats(&self) -> ReloadStats {
        ReloadStats {
            loaded: self.shared.loaded.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }

    /// Loads, compiles and tests the bundle at `path`; swaps it in when all of that succeeds
    /// and returns its revision.
    ///
    /// # Errors
    ///
    /// The reason the new set was refused; the old set stays in force.
    pub fn reload_from_path(&self, path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        let _guard = self.shared.reload_lock.lock();
        let result = self
            .shared
            .options
            .loader()
            .load_path(path)
            .and_then(|b| PolicySet::compile(b, &self.shared.options));
        self.finish_reload(&path.display().to_string(), result)
    }

    /// Compiles and tests an already loaded bundle; swaps it in when that succeeds.
    ///
    /// # Errors
    ///
    /// The reason the new set was refused; the old set stays in force.
    pub fn reload_bundle(&self, bundle: Bundle) -> Result<String> {
        let _guard = self.shared.reload_lock.lock();
        let name = bundle.name().to_owned();
        let result = PolicySet::compile(bundle, &self.shared.options);
        self.finish_reload(&name, result)
    }

    /// Records content from `source` that could not even be made into a bundle as a refused
    /// reload (logged and counted like a set that does not compile).
    pub(crate) fn refuse(&self, source: &str, error: PolicyError) {
        let _guard = self.shared.reload_lock.lock();
        let _ = self.finish_reload(source, Err(error));
    }

    /// Swaps in a set compiled elsewhere (its tests are not run again).
    pub fn install(&self, set: PolicySet) {
        let _guard = self.shared.reload_lock.lock();
        tracing::info!(revision = %set.revision(), bundle = %set.bundle_name(), "policy set installed");
        self.shared.status.record_published();
        self.shared.current.store(Arc::new(set));
        self.shared.loaded.fetch_add(1, Ordering::Relaxed);
    }

    fn finish_reload(&self, source: &str, result: Result<PolicySet>) -> Result<String> {
        match result {
            Ok(set) => {
                let revision = set.revision().to_owned();
                tracing::info!(
                    revision = %revision,
                    previous = %self.revision(),
                    bundle = %source,
                    "policy set reloaded"
                );
                // Recorded before published: a status showing the new set never shows the
                // error it replaced.
                self.shared.status.record_published();
                self.shared.current.store(Arc::new(set));
                self.shared.loaded.fetch_add(1, Ordering::Relaxed);
                Ok(revision)
            }
            Err(e) => {
                tracing::warn!(
                    bundle = %source,
                    error = %e,
                    revision_in_force = %self.revision(),
                    "policy set refused; keeping the one in force"
                );
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                self.shared.status.record_failure(e.clone());
                Err(e)
            }
        }
    }
}

/// The policy engine is the holder of its policy set: any source (the
/// [`PolicyWatcher`](crate::PolicyWatcher), a bundle server, a secrets manager) hands it a
/// loaded [`Bundle`] through [`update`](MaterialHolder::update), which compiles and tests it
/// before swapping it in (the set in force keeps deciding when it is refused), and reports
/// in zt-rotate's [`RotationStatus`].
///
/// A custom source, here a bundle fetched from somewhere as `.tar.gz` bytes:
///
/// ```
/// use policy_rego::{BundleWriter, MaterialHolder, PolicyEngine, PolicyError, PolicyOptions,
///                   PolicySet};
///
/// fn fetch(revision: &str) -> Vec<u8> {
///     let mut manifest = policy_rego::Manifest::default();
///     manifest.revision = revision.into();
///     BundleWriter::new()
///         .manifest(&manifest)
///         .file("p.rego", "package http.authz\nallow := true")
///         .to_tar_gz()
///         .unwrap()
/// }
///
/// let options = PolicyOptions::new();
/// let first = options.loader().load_tar_gz("remote", &fetch("r1"))?;
/// let engine = PolicyEngine::with_set(PolicySet::compile(first, &options)?, options);
/// assert_eq!(engine.status().generation, 1);
///
/// // Later, from the source's own task:
/// match engine.options().loader().load_tar_gz("remote", &fetch("r2")) {
///     Ok(bundle) => engine.update(bundle)?,   // compiled, tested, swapped in
///     Err(e) => engine.source_failed(e),      // recorded; r1 keeps deciding
/// }
/// assert_eq!(engine.revision(), "r2");
/// assert_eq!(engine.status().generation, 2);
/// # Ok::<(), PolicyError>(())
/// ```
impl MaterialHolder for PolicyEngine {
    type Material = Bundle;
    type Error = PolicyError;

    /// Compiles and tests `bundle` and swaps it in; a bundle with the modules, data and
    /// manifest of the set in force is taken as it is, without a new generation.
    fn update(&self, bundle: Bundle) -> Result<()> {
        if self.shared.current.load().holds(&bundle) {
            self.shared.status.record_success();
            return Ok(());
        }
        self.reload_bundle(bundle).map(drop)
    }

    fn source_failed(&self, error: PolicyError) {
        tracing::warn!(%error, revision_in_force = %self.revision(), "policy source failed");
        self.shared.status.record_failure(error);
    }

    fn status(&self) -> RotationStatus {
        self.shared.status.snapshot()
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
