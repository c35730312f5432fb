//! AuditLayer: exactly one record per request, whatever became of it — completed, refused
//! (by a layer or an axum extractor), failed, panicked, aborted — with the verdict that
//! came back on the response, never a default. Every test reads the records back from the
//! file and verifies the hash chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use http::{Request, Response, StatusCode};
use jwt_oidc::testing::{TestKey, jwks, now_unix};
use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator};
use mtls_verify::PeerIdentity;
use policy_rego::{BundleLoader, BundleWriter, PolicyEngine, PolicyOptions, PolicySet};
use serde_json::{Value, json};
use support::verified_audit_lines;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use zt_audit::{AuditLog, Durability};
use zt_tower::{
    AuditLayer, Decision, JwtAuthLayer, PolicyLayer, RequireClaimsLayer, RequireIdentityLayer,
    TlsConnectInfo, TokenClaims, VerifiedPeer,
};
use ztkit_test_support::TestCa;

const ISS: &str = "https://idp.example";
const SPIFFE: &str = "spiffe://example.org/web";

// === helpers ===

fn open_log() -> (tempfile::TempDir, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Always)
        .open()
        .unwrap();
    (dir, log)
}

/// Every request record in the log, after checking the whole chain.
fn records(log: &AuditLog) -> Vec<Value> {
    verified_audit_lines(log)
        .into_iter()
        .filter(|r| r["kind"] == "http.request" || r["kind"] == "grpc.request")
        .collect()
}

/// The one record the log holds for the one request made.
fn only_record(log: &AuditLog) -> Value {
    let recs = records(log);
    assert_eq!(recs.len(), 1, "exactly one record per request: {recs:#?}");
    recs.into_iter().next().unwrap()
}

/// Waits until the log holds `n` request records (for records written by a `Drop` on
/// another task), then checks that no more arrive.
async fn wait_for_records(log: &AuditLog, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        if records(log).len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recs = records(log);
    assert_eq!(recs.len(), n, "{recs:#?}");
    recs
}

fn assert_outcome(rec: &Value, outcome: &str, decided_by: Value, decision: Value) {
    assert_eq!(rec["outcome"], outcome, "{rec:#}");
    assert_eq!(rec["decided_by"], decided_by, "{rec:#}");
    assert_eq!(rec["decision"], decision, "{rec:#}");
}

fn peer() -> Arc<PeerIdentity> {
    let ca = TestCa::new("Test Root");
    let leaf = ca.leaf("web").spiffe_id(SPIFFE).client_auth().issue();
    Arc::new(PeerIdentity::from_der(&leaf.cert_der).unwrap())
}

/// A request on a connection with a verified client certificate.
fn with_peer(mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut().insert(TlsConnectInfo::new(
        "10.0.0.7:4000".parse().unwrap(),
        Some(peer()),
    ));
    req
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn get_with_token(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

async fn ok(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn key_and_auth() -> (TestKey, JwtAuthenticator) {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience("orders")
        .build()
        .unwrap();
    (key, auth)
}

fn token(key: &TestKey, extra: Value) -> String {
    let mut claims = json!({"iss": ISS, "aud": "orders", "sub": "alice", "exp": now_unix() + 300});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    key.token(&claims)
}

/// Allows GET, denies everything else; revision `rev-7`.
fn engine() -> PolicyEngine {
    let mut manifest = policy_rego::Manifest::default();
    manifest.revision = "rev-7".into();
    let archive = BundleWriter::new()
        .manifest(&manifest)
        .file(
            "authz.rego",
            "package http.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n",
        )
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("inline", &archive).unwrap();
    let options = PolicyOptions::new();
    PolicyEngine::with_set(PolicySet::compile(bundle, &options).unwrap(), options)
}

// === completed ===

#[tokio::test]
async fn completed_200_is_recorded_with_the_gate_that_allowed_it_once_durable() {
    let (_dir, log) = open_log();
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(log.clone()))
        .layer(RequireIdentityLayer::new(|_: &PeerIdentity| true))
        .service(service_fn(ok));
    let req = Request::get("/orders/1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::empty())
        .unwrap();
    let res = svc.oneshot(with_peer(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Released only once the record is durable (Durability::Always).
    assert_eq!(log.stats().durable_seq, 1);

    let rec = only_record(&log);
    assert_outcome(&rec, "completed", json!("identity"), json!("allow"));
    assert_eq!(rec["kind"], "http.request");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["subject"], SPIFFE);
    assert_eq!(rec["spiffe_id"], SPIFFE);
    assert_eq!(rec["peer"], "10.0.0.7:4000");
    assert_eq!(rec["action"], "GET");
    assert_eq!(rec["resource"], "/orders/1");
    assert_eq!(rec["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(rec["latency_us"].is_u64());
}

#[tokio::test]
async fn a_plain_404_or_500_from_the_app_is_decided_by_the_application_not_allowed() {
    let (_dir, log) = open_log();
    let router = Router::new().route(
        "/broken",
        get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
    );
    let app = AuditLayer::new(log.clone()).layer(router);
    let res = app.clone().oneshot(get_req("/missing")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app.clone().oneshot(get_req("/broken")).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let recs = records(&log);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for (rec, status) in recs.iter().zip([404, 500]) {
        assert_outcome(rec, "completed", json!("application"), Value::Null);
        assert_eq!(rec["status"], status);
        assert_eq!(rec["reason"], Value::Null);
        assert_eq!(rec["subject"], "anonymous");
    }
}

// === refused by a layer ===

#[tokio::test]
async fn refused_by_require_identity_names_the_layer_and_the_reason() {
    let (_dir, log) = open_log();
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(log.clone()))
        .layer(RequireIdentityLayer::new(|p: &PeerIdentity| {
            p.spiffe_id().is_some_and(|id| id.as_str().ends_with("/db"))
        }))
        .service(service_fn(ok));
    // No certificate at all.
    let res = svc.clone().oneshot(get_req("/x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A certificate the authorizer rejects, over gRPC.
    let grpc = Request::post("/orders.Orders/Get")
        .header("content-type", "application/grpc")
        .body(Body::empty())
        .unwrap();
    let res = svc.oneshot(with_peer(grpc)).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "7");

    let recs = records(&log);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_outcome(&recs[0], "refused", json!("identity"), json!("deny"));
    assert_eq!(recs[0]["status"], 403);
    assert_eq!(recs[0]["reason"], "client certificate required");
    assert_outcome(&recs[1], "refused", json!("identity"), json!("deny"));
    assert_eq!(recs[1]["kind"], "grpc.request");
    assert_eq!(recs[1]["action"], "orders.Orders/Get");
    assert_eq!(recs[1]["grpc_status"], 7);
    assert_eq!(recs[1]["subject"], SPIFFE);
    assert!(
        recs[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("identity not authorized"),
        "{:#}",
        recs[1]
    );
}

#[tokio::test]
async fn refused_by_jwt_and_scope_layers_names_the_layer_and_the_reason() {
    let (_dir, log) = open_log();
    let (key, auth) = key_and_auth();
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(log.clone()))
        .layer(JwtAuthLayer::new(auth))
        .layer(RequireClaimsLayer::scopes(["orders:write"]))
        .service(service_fn(ok));

    let res = svc.clone().oneshot(get_req("/orders")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let expired =
        key.token(&json!({"iss": ISS, "aud": "orders", "sub": "alice", "exp": now_unix() - 600}));
    let res = svc
        .clone()
        .oneshot(get_with_token("/orders", &expired))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let reader = token(&key, json!({"scope": "orders:read"}));
    let res = svc
        .clone()
        .oneshot(get_with_token("/orders", &reader))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let writer = token(&key, json!({"scope": "orders:write"}));
    let res = svc
        .oneshot(get_with_token("/orders", &writer))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let recs = records(&log);
    assert_eq!(recs.len(), 4, "{recs:#?}");
    assert_outcome(&recs[0], "refused", json!("jwt"), json!("deny"));
    assert_eq!(recs[0]["reason"], "missing bearer token");
    assert_eq!(recs[0]["subject"], "anonymous");
    assert_outcome(&recs[1], "refused", json!("jwt"), json!("deny"));
    assert!(
        recs[1]["reason"].as_str().unwrap().contains("expired"),
        "the jwt layer's detail, not the client's \"invalid token\": {:#}",
        recs[1]
    );
    // Authenticated, then refused further in: the scope layer's verdict, alice's record.
    assert_outcome(&recs[2], "refused", json!("scope"), json!("deny"));
    assert_eq!(recs[2]["reason"], "missing scope orders:write");
    assert_eq!(recs[2]["subject"], "alice");
    assert_eq!(recs[2]["token_sub"], "alice");
    assert_outcome(&recs[3], "completed", json!("scope"), json!("allow"));
    assert_eq!(recs[3]["subject"], "alice");
    // No token reached the file.
    let text: String = log
        .files()
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(!text.contains(&reader[..40]) && !text.contains(&expired[..40]));
}

#[tokio::test]
async fn refused_by_policy_names_the_policy_its_reason_and_decision() {
    let (_dir, log) = open_log();
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(log.clone()))
        .layer(PolicyLayer::new(engine()))
        .service(service_fn(ok));
    let delete = Request::delete("/orders/1").body(Body::empty()).unwrap();
    let res = svc.clone().oneshot(delete).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = svc.oneshot(get_req("/orders/1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let recs = records(&log);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_outcome(&recs[0], "refused", json!("policy"), json!("deny"));
    assert!(
        recs[0]["reason"].as_str().unwrap().contains("denied by"),
        "{:#}",
        recs[0]
    );
    assert_outcome(&recs[1], "completed", json!("policy"), json!("allow"));
    for rec in &recs {
        assert_eq!(rec["policy_revision"], "rev-7");
        assert!(rec["decision_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert_ne!(recs[0]["decision_id"], recs[1]["decision_id"]);
}

// === refused by an axum extractor ===

#[tokio::test]
async fn extractor_refusals_are_recorded_as_deny_by_the_extractor() {
    let (_dir, log) = open_log();
    let router = Router::new()
        .route(
            "/peer",
            get(|VerifiedPeer(p): VerifiedPeer| async move { p.subject().to_owned() }),
        )
        .route(
            "/claims",
            get(|TokenClaims(c): TokenClaims| async move { c.subject().unwrap_or("").to_owned() }),
        )
        .route(
            "/decision",
            get(|Decision(d): Decision| async move { d.revision.clone() }),
        );
    let app = AuditLayer::new(log.clone()).layer(router);
    for path in ["/peer", "/claims", "/decision"] {
        let res = app.clone().oneshot(get_req(path)).await.unwrap();
        assert!(res.status().is_client_error(), "{path}: {}", res.status());
    }

    let recs = records(&log);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    let expect = [
        ("VerifiedPeer", 403, "client certificate required"),
        ("TokenClaims", 401, "missing bearer token"),
        ("Decision", 403, "no policy decision"),
    ];
    for (rec, (by, status, reason)) in recs.iter().zip(expect) {
        assert_outcome(rec, "refused", json!(by), json!("deny"));
        assert_eq!(rec["status"], status);
        assert_eq!(rec["reason"], reason);
    }
}

#[tokio::test]
async fn an_extractor_refusal_behind_allowing_layers_is_a_deny_not_the_layers_allow() {
    // The token is valid and the policy allows: before, the record said "allow" by policy
    // although the client got the VerifiedPeer extractor's 403.
    let (_dir, log) = open_log();
    let (key, auth) = key_and_auth();
    let router = Router::new()
        .route(
            "/orders/{id}",
            get(|VerifiedPeer(p): VerifiedPeer| async move { p.subject().to_owned() }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(AuditLayer::new(log.clone()))
                .layer(JwtAuthLayer::new(auth))
                .layer(PolicyLayer::new(engine())),
        );
    let t = token(&key, json!({}));
    let res = router
        .oneshot(get_with_token("/orders/1", &t))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let rec = only_record(&log);
    assert_outcome(&rec, "refused", json!("VerifiedPeer"), json!("deny"));
    assert_eq!(rec["reason"], "client certificate required");
    // What the layers further out learnt still comes back with the response.
    assert_eq!(rec["subject"], "alice");
    assert_eq!(rec["policy_revision"], "rev-7");
}

// === no response ===

#[tokio::test]
async fn an_inner_service_error_is_recorded_as_failed() {
    let (_dir, log) = open_log();
    let svc = AuditLayer::new(log.clone()).layer(service_fn(|_req: Request<Body>| async {
        Err::<Response<Body>, _>(std::io::Error::other("backend down"))
    }));
    let err = svc.oneshot(with_peer(get_req("/x"))).await.unwrap_err();
    assert_eq!(err.to_string(), "backend down");

    let rec = only_record(&log);
    assert_outcome(&rec, "failed", Value::Null, Value::Null);
    assert_eq!(rec["reason"], "backend down");
    assert_eq!(rec["subject"], SPIFFE);
    assert!(rec.get("status").is_none(), "{rec:#}");
}

#[tokio::test]
async fn a_panicking_handler_is_recorded_as_panicked_and_the_panic_goes_on() {
    let (_dir, log) = open_log();
    let router = Router::new().route(
        "/boom",
        get(|| async {
            if true {
                panic!("handler exploded");
            }
            "unreachable"
        }),
    );
    let app = AuditLayer::new(log.clone()).layer(router);
    let joined = tokio::spawn(app.oneshot(get_req("/boom"))).await;
    assert!(joined.unwrap_err().is_panic(), "the panic is resumed");

    let rec = only_record(&log);
    assert_outcome(&rec, "panicked", Value::Null, Value::Null);
    assert_eq!(rec["reason"], "panicked: handler exploded");
    assert_eq!(rec["resource"], "/boom");
}

#[derive(Clone)]
struct PanicsInCall;

impl Service<Request<Body>> for PanicsInCall {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        panic!("call exploded")
    }
}

#[tokio::test]
async fn a_service_panicking_in_call_is_recorded_as_panicked() {
    let (_dir, log) = open_log();
    let svc = AuditLayer::new(log.clone()).layer(PanicsInCall);
    let joined = tokio::spawn(svc.oneshot(get_req("/x"))).await;
    assert!(joined.unwrap_err().is_panic());

    let rec = only_record(&log);
    assert_outcome(&rec, "panicked", Value::Null, Value::Null);
    assert_eq!(rec["reason"], "panicked: call exploded");
}

fn hanging_router() -> Router {
    Router::new().route(
        "/hang",
        get(|| async {
            std::future::pending::<()>().await;
            "unreachable"
        }),
    )
}

#[tokio::test]
async fn a_response_future_dropped_mid_flight_is_recorded_as_aborted() {
    let (_dir, log) = open_log();
    let (key, auth) = key_and_auth();
    let app = ServiceBuilder::new()
        .layer(AuditLayer::new(log.clone()))
        .layer(JwtAuthLayer::new(auth))
        .service(hanging_router());
    let t = token(&key, json!({}));
    // Polled into the handler, then given up on (as a client reset or an outer timeout does).
    let timed_out = tokio::time::timeout(
        Duration::from_millis(100),
        app.clone().oneshot(with_peer(get_with_token("/hang", &t))),
    )
    .await;
    assert!(timed_out.is_err());
    let rec = only_record(&log);
    assert_outcome(&rec, "aborted", Value::Null, Value::Null);
    assert!(rec.get("status").is_none(), "{rec:#}");
    // The token subject never came back; the connection's identity did not go away.
    assert_eq!(rec["subject"], SPIFFE);
    assert!(rec["latency_us"].as_u64().unwrap() >= 100_000);
    // Made durable by the log's background thread, with nobody polling for it.
    assert!(log.wait_durable(1, Duration::from_secs(30)));

    // Dropped before it was ever polled: recorded too.
    let mut svc = app.clone();
    let fut = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get_req("/hang"));
    drop(fut);
    let recs = records(&log);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_outcome(&recs[1], "aborted", Value::Null, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_the_connection_leaves_an_aborted_record() {
    use tokio::io::AsyncWriteExt;

    let (_dir, log) = open_log();
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let router = Router::new().route(
        "/hang",
        get(move || {
            let entered = entered_tx.clone();
            async move {
                let _ = entered.send(());
                std::future::pending::<()>().await;
                "unreachable"
            }
        }),
    );
    let app = router.layer(AuditLayer::new(log.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /hang HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), entered_rx.recv())
        .await
        .expect("the handler was never entered");
    // Reset, not a graceful close (a zero linger does not block on drop).
    #[allow(deprecated)]
    client.set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);

    let recs = wait_for_records(&log, 1).await;
    assert_outcome(&recs[0], "aborted", Value::Null, Value::Null);
    assert_eq!(recs[0]["resource"], "/hang");
    server.abort();
}

// === the log fails closed ===

#[tokio::test]
async fn when_the_record_cannot_be_written_the_response_is_503_and_nothing_is_on_record() {
    let dir = tempfile::tempdir().unwrap();
    // Every record after the first needs a new file, and the next file is made
    // unusable below: the append fails (fail closed, the default).
    let log = AuditLog::builder(dir.path())
        .max_file_size(1)
        .open()
        .unwrap();
    let svc = AuditLayer::new(log.clone()).layer(service_fn(ok));
    let res = svc.clone().oneshot(get_req("/first")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    std::fs::write(dir.path().join("audit-00000002.jsonl"), "in the way\n").unwrap();

    let res = svc.clone().oneshot(get_req("/second")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let grpc = Request::post("/orders.Orders/Get")
        .header("content-type", "application/grpc")
        .body(Body::empty())
        .unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");

    // Only the first request is on record (the in-the-way file is not part of the log's
    // chain as far as this writer got; read the first file alone).
    let first = std::fs::read_to_string(dir.path().join("audit-00000001.jsonl")).unwrap();
    assert_eq!(first.lines().count(), 1);
    assert!(first.contains("\"resource\":\"/first\""));
    let report = zt_audit::verify_files(&[dir.path().join("audit-00000001.jsonl")]).unwrap();
    assert!(report.is_intact());
}
