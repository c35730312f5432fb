//! Crash recovery on open: a torn last record is moved aside (never deleted) and the
//! chain resumes; damage before the last line is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use zt_audit::{AuditError, AuditLog, Durability, Record, VerifyFailure, verify_files};

fn open(dir: &Path) -> AuditLog {
    AuditLog::builder(dir)
        .durability(Durability::None)
        .open()
        .unwrap()
}

fn write_records(dir: &Path, n: usize) -> PathBuf {
    let log = open(dir);
    for i in 0..n {
        log.append(Record::new("k").field("i", i)).unwrap();
    }
    log.current_file()
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// A complete, well-formed line whose hash is wrong.
fn bad_hash_line(dir: &Path) -> Vec<u8> {
    let other = tempfile::tempdir_in(dir).unwrap();
    let f = write_records(other.path(), 6);
    let text = std::fs::read_to_string(f).unwrap();
    let last = text
        .lines()
        .last()
        .unwrap()
        .replacen("\"i\":5", "\"i\":6", 1);
    format!("{last}\n").into_bytes()
}

fn check_torn_tail_recovery(tail: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_records(dir.path(), 5);
    let good = std::fs::read(&file).unwrap();
    append_bytes(&file, tail);

    let log = open(dir.path());
    let side = log.stats().torn_tail.expect("torn tail not reported");
    assert_eq!(side, PathBuf::from(format!("{}.torn", file.display())));
    assert_eq!(
        std::fs::read(&side).unwrap(),
        tail,
        "the torn bytes must be kept"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        good,
        "the good records must stay as they were"
    );
    assert_eq!(log.append(Record::new("k")).unwrap().seq(), Some(6));
    let report = verify_files(&log.files().unwrap()).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.records, 6);
}

#[test]
fn a_partial_last_line_is_moved_aside() {
    check_torn_tail_recovery(b"{\"seq\":6,\"ts\":\"2025-11-");
}

#[test]
fn a_garbage_last_line_is_moved_aside() {
    check_torn_tail_recovery(b"this is not json\n");
}

#[test]
fn a_zero_filled_tail_is_moved_aside() {
    check_torn_tail_recovery(&[0u8; 4096]);
}

#[test]
fn a_complete_last_line_with_a_bad_hash_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    check_torn_tail_recovery(&bad_hash_line(dir.path()));
}

#[test]
fn repeated_crashes_keep_every_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_records(dir.path(), 2);
    append_bytes(&file, b"first torn");
    drop(open(dir.path()));
    append_bytes(&file, b"second torn");
    let log = open(dir.path());
    let second = log.stats().torn_tail.unwrap();
    assert_eq!(second, PathBuf::from(format!("{}.torn.1", file.display())));
    assert_eq!(
        std::fs::read(format!("{}.torn", file.display())).unwrap(),
        b"first torn"
    );
    assert_eq!(std::fs::read(second).unwrap(), b"second torn");
    // Side files are not log files.
    assert_eq!(log.files().unwrap(), vec![file]);
}

#[test]
fn a_torn_first_line_of_a_new_file_resumes_from_the_older_file() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 3);
    let newer = dir.path().join("audit-00000002.jsonl");
    std::fs::write(&newer, b"{\"seq\":4,").unwrap();
    let log = open(dir.path());
    assert!(log.stats().torn_tail.is_some());
    assert_eq!(log.append(Record::new("k")).unwrap().seq(), Some(4));
    assert_eq!(log.current_file(), newer);
    assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
}

#[test]
fn damage_before_the_last_line_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_records(dir.path(), 5);
    let text = std::fs::read_to_string(&file).unwrap();
    let damaged = text.replacen("\"i\":2", "\"i\":7", 1);
    std::fs::write(&file, &damaged).unwrap();

    let err = AuditLog::builder(dir.path()).open().unwrap_err();
    match err {
        AuditError::Corrupt {
            file: f,
            line,
            reason,
        } => {
            assert_eq!((f, line, reason), (file.clone(), 3, VerifyFailure::BadHash));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), damaged);
    let torn_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".torn")
        })
        .count();
    assert_eq!(torn_files, 0);
}

#[test]
fn a_clean_log_reopens_without_side_files() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 3);
    let log = open(dir.path());
    assert_eq!(log.stats().torn_tail, None);
    assert_eq!(log.stats().durable_seq, 3);
}
