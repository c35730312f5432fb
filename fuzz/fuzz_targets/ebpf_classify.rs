//! The kernel twin on untrusted TCP payloads: `classify_segment` never panics, stays within
//! the kernel's limits, and for a complete, canonical request line decides exactly as the
//! in-process `decide` does.
#![no_main]

use std::sync::OnceLock;

use ebpf_l7_filter::{Classification, MAX_METHOD, MAX_PATH, Reason, RuleSet};
use libfuzzer_sys::fuzz_target;

const RULES: [&str; 2] = [
    r#"
default: deny
rules:
  - { id: health, action: allow, methods: [GET], path: { exact: "/health" } }
  - { id: orders-read, action: allow, methods: [GET, HEAD], path: { prefix: "/api/orders" } }
  - { id: orders-write, action: audit, methods: [POST, PUT], path: { prefix: "/api/orders/" } }
  - { id: admin, action: deny, path: { prefix: "/admin" } }
  - { id: grpc, action: allow, methods: [POST], path: { prefix: "/helloworld.Greeter" } }
"#,
    r#"
default: allow
strict_paths: false
rules:
  - { id: admin, action: deny, path: { prefix: "/admin" } }
  - { id: root-audit, action: audit, methods: [DELETE], path: { prefix: "/" } }
"#,
];

fn rule_sets() -> &'static [RuleSet] {
    static SETS: OnceLock<Vec<RuleSet>> = OnceLock::new();
    SETS.get_or_init(|| RULES.iter().map(|r| RuleSet::from_yaml(r).unwrap()).collect())
}

fuzz_target!(|data: &[u8]| {
    for rules in rule_sets() {
        let Classification::Request(r) = rules.classify_segment(data) else {
            continue;
        };
        assert!(r.method_text().len() <= MAX_METHOD);
        assert!(r.path().len() <= MAX_PATH);
        let d = r.decision();
        if let Some(i) = d.rule_index() {
            assert!(i < rules.rules().len());
        }
        if matches!(d.reason(), Reason::Rule | Reason::Default) {
            // A complete, canonical request line: the in-process decision agrees.
            let method = http::Method::from_bytes(r.method_text()).unwrap();
            let path = std::str::from_utf8(r.path()).unwrap();
            assert_eq!(rules.decide(&method, path), d);
        } else if rules.strict_paths() {
            assert!(!d.verdict().is_allowed());
        }
    }
});
