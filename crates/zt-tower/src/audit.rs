//! Exactly one tamper-evident audit record per request, with [`zt_audit`].
//!
//! [`AuditLayer`] goes outermost, so it sees every request, including those the layers
//! under it refuse. Every request that enters it leaves exactly one record (kind
//! `http.request` or `grpc.request`), whatever becomes of it; the record's `outcome` says
//! which:
//!
//! | `outcome` | what became of the request | `decided_by` |
//! |---|---|---|
//! | `completed` | a response came back that nobody refused | the innermost gate that let it through (`policy`, `jwt`, …), or `application` when no layer decided |
//! | `refused` | a response came back carrying a deny [`Verdict`](crate::Verdict) | the refusing layer or extractor (`identity`, `jwt`, `scope`, `policy`, `VerifiedPeer`, `TokenClaims`, `Decision`, …) |
//! | `failed` | the inner service returned an error (the `reason`) | `null` |
//! | `panicked` | the inner service panicked (the `reason` has the message); the panic then goes on unwinding | `null` |
//! | `aborted` | the response future was dropped before it finished: the client reset the stream or closed the connection, an outer timeout, a shutdown | `null` |
//!
//! Verdicts come back on the response ([`crate::verdict`]): `decision` is the verdict's
//! `allow`/`deny` and `reason` its reasons; a response without one was decided by the
//! application alone and has no `decision`, only its `status`. Nothing defaults to allow.
//!
//! **How a record is guaranteed.** `call` creates a guard holding what the record needs
//! from the request, and moves it into the response future. Every way out of the future
//! finishes the guard with its outcome. The inner service is called inside
//! `catch_unwind`, so a panic — in its `call` or in its future — is recorded as
//! `panicked` and then resumed. If the response future is dropped before it finishes,
//! the guard's `Drop` writes the `aborted` record with [`AuditLog::submit`]: the record is
//! sequenced and written on the dropping thread before `Drop` returns and made durable by
//! the log's background thread; nothing waits for the dropped future to be polled again.
//! (A guard dropped while a panic unwinds through it records `panicked`.) One record per
//! request rather than a start record and an outcome record: the chain orders requests
//! by when they ended, and the common case costs one record, not two.
//!
//! **Durability.** A response (completed or refused) is released only once its record is
//! written — under [`Durability::Always`](zt_audit::Durability::Always), fsynced
//! (concurrent requests share fsyncs). If the record cannot be written and the log fails
//! closed (the default), the response is replaced by 503 / gRPC `UNAVAILABLE` and an error
//! is logged: nothing is answered that is not on record. (The handler has run by then;
//! the audit log records outcomes, it is not a write-ahead log for the handler's side
//! effects.) A request that ends without a response (`failed`, `panicked`, `aborted`) has
//! no answer to hold back: its record is written at once, before the error is passed on
//! or the panic resumed, and fsynced in the background.
//!
//! **L7 rules.** With `L7RulesLayer` (feature `l7`) under it, the record also says what the
//! rules decided, whoever had the last word: `l7_verdict` (`allow`, `deny`, `audit`),
//! `l7_reason` (`rule`, `default`, `non_canonical`, …) and `l7_rule` (the rule id or `null`).
//!
//! **Who.** The subject is the token subject when `JwtAuthLayer` sent the verified claims
//! back on the response, else the SPIFFE ID, else the certificate subject, else
//! `anonymous`. The token subject and the policy decision (`decision_id`,
//! `policy_revision`) travel back on the response, so a request that ends without one
//! (failed, panicked, aborted) is recorded with its connection's identity only.
//!
//! ```no_run
//! # fn build() -> Result<(), zt_audit::AuditError> {
//! use zt_audit::AuditLog;
//! use zt_tower::AuditLayer;
//!
//! let log = AuditLog::builder("/var/log/myapp/audit").open()?;
//! let layer = AuditLayer::new(log);
//! # let _ = layer; Ok(()) }
//! ```

use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use zt_audit::{AuditLog, Record};

use crate::rejection::{grpc_method, is_grpc};
use crate::{Rejection, connect_info, peer_identity, response_verdict};

/// Layer that applies [`Audit`]; see the module docs.
#[derive(Clone)]
pub struct AuditLayer {
    log: AuditLog,
}

impl AuditLayer {
    /// Records every request into `log`.
    pub fn new(log: AuditLog) -> Self {
        AuditLayer { log }
    }
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("dir", &self.log.dir())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            log: self.log.clone(),
        }
    }
}

/// Middleware applied by [`AuditLayer`].
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    log: AuditLog,
}

impl<S> Audit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

// === the record ===

/// What the audit record needs from the request, taken before the request moves on.
#[derive(Default)]
struct Seen {
    grpc: bool,
    action: String,
    resource: String,
    traceparent: Option<String>,
    peer_subject: Option<String>,
    spiffe_id: Option<String>,
    remote_addr: Option<String>,
}

fn seen<B>(req: &Request<B>) -> Seen {
    let grpc = is_grpc(req.headers());
    let path = req.uri().path();
    let (action, resource) = match (grpc, grpc_method(path)) {
        (true, Some((service, method))) => (format!("{service}/{method}"), path.to_owned()),
        _ => (req.method().as_str().to_owned(), path.to_owned()),
    };
    let peer = peer_identity(req.extensions());
    Seen {
        grpc,
        action,
        resource,
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        peer_subject: peer.map(|p| p.subject().to_owned()),
        spiffe_id: peer.and_then(|p| p.spiffe_id().map(|id| id.as_str().to_owned())),
        remote_addr: connect_info(req.extensions()).map(|i| i.remote_addr().to_string()),
    }
}

/// What became of a request, as the record says it.
struct Outcome<'a> {
    outcome: &'static str,
    /// `None` when no response came back.
    decided_by: Option<&'a str>,
    decision: Option<&'static str>,
    reason: Option<String>,
    status: Option<u16>,
    grpc_status: Option<u16>,
    token_sub: Option<&'a str>,
    /// Decision id and policy revision.
    policy: Option<(&'a str, &'a str)>,
    /// What the l7 rules decided: verdict, reason, rule id.
    l7: Option<(&'static str, &'static str, Option<&'a str>)>,
}

impl Outcome<'static> {
    /// A request that ended without a response.
    fn ended(outcome: &'static str, reason: String) -> Self {
        Outcome {
            outcome,
            decided_by: None,
            decision: None,
            reason: Some(reason),
            status: None,
            grpc_status: None,
            token_sub: None,
            policy: None,
            l7: None,
        }
    }
}

impl<'a> Outcome<'a> {
    /// A response, and the verdict and facts the layers under us sent back with it.
    fn response<B>(res: &'a Response<B>) -> Self {
        let extensions = res.extensions();
        let verdict = response_verdict(extensions);
        #[cfg(feature = "jwt")]
        let token_sub = crate::request_claims(extensions).and_then(|c| c.subject());
        #[cfg(not(feature = "jwt"))]
        let token_sub = None;
        #[cfg(feature = "policy")]
        let policy = crate::request_decision(extensions)
            .map(|d| (d.decision_id.as_str(), d.revision.as_str()));
        #[cfg(not(feature = "policy"))]
        let policy = None;
        #[cfg(feature = "l7")]
        let l7 = crate::l7_decision(extensions)
            .map(|d| (d.verdict().as_str(), d.reason().as_str(), d.rule_id()));
        #[cfg(not(feature = "l7"))]
        let l7 = None;
        Outcome {
            outcome: match verdict {
                Some(v) if !v.is_allow() => "refused",
                _ => "completed",
            },
            decided_by: Some(verdict.map_or("application", |v| v.decided_by())),
            decision: verdict.map(|v| if v.is_allow() { "allow" } else { "deny" }),
            reason: verdict
                .filter(|v| !v.reasons().is_empty())
                .map(|v| v.reasons().join("; ")),
            status: Some(res.status().as_u16()),
            grpc_status: res
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            token_sub,
            policy,
            l7,
        }
    }
}

impl Seen {
    /// The one place the record is laid out, for every outcome.
    fn record(self, o: Outcome<'_>, latency: Duration) -> Record {
        let subject = o
            .token_sub
            .or(self.spiffe_id.as_deref())
            .or(self.peer_subject.as_deref())
            .unwrap_or("anonymous")
            .to_owned();
        let mut record = Record::new(if self.grpc {
            "grpc.request"
        } else {
            "http.request"
        })
        .subject(subject)
        .action(self.action)
        .resource(self.resource)
        .field("outcome", o.outcome)
        .field("decided_by", o.decided_by);
        if let Some(tp) = &self.traceparent {
            record = record.traceparent(tp);
        }
        if let Some(decision) = o.decision {
            record = record.decision(decision);
        }
        if let Some(reason) = o.reason {
            record = record.reason(reason);
        }
        if let Some(status) = o.status {
            record = record.field("status", status);
        }
        if let Some(code) = o.grpc_status {
            record = record.field("grpc_status", code);
        }
        record = record.field("latency_us", latency.as_micros() as u64);
        if let Some(id) = self.spiffe_id {
            record = record.field("spiffe_id", id);
        }
        if let Some(sub) = o.token_sub {
            record = record.field("token_sub", sub);
        }
        if let Some(addr) = self.remote_addr {
            record = record.field("peer", addr);
        }
        if let Some((decision_id, revision)) = o.policy {
            record = record
                .field("decision_id", decision_id)
                .field("policy_revision", revision);
        }
        if let Some((verdict, reason, rule)) = o.l7 {
            record = record
                .field("l7_verdict", verdict)
                .field("l7_reason", reason)
                .field("l7_rule", rule);
        }
        record
    }
}

/// At most this many bytes of an error or panic message go into a record's reason.
const MAX_MESSAGE: usize = 256;

fn bounded(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

fn panic_reason(payload: &(dyn Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    match message {
        Some(m) => format!("panicked: {}", bounded(m)),
        None => "panicked".to_owned(),
    }
}

// === the guard ===

/// The record of one request in flight. The response future finishes it on every way
/// out; dropped unfinished, it writes the record itself (`aborted`, or `panicked` when a
/// panic is unwinding) without waiting for anything.
struct InFlight {
    log: AuditLog,
    started: Instant,
    seen: Seen,
    finished: bool,
}

impl InFlight {
    fn new(log: AuditLog, seen: Seen) -> Self {
        InFlight {
            log,
            started: Instant::now(),
            seen,
            finished: false,
        }
    }

    /// The record for `outcome`; the guard is spent.
    fn finish(&mut self, outcome: Outcome<'_>) -> Record {
        self.finished = true;
        std::mem::take(&mut self.seen).record(outcome, self.started.elapsed())
    }

    /// Records a request that got no response: written now, fsynced by the log's
    /// background thread (nobody is waiting for it).
    fn end(&mut self, outcome: Outcome<'static>) {
        let record = self.finish(outcome);
        if let Err(err) = self.log.submit(record) {
            tracing::error!(error = %err, "audit record of a request without a response could not be written");
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let outcome = if std::thread::panicking() {
            Outcome::ended(
                "panicked",
                "panicked while the request was in flight".into(),
            )
        } else {
            Outcome::ended(
                "aborted",
                "dropped before a response was ready (client reset, timeout or shutdown)".into(),
            )
        };
        self.end(outcome);
    }
}

// === impl Audit ===

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuditResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let seen = seen(&req);
        let grpc = seen.grpc;
        // Created now, so that a future dropped before its first poll is recorded too.
        let mut in_flight = InFlight::new(self.log.clone(), seen);

        AuditResponseFuture::new(async move {
            // The service is called in here, so a panic in its `call` is caught as well.
            let called = AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind();
            let res = match called.await {
                Ok(Ok(res)) => res,
                Ok(Err(err)) => {
                    let reason = bounded(&err.to_string());
                    in_flight.end(Outcome::ended("failed", reason));
                    return Err(err);
                }
                Err(panic) => {
                    let reason = panic_reason(&*panic);
                    in_flight.end(Outcome::ended("panicked", reason));
                    std::panic::resume_unwind(panic)
                }
            };
            let record = in_flight.finish(Outcome::response(&res));
            match in_flight.log.append_async(record).await {
                Ok(_) => Ok(res),
                Err(err) => {
                    tracing::error!(error = %err, "audit record could not be written: request denied (fail closed)");
                    let rejection = Rejection::unavailable("audit log unavailable");
                    Ok(if grpc {
                        rejection.into_grpc_response()
                    } else {
                        rejection.into_http_response()
                    })
                }
            }
        })
    }
}

/// Response future of [`Audit`]: resolves once the record is durable.
pub type AuditResponseFuture<B, E> = crate::future::BoxResponseFuture<B, E>;

/// A [`DecisionLogSink`](policy_rego::DecisionLogSink) that writes OPA-format decision logs
/// into the audit log, one record of kind `opa.decision` per decision, carrying OPA's
/// fields (`decision_id`, `path`, `input`, `result`, `revision`, `timestamp`, `metrics`, …).
///
/// The sink is called on the request path and must not wait for an fsync there: the record
/// is written at once ([`AuditLog::submit`]) and made durable by the log's background
/// thread (the request's own audit record, written by [`AuditLayer`], is the one the
/// response waits for).
#[cfg(feature = "policy")]
pub fn decision_log_sink(log: AuditLog) -> impl policy_rego::DecisionLogSink {
    move |record: policy_rego::DecisionLogRecord| {
        let fields = match serde_json::to_value(&record) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(error = %err, "decision log record could not be encoded");
                return;
            }
        };
        let entry = Record::new("opa.decision")
            .action("decide")
            .resource(record.path.clone())
            .fields(fields);
        // Written now; the background thread makes it durable (see above).
        if let Err(err) = log.submit(entry) {
            tracing::error!(error = %err, "decision log record could not be written");
        }
    }
}
