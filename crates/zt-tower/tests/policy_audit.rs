//! AuditLayer → JwtAuthLayer → PolicyLayer → axum router: decisions, the audit trail they
//! leave, and policy reloads under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::{Router, body::Body, routing::any};
use http::{Request, StatusCode};
use jwt_oidc::testing::{TestKey, jwks, now_unix};
use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator};
use policy_rego::{
    Bundle, BundleLoader, BundleWriter, Manifest, PolicyEngine, PolicyOptions, PolicySet,
};
use serde_json::json;
use support::audit_lines;
use tower::{ServiceBuilder, ServiceExt};
use zt_audit::{AuditLog, Durability};
use zt_tower::{AuditLayer, Decision, JwtAuthLayer, PolicyLayer};

const ISS: &str = "https://idp.example";

/// Allows reading orders with scope `orders:read`, deleting for role admin; revision `rev`.
fn bundle(rev: u32, broken: bool) -> Bundle {
    let mut manifest = Manifest::default();
    manifest.revision = format!("rev-{rev}");
    let rego = format!(
        r#"package http.authz

default allow := false

allow if {{
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "orders"
    "orders:read" in split(input.token.scope, " ")
}}

allow if {{
    input.attributes.request.http.method == "DELETE"
    "admin" in input.token.roles
}}
{}"#,
        if broken {
            "allow if {{ this is not rego"
        } else {
            ""
        }
    );
    let archive = BundleWriter::new()
        .manifest(&manifest)
        .file("authz.rego", &rego)
        .to_tar_gz()
        .unwrap();
    BundleLoader::new().load_tar_gz("orders", &archive).unwrap()
}

fn engine_builder() -> policy_rego::PolicyEngineBuilder {
    PolicyEngine::builder(PolicyOptions::new())
}

struct Stack {
    app: Router,
    key: TestKey,
    dir: tempfile::TempDir,
    log: AuditLog,
    engine: PolicyEngine,
}

fn stack() -> Stack {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience("orders")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Always)
        .open()
        .unwrap();
    let engine = engine_builder()
        .decision_log(
            policy_rego::DecisionLogConfig::new(zt_tower::decision_log_sink(log.clone()))
                .erase("/input/attributes/request/http/headers/x-api-key"),
        )
        .build(PolicySet::compile(bundle(0, false), &PolicyOptions::new()).unwrap());
    let app = Router::new()
        .route(
            "/{*path}",
            any(|Decision(d): Decision| async move { d.revision.clone() }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(AuditLayer::new(log.clone()))
                .layer(JwtAuthLayer::new(auth))
                .layer(PolicyLayer::new(engine.clone())),
        );
    Stack {
        app,
        key,
        dir,
        log,
        engine,
    }
}

fn token(key: &TestKey, claims: serde_json::Value) -> String {
    let mut all = json!({"iss": ISS, "aud": "orders", "sub": "alice", "exp": now_unix() + 300});
    all.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    key.token(&all)
}

fn req(method: &str, path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path).header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

async fn status(app: &Router, r: Request<Body>) -> StatusCode {
    app.clone().oneshot(r).await.unwrap().status()
}

#[tokio::test]
async fn decisions_and_their_audit_trail() {
    let s = stack();
    let reader = token(&s.key, json!({"scope": "orders:read"}));
    let admin = token(&s.key, json!({"roles": ["admin"], "scope": ""}));

    assert_eq!(
        status(&s.app, req("GET", "/orders/1", Some(&reader))).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&s.app, req("DELETE", "/orders/1", Some(&reader))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&s.app, req("DELETE", "/orders/1", Some(&admin))).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&s.app, req("GET", "/orders/1", None)).await,
        StatusCode::UNAUTHORIZED
    );

    let all = audit_lines(&s.log);
    let decision_logs: Vec<_> = all.iter().filter(|r| r["kind"] == "opa.decision").collect();
    let recs: Vec<_> = all
        .iter()
        .filter(|r| r["kind"] == "http.request")
        .cloned()
        .collect();
    assert_eq!(recs.len(), 4, "one record per request, denials included");
    // OPA-format decision logs for the three requests that reached the policy.
    assert_eq!(decision_logs.len(), 3);
    assert_eq!(decision_logs[1]["decision_id"], recs[1]["decision_id"]);
    assert_eq!(decision_logs[1]["path"], "http/authz/allow");
    assert_eq!(
        decision_logs[1]["input"]["attributes"]["request"]["http"]["method"],
        "DELETE"
    );
    assert_eq!(decision_logs[1]["revision"], "rev-0");
    let expect = [
        ("allow", "policy", 200, "GET"),
        ("deny", "policy", 403, "DELETE"),
        ("allow", "policy", 200, "DELETE"),
        ("deny", "jwt", 401, "GET"),
    ];
    for (rec, (decision, by, status, action)) in recs.iter().zip(expect) {
        assert_eq!(rec["decision"], decision, "{rec}");
        assert_eq!(rec["decided_by"], by, "{rec}");
        assert_eq!(rec["status"], status, "{rec}");
        assert_eq!(rec["action"], action, "{rec}");
        assert_eq!(rec["resource"], "/orders/1");
        assert_eq!(rec["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    assert_eq!(recs[0]["subject"], "alice");
    assert_eq!(recs[3]["subject"], "anonymous");
    assert_eq!(recs[0]["policy_revision"], "rev-0");
    assert!(
        recs[1]["decision_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    // The chain verifies, and no token reached the file.
    let report = zt_audit::verify_files(&s.log.files().unwrap()).unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert_eq!(report.records, 7);
    let bytes: Vec<u8> = s
        .log
        .files()
        .unwrap()
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    let text = String::from_utf8(bytes).unwrap();
    assert!(!text.contains(&reader[..40]) && !text.contains("Bearer"));
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_under_load_are_whole_and_broken_ones_never_load() {
    let s = Arc::new(stack());
    let reader = token(&s.key, json!({"scope": "orders:read"}));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));

    let mut clients = Vec::new();
    for _ in 0..4 {
        let (s, stop, served, reader) = (s.clone(), stop.clone(), served.clone(), reader.clone());
        clients.push(tokio::spawn(async move {
            let mut last_rev = 0u32;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let res = s
                    .app
                    .clone()
                    .oneshot(req("GET", "/orders/7", Some(&reader)))
                    .await
                    .unwrap();
                if res.status() != StatusCode::OK {
                    failures.push(format!("status {}", res.status()));
                    continue;
                }
                let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
                let rev: u32 = std::str::from_utf8(&body)
                    .unwrap()
                    .trim_start_matches("rev-")
                    .parse()
                    .unwrap();
                // Only valid (even) revisions are ever installed, and never go backwards.
                if !rev.is_multiple_of(2) || rev < last_rev {
                    failures.push(format!("revision {rev} after {last_rev}"));
                }
                last_rev = rev;
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    for rev in 1..=20u32 {
        let broken = rev % 2 == 1;
        let before = served.load(Ordering::Relaxed);
        let result = tokio::task::block_in_place(|| s.engine.reload_bundle(bundle(rev, broken)));
        assert_eq!(result.is_err(), broken, "reload of rev {rev}");
        let expect = if broken {
            format!("rev-{}", rev - 1)
        } else {
            format!("rev-{rev}")
        };
        assert_eq!(s.engine.revision(), expect);
        // Let the clients make progress under each policy before the next swap.
        while served.load(Ordering::Relaxed) < before + 20 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    let stats = s.engine.reload_stats();
    assert_eq!((stats.loaded, stats.refused), (10, 10));
    assert!(served.load(Ordering::Relaxed) >= 400);
}
