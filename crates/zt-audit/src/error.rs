//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::verify::VerifyFailure;

/// Everything that can go wrong while opening, writing or reading an audit log.
///
/// Tampering found by verification is *not* an error: it is reported in
/// [`VerifyReport::problem`](crate::VerifyReport::problem). `AuditError` is `Clone`
/// (I/O errors are shared behind an `Arc`) so one failed fsync can be handed to every
/// appender that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O operation on an audit log file or directory failed (disk full, I/O error,
    /// permission denied…).
    #[error("audit log: could not {op} {}: {source}", path.display())]
    Io {
        /// What was being done: `"write"`, `"fsync"`, `"create"`, `"read"`…
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Another writer (another process, or another [`AuditLog`](crate::AuditLog) in this
    /// process) holds the lock on this log's directory and prefix.
    #[error("audit log {} is locked by another writer", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The last log file is damaged *before* its last line, so the damage is not a torn
    /// write left by a crash. Opening refuses to continue the chain and leaves the file
    /// untouched; inspect it with [`verify_files`](crate::verify_files).
    #[error("audit log file {}: line {line}: {reason}; not a torn last line, refusing to open", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// The 1-based line number of the first bad record.
        line: u64,
        /// What is wrong with it.
        reason: VerifyFailure,
    },
    /// A record's extra field uses a name reserved for the log's own fields
    /// (see [`RESERVED_FIELDS`](crate::RESERVED_FIELDS)).
    #[error("audit record field name `{0}` is reserved")]
    ReservedField(String),
    /// The builder was given an invalid setting.
    #[error("invalid audit log configuration: {0}")]
    Config(String),
    /// The log has been shut down; nothing more can be appended.
    #[error("audit log is closed")]
    Closed,
}

impl AuditError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
