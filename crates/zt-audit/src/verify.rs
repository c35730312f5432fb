//! Checking a log: every line well-formed, every hash right, every link and sequence
//! number continuous, across rotated files.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::chain::{ChainHead, check_line};
use crate::error::AuditError;

/// Why a record failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// The line is not a record: not JSON, a required field missing or of the wrong
    /// type, or `hash` not the last member.
    Unparseable {
        /// What the parser said (at most 120 characters).
        detail: String,
    },
    /// The last line has no terminating newline (a torn write, or a file still being
    /// written).
    MissingNewline,
    /// The record's `hash` does not match its bytes: the record was edited.
    BadHash,
    /// The record's `prev_hash` is not the previous record's `hash`: a record was
    /// removed, inserted or moved here.
    BrokenLink,
    /// The sequence number is not the previous one plus one.
    SeqGap {
        /// The sequence number that should have come next.
        expected: u64,
        /// The one found.
        found: u64,
    },
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unparseable { detail } => write!(f, "unparseable record: {detail}"),
            Self::MissingNewline => f.write_str("last line has no newline (torn write)"),
            Self::BadHash => f.write_str("bad hash: the record does not match its hash"),
            Self::BrokenLink => {
                f.write_str("broken link: prev_hash is not the previous record's hash")
            }
            Self::SeqGap { expected, found } => {
                write!(f, "sequence gap: expected seq {expected}, found {found}")
            }
        }
    }
}

/// The first bad record found: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyProblem {
    /// The file it is in, as given to the verifier.
    pub file: PathBuf,
    /// The 1-based line number within that file.
    pub line: u64,
    /// What is wrong.
    pub reason: VerifyFailure,
}

impl fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// How many files were read.
    pub files: usize,
    /// How many records verified before the first problem (all of them when intact).
    pub records: u64,
    /// The first record's sequence number.
    pub first_seq: Option<u64>,
    /// The last good record's sequence number.
    pub last_seq: Option<u64>,
    /// The last good record's hash (64 hex digits). Keep it somewhere else (a ticket, a
    /// second system) to later detect a rewrite of the whole log.
    pub last_hash: Option<String>,
    /// The first bad record, `None` when the log is intact.
    pub problem: Option<VerifyProblem>,
}

impl VerifyReport {
    /// `true` when no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verifies a list of log files, in order, as one chain.
///
/// By default the first record must be the start of a log (seq 1, `prev_hash` all
/// zeros), so deleting the first records is detected; use
/// [`allow_partial_start`](Self::allow_partial_start) for logs whose oldest files were
/// removed by retention.
///
/// ```
/// use zt_audit::{AuditLog, Durability, Record, Verifier};
///
/// let dir = tempfile::tempdir()?;
/// let log = AuditLog::builder(dir.path()).durability(Durability::None).open()?;
/// log.append(Record::new("test"))?;
/// drop(log);
/// let files = zt_audit::log_files(dir.path(), "audit")?;
/// let report = Verifier::new().verify_files(&files)?;
/// assert!(report.is_intact());
/// assert_eq!(report.records, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    partial_start: bool,
}

impl Verifier {
    /// A verifier that requires the chain to start at seq 1 with an all-zero
    /// `prev_hash`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts a first record with any seq and `prev_hash` (the files before it were
    /// deleted); everything after it is still checked.
    pub fn allow_partial_start(mut self) -> Self {
        self.partial_start = true;
        self
    }

    /// Reads and checks `files` in order.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] when a file cannot be opened or read. Damage in the files is
    /// not an error: it is reported in [`VerifyReport::problem`].
    pub fn verify_files<P: AsRef<Path>>(&self, files: &[P]) -> Result<VerifyReport, AuditError> {
        let mut state = self.start();
        for path in files {
            let path = path.as_ref();
            let file = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
            let done = state
                .feed(path, BufReader::with_capacity(1 << 16, file))
                .map_err(|e| AuditError::io("read", path, e))?;
            if done {
                break;
            }
        }
        Ok(state.report)
    }

    /// Checks one log file's bytes (named `name` in the report).
    pub fn verify_bytes(&self, name: impl Into<PathBuf>, bytes: &[u8]) -> VerifyReport {
        let mut state = self.start();
        // Reading from a slice cannot fail.
        let _ = state.feed(&name.into(), bytes);
        state.report
    }

    fn start(&self) -> State {
        State {
            partial_start: self.partial_start,
            head: None,
            report: VerifyReport {
                files: 0,
                records: 0,
                first_seq: None,
                last_seq: None,
                last_hash: None,
                problem: None,
            },
        }
    }
}

/// Verifies `files` in order as one chain that must start at the beginning of the log.
/// Shorthand for `Verifier::new().verify_files(files)`.
///
/// # Errors
///
/// [`AuditError::Io`] when a file cannot be read.
pub fn verify_files<P: AsRef<Path>>(files: &[P]) -> Result<VerifyReport, AuditError> {
    Verifier::new().verify_files(files)
}

struct State {
    partial_start: bool,
    head: Option<ChainHead>,
    report: VerifyReport,
}

impl State {
    /// Returns `Ok(true)` once a problem was found.
    fn feed(&mut self, path: &Path, mut reader: impl BufRead) -> io::Result<bool> {
        self.report.files += 1;
        let mut line = Vec::with_capacity(1024);
        let mut line_no = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(false);
            }
            line_no += 1;
            let result = if line.pop() != Some(b'\n') {
                Err(VerifyFailure::MissingNewline)
            } else {
                check_line(&line).and_then(|info| match self.head {
                    Some(head) => head.check_next(&info),
                    None if self.partial_start => Ok(ChainHead::after(&info)),
                    None => ChainHead::GENESIS.check_next(&info),
                })
            };
            match result {
                Ok(head) => {
                    self.report.records += 1;
                    let seq = head.next_seq.saturating_sub(1);
                    self.report.first_seq.get_or_insert(seq);
                    self.report.last_seq = Some(seq);
                    self.report.last_hash = Some(crate::chain::hex32(&head.hash));
                    self.head = Some(head);
                }
                Err(reason) => {
                    self.report.problem = Some(VerifyProblem {
                        file: path.to_owned(),
                        line: line_no,
                        reason,
                    });
                    return Ok(true);
                }
            }
        }
    }
}
