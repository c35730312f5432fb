//! A tamper-evident, append-only audit log: one JSON object per line, each carrying the
//! SHA-256 hash of the one before, fsynced with group commit, rotated by size or age,
//! recovered after a crash, redacted before writing, and verifiable file by file.
//!
//! ```
//! use zt_audit::{AuditLog, Record, verify_files};
//!
//! let dir = tempfile::tempdir()?;
//! let log = AuditLog::builder(dir.path()).open()?; // fsync per append (shared), fail closed
//!
//! log.append(
//!     Record::new("http.request")
//!         .subject("spiffe://example.org/ns/web/sa/frontend")
//!         .action("GET")
//!         .resource("/api/v1/users/42")
//!         .decision("allow")
//!         .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!         .field("authorization", "Bearer s3cr3t"), // redacted by default
//! )?;
//! log.append(Record::new("http.request").subject("mallory").decision("deny").reason("no role"))?;
//!
//! let files = log.files()?;
//! let text = std::fs::read_to_string(&files[0])?;
//! assert_eq!(text.lines().count(), 2);
//! assert!(!text.contains("s3cr3t"));
//! assert!(text.contains(r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736""#));
//!
//! let report = verify_files(&files)?;
//! assert!(report.is_intact());
//! assert_eq!(report.last_seq, Some(2));
//!
//! // Editing any byte breaks the chain, and verification says where.
//! std::fs::write(&files[0], text.replacen("mallory", "mallorx", 1))?;
//! let problem = verify_files(&files)?.problem.unwrap();
//! assert_eq!(problem.line, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Pieces
//!
//! - [`AuditLog`] / [`AuditLogBuilder`]: the writer. [`Durability`] says when an append
//!   is fsynced, [`FailureMode`] what happens when the disk refuses. Blocking
//!   [`AuditLog::append`], async [`AuditLog::append_async`], and [`AuditLog::submit`],
//!   which writes at once and leaves the fsync to the background thread.
//! - [`Record`]: the event (kind, subject, action, resource, decision, reason, trace id,
//!   free-form fields such as OPA decision-log members).
//! - [`Redactor`]: header names and JSON pointers whose values never reach the file.
//! - [`verify_files`] / [`Verifier`]: checks a list of files as one chain and names the
//!   first bad record (file, line, reason).
//!
//! The file format, the hash chain, crash recovery and failure handling are described
//! in `docs/audit.md`.

mod chain;
mod clock;
mod error;
mod files;
mod log;
mod record;
mod redact;
mod verify;

pub use error::AuditError;
pub use files::log_files;
pub use log::{
    AppendFuture, AuditLog, AuditLogBuilder, AuditStats, Durability, FailureMode, Receipt,
};
pub use record::{RESERVED_FIELDS, Record, TraceId};
pub use redact::{DEFAULT_REDACTED_HEADERS, REDACTED, Redactor};
pub use verify::{Verifier, VerifyFailure, VerifyProblem, VerifyReport, verify_files};
