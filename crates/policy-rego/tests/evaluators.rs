//! Which evaluator decides a set, and that each one gives OPA's values. regorus 0.14's
//! bytecode (RVM) gets some constructs wrong (assignments of undefined values, builtin errors,
//! conflicts, `every`); such sets are decided by the interpreter under `Evaluator::Auto` and
//! refused under `Evaluator::Compiled`, naming the rule. Each case's expected value is what OPA
//! returns. The broad comparison with real OPA is `tests/differential.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use policy_rego::{
    BundleLoader, BundleWriter, Evaluator, PolicyError, PolicyInput, PolicyOptions, PolicySet,
};

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

fn compile(policy: &str, rule: &str, options: PolicyOptions) -> Result<PolicySet, PolicyError> {
    let archive = BundleWriter::new()
        .file("t.rego", policy)
        .file("data.json", r#"{"roles": {"alice": "admin"}}"#)
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("case", &archive).unwrap();
    PolicySet::compile(bundle, &options.decision_rule(rule))
}

fn set_for(body: &str, evaluator: Evaluator) -> Result<PolicySet, PolicyError> {
    compile(
        &format!("package t\n\n{body}\n"),
        "data.t.r",
        PolicyOptions::new().evaluator(evaluator),
    )
}

#[test]
fn every_evaluator_that_accepts_a_set_gives_opas_values() {
    for (name, body, input, expected) in CASES {
        let input = PolicyInput::from_json_str(input).unwrap();
        let want = expected.map(|v| serde_json::from_str::<serde_json::Value>(v).unwrap());
        for evaluator in [Evaluator::Compiled, Evaluator::Interpreter, Evaluator::Auto] {
            let set = match set_for(body, evaluator) {
                Ok(set) => set,
                Err(PolicyError::Compile { detail, .. }) if evaluator == Evaluator::Compiled => {
                    // Refused: the message names the rule that keeps it off the compiled form.
                    assert!(detail.contains("rule data.t."), "{name}: {detail}");
                    continue;
                }
                Err(e) => panic!("{evaluator:?}: {name}: {e}"),
            };
            if evaluator == Evaluator::Interpreter {
                assert!(!set.is_compiled());
            }
            assert_eq!(set.evaluate(&input).unwrap(), want, "{evaluator:?}: {name}");
        }
    }
}

#[test]
fn undefined_assignments_keep_the_set_on_the_interpreter() {
    let body = "r if { role := data.roles[input.user] }";
    let auto = set_for(body, Evaluator::Auto).unwrap();
    assert!(!auto.is_compiled());
    let mallory = PolicyInput::from_json_str(r#"{"user": "mallory"}"#).unwrap();
    for _ in 0..2_000 {
        assert!(!auto.decide(&mallory).allow);
    }
    let err = set_for(body, Evaluator::Compiled).unwrap_err();
    assert!(
        err.to_string()
            .contains("rule data.t.r (t.rego:3) binds a value that may be undefined"),
        "{err}"
    );
}

#[test]
fn auto_uses_the_bytecode_where_it_is_shown_equal() {
    let set = set_for("r if data.roles[input.user] == \"admin\"", Evaluator::Auto).unwrap();
    let alice = PolicyInput::from_json_str(r#"{"user": "alice"}"#).unwrap();
    let mallory = PolicyInput::from_json_str(r#"{"user": "mallory"}"#).unwrap();
    for _ in 0..40 {
        assert!(set.decide(&alice).allow);
        assert!(!set.decide(&mallory).allow);
    }
    assert!(set.is_compiled());
}

/// The policy of the issue that found the fail-open rewrite: a deny list built with a set
/// union inside an assignment.
const ISSUE_POLICY: &str = r#"package http.authz
default allow := false
banned contains "spiffe://ex.org/mallory"
suspended contains "spiffe://ex.org/eve"
allow if {
  blocked := banned | suspended
  not input.attributes.source.principal in blocked
}
test_eve_blocked if not allow with input as {"attributes":{"source":{"principal":"spiffe://ex.org/eve"}}}
"#;

fn principal(p: &str) -> PolicyInput {
    PolicyInput::from_json(serde_json::json!({"attributes": {"source": {"principal": p}}}))
}

#[test]
fn the_deny_list_never_lets_a_banned_principal_in() {
    // As written, regorus would let a request without a principal through where OPA does not
    // (`not <undefined> in blocked`), so the set is refused, naming the statement.
    for evaluator in [Evaluator::Auto, Evaluator::Compiled, Evaluator::Interpreter] {
        let err = compile(
            ISSUE_POLICY,
            "data.http.authz.allow",
            PolicyOptions::new().evaluator(evaluator),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PolicyError::OpaDivergence(_)), "{msg}");
        assert!(
            msg.contains("t.rego:7: rule data.http.authz.allow"),
            "{msg}"
        );
    }
    // With regorus's semantics accepted explicitly, every evaluator still denies eve and
    // mallory after any warm-up.
    for evaluator in [Evaluator::Auto, Evaluator::Compiled, Evaluator::Interpreter] {
        let set = match compile(
            ISSUE_POLICY,
            "data.http.authz.allow",
            PolicyOptions::new()
                .evaluator(evaluator)
                .allow_regorus_semantics(),
        ) {
            Ok(set) => set,
            Err(PolicyError::Compile { detail, .. }) if evaluator == Evaluator::Compiled => {
                assert!(
                    detail.contains("binds a value that may be undefined"),
                    "{detail}"
                );
                continue;
            }
            Err(e) => panic!("{evaluator:?}: {e}"),
        };
        assert!(!set.is_compiled(), "{evaluator:?}");
        for _ in 0..100 {
            assert!(set.decide(&principal("spiffe://ex.org/alice")).allow);
        }
        for _ in 0..200 {
            assert!(
                !set.decide(&principal("spiffe://ex.org/eve")).allow,
                "{evaluator:?}"
            );
            assert!(
                !set.decide(&principal("spiffe://ex.org/mallory")).allow,
                "{evaluator:?}"
            );
        }
    }
}

#[test]
fn the_portable_deny_list_loads_and_decides_as_opa() {
    let policy = ISSUE_POLICY.replace(
        "  not input.attributes.source.principal in blocked",
        "  p := input.attributes.source.principal\n  not p in blocked",
    );
    let set = compile(&policy, "data.http.authz.allow", PolicyOptions::new()).unwrap();
    for _ in 0..100 {
        assert!(set.decide(&principal("spiffe://ex.org/alice")).allow);
    }
    for _ in 0..200 {
        assert!(!set.decide(&principal("spiffe://ex.org/eve")).allow);
        assert!(!set.decide(&principal("spiffe://ex.org/mallory")).allow);
    }
    // No principal: OPA's body fails at the binding.
    assert!(!set.decide(&PolicyInput::from_json_str("{}").unwrap()).allow);
}

/// In the compiled class but not equal: regorus's bytecode iterates nothing over a string
/// where the interpreter stops with an error.
const STRING_ITERATION: &str = r#"package t
default r := false
r if {
  some x in input.xs
  x == "a"
}
"#;

#[test]
fn a_test_input_on_which_the_evaluators_disagree_keeps_the_set_off_the_bytecode() {
    // Without the test, the set is in the compiled class.
    let plain = compile(STRING_ITERATION, "data.t.r", PolicyOptions::new()).unwrap();
    assert!(plain.is_compiled());

    let with_test =
        format!("{STRING_ITERATION}test_string_input if r with input as {{\"xs\": \"abc\"}}\n");
    let options = PolicyOptions::new().allow_untested();
    let auto = compile(&with_test, "data.t.r", options.clone()).unwrap();
    assert!(!auto.is_compiled());
    let err = compile(
        &with_test,
        "data.t.r",
        options.evaluator(Evaluator::Compiled),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("disagree on data.t.r for the input of data.t.test_string_input"),
        "{err}"
    );
}

/// OPA iterates nothing over a string (or a number, a boolean, `null`): `r` is its default,
/// `false`. regorus's interpreter stops with an error there; the compiled form iterates
/// nothing. Under default options the set is on the compiled form, and the interpreter's
/// cross-checks of the first decisions must not turn that error into a disagreement that
/// switches the set to the interpreter (which would then deny every such input).
#[test]
fn iterating_a_string_is_decided_as_opa_on_the_compiled_form() {
    let set = compile(STRING_ITERATION, "data.t.r", PolicyOptions::new()).unwrap();
    assert!(set.is_compiled());
    let listed = PolicyInput::from_json_str(r#"{"xs": ["b", "a"]}"#).unwrap();
    for _ in 0..100 {
        for scalar in [r#""abc""#, "5", "true", "null"] {
            let input = PolicyInput::from_json_str(&format!(r#"{{"xs": {scalar}}}"#)).unwrap();
            assert_eq!(
                set.evaluate(&input).unwrap(),
                Some(serde_json::json!(false)),
                "{scalar}"
            );
        }
        assert!(set.decide(&listed).allow);
    }
    assert!(set.is_compiled(), "no disagreement was found");
    // The interpreter alone still stops with its error: the decision denies (fails closed).
    let interpreter = compile(
        STRING_ITERATION,
        "data.t.r",
        PolicyOptions::new().evaluator(Evaluator::Interpreter),
    )
    .unwrap();
    let string = PolicyInput::from_json_str(r#"{"xs": "abc"}"#).unwrap();
    assert!(interpreter.evaluate(&string).is_err());
    assert!(!interpreter.decide(&string).allow);
    assert!(interpreter.decide(&listed).allow);
}

#[test]
fn a_test_whose_input_is_computed_keeps_the_set_off_the_bytecode() {
    let with_test = format!(
        "{STRING_ITERATION}sample := {{\"xs\": [\"a\"]}}\ntest_sample if r with input as sample\n"
    );
    let auto = compile(&with_test, "data.t.r", PolicyOptions::new()).unwrap();
    assert!(!auto.is_compiled());
    let err = compile(
        &with_test,
        "data.t.r",
        PolicyOptions::new().evaluator(Evaluator::Compiled),
    )
    .unwrap_err();
    assert!(err.to_string().contains("test data.t.test_sample"), "{err}");
}

#[test]
fn with_keyword_in_the_decision_path_falls_back_to_the_interpreter() {
    // The RVM compiler does not support `with`; Auto uses the interpreter, Compiled refuses.
    let body = "inner if input.x == 1\nr if inner with input as {\"x\": 1}";
    let set = set_for(body, Evaluator::Auto).unwrap();
    assert!(!set.is_compiled());
    assert!(set.decide(&PolicyInput::from_json_str("{}").unwrap()).allow);
    let err = set_for(body, Evaluator::Compiled).unwrap_err();
    assert!(err.to_string().contains("with"), "{err}");
}
