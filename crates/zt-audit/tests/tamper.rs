//! Edits, deletions, reorderings and forgeries are found, and verification names the
//! file and line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zt_audit::{AuditLog, Durability, Record, VerifyFailure, VerifyProblem, verify_files};

/// A log of 12 records over at least two files; returns the directory and the files.
fn log_with_two_files() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .max_file_size(6 * 420)
        .open()
        .unwrap();
    for i in 1..=12 {
        log.append(
            Record::new("http.request")
                .subject(format!("user-{i:02}"))
                .action("GET")
                .resource(format!("/items/{i}"))
                .decision("allow"),
        )
        .unwrap();
    }
    let files = log.files().unwrap();
    assert!(files.len() >= 2, "{files:?}");
    assert!(verify_files(&files).unwrap().is_intact());
    (dir, files)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn problem(files: &[PathBuf]) -> VerifyProblem {
    let report = verify_files(files).unwrap();
    report.problem.expect("tampering not detected")
}

#[test]
fn a_flipped_byte_is_found_at_its_line() {
    let (_dir, files) = log_with_two_files();
    let original = std::fs::read(&files[0]).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            original
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| i < original.len())
        .collect();
    // Every byte of line 3, one at a time.
    let (start, end) = (line_starts[2], line_starts[3] - 1);
    for pos in start..end {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x20;
        std::fs::write(&files[0], &bytes).unwrap();
        let p = problem(&files);
        assert_eq!(
            (p.file.as_path(), p.line),
            (files[0].as_path(), 3),
            "flip at byte {pos}: {p}"
        );
    }
    // A flip inside a value leaves valid JSON: the hash gives it away.
    let text = String::from_utf8(original.clone()).unwrap();
    std::fs::write(&files[0], text.replacen("user-03", "user-0#", 1)).unwrap();
    let p = problem(&files);
    assert_eq!((p.line, &p.reason), (3, &VerifyFailure::BadHash));
    assert_eq!(
        p.to_string(),
        format!(
            "{}:3: bad hash: the record does not match its hash",
            files[0].display()
        )
    );
    // A flip in the second file is reported there.
    std::fs::write(&files[0], &original).unwrap();
    let second = std::fs::read_to_string(&files[1]).unwrap();
    let target = read_lines(&files[1])[1].clone();
    let subject = &target[target.find("user-").unwrap()..][..7];
    std::fs::write(&files[1], second.replacen(subject, "user-99", 1)).unwrap();
    let p = problem(&files);
    assert_eq!(
        (p.file.as_path(), p.line, p.reason),
        (files[1].as_path(), 2, VerifyFailure::BadHash)
    );
}

#[test]
fn a_deleted_line_is_found() {
    let (_dir, files) = log_with_two_files();
    let mut lines = read_lines(&files[0]);
    lines.remove(3); // record 4
    write_lines(&files[0], &lines);
    let p = problem(&files);
    assert_eq!((p.file.as_path(), p.line), (files[0].as_path(), 4));
    assert_eq!(
        p.reason,
        VerifyFailure::SeqGap {
            expected: 4,
            found: 5
        }
    );
}

#[test]
fn deleting_the_first_or_last_record_of_a_file_is_found() {
    let (_dir, files) = log_with_two_files();
    let original = read_lines(&files[0]);
    let mut lines = original.clone();
    lines.remove(0);
    write_lines(&files[0], &lines);
    let p = problem(&files);
    assert_eq!((p.file.as_path(), p.line), (files[0].as_path(), 1));
    assert_eq!(
        p.reason,
        VerifyFailure::SeqGap {
            expected: 1,
            found: 2
        }
    );

    let mut lines = original.clone();
    lines.pop();
    write_lines(&files[0], &lines);
    let p = problem(&files);
    assert_eq!((p.file.as_path(), p.line), (files[1].as_path(), 1));
    assert!(matches!(p.reason, VerifyFailure::SeqGap { .. }), "{p}");
}

#[test]
fn swapped_lines_are_found() {
    let (_dir, files) = log_with_two_files();
    let mut lines = read_lines(&files[0]);
    lines.swap(1, 2);
    write_lines(&files[0], &lines);
    let p = problem(&files);
    assert_eq!((p.file.as_path(), p.line), (files[0].as_path(), 2));
    assert_eq!(
        p.reason,
        VerifyFailure::SeqGap {
            expected: 2,
            found: 3
        }
    );
}

#[test]
fn swapped_files_are_found() {
    let (_dir, files) = log_with_two_files();
    let swapped = vec![files[1].clone(), files[0].clone()];
    let p = problem(&swapped);
    assert_eq!((p.file.as_path(), p.line), (files[1].as_path(), 1));
}

#[test]
fn a_duplicated_line_is_found() {
    let (_dir, files) = log_with_two_files();
    let mut lines = read_lines(&files[0]);
    let dup = lines[2].clone();
    lines.insert(3, dup);
    write_lines(&files[0], &lines);
    let p = problem(&files);
    assert_eq!(
        (p.line, p.reason),
        (
            4,
            VerifyFailure::SeqGap {
                expected: 4,
                found: 3
            }
        )
    );
}

/// Rewrites record `index` (0-based) of `lines` with a new subject and a correct hash
/// of its own, as a forger who cannot rewrite the later records would.
fn forge(lines: &mut [String], index: usize, from: &str, to: &str) {
    let line = lines[index].replacen(from, to, 1);
    let cut = line.rfind(",\"hash\":\"").unwrap();
    let canonical = format!("{}}}", &line[..cut]);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let prev = hex::decode(v["prev_hash"].as_str().unwrap()).unwrap();
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(canonical.as_bytes());
    let hash = hex::encode(h.finalize());
    lines[index] = format!("{},\"hash\":\"{hash}\"}}", &line[..cut]);
}

#[test]
fn a_rehashed_forgery_breaks_the_next_link() {
    let (_dir, files) = log_with_two_files();
    let mut lines = read_lines(&files[0]);
    forge(&mut lines, 2, "user-03", "user-66");
    write_lines(&files[0], &lines);
    let p = problem(&files);
    // Record 3 is self-consistent now; record 4 no longer links to it.
    assert_eq!((p.line, p.reason), (4, VerifyFailure::BrokenLink));

    // Forging the last record of the log cannot be seen without an anchor: the report
    // gives the last hash to keep elsewhere.
    let (_dir, files) = log_with_two_files();
    let anchor = verify_files(&files).unwrap().last_hash.unwrap();
    let last_file = files.last().unwrap();
    let mut lines = read_lines(last_file);
    let n = lines.len();
    forge(&mut lines, n - 1, "user-12", "user-66");
    write_lines(last_file, &lines);
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact());
    assert_ne!(report.last_hash.unwrap(), anchor);
}

#[test]
fn torn_and_garbage_lines_are_found() {
    let (_dir, files) = log_with_two_files();
    let last = files.last().unwrap();
    let text = std::fs::read_to_string(last).unwrap();
    std::fs::write(last, &text[..text.len() - 10]).unwrap();
    let p = problem(&files);
    assert_eq!(p.reason, VerifyFailure::MissingNewline);
    assert_eq!(p.line, read_lines(last).len() as u64);

    std::fs::write(last, format!("{text}not json\n")).unwrap();
    let p = problem(&files);
    assert!(matches!(p.reason, VerifyFailure::Unparseable { .. }), "{p}");

    std::fs::write(last, format!("\n{text}")).unwrap();
    assert_eq!(problem(&files).line, 1);
}

#[test]
fn a_missing_file_is_an_error_not_a_report() {
    let (dir, files) = log_with_two_files();
    let mut with_missing = files.clone();
    with_missing.push(dir.path().join("audit-00000099.jsonl"));
    assert!(matches!(
        verify_files(&with_missing),
        Err(zt_audit::AuditError::Io { .. })
    ));
}
