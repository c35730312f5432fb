//! A rule set that changes while the service runs: [`RulesHolder`], the `zt-rotate` holder
//! for rule files, so a rule file rotates like every other kind of material (validated
//! whole, published atomically, the last good set kept on error, one status shape).
//!
//! ```
//! use std::sync::Arc;
//! use ebpf_l7_filter::{MaterialHolder, RuleSet, RulesHolder, Verdict};
//!
//! let holder = Arc::new(RulesHolder::new(RuleSet::from_yaml("default: deny")?));
//! assert_eq!(holder.load().decide(&http::Method::GET, "/x").verdict(), Verdict::Deny);
//! holder.update(RuleSet::from_yaml("default: allow")?)?;
//! assert_eq!(holder.load().decide(&http::Method::GET, "/x").verdict(), Verdict::Allow);
//! assert_eq!(holder.status().generation, 2);
//! # Ok::<(), ebpf_l7_filter::FilterError>(())
//! ```
//!
//! [`RulesHolder::watch_file`] follows a rule file on disk with `zt_rotate::watch_files`
//! (polling with settling, inotify wake-ups for Kubernetes `..data` swaps); a file that
//! stops parsing or validating is logged once and the rules in force keep serving.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use zt_rotate::{
    FileSnapshot, FileWatcher, MaterialHolder, RotationStatus, StatusRecorder, TaskHandle,
};

use crate::{FilterError, RuleSet};

/// The rule set in force, swappable at runtime; see the [module docs](crate::holder).
pub struct RulesHolder {
    current: ArcSwap<RuleSet>,
    status: StatusRecorder<FilterError>,
    /// Serialises updates, so the equality check and the publication are one step.
    updating: Mutex<()>,
}

impl RulesHolder {
    /// A holder serving `rules` (generation 1).
    pub fn new(rules: RuleSet) -> RulesHolder {
        RulesHolder {
            current: ArcSwap::from_pointee(rules),
            status: StatusRecorder::loaded("l7 rule file"),
            updating: Mutex::new(()),
        }
    }

    /// Loads `path` now (failing if it does not validate: there is no last good set yet) and
    /// follows it: every settled change is parsed and validated and, if good, published.
    /// Polls every `poll_interval` (inotify wakes it at once on Linux). The returned handle
    /// stops the watching thread when dropped.
    ///
    /// # Errors
    ///
    /// Those of [`RuleSet::load`]; [`FilterError::Watch`] if the watching thread cannot
    /// be started.
    pub fn watch_file(
        path: impl AsRef<Path>,
        poll_interval: Duration,
    ) -> Result<(Arc<RulesHolder>, TaskHandle), FilterError> {
        let path = path.as_ref().to_path_buf();
        let mut watcher = FileWatcher::new().file(&path).poll_interval(poll_interval);
        // What is read now is in force; the thread reports only later changes.
        let first = watcher.mark_current()?;
        let holder = Arc::new(RulesHolder::new(rules_from_snapshot(&first, &path)?));
        let handle = zt_rotate::FileRotation::new(watcher, move |snap: &FileSnapshot| {
            rules_from_snapshot(snap, &path)
        })
        .thread_name("l7-rules-watch")
        .spawn(&holder)?;
        Ok((holder, handle))
    }

    /// The rule set in force (a cheap guard; hold it only for one decision).
    pub fn load(&self) -> Guard<Arc<RuleSet>> {
        self.current.load()
    }

    /// The rule set in force, as an owned handle.
    pub fn current(&self) -> RuleSet {
        RuleSet::clone(&self.current.load())
    }
}

fn rules_from_snapshot(snap: &FileSnapshot, path: &Path) -> Result<RuleSet, FilterError> {
    let bytes = snap.get(path).unwrap_or_default();
    let text = std::str::from_utf8(bytes)
        .map_err(|_| FilterError::Syntax(format!("{} is not UTF-8", path.display())))?;
    RuleSet::from_yaml(text)
}

impl std::fmt::Debug for RulesHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesHolder")
            .field("rules", &self.current.load().rules().len())
            .field("generation", &self.status.generation())
            .finish_non_exhaustive()
    }
}

impl MaterialHolder for RulesHolder {
    type Material = RuleSet;
    type Error = FilterError;

    /// Publishes `rules` (already validated: a [`RuleSet`] exists only validated); the same
    /// rules as those in force are taken without a new generation.
    fn update(&self, rules: RuleSet) -> Result<(), FilterError> {
        let _serial = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        if **self.current.load() == rules {
            self.status.record_success();
            return Ok(());
        }
        self.status.record_published();
        self.current.store(Arc::new(rules));
        Ok(())
    }

    fn source_failed(&self, error: FilterError) {
        self.status.record_failure(error);
    }

    fn status(&self) -> RotationStatus {
        self.status.snapshot()
    }
}

impl From<zt_rotate::Error> for FilterError {
    fn from(error: zt_rotate::Error) -> FilterError {
        match error {
            zt_rotate::Error::Io { path, source } => FilterError::Io { path, source },
            other => FilterError::Watch(other),
        }
    }
}
