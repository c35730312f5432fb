//! A watched rule file rotates like other material: a good change is published, a bad one
//! is refused (named in the status) while the last good rules keep serving.

use std::time::{Duration, Instant};

use ebpf_l7_filter::{MaterialHolder, RuleSet, RulesHolder, Verdict};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn watched_file_rotates_and_keeps_the_last_good_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        "default: deny\nrules:\n  - { id: health, action: allow, path: { exact: \"/health\" } }\n",
    )
    .unwrap();
    let (holder, handle) = RulesHolder::watch_file(&file, Duration::from_millis(50)).unwrap();
    let verdict = |p: &str| holder.load().decide(&http::Method::GET, p).verdict();
    assert_eq!(verdict("/health"), Verdict::Allow);
    assert_eq!(verdict("/orders"), Verdict::Deny);
    assert_eq!(holder.status().generation, 1);

    std::fs::write(
        &file,
        "default: deny\nrules:\n  - { id: orders, action: allow, path: { prefix: \"/orders\" } }\n",
    )
    .unwrap();
    wait_until("the new rules", || holder.status().generation == 2);
    assert_eq!(verdict("/orders/7"), Verdict::Allow);
    assert_eq!(verdict("/health"), Verdict::Deny);

    // A duplicate id: refused, named in the status; the rules in force keep serving.
    std::fs::write(&file, "rules:\n  - { id: a, action: allow, path: { prefix: \"/\" } }\n  - { id: a, action: allow, path: { prefix: \"/x\" } }\n").unwrap();
    wait_until("the refusal", || holder.status().last_error.is_some());
    let status = holder.status();
    assert_eq!(status.generation, 2);
    assert!(status.last_error.unwrap().message.contains("\"a\""));
    assert_eq!(verdict("/orders/7"), Verdict::Allow);
    drop(handle);
}

#[test]
fn watch_file_fails_closed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        "rules:\n  - { id: x, action: allow, path: { prefix: \"x\" } }\n",
    )
    .unwrap();
    let err = RulesHolder::watch_file(&file, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("\"x\""), "{err}");
    assert!(RulesHolder::watch_file(dir.path().join("none.yaml"), Duration::from_secs(1)).is_err());
}

#[test]
fn same_rules_again_is_no_new_generation() {
    let text = "default: allow\nrules:\n  - { id: a, action: deny, path: { prefix: \"/a\" } }\n";
    let holder = RulesHolder::new(RuleSet::from_yaml(text).unwrap());
    holder.update(RuleSet::from_yaml(text).unwrap()).unwrap();
    assert_eq!(holder.status().generation, 1);
    holder
        .update(RuleSet::from_yaml("default: allow").unwrap())
        .unwrap();
    assert_eq!(holder.status().generation, 2);
}
