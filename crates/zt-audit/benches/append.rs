//! Audit log append costs, each next to its baseline on the same disk in the same run:
//!
//! - `batched/append` (appends/s in `Batched` mode; target ≥ 100,000/s) vs
//!   `baseline/write_line` (a bare `write(2)` of a line of the same size);
//! - `none/append` (the same with no background fsyncs);
//! - `always/append` (one durable append) vs `baseline/write_fdatasync` (a bare write
//!   plus `fdatasync` — the floor for a durable append);
//! - `always/64_writers` (64 threads appending in `Always` mode; time per record), and
//!   the fsyncs per record it took, printed from [`AuditStats`](zt_audit::AuditStats).
//!
//! Set `ZT_AUDIT_BENCH_DIR` to measure on another disk (default: the system temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use zt_audit::{AuditLog, Durability, Record};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("ZT_AUDIT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// A typical request record (~450 bytes written).
fn record(i: u64) -> Record {
    Record::new("http.request")
        .subject("spiffe://example.org/ns/web/sa/frontend")
        .action("GET")
        .resource("/api/v1/users/42")
        .decision("allow")
        .reason("role reader grants GET /api/v1/users/*")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .field("status", 200)
        .field("latency_us", i % 1000)
}

fn line_len() -> usize {
    let dir = bench_dir();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .open()
        .unwrap();
    log.append(record(1)).unwrap();
    std::fs::metadata(log.current_file()).unwrap().len() as usize
}

fn batched(c: &mut Criterion) {
    let len = line_len();
    let mut g = c.benchmark_group("batched");
    g.throughput(Throughput::Elements(1));
    let dir = bench_dir();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Batched {
            interval: Duration::from_millis(10),
        })
        .open()
        .unwrap();
    let mut i = 0u64;
    g.bench_function("append", |b| {
        b.iter(|| {
            i += 1;
            log.append(record(i)).unwrap()
        })
    });
    g.finish();

    // The same without background fsyncs: what the fsync thread costs the appenders.
    let mut g = c.benchmark_group("none");
    g.throughput(Throughput::Elements(1));
    let dir = bench_dir();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::None)
        .open()
        .unwrap();
    g.bench_function("append", |b| {
        b.iter(|| {
            i += 1;
            log.append(record(i)).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(1));
    let base = bench_dir();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.path().join("baseline.jsonl"))
        .unwrap();
    let mut line = vec![b'x'; len - 1];
    line.push(b'\n');
    g.bench_function("write_line", |b| b.iter(|| f.write_all(&line).unwrap()));
    g.finish();
}

fn always(c: &mut Criterion) {
    let len = line_len();
    let mut g = c.benchmark_group("always");
    let dir = bench_dir();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Always)
        .open()
        .unwrap();
    let mut i = 0u64;
    g.bench_function("append", |b| {
        b.iter(|| {
            i += 1;
            log.append(record(i)).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("baseline");
    let base = bench_dir();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.path().join("baseline.jsonl"))
        .unwrap();
    let mut line = vec![b'x'; len - 1];
    line.push(b'\n');
    g.bench_function("write_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&line).unwrap();
            f.sync_data().unwrap();
        })
    });
    g.finish();
}

fn concurrent(c: &mut Criterion) {
    const WRITERS: u64 = 64;
    let mut g = c.benchmark_group("always");
    g.throughput(Throughput::Elements(WRITERS));
    let dir = bench_dir();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Always)
        .open()
        .unwrap();
    let before = log.stats();
    g.bench_with_input(
        BenchmarkId::new("64_writers", WRITERS),
        &WRITERS,
        |b, &writers| {
            b.iter_custom(|iters| {
                let start = Arc::new(std::sync::Barrier::new(writers as usize + 1));
                let threads: Vec<_> = (0..writers)
                    .map(|t| {
                        let log = log.clone();
                        let start = Arc::clone(&start);
                        std::thread::spawn(move || {
                            start.wait();
                            for i in 0..iters {
                                log.append(record(t * 1_000_000 + i)).unwrap();
                            }
                        })
                    })
                    .collect();
                start.wait();
                let t0 = Instant::now();
                for t in threads {
                    t.join().unwrap();
                }
                t0.elapsed()
            })
        },
    );
    g.finish();
    let after = log.stats();
    let records = after.records - before.records;
    let fsyncs = after.fsyncs - before.fsyncs;
    if records == 0 {
        return; // filtered out
    }
    println!(
        "always/64_writers: {records} records, {fsyncs} fsyncs, {:.4} fsyncs per record ({:.1} records per fsync)",
        fsyncs as f64 / records.max(1) as f64,
        records as f64 / fsyncs.max(1) as f64
    );
}

criterion_group!(benches, batched, always, concurrent);
criterion_main!(benches);
