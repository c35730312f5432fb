//! Where `PolicyLayer` evaluates: off the async workers by default, and fail closed when the
//! evaluation pool is saturated or an evaluation panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use policy_rego::{
    BundleLoader, BundleWriter, DecisionLogConfig, DecisionLogRecord, PolicyEngine, PolicyOptions,
    PolicySet,
};
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use zt_tower::{PolicyLayer, TlsConnectInfo, request_decision, response_verdict};

/// GET is allowed, anything else denied.
fn set(options: &PolicyOptions) -> PolicySet {
    let archive = BundleWriter::new()
        .file(
            "authz.rego",
            "package http.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n",
        )
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("inline", &archive).unwrap();
    PolicySet::compile(bundle, options).unwrap()
}

/// An engine whose first decision does not return until `release` is sent to; every
/// decision reports on `entered` when it starts logging (that is, inside the evaluation).
struct Gate {
    entered: tokio::sync::mpsc::UnboundedReceiver<usize>,
    release: mpsc::Sender<()>,
}

fn gated_engine() -> (PolicyEngine, Gate) {
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let calls = AtomicUsize::new(0);
    let sink = move |_: DecisionLogRecord| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        entered_tx.send(n).unwrap();
        if n == 0 {
            release_rx.lock().unwrap().recv().unwrap();
        }
    };
    let options = PolicyOptions::new();
    let engine = PolicyEngine::builder(options.clone())
        .decision_log(DecisionLogConfig::new(sink))
        .build(set(&options));
    (engine, Gate { entered, release })
}

fn panicking_engine() -> PolicyEngine {
    let options = PolicyOptions::new();
    PolicyEngine::builder(options.clone())
        .decision_log(DecisionLogConfig::new(|_: DecisionLogRecord| {
            panic!("decision-log sink failed")
        }))
        .build(set(&options))
}

type Svc = BoxCloneService<Request<()>, Response<String>, BoxError>;

fn service(layer: PolicyLayer) -> Svc {
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new("ok".into())) })
        .map_err(BoxError::from)
        .boxed_clone()
}

async fn call(svc: Svc, req: Request<()>) -> Response<String> {
    tokio::time::timeout(Duration::from_secs(30), svc.oneshot(req))
        .await
        .expect("the request completes")
        .unwrap()
}

fn get() -> Request<()> {
    Request::get("/orders").body(()).unwrap()
}

fn assert_denied_by_policy(res: &Response<String>, reason: &str) {
    let verdict = response_verdict(res.extensions()).expect("a verdict on the refusal");
    assert_eq!(verdict.decided_by(), "policy");
    assert!(!verdict.is_allow());
    assert_eq!(verdict.reasons(), [reason]);
    let decision = request_decision(res.extensions()).expect("the decision on the refusal");
    assert!(!decision.allow);
    assert_eq!(decision.reasons, [reason]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_running_evaluation_does_not_stall_the_worker() {
    // One async worker. Inline, the first evaluation would hold it, and the second request
    // could not even start.
    let (engine, mut gate) = gated_engine();
    let svc = service(
        PolicyLayer::new(engine)
            .blocking_pool(2, 0)
            .max_concurrent_per_source(2),
    );
    let first = tokio::spawn(call(svc.clone(), get()));
    assert_eq!(gate.entered.recv().await, Some(0));

    let second = call(svc.clone(), get()).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert!(!first.is_finished());

    gate.release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn a_saturated_pool_denies_with_a_reason_and_recovers() {
    let (engine, mut gate) = gated_engine();
    let svc = service(PolicyLayer::new(engine).blocking_pool(1, 0));
    let first = tokio::spawn(call(svc.clone(), get()));
    assert_eq!(gate.entered.recv().await, Some(0));

    // The one evaluation thread is busy and nothing may wait: refused, never allowed.
    let refused = call(svc.clone(), get()).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_denied_by_policy(&refused, "policy evaluation pool saturated");
    // The same through the gRPC rejection path.
    let grpc = Request::post("/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let refused = call(svc.clone(), grpc).await;
    assert_eq!(refused.status(), StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "7");
    assert_denied_by_policy(&refused, "policy evaluation pool saturated");

    gate.release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    // The place is free again.
    assert_eq!(call(svc.clone(), get()).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_requests_get_their_turn_up_to_the_queue_limit() {
    let (engine, mut gate) = gated_engine();
    let svc = service(PolicyLayer::new(engine).blocking_pool(1, 1));
    let first = tokio::spawn(call(svc.clone(), get()));
    assert_eq!(gate.entered.recv().await, Some(0));
    // Admitted to the queue: waits without holding the worker.
    let queued = tokio::spawn(call(svc.clone(), get()));
    tokio::task::yield_now().await;
    // The queue is full.
    let refused = call(svc.clone(), get()).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_denied_by_policy(&refused, "policy evaluation pool saturated");
    assert!(!queued.is_finished());

    gate.release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    assert_eq!(queued.await.unwrap().status(), StatusCode::OK);
}

fn get_from(addr: &str) -> Request<()> {
    let mut req = get();
    req.extensions_mut()
        .insert(TlsConnectInfo::new(addr.parse().unwrap(), None));
    req
}

#[tokio::test(flavor = "current_thread")]
async fn a_source_that_fills_its_share_waits_behind_itself_not_in_front_of_others() {
    let (engine, mut gate) = gated_engine();
    // Two evaluations at once, one per source; six places, three per source.
    let svc = service(PolicyLayer::new(engine).blocking_pool(2, 4));
    let a = "10.0.0.1:4000";
    let first = tokio::spawn(call(svc.clone(), get_from(a)));
    assert_eq!(gate.entered.recv().await, Some(0));
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(call(svc.clone(), get_from(a))))
        .collect();
    tokio::task::yield_now().await;
    // Source A has used its share of the places.
    let refused = call(svc.clone(), get_from(a)).await;
    assert_denied_by_policy(&refused, "policy evaluation pool saturated");

    // Another source is served at once, while A's first evaluation still runs and A's
    // others wait.
    let other = call(svc.clone(), get_from("10.0.0.2:4000")).await;
    assert_eq!(other.status(), StatusCode::OK);
    assert!(waiting.iter().all(|w| !w.is_finished()));

    gate.release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    for w in waiting {
        assert_eq!(w.await.unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_evaluation_denies_by_default() {
    let svc = service(PolicyLayer::new(panicking_engine()));
    let res = call(svc.clone(), get()).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_denied_by_policy(&res, "policy evaluation panicked");
    // The pool is not poisoned: the next one is decided (and denied) the same way.
    let res = call(svc.clone(), get()).await;
    assert_denied_by_policy(&res, "policy evaluation panicked");
}

#[tokio::test(flavor = "current_thread")]
async fn inline_evaluation_decides_on_the_calling_thread() {
    let options = PolicyOptions::new();
    let svc =
        service(PolicyLayer::new(PolicyEngine::with_set(set(&options), options)).evaluate_inline());
    assert_eq!(call(svc.clone(), get()).await.status(), StatusCode::OK);
    let delete = Request::delete("/orders/1").body(()).unwrap();
    let res = call(svc.clone(), delete).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_denied_by_policy(&res, "denied by data.http.authz.allow");
}
