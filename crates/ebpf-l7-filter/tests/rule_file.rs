//! The rule file: the issue's example parses to what it says; each validation error names
//! the rule and the field.

use ebpf_l7_filter::{FilterError, Method, PathMatch, RuleSet, Verdict};

const EXAMPLE: &str = r#"
default: deny              # allow | deny: the verdict when no rule matches
strict_paths: true         # the default: non-canonical paths are denied and reported
rules:
  - id: health
    action: allow          # allow | deny | audit
    methods: [GET]         # optional; absent means any method
    path: { exact: "/health" }
  - id: orders-read
    action: allow
    methods: [GET, HEAD]
    path: { prefix: "/api/orders" }
"#;

#[test]
fn the_issue_example_parses() {
    let rules = RuleSet::from_yaml(EXAMPLE).unwrap();
    assert_eq!(rules.default_verdict(), Verdict::Deny);
    assert!(rules.strict_paths());
    let [health, orders] = rules.rules() else {
        panic!("two rules expected")
    };
    assert_eq!(health.id(), "health");
    assert_eq!(health.action(), Verdict::Allow);
    assert_eq!(health.path(), &PathMatch::Exact("/health".into()));
    assert_eq!(
        health.methods().unwrap().iter().collect::<Vec<_>>(),
        [Method::Get]
    );
    assert_eq!(orders.path(), &PathMatch::Prefix("/api/orders".into()));
    assert_eq!(
        orders.methods().unwrap().iter().collect::<Vec<_>>(),
        [Method::Get, Method::Head]
    );
    assert_eq!(orders.methods().unwrap().bits(), 0b110);
}

#[test]
fn secure_defaults_when_keys_are_left_out() {
    let rules = RuleSet::from_yaml("rules: []").unwrap();
    assert_eq!(rules.default_verdict(), Verdict::Deny);
    assert!(rules.strict_paths());
    let rules = RuleSet::from_yaml("default: allow").unwrap();
    assert!(rules.rules().is_empty());
    assert!(rules.strict_paths());
}

#[test]
fn load_reads_a_file_and_names_it_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, EXAMPLE).unwrap();
    assert_eq!(RuleSet::load(&file).unwrap().rules().len(), 2);
    let missing = dir.path().join("nope.yaml");
    let err = RuleSet::load(&missing).unwrap_err();
    assert!(matches!(err, FilterError::Io { .. }));
    assert!(err.to_string().contains("nope.yaml"), "{err}");
}

fn rule(id: &str, body: &str) -> String {
    format!("  - id: {id}\n    {body}\n")
}

/// A bad file's rules, a test for the error variant expected, and words its message must contain.
type Case = (String, fn(&FilterError) -> bool, &'static [&'static str]);

#[test]
fn validation_errors_name_the_rule() {
    let long = format!("/{}", "a".repeat(128));
    let cases: Vec<Case> = vec![
        (
            rule("a", "action: allow\n    path: { exact: \"/a\" }")
                + &rule("a", "action: deny\n    path: { exact: \"/b\" }"),
            |e| {
                matches!(
                    e,
                    FilterError::DuplicateId {
                        first: 1,
                        second: 2,
                        ..
                    }
                )
            },
            &["\"a\"", "#1", "#2"],
        ),
        (
            rule("no-slash", "action: allow\n    path: { prefix: \"api\" }"),
            |e| matches!(e, FilterError::InvalidPath { .. }),
            &["no-slash", "start with '/'"],
        ),
        (
            rule("dots", "action: deny\n    path: { prefix: \"/a/../b\" }"),
            |e| matches!(e, FilterError::InvalidPath { .. }),
            &["dots", "'..'"],
        ),
        (
            rule("enc", "action: deny\n    path: { exact: \"/%2e\" }"),
            |e| matches!(e, FilterError::InvalidPath { .. }),
            &["enc"],
        ),
        (
            rule("query", "action: deny\n    path: { exact: \"/a?x=1\" }"),
            |e| matches!(e, FilterError::InvalidPath { .. }),
            &["query"],
        ),
        (
            rule(
                "long",
                &format!("action: deny\n    path: {{ exact: \"{long}\" }}"),
            ),
            |e| {
                matches!(
                    e,
                    FilterError::PathTooLong {
                        len: 129,
                        max: 128,
                        ..
                    }
                )
            },
            &["long", "129", "128"],
        ),
        (
            rule(
                "m",
                "action: allow\n    methods: [GET, FETCH]\n    path: { exact: \"/a\" }",
            ),
            |e| matches!(e, FilterError::UnknownMethod { .. }),
            &["\"m\"", "FETCH"],
        ),
        (
            rule(
                "lower",
                "action: allow\n    methods: [get]\n    path: { exact: \"/a\" }",
            ),
            |e| matches!(e, FilterError::UnknownMethod { .. }),
            &["lower", "get"],
        ),
        (
            rule(
                "none",
                "action: allow\n    methods: []\n    path: { exact: \"/a\" }",
            ),
            |e| matches!(e, FilterError::EmptyMethods { .. }),
            &["none"],
        ),
        (
            rule("t1", "action: allow\n    path: { prefix: \"/a\" }")
                + &rule("t2", "action: deny\n    path: { prefix: \"/a\" }"),
            |e| matches!(e, FilterError::Tie { .. }),
            &["t1", "t2", "any method"],
        ),
        (
            rule(
                "g1",
                "action: allow\n    methods: [GET, POST]\n    path: { exact: \"/a\" }",
            ) + &rule(
                "g2",
                "action: deny\n    methods: [PUT, POST]\n    path: { exact: \"/a\" }",
            ),
            |e| matches!(e, FilterError::Tie { kind: "exact", .. }),
            &["g1", "g2", "POST"],
        ),
        (
            rule("bad id", "action: allow\n    path: { exact: \"/a\" }"),
            |e| matches!(e, FilterError::InvalidId { position: 1, .. }),
            &["bad id", "#1"],
        ),
        (
            rule("x", "action: permit\n    path: { exact: \"/a\" }"),
            |e| matches!(e, FilterError::Syntax(_)),
            &["permit"],
        ),
        (
            rule(
                "typo",
                "action: allow\n    method: [GET]\n    path: { exact: \"/a\" }",
            ),
            |e| matches!(e, FilterError::Syntax(_)),
            &["method"],
        ),
        (
            rule(
                "both",
                "action: allow\n    path: { exact: \"/a\", prefix: \"/b\" }",
            ),
            |e| matches!(e, FilterError::Syntax(_)),
            &[],
        ),
        (
            rule("nopath", "action: allow"),
            |e| matches!(e, FilterError::Syntax(_)),
            &["path"],
        ),
    ];
    for (rules, is_expected, words) in cases {
        let text = format!("default: deny\nrules:\n{rules}");
        let err = RuleSet::from_yaml(&text).unwrap_err();
        assert!(is_expected(&err), "{text}\n→ {err:?}");
        let msg = err.to_string();
        for w in words {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn these_do_not_tie() {
    for rules in [
        // Same path, different kinds.
        rule("e", "action: allow\n    path: { exact: \"/a\" }")
            + &rule("p", "action: deny\n    path: { prefix: \"/a\" }"),
        // Same path and kind, disjoint methods; and one with methods beside one without.
        rule(
            "g",
            "action: allow\n    methods: [GET]\n    path: { exact: \"/a\" }",
        ) + &rule(
            "p",
            "action: deny\n    methods: [POST]\n    path: { exact: \"/a\" }",
        ) + &rule("any", "action: deny\n    path: { exact: \"/a\" }"),
        // `/a` and `/a/` are different prefixes.
        rule("a", "action: allow\n    path: { prefix: \"/a\" }")
            + &rule("a-slash", "action: deny\n    path: { prefix: \"/a/\" }"),
    ] {
        RuleSet::from_yaml(&format!("rules:\n{rules}")).unwrap();
    }
}

#[test]
fn at_most_max_rules() {
    let mut text = String::from("rules:\n");
    for i in 0..=ebpf_l7_filter::MAX_RULES {
        text.push_str(&rule(
            &format!("r{i}"),
            &format!("action: allow\n    path: {{ exact: \"/r{i}\" }}"),
        ));
    }
    let err = RuleSet::from_yaml(&text).unwrap_err();
    assert!(
        matches!(
            err,
            FilterError::TooManyRules {
                count: 1025,
                max: 1024
            }
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    for text in [
        "rules: [",
        "default: [1, 2",
        "{{{{",
        "rules:\n  - id: a\n   action: allow",
        "\0\u{1}",
    ] {
        assert!(RuleSet::from_yaml(text).is_err(), "{text:?}");
    }
}
