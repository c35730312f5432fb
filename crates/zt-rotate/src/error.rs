//! The crate's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong while watching files or starting a background task.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A watched path could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// A watched file (or the files of a watched directory together) is over the size limit.
    #[error("{} is {size} bytes, over the {limit}-byte limit", path.display())]
    FileTooLarge {
        /// The file or directory.
        path: PathBuf,
        /// Its size (at least; reading stops past the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A directory reader given to [`FileWatcher::dir_with`](crate::FileWatcher::dir_with)
    /// refused the directory.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The directory.
        path: PathBuf,
        /// The reader's error.
        reason: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A background thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// Why.
        source: Arc<std::io::Error>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
