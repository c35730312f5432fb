//! Helpers shared by zt-tower's integration tests: reading what an audit log holds and
//! waiting for the acceptor's counters or the log to get somewhere (polling with a
//! deadline, never a fixed sleep as synchronisation).
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use zt_audit::AuditLog;
use zt_tower::{AcceptorStats, AcceptorStatsHandle};

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// Every line of every file of `log`, parsed, oldest first (the chain is not checked).
pub(crate) fn audit_lines(log: &AuditLog) -> Vec<Value> {
    let mut out = Vec::new();
    for file in log.files().unwrap() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

/// Every line of `log` after checking the whole hash chain (intact, and holding exactly
/// the lines read).
pub(crate) fn verified_audit_lines(log: &AuditLog) -> Vec<Value> {
    let report = zt_audit::verify_files(&log.files().unwrap()).unwrap();
    assert!(report.is_intact(), "{}", report.problem.unwrap());
    let all = audit_lines(log);
    assert_eq!(all.len() as u64, report.records);
    all
}

/// Waits up to `guard` until the log holds at least `n` records; returns them all.
pub(crate) async fn wait_for_audit_lines(log: &AuditLog, n: usize, guard: Duration) -> Vec<Value> {
    let deadline = Instant::now() + guard;
    loop {
        let all = audit_lines(log);
        if all.len() >= n {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} records: {all:#?}",
            all.len()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits up to `guard` until the acceptor's counters satisfy `done`.
pub(crate) async fn wait_for_stats(
    stats: &AcceptorStatsHandle,
    guard: Duration,
    done: impl Fn(&AcceptorStats) -> bool,
) -> AcceptorStats {
    let deadline = Instant::now() + guard;
    loop {
        let now = stats.get();
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "counters never got there: {now:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}
