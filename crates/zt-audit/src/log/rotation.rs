//! Rotation: starting the next file when the current one is too big or too old.
//!
//! The old file is made durable before the chain moves on, so the new file never continues
//! a chain past a record that could still be lost. The slow parts — that fsync, opening the
//! next file and the fsync of the directory — run without the writer's lock: the rotating
//! writer sets `rotating`, which holds other *writers* back (they wait on `durable_cv`, as
//! they would have waited for the lock), while everything else that takes the lock —
//! [`AuditLog::stats`](super::AuditLog::stats), the alarm, polls of pending
//! [`AppendFuture`](super::AppendFuture)s, the fsync thread — carries on. The fsync of the
//! old file is an ordinary group-commit fsync ([`Shared::run_sync`]): its failure is handled
//! as every failed fsync is.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::file_io::LogFile;
use super::group_commit::{DurablePoint, Guard, Shared, State};
use crate::error::AuditError;
use crate::files;

impl Shared {
    /// Rotates first when the current file cannot take `upcoming` more bytes or is too
    /// old. Waits for a rotation another writer has started. Returns the lock (it may have
    /// been released meanwhile).
    pub(super) fn rotate_if_due<'a>(
        &'a self,
        mut st: Guard<'a>,
        upcoming: u64,
    ) -> (Guard<'a>, Result<(), AuditError>) {
        while st.rotating {
            st = self.wait_for_news(st);
        }
        if !self.rotation_due(&st, upcoming) {
            return (st, Ok(()));
        }
        st.rotating = true;
        let (mut st, result) = self.rotate(st);
        st.rotating = false;
        // Wakes the writers that waited for this rotation.
        self.publish(&mut st);
        (st, result)
    }

    fn rotation_due(&self, st: &State, upcoming: u64) -> bool {
        if st.offset == 0 {
            return false;
        }
        let by_size = st.offset.saturating_add(upcoming) > self.config.max_file_size;
        let by_age = self.config.max_file_age.is_some_and(|age| {
            SystemTime::now()
                .duration_since(st.file_started)
                .is_ok_and(|elapsed| elapsed >= age)
        });
        by_size || by_age
    }

    /// The rotation itself, by the writer that set `rotating` (no record is written until
    /// it is cleared).
    fn rotate<'a>(&'a self, mut st: Guard<'a>) -> (Guard<'a>, Result<(), AuditError>) {
        // 1. Everything written to the old file becomes durable (lock released meanwhile).
        while st.written_ticket > st.durable.ticket {
            if st.syncing {
                st = self.wait_for_news(st);
                continue;
            }
            let (guard, synced) = self.run_sync(st);
            st = guard;
            if let Err(err) = synced {
                return (st, Err(err));
            }
        }
        // 2. The next file, opened and its name made durable without the lock.
        let index = st.index + 1;
        let path = self
            .config
            .dir
            .join(files::file_name(&self.config.prefix, index));
        drop(st);
        let opened = self.open_next(&path);
        let mut st = self.lock();
        let file = match opened {
            Ok(file) => file,
            Err(err) => return (st, Err(err)),
        };
        // 3. The switch. A cut-off still owed concerns the old file (a failed fsync of
        // records already durable can leave one): settle it there, not on the new file.
        if let Some(len) = st.pending_truncate.take()
            && let Err(e) = st.file.set_len(len)
        {
            tracing::error!(file = %st.path.display(), error = %e, "audit log: could not cut off the end of a rotated file");
        }
        tracing::info!(from = %st.path.display(), to = %path.display(), "audit log: rotated");
        st.file = file;
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
        (st, Ok(()))
    }

    /// Opens the file after the current one; it must be new or empty.
    fn open_next(&self, path: &Path) -> Result<Arc<dyn LogFile>, AuditError> {
        let file = self.config.files.open_append(path)?;
        let len = file.len().map_err(|e| AuditError::io("stat", path, e))?;
        if len != 0 {
            return Err(AuditError::Config(format!(
                "next audit log file {} already exists and is not empty",
                path.display()
            )));
        }
        files::sync_dir(&self.config.dir)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use crate::log::file_io::faults::FaultyFiles;
    use crate::{AuditLog, Durability, FailureMode, Record, verify_files};

    use super::*;

    const GUARD: Duration = Duration::from_secs(20);

    /// A log that rotates when a record does not fit in 1000 bytes, fsyncing only when it
    /// must (so the rotation has records to make durable).
    fn small_files(dir: &Path, faults: &FaultyFiles) -> AuditLog {
        AuditLog::builder(dir)
            .durability(Durability::None)
            .failure_mode(FailureMode::Closed)
            .max_file_size(1000)
            .log_files(Arc::new(faults.clone()))
            .open()
            .unwrap()
    }

    fn big() -> Record {
        Record::new("big").field("pad", "x".repeat(800))
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).unwrap().lines().count()
    }

    #[test]
    fn the_rotation_fsync_runs_without_the_lock_and_holds_back_only_writers() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultyFiles::default();
        let log = small_files(dir.path(), &faults);
        log.append(Record::new("small")).unwrap();
        let first = log.current_file();

        let hold = faults.hold_next_fsync();
        let rotating = {
            let log = log.clone();
            std::thread::spawn(move || log.append(big()))
        };
        hold.entered
            .recv_timeout(GUARD)
            .expect("the rotation fsyncs the old file");

        // The rotating writer is inside its fsync. Everything that is not a write still
        // gets the lock (before, this waited for the fsync).
        let (tx, rx) = channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = tx.send((log.stats(), log.alarm(), log.current_file()));
            });
        }
        let (stats, alarm, current) = rx
            .recv_timeout(GUARD)
            .expect("stats() answered while the rotation fsync was running");
        assert_eq!((stats.rotations, alarm), (0, false));
        assert_eq!(current, first);

        // A small record that would still fit in the old file waits for the rotation and
        // goes to the new file: nothing is written to a file being rotated away.
        let waiting = {
            let log = log.clone();
            std::thread::spawn(move || log.append(Record::new("small")))
        };
        hold.release.send(()).unwrap();
        assert_eq!(rotating.join().unwrap().unwrap().seq(), Some(2));
        assert_eq!(waiting.join().unwrap().unwrap().seq(), Some(3));

        // The big record is larger than a file may be, so it got a file of its own and the
        // small one a third; each rotation fsynced the file it left.
        let stats = log.stats();
        assert_eq!((stats.rotations, stats.fsyncs), (2, 2));
        assert_eq!(stats.durable_seq, 2);
        assert_eq!(
            lines(&first),
            1,
            "nothing was written to the file being rotated"
        );
        assert_eq!(lines(&log.current_file()), 1);
        let report = verify_files(&log.files().unwrap()).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.records, 3);
    }

    #[test]
    fn a_failed_rotation_fsync_fails_the_append_and_the_next_one_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultyFiles::default();
        let log = small_files(dir.path(), &faults);
        log.append(Record::new("small")).unwrap();
        let first = log.current_file();

        faults.fail_next_fsyncs(1);
        let err = log.append(big()).unwrap_err();
        assert!(matches!(err, AuditError::Io { op: "fsync", .. }), "{err}");
        let stats = log.stats();
        assert_eq!((stats.rotations, stats.fsync_errors), (0, 1));
        assert!(stats.alarm);
        assert_eq!(log.current_file(), first);

        // The next append rotates (the record that failed took no sequence number).
        assert_eq!(log.append(big()).unwrap().seq(), Some(2));
        assert_eq!(log.stats().rotations, 1);
        assert_ne!(log.current_file(), first);
        assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
    }

    #[test]
    fn an_existing_non_empty_next_file_stops_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = small_files(dir.path(), &FaultyFiles::default());
        log.append(Record::new("small")).unwrap();
        std::fs::write(dir.path().join(files::file_name("audit", 2)), "junk\n").unwrap();
        let err = log.append(big()).unwrap_err();
        assert!(matches!(err, AuditError::Config(_)), "{err}");
        // The writer is not left stuck in `rotating`: the next small record still goes in.
        assert_eq!(log.append(Record::new("small")).unwrap().seq(), Some(2));
    }
}
