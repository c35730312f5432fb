//! The writer: [`AuditLog`], its builder, durability and failure modes.
//!
//! The parts, each in its own file under `log/` with its own unit tests:
//!
//! * `builder` — [`AuditLogBuilder`]: the settings and their validation.
//! * `open` — opening a log: the directory lock, crash recovery (a torn last record is moved
//!   to a side file), resuming the chain from the newest record on disk.
//! * `group_commit` — the state machine every append goes through: sequencing, chaining
//!   and writing a record, one fsync shared by every appender waiting for it (group
//!   commit), cutting unacknowledged records off again when an fsync fails, and the
//!   background fsync thread.
//! * `rotation` — starting the next file when the current one is too big or too old, with
//!   its fsyncs outside the writer's lock.
//! * `append_future` — [`AppendFuture`], the asynchronous wait for durability.
//! * `file_io` — the file operations the writer uses (`write`, `fsync`, `set_len`), behind
//!   a small trait: the real implementation is a `std::fs::File`; unit tests use one that
//!   fails fsyncs on demand, so the writer's state carries no test-only fields.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::AuditError;
use crate::files;
use crate::record::Record;

mod append_future;
mod builder;
mod file_io;
mod group_commit;
mod open;
mod rotation;

pub use append_future::AppendFuture;
pub use builder::AuditLogBuilder;
use group_commit::{Shared, Step};

/// When an appended record is made durable (fsynced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// An append returns (or its future resolves) only after the record is fsynced.
    /// Concurrent appenders share one fsync (group commit). The default.
    Always,
    /// An append returns once the record is written to the operating system; a
    /// background thread fsyncs every `interval`. A machine crash can lose the records
    /// of the last interval; a process crash loses nothing.
    Batched {
        /// Time between fsyncs.
        interval: Duration,
    },
    /// Never fsync on its own (only on rotation, [`AuditLog::sync`] and shutdown).
    None,
}

/// What an append does when the record cannot be written or made durable (disk full,
/// I/O error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureMode {
    /// The append returns the error; the caller (for example the audit layer) denies the
    /// request. An error line is logged. The default.
    Closed,
    /// The append returns [`Receipt::Dropped`], the alarm ([`AuditLog::alarm`]) is
    /// raised and an error line is logged. Requests keep flowing without audit records.
    Open,
}

/// What became of an appended record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Receipt {
    /// The record is in the log (and durable if the log's [`Durability`] says so).
    Written {
        /// Its sequence number.
        seq: u64,
        /// Its hash (64 hex digits).
        hash: String,
    },
    /// [`FailureMode::Open`] only: the record could not be written and was dropped.
    Dropped,
}

impl Receipt {
    /// The sequence number, `None` when dropped.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Written { seq, .. } => Some(*seq),
            Self::Dropped => None,
        }
    }
}

/// Counters of an [`AuditLog`] since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStats {
    /// Records written to a file.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// fsyncs of log files (group commit shows as `fsyncs` much smaller than `records`).
    pub fsyncs: u64,
    /// Writes that failed (the partial record was cut off again).
    pub write_errors: u64,
    /// fsyncs that failed.
    pub fsync_errors: u64,
    /// Records dropped under [`FailureMode::Open`].
    pub dropped: u64,
    /// Files started because of size or age.
    pub rotations: u64,
    /// The highest sequence number known to be on disk.
    pub durable_seq: u64,
    /// Whether a write or fsync failed since the alarm was last cleared.
    pub alarm: bool,
    /// The side file a torn last record was moved to when the log was opened.
    pub torn_tail: Option<PathBuf>,
}

// === impl AuditLog ===

/// An append-only, hash-chained JSON-lines audit log in one directory.
///
/// Cheap to clone (all clones share one writer); `Send + Sync`. The last clone to be
/// dropped fsyncs what is pending and stops the background thread.
///
/// ```
/// use zt_audit::{AuditLog, Record};
///
/// let dir = tempfile::tempdir()?;
/// let log = AuditLog::builder(dir.path()).open()?; // Always durable, fail closed
/// let receipt = log.append(Record::new("http.request").subject("alice").decision("allow"))?;
/// assert_eq!(receipt.seq(), Some(1));
/// assert!(log.stats().durable_seq >= 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
        }
        self.shared.syncer_cv.notify_all();
        let handle = self
            .syncer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("audit log: the fsync thread panicked");
        }
    }
}

impl AuditLog {
    /// A builder for a log in `dir` (created if missing).
    pub fn builder(dir: impl Into<PathBuf>) -> AuditLogBuilder {
        AuditLogBuilder::new(dir.into())
    }

    /// Appends a record and returns when it is written — and, under
    /// [`Durability::Always`], fsynced. Blocks the calling thread for about one fsync
    /// in `Always` mode; from async code use [`append_async`](Self::append_async).
    ///
    /// # Errors
    ///
    /// [`AuditError::ReservedField`] for a record using a reserved field name. Under
    /// [`FailureMode::Closed`]: [`AuditError::Io`] when the record could not be written
    /// or fsynced (nothing of it is left in the file) and [`AuditError::Closed`] after
    /// shutdown. Under [`FailureMode::Open`] write failures give
    /// `Ok(Receipt::Dropped)` instead.
    pub fn append(&self, record: Record) -> Result<Receipt, AuditError> {
        let shared = &self.inner.shared;
        match shared.write(record) {
            Step::Done(r) => r,
            Step::Wait { ticket, receipt } => {
                let (mut st, r) = shared.wait_ticket(shared.lock(), ticket);
                shared.settle(&mut st, r, receipt)
            }
        }
    }

    /// Appends a record; the returned future resolves when it is durable as
    /// [`append`](Self::append) would return. The record is sequenced and written when
    /// this is called (a `write(2)` to the page cache on the calling thread); the
    /// fsync wait is asynchronous, so the future can be awaited on any executor
    /// without blocking it. Futures of concurrent callers share fsyncs.
    pub fn append_async(&self, record: Record) -> AppendFuture {
        let shared = &self.inner.shared;
        match shared.write(record) {
            Step::Done(r) => AppendFuture::ready(r),
            Step::Wait { ticket, receipt } => {
                AppendFuture::waiting(Arc::clone(shared), ticket, receipt)
            }
        }
    }

    /// Appends a record without waiting for it to become durable: it is sequenced and
    /// written (a `write(2)` to the page cache) on the calling thread before this returns,
    /// and under [`Durability::Always`] the background thread is asked to fsync it at once
    /// (other modes fsync as they always do). Nothing needs to be polled or awaited
    /// afterwards, so this is the append to use where waiting is impossible: in a `Drop`
    /// (a cancelled request, a panic unwinding) or on a path that must not block.
    ///
    /// The receipt says the record was written, not that it is durable. Should the fsync
    /// that covers it fail under [`Durability::Always`], the record is cut off the file
    /// again as every unacknowledged record is (see [`append`](Self::append)); nobody is
    /// told but the log (an error line, [`alarm`](Self::alarm)).
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append) for everything up to the write: a reserved field
    /// name, and under [`FailureMode::Closed`] a failed write or a closed log.
    pub fn submit(&self, record: Record) -> Result<Receipt, AuditError> {
        let shared = &self.inner.shared;
        match shared.write(record) {
            Step::Done(r) => r,
            Step::Wait { receipt, .. } => {
                shared.request_sync(&mut shared.lock());
                Ok(receipt)
            }
        }
    }

    /// fsyncs everything written so far, whatever the durability mode.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] when the fsync fails.
    pub fn sync(&self) -> Result<(), AuditError> {
        let shared = &self.inner.shared;
        let mut st = shared.lock();
        let ticket = st.written_ticket;
        loop {
            if let Some(err) = st.rewound_error(ticket) {
                return Err(err);
            }
            if ticket <= st.durable.ticket {
                return Ok(());
            }
            if st.syncing {
                st = shared.wait_for_news(st);
            } else {
                let (g, r) = shared.run_sync(st);
                st = g;
                r?;
            }
        }
    }

    /// Waits up to `timeout` until record `seq` is on disk, without forcing an fsync
    /// (useful with [`Durability::Batched`]). Returns whether it is.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let deadline = Instant::now() + timeout;
        let mut st = shared.lock();
        loop {
            if st.durable.head.next_seq > seq {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || st.shutdown {
                return false;
            }
            st = shared
                .durable_cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> AuditStats {
        let st = self.inner.shared.lock();
        let mut stats = st.stats.clone();
        stats.durable_seq = st.durable.head.next_seq - 1;
        stats
    }

    /// Whether a write or fsync failed since the alarm was last cleared. Under
    /// [`FailureMode::Open`] this is how dropped records show.
    pub fn alarm(&self) -> bool {
        self.inner.shared.lock().stats.alarm
    }

    /// Lowers the alarm (after an operator has dealt with it).
    pub fn clear_alarm(&self) {
        self.inner.shared.lock().stats.alarm = false;
    }

    /// The file currently written to.
    pub fn current_file(&self) -> PathBuf {
        self.inner.shared.lock().path.clone()
    }

    /// All files of this log, oldest first (what [`verify_files`](crate::verify_files)
    /// wants).
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] when the directory cannot be read.
    pub fn files(&self) -> Result<Vec<PathBuf>, AuditError> {
        let cfg = &self.inner.shared.config;
        files::log_files(&cfg.dir, &cfg.prefix)
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.inner.shared.config.durability
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.inner.shared.config.failure_mode
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.config.dir
    }
}
