//! The kernel filter end to end, as root, in a network namespace the test creates: an axum
//! server behind the filter, curl and a Rust client in front of it.

#![cfg(feature = "kernel")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kernel_support;

use std::process::Command;
use std::time::{Duration, Instant};

use ebpf_l7_filter::{Reason, RuleSet, Verdict};
use futures_util::StreamExt;
use kernel_support::{Site, is_root, raw_request};

const RULES: &str = r#"
default: deny
rules:
  - id: health
    action: allow
    methods: [GET]
    path: { exact: "/health" }
  - id: orders-read
    action: allow
    methods: [GET, HEAD]
    path: { prefix: "/api/orders" }
  - id: orders-write
    action: audit
    methods: [POST]
    path: { prefix: "/api/orders" }
"#;

fn curl(url: &str, method: &str) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
            "-X",
            method,
            url,
        ])
        .output()
        .expect("curl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        start.elapsed(),
    )
}

#[test]
#[ignore = "needs root and curl"]
fn root_allowed_requests_pass_and_denied_ones_are_reset() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let site = Site::start(Some(RuleSet::from_yaml(RULES).expect("rules")));
    let mut events = site.with_filter(|f| f.events().expect("events"));

    let (code, status, _) = curl(&site.url("/health"), "GET");
    assert_eq!((code, status.as_str()), (Some(0), "200"));
    let (code, status, _) = curl(&site.url("/api/orders/7?x=1"), "GET");
    assert_eq!((code, status.as_str()), (Some(0), "200"));

    // Denied: curl sees a reset (exit 56, "Recv failure") well within a second.
    let (code, status, took) = curl(&site.url("/admin"), "GET");
    assert_eq!((code, status.as_str()), (Some(56), "000"), "curl /admin");
    assert!(took < Duration::from_secs(1), "reset after {took:?}");
    let (code, _, took) = curl(&site.url("/api/orders-internal"), "GET");
    assert_eq!(code, Some(56));
    assert!(took < Duration::from_secs(1), "reset after {took:?}");

    // The Rust client: a reset within a second, not a hang.
    let start = Instant::now();
    let err = raw_request(site.netns.server_addr(), "DELETE", "/api/orders/7")
        .expect_err("denied request answered");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    // A path trick is refused too.
    let err = raw_request(site.netns.server_addr(), "GET", "/api/orders/../../admin")
        .expect_err("trick answered");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // Audit: allowed and reported.
    let audited = raw_request(site.netns.server_addr(), "POST", "/api/orders");
    assert!(audited.expect("audited request").contains("200"));

    // The server saw only the allowed requests.
    assert_eq!(
        site.seen(),
        ["GET /health", "GET /api/orders/7?x=1", "POST /api/orders"]
    );

    // Events: the four denials and the audit, in order, with their rule and reason.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let got: Vec<_> = rt.block_on(async {
        let mut got = Vec::new();
        while got.len() < 5 {
            match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
                Ok(Some(e)) => got.push(e),
                _ => break,
            }
        }
        got
    });
    let summary: Vec<_> = got
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.method_text).into_owned(),
                String::from_utf8_lossy(&e.path).into_owned(),
                e.verdict,
                e.reason,
                e.rule_id,
            )
        })
        .collect();
    let s = |m: &str, p: &str, v, r, id| (m.to_owned(), p.to_owned(), v, r, id);
    assert_eq!(
        summary,
        [
            s("GET", "/admin", Verdict::Deny, Reason::Default, 0),
            s(
                "GET",
                "/api/orders-internal",
                Verdict::Deny,
                Reason::Default,
                0
            ),
            s("DELETE", "/api/orders/7", Verdict::Deny, Reason::Default, 0),
            s(
                "GET",
                "/api/orders/../../admin",
                Verdict::Deny,
                Reason::NonCanonical,
                0
            ),
            s("POST", "/api/orders", Verdict::Audit, Reason::Rule, 3),
        ]
    );
    assert!(
        got.iter()
            .all(|e| e.destination_port == kernel_support::PORT)
    );
    let counters = site.with_filter(|f| f.counters().expect("counters"));
    assert_eq!(counters.denied, 4, "{counters:?}");
    assert_eq!(counters.audited, 1, "{counters:?}");
    assert!(counters.sockets_destroyed >= 4, "{counters:?}");
}

/// The child half of `root_unprivileged_load_is_a_clear_error`: runs as `nobody`.
#[test]
#[ignore = "run by root_unprivileged_load_is_a_clear_error as nobody"]
fn unprivileged_child() {
    if std::env::var_os("ZT_L7_CHILD").is_none() {
        return;
    }
    let err = ebpf_l7_filter::L7Filter::builder()
        .interface("lo")
        .ports([8080])
        .build()
        .expect_err("an unprivileged load succeeded");
    println!(
        "ERROR-KIND {:?}",
        matches!(err, ebpf_l7_filter::FilterError::PermissionDenied(_))
    );
    println!("ERROR-TEXT {err}");
}

#[test]
#[ignore = "needs root and setpriv"]
fn root_unprivileged_load_is_a_clear_error() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(exe)
        .args(["--exact", "unprivileged_child", "--ignored", "--nocapture"])
        .env("ZT_L7_CHILD", "1")
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ERROR-KIND true"), "{stdout}");
    assert!(
        stdout.contains("not permitted to load or attach the eBPF filter"),
        "{stdout}"
    );
}

/// What one request of a looping client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Reset,
    Other,
}

fn outcome(result: std::io::Result<String>) -> Outcome {
    match result {
        Ok(status) if status.contains(" 200 ") => Outcome::Ok,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Reset,
        _ => Outcome::Other,
    }
}

/// A client sending `GET path` on a new connection in a loop until stopped; each result with
/// the instant it started.
struct Looper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<(Instant, Outcome)>>,
}

impl Looper {
    fn start(addr: std::net::SocketAddr, path: &'static str) -> Looper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&sent);
        let thread = std::thread::spawn(move || {
            let mut results = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let start = Instant::now();
                results.push((start, outcome(raw_request(addr, "GET", path))));
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            results
        });
        Looper { stop, sent, thread }
    }

    fn wait_for(&self, n: usize, results_so_far: impl Fn() -> usize) {
        while results_so_far() < n {
            std::thread::yield_now();
        }
    }

    fn finish(self) -> Vec<(Instant, Outcome)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("client")
    }
}

fn served(site: &Site, path: &str) -> usize {
    site.seen().iter().filter(|l| l.ends_with(path)).count()
}

#[test]
#[ignore = "needs root"]
fn root_live_rule_change_under_a_looping_client() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let site = Site::start(Some(RuleSet::from_yaml(RULES).expect("rules")));
    let client = Looper::start(site.netns.server_addr(), "/api/orders/7");
    client.wait_for(50, || served(&site, "/api/orders/7"));
    // Flip orders-read from allow to deny, live.
    let flipped = RuleSet::from_yaml(&RULES.replace(
        "  - id: orders-read\n    action: allow",
        "  - id: orders-read\n    action: deny",
    ))
    .expect("flipped rules");
    let before = Instant::now();
    site.with_filter(move |f| f.set_rules(&flipped))
        .expect("set_rules");
    let after = Instant::now();
    // At least 20 more requests, all started after the flip returned.
    let target = client.sent.load(std::sync::atomic::Ordering::Relaxed) + 21;
    client.wait_for(target, || {
        client.sent.load(std::sync::atomic::Ordering::Relaxed)
    });
    let results = client.finish();
    let early: Vec<_> = results.iter().filter(|(t, _)| *t < before).collect();
    let late: Vec<_> = results.iter().filter(|(t, _)| *t > after).collect();
    assert!(
        early.len() >= 50 && late.len() >= 10,
        "{} / {}",
        early.len(),
        late.len()
    );
    assert!(
        early.iter().all(|(_, o)| *o == Outcome::Ok),
        "before the flip: {early:?}"
    );
    assert!(
        late.iter().all(|(_, o)| *o == Outcome::Reset),
        "after the flip: {late:?}"
    );
    assert!(results.iter().all(|(_, o)| *o != Outcome::Other));
    // The server saw none of the requests sent after the flip.
    assert_eq!(
        served(&site, "/api/orders/7"),
        results.iter().filter(|(_, o)| *o == Outcome::Ok).count()
    );
}

#[test]
#[ignore = "needs root"]
fn root_program_replacement_under_load_loses_no_request() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let site = Site::start(Some(RuleSet::from_yaml(RULES).expect("rules")));
    let client = Looper::start(site.netns.server_addr(), "/health");
    for round in 1..=10 {
        client.wait_for(round * 20, || served(&site, "/health"));
        site.with_filter(|f| f.replace_program())
            .expect("replace_program");
    }
    client.wait_for(220, || served(&site, "/health"));
    let results = client.finish();
    assert!(results.len() >= 220);
    assert!(
        results.iter().all(|(_, o)| *o == Outcome::Ok),
        "failed: {:?}",
        results
            .iter()
            .filter(|(_, o)| *o != Outcome::Ok)
            .collect::<Vec<_>>()
    );
    // Still filtering, with the same maps, after ten swaps.
    let err = raw_request(site.netns.server_addr(), "GET", "/admin").expect_err("answered");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let hits = site.with_filter(|f| f.counters().expect("counters"));
    assert!(hits.allowed >= 220 && hits.denied == 1, "{hits:?}");
}

#[test]
#[ignore = "needs root and curl"]
fn root_events_stopped_consumer_keeps_traffic_flowing_and_counts_losses() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let site = Site::start_with(Some(RuleSet::from_yaml(RULES).expect("rules")), |b| {
        b.event_capacity(4)
    });
    // Nobody reads the events.
    let events = site.with_filter(|f| f.events().expect("events"));
    for _ in 0..12 {
        let (code, _, took) = curl(&site.url("/admin"), "GET");
        assert_eq!(code, Some(56));
        assert!(took < Duration::from_secs(1));
        let (code, status, _) = curl(&site.url("/health"), "GET");
        assert_eq!((code, status.as_str()), (Some(0), "200"));
    }
    let c = site.with_filter(|f| f.counters().expect("counters"));
    assert_eq!((c.denied, c.allowed), (12, 12), "{c:?}");
    // 4 events wait in the channel, the other 8 were counted as dropped.
    assert_eq!(c.events_dropped + c.events_lost, 8, "{c:?}");
    drop(events);
}
