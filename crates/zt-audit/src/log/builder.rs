//! [`AuditLogBuilder`]: the settings of a log and their validation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::file_io::{LogFiles, RealFiles};
use super::{AuditLog, Durability, FailureMode};
use crate::error::AuditError;
use crate::redact::Redactor;

/// Configures and opens an [`AuditLog`]. Every default is the strict choice:
/// [`Durability::Always`], [`FailureMode::Closed`], [`Redactor::new`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AuditLogBuilder {
    pub(super) config: Config,
}

/// The settings of a log: what the builder gathers and the open log keeps.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) durability: Durability,
    pub(super) failure_mode: FailureMode,
    pub(super) max_file_size: u64,
    pub(super) max_file_age: Option<Duration>,
    pub(super) redactor: Redactor,
    /// How the log's files are opened: real files, or (unit tests) files that fail on
    /// demand.
    pub(super) files: Arc<dyn LogFiles>,
}

impl AuditLogBuilder {
    /// The strict defaults for a log in `dir`.
    pub(super) fn new(dir: PathBuf) -> Self {
        let config = Config {
            dir,
            prefix: "audit".to_owned(),
            durability: Durability::Always,
            failure_mode: FailureMode::Closed,
            max_file_size: 64 << 20,
            max_file_age: None,
            redactor: Redactor::new(),
            files: Arc::new(RealFiles),
        };
        AuditLogBuilder { config }
    }

    /// The file name prefix (default `"audit"`): files are `{prefix}-{index:08}.jsonl`,
    /// the lock is `{prefix}.lock`. Letters, digits, `.`, `_` and `-` only.
    pub fn file_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// When records are fsynced (default [`Durability::Always`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// What happens when a write fails (default [`FailureMode::Closed`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.config.failure_mode = mode;
        self
    }

    /// Starts a new file before a record would make the current one larger than this
    /// (default 64 MiB). A record larger than this gets a file of its own.
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.config.max_file_size = bytes;
        self
    }

    /// Starts a new file before writing a record when the current file's first record
    /// is at least this old (default: no age limit).
    pub fn max_file_age(mut self, age: Duration) -> Self {
        self.config.max_file_age = Some(age);
        self
    }

    /// What is removed from records before they are written (default
    /// [`Redactor::new`]).
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.config.redactor = redactor;
        self
    }

    /// Opens the log: takes the directory lock, recovers from a crash (a torn last
    /// record is moved to a `.torn` side file) and resumes the chain.
    ///
    /// # Errors
    ///
    /// [`AuditError::Config`] for invalid settings, [`AuditError::Locked`] when another
    /// writer holds the log, [`AuditError::Corrupt`] when the newest file is damaged
    /// before its last line, [`AuditError::Io`] when a file or the directory cannot be
    /// used.
    pub fn open(self) -> Result<AuditLog, AuditError> {
        super::open::open(self)
    }

    /// Opens the log's files through `files` (unit tests inject failures this way).
    #[cfg(test)]
    pub(super) fn log_files(mut self, files: Arc<dyn LogFiles>) -> Self {
        self.config.files = files;
        self
    }

    pub(super) fn validate(&self) -> Result<(), AuditError> {
        let prefix_ok = !self.config.prefix.is_empty()
            && self
                .config
                .prefix
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(AuditError::Config(
                "file prefix must be non-empty ASCII letters, digits, '.', '_' or '-'".into(),
            ));
        }
        if self.config.max_file_size == 0 {
            return Err(AuditError::Config("max_file_size must be positive".into()));
        }
        if let Durability::Batched { interval } = self.config.durability
            && interval.is_zero()
        {
            return Err(AuditError::Config(
                "the batched fsync interval must be positive".into(),
            ));
        }
        if let Some(p) = self
            .config
            .redactor
            .pointers()
            .iter()
            .find(|p| !p.starts_with('/'))
        {
            return Err(AuditError::Config(format!(
                "redaction pointer {p:?} does not start with '/'"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(builder: AuditLogBuilder) -> String {
        match builder.validate() {
            Err(AuditError::Config(reason)) => reason,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_defaults_are_the_strict_choices_and_valid() {
        let b = AuditLogBuilder::new("/tmp/x".into());
        assert_eq!(b.config.durability, Durability::Always);
        assert_eq!(b.config.failure_mode, FailureMode::Closed);
        assert_eq!(b.config.prefix, "audit");
        assert_eq!(b.config.max_file_age, None);
        b.validate().unwrap();
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_setting() {
        let b = || AuditLogBuilder::new("/tmp/x".into());
        assert!(config_error(b().file_prefix("")).contains("file prefix"));
        assert!(config_error(b().file_prefix("../up")).contains("file prefix"));
        assert!(config_error(b().max_file_size(0)).contains("max_file_size"));
        let zero = Durability::Batched {
            interval: Duration::ZERO,
        };
        assert!(config_error(b().durability(zero)).contains("interval"));
        let bad_pointer = Redactor::new().pointer("no-slash");
        assert!(config_error(b().redactor(bad_pointer)).contains("no-slash"));
        b().file_prefix("svc.audit_1-a").validate().unwrap();
    }
}
