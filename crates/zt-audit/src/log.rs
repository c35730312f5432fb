//! The writer: [`AuditLog`], its builder, durability and failure modes.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::chain::{ChainHead, build_line};
use crate::clock::format_rfc3339_micros;
use crate::error::AuditError;
use crate::files;
use crate::record::Record;
use crate::redact::Redactor;

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

// === impl AuditLogBuilder ===

/// Configures and opens an [`AuditLog`]. Every default is the strict choice:
/// [`Durability::Always`], [`FailureMode::Closed`], [`Redactor::new`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AuditLogBuilder {
    dir: PathBuf,
    prefix: String,
    durability: Durability,
    failure_mode: FailureMode,
    max_file_size: u64,
    max_file_age: Option<Duration>,
    redactor: Redactor,
}

impl AuditLogBuilder {
    /// The file name prefix (default `"audit"`): files are `{prefix}-{index:08}.jsonl`,
    /// the lock is `{prefix}.lock`. Letters, digits, `.`, `_` and `-` only.
    pub fn file_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// When records are fsynced (default [`Durability::Always`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// What happens when a write fails (default [`FailureMode::Closed`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Starts a new file before a record would make the current one larger than this
    /// (default 64 MiB). A record larger than this gets a file of its own.
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Starts a new file before writing a record when the current file's first record
    /// is at least this old (default: no age limit).
    pub fn max_file_age(mut self, age: Duration) -> Self {
        self.max_file_age = Some(age);
        self
    }

    /// What is removed from records before they are written (default
    /// [`Redactor::new`]).
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
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
        AuditLog::open_with(self)
    }

    fn validate(&self) -> Result<(), AuditError> {
        let prefix_ok = !self.prefix.is_empty()
            && self
                .prefix
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(AuditError::Config(
                "file prefix must be non-empty ASCII letters, digits, '.', '_' or '-'".into(),
            ));
        }
        if self.max_file_size == 0 {
            return Err(AuditError::Config("max_file_size must be positive".into()));
        }
        if let Durability::Batched { interval } = self.durability
            && interval.is_zero()
        {
            return Err(AuditError::Config(
                "the batched fsync interval must be positive".into(),
            ));
        }
        if let Some(p) = self
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
        AuditLogBuilder {
            dir: dir.into(),
            prefix: "audit".to_owned(),
            durability: Durability::Always,
            failure_mode: FailureMode::Closed,
            max_file_size: 64 << 20,
            max_file_age: None,
            redactor: Redactor::new(),
        }
    }

    fn open_with(b: AuditLogBuilder) -> Result<Self, AuditError> {
        b.validate()?;
        std::fs::create_dir_all(&b.dir)
            .map_err(|e| AuditError::io("create directory", &b.dir, e))?;
        let lock = files::lock(&b.dir, &b.prefix)?;
        let existing = files::indexed_files(&b.dir, &b.prefix)?;

        let (index, path, recovered) = match existing.last() {
            Some((index, path)) => (*index, path.clone(), Some(files::recover(path)?)),
            None => (1, b.dir.join(files::file_name(&b.prefix, 1)), None),
        };
        let mut head = recovered
            .as_ref()
            .and_then(|r| r.last.as_ref())
            .map(ChainHead::after);
        if head.is_none() {
            // The newest file holds no record yet: the chain continues from the last
            // record of an older file.
            for (_, older) in existing.iter().rev().skip(1) {
                let bytes = std::fs::read(older).map_err(|e| AuditError::io("read", older, e))?;
                let s = files::scan(&bytes);
                if let Some((line, reason)) = s.bad {
                    return Err(AuditError::Corrupt {
                        file: older.clone(),
                        line,
                        reason,
                    });
                }
                if let Some(last) = &s.last {
                    head = Some(ChainHead::after(last));
                    break;
                }
            }
        }
        let head = head.unwrap_or(ChainHead::GENESIS);

        let file = files::open_append(&path)?;
        if recovered.is_none() {
            files::sync_dir(&b.dir)?;
        }
        // What the previous process wrote may still be only in the page cache.
        file.sync_data()
            .map_err(|e| AuditError::io("fsync", &path, e))?;
        let offset = recovered.as_ref().map_or(0, |r| r.len);
        let started = recovered
            .as_ref()
            .and_then(|r| r.started)
            .unwrap_or_else(SystemTime::now);
        let torn = recovered.and_then(|r| r.torn);

        let durable = DurablePoint {
            ticket: 0,
            offset,
            head,
            file_id: 0,
        };
        let state = State {
            file: Arc::new(file),
            path,
            index,
            file_id: 0,
            file_started: started,
            offset,
            head,
            written_ticket: 0,
            durable,
            rewound: Vec::new(),
            syncing: false,
            sync_requested: false,
            pending_truncate: None,
            wakers: BTreeMap::new(),
            shutdown: false,
            stats: AuditStats {
                durable_seq: head.next_seq - 1,
                torn_tail: torn,
                ..AuditStats::default()
            },
            line: Vec::with_capacity(1024),
            last_batch_sync: Instant::now(),
            #[cfg(test)]
            fail_fsyncs: 0,
        };
        let shared = Arc::new(Shared {
            config: Config {
                dir: b.dir,
                prefix: b.prefix,
                durability: b.durability,
                failure_mode: b.failure_mode,
                max_file_size: b.max_file_size,
                max_file_age: b.max_file_age,
                redactor: b.redactor,
            },
            state: Mutex::new(state),
            durable_cv: Condvar::new(),
            syncer_cv: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("zt-audit-fsync".into())
            .spawn(move || for_thread.syncer_loop())
            .map_err(|e| AuditError::io("start the fsync thread for", &shared.config.dir, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                syncer: Mutex::new(Some(syncer)),
                _lock: lock,
            }),
        })
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
            Step::Done(r) => AppendFuture {
                state: FutureState::Ready(Some(r)),
            },
            Step::Wait { ticket, receipt } => AppendFuture {
                state: FutureState::Waiting {
                    shared: Arc::clone(shared),
                    ticket,
                    receipt: Some(receipt),
                },
            },
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
                st = shared
                    .durable_cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
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

// === impl AppendFuture ===

/// Resolves when a record appended with [`AuditLog::append_async`] is durable; yields
/// what [`AuditLog::append`] would have returned.
///
/// Dropping it before it resolves does not take the record back (it was written when
/// `append_async` was called): the background thread is asked to fsync it, as
/// [`AuditLog::submit`] does.
#[derive(Debug)]
#[must_use = "the record is written, but durability is only known by awaiting the future"]
pub struct AppendFuture {
    state: FutureState,
}

#[derive(Debug)]
enum FutureState {
    Ready(Option<Result<Receipt, AuditError>>),
    Waiting {
        shared: Arc<Shared>,
        ticket: u64,
        receipt: Option<Receipt>,
    },
}

impl Future for AppendFuture {
    type Output = Result<Receipt, AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            FutureState::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(AuditError::Closed))),
            FutureState::Waiting {
                shared,
                ticket,
                receipt,
            } => {
                let mut st = shared.lock();
                match st.resolve(*ticket) {
                    Some(r) => {
                        let receipt = receipt.take().ok_or(AuditError::Closed);
                        let out = receipt.and_then(|rc| shared.settle(&mut st, r, rc));
                        Poll::Ready(out)
                    }
                    None => {
                        st.wakers.insert(*ticket, cx.waker().clone());
                        shared.request_sync(&mut st);
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl Drop for AppendFuture {
    fn drop(&mut self) {
        if let FutureState::Waiting {
            shared,
            ticket,
            receipt: Some(_),
        } = &self.state
        {
            let mut st = shared.lock();
            st.wakers.remove(ticket);
            if st.resolve(*ticket).is_none() {
                shared.request_sync(&mut st);
            }
        }
    }
}

// === impl Shared ===

#[derive(Debug)]
struct Config {
    dir: PathBuf,
    prefix: String,
    durability: Durability,
    failure_mode: FailureMode,
    max_file_size: u64,
    max_file_age: Option<Duration>,
    redactor: Redactor,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    state: Mutex<State>,
    /// Signalled whenever the durable point moves (or records were rewound).
    durable_cv: Condvar,
    /// Wakes the fsync thread.
    syncer_cv: Condvar,
}

/// How far the file is known to be on disk. Tickets number successful writes and are
/// never reused (unlike sequence numbers after a rewind).
#[derive(Debug, Clone, Copy)]
struct DurablePoint {
    ticket: u64,
    offset: u64,
    head: ChainHead,
    file_id: u64,
}

#[derive(Debug)]
struct Rewound {
    from: u64,
    to: u64,
    error: AuditError,
}

#[derive(Debug)]
struct State {
    file: Arc<File>,
    path: PathBuf,
    index: u64,
    /// Changes on every rotation, so a finished fsync of an older file is recognised.
    file_id: u64,
    file_started: SystemTime,
    /// Length of the complete records in the current file.
    offset: u64,
    head: ChainHead,
    written_ticket: u64,
    durable: DurablePoint,
    /// Tickets whose records were cut off again after a failed fsync (`Always` only).
    rewound: Vec<Rewound>,
    syncing: bool,
    sync_requested: bool,
    /// A failed write left bytes that could not be cut off yet.
    pending_truncate: Option<u64>,
    wakers: BTreeMap<u64, Waker>,
    shutdown: bool,
    stats: AuditStats,
    line: Vec<u8>,
    last_batch_sync: Instant,
    /// Unit tests: make this many upcoming fsyncs fail.
    #[cfg(test)]
    fail_fsyncs: u32,
}

impl State {
    fn rewound_error(&self, ticket: u64) -> Option<AuditError> {
        self.rewound
            .iter()
            .rev()
            .find(|r| (r.from..=r.to).contains(&ticket))
            .map(|r| r.error.clone())
    }

    /// `Some` once the record with this ticket is durable (`Ok`) or was cut off (`Err`).
    fn resolve(&self, ticket: u64) -> Option<Result<(), AuditError>> {
        if let Some(err) = self.rewound_error(ticket) {
            return Some(Err(err));
        }
        (ticket <= self.durable.ticket).then_some(Ok(()))
    }
}

enum Step {
    Done(Result<Receipt, AuditError>),
    Wait { ticket: u64, receipt: Receipt },
}

type Guard<'a> = MutexGuard<'a, State>;

impl Shared {
    fn lock(&self) -> Guard<'_> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the background thread for an fsync of everything written so far.
    fn request_sync(&self, st: &mut State) {
        if !st.sync_requested {
            st.sync_requested = true;
            self.syncer_cv.notify_all();
        }
    }

    /// Sequences, chains and writes one record.
    fn write(&self, record: Record) -> Step {
        let body = match record.encode_body(&self.config.redactor) {
            Ok(b) => b,
            Err(e) => return Step::Done(Err(e)),
        };
        let mut st = self.lock();
        if st.shutdown {
            return Step::Done(Err(AuditError::Closed));
        }
        if let Some(len) = st.pending_truncate {
            if let Err(e) = st.file.set_len(len) {
                let err = AuditError::io("truncate", &st.path, e);
                return Step::Done(self.write_failed(&mut st, err));
            }
            st.pending_truncate = None;
        }
        // seq, ts and the hashes add well under 256 bytes to the body.
        if let Err(err) = self.rotate_if_due(&mut st, body.len() as u64 + 256) {
            return Step::Done(self.write_failed(&mut st, err));
        }
        let seq = st.head.next_seq;
        let ts = format_rfc3339_micros(SystemTime::now());
        let mut line = std::mem::take(&mut st.line);
        let hash = build_line(&mut line, seq, &ts, &body, &st.head.hash);
        let mut file: &File = &st.file;
        let written = file.write_all(&line);
        let len = line.len() as u64;
        st.line = line;
        if let Err(e) = written {
            let err = AuditError::io("write", &st.path, e);
            // Cut off whatever part of the line reached the file.
            if let Err(e) = st.file.set_len(st.offset) {
                tracing::error!(file = %st.path.display(), error = %e, "audit log: could not cut off a partly written record; will retry before the next write");
                st.pending_truncate = Some(st.offset);
            }
            return Step::Done(self.write_failed(&mut st, err));
        }
        st.offset += len;
        st.head = ChainHead {
            next_seq: seq + 1,
            hash,
        };
        st.written_ticket += 1;
        st.stats.records += 1;
        st.stats.bytes += len;
        let receipt = Receipt::Written {
            seq,
            hash: crate::chain::hex32(&hash),
        };
        match self.config.durability {
            Durability::Always => Step::Wait {
                ticket: st.written_ticket,
                receipt,
            },
            Durability::Batched { .. } | Durability::None => Step::Done(Ok(receipt)),
        }
    }

    /// Applies the failure mode to a failed write.
    fn write_failed(&self, st: &mut State, err: AuditError) -> Result<Receipt, AuditError> {
        st.stats.write_errors += 1;
        st.stats.alarm = true;
        match self.config.failure_mode {
            FailureMode::Closed => {
                tracing::error!(error = %err, "audit log: record NOT written; failing closed (the request must be denied)");
                Err(err)
            }
            FailureMode::Open => {
                st.stats.dropped += 1;
                tracing::error!(error = %err, "audit log: record DROPPED (fail-open); alarm raised");
                Ok(Receipt::Dropped)
            }
        }
    }

    /// Applies the failure mode to the outcome of waiting for durability.
    fn settle(
        &self,
        st: &mut State,
        r: Result<(), AuditError>,
        receipt: Receipt,
    ) -> Result<Receipt, AuditError> {
        match (r, self.config.failure_mode) {
            (Ok(()), _) => Ok(receipt),
            (Err(e), FailureMode::Closed) => Err(e),
            (Err(_), FailureMode::Open) => {
                st.stats.dropped += 1;
                Ok(Receipt::Dropped)
            }
        }
    }

    /// Blocks until `ticket` is resolved, becoming the fsync leader when nobody is
    /// syncing (group commit: one fsync covers every record written before it starts).
    fn wait_ticket<'a>(
        &'a self,
        mut st: Guard<'a>,
        ticket: u64,
    ) -> (Guard<'a>, Result<(), AuditError>) {
        loop {
            if let Some(r) = st.resolve(ticket) {
                return (st, r);
            }
            if st.syncing {
                st = self
                    .durable_cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            } else {
                st = self.run_sync(st).0;
            }
        }
    }

    /// One fsync of everything written so far, without holding the lock meanwhile.
    fn run_sync<'a>(&'a self, mut st: Guard<'a>) -> (Guard<'a>, Result<(), AuditError>) {
        st.syncing = true;
        let target = DurablePoint {
            ticket: st.written_ticket,
            offset: st.offset,
            head: st.head,
            file_id: st.file_id,
        };
        let file = Arc::clone(&st.file);
        let path = st.path.clone();
        #[cfg(test)]
        let inject = st.fail_fsyncs > 0;
        #[cfg(test)]
        {
            st.fail_fsyncs = st.fail_fsyncs.saturating_sub(1);
        }
        drop(st);
        let res = file.sync_data();
        #[cfg(test)]
        let res = if inject {
            Err(std::io::Error::other("injected fsync failure"))
        } else {
            res
        };
        let mut st = self.lock();
        st.syncing = false;
        st.stats.fsyncs += 1;
        let out = match res {
            // A rotation made this file durable meanwhile and moved on.
            _ if st.file_id != target.file_id => Ok(()),
            Ok(()) => {
                if target.ticket > st.durable.ticket {
                    st.durable = target;
                }
                Ok(())
            }
            Err(e) => {
                let err = AuditError::io("fsync", path, e);
                self.sync_failed(&mut st, err.clone());
                Err(err)
            }
        };
        self.publish(&mut st);
        (st, out)
    }

    /// A failed fsync. Under `Always`, every record since the last durable point is cut
    /// off (its appenders get the error), so the file holds only what was acknowledged.
    /// Otherwise the records stay and the next fsync retries.
    fn sync_failed(&self, st: &mut State, err: AuditError) {
        st.stats.fsync_errors += 1;
        st.stats.alarm = true;
        if self.config.durability != Durability::Always {
            tracing::error!(error = %err, "audit log: fsync failed; records since the last fsync may be lost in a machine crash; alarm raised");
            return;
        }
        tracing::error!(error = %err, "audit log: fsync failed; the records waiting for it are removed from the file and their appends fail");
        let (from, to) = (st.durable.ticket + 1, st.written_ticket);
        if from <= to {
            match st.rewound.last_mut() {
                Some(last) if last.to + 1 == from => {
                    last.to = to;
                    last.error = err;
                }
                _ => st.rewound.push(Rewound {
                    from,
                    to,
                    error: err,
                }),
            }
        }
        let durable = st.durable;
        if let Err(e) = st.file.set_len(durable.offset) {
            tracing::error!(file = %st.path.display(), error = %e, "audit log: could not cut off unsynced records; will retry before the next write");
            st.pending_truncate = Some(durable.offset);
        }
        st.offset = durable.offset;
        st.head = durable.head;
        st.durable.ticket = st.written_ticket;
    }

    /// Wakes everyone interested in the durable point.
    fn publish(&self, st: &mut State) {
        let rest = st.wakers.split_off(&(st.durable.ticket + 1));
        for (_, w) in std::mem::replace(&mut st.wakers, rest) {
            w.wake();
        }
        self.durable_cv.notify_all();
        if st.sync_requested || st.shutdown {
            self.syncer_cv.notify_all();
        }
    }

    /// Starts a new file when the current one is too big or too old. The old file is
    /// fsynced first so the chain never continues past a record that could be lost.
    fn rotate_if_due(&self, st: &mut State, upcoming: u64) -> Result<(), AuditError> {
        if st.offset == 0 {
            return Ok(());
        }
        let by_size = st.offset.saturating_add(upcoming) > self.config.max_file_size;
        let by_age = self.config.max_file_age.is_some_and(|age| {
            SystemTime::now()
                .duration_since(st.file_started)
                .is_ok_and(|elapsed| elapsed >= age)
        });
        if !by_size && !by_age {
            return Ok(());
        }
        if st.written_ticket > st.durable.ticket {
            st.stats.fsyncs += 1;
            if let Err(e) = st.file.sync_data() {
                let err = AuditError::io("fsync", &st.path, e);
                self.sync_failed(st, err.clone());
                self.publish(st);
                return Err(err);
            }
        }
        let index = st.index + 1;
        let path = self
            .config
            .dir
            .join(files::file_name(&self.config.prefix, index));
        let file = files::open_append(&path)?;
        let len = file
            .metadata()
            .map_err(|e| AuditError::io("stat", &path, e))?
            .len();
        if len != 0 {
            return Err(AuditError::Config(format!(
                "next audit log file {} already exists and is not empty",
                path.display()
            )));
        }
        files::sync_dir(&self.config.dir)?;
        tracing::info!(from = %st.path.display(), to = %path.display(), "audit log: rotated");
        st.file = Arc::new(file);
        st.path = path;
        st.index = index;
        st.file_id += 1;
        st.offset = 0;
        st.file_started = SystemTime::now();
        st.durable = DurablePoint {
            ticket: st.written_ticket,
            offset: 0,
            head: st.head,
            file_id: st.file_id,
        };
        st.stats.rotations += 1;
        self.publish(st);
        Ok(())
    }

    /// The background thread: fsyncs for async waiters, on the batch interval, and
    /// once more at shutdown.
    fn syncer_loop(&self) {
        let mut st = self.lock();
        loop {
            let pending = st.written_ticket > st.durable.ticket;
            if st.shutdown {
                if st.syncing {
                    st = self
                        .durable_cv
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                if pending {
                    st = self.run_sync(st).0;
                }
                self.publish(&mut st);
                return;
            }
            if st.sync_requested && !st.syncing {
                st.sync_requested = false;
                if pending {
                    st = self.run_sync(st).0;
                }
                continue;
            }
            match self.config.durability {
                Durability::Batched { interval } => {
                    let due = st.last_batch_sync + interval;
                    let now = Instant::now();
                    if now >= due {
                        st.last_batch_sync = now;
                        if pending && !st.syncing {
                            st = self.run_sync(st).0;
                        }
                        continue;
                    }
                    st = self
                        .syncer_cv
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                Durability::Always | Durability::None => {
                    st = self
                        .syncer_cv
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify_files;

    fn open(dir: &Path, durability: Durability, mode: FailureMode) -> AuditLog {
        AuditLog::builder(dir)
            .durability(durability)
            .failure_mode(mode)
            .open()
            .unwrap()
    }

    fn fail_next_fsyncs(log: &AuditLog, n: u32) {
        log.inner.shared.lock().fail_fsyncs = n;
    }

    fn file_len(log: &AuditLog) -> u64 {
        std::fs::metadata(log.current_file()).unwrap().len()
    }

    #[test]
    fn always_fsync_failure_fails_the_append_and_cuts_the_record_off() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), Durability::Always, FailureMode::Closed);
        log.append(Record::new("ok")).unwrap();
        let len = file_len(&log);
        fail_next_fsyncs(&log, 1);
        let err = log.append(Record::new("lost")).unwrap_err();
        assert!(matches!(err, AuditError::Io { op: "fsync", .. }), "{err}");
        assert_eq!(
            file_len(&log),
            len,
            "the unacknowledged record must be cut off"
        );
        let stats = log.stats();
        assert_eq!((stats.fsync_errors, stats.durable_seq), (1, 1));
        assert!(stats.alarm);
        // The chain goes on from the last durable record; seq 2 is taken again.
        assert_eq!(log.append(Record::new("next")).unwrap().seq(), Some(2));
        let report = verify_files(&log.files().unwrap()).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.records, 2);
        assert!(
            !std::fs::read_to_string(log.current_file())
                .unwrap()
                .contains("lost")
        );
    }

    #[test]
    fn one_failed_group_fsync_fails_every_waiter_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), Durability::Always, FailureMode::Closed);
        let futures: Vec<_> = (0..3)
            .map(|_| log.append_async(Record::new("lost")))
            .collect();
        fail_next_fsyncs(&log, 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for f in futures {
            assert!(rt.block_on(f).is_err());
        }
        assert_eq!(file_len(&log), 0);
        assert_eq!(
            rt.block_on(log.append_async(Record::new("k")))
                .unwrap()
                .seq(),
            Some(1)
        );
        assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
    }

    #[test]
    fn fail_open_fsync_failure_drops_and_raises_the_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), Durability::Always, FailureMode::Open);
        fail_next_fsyncs(&log, 1);
        assert_eq!(log.append(Record::new("lost")).unwrap(), Receipt::Dropped);
        assert!(log.alarm());
        assert_eq!(log.stats().dropped, 1);
        assert_eq!(log.append(Record::new("k")).unwrap().seq(), Some(1));
    }

    #[test]
    fn batched_fsync_failure_keeps_the_records_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), Durability::None, FailureMode::Closed);
        log.append(Record::new("a")).unwrap();
        fail_next_fsyncs(&log, 1);
        assert!(log.sync().is_err());
        assert!(log.alarm());
        assert_eq!(log.stats().durable_seq, 0);
        log.sync().unwrap();
        assert_eq!(log.stats().durable_seq, 1);
        assert_eq!(verify_files(&log.files().unwrap()).unwrap().records, 1);
    }
}
