//! The L7 rule file parser on arbitrary bytes: never panics; whatever it accepts keeps the
//! promises validation makes (every rule path is canonical, within MAX_PATH, and a request
//! for exactly that path is matched by a rule of at least that length, the same way by the
//! kernel twin and the in-process decision).
#![no_main]

use ebpf_l7_filter::{Classification, MAX_PATH, Method, Reason, RuleSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = RuleSet::from_yaml(text) else {
        return;
    };
    for rule in rules.rules() {
        let path = rule.path().path();
        assert!(path.len() <= MAX_PATH && path.starts_with('/'));
        let method = rule.methods().and_then(|m| m.iter().next()).unwrap_or(Method::Get);
        let http_method = http::Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let decided = rules.decide(&http_method, path);
        assert_eq!(decided.reason(), Reason::Rule, "rule {} does not match its own path", rule.id());
        let winner = &rules.rules()[decided.rule_index().unwrap()];
        assert!(winner.path().path().len() >= path.len());
        let line = format!("{method} {path} HTTP/1.1\r\n\r\n");
        match rules.classify_segment(line.as_bytes()) {
            Classification::Request(r) => assert_eq!(r.decision(), decided),
            Classification::NotRequest => panic!("{line:?} is a request"),
        }
    }
});
