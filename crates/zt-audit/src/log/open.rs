//! Opening a log: the directory lock, crash recovery of the newest file (a torn last
//! record is moved to a `.torn` side file), and resuming the hash chain from the newest
//! record on disk, in the newest file or, when that holds none yet, an older one.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use super::builder::AuditLogBuilder;
use super::group_commit::{DurablePoint, Shared, State};
use super::{AuditLog, AuditStats, Inner};
use crate::chain::ChainHead;
use crate::error::AuditError;
use crate::files;

/// Opens the log `b` describes; see [`AuditLogBuilder::open`].
pub(super) fn open(b: AuditLogBuilder) -> Result<AuditLog, AuditError> {
    b.validate()?;
    std::fs::create_dir_all(&b.config.dir)
        .map_err(|e| AuditError::io("create directory", &b.config.dir, e))?;
    let lock = files::lock(&b.config.dir, &b.config.prefix)?;
    let existing = files::indexed_files(&b.config.dir, &b.config.prefix)?;

    let (index, path, recovered) = match existing.last() {
        Some((index, path)) => (*index, path.clone(), Some(files::recover(path)?)),
        None => (
            1,
            b.config.dir.join(files::file_name(&b.config.prefix, 1)),
            None,
        ),
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

    let file = b.config.files.open_append(&path)?;
    if recovered.is_none() {
        files::sync_dir(&b.config.dir)?;
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
        file,
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
        rotating: false,
        wakers: BTreeMap::new(),
        shutdown: false,
        stats: AuditStats {
            durable_seq: head.next_seq - 1,
            torn_tail: torn,
            ..AuditStats::default()
        },
        line: Vec::with_capacity(1024),
        last_batch_sync: Instant::now(),
    };
    let shared = Arc::new(Shared {
        config: b.config,
        state: Mutex::new(state),
        durable_cv: Condvar::new(),
        syncer_cv: Condvar::new(),
    });
    let for_thread = Arc::clone(&shared);
    let syncer = std::thread::Builder::new()
        .name("zt-audit-fsync".into())
        .spawn(move || for_thread.syncer_loop())
        .map_err(|e| AuditError::io("start the fsync thread for", &shared.config.dir, e))?;
    Ok(AuditLog {
        inner: Arc::new(Inner {
            shared,
            syncer: Mutex::new(Some(syncer)),
            _lock: lock,
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crate::{Record, verify_files};

    use super::*;

    fn append_n(log: &AuditLog, n: usize) {
        for i in 0..n {
            log.append(Record::new("t").subject(format!("s{i}")))
                .unwrap();
        }
    }

    #[test]
    fn reopening_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        append_n(&AuditLog::builder(dir.path()).open().unwrap(), 2);
        let log = AuditLog::builder(dir.path()).open().unwrap();
        assert_eq!(log.stats().durable_seq, 2);
        assert_eq!(log.append(Record::new("t")).unwrap().seq(), Some(3));
        let report = verify_files(&log.files().unwrap()).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.records, 3);
    }

    #[test]
    fn an_empty_newest_file_resumes_from_the_last_record_of_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        append_n(&AuditLog::builder(dir.path()).open().unwrap(), 2);
        std::fs::write(dir.path().join(files::file_name("audit", 2)), "").unwrap();
        let log = AuditLog::builder(dir.path()).open().unwrap();
        assert!(log.current_file().ends_with(files::file_name("audit", 2)));
        assert_eq!(log.append(Record::new("t")).unwrap().seq(), Some(3));
        assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
    }

    #[test]
    fn a_torn_last_record_is_moved_aside_and_the_chain_resumes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = AuditLog::builder(dir.path()).open().unwrap();
        append_n(&first, 2);
        let path = first.current_file();
        drop(first);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(br#"{"seq":3,"ts":"2026-"#).unwrap();
        drop(file);

        let log = AuditLog::builder(dir.path()).open().unwrap();
        let torn = log.stats().torn_tail.expect("a torn tail side file");
        assert!(
            std::fs::read_to_string(torn)
                .unwrap()
                .contains(r#""seq":3"#)
        );
        assert_eq!(log.append(Record::new("t")).unwrap().seq(), Some(3));
        assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = AuditLog::builder(dir.path()).open().unwrap();
        let err = AuditLog::builder(dir.path()).open().unwrap_err();
        assert!(matches!(err, AuditError::Locked { .. }), "{err}");
        drop(first);
        AuditLog::builder(dir.path()).open().unwrap();
    }

    #[test]
    fn an_older_file_damaged_before_its_end_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::builder(dir.path()).open().unwrap();
        append_n(&log, 2);
        let path = log.current_file();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\n", "\ngarbage\n", 1)).unwrap();
        std::fs::write(dir.path().join(files::file_name("audit", 2)), "").unwrap();
        let err = AuditLog::builder(dir.path()).open().unwrap_err();
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
    }
}
