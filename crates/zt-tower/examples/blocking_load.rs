//! Does an expensive policy stall cheap requests? A real axum server (two tokio workers)
//! behind `PolicyLayer`, over loopback, with two groups of clients:
//!
//! * **cheap**: 4 keep-alive connections from 127.0.0.2, each sending `GET /cheap` every 2 ms (paced, so
//!   they measure latency, not throughput); the policy allows it at once;
//! * **expensive**: 4 keep-alive connections from 127.0.0.3 hammering `GET /slow` back to back; the
//!   policy iterates 3,000 × 3,000 elements for it and runs out of its time budget.
//!
//! Each round measures the cheap group alone, then with the expensive group running, for
//! every evaluation placement in turn (rotated from round to round, so load changes on the
//! machine hit all of them alike). Prints per-round figures and the medians.
//!
//!   cargo run --release -p zt-tower --all-features --example blocking_load -- [ROUNDS] [SECONDS] [PLACEMENT...]
//!
//! Placements: `inline`, `pool`, `spin` (the control: the default pool, and instead of the
//! expensive group one thread spinning on a core, which is what the pool leaves the
//! expensive group), (the default `PolicyLayer::new`), `pool:N:Q`
//! (`blocking_pool(N, Q)`), `pool:N:Q:P` (and `max_concurrent_per_source(P)`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use policy_rego::{BundleLoader, BundleWriter, PolicyEngine, PolicyOptions, PolicySet};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use zt_tower::PolicyLayer;

const POLICY: &str = r#"package http.authz

default allow := false

allow if input.attributes.request.http.path == "/cheap"

allow if {
    input.attributes.request.http.path == "/slow"
    not slow
}

slow if {
    some a in data.big
    some b in data.big
    a == "never"
}
"#;

const CHEAP_CONNECTIONS: usize = 4;
const CHEAP_INTERVAL: Duration = Duration::from_millis(2);
const EXPENSIVE_CONNECTIONS: usize = 4;

fn engine() -> PolicyEngine {
    let big: Vec<String> = (0..3000).map(|i| format!("item-{i}")).collect();
    let data = serde_json::json!({ "big": big }).to_string();
    let archive = BundleWriter::new()
        .file("authz.rego", POLICY)
        .file("data.json", data)
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new()
        .load_tar_gz("blocking", &archive)
        .unwrap();
    let options = PolicyOptions::new();
    PolicyEngine::with_set(PolicySet::compile(bundle, &options).unwrap(), options)
}

fn layer(placement: &str, engine: PolicyEngine) -> PolicyLayer {
    let layer = PolicyLayer::new(engine);
    match placement {
        "inline" => layer.evaluate_inline(),
        "pool" | "spin" => layer,
        other => {
            let mut parts = other.split(':').skip(1).map(|n| n.parse().unwrap());
            let layer = layer.blocking_pool(parts.next().unwrap(), parts.next().unwrap());
            match parts.next() {
                Some(per_source) => layer.max_concurrent_per_source(per_source),
                None => layer,
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection; responses must carry a content-length (axum's do).
struct Conn {
    stream: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    /// Connects from `local` (each group from its own loopback address, as two clients).
    async fn open(addr: SocketAddr, local: [u8; 4]) -> Conn {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((local, 0).into()).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream: BufReader::new(stream),
            line: String::new(),
            body: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .unwrap();
        self.line.clear();
        self.stream.read_line(&mut self.line).await.unwrap();
        let status: u16 = self.line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            self.line.clear();
            self.stream.read_line(&mut self.line).await.unwrap();
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await.unwrap();
        status
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    count: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    if samples.is_empty() {
        samples.push(Duration::ZERO);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        count: samples.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// The cheap group for `duration`: latencies of every request.
async fn cheap_group(addr: SocketAddr, duration: Duration) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..CHEAP_CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, [127, 0, 0, 2]).await;
            // Spread the connections over the interval.
            tokio::time::sleep(CHEAP_INTERVAL * i as u32 / CHEAP_CONNECTIONS as u32).await;
            let mut tick = tokio::time::interval(CHEAP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + duration;
            let mut samples = Vec::new();
            while Instant::now() < end {
                tick.tick().await;
                let start = Instant::now();
                assert_eq!(conn.get("/cheap").await, 200);
                samples.push(start.elapsed());
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The expensive group until `stop`: latencies of every request.
async fn expensive_group(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..EXPENSIVE_CONNECTIONS {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, [127, 0, 0, 3]).await;
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                // 403: the policy runs out of its budget (or the pool is saturated).
                assert_eq!(conn.get("/slow").await, 403);
                samples.push(start.elapsed());
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

struct Round {
    alone: Stats,
    loaded: Stats,
    slow: Stats,
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn round(placement: &str, engine: &PolicyEngine, duration: Duration) -> Round {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = server.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/cheap", get(|| async { "ok" }))
        .route("/slow", get(|| async { "done" }))
        .layer(layer(placement, engine.clone()));
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    server.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let alone = stats(client_runtime().block_on(cheap_group(addr, duration)));

    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        if placement == "spin" {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                Vec::new()
            })
        } else {
            std::thread::spawn(move || client_runtime().block_on(expensive_group(addr, stop)))
        }
    };
    let loaded = client_runtime().block_on(async {
        // Let the expensive group get going first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        cheap_group(addr, duration).await
    });
    stop.store(true, Ordering::Relaxed);
    let slow = stats(hammer.join().unwrap());
    server.shutdown_background();
    Round {
        alone,
        loaded: stats(loaded),
        slow,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().map_or(5, |a| a.parse().unwrap());
    let duration = Duration::from_secs_f64(args.get(1).map_or(2.0, |a| a.parse().unwrap()));
    let mut placements: Vec<String> = args.iter().skip(2).cloned().collect();
    if placements.is_empty() {
        placements = vec!["inline".into(), "pool".into()];
    }
    let engine = engine();
    let mut results: Vec<Vec<Round>> = placements.iter().map(|_| Vec::new()).collect();
    println!(
        "round placement | cheap alone p50 p99 (ms) | cheap loaded p50 p99 max (ms) | p99 ratio | slow n p50 (ms)"
    );
    for r in 0..rounds {
        for k in 0..placements.len() {
            let i = (r + k) % placements.len();
            let res = round(&placements[i], &engine, duration);
            println!(
                "{r} {} | {} {} | {} {} {} | {:.2} | {} {}",
                placements[i],
                ms(res.alone.p50),
                ms(res.alone.p99),
                ms(res.loaded.p50),
                ms(res.loaded.p99),
                ms(res.loaded.max),
                res.loaded.p99.as_secs_f64() / res.alone.p99.as_secs_f64(),
                res.slow.count,
                ms(res.slow.p50),
            );
            results[i].push(res);
        }
    }
    println!("\nmedians over {rounds} rounds of {duration:?} per phase:");
    println!(
        "placement | alone p50 | alone p99 | loaded p50 | loaded p99 | p99 ratio (median of per-round) | slow req/s | slow p50"
    );
    for (p, rs) in placements.iter().zip(&results) {
        let m = |f: &dyn Fn(&Round) -> f64| median(rs.iter().map(f).collect());
        println!(
            "{p} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} | {:.1}",
            m(&|r| r.alone.p50.as_secs_f64() * 1e3),
            m(&|r| r.alone.p99.as_secs_f64() * 1e3),
            m(&|r| r.loaded.p50.as_secs_f64() * 1e3),
            m(&|r| r.loaded.p99.as_secs_f64() * 1e3),
            m(&|r| r.loaded.p99.as_secs_f64() / r.alone.p99.as_secs_f64()),
            m(&|r| r.slow.count as f64 / duration.as_secs_f64()),
            m(&|r| r.slow.p50.as_secs_f64() * 1e3),
        );
    }
}
