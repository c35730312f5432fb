//! The writer through its public API: record format, durability modes, group commit,
//! rotation, reopening, the directory lock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use zt_audit::{
    AuditError, AuditLog, Durability, Receipt, Record, TraceId, Verifier, verify_files,
};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn all_lines(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

fn none_log(dir: &Path) -> AuditLog {
    AuditLog::builder(dir)
        .durability(Durability::None)
        .open()
        .unwrap()
}

#[test]
fn record_line_has_the_documented_fields_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = none_log(dir.path());
    let r = log
        .append(
            Record::new("http.request")
                .subject("spiffe://example.org/ns/web/sa/frontend")
                .action("GET")
                .resource("/api/v1/users/42")
                .decision("deny")
                .reason("missing role")
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .field("status", 403)
                .field("latency_us", 17),
        )
        .unwrap();
    let text = &lines(&log.current_file())[0];
    let keys = [
        "\"seq\":1,",
        "\"ts\":",
        "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"",
        "\"kind\":\"http.request\"",
        "\"subject\":\"spiffe://example.org/ns/web/sa/frontend\"",
        "\"action\":\"GET\"",
        "\"resource\":\"/api/v1/users/42\"",
        "\"decision\":\"deny\"",
        "\"reason\":\"missing role\"",
        "\"status\":403",
        "\"latency_us\":17",
        "\"prev_hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"",
        "\"hash\":",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            text.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "fields out of order: {text}"
    );
    assert!(text.starts_with("{\"seq\":1,"));

    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        Receipt::Written {
            seq: 1,
            hash: v["hash"].as_str().unwrap().to_owned()
        },
        r
    );
    // RFC 3339, UTC, sub-second precision.
    let ts = v["ts"].as_str().unwrap();
    let parsed =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(parsed.offset(), time::UtcOffset::UTC);
    assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
    let age = time::OffsetDateTime::now_utc() - parsed;
    assert!(
        age.whole_seconds().abs() < 3600,
        "timestamp {ts} is not now"
    );
}

#[test]
fn trace_ids_come_from_traceparent_or_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let log = none_log(dir.path());
    log.append(Record::new("a")).unwrap();
    log.append(Record::new("b").traceparent("not a traceparent"))
        .unwrap();
    log.append(
        Record::new("c").traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    )
    .unwrap();
    let id: TraceId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
    log.append(Record::new("d").trace_id(id)).unwrap();
    let recs = all_lines(&log.files().unwrap());
    let ids: Vec<&str> = recs
        .iter()
        .map(|r| r["trace_id"].as_str().unwrap())
        .collect();
    for generated in &ids[..3] {
        assert_eq!(generated.len(), 32);
        assert!(
            generated
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(*generated, "00000000000000000000000000000000");
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert_eq!(ids[3], "0af7651916cd43dd8448eb211c80319c");
}

#[test]
fn free_form_fields_carry_an_opa_decision_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = none_log(dir.path());
    let input = json!({"attributes": {"request": {"http": {"method": "GET", "path": "/x"}}}});
    log.append(
        Record::new("policy.decision")
            .decision("allow")
            .field("decision_id", "4ca636c1-55e4-417a-b1d8-4aceb67960d1")
            .field("path", "http/authz/allow")
            .field("input", input.clone())
            .field("result", true)
            .field("revision", "r42")
            .field("metrics", json!({"timer_eval_ns": 17_500})),
    )
    .unwrap();
    let rec = &all_lines(&log.files().unwrap())[0];
    assert_eq!(rec["decision_id"], "4ca636c1-55e4-417a-b1d8-4aceb67960d1");
    assert_eq!(rec["path"], "http/authz/allow");
    assert_eq!(rec["input"], input);
    assert_eq!(rec["result"], true);
    assert_eq!(rec["revision"], "r42");
    assert_eq!(rec["metrics"]["timer_eval_ns"], 17_500);
    assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
}

#[test]
fn reserved_field_names_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = none_log(dir.path());
    for name in zt_audit::RESERVED_FIELDS {
        let err = log.append(Record::new("k").field(*name, 1)).unwrap_err();
        assert!(
            matches!(err, AuditError::ReservedField(ref f) if f == name),
            "{err}"
        );
    }
    assert_eq!(std::fs::metadata(log.current_file()).unwrap().len(), 0);
    assert_eq!(log.append(Record::new("k")).unwrap().seq(), Some(1));
}

#[test]
fn always_append_returns_only_after_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path()).open().unwrap();
    assert_eq!(log.durability(), Durability::Always);
    for i in 1..=3 {
        let seq = log.append(Record::new("k")).unwrap().seq().unwrap();
        assert_eq!(seq, i);
        let stats = log.stats();
        assert!(
            stats.durable_seq >= seq,
            "append returned before fsync: {stats:?}"
        );
        assert!(stats.fsyncs >= i);
    }
}

#[test]
fn submitted_and_abandoned_records_are_fsynced_by_the_background_thread() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path()).open().unwrap();
    // Written before `submit` returns; nothing awaited, no later append to piggyback on.
    let seq = log.submit(Record::new("submitted")).unwrap().seq().unwrap();
    assert_eq!(lines(&log.current_file()).len(), 1);
    assert!(
        log.wait_durable(seq, Duration::from_secs(30)),
        "a submitted record was never fsynced: {:?}",
        log.stats()
    );
    // A future dropped before it resolves (a cancelled request) leaves the same work
    // to the background thread.
    drop(log.append_async(Record::new("abandoned")));
    assert!(
        log.wait_durable(seq + 1, Duration::from_secs(30)),
        "an abandoned append was never fsynced: {:?}",
        log.stats()
    );
    // Polled once, then dropped: its waker goes with it and the fsync still happens.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let polled = rt.block_on(async {
        tokio::time::timeout(Duration::ZERO, log.append_async(Record::new("polled"))).await
    });
    if polled.is_err() {
        assert!(log.wait_durable(seq + 2, Duration::from_secs(30)));
    }
    // Errors still come back from `submit`, and nothing is written.
    assert!(matches!(
        log.submit(Record::new("k").field("seq", 1)),
        Err(AuditError::ReservedField(_))
    ));
    let report = verify_files(&log.files().unwrap()).unwrap();
    assert!(report.is_intact());
    assert_eq!(report.records, 3);
}

#[test]
fn none_mode_fsyncs_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let log = none_log(dir.path());
    for _ in 0..5 {
        log.append(Record::new("k")).unwrap();
    }
    let stats = log.stats();
    assert_eq!((stats.records, stats.fsyncs, stats.durable_seq), (5, 0, 0));
    log.sync().unwrap();
    let stats = log.stats();
    assert_eq!((stats.fsyncs, stats.durable_seq), (1, 5));
    // Nothing new: no second fsync.
    log.sync().unwrap();
    assert_eq!(log.stats().fsyncs, 1);
}

#[test]
fn batched_mode_fsyncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Batched {
            interval: Duration::from_millis(20),
        })
        .open()
        .unwrap();
    let mut last = 0;
    for _ in 0..100 {
        last = log.append(Record::new("k")).unwrap().seq().unwrap();
    }
    assert!(
        log.wait_durable(last, Duration::from_secs(30)),
        "no background fsync: {:?}",
        log.stats()
    );
    let stats = log.stats();
    assert!(stats.fsyncs >= 1 && stats.fsyncs < 100, "{stats:?}");
    assert_eq!(stats.durable_seq, 100);
}

#[test]
fn concurrent_async_appends_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path()).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let fsyncs_before = log.stats().fsyncs;
    // 64 requests in flight at once: all are written before anyone waits.
    let futures: Vec<_> = (0..64)
        .map(|i| log.append_async(Record::new("k").field("i", i)))
        .collect();
    let seqs = rt.block_on(async {
        let mut seqs = Vec::new();
        for f in futures {
            seqs.push(f.await.unwrap().seq().unwrap());
        }
        seqs
    });
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    let stats = log.stats();
    assert_eq!(
        stats.fsyncs - fsyncs_before,
        1,
        "group commit should need one fsync: {stats:?}"
    );
    assert_eq!(stats.durable_seq, 64);
    // And awaiting from tasks on a multi-thread runtime works too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let seqs = rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { log.append_async(Record::new("k")).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap().seq().unwrap());
        }
        seqs
    });
    assert_eq!(seqs.len(), 32);
    assert!(log.stats().durable_seq >= 96);
    assert!(verify_files(&log.files().unwrap()).unwrap().is_intact());
}

#[test]
fn blocking_appends_from_many_threads_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .max_file_size(8 * 1024)
        .open()
        .unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        log.append(Record::new("k").field("t", t).field("i", i))
                            .unwrap()
                            .seq()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=320).collect::<Vec<_>>());
    let report = verify_files(&log.files().unwrap()).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.records, 320);
    assert!(log.stats().durable_seq == 320);
}

#[test]
fn rotation_by_size_continues_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .max_file_size(2048)
        .open()
        .unwrap();
    for i in 0..50 {
        log.append(Record::new("k").subject(format!("user-{i}")))
            .unwrap();
    }
    let files = log.files().unwrap();
    assert!(files.len() >= 5, "{files:?}");
    assert_eq!(log.stats().rotations as usize, files.len() - 1);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            f.file_name().unwrap().to_str().unwrap(),
            format!("audit-{:08}.jsonl", i + 1)
        );
        assert!(std::fs::metadata(f).unwrap().len() <= 2048);
    }
    for pair in files.windows(2) {
        let last: Value = serde_json::from_str(lines(&pair[0]).last().unwrap()).unwrap();
        let first: Value = serde_json::from_str(&lines(&pair[1])[0]).unwrap();
        assert_eq!(first["prev_hash"], last["hash"]);
        assert_eq!(
            first["seq"].as_u64().unwrap(),
            last["seq"].as_u64().unwrap() + 1
        );
    }
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact());
    assert_eq!(
        (report.files, report.records, report.last_seq),
        (files.len(), 50, Some(50))
    );
    // A suffix of the files is not a whole log, unless that is allowed explicitly.
    assert!(!verify_files(&files[1..]).unwrap().is_intact());
    assert!(
        Verifier::new()
            .allow_partial_start()
            .verify_files(&files[1..])
            .unwrap()
            .is_intact()
    );
}

#[test]
fn rotation_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .max_file_age(Duration::from_secs(3600))
        .open()
        .unwrap();
    for _ in 0..3 {
        log.append(Record::new("k")).unwrap();
    }
    assert_eq!(log.files().unwrap().len(), 1);
    drop(log);
    // Every file is "too old" at once: each record starts a new file.
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .max_file_age(Duration::ZERO)
        .open()
        .unwrap();
    for _ in 0..3 {
        log.append(Record::new("k")).unwrap();
    }
    let files = log.files().unwrap();
    assert_eq!(files.len(), 4);
    assert_eq!(lines(&files[0]).len(), 3);
    assert!(files[1..].iter().all(|f| lines(f).len() == 1));
    assert!(verify_files(&files).unwrap().is_intact());
}

#[test]
fn reopening_resumes_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let log = AuditLog::builder(dir.path())
            .max_file_size(1500)
            .open()
            .unwrap();
        for i in 0..4 {
            assert_eq!(
                log.append(Record::new("k")).unwrap().seq(),
                Some(round * 4 + i + 1)
            );
        }
    }
    let files = zt_audit::log_files(dir.path(), "audit").unwrap();
    let report = verify_files(&files).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.records, 12);
}

#[test]
fn an_empty_newest_file_continues_from_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = none_log(dir.path());
    log.append(Record::new("k")).unwrap();
    drop(log);
    // A crash right after a rotation created the next file.
    std::fs::File::create(dir.path().join("audit-00000002.jsonl")).unwrap();
    let log = none_log(dir.path());
    assert_eq!(log.append(Record::new("k")).unwrap().seq(), Some(2));
    let files = log.files().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(lines(&files[1]).len(), 1);
    assert!(verify_files(&files).unwrap().is_intact());
}

#[test]
fn one_writer_per_log() {
    let dir = tempfile::tempdir().unwrap();
    let first = none_log(dir.path());
    let err = AuditLog::builder(dir.path()).open().unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
    // Another prefix is another log.
    let other = AuditLog::builder(dir.path())
        .file_prefix("decisions")
        .open()
        .unwrap();
    other.append(Record::new("k")).unwrap();
    drop(first);
    let again = AuditLog::builder(dir.path()).open().unwrap();
    again.append(Record::new("k")).unwrap();
    assert_eq!(zt_audit::log_files(dir.path(), "audit").unwrap().len(), 1);
    assert_eq!(
        zt_audit::log_files(dir.path(), "decisions").unwrap().len(),
        1
    );
}

#[test]
fn invalid_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for b in [
        AuditLog::builder(dir.path()).file_prefix(""),
        AuditLog::builder(dir.path()).file_prefix("../x"),
        AuditLog::builder(dir.path()).max_file_size(0),
        AuditLog::builder(dir.path()).durability(Durability::Batched {
            interval: Duration::ZERO,
        }),
        AuditLog::builder(dir.path()).redactor(zt_audit::Redactor::new().pointer("input")),
    ] {
        assert!(matches!(b.open().unwrap_err(), AuditError::Config(_)));
    }
}

#[test]
fn clones_share_one_writer_until_the_last_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Batched {
            interval: Duration::from_secs(3600),
        })
        .open()
        .unwrap();
    let clone = log.clone();
    log.append(Record::new("k")).unwrap();
    drop(log);
    // A clone keeps the writer alive.
    clone.append(Record::new("k")).unwrap();
    assert_eq!(clone.stats().fsyncs, 0);
    let fut = clone.append_async(Record::new("k"));
    drop(clone);
    // Batched futures resolve at once; after the last handle is gone the log is closed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(fut).unwrap().seq(), Some(3));
    let files = zt_audit::log_files(dir.path(), "audit").unwrap();
    assert_eq!(verify_files(&files).unwrap().records, 3);
    // The lock went with the last handle.
    let reopened = AuditLog::builder(dir.path()).open().unwrap();
    assert_eq!(reopened.append(Record::new("k")).unwrap().seq(), Some(4));
}
