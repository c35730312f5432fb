//! One tamper-evident audit record per request, with [`zt_audit`].
//!
//! [`AuditLayer`] goes outermost, so it sees every request, including those the layers
//! under it refuse. It records who (the token subject, else the SPIFFE ID, else the
//! certificate subject), what (method and path, or the gRPC method), the verdict and its
//! reasons as the deciding layer noted them, the status, the latency, the trace id (from
//! `traceparent` when present) and the policy decision id.
//!
//! The response is released only once the record is written — under
//! [`Durability::Always`](zt_audit::Durability::Always), fsynced (concurrent requests share
//! fsyncs). If the record cannot be written and the log fails closed (the default), the
//! response is replaced by 503 / gRPC `UNAVAILABLE` and an error is logged: nothing is
//! answered that is not on record. (The handler has run by then; the audit log records
//! outcomes, it is not a write-ahead log for the handler's side effects.)
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

use std::fmt;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use zt_audit::{AuditLog, Record};

use crate::notes::RequestNotes;
use crate::rejection::{grpc_method, is_grpc};
use crate::{Rejection, connect_info, peer_identity};

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

/// What the audit record needs from the request, taken before the request moves on.
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuditResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let log = self.log.clone();
        let started = Instant::now();
        let seen = seen(&req);
        let notes = RequestNotes::default();
        req.extensions_mut().insert(notes.clone());

        AuditResponseFuture::new(async move {
            let res = inner.call(req).await?;
            let n = notes.take();
            let status = res.status().as_u16();
            let grpc_status = res
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok());
            let subject = n
                .token_subject
                .clone()
                .or_else(|| seen.spiffe_id.clone())
                .or_else(|| seen.peer_subject.clone())
                .unwrap_or_else(|| "anonymous".into());
            let mut record = Record::new(if seen.grpc {
                "grpc.request"
            } else {
                "http.request"
            })
            .subject(subject)
            .action(seen.action)
            .resource(seen.resource)
            .decision(n.decision.unwrap_or("allow"))
            .reason(n.reasons.join("; "))
            .field("status", status)
            .field("latency_us", started.elapsed().as_micros() as u64);
            if let Some(tp) = &seen.traceparent {
                record = record.traceparent(tp);
            }
            if let Some(code) = grpc_status {
                record = record.field("grpc_status", code);
            }
            if let Some(by) = n.decided_by {
                record = record.field("decided_by", by);
            }
            if let Some(id) = seen.spiffe_id {
                record = record.field("spiffe_id", id);
            }
            if let Some(sub) = n.token_subject {
                record = record.field("token_sub", sub);
            }
            if let Some(addr) = seen.remote_addr {
                record = record.field("peer", addr);
            }
            if let Some((decision_id, revision)) = n.policy {
                record = record
                    .field("decision_id", decision_id)
                    .field("policy_revision", revision);
            }
            match log.append_async(record).await {
                Ok(_) => Ok(res),
                Err(err) => {
                    tracing::error!(error = %err, "audit record could not be written: request denied (fail closed)");
                    let rejection = Rejection::unavailable("audit log unavailable");
                    Ok(if seen.grpc {
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
/// is written at once and becomes durable with the next group commit (the request's own
/// audit record, written by [`AuditLayer`], is the one the response waits for).
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
        // Written now; durability follows with the next fsync (see above).
        drop(log.append_async(entry));
    }
}
