//! The writer's output always verifies; a damaged last file is either recovered (torn
//! tail moved aside, nothing else lost, the chain verifies after a new append) or
//! refused as corrupt — never silently accepted.
//!
//! Input: a record count, record contents, then one mutation (flip a byte, truncate,
//! or insert bytes) of the newest file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zt_audit::{AuditError, AuditLog, Durability, Record, Redactor, verify_files};

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else { return };
    let count = usize::from(count % 12);
    let (contents, mutation) = rest.split_at(rest.len().min(count * 16));
    // tmpfs when available: fsync is free there, and this target fsyncs a lot.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let open = || {
        AuditLog::builder(dir.path())
            .durability(Durability::None)
            .max_file_size(1200)
            .redactor(Redactor::insecure_empty())
            .open()
    };

    let log = open().unwrap();
    for chunk in contents.chunks(16).chain(std::iter::repeat(&[][..])).take(count) {
        let text = String::from_utf8_lossy(chunk).into_owned();
        let value = serde_json::from_slice::<Value>(chunk).unwrap_or_else(|_| Value::String(text.clone()));
        log.append(Record::new(text.clone()).subject(text).field("v", value)).unwrap();
    }
    let files = log.files().unwrap();
    drop(log);
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact(), "writer output does not verify: {:?}", report.problem);
    assert_eq!(report.records, count as u64);

    let (Some(&op), Some(newest)) = (mutation.first(), files.last()) else { return };
    let original = std::fs::read(newest).unwrap();
    let mut bytes = original.clone();
    let pos = mutation.get(1..3).map_or(0, |p| usize::from(u16::from_le_bytes([p[0], p[1]])));
    let pos = pos % (bytes.len() + 1);
    let extra = mutation.get(3..).unwrap_or_default();
    match op % 3 {
        0 if pos < bytes.len() => bytes[pos] ^= extra.first().copied().unwrap_or(1).max(1),
        1 => bytes.truncate(pos),
        _ => {
            bytes.splice(pos..pos, extra.iter().copied());
        }
    }
    if bytes == original {
        return;
    }
    std::fs::write(newest, &bytes).unwrap();
    let damaged = verify_files(&files).unwrap();
    let cut_at_line_end = op % 3 == 1 && (pos == 0 || bytes.ends_with(b"\n"));
    assert_eq!(damaged.is_intact(), cut_at_line_end, "{:?}", damaged.problem);

    match open() {
        Ok(log) => {
            // The good prefix stayed, the rest went to a side file: nothing vanished.
            let kept = std::fs::read(newest).unwrap();
            assert!(bytes.starts_with(&kept));
            match log.stats().torn_tail {
                Some(side) => assert_eq!(std::fs::read(side).unwrap(), &bytes[kept.len()..]),
                None => assert_eq!(kept, bytes),
            }
            log.append(Record::new("after")).unwrap();
            let files = log.files().unwrap();
            let report = verify_files(&files).unwrap();
            assert!(report.is_intact(), "recovered log does not verify: {:?}", report.problem);
        }
        Err(AuditError::Corrupt { file, .. }) => assert_eq!(&file, newest),
        Err(other) => panic!("unexpected error: {other}"),
    }
});
