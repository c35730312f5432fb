//! Nanoseconds per packet of the kernel classifier, measured by the kernel itself
//! (`BPF_PROG_TEST_RUN` with `repeat`): criterion asks for N iterations, the program runs N
//! times in the kernel and reports its average. Needs root; without it the bench prints why
//! and measures nothing.
//!
//! Targets (issue 10 §5): ≤ 120 ns for an allowed request packet, ≤ 60 ns for a packet that
//! is not a request start, ≤ 500 ns for one that emits an event.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ebpf_l7_filter::{L7Filter, RuleSet};

const RULES: &str = r#"
default: deny
rules:
  - { id: health, action: allow, methods: [GET], path: { exact: "/health" } }
  - { id: orders-read, action: allow, methods: [GET, HEAD], path: { prefix: "/api/orders" } }
  - { id: orders-write, action: audit, methods: [POST], path: { prefix: "/api/orders" } }
  - { id: static, action: allow, path: { prefix: "/static/" } }
"#;

const PORT: u16 = 8080;

fn segment(payload: &[u8], flags: u8) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = u16::try_from(40 + payload.len()).unwrap();
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    p[16..18].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0xc3, 0x50]);
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

fn bench(c: &mut Criterion) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("kernel bench skipped: BPF_PROG_TEST_RUN needs root (CAP_BPF + CAP_NET_ADMIN)");
        return;
    }
    let rules = RuleSet::from_yaml(RULES).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let request = |line: &str| {
        segment(
            format!(
                "{line} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
            )
            .as_bytes(),
            0x18,
        )
    };
    let cases: [(&str, Vec<u8>, bool); 6] = [
        (
            "allowed request (GET /api/orders/7?x=1)",
            request("GET /api/orders/7?x=1"),
            false,
        ),
        (
            "allowed request, long path (96 bytes)",
            request(&format!("GET /static/{}", "a/".repeat(42))),
            false,
        ),
        (
            "not a request start (body bytes)",
            segment(&[b'{'; 200], 0x18),
            false,
        ),
        ("no payload (ACK)", segment(&[], 0x10), false),
        (
            "event per packet (audit POST), NO_WAKEUP",
            request("POST /api/orders"),
            true,
        ),
        (
            "denied flow (later segments dropped, event)",
            request("GET /admin"),
            false,
        ),
    ];
    let mut group = c.benchmark_group("ebpf_l7_filter");
    group.measurement_time(Duration::from_secs(3));
    for (name, packet, batch) in cases {
        let mut builder = L7Filter::builder().ports([PORT]).rules(rules.clone());
        if batch {
            builder = builder.batch_event_wakeups();
        }
        let mut filter = builder.allow_hanging_denied_connections().build().unwrap();
        // The event stream is drained by the filter's reader thread; dropping the receiver
        // makes it count instead of queue.
        drop(filter.events());
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let iters = u32::try_from(iters).unwrap_or(u32::MAX);
                let outcome = filter.test_run(&packet, iters).unwrap();
                outcome.duration * iters
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // The kernel reports whole nanoseconds, so samples are often identical; plotting their
    // (zero-width) distribution fails.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
