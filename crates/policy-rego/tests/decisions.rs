//! Table-driven decisions for an RBAC policy and an OPA-Envoy-style policy, evaluated by
//! every evaluator, which must all agree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fixtures.rs"]
mod support;

use http::header::AUTHORIZATION;
use policy_rego::{Evaluator, InputOptions, PolicyDecision, PolicyOptions, PolicySet};
use support::{cases, fixture};

const VARIANTS: [Evaluator; 2] = [Evaluator::Compiled, Evaluator::Interpreter];

/// Runs every case of `table` against the bundle `dir` with each evaluator variant and
/// returns how many cases ran.
fn run_table(dir: &str, table: &str, rule: &str, input_options: &InputOptions) -> usize {
    let cases = cases(table);
    assert!(cases.len() >= 10, "{table} has too few cases");
    let mut first: Option<Vec<PolicyDecision>> = None;
    for evaluator in VARIANTS {
        let options = PolicyOptions::new()
            .decision_rule(rule)
            .evaluator(evaluator);
        let set = match PolicySet::load(fixture(dir), &options) {
            Ok(set) => set,
            // The compiled form refuses sets it is not shown equal on (these fixtures call
            // builtins); the other variants decide them.
            Err(policy_rego::PolicyError::Compile { .. }) if evaluator == Evaluator::Compiled => {
                continue;
            }
            Err(e) => panic!("{dir}: {e}"),
        };
        assert_eq!(set.is_compiled(), evaluator == Evaluator::Compiled);
        let mut decisions = Vec::new();
        for case in &cases {
            // Twice, so reused evaluators are exercised too.
            let input = case.input(input_options);
            let d = set.decide(&input);
            let again = set.decide(&input);
            assert_eq!((d.allow, &d.reasons), (again.allow, &again.reasons));
            assert_eq!(
                d.allow, case.allow,
                "{:?}: case {:?} got {:?}",
                evaluator, case.name, d.reasons
            );
            if let Some(reason) = &case.reason {
                assert!(
                    d.reasons.iter().any(|r| r.contains(reason.as_str())),
                    "case {:?}: reasons {:?} lack {reason:?}",
                    case.name,
                    d.reasons
                );
            }
            decisions.push(d);
        }
        match &first {
            None => first = Some(decisions),
            Some(f) => {
                for ((a, b), case) in f.iter().zip(&decisions).zip(&cases) {
                    assert_eq!(
                        (a.allow, &a.reasons, &a.headers),
                        (b.allow, &b.reasons, &b.headers),
                        "evaluators disagree on {:?}",
                        case.name
                    );
                }
            }
        }
    }
    cases.len()
}

#[test]
fn rbac_decision_table() {
    let n = run_table(
        "rbac",
        "rbac_cases.yaml",
        "data.http.rbac.decision",
        &InputOptions::default(),
    );
    assert!(n >= 18);
}

#[test]
fn rbac_boolean_rule_gives_the_same_allow() {
    let set = PolicySet::load(
        fixture("rbac"),
        &PolicyOptions::new().decision_rule("http/rbac/allow"),
    )
    .unwrap();
    for case in cases("rbac_cases.yaml") {
        let d = set.decide(&case.input(&InputOptions::default()));
        assert_eq!(d.allow, case.allow, "{}", case.name);
        if !d.allow {
            assert_eq!(d.reasons, ["denied by data.http.rbac.allow"]);
        }
    }
}

#[test]
fn envoy_decision_table() {
    // The policy decodes Basic credentials itself, so it needs the header.
    let opts = InputOptions::default().allow_secret_header(AUTHORIZATION);
    let n = run_table("envoy", "envoy_cases.yaml", "envoy/authz/allow", &opts);
    assert!(n >= 15);
}

#[test]
fn envoy_object_result_carries_headers() {
    let opts = InputOptions::default().allow_secret_header(AUTHORIZATION);
    let set = PolicySet::load(
        fixture("envoy"),
        &PolicyOptions::new().decision_rule("envoy/authz/result"),
    )
    .unwrap();
    for case in cases("envoy_cases.yaml") {
        let d = set.decide(&case.input(&opts));
        assert_eq!(d.allow, case.allow, "{}", case.name);
        match &case.basic {
            Some(user) => assert_eq!(
                d.headers.get("x-ext-auth-user"),
                Some(user),
                "{}",
                case.name
            ),
            None => assert!(d.headers.is_empty(), "{}", case.name),
        }
    }
}

#[test]
fn without_the_authorization_header_basic_users_are_denied() {
    // The default input leaves credentials out: the Envoy policy then sees no user.
    let set = PolicySet::load(
        fixture("envoy"),
        &PolicyOptions::new().decision_rule("envoy/authz/allow"),
    )
    .unwrap();
    let case = cases("envoy_cases.yaml")
        .into_iter()
        .find(|c| c.name.starts_with("bob (admin) lists products"))
        .unwrap();
    assert!(case.allow);
    let d = set.decide(&case.input(&InputOptions::default()));
    assert!(!d.allow);
}
