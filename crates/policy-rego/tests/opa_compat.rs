//! Results compared with what OPA gives. `opa` is not available on the build machines, so
//! the expected outputs are written down: the output shapes of `opa eval --format json` and
//! `opa test` as OPA's documentation shows them, and the values OPA's semantics give for the
//! documentation's RBAC example.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use policy_rego::{BundleLoader, BundleWriter, PolicyInput, PolicyOptions, PolicySet, TestOutcome};
use serde_json::json;

/// The shape of OPA's documentation RBAC example: users have roles, roles have grants, admins
/// may do anything.
const RBAC: &str = r#"
package app.rbac

default allow := false

allow if user_is_admin

allow if {
	some grant in user_is_granted
	input.action == grant.action
	input.type == grant.type
}

user_is_admin if "admin" in data.user_roles[input.user]

user_is_granted contains grant if {
	some role in data.user_roles[input.user]
	some grant in data.role_grants[role]
}
"#;

const RBAC_DATA: &str = r#"{
  "user_roles": {"alice": ["admin"], "bob": ["employee", "billing"], "eve": ["customer"]},
  "role_grants": {
    "customer": [{"action": "read", "type": "dog"}, {"action": "adopt", "type": "dog"}],
    "employee": [{"action": "read", "type": "dog"}, {"action": "update", "type": "dog"}],
    "billing": [{"action": "read", "type": "finance"}, {"action": "update", "type": "finance"}]
  }
}"#;

const RBAC_TESTS: &str = r#"
package app.rbac_test

import data.app.rbac

test_admin_can_do_anything if rbac.allow with input as {"user": "alice", "action": "delete", "type": "cat"}

test_customer_cannot_update if not rbac.allow with input as {"user": "eve", "action": "update", "type": "dog"}

# Fails on purpose: billing does not grant adopting dogs.
test_billing_adopts if rbac.allow with input as {"user": "bob", "action": "adopt", "type": "dog"}

# Errors: a complete rule with two different values is an evaluation error in OPA.
conflict := 1 if true

conflict := 2 if true

test_errors if conflict == 1

todo_test_later if false
"#;

fn rbac_set(with_tests: bool) -> PolicySet {
    let mut w = BundleWriter::new()
        .file("app/rbac/policy.rego", RBAC)
        .file("data.json", RBAC_DATA);
    if with_tests {
        w = w.file("app/rbac/policy_test.rego", RBAC_TESTS);
    }
    let bundle = BundleLoader::new()
        .load_tar_gz("rbac", &w.to_tar_gz().unwrap())
        .unwrap();
    PolicySet::compile(
        bundle,
        &PolicyOptions::new()
            .decision_rule("app/rbac/allow")
            .allow_untested(),
    )
    .unwrap()
}

fn input(v: serde_json::Value) -> PolicyInput {
    PolicyInput::from_json(v)
}

#[test]
fn rbac_example_decisions() {
    let set = rbac_set(false);
    let cases = [
        (
            json!({"user": "alice", "action": "read", "object": "id123", "type": "dog"}),
            true,
        ),
        (
            json!({"user": "bob", "action": "read", "object": "id123", "type": "finance"}),
            true,
        ),
        (
            json!({"user": "bob", "action": "update", "object": "id123", "type": "dog"}),
            true,
        ),
        (
            json!({"user": "bob", "action": "adopt", "object": "id123", "type": "dog"}),
            false,
        ),
        (
            json!({"user": "eve", "action": "update", "object": "id123", "type": "dog"}),
            false,
        ),
        (
            json!({"user": "nobody", "action": "read", "object": "id123", "type": "dog"}),
            false,
        ),
    ];
    for (i, allow) in cases {
        assert_eq!(set.decide(&input(i.clone())).allow, allow, "{i}");
        // The interpreter path used by `eval` agrees.
        assert_eq!(
            set.eval_rule("data.app.rbac.allow", Some(&input(i.clone())))
                .unwrap(),
            Some(json!(allow)),
            "{i}"
        );
    }
}

#[test]
fn eval_query_prints_what_opa_eval_prints() {
    let set = rbac_set(false);
    let i = input(json!({"user": "bob", "action": "read", "type": "finance"}));
    // opa eval --format json -d . -i input.json 'data.app.rbac.allow'
    assert_eq!(
        set.eval_query("data.app.rbac.allow", Some(&i)).unwrap(),
        json!({"result": [{"expressions": [{
            "value": true,
            "text": "data.app.rbac.allow",
            "location": {"row": 1, "col": 1}
        }]}]})
    );
    // Partial sets are printed as arrays.
    let v = set
        .eval_query("data.app.rbac.user_is_granted", Some(&i))
        .unwrap();
    let grants = &v["result"][0]["expressions"][0]["value"];
    assert_eq!(grants.as_array().unwrap().len(), 4);
    assert!(
        grants
            .as_array()
            .unwrap()
            .contains(&json!({"action": "read", "type": "finance"}))
    );
    // An undefined query prints {}.
    assert_eq!(
        set.eval_query("data.app.rbac.user_is_admin", Some(&i))
            .unwrap(),
        json!({})
    );
    // Assignments in the query appear under "bindings".
    assert_eq!(
        set.eval_query("x := count(data.user_roles); y := x * 2", None)
            .unwrap(),
        json!({"result": [{
            "expressions": [
                {"value": true, "text": "x := count(data.user_roles)", "location": {"row": 1, "col": 1}},
                {"value": true, "text": "y := x * 2", "location": {"row": 1, "col": 30}}
            ],
            "bindings": {"x": 3, "y": 6}
        }]})
    );
    // Several results, one per solution.
    let v = set
        .eval_query("some role in data.user_roles.bob", None)
        .unwrap();
    assert_eq!(v["result"].as_array().unwrap().len(), 2);
    assert!(set.eval_query("data.app.rbac.allow ==", None).is_err());
}

#[test]
fn rule_values_follow_opa_semantics() {
    let policy = r#"
package sem

default level := "none"
level := "high" if input.score > 80
else := "mid" if input.score > 50

ports := {p | some p in input.ports; p < 1024}

all_small if every p in input.ports { p < 100 }

double(x) := x * 2

answer := double(21)

obj[k] := v if { some k, v in input.labels; startswith(k, "app.") }
"#;
    let bundle = BundleLoader::new()
        .load_tar_gz(
            "sem",
            &BundleWriter::new()
                .file("p.rego", policy)
                .to_tar_gz()
                .unwrap(),
        )
        .unwrap();
    let set = PolicySet::compile(
        bundle,
        &PolicyOptions::new().decision_rule("data.sem.level"),
    )
    .unwrap();
    let i = |v: serde_json::Value| Some(input(v));
    assert_eq!(
        set.eval_rule("sem/level", i(json!({"score": 90})).as_ref())
            .unwrap(),
        Some(json!("high"))
    );
    assert_eq!(
        set.eval_rule("sem/level", i(json!({"score": 60})).as_ref())
            .unwrap(),
        Some(json!("mid"))
    );
    assert_eq!(
        set.eval_rule("sem/level", i(json!({"score": 10})).as_ref())
            .unwrap(),
        Some(json!("none"))
    );
    assert_eq!(
        set.eval_rule(
            "sem/ports",
            i(json!({"ports": [8080, 22, 443, 22]})).as_ref()
        )
        .unwrap(),
        Some(json!([22, 443]))
    );
    assert_eq!(
        set.eval_rule("sem/all_small", i(json!({"ports": [1, 2]})).as_ref())
            .unwrap(),
        Some(json!(true))
    );
    assert_eq!(
        set.eval_rule("sem/all_small", i(json!({"ports": [1, 200]})).as_ref())
            .unwrap(),
        None
    );
    assert_eq!(set.eval_rule("sem/answer", None).unwrap(), Some(json!(42)));
    assert_eq!(
        set.eval_rule(
            "sem/obj",
            i(json!({"labels": {"app.name": "x", "team": "y"}})).as_ref()
        )
        .unwrap(),
        Some(json!({"app.name": "x"}))
    );
}

#[test]
fn run_tests_reports_like_opa_test() {
    let set = rbac_set(true);
    let report = set.run_tests();
    let outcomes: Vec<(&str, &TestOutcome)> = report
        .results
        .iter()
        .map(|r| (r.name.as_str(), &r.outcome))
        .collect();
    assert_eq!(outcomes.len(), 5);
    assert_eq!(
        outcomes[0],
        (
            "data.app.rbac_test.test_admin_can_do_anything",
            &TestOutcome::Pass
        )
    );
    assert_eq!(
        outcomes[1],
        ("data.app.rbac_test.test_billing_adopts", &TestOutcome::Fail)
    );
    assert_eq!(
        outcomes[2],
        (
            "data.app.rbac_test.test_customer_cannot_update",
            &TestOutcome::Pass
        )
    );
    assert!(
        matches!(outcomes[3], ("data.app.rbac_test.test_errors", TestOutcome::Error(e)) if e.contains("conflict"))
    );
    assert_eq!(
        outcomes[4],
        ("data.app.rbac_test.todo_test_later", &TestOutcome::Skip)
    );
    assert_eq!(
        (
            report.passed(),
            report.failed(),
            report.errors(),
            report.skipped()
        ),
        (2, 1, 1, 1)
    );
    assert!(!report.is_success());
    let text = report.to_string();
    assert!(text.starts_with("FAILURES\n"));
    assert!(text.contains("data.app.rbac_test.test_billing_adopts: FAIL ("));
    assert!(text.contains("PASS: 2/5\nFAIL: 1/5\nERROR: 1/5\nSKIPPED: 1/5\n"));
    assert!(
        report
            .verbose()
            .contains("data.app.rbac_test.test_admin_can_do_anything: PASS (")
    );

    // The same set is refused when its tests must pass on load.
    let bundle = BundleLoader::new()
        .load_tar_gz(
            "rbac",
            &BundleWriter::new()
                .file("app/rbac/policy.rego", RBAC)
                .file("app/rbac/policy_test.rego", RBAC_TESTS)
                .file("data.json", RBAC_DATA)
                .to_tar_gz()
                .unwrap(),
        )
        .unwrap();
    let err = PolicySet::compile(
        bundle,
        &PolicyOptions::new().decision_rule("app/rbac/allow"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy tests failed (2 of 5): data.app.rbac_test.test_billing_adopts, data.app.rbac_test.test_errors"
    );
}

#[test]
fn test_functions_are_not_tests() {
    let policy = "package t\ntest_helper(x) := x\ntest_uses_helper if test_helper(1) == 1\n";
    let bundle = BundleLoader::new()
        .load_tar_gz(
            "t",
            &BundleWriter::new()
                .file("p_test.rego", policy)
                .to_tar_gz()
                .unwrap(),
        )
        .unwrap();
    let set = PolicySet::compile(
        bundle,
        &PolicyOptions::new().decision_rule("data.t.test_uses_helper"),
    )
    .unwrap();
    let report = set.run_tests();
    assert_eq!(report.results.len(), 1);
    assert_eq!(report.passed(), 1);
}
