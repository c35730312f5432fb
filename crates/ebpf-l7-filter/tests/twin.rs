//! The twin against a literal reading of the spec (docs/ebpf.md, "Semantics"): a second,
//! deliberately naive implementation written from the text (string searches, every rule
//! scanned), compared field by field with `classify_segment` and `decide` on the shared
//! generated corpus and generated rule sets.

use ebpf_l7_filter::testing::{Rng, canonical_path, request_lines, rule_set_yaml, tricky_path};
use ebpf_l7_filter::{Classification, Method, Reason, RuleSet, Verdict};

/// What the reference decides: (method id, method text, path, verdict, reason, kernel rule id).
type Expected = Option<(u8, Vec<u8>, Vec<u8>, Verdict, Reason, u32)>;

const KNOWN: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn method_id(text: &[u8]) -> u8 {
    KNOWN
        .iter()
        .position(|m| m.as_bytes() == text)
        .map_or(0, |i| i as u8 + 1)
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Deny => 0,
        Verdict::Audit => 1,
        Verdict::Allow => 2,
    }
}

/// floor[m]: the least permissive of default and every rule that can match method m
/// (m = 10: all rules).
fn floor(rules: &RuleSet, m: u8) -> Verdict {
    let mut v = rules.default_verdict();
    for r in rules.rules() {
        let applies = match (r.methods(), m) {
            (_, 10) | (None, _) => true,
            (Some(_), 0) => false,
            (Some(set), m) => set.iter().any(|x| x.id() == m),
        };
        if applies && rank(r.action()) < rank(v) {
            v = r.action();
        }
    }
    v
}

fn refused(rules: &RuleSet, m: u8) -> Verdict {
    if rules.strict_paths() {
        Verdict::Deny
    } else {
        floor(rules, m)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn non_canonical(p: &[u8]) -> bool {
    if p.is_empty() || p[0] != b'/' {
        return true;
    }
    if p.iter()
        .any(|&b| !(0x21..=0x7e).contains(&b) || b == b'\\' || b == b'#')
    {
        return true;
    }
    if contains(p, b"//")
        || contains(p, b"/./")
        || contains(p, b"/../")
        || p.ends_with(b"/.")
        || p.ends_with(b"/..")
    {
        return true;
    }
    for (i, _) in p.iter().enumerate().filter(|(_, b)| **b == b'%') {
        let hex = |b: u8| "0123456789ABCDEF".bytes().position(|h| h == b);
        let (Some(hi), Some(lo)) = (
            p.get(i + 1).and_then(|b| hex(*b)),
            p.get(i + 2).and_then(|b| hex(*b)),
        ) else {
            return true;
        };
        let c = (hi * 16 + lo) as u8;
        if c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c) {
            return true;
        }
    }
    false
}

fn matches(rule: &ebpf_l7_filter::Rule, path: &[u8]) -> bool {
    let p = rule.path().path().as_bytes();
    if rule.path().is_exact() {
        return path == p;
    }
    if p.ends_with(b"/") {
        return path.starts_with(p);
    }
    path == p || (path.starts_with(p) && path[p.len()] == b'/')
}

fn decide_path(rules: &RuleSet, m: u8, path: &[u8]) -> (Verdict, Reason, u32) {
    let mut best: Option<(usize, (usize, bool, bool))> = None;
    for (i, r) in rules.rules().iter().enumerate() {
        let method_ok = match r.methods() {
            None => true,
            Some(set) => set.iter().any(|x| x.id() == m),
        };
        if !method_ok || !matches(r, path) {
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
    match best {
        Some((i, _)) => (rules.rules()[i].action(), Reason::Rule, i as u32 + 1),
        None => (rules.default_verdict(), Reason::Default, 0),
    }
}

fn reference(rules: &RuleSet, payload: &[u8]) -> Expected {
    let upper = payload
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    if upper == 0 {
        return None;
    }
    if upper >= 17 {
        return Some((
            0,
            payload[..16].to_vec(),
            vec![],
            refused(rules, 0),
            Reason::Overlong,
            0,
        ));
    }
    if upper == payload.len() {
        return Some((
            0,
            payload.to_vec(),
            vec![],
            refused(rules, 10),
            Reason::Split,
            0,
        ));
    }
    if payload[upper] != b' ' {
        return None;
    }
    let method = payload[..upper].to_vec();
    let m = method_id(&method);
    let target = &payload[upper + 1..];
    let end = target.iter().position(|b| b" \r\n?".contains(b));
    let (path, reason) = match end {
        Some(e) if e <= 128 => (target[..e].to_vec(), None),
        None if target.len() <= 128 => (target.to_vec(), Some(Reason::Split)),
        _ => (target[..128].to_vec(), Some(Reason::Overlong)),
    };
    let reason = reason.or(non_canonical(&path).then_some(Reason::NonCanonical));
    let (verdict, reason, rule) = match reason {
        Some(r) => (refused(rules, m), r, 0),
        None => decide_path(rules, m, &path),
    };
    Some((m, method, path, verdict, reason, rule))
}

fn observed(rules: &RuleSet, payload: &[u8]) -> Expected {
    match rules.classify_segment(payload) {
        Classification::NotRequest => None,
        Classification::Request(r) => {
            let d = r.decision();
            Some((
                r.method_id(),
                r.method_text().to_vec(),
                r.path().to_vec(),
                d.verdict(),
                d.reason(),
                d.kernel_rule_id(),
            ))
        }
    }
}

#[test]
fn classify_segment_equals_the_literal_reference() {
    let corpus = request_lines(10, 2_000);
    let mut outcomes = std::collections::HashMap::new();
    for seed in 0..100 {
        let rules = RuleSet::from_yaml(&rule_set_yaml(seed)).unwrap();
        for payload in &corpus {
            let want = reference(&rules, payload);
            assert_eq!(
                observed(&rules, payload),
                want,
                "rule set {seed}, payload {:?}",
                String::from_utf8_lossy(payload)
            );
            *outcomes.entry(want.map(|w| (w.3, w.4))).or_insert(0usize) += 1;
        }
    }
    // Every outcome the spec defines occurs in the corpus (so the comparison covers it).
    for v in [Verdict::Allow, Verdict::Deny, Verdict::Audit] {
        for r in [Reason::Rule, Reason::Default] {
            assert!(
                outcomes.contains_key(&Some((v, r)))
                    || (v == Verdict::Audit && r == Reason::Default),
                "{v:?} {r:?} never seen"
            );
        }
    }
    for r in [Reason::Split, Reason::Overlong, Reason::NonCanonical] {
        assert!(
            outcomes.contains_key(&Some((Verdict::Deny, r))),
            "{r:?} never seen"
        );
        assert!(
            outcomes.contains_key(&Some((Verdict::Allow, r))),
            "non-strict {r:?} allow never seen"
        );
    }
    assert!(outcomes.contains_key(&None));
}

#[test]
fn decide_equals_classify_segment_for_whole_request_lines() {
    let mut rng = Rng::new(3);
    for seed in 0..200 {
        let rules = RuleSet::from_yaml(&rule_set_yaml(seed)).unwrap();
        for _ in 0..100 {
            let path = if rng.chance(70) {
                canonical_path(&mut rng).into_bytes()
            } else {
                tricky_path(&mut rng)
            };
            let Ok(path) = String::from_utf8(path) else {
                continue;
            };
            if path.bytes().any(|b| b" \r\n?".contains(&b)) {
                continue; // the kernel's terminators never reach `decide` (http::Uri refuses them)
            }
            let (method, text) = match rng.below(10) {
                0 => (http::Method::from_bytes(b"PROPFIND").unwrap(), "PROPFIND"),
                _ => {
                    let m = *rng.pick(&Method::ALL).unwrap();
                    (
                        http::Method::from_bytes(m.as_str().as_bytes()).unwrap(),
                        m.as_str(),
                    )
                }
            };
            let query = if rng.chance(30) { "?a=/../b" } else { "" };
            let line = format!("{text} {path}{query} HTTP/1.1\r\nHost: h\r\n\r\n");
            let kernel = rules.classify_segment(line.as_bytes()).decision().unwrap();
            let twin = rules.decide(&method, &format!("{path}{query}"));
            assert_eq!(twin, kernel, "rule set {seed}: {line:?}");
        }
    }
}

#[test]
fn non_strict_is_never_more_permissive_than_the_canonical_form() {
    // default allow, a deny rule for /admin: every disguise of /admin is denied even in
    // non-strict mode (floor), while unrelated paths stay allowed.
    let rules = RuleSet::from_yaml(
        "default: allow\nstrict_paths: false\nrules:\n  - { id: admin, action: deny, path: { prefix: \"/admin\" } }\n  - { id: get-log, action: audit, methods: [GET], path: { prefix: \"/log\" } }\n",
    )
    .unwrap();
    for trick in [
        "//admin",
        "/x/../admin",
        "/%61dmin",
        "/ADMIN/%2e%2e/admin",
        "http://h/admin",
        "/adm",
    ] {
        let line = format!("GET {trick}");
        let d = rules.classify_segment(line.as_bytes()).decision().unwrap();
        assert_eq!(d.verdict(), Verdict::Deny, "{trick}");
        assert!(d.emits_event());
    }
    // A rule set whose only deny rule needs DELETE: a non-canonical GET gets GET's floor
    // (audit, from get-log), a non-canonical PROPFIND the floor of method-less rules.
    let rules = RuleSet::from_yaml(
        "default: allow\nstrict_paths: false\nrules:\n  - { id: del, action: deny, methods: [DELETE], path: { prefix: \"/\" } }\n  - { id: get-log, action: audit, methods: [GET], path: { prefix: \"/log\" } }\n",
    )
    .unwrap();
    let verdict = |line: &str| {
        rules
            .classify_segment(line.as_bytes())
            .decision()
            .unwrap()
            .verdict()
    };
    assert_eq!(verdict("GET //x HTTP/1.1\r\n"), Verdict::Audit);
    assert_eq!(verdict("DELETE //x HTTP/1.1\r\n"), Verdict::Deny);
    assert_eq!(verdict("PROPFIND //x HTTP/1.1\r\n"), Verdict::Allow);
    assert_eq!(
        verdict("DELE"),
        Verdict::Deny,
        "split inside the method: floor of all rules"
    );
    let floors = rules.floors();
    assert_eq!(floors[Method::Delete.id() as usize], Verdict::Deny);
    assert_eq!(floors[0], Verdict::Allow);
    assert_eq!(floors[ebpf_l7_filter::FLOOR_ANY], Verdict::Deny);
}

#[test]
fn kernel_edge_cases() {
    let rules = RuleSet::from_yaml("default: allow\nrules:\n  - { id: admin, action: deny, methods: [GET], path: { prefix: \"/admin\" } }\n").unwrap();
    fn classify<'a>(rules: &RuleSet, p: &'a [u8]) -> Classification<'a> {
        rules.classify_segment(p)
    }
    let c = |p: &'static [u8]| classify(&rules, p);
    let reason = |p: &[u8]| classify(&rules, p).decision().map(|d| d.reason());
    // A split inside the method is refused: "GE" + "T /admin" must not become method "T".
    assert_eq!(reason(b"GE"), Some(Reason::Split));
    assert_eq!(
        reason(b"T /admin HTTP/1.1\r\n"),
        Some(Reason::Default),
        "method T is other"
    );
    assert_eq!(reason(b"GETGETGETGETGETGETGET /"), Some(Reason::Overlong));
    assert_eq!(c(b"get /admin HTTP/1.1\r\n"), Classification::NotRequest);
    assert_eq!(c(b""), Classification::NotRequest);
    assert_eq!(c(b"GET\t/admin"), Classification::NotRequest);
    // Path of exactly MAX_PATH bytes is read; one more is overlong.
    let at = |n: usize| format!("GET /{} HTTP/1.1\r\n", "a".repeat(n - 1));
    assert_eq!(reason(at(128).as_bytes()), Some(Reason::Default));
    assert_eq!(reason(at(129).as_bytes()), Some(Reason::Overlong));
    assert_eq!(
        reason(format!("GET /{}", "a".repeat(127)).as_bytes()),
        Some(Reason::Split)
    );
    // The query is never looked at.
    assert_eq!(
        reason(b"GET /ok?x=/../admin#f HTTP/1.1\r\n"),
        Some(Reason::Default)
    );
    assert_eq!(reason(b"GET /admin?x HTTP/1.1\r\n"), Some(Reason::Rule));
    // Pipelined second request in the same segment: not seen (documented limit).
    let d = c(b"GET /ok HTTP/1.1\r\n\r\nGET /admin HTTP/1.1\r\n\r\n")
        .decision()
        .unwrap();
    assert_eq!(d.verdict(), Verdict::Allow);
    let path = match c(b"GET /admin/x HTTP/1.1\r\n") {
        Classification::Request(r) => r.path(),
        Classification::NotRequest => panic!(),
    };
    assert_eq!(path, b"/admin/x");
}
