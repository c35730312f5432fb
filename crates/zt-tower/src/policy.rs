//! Authorization by Rego policy with [`policy_rego`].
//!
//! [`PolicyLayer`] builds the OPA-Envoy-style input document from the request, the verified
//! [`PeerIdentity`] of its connection and the verified token
//! claims (when [`JwtAuthLayer`](crate::JwtAuthLayer) runs before it), asks the
//! [`PolicyEngine`] in force, and either passes the request on with the
//! [`PolicyDecision`] in its extensions (`Arc<PolicyDecision>`) or refuses it: 403 for HTTP,
//! `PERMISSION_DENIED` for gRPC, with the policy's first reason. An evaluation error, a
//! timeout or an undefined decision denies (the engine turns each into a deny decision).
//! Either way the response carries the decision (`Arc<PolicyDecision>`) and a
//! [`Verdict`] by `policy` with the policy's reasons, for `AuditLayer`; an allow verdict only
//! where nothing further in (an extractor, say) left its own.
//!
//! Evaluation runs off the async workers, on a small pool of the layer's own threads that is
//! fair between sources ([`PolicyLayer::blocking_pool`]): a policy that uses its whole time
//! budget stalls neither the connections on the worker that received the request nor the
//! other clients. A saturated pool or a panicking evaluation denies.
//! [`PolicyLayer::evaluate_inline`] evaluates on the worker instead, for policy sets with a
//! small time budget. Measurements: `docs/benchmarks.md`.
//!
//! The input carries `attributes.request.http` (method, path with query, host, headers
//! without `authorization`/`cookie`/`proxy-authorization`), `attributes.source.address`
//! and `attributes.source.principal` (the SPIFFE ID, else the certificate subject),
//! `parsed_path`, `parsed_query`, `identity` (the peer identity JSON), `token` (the claims)
//! and, for gRPC, `grpc.service` / `grpc.method`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use policy_rego::{BundleLoader, BundleWriter, PolicyEngine, PolicyOptions, PolicySet};
//! use tower::{ServiceBuilder, ServiceExt};
//! use zt_tower::PolicyLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let archive = BundleWriter::new()
//!     .file("authz.rego", "package http.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n")
//!     .to_tar_gz()
//!     .unwrap();
//! let bundle = BundleLoader::new().load_tar_gz("inline", &archive).unwrap();
//! let options = PolicyOptions::new();
//! let engine = PolicyEngine::with_set(PolicySet::compile(bundle, &options).unwrap(), options);
//!
//! let svc = ServiceBuilder::new()
//!     .layer(PolicyLayer::new(engine))
//!     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//! let get = Request::get("/orders").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(get).await.unwrap().status(), StatusCode::OK);
//! let delete = Request::delete("/orders/1").body(()).unwrap();
//! assert_eq!(svc.oneshot(delete).await.unwrap().status(), StatusCode::FORBIDDEN);
//! # }
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mtls_verify::PeerIdentity;
use policy_rego::{
    InputBuilder, InputDocument, InputOptions, PolicyDecision, PolicyEngine, PolicyInput,
};
use tower_layer::Layer;
use tower_service::Service;

mod input_cache;
mod pool;
pub use input_cache::PolicyInputCache;
use pool::{EvaluationPool, PoolConfig};

use crate::rejection::{grpc_method, is_grpc};
use crate::verdict::Passed;
use crate::{BoxResponseFuture, Rejection, ResponseFuture, Verdict, connect_info, peer_identity};

/// Layer that applies [`Policy`]; see the module docs.
#[derive(Clone)]
pub struct PolicyLayer {
    engine: PolicyEngine,
    options: Arc<InputOptions>,
    inputs: PolicyInputCache,
    placement: Placement,
}

impl PolicyLayer {
    /// Decides every request with `engine` (whose policy set may be reloaded underneath),
    /// off the async workers on a bounded pool of threads, fair between sources
    /// (see [`blocking_pool`](Self::blocking_pool) for the defaults).
    pub fn new(engine: PolicyEngine) -> Self {
        PolicyLayer {
            engine,
            options: Arc::new(InputOptions::default()),
            inputs: PolicyInputCache::new(),
            placement: Placement::Pool(Arc::new(EvaluationPool::new(PoolConfig::default_size()))),
        }
    }

    /// How the input document is built (which headers are left out, …).
    pub fn input_options(mut self, options: InputOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// Evaluates on a pool of `max_concurrent` threads of the layer's own (`zt-policy-N`,
    /// started at the first request, stopped when the last layer or service using the pool
    /// is dropped), never on the async workers; at most `max_queued` more evaluations wait
    /// for a turn (without holding a worker). The pool is fair between sources (the verified
    /// principal, else the peer's IP address): one source runs at most half of
    /// `max_concurrent` evaluations at once (at least one; see
    /// [`max_concurrent_per_source`](Self::max_concurrent_per_source)) and holds at most
    /// half of the places, so a client that hammers an expensive policy path waits behind
    /// itself while others are served.
    ///
    /// A request that finds no place is refused (403 / `PERMISSION_DENIED`, reason
    /// `policy evaluation pool saturated`); an evaluation that panics denies (`policy
    /// evaluation panicked`), and so does every request if no thread could be started
    /// (`policy evaluation pool unavailable`). Zero for `max_concurrent` is taken as one.
    ///
    /// The default: as many concurrent evaluations as the machine has cores, 16 waiting per
    /// core. Layers cloned from this one, and every service it wraps, share one pool.
    pub fn blocking_pool(mut self, max_concurrent: usize, max_queued: usize) -> Self {
        self.placement = Placement::Pool(Arc::new(EvaluationPool::new(PoolConfig::new(
            max_concurrent,
            max_queued,
        ))));
        self
    }

    /// How many evaluations one source may run at once on the pool (default: half of the
    /// pool's `max_concurrent`, at least one). Calls [`blocking_pool`](Self::blocking_pool)
    /// with the default sizes first if the layer does not evaluate on a pool yet.
    pub fn max_concurrent_per_source(mut self, n: usize) -> Self {
        let mut config = match &self.placement {
            Placement::Pool(pool) => pool.config,
            _ => PoolConfig::default_size(),
        };
        config.per_source = n.clamp(1, config.max_concurrent);
        self.placement = Placement::Pool(Arc::new(EvaluationPool::new(config)));
        self
    }

    /// Evaluates on the async worker that serves the connection, as a plain function call:
    /// no thread hop (≈ 50 µs less at p50 on a busy machine), but a policy that runs long
    /// stalls every connection on that worker for up to the policy's time budget
    /// (`PolicyOptions::time_budget`, 50 ms by default). Only for policy sets whose time
    /// budget is small enough to stall a worker for.
    pub fn evaluate_inline(mut self) -> Self {
        self.placement = Placement::Inline;
        self
    }
}

impl fmt::Debug for PolicyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyLayer")
            .field("revision", &self.engine.revision())
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Policy {
            inner,
            engine: self.engine.clone(),
            options: self.options.clone(),
            inputs: self.inputs.clone(),
            placement: self.placement.clone(),
        }
    }
}

/// Middleware applied by [`PolicyLayer`].
#[derive(Clone)]
pub struct Policy<S> {
    inner: S,
    engine: PolicyEngine,
    options: Arc<InputOptions>,
    inputs: PolicyInputCache,
    placement: Placement,
}

impl<S> Policy<S> {
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

impl<S: fmt::Debug> fmt::Debug for Policy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The policy input for a request, as [`PolicyLayer`] builds it (without its
/// [`PolicyInputCache`]: the peer identity and the token claims are converted for this
/// request).
pub fn policy_input<B>(req: &Request<B>, options: &InputOptions) -> PolicyInput {
    build_input(req, options, None)
}

fn build_input<B>(
    req: &Request<B>,
    options: &InputOptions,
    cache: Option<&PolicyInputCache>,
) -> PolicyInput {
    let mut builder =
        InputBuilder::new(req.method(), req.uri(), req.headers()).version(req.version());
    if let Some(info) = connect_info(req.extensions()) {
        builder = builder.peer_addr(info.remote_addr());
        if let Some(local) = info.local_addr() {
            builder = builder.local_addr(local);
        }
    }
    if let Some(peer) = peer_identity(req.extensions()) {
        let principal = peer
            .spiffe_id()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| peer.subject().to_owned());
        builder = builder.principal(principal);
        // Serialized and converted once per connection: the identity does not change while
        // the connection lives, and every request on it needs the same document.
        let document = match cache {
            Some(cache) => cache.identity(peer, identity_document),
            None => identity_document(peer),
        };
        if let Some(document) = document {
            builder = builder.identity(document);
        }
    }
    #[cfg(feature = "jwt")]
    if let Some(claims) = crate::request_claims(req.extensions()) {
        // Converted once per verified token: a token-cache hit brings the same `Claims`.
        let convert = |c: &jwt_oidc::Claims| Some(InputDocument::from(c.raw().clone()));
        let document = match cache {
            Some(cache) => cache.token(claims, convert),
            None => convert(claims),
        };
        if let Some(document) = document {
            builder = builder.token(document);
        }
    }
    if is_grpc(req.headers())
        && let Some((service, method)) = grpc_method(req.uri().path())
    {
        builder = builder.grpc(service, method);
    }
    builder.build(options)
}

fn identity_document(peer: &PeerIdentity) -> Option<InputDocument> {
    serde_json::to_value(peer).ok().map(InputDocument::from)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Policy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The service that was driven to readiness handles this request; a fresh clone
        // stays behind for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let input = self.inputs.policy_input(&req, &self.options);
        let source = Source::of(req.extensions());
        let engine = self.engine.clone();
        let placement = self.placement.clone();
        BoxResponseFuture::new(async move {
            let decision = placement.decide(engine, input, source).await;
            respond(inner, req, decision).await
        })
    }
}

/// Passes the request on with its decision, or refuses it.
async fn respond<S, ReqBody, ResBody>(
    mut inner: S,
    mut req: Request<ReqBody>,
    decision: PolicyDecision,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    let decision = Arc::new(decision);
    if decision.allow {
        req.extensions_mut().insert(Arc::clone(&decision));
        let verdict = Verdict::allow("policy").with_reasons(decision.reasons.iter().cloned());
        let passed = Passed::new(verdict).with_decision(decision);
        ResponseFuture::inner(inner.call(req), passed).await
    } else {
        let reason = decision
            .reasons
            .first()
            .cloned()
            .unwrap_or_else(|| "denied by policy".into());
        tracing::info!(
            decision_id = %decision.decision_id,
            revision = %decision.revision,
            %reason,
            "request refused by policy"
        );
        let mut res = Rejection::permission_denied(reason.clone()).into_response(req.headers());
        // Every reason the policy gave, and which decision it was, for the audit record.
        Verdict::deny("policy", reason)
            .with_reasons(decision.reasons.iter().skip(1).cloned())
            .attach(&mut res);
        res.extensions_mut().insert(decision);
        Ok(res)
    }
}

// === impl Placement ===

/// Where a [`Policy`] runs its evaluations.
#[derive(Clone)]
enum Placement {
    Inline,
    Pool(Arc<EvaluationPool>),
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Inline => f.write_str("Inline"),
            Placement::Pool(pool) => fmt::Debug::fmt(&pool.config, f),
        }
    }
}

impl Placement {
    async fn decide(
        self,
        engine: PolicyEngine,
        input: PolicyInput,
        source: Source,
    ) -> PolicyDecision {
        match self {
            Placement::Inline => engine.decide(&input),
            Placement::Pool(pool) => pool.decide(engine, input, source).await,
        }
    }
}

/// Who a request is from, for the pool's fairness: the verified principal, else the peer's
/// IP address (from [`TlsConnectInfo`](crate::TlsConnectInfo), axum's
/// `ConnectInfo<SocketAddr>` or tonic's `TcpConnectInfo`), else nobody in particular (all
/// such requests are one source).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Principal(Arc<str>),
    Address(IpAddr),
    Unknown,
}

impl Source {
    fn of(extensions: &http::Extensions) -> Source {
        if let Some(peer) = peer_identity(extensions) {
            return Source::Principal(match peer.spiffe_id() {
                Some(id) => id.as_str().into(),
                None => peer.subject().into(),
            });
        }
        if let Some(info) = connect_info(extensions) {
            return Source::Address(info.remote_addr().ip());
        }
        #[cfg(feature = "axum")]
        if let Some(info) = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>() {
            return Source::Address(info.0.ip());
        }
        #[cfg(feature = "tonic")]
        if let Some(addr) = extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
        {
            return Source::Address(addr.ip());
        }
        Source::Unknown
    }
}

/// The policy decision that allowed a request, if [`PolicyLayer`] decided it. On a
/// response's extensions: the decision [`PolicyLayer`] made for its request, allow or deny.
pub fn request_decision(extensions: &http::Extensions) -> Option<&Arc<PolicyDecision>> {
    extensions.get::<Arc<PolicyDecision>>()
}

/// Axum extractor for the [`PolicyDecision`] that allowed the request. Refuses with 403 (a
/// deny [`Verdict`] by `Decision`) when the route is not behind a [`PolicyLayer`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub struct Decision(pub Arc<PolicyDecision>);

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Decision {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match request_decision(&parts.extensions) {
            Some(d) => Ok(Decision(d.clone())),
            // The route is not behind a PolicyLayer: fail closed.
            None => Err(Rejection::permission_denied("no policy decision")
                .into_refusal("Decision", &parts.headers)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TlsConnectInfo;

    fn request_on(info: &TlsConnectInfo) -> Request<()> {
        let mut req = Request::get("/orders").body(()).unwrap();
        req.extensions_mut().insert(info.clone());
        req
    }

    #[test]
    fn identity_is_converted_once_per_connection_and_shared_by_its_requests() {
        let ca = ztkit_test_support::TestCa::new("Test Root");
        let leaf = ca
            .leaf("web")
            .spiffe_id("spiffe://example.org/web")
            .client_auth()
            .issue();
        let peer = Arc::new(PeerIdentity::from_der(&leaf.cert_der).unwrap());
        let connection = TlsConnectInfo::new("10.0.0.7:4000".parse().unwrap(), Some(peer.clone()));
        let options = InputOptions::default();
        let cache = PolicyInputCache::new();

        let first = cache
            .policy_input(&request_on(&connection), &options)
            .to_json();
        let converted = cache.identity(&peer, |_| unreachable!("converted by the first request"));
        assert!(converted.is_some(), "the first request fills the cache");
        let second = cache
            .policy_input(&request_on(&connection), &options)
            .to_json();
        assert_eq!(first["identity"], second["identity"]);
        assert_eq!(first["identity"], serde_json::to_value(&*peer).unwrap());
        assert_eq!(
            first["attributes"]["source"]["principal"],
            "spiffe://example.org/web"
        );
        // Without the cache the input is the same.
        assert_eq!(
            policy_input(&request_on(&connection), &options).to_json(),
            first
        );

        // Another identity (here inserted by another source) is converted for itself.
        let stranger_leaf = ca
            .leaf("db")
            .spiffe_id("spiffe://example.org/db")
            .client_auth()
            .issue();
        let stranger = Arc::new(PeerIdentity::from_der(&stranger_leaf.cert_der).unwrap());
        let mut req = request_on(&connection);
        req.extensions_mut().insert(stranger);
        let input = cache.policy_input(&req, &options).to_json();
        assert_eq!(input["identity"]["spiffe_id"], "spiffe://example.org/db");
    }

    #[cfg(feature = "jwt")]
    #[tokio::test(flavor = "current_thread")]
    async fn token_claims_are_converted_once_per_verified_token() {
        use jwt_oidc::testing::{TestKey, jwks, now_unix};
        use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator, RequestContext};

        let key = TestKey::generate(Algorithm::Es256, "k1");
        let auth = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks(
                "https://idp.example.com",
                jwks(&[&key]),
            ))
            .audience("orders")
            .token_cache_capacity(16)
            .build()
            .unwrap();
        let token = key.token(&serde_json::json!({
            "iss": "https://idp.example.com", "aud": "orders", "sub": "alice",
            "exp": now_unix() + 300, "scope": "orders:read",
        }));
        let ctx = RequestContext::new();
        let claims = auth.validate(&token, &ctx).await.unwrap();
        let again = auth.validate(&token, &ctx).await.unwrap();
        assert!(
            Arc::ptr_eq(&claims, &again),
            "a cache hit returns the same claims"
        );

        let with_claims = |c: &Arc<jwt_oidc::Claims>| {
            let mut req = Request::get("/orders").body(()).unwrap();
            req.extensions_mut().insert(Arc::clone(c));
            req
        };
        let options = InputOptions::default();
        let cache = PolicyInputCache::new();
        let first = cache
            .policy_input(&with_claims(&claims), &options)
            .to_json();
        assert_eq!(first["token"], *claims.raw());
        // The first request left the converted document in the cache...
        let _kept = cache.token(&claims, |_| unreachable!("converted once"));
        // ...and the next request with the same verified token reuses it.
        let second = cache.policy_input(&with_claims(&again), &options).to_json();
        assert_eq!(first["token"], second["token"]);
    }
}
