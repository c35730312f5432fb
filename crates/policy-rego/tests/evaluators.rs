//! The bytecode evaluator must give OPA's answers where regorus 0.14's RVM, unguarded, does
//! not: assignments of undefined values. Each case's expected value is what OPA returns (an
//! assignment of an undefined value fails the body; a failed body falls through to `else`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use policy_rego::{BundleLoader, BundleWriter, Evaluator, PolicyInput, PolicyOptions, PolicySet};

/// (name, policy body defining `r`, input, OPA's value of `r` as JSON, or None if undefined)
const CASES: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "unused assignment of an undefined value fails the body",
        "r if { x := input.a }",
        "{}",
        None,
    ),
    (
        "lookup of an unknown key fails the body",
        "r if { role := data.roles[input.user] }",
        r#"{"user": "mallory"}"#,
        None,
    ),
    (
        "lookup of a known key succeeds",
        "r if { role := data.roles[input.user] }",
        r#"{"user": "alice"}"#,
        Some("true"),
    ),
    (
        "negation after an undefined assignment does not rescue the body",
        "r if { x := input.a; not x == 1 }",
        "{}",
        None,
    ),
    (
        "else is taken when the assignment is undefined",
        "r := x if { x := input.a } else := 2",
        "{}",
        Some("2"),
    ),
    (
        "else is not taken when the assignment is defined",
        "r := x if { x := input.a } else := 2",
        r#"{"a": 1}"#,
        Some("1"),
    ),
    (
        "object value from an undefined assignment falls to else",
        r#"r := {"k": x} if { x := input.a } else := {}"#,
        "{}",
        Some("{}"),
    ),
    (
        "unification with an unbound variable on the left",
        "r if { x = input.a }",
        "{}",
        None,
    ),
    (
        "unification with an unbound variable on the right",
        "r if { input.a = x }",
        "{}",
        None,
    ),
    (
        "comprehension over an undefined assignment is empty",
        "r := count([y | y := input.a])",
        "{}",
        Some("0"),
    ),
    (
        "function result assigned but unused",
        "f(v) := w if { w := v.x }\nr if { y := f(input) }",
        "{}",
        None,
    ),
    (
        "partial object rule skips undefined values",
        r#"r[k] := v if { some k in ["a", "b"]; v := input[k] }"#,
        r#"{"b": 2}"#,
        Some(r#"{"b":2}"#),
    ),
    (
        "partial set rule skips undefined values",
        "r contains v if { some k in [\"a\", \"b\"]; v := input[k] }",
        r#"{"a": 1}"#,
        Some("[1]"),
    ),
    (
        "string literal holding a bracket",
        r#"r := x if { x := "]" }"#,
        "{}",
        Some(r#""]""#),
    ),
    (
        "raw string literal holding a bracket",
        "r := x if { x := `[` }",
        "{}",
        Some(r#""[""#),
    ),
    (
        "string comparison on the right-hand side",
        r#"r := x if { x := "a" == "b" }"#,
        "{}",
        Some("false"),
    ),
    (
        "membership with strings at both edges",
        r#"r := x if { x := "a" in {"a"} }"#,
        "{}",
        Some("true"),
    ),
    (
        "parenthesized right-hand sides",
        r#"r := [x, y, z] if { x := ("a"); y := (1) + (2); z = (3) }"#,
        "{}",
        Some(r#"["a", 3, 3]"#),
    ),
    (
        "unification with a string on the left",
        r#"r := x if { "k" = x }"#,
        "{}",
        Some(r#""k""#),
    ),
    (
        "several statements on one line",
        r#"r := [x, y] if { x := "a"; y := input.b }"#,
        r#"{"b": "]"}"#,
        Some(r#"["a", "]"]"#),
    ),
    (
        "assignment in an every body",
        "r if { every k in [\"a\"] { v := input[k] } }",
        "{}",
        None,
    ),
];

fn set_for(body: &str, evaluator: Evaluator) -> PolicySet {
    let policy = format!(
        "package t\n\n{body}\n\ndecision := {{\"allow\": true, \"reasons\": [json.marshal(r)]}}\n"
    );
    let archive = BundleWriter::new()
        .file("t.rego", policy)
        .file("data.json", r#"{"roles": {"alice": "admin"}}"#)
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("case", &archive).unwrap();
    PolicySet::compile(
        bundle,
        &PolicyOptions::new()
            .decision_rule("data.t.decision")
            .evaluator(evaluator),
    )
    .unwrap()
}

#[test]
fn bytecode_and_interpreter_give_opas_values() {
    for (name, body, input, expected) in CASES {
        let input = PolicyInput::from_json_str(input).unwrap();
        for evaluator in [Evaluator::Compiled, Evaluator::Interpreter, Evaluator::Auto] {
            let set = set_for(body, evaluator);
            assert_eq!(
                set.is_compiled(),
                evaluator != Evaluator::Interpreter,
                "{name}"
            );
            let d = set.decide(&input);
            match expected {
                Some(v) => {
                    assert!(d.allow, "{evaluator:?}: {name}: {:?}", d.reasons);
                    let got: serde_json::Value = serde_json::from_str(&d.reasons[0]).unwrap();
                    let want: serde_json::Value = serde_json::from_str(v).unwrap();
                    assert_eq!(got, want, "{evaluator:?}: {name}");
                }
                None => {
                    assert!(!d.allow, "{evaluator:?}: {name}: {:?}", d.reasons);
                    assert_eq!(
                        d.reasons,
                        ["data.t.decision is undefined"],
                        "{evaluator:?}: {name}"
                    );
                }
            }
        }
    }
}

#[test]
fn auto_cross_checks_keep_the_bytecode_when_it_agrees() {
    let set = set_for("r if { role := data.roles[input.user] }", Evaluator::Auto);
    let alice = PolicyInput::from_json_str(r#"{"user": "alice"}"#).unwrap();
    let mallory = PolicyInput::from_json_str(r#"{"user": "mallory"}"#).unwrap();
    for _ in 0..40 {
        assert!(set.decide(&alice).allow);
        assert!(!set.decide(&mallory).allow);
    }
    assert!(set.is_compiled());
}

#[test]
fn with_keyword_in_the_decision_path_falls_back_to_the_interpreter() {
    // The RVM compiler does not support `with`; Auto uses the interpreter, Compiled refuses.
    let body = "inner if input.x == 1\nr if inner with input as {\"x\": 1}";
    let set = set_for(body, Evaluator::Auto);
    assert!(!set.is_compiled());
    assert!(set.decide(&PolicyInput::from_json_str("{}").unwrap()).allow);

    let policy = format!("package t\n{body}\ndecision := {{\"allow\": r}}\n");
    let archive = BundleWriter::new()
        .file("t.rego", policy)
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("case", &archive).unwrap();
    let err = PolicySet::compile(
        bundle,
        &PolicyOptions::new()
            .decision_rule("data.t.decision")
            .evaluator(Evaluator::Compiled),
    )
    .unwrap_err();
    assert!(err.to_string().contains("with"), "{err}");
}
