//! The state machine every append goes through.
//!
//! [`Shared::write`] sequences, chains and writes a record under the lock. Under
//! [`Durability::Always`] the appender then waits for its *ticket* (a number per successful
//! write, never reused) to become durable: whoever finds nobody syncing becomes the fsync
//! leader ([`Shared::run_sync`]) and one fsync, run without the lock, covers every record
//! written before it started (group commit); the others wait on `durable_cv` (threads) or
//! register a waker ([`AppendFuture`](super::AppendFuture)). A failed fsync under `Always`
//! cuts every record since the last durable point off the file again and fails their
//! appends ([`Shared::sync_failed`]); in the other modes the records stay and the next
//! fsync retries. Rotation (in `rotation`) fsyncs the old file before the chain moves on to
//! a new one. The background thread ([`Shared::syncer_loop`]) serves fsync requests, the batch interval
//! and shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Instant, SystemTime};

use super::builder::Config;
use super::file_io::LogFile;
use super::{AuditStats, Durability, FailureMode, Receipt};
use crate::chain::{ChainHead, build_line};
use crate::clock::format_rfc3339_micros;
use crate::error::AuditError;
use crate::record::Record;

/// What every clone of an [`AuditLog`](super::AuditLog), every pending
/// [`AppendFuture`](super::AppendFuture) and the fsync thread share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) state: Mutex<State>,
    /// Signalled whenever the durable point moves (or records were rewound).
    pub(super) durable_cv: Condvar,
    /// Wakes the fsync thread.
    pub(super) syncer_cv: Condvar,
}

/// How far the file is known to be on disk. Tickets number successful writes and are
/// never reused (unlike sequence numbers after a rewind).
#[derive(Debug, Clone, Copy)]
pub(super) struct DurablePoint {
    pub(super) ticket: u64,
    pub(super) offset: u64,
    pub(super) head: ChainHead,
    pub(super) file_id: u64,
}

/// Tickets whose records were cut off again, and why.
#[derive(Debug)]
pub(super) struct Rewound {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) error: AuditError,
}

/// The writer's state, behind [`Shared::state`].
#[derive(Debug)]
pub(super) struct State {
    pub(super) file: Arc<dyn LogFile>,
    pub(super) path: PathBuf,
    pub(super) index: u64,
    /// Changes on every rotation, so a finished fsync of an older file is recognised.
    pub(super) file_id: u64,
    pub(super) file_started: SystemTime,
    /// Length of the complete records in the current file.
    pub(super) offset: u64,
    pub(super) head: ChainHead,
    pub(super) written_ticket: u64,
    pub(super) durable: DurablePoint,
    /// Tickets whose records were cut off again after a failed fsync (`Always` only).
    pub(super) rewound: Vec<Rewound>,
    pub(super) syncing: bool,
    pub(super) sync_requested: bool,
    /// A failed write left bytes that could not be cut off yet.
    pub(super) pending_truncate: Option<u64>,
    /// A writer is rotating to a new file (with the lock released for its slow parts):
    /// other writers wait on `durable_cv` until it is done.
    pub(super) rotating: bool,
    pub(super) wakers: BTreeMap<u64, Waker>,
    pub(super) shutdown: bool,
    pub(super) stats: AuditStats,
    pub(super) line: Vec<u8>,
    pub(super) last_batch_sync: Instant,
}

impl State {
    pub(super) fn rewound_error(&self, ticket: u64) -> Option<AuditError> {
        self.rewound
            .iter()
            .rev()
            .find(|r| (r.from..=r.to).contains(&ticket))
            .map(|r| r.error.clone())
    }

    /// `Some` once the record with this ticket is durable (`Ok`) or was cut off (`Err`).
    pub(super) fn resolve(&self, ticket: u64) -> Option<Result<(), AuditError>> {
        if let Some(err) = self.rewound_error(ticket) {
            return Some(Err(err));
        }
        (ticket <= self.durable.ticket).then_some(Ok(()))
    }
}

/// What [`Shared::write`] leaves to do.
pub(super) enum Step {
    /// Finished: the receipt or the error.
    Done(Result<Receipt, AuditError>),
    /// Written; wait for ticket `ticket` to be durable before handing out `receipt`.
    Wait { ticket: u64, receipt: Receipt },
}

pub(super) type Guard<'a> = MutexGuard<'a, State>;

impl Shared {
    pub(super) fn lock(&self) -> Guard<'_> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits (lock released) until the durable point moves, an fsync ends or a rotation
    /// finishes: whatever `publish` announces.
    pub(super) fn wait_for_news<'a>(&'a self, st: Guard<'a>) -> Guard<'a> {
        self.durable_cv
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the background thread for an fsync of everything written so far.
    pub(super) fn request_sync(&self, st: &mut State) {
        if !st.sync_requested {
            st.sync_requested = true;
            self.syncer_cv.notify_all();
        }
    }

    /// Sequences, chains and writes one record.
    pub(super) fn write(&self, record: Record) -> Step {
        let body = match record.encode_body(&self.config.redactor) {
            Ok(b) => b,
            Err(e) => return Step::Done(Err(e)),
        };
        let st = self.lock();
        if st.shutdown {
            return Step::Done(Err(AuditError::Closed));
        }
        // seq, ts and the hashes add well under 256 bytes to the body. The rotation may
        // release the lock meanwhile (see `rotation`), so what follows looks at the
        // state afresh.
        let (mut st, rotated) = self.rotate_if_due(st, body.len() as u64 + 256);
        if let Err(err) = rotated {
            return Step::Done(self.write_failed(&mut st, err));
        }
        if let Some(len) = st.pending_truncate {
            if let Err(e) = st.file.set_len(len) {
                let err = AuditError::io("truncate", &st.path, e);
                return Step::Done(self.write_failed(&mut st, err));
            }
            st.pending_truncate = None;
        }
        let seq = st.head.next_seq;
        let ts = format_rfc3339_micros(SystemTime::now());
        let mut line = std::mem::take(&mut st.line);
        let hash = build_line(&mut line, seq, &ts, &body, &st.head.hash);
        let written = st.file.write_all(&line);
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
    pub(super) fn write_failed(
        &self,
        st: &mut State,
        err: AuditError,
    ) -> Result<Receipt, AuditError> {
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
    pub(super) fn settle(
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
    pub(super) fn wait_ticket<'a>(
        &'a self,
        mut st: Guard<'a>,
        ticket: u64,
    ) -> (Guard<'a>, Result<(), AuditError>) {
        loop {
            if let Some(r) = st.resolve(ticket) {
                return (st, r);
            }
            if st.syncing {
                st = self.wait_for_news(st);
            } else {
                st = self.run_sync(st).0;
            }
        }
    }

    /// One fsync of everything written so far, without holding the lock meanwhile.
    pub(super) fn run_sync<'a>(&'a self, mut st: Guard<'a>) -> (Guard<'a>, Result<(), AuditError>) {
        st.syncing = true;
        let target = DurablePoint {
            ticket: st.written_ticket,
            offset: st.offset,
            head: st.head,
            file_id: st.file_id,
        };
        let file = Arc::clone(&st.file);
        let path = st.path.clone();
        drop(st);
        let res = file.sync_data();
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
    pub(super) fn sync_failed(&self, st: &mut State, err: AuditError) {
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
    pub(super) fn publish(&self, st: &mut State) {
        let rest = st.wakers.split_off(&(st.durable.ticket + 1));
        for (_, w) in std::mem::replace(&mut st.wakers, rest) {
            w.wake();
        }
        self.durable_cv.notify_all();
        if st.sync_requested || st.shutdown {
            self.syncer_cv.notify_all();
        }
    }

    /// The background thread: fsyncs for async waiters, on the batch interval, and
    /// once more at shutdown.
    pub(super) fn syncer_loop(&self) {
        let mut st = self.lock();
        loop {
            let pending = st.written_ticket > st.durable.ticket;
            if st.shutdown {
                if st.syncing {
                    st = self.wait_for_news(st);
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
    use std::path::Path;

    use super::*;
    use crate::log::AuditLog;
    use crate::log::file_io::faults::FaultyFiles;
    use crate::verify_files;

    thread_local! {
        static FAULTS: FaultyFiles = FaultyFiles::default();
    }

    /// A log whose files fail fsyncs when [`fail_next_fsyncs`] says so.
    fn open(dir: &Path, durability: Durability, mode: FailureMode) -> AuditLog {
        AuditLog::builder(dir)
            .durability(durability)
            .failure_mode(mode)
            .log_files(Arc::new(FAULTS.with(Clone::clone)))
            .open()
            .unwrap()
    }

    fn fail_next_fsyncs(_log: &AuditLog, n: u32) {
        FAULTS.with(|f| f.fail_next_fsyncs(n));
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
