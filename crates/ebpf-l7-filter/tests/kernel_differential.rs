//! The kernel program against the userspace twin: generated request lines, run through the
//! loaded program with `BPF_PROG_TEST_RUN` on crafted IPv4 and IPv6 segments, get the same
//! verdict (and the same event) as `RuleSet::classify_segment`.

#![cfg(feature = "kernel")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kernel_support;

use ebpf_l7_filter::{Classification, L7Filter, RuleSet, Verdict};
use futures_util::StreamExt;
use kernel_support::{PORT, ipv4_segment, ipv6_segment, is_root};

fn twin_passes(rules: &RuleSet, payload: &[u8]) -> (bool, Option<(Verdict, u8, u32)>) {
    match rules.classify_segment(payload) {
        Classification::NotRequest => (true, None),
        Classification::Request(r) => {
            let d = r.decision();
            let event = d
                .emits_event()
                .then(|| (d.verdict(), d.reason().code(), d.kernel_rule_id()));
            (d.verdict().is_allowed(), event)
        }
        #[allow(unreachable_patterns)]
        _ => (true, None),
    }
}

#[test]
#[ignore = "needs root (BPF_PROG_TEST_RUN)"]
fn root_kernel_agrees_with_the_twin() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let _guard = rt.enter();
    let mut total = 0usize;
    for seed in 0..12u64 {
        let rules = RuleSet::from_yaml(&ebpf_l7_filter::testing::rule_set_yaml(seed))
            .expect("generated rule set");
        let mut filter = L7Filter::builder()
            .ports([PORT])
            .rules(rules.clone())
            .event_capacity(1 << 16)
            .allow_hanging_denied_connections()
            .build()
            .expect("load");
        let mut events = filter.events().expect("events");
        let lines = ebpf_l7_filter::testing::request_lines(seed, 400);
        let mut expected_events = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            // A new source port per segment: a fresh flow each time.
            let port = 10_000 + u16::try_from(i).expect("port");
            let (pass, event) = twin_passes(&rules, line);
            for packet in [ipv4_segment(line, port), ipv6_segment(line, port)] {
                let outcome = filter.test_run(&packet, 1).expect("test run");
                assert_eq!(
                    outcome.passed,
                    pass,
                    "seed {seed}: {:?} kernel passed={} twin {:?}",
                    String::from_utf8_lossy(line),
                    outcome.passed,
                    rules.classify_segment(line)
                );
                if let Some(e) = event {
                    expected_events.push((e, line.clone()));
                }
            }
            total += 1;
        }
        // Every event the twin predicts, in order, with verdict, reason and rule id.
        let got: Vec<_> = rt.block_on(async {
            let mut got = Vec::new();
            while got.len() < expected_events.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(2), events.next()).await {
                    Ok(Some(e)) => got.push(e),
                    _ => break,
                }
            }
            got
        });
        assert_eq!(got.len(), expected_events.len(), "seed {seed}: event count");
        for (e, ((verdict, reason, rule), line)) in got.iter().zip(&expected_events) {
            assert_eq!(
                (e.verdict, e.reason.code(), e.rule_id),
                (*verdict, *reason, *rule),
                "seed {seed}: event for {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
    assert!(total >= 4000);
}
