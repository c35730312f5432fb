//! The userspace twin per request: `classify_segment` on typical request packets (allowed,
//! denied, a path trick, not a request start) and `decide` for HTTP and gRPC paths, with the
//! issue's small rule set and with 1,000 rules; beside them, in the same run, the naive
//! matcher (every rule scanned) the fast one replaces.
//!
//!   cargo bench -p ebpf-l7-filter --bench twin
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ebpf_l7_filter::{Method, RuleSet};

const SMALL: &str = r#"
default: deny
rules:
  - { id: health, action: allow, methods: [GET], path: { exact: "/health" } }
  - { id: orders-read, action: allow, methods: [GET, HEAD], path: { prefix: "/api/orders" } }
  - { id: orders-write, action: audit, methods: [POST], path: { prefix: "/api/orders" } }
  - { id: admin, action: deny, path: { prefix: "/admin" } }
  - { id: greeter, action: allow, methods: [POST], path: { prefix: "/helloworld.Greeter" } }
"#;

/// 1,000 rules: services × resources, exact and prefix, half with methods.
fn large() -> RuleSet {
    let mut yaml = String::from("default: deny\nrules:\n");
    for i in 0..1000 {
        let (kind, methods) = match i % 4 {
            0 => ("prefix", ""),
            1 => ("exact", "methods: [GET], "),
            2 => ("prefix", "methods: [POST, PUT], "),
            _ => ("exact", ""),
        };
        yaml.push_str(&format!(
            "  - {{ id: r{i}, action: allow, {methods}path: {{ {kind}: \"/svc{}/res{}\" }} }}\n",
            i / 20,
            i % 20
        ));
    }
    yaml.push_str("  - { id: orders-read, action: allow, methods: [GET], path: { prefix: \"/api/orders\" } }\n");
    RuleSet::from_yaml(&yaml).unwrap()
}

/// The spec read literally: every rule scanned.
fn scan_all(rules: &RuleSet, method: Option<Method>, path: &[u8]) -> Option<usize> {
    let mut best: Option<(usize, (usize, bool, bool))> = None;
    for (i, r) in rules.rules().iter().enumerate() {
        if !r.applies_to(method) || !r.path().matches(path) {
            continue;
        }
        let key = (
            r.path().path().len(),
            r.path().is_exact(),
            r.methods().is_some(),
        );
        if best.is_none_or(|(_, k)| key > k) {
            best = Some((i, key));
        }
    }
    best.map(|(i, _)| i)
}

fn bench(c: &mut Criterion) {
    let small = RuleSet::from_yaml(SMALL).unwrap();
    let large = large();
    let packets: [(&str, &[u8]); 4] = [
        ("allowed", b"GET /api/orders/7?expand=items HTTP/1.1\r\nHost: shop\r\nUser-Agent: curl/7.88\r\nAccept: */*\r\n\r\n"),
        ("denied", b"GET /admin/users HTTP/1.1\r\nHost: shop\r\nUser-Agent: curl/7.88\r\nAccept: */*\r\n\r\n"),
        ("trick", b"GET /api/orders/../../admin HTTP/1.1\r\nHost: shop\r\n\r\n"),
        ("not_a_request", b"{\"order\": {\"id\": 7, \"items\": [1, 2, 3]}}"),
    ];
    let mut group = c.benchmark_group("classify_segment");
    for (name, packet) in packets {
        group.bench_function(format!("{name}/5_rules"), |b| {
            b.iter(|| black_box(small.classify_segment(black_box(packet)).decision()))
        });
    }
    group.bench_function("allowed/1001_rules", |b| {
        b.iter(|| black_box(large.classify_segment(black_box(packets[0].1)).decision()))
    });
    group.finish();

    let mut group = c.benchmark_group("decide");
    let get = http::Method::GET;
    let post = http::Method::POST;
    group.bench_function("http/5_rules", |b| {
        b.iter(|| black_box(small.decide(black_box(&get), black_box("/api/orders/7?expand=items"))))
    });
    group.bench_function("grpc/5_rules", |b| {
        b.iter(|| {
            black_box(small.decide(black_box(&post), black_box("/helloworld.Greeter/SayHello")))
        })
    });
    group.bench_function("http/1001_rules", |b| {
        b.iter(|| black_box(large.decide(black_box(&get), black_box("/api/orders/7?expand=items"))))
    });
    group.bench_function("http/1001_rules/scan_all_baseline", |b| {
        b.iter(|| {
            black_box(scan_all(
                &large,
                Some(Method::Get),
                black_box(b"/api/orders/7"),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
