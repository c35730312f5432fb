//! HTTP method/path rules enforced in the process, with the rule file and the semantics of
//! the kernel filter ([`ebpf_l7_filter`]).
//!
//! The kernel filter sees cleartext HTTP/1.x request lines at the start of TCP segments and
//! nothing else; [`L7RulesLayer`] applies the same [`RuleSet`] to every request the server
//! parsed — over TLS, HTTP/2, gRPC (where the path is `/package.Service/Method`), pipelined
//! requests — and is the boundary where the kernel is only a best-effort fast path. One rule
//! file, two enforcement points, one decision for the same request
//! ([`RuleSet::decide`] equals what the kernel decides; see `docs/ebpf.md`).
//!
//! A denied request never reaches the inner service: 403 for HTTP, `PERMISSION_DENIED` for
//! gRPC ([`crate::rejection`]), with a deny [`Verdict`] by `l7`. An allowed request goes on
//! with an allow verdict by `l7` (where nothing further in decides), and `audit` rules let
//! it through and log it. Either way the response carries an [`L7Decision`] (verdict, reason,
//! rule id), which `AuditLayer` writes into the record (`l7_verdict`, `l7_reason`, `l7_rule`)
//! even when a layer further in had the last word.
//!
//! In strict mode (the default) a target that is not a canonical origin-form path is refused
//! as the kernel refuses it: `//`, dot segments, percent-encoded unreserved characters or
//! `/`, an HTTP/1 absolute-form target (`GET http://host/admin`), `*`, a path longer than
//! [`MAX_PATH`](ebpf_l7_filter::MAX_PATH).
//!
//! The rules live in a [`RulesHolder`]: swap them at runtime with
//! [`MaterialHolder::update`], or follow a file with [`RulesHolder::watch_file`] (it rotates
//! like other material: validated whole, the last good set kept on error).
//!
//! ```
//! use std::convert::Infallible;
//! use ebpf_l7_filter::{MaterialHolder, RuleSet};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use zt_tower::L7RulesLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = RuleSet::from_yaml(r#"
//! default: deny
//! rules:
//!   - { id: orders-read, action: allow, methods: [GET], path: { prefix: "/api/orders" } }
//! "#)?;
//! let layer = L7RulesLayer::new(rules);
//! let holder = layer.holder().clone();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//!
//! let get = |path: &str| Request::get(path).body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(get("/api/orders/7")).await?.status(), StatusCode::OK);
//! assert_eq!(svc.clone().oneshot(get("/api/orders-internal")).await?.status(), StatusCode::FORBIDDEN);
//! assert_eq!(svc.clone().oneshot(get("/api//orders")).await?.status(), StatusCode::FORBIDDEN);
//!
//! // Live swap: the next request follows the new rules.
//! holder.update(RuleSet::from_yaml("default: deny")?)?;
//! assert_eq!(svc.oneshot(get("/api/orders/7")).await?.status(), StatusCode::FORBIDDEN);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use ebpf_l7_filter::{Decision, Reason, RuleSet, RulesHolder};
use http::{Request, Response, Version};
use tower_layer::Layer;
use tower_service::Service;

pub use ebpf_l7_filter::MaterialHolder;

use crate::verdict::Passed;
use crate::{Rejection, ResponseFuture, Verdict};

/// Who decided, in [`Verdict`]s and audit records.
const DECIDED_BY: &str = "l7";

/// Layer that applies [`L7Rules`]; see the module docs.
#[derive(Clone)]
pub struct L7RulesLayer {
    rules: Arc<RulesHolder>,
}

impl L7RulesLayer {
    /// Enforces `rules`, held in a new [`RulesHolder`] (see [`holder`](Self::holder) to
    /// swap them later).
    pub fn new(rules: RuleSet) -> Self {
        L7RulesLayer {
            rules: Arc::new(RulesHolder::new(rules)),
        }
    }

    /// Enforces whatever rule set `holder` serves at the time of each request: share it
    /// with a file watcher ([`RulesHolder::watch_file`]), your own source, or the kernel
    /// loader, so every enforcement point follows one rule file.
    pub fn from_holder(holder: Arc<RulesHolder>) -> Self {
        L7RulesLayer { rules: holder }
    }

    /// The holder of the rules in force.
    pub fn holder(&self) -> &Arc<RulesHolder> {
        &self.rules
    }
}

impl fmt::Debug for L7RulesLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L7RulesLayer")
            .field("rules", &self.rules)
            .finish()
    }
}

impl<S> Layer<S> for L7RulesLayer {
    type Service = L7Rules<S>;

    fn layer(&self, inner: S) -> Self::Service {
        L7Rules {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// Middleware applied by [`L7RulesLayer`].
#[derive(Clone)]
pub struct L7Rules<S> {
    inner: S,
    rules: Arc<RulesHolder>,
}

impl<S> L7Rules<S> {
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

impl<S: fmt::Debug> fmt::Debug for L7Rules<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L7Rules")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the rules decided for a request, carried on its response (and on the request, for
/// handlers); see [`l7_decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Decision {
    decision: Decision,
    rule_id: Option<Arc<str>>,
}

impl L7Decision {
    /// Allow, deny or audit.
    pub fn verdict(&self) -> ebpf_l7_filter::Verdict {
        self.decision.verdict()
    }

    /// Why: a rule, the default, or a target that could not be read with confidence.
    pub fn reason(&self) -> Reason {
        self.decision.reason()
    }

    /// The id of the rule that decided, if one did.
    pub fn rule_id(&self) -> Option<&str> {
        self.rule_id.as_deref()
    }

    /// The decision as the rule set made it (with the kernel's rule number).
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// `rule <id>`, `default`, `non_canonical`, … : the short text verdicts carry.
    fn describe(&self) -> String {
        match &self.rule_id {
            Some(id) => format!("rule {id}"),
            None => self.decision.reason().as_str().to_owned(),
        }
    }
}

/// The [`L7Decision`] on a request's or response's extensions.
pub fn l7_decision(extensions: &http::Extensions) -> Option<&L7Decision> {
    extensions.get::<L7Decision>()
}

/// The rule set's decision for a request as the server parsed it. An HTTP/1 request whose
/// target was not origin-form (absolute-form `http://host/x`, authority-form for CONNECT)
/// is decided on the whole target, as the kernel sees it, so it is non-canonical; HTTP/2
/// requests always carry scheme and authority apart from `:path`.
pub fn decide_request<B>(rules: &RuleSet, req: &Request<B>) -> Decision {
    let uri = req.uri();
    let http1 = matches!(
        req.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    if http1 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return rules.decide(req.method(), &uri.to_string());
    }
    rules.decide(
        req.method(),
        uri.path_and_query().map_or("", |pq| pq.as_str()),
    )
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for L7Rules<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let decided = {
            let rules = self.rules.load();
            let decision = decide_request(&rules, &req);
            let rule_id = decision
                .rule_index()
                .and_then(|i| rules.rules().get(i))
                .map(|r| Arc::from(r.id()));
            L7Decision { decision, rule_id }
        };
        let what = decided.describe();
        match decided.verdict() {
            ebpf_l7_filter::Verdict::Deny => {
                tracing::info!(method = %req.method(), path = req.uri().path(), reason = %what, "request refused by l7 rules");
                let mut res = Rejection::permission_denied(format!("denied by l7 {what}"))
                    .into_refusal(DECIDED_BY, req.headers());
                res.extensions_mut().insert(decided);
                ResponseFuture::rejected(res)
            }
            verdict => {
                let mut allow = Verdict::allow(DECIDED_BY);
                if verdict == ebpf_l7_filter::Verdict::Audit {
                    tracing::info!(method = %req.method(), path = req.uri().path(), reason = %what, "l7 audit rule matched");
                    allow = allow.with_reason("audit");
                }
                allow = allow.with_reason(what);
                req.extensions_mut().insert(decided.clone());
                let passed = Passed::new(allow).with_l7(decided);
                ResponseFuture::inner(self.inner.call(req), passed)
            }
        }
    }
}
