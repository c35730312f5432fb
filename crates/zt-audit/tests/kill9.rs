//! kill -9 a process that appends in `Always` mode, mid-stream: every acknowledged
//! record survives, the chain verifies, and appending continues.
//!
//! The test binary re-runs itself as the writer (`ZT_AUDIT_KILL9_DIR` set): eight
//! threads append and print `ACK <seq>` after each acknowledged append.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use zt_audit::{AuditLog, Durability, Record, verify_files};

const DIR_ENV: &str = "ZT_AUDIT_KILL9_DIR";
const TEST_NAME: &str = "kill9_mid_stream_loses_no_acknowledged_record";

/// The child: append forever (until killed), acknowledging on stdout.
fn run_writer(dir: &Path) {
    let log = AuditLog::builder(dir)
        .durability(Durability::Always)
        .max_file_size(64 * 1024)
        .open()
        .unwrap();
    let padding = "x".repeat(700);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            let padding = padding.clone();
            std::thread::spawn(move || {
                for i in 0..1_000_000u64 {
                    let r = log
                        .append(
                            Record::new("kill9")
                                .field("thread", t)
                                .field("i", i)
                                .field("pad", padding.as_str()),
                        )
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {}", r.seq().unwrap()).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn seqs_in_log(dir: &Path) -> Vec<u64> {
    let files = zt_audit::log_files(dir, "audit").unwrap();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| {
            serde_json::from_str::<Value>(&l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Runs the writer as a child, SIGKILLs it after `after` acknowledgements, and returns
/// every sequence number it acknowledged.
fn run_and_kill(dir: &Path, after: usize) -> BTreeSet<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line.strip_prefix("ACK ")
                && tx.send(seq.parse::<u64>().unwrap()).is_err()
            {
                break;
            }
        }
    });
    let mut acked = BTreeSet::new();
    while acked.len() < after {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(seq) => {
                acked.insert(seq);
            }
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "writer stopped acknowledging after {} records: {e}",
                    acked.len()
                );
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer must have been killed");
    // Acknowledgements already in the pipe count too.
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    acked
}

#[test]
fn kill9_mid_stream_loses_no_acknowledged_record() {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        run_writer(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked = BTreeSet::new();
    for round in 1..=3 {
        acked.extend(run_and_kill(dir.path(), 300));

        // Reopen as the next writer would: recovery moves a torn tail aside.
        let log = AuditLog::builder(dir.path()).open().unwrap();
        let files = log.files().unwrap();
        let report = verify_files(&files).unwrap();
        assert!(
            report.is_intact(),
            "round {round}: {}",
            report.problem.unwrap()
        );
        let present: BTreeSet<u64> = seqs_in_log(dir.path()).into_iter().collect();
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );
        let last = report.last_seq.unwrap();
        assert_eq!(
            present.len() as u64,
            last,
            "round {round}: seqs not contiguous"
        );
        // Appending continues the chain.
        assert_eq!(
            log.append(Record::new("after-kill")).unwrap().seq(),
            Some(last + 1)
        );
        acked.insert(last + 1);
        assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
        eprintln!(
            "round {round}: {} acknowledged in total, {} in the log, {} file(s), torn tail: {:?}",
            acked.len(),
            last + 1,
            files.len(),
            log.stats().torn_tail
        );
    }
}
