//! Decision latency and throughput.
//!
//! - RBAC: 100 roles × 10 permissions, subjects bound to 3 roles (allowed decision matches
//!   the last role's permission, the denied one scans all 30);
//! - OPA-Envoy style: `tests/fixtures/envoy` (Basic credentials, roles, paths).
//!
//! Each is measured with the interpreter and the compiled (RVM) form, per-thread and pooled,
//! side by side. After criterion, with `--bench`, it prints a latency histogram (p50/p99 over
//! 100,000 decisions on one thread) and decisions per second with one and two threads.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use base64::Engine as _;
use criterion::{BenchmarkId, Criterion};
use policy_rego::{
    BundleLoader, BundleWriter, Evaluator, InputBuilder, InputOptions, Manifest, PolicyEngine,
    PolicyInput, PolicyOptions, PolicySet,
};

const RBAC_POLICY: &str = r#"
package bench.rbac

import input.attributes.request.http as req

default allow := false

allow if {
	some role in data.rbac.bindings[input.attributes.source.principal]
	some perm in data.rbac.roles[role]
	perm.method == req.method
	perm.path == req.path
}
"#;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn rbac_data() -> String {
    let mut roles = serde_json::Map::new();
    for r in 0..100 {
        let perms: Vec<_> = (0..10)
            .map(|p| serde_json::json!({"method": METHODS[p % 5], "path": format!("/api/r{r}/p{p}")}))
            .collect();
        roles.insert(format!("role-{r}"), serde_json::Value::Array(perms));
    }
    let mut bindings = serde_json::Map::new();
    for s in 0..1000 {
        bindings.insert(
            format!("spiffe://example.org/ns/default/sa/svc-{s}"),
            serde_json::json!([
                format!("role-{}", s % 100),
                format!("role-{}", (s * 7 + 3) % 100),
                format!("role-{}", (s * 13 + 5) % 100)
            ]),
        );
    }
    serde_json::json!({"rbac": {"roles": roles, "bindings": bindings}}).to_string()
}

fn options(evaluator: Evaluator, rule: &str) -> PolicyOptions {
    PolicyOptions::new()
        .decision_rule(rule)
        .evaluator(evaluator)
}

fn rbac_engine(evaluator: Evaluator) -> PolicyEngine {
    let mut m = Manifest::default();
    m.revision = "bench".into();
    let archive = BundleWriter::new()
        .manifest(&m)
        .file("bench/rbac/policy.rego", RBAC_POLICY)
        .file("data.json", rbac_data())
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("rbac", &archive).unwrap();
    let opts = options(evaluator, "data.bench.rbac.allow");
    let set = PolicySet::compile(bundle, &opts).unwrap();
    assert_eq!(set.is_compiled(), evaluator != Evaluator::Interpreter);
    PolicyEngine::with_set(set, opts)
}

fn envoy_engine(evaluator: Evaluator) -> PolicyEngine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoy");
    let opts = options(evaluator, "envoy/authz/allow");
    PolicyEngine::load(dir, opts).unwrap()
}

/// A realistic request: a handful of headers, a peer, an identity.
fn http_input(method: &str, path: &str, principal: &str, basic: Option<&str>) -> PolicyInput {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.example.org")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("x-request-id", "8d4c1c0e-3f4a-4b7b-9d43-5b3a2f0e9c11")
        .header("content-type", "application/json");
    if let Some(user) = basic {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
        b = b.header("authorization", format!("Basic {creds}"));
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    InputBuilder::from_parts(&parts)
        .peer_addr("10.0.0.7:51234".parse().unwrap())
        .identity(serde_json::json!({"spiffe_id": principal, "dns_sans": []}))
        .build(&InputOptions::new().allow_secret_header(http::header::AUTHORIZATION))
}

const SUBJECT: &str = "spiffe://example.org/ns/default/sa/svc-7";

/// svc-7 holds role-7, role-52 and role-96; the allowed request needs role-96's p2 (PUT).
fn rbac_inputs() -> (PolicyInput, PolicyInput) {
    (
        http_input("PUT", "/api/r96/p2", SUBJECT, None),
        http_input("PUT", "/api/r50/p2", SUBJECT, None),
    )
}

fn envoy_inputs() -> (PolicyInput, PolicyInput) {
    (
        http_input(
            "GET",
            "/api/v1/products",
            "spiffe://example.org/x",
            Some("bob"),
        ),
        http_input(
            "GET",
            "/api/v1/products",
            "spiffe://example.org/x",
            Some("alice"),
        ),
    )
}

const VARIANTS: [(Evaluator, &str); 2] = [
    (Evaluator::Interpreter, "interpreter/per_thread"),
    (Evaluator::Auto, "auto/per_thread"),
];

fn bench_policy(
    c: &mut Criterion,
    name: &str,
    make: fn(Evaluator) -> PolicyEngine,
    inputs: (PolicyInput, PolicyInput),
) {
    let (allow, deny) = inputs;
    let mut group = c.benchmark_group(name);
    for (evaluator, label) in VARIANTS {
        let engine = make(evaluator);
        assert!(engine.decide(&allow).allow, "{name} {label}");
        assert!(!engine.decide(&deny).allow, "{name} {label}");
        group.bench_with_input(BenchmarkId::new("allow", label), &allow, |b, i| {
            b.iter(|| black_box(engine.decide(black_box(i))))
        });
        group.bench_with_input(BenchmarkId::new("deny", label), &deny, |b, i| {
            b.iter(|| black_box(engine.decide(black_box(i))))
        });
    }
    group.finish();
}

fn bench_input(c: &mut Criterion) {
    let (parts, ()) = http::Request::builder()
        .method("GET")
        .uri("/api/v1/users/42?expand=roles")
        .header("host", "api.example.org")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("x-request-id", "8d4c1c0e-3f4a-4b7b-9d43-5b3a2f0e9c11")
        .header("authorization", "Bearer x")
        .body(())
        .unwrap()
        .into_parts();
    let opts = InputOptions::default();
    let identity = serde_json::json!({"spiffe_id": SUBJECT, "dns_sans": ["svc-7.local"]});
    let claims = serde_json::json!({"iss": "https://idp", "sub": "alice", "scope": "read"});
    c.bench_function("input/build_from_parts", |b| {
        b.iter(|| {
            black_box(
                InputBuilder::from_parts(black_box(&parts))
                    .peer_addr("10.0.0.7:51234".parse().unwrap())
                    .identity(identity.clone())
                    .token(claims.clone())
                    .build(&opts),
            )
        })
    });
}

// === latency histogram and thread scaling (printed after criterion) ===

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn histogram(label: &str, engine: &PolicyEngine, input: &PolicyInput) {
    const N: usize = 100_000;
    for _ in 0..2_000 {
        black_box(engine.decide(input));
    }
    let mut ns = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        black_box(engine.decide(black_box(input)));
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    println!(
        "latency {label:<40} p50 {:>7.2} µs  p90 {:>7.2} µs  p99 {:>7.2} µs  p99.9 {:>7.2} µs  (n={N}, {})",
        percentile(&ns, 0.50) as f64 / 1e3,
        percentile(&ns, 0.90) as f64 / 1e3,
        percentile(&ns, 0.99) as f64 / 1e3,
        percentile(&ns, 0.999) as f64 / 1e3,
        if engine.current().is_compiled() {
            "compiled form"
        } else {
            "interpreter"
        },
    );
}

/// CPU time of the calling thread (Linux: /proc/thread-self/schedstat), so scaling can be
/// judged on a machine shared with other work.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

struct Rates {
    /// Decisions per wall-clock second, all threads together.
    wall: f64,
    /// Decisions per CPU second, summed over threads: the rate if each had a core.
    cpu: Option<f64>,
}

fn decisions_per_sec(engine: &PolicyEngine, input: &PolicyInput, threads: usize) -> Rates {
    const PER_THREAD: u64 = 60_000;
    let start = std::sync::Barrier::new(threads);
    let t0 = Instant::now();
    let results: Vec<(u64, Option<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let engine = engine.clone();
                let start = &start;
                // Each thread decides on its own copy, as separate requests would.
                let input = PolicyInput::from_json(input.to_json());
                s.spawn(move || {
                    for _ in 0..1_000 {
                        black_box(engine.decide(&input));
                    }
                    start.wait();
                    let cpu0 = thread_cpu_ns();
                    for _ in 0..PER_THREAD {
                        black_box(engine.decide(&input));
                    }
                    let cpu = cpu0.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
                    (PER_THREAD, cpu)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let total: u64 = results.iter().map(|r| r.0).sum();
    let cpu = results
        .iter()
        .map(|(n, cpu)| cpu.map(|c| *n as f64 / (c as f64 / 1e9)))
        .sum::<Option<f64>>();
    Rates {
        wall: total as f64 / wall,
        cpu,
    }
}

fn scaling(label: &str, engine: &PolicyEngine, input: &PolicyInput) {
    let one = decisions_per_sec(engine, input, 1);
    let two = decisions_per_sec(engine, input, 2);
    let cpu = match (one.cpu, two.cpu) {
        (Some(a), Some(b)) => format!(
            "per CPU-second 1 thread {a:>8.0}/s  2 threads {b:>8.0}/s  ratio {:.2}",
            b / a
        ),
        _ => "CPU time unavailable".into(),
    };
    println!(
        "throughput {label:<37} wall 1 thread {:>8.0}/s  2 threads {:>8.0}/s  ratio {:.2} | {cpu}",
        one.wall,
        two.wall,
        two.wall / one.wall
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_policy(&mut c, "rbac_100x10", rbac_engine, rbac_inputs());
    bench_policy(&mut c, "opa_envoy", envoy_engine, envoy_inputs());
    bench_input(&mut c);
    c.final_summary();

    // Only under `cargo bench` (not `cargo test --benches`).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (rbac_allow, rbac_deny) = rbac_inputs();
    let (envoy_allow, envoy_deny) = envoy_inputs();
    for (evaluator, label) in VARIANTS {
        let rbac = rbac_engine(evaluator);
        histogram(&format!("rbac allow {label}"), &rbac, &rbac_allow);
        histogram(&format!("rbac deny {label}"), &rbac, &rbac_deny);
        let envoy = envoy_engine(evaluator);
        histogram(&format!("envoy allow {label}"), &envoy, &envoy_allow);
        histogram(&format!("envoy deny {label}"), &envoy, &envoy_deny);
    }
    for (evaluator, label) in VARIANTS {
        scaling(
            &format!("rbac allow {label}"),
            &rbac_engine(evaluator),
            &rbac_allow,
        );
    }
    scaling(
        "envoy allow auto/per_thread",
        &envoy_engine(Evaluator::Auto),
        &envoy_allow,
    );
}
