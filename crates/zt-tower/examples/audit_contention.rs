//! How long does an audit append block the thread that makes it? `AuditLayer` calls
//! `AuditLog::append_async` (and `submit` from its drop guard) on the async worker that
//! serves the request: the record is encoded, then sequenced, chained and written with one
//! `write(2)` under the log's `std::sync::Mutex`; only the fsync wait is asynchronous.
//!
//! T threads (1, 2, 4, 16) each append records back to back and time the synchronous part
//! of every call (what a worker is blocked for), then await durability as `AuditLayer`
//! does. Once with the default 64 MiB files, once with 256 KiB files so that rotations (an
//! fsync of the old file and of the directory, under the lock) show up in the tail.
//!
//!   cargo run --release -p zt-tower --all-features --example audit_contention -- [RECORDS_PER_THREAD]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use zt_audit::{AuditLog, Record};

fn record(i: usize) -> Record {
    Record::new("http.request")
        .subject("spiffe://example.org/ns/web/sa/frontend")
        .action("GET")
        .resource(format!("/api/v1/orders/{i}"))
        .decision("allow")
        .field("decided_by", "policy")
        .field("status", 200)
}

fn run(threads: usize, per_thread: usize, max_file_size: u64) -> (Vec<Duration>, Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .max_file_size(max_file_size)
        .open()
        .unwrap();
    let barrier = Arc::new(Barrier::new(threads));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                barrier.wait();
                let mut blocked = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let rec = record(t * per_thread + i);
                    let begin = Instant::now();
                    let fut = log.append_async(rec);
                    blocked.push(begin.elapsed());
                    rt.block_on(fut).unwrap();
                }
                blocked
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let elapsed = start.elapsed();
    let files = log.files().unwrap().len() as u64;
    (all, elapsed, files)
}

/// The control: the same threads appending a line of the same length to a file with one
/// `write(2)` under a `std::sync::Mutex`, nothing else. Returns the time each call blocked
/// and the time each held the lock.
fn control(threads: usize, per_thread: usize, line_len: usize) -> (Vec<Duration>, Vec<Duration>) {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("control.log"))
        .unwrap();
    let file = Arc::new(std::sync::Mutex::new(file));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let file = file.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut line = vec![b'x'; line_len];
                line.push(b'\n');
                barrier.wait();
                let mut blocked = Vec::with_capacity(per_thread);
                let mut held = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    let begin = Instant::now();
                    let mut f = file.lock().unwrap();
                    let locked = Instant::now();
                    f.write_all(&line).unwrap();
                    drop(f);
                    let end = Instant::now();
                    held.push(end - locked);
                    blocked.push(end - begin);
                }
                (blocked, held)
            })
        })
        .collect();
    let (mut blocked, mut held) = (Vec::new(), Vec::new());
    for h in handles {
        let (b, l) = h.join().unwrap();
        blocked.extend(b);
        held.extend(l);
    }
    (blocked, held)
}

fn percentiles(mut v: Vec<Duration>) -> [f64; 4] {
    v.sort();
    let at = |q: f64| us(v[((v.len() - 1) as f64 * q).round() as usize]);
    [at(0.5), at(0.99), at(0.999), at(1.0)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let per_thread: usize = std::env::args().nth(1).map_or(500, |a| a.parse().unwrap());
    println!(
        "file size | threads | records | files | records/s | blocked p50 | p99 | p99.9 | max (µs)"
    );
    for max_file_size in [64u64 << 20, 256 << 10] {
        for threads in [1, 2, 4, 16] {
            let (mut blocked, elapsed, files) = run(threads, per_thread, max_file_size);
            blocked.sort();
            let at = |q: f64| blocked[((blocked.len() - 1) as f64 * q).round() as usize];
            println!(
                "{} KiB | {threads} | {} | {files} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1}",
                max_file_size >> 10,
                blocked.len(),
                blocked.len() as f64 / elapsed.as_secs_f64(),
                us(at(0.5)),
                us(at(0.99)),
                us(at(0.999)),
                us(at(1.0)),
            );
        }
    }
    // A record line as `record()` writes it is ≈ 330 bytes.
    println!(
        "\ncontrol: write(2) of a 330-byte line under a std Mutex, 20x the records per thread"
    );
    println!("threads | blocked p50 | p99 | p99.9 | max | lock held p50 | p99 | p99.9 | max (µs)");
    for threads in [1, 2, 4, 16] {
        let (blocked, held) = control(threads, per_thread * 20, 330);
        let [b50, b99, b999, bmax] = percentiles(blocked);
        let [h50, h99, h999, hmax] = percentiles(held);
        println!(
            "{threads} | {b50:.1} | {b99:.1} | {b999:.1} | {bmax:.1} | {h50:.1} | {h99:.1} | {h999:.1} | {hmax:.1}"
        );
    }
}
