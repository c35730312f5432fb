//! Decisions through the engine: decision logs in OPA's format, budgets, and evaluation
//! errors that deny.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy_rego::{
    BundleLoader, BundleWriter, DecisionLogConfig, DecisionLogRecord, Evaluator, InputBuilder,
    InputOptions, Manifest, PolicyDecision, PolicyEngine, PolicyInput, PolicyOptions, PolicySet,
};
use serde_json::json;

const POLICY: &str = r#"
package http.authz

default allow := false

allow if input.attributes.request.http.method == "GET"

decision := {"allow": allow, "reasons": reasons, "headers": {"x-policy": "v1"}}

reasons contains "only GET is allowed" if not allow

# Heavy enough to blow any small budget: nine million iterations, in the class the compiled
# form decides (no builtins), so both evaluators' budgets are exercised.
slow if {
	some a in data.big
	some b in data.big
	a == "never"
}

boom := x if { x := {"a": 1}["a"] + "text" }

conflict := 1 if true

conflict := 2 if true
"#;

fn set(rule: &str, options: PolicyOptions) -> PolicySet {
    let mut m = Manifest::default();
    m.revision = "log-7".into();
    let archive = BundleWriter::new()
        .manifest(&m)
        .file("http/authz/policy.rego", POLICY)
        .file(
            "data.json",
            json!({"big": (0..3000).collect::<Vec<u32>>()}).to_string(),
        )
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new()
        .load_tar_gz("authz-bundle", &archive)
        .unwrap();
    PolicySet::compile(bundle, &options.decision_rule(rule)).unwrap()
}

fn request(method: &str) -> PolicyInput {
    let req = http::Request::builder()
        .method(method)
        .uri("/orders?id=1")
        .header("x-api-key", "k-123")
        .header("authorization", "Bearer secret-token")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    InputBuilder::from_parts(&parts)
        .peer_addr("192.0.2.9:4040".parse().unwrap())
        .identity(json!({"spiffe_id": "spiffe://example.org/web"}))
        .token(json!({"sub": "alice", "jti": "t-1"}))
        .build(&InputOptions::default())
}

fn collecting_sink() -> (Arc<Mutex<Vec<DecisionLogRecord>>>, DecisionLogConfig) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let r = records.clone();
    let config = DecisionLogConfig::new(move |rec: DecisionLogRecord| r.lock().unwrap().push(rec));
    (records, config)
}

#[test]
fn decision_logs_follow_opas_format_and_mask_fields() {
    let (records, config) = collecting_sink();
    let engine = PolicyEngine::builder(PolicyOptions::new())
        .decision_log(
            config
                .erase("/input/attributes/request/http/headers/x-api-key")
                .mask("/input/token/sub", json!("***"))
                .label("app", "orders"),
        )
        .build(set("data.http.authz.decision", PolicyOptions::new()));

    let allowed = engine.decide(&request("GET"));
    let denied = engine.decide(&request("DELETE"));
    assert!(allowed.allow);
    assert!(!denied.allow);
    assert_eq!(denied.reasons, ["only GET is allowed"]);
    assert_eq!(
        allowed.headers.get("x-policy").map(String::as_str),
        Some("v1")
    );

    let records = records.lock().unwrap();
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(r.decision_id, allowed.decision_id);
    assert_eq!(records[1].decision_id, denied.decision_id);
    assert_eq!(r.path, "http/authz/decision");
    assert_eq!(r.revision, "log-7");
    assert_eq!(r.bundles["authz-bundle"].revision, "log-7");
    assert_eq!(r.requested_by.as_deref(), Some("192.0.2.9:4040"));
    assert_eq!(r.labels["app"], "orders");
    assert_eq!(r.metrics["timer_rego_query_eval_ns"], allowed.eval_ns);
    assert_eq!(
        r.result,
        Some(json!({"allow": true, "reasons": [], "headers": {"x-policy": "v1"}}))
    );
    let input = r.input.as_ref().unwrap();
    let headers = &input["attributes"]["request"]["http"]["headers"];
    assert!(headers.get("x-api-key").is_none(), "erased");
    assert!(headers.get("authorization").is_none(), "never in the input");
    assert_eq!(input["token"]["sub"], "***");
    assert_eq!(input["token"]["jti"], "t-1");
    assert_eq!(
        r.erased,
        ["/input/attributes/request/http/headers/x-api-key"]
    );
    assert_eq!(r.masked, ["/input/token/sub"]);
    // RFC 3339 UTC timestamp.
    assert!(
        r.timestamp.ends_with('Z') && r.timestamp.contains('T'),
        "{}",
        r.timestamp
    );

    // The JSON form uses OPA's field names.
    let v = serde_json::to_value(r).unwrap();
    for field in [
        "decision_id",
        "path",
        "input",
        "result",
        "bundles",
        "timestamp",
        "metrics",
        "erased",
        "masked",
        "labels",
        "requested_by",
    ] {
        assert!(v.get(field).is_some(), "{field}");
    }
    assert!(v.get("error").is_none());
    let back: DecisionLogRecord = serde_json::from_value(v).unwrap();
    assert_eq!(&back, r);
}

#[test]
fn evaluation_errors_deny_with_a_reason_and_are_logged() {
    for rule in ["data.http.authz.boom", "data.http.authz.conflict"] {
        // The compiled form turns such errors into undefined values, so it refuses the set.
        let mut m = Manifest::default();
        m.revision = "log-7".into();
        let archive = BundleWriter::new()
            .manifest(&m)
            .file("http/authz/policy.rego", POLICY)
            .to_tar_gz()
            .unwrap();
        let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
        let refused = PolicySet::compile(
            bundle,
            &PolicyOptions::new()
                .decision_rule(rule)
                .evaluator(Evaluator::Compiled),
        );
        assert!(
            matches!(refused, Err(policy_rego::PolicyError::Compile { .. })),
            "{rule}: {refused:?}"
        );
    }
    for evaluator in [Evaluator::Interpreter, Evaluator::Auto] {
        for rule in ["data.http.authz.boom", "data.http.authz.conflict"] {
            let (records, config) = collecting_sink();
            let s = set(rule, PolicyOptions::new().evaluator(evaluator));
            let engine = PolicyEngine::builder(PolicyOptions::new())
                .decision_log(config)
                .build(s);
            let d = engine.decide(&request("GET"));
            assert!(!d.allow, "{evaluator:?} {rule}");
            assert_eq!(d.reasons.len(), 1);
            assert!(
                d.reasons[0].starts_with("policy evaluation failed"),
                "{evaluator:?} {rule}: {:?}",
                d.reasons
            );
            let records = records.lock().unwrap();
            assert_eq!(records[0].result, None);
            assert_eq!(records[0].error.as_deref(), Some(d.reasons[0].as_str()));
        }
    }
}

#[test]
fn exceeding_the_time_budget_denies() {
    for evaluator in [Evaluator::Compiled, Evaluator::Interpreter] {
        let s = set(
            "data.http.authz.slow",
            PolicyOptions::new()
                .evaluator(evaluator)
                .time_budget(Duration::from_millis(2)),
        );
        let d = s.decide(&request("GET"));
        assert!(!d.allow, "{evaluator:?}");
        assert_eq!(
            d.reasons,
            ["policy evaluation exceeded its time budget"],
            "{evaluator:?}"
        );
        // The evaluator is usable again afterwards.
        let ok = set(
            "data.http.authz.allow",
            PolicyOptions::new().evaluator(evaluator),
        );
        assert!(ok.decide(&request("GET")).allow);
    }
}

#[test]
fn exceeding_the_instruction_budget_denies() {
    let s = set(
        "data.http.authz.slow",
        PolicyOptions::new()
            .evaluator(Evaluator::Compiled)
            .max_instructions(10_000)
            .time_budget(Duration::from_secs(60)),
    );
    let d = s.decide(&request("GET"));
    assert!(!d.allow);
    assert_eq!(
        d.reasons,
        ["policy evaluation exceeded its instruction budget"]
    );
}

#[test]
fn decision_ids_are_unique_and_revisions_attached() {
    let s = set("data.http.authz.allow", PolicyOptions::new());
    let a = s.decide(&request("GET"));
    let b = s.decide(&request("GET"));
    assert_ne!(a.decision_id, b.decision_id);
    assert_eq!(a.revision, "log-7");
    let deny = PolicyDecision::deny("no input");
    assert!(!deny.allow);
    assert_eq!(deny.reasons, ["no input"]);
    // Decisions serialize for handlers and logs.
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["allow"], true);
    assert_eq!(v["revision"], "log-7");
}

#[test]
fn engines_in_one_thread_do_not_share_evaluators() {
    // Two sets with different rules decided alternately on one thread.
    let allow = set("data.http.authz.allow", PolicyOptions::new());
    let decision = set("data.http.authz.decision", PolicyOptions::new());
    for _ in 0..10 {
        assert!(allow.decide(&request("GET")).reasons.is_empty());
        assert_eq!(
            decision
                .decide(&request("GET"))
                .headers
                .get("x-policy")
                .map(String::as_str),
            Some("v1")
        );
    }
}

#[test]
fn public_types_can_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<PolicyEngine>();
    send_sync::<PolicySet>();
    send_sync::<PolicyInput>();
    send_sync::<PolicyDecision>();
    send_sync::<DecisionLogRecord>();
    send_sync::<policy_rego::PolicyWatcher>();
    send_sync::<policy_rego::PolicyError>();
    // An engine moves into another thread and decides there.
    let engine = PolicyEngine::with_set(
        set("data.http.authz.allow", PolicyOptions::new()),
        PolicyOptions::new(),
    );
    let d = std::thread::spawn(move || engine.decide(&request("GET")))
        .join()
        .unwrap();
    assert!(d.allow);
}

/// One engine per policy set: the decision log is part of building the engine, so a watcher
/// created on it reloads the very engine that logs (issue 8 §1: `with_decision_log` used to
/// build a second engine that an earlier watcher never updated).
#[test]
fn a_watcher_reloads_the_engine_that_logs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    let write = |revision: &str, allow_get: bool| {
        let mut m = Manifest::default();
        m.revision = revision.into();
        let rego = format!("package http.authz\ndefault allow := false\nallow if {allow_get}\n");
        let archive = BundleWriter::new()
            .manifest(&m)
            .file("http/authz/policy.rego", rego)
            .to_tar_gz()
            .unwrap();
        std::fs::write(&path, archive).unwrap();
    };
    write("r1", true);
    let (records, config) = collecting_sink();
    let engine = PolicyEngine::builder(PolicyOptions::new())
        .decision_log(config)
        .load(&path)
        .unwrap();
    let watcher = policy_rego::PolicyWatcher::new(engine.clone(), &path);
    assert!(engine.decide(&request("GET")).allow);

    write("r2", false);
    assert!(matches!(watcher.poll(), policy_rego::WatchEvent::Pending));
    assert!(matches!(
        watcher.poll(),
        policy_rego::WatchEvent::Loaded { .. }
    ));

    let d = engine.decide(&request("GET"));
    assert!(
        !d.allow,
        "the engine that logs is the one the watcher reloaded"
    );
    assert_eq!(d.revision, "r2");
    let records = records.lock().unwrap();
    let revisions: Vec<&str> = records.iter().map(|r| r.revision.as_str()).collect();
    assert_eq!(revisions, ["r1", "r2"]);
}
