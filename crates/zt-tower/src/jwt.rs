//! Bearer-token authentication with [`jwt_oidc`], and scope/claim guards.
//!
//! [`JwtAuthLayer`] reads `Authorization: Bearer <token>` (RFC 6750 §2.1; for gRPC the same
//! `authorization` metadata), validates it with a [`JwtAuthenticator`], and puts the
//! verified [`Claims`] into the request's extensions as `Arc<Claims>` — and into the
//! response's on the way back, beside its [`Verdict`], so that
//! `AuditLayer` knows whom the request was authenticated as. Every
//! refusal carries a deny verdict by `jwt` (or `scope`, or the `TokenClaims` extractor)
//! with the reason the client is not told. When the connection
//! has a verified client certificate, its SHA-256 thumbprint is passed along so
//! certificate-bound tokens (RFC 8705, `cnf.x5t#S256`) are checked against it.
//!
//! * No token → `401` with a bare `WWW-Authenticate: Bearer` (RFC 6750 §3.1: a request
//!   without credentials gets no error code); an invalid token → `401` with
//!   `WWW-Authenticate: Bearer error="invalid_token"`
//!   (gRPC `UNAUTHENTICATED`). The client learns nothing more; the reason goes to the log.
//! * [`JwtAuthLayer::allow_anonymous`] lets requests *without* a token through
//!   unauthenticated (no `Claims` extension); a request with an invalid token is still refused.
//! * [`RequireClaimsLayer`] → `403` with `error="insufficient_scope"` (gRPC
//!   `PERMISSION_DENIED`). One layer, two named constructors:
//!   [`RequireClaimsLayer::scopes`] requires every listed scope and
//!   [`RequireClaimsLayer::claims`] runs any [`CheckClaims`] (or closure). There is no
//!   separate scope layer: a scope requirement *is* a claims check.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use jwt_oidc::testing::{TestKey, jwks, now_unix};
//! use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator};
//! use tower::{ServiceBuilder, ServiceExt};
//! use zt_tower::{JwtAuthLayer, RequireClaimsLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let key = TestKey::generate(Algorithm::Es256, "k1");
//! let auth = JwtAuthenticator::builder()
//!     .issuer(IssuerConfig::static_jwks("https://idp.example", jwks(&[&key])))
//!     .audience("api")
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(JwtAuthLayer::new(auth))
//!     .layer(RequireClaimsLayer::scopes(["orders:read"]))
//!     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//!
//! let token = key.token(&serde_json::json!({
//!     "iss": "https://idp.example", "aud": "api", "exp": now_unix() + 60, "scope": "orders:read",
//! }));
//! let req = Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
//!
//! // No credentials at all: a bare challenge, no error code (RFC 6750 §3.1).
//! let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], "Bearer");
//!
//! let req = Request::get("/").header("authorization", "Bearer not-a-jwt").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};
use jwt_oidc::{AuthError, BearerError, Claims, JwtAuthenticator, RequestContext, ValidateToken};
use tower_layer::Layer;
use tower_service::Service;

use crate::verdict::Passed;
use crate::{Rejection, ResponseFuture, Verdict, peer_identity};

// === impl JwtAuthLayer ===

/// Layer that applies [`JwtAuth`]; see the module docs.
///
/// The validator is any [`ValidateToken`]: a [`JwtAuthenticator`] (the default), or for
/// example `svid-client`'s JWT-SVID validator, whose key sets follow the SPIFFE Workload
/// API's JWT bundles (the principal is then the SPIFFE ID in `sub`).
#[derive(Clone)]
pub struct JwtAuthLayer<V = JwtAuthenticator> {
    auth: V,
    allow_anonymous: bool,
}

impl<V: ValidateToken + Clone> JwtAuthLayer<V> {
    /// Requires a valid bearer token on every request.
    pub fn new(auth: V) -> Self {
        JwtAuthLayer {
            auth,
            allow_anonymous: false,
        }
    }

    /// Lets requests that carry no token at all through, unauthenticated (handlers see no
    /// `Claims`). A request that carries an invalid token is still refused.
    pub fn allow_anonymous(mut self) -> Self {
        self.allow_anonymous = true;
        self
    }
}

impl<V: fmt::Debug> fmt::Debug for JwtAuthLayer<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("auth", &self.auth)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl<S, V: Clone> Layer<S> for JwtAuthLayer<V> {
    type Service = JwtAuth<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth {
            inner,
            auth: self.auth.clone(),
            allow_anonymous: self.allow_anonymous,
        }
    }
}

// === impl JwtAuth ===

/// Middleware that authenticates requests by bearer token; see the module docs.
#[derive(Clone)]
pub struct JwtAuth<S, V = JwtAuthenticator> {
    inner: S,
    auth: V,
    allow_anonymous: bool,
}

impl<S, V> JwtAuth<S, V> {
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

impl<S: fmt::Debug, V> fmt::Debug for JwtAuth<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

/// Why no token could be taken from the request.
enum TokenError {
    Missing,
    Malformed(&'static str),
}

/// The bearer token of a request (RFC 6750 §2.1): exactly one `Authorization` header whose
/// scheme is `Bearer` (any case) followed by a non-empty b64token.
fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(TokenError::Missing);
    };
    if values.next().is_some() {
        return Err(TokenError::Malformed("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::Malformed("Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed(
        "Authorization header is not `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, …) carries no bearer token.
        return Err(TokenError::Missing);
    }
    let token = token.trim_start_matches(' ');
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(b64token) {
        return Err(TokenError::Malformed(
            "bearer token is empty or has invalid characters",
        ));
    }
    Ok(token)
}

fn invalid_token(reason: &'static str) -> Rejection {
    Rejection::unauthenticated(reason).with_bearer_error(BearerError::InvalidToken.as_str())
}

/// A request that carries no credentials at all. RFC 6750 §3.1: "If the request lacks any
/// authentication information […], the resource server SHOULD NOT include an error code or
/// other error information", so the challenge is a bare `Bearer`.
fn missing_token() -> Rejection {
    Rejection::unauthenticated("missing bearer token")
}

fn rejection_for(err: &AuthError) -> Rejection {
    match err.bearer_error() {
        BearerError::InsufficientScope => Rejection::permission_denied("insufficient scope")
            .with_bearer_error(BearerError::InsufficientScope.as_str()),
        _ => invalid_token("invalid token"),
    }
}

impl<S, V, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S, V>
where
    V: ValidateToken + Clone,
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = JwtResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The service that was driven to readiness handles this request; a fresh clone
        // stays behind for the next one (the usual tower pattern for async middleware).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let token = match bearer_token(req.headers()) {
            Ok(token) => token.to_owned(),
            Err(TokenError::Missing) if self.allow_anonymous => {
                return JwtResponseFuture::new(async move {
                    let mut res = inner.call(req).await?;
                    Verdict::allow("jwt")
                        .with_reason("no bearer token: anonymous allowed")
                        .attach_if_absent(&mut res);
                    Ok(res)
                });
            }
            Err(TokenError::Missing) => {
                tracing::info!("request refused: no bearer token");
                let res = missing_token().into_refusal("jwt", req.headers());
                return JwtResponseFuture::new(async move { Ok(res) });
            }
            Err(TokenError::Malformed(why)) => {
                tracing::info!(
                    reason = why,
                    "request refused: malformed Authorization header"
                );
                let res = invalid_token("invalid token")
                    .with_detail(why)
                    .into_refusal("jwt", req.headers());
                return JwtResponseFuture::new(async move { Ok(res) });
            }
        };
        let mut ctx = RequestContext::new();
        if let Some(peer) = peer_identity(req.extensions()) {
            ctx = ctx.with_client_cert_sha256(*peer.fingerprint_sha256());
        }
        let auth = self.auth.clone();
        JwtResponseFuture::new(async move {
            match auth.validate_token(&token, &ctx).await {
                Ok(claims) => {
                    req.extensions_mut().insert(Arc::clone(&claims));
                    let mut res = inner.call(req).await?;
                    Verdict::allow("jwt").attach_if_absent(&mut res);
                    // Who the request was authenticated as, for the audit record.
                    res.extensions_mut().insert(claims);
                    Ok(res)
                }
                Err(err) => {
                    if err.is_server_side() {
                        tracing::warn!(error = %err, "request refused: token could not be checked");
                    } else {
                        tracing::info!(error = %err, "request refused: invalid token");
                    }
                    Ok(rejection_for(&err)
                        .with_detail(err.to_string())
                        .into_refusal("jwt", req.headers()))
                }
            }
        })
    }
}

/// Response future of [`JwtAuth`].
pub type JwtResponseFuture<B, E> = crate::future::BoxResponseFuture<B, E>;

// === claims access ===

/// The verified token claims of a request, if [`JwtAuthLayer`] authenticated it.
pub fn request_claims(extensions: &http::Extensions) -> Option<&Arc<Claims>> {
    extensions.get::<Arc<Claims>>()
}

/// Axum extractor for the verified token claims. Refuses with 401 when the request was
/// not authenticated by [`JwtAuthLayer`]; use `Option<TokenClaims>` with
/// [`JwtAuthLayer::allow_anonymous`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub struct TokenClaims(pub Arc<Claims>);

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TokenClaims {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match request_claims(&parts.extensions) {
            Some(claims) => Ok(TokenClaims(claims.clone())),
            None => Err(missing_token().into_refusal("TokenClaims", &parts.headers)),
        }
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for TokenClaims {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(request_claims(&parts.extensions).map(|c| TokenClaims(c.clone())))
    }
}

/// Reach the verified token claims from a tonic handler.
#[cfg(feature = "tonic")]
pub trait RequestClaimsExt {
    /// The claims [`JwtAuthLayer`] verified for this request.
    fn claims(&self) -> Option<&Arc<Claims>>;
}

#[cfg(feature = "tonic")]
impl<T> RequestClaimsExt for tonic::Request<T> {
    fn claims(&self) -> Option<&Arc<Claims>> {
        request_claims(self.extensions())
    }
}

// === impl RequireClaimsLayer ===

/// A check on verified claims: `Ok(())` allows, `Err(reason)` refuses with 403.
pub trait CheckClaims: Send + Sync + 'static {
    /// Decides for one request.
    ///
    /// # Errors
    /// A short reason for the log when the claims are not sufficient.
    fn check(&self, claims: &Claims) -> Result<(), String>;
}

impl<F> CheckClaims for F
where
    F: Fn(&Claims) -> bool + Send + Sync + 'static,
{
    fn check(&self, claims: &Claims) -> Result<(), String> {
        if self(claims) {
            Ok(())
        } else {
            Err("claims check failed".into())
        }
    }
}

struct AllScopes(Vec<String>);

impl CheckClaims for AllScopes {
    fn check(&self, claims: &Claims) -> Result<(), String> {
        match self.0.iter().find(|s| !claims.has_scope(s)) {
            None => Ok(()),
            Some(missing) => Err(format!("missing scope {missing}")),
        }
    }
}

/// Layer that refuses requests whose verified claims fail a [`CheckClaims`] with 403
/// `insufficient_scope` (gRPC `PERMISSION_DENIED`). Requests without claims (not
/// authenticated, or anonymous) are refused with 401.
///
/// Built with [`scopes`](Self::scopes) (the common case) or [`claims`](Self::claims)
/// (any check on the claims).
#[derive(Clone)]
pub struct RequireClaimsLayer {
    check: Arc<dyn CheckClaims>,
}

impl RequireClaimsLayer {
    /// Requires every one of `scopes` on the verified token (read from its `scope` or
    /// `scp` claim).
    pub fn scopes<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RequireClaimsLayer {
            check: Arc::new(AllScopes(scopes.into_iter().map(Into::into).collect())),
        }
    }

    /// Requires the claims to pass `check` (a [`CheckClaims`] or a closure
    /// `Fn(&Claims) -> bool`).
    pub fn claims(check: impl CheckClaims) -> Self {
        RequireClaimsLayer {
            check: Arc::new(check),
        }
    }
}

impl fmt::Debug for RequireClaimsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireClaimsLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequireClaimsLayer {
    type Service = RequireClaims<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireClaims {
            inner,
            check: self.check.clone(),
        }
    }
}

/// Middleware applied by [`RequireClaimsLayer`].
#[derive(Clone)]
pub struct RequireClaims<S> {
    inner: S,
    check: Arc<dyn CheckClaims>,
}

impl<S: fmt::Debug> fmt::Debug for RequireClaims<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireClaims")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireClaims<S>
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let verdict = match request_claims(req.extensions()) {
            None => Err(missing_token().into_refusal("scope", req.headers())),
            Some(claims) => self.check.check(claims).map_err(|reason| {
                tracing::info!(sub = claims.subject(), %reason, "request refused: insufficient scope");
                Rejection::permission_denied("insufficient scope")
                    .with_bearer_error(BearerError::InsufficientScope.as_str())
                    .with_detail(reason)
                    .into_refusal("scope", req.headers())
            }),
        };
        match verdict {
            Ok(()) => {
                ResponseFuture::inner(self.inner.call(req), Passed::new(Verdict::allow("scope")))
            }
            Err(refusal) => ResponseFuture::rejected(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def-_~+/="])).ok(),
            Some("abc.def-_~+/=")
        );
        assert_eq!(bearer_token(&headers(&["bearer x"])).ok(), Some("x"));
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(TokenError::Missing)
        ));
        assert!(matches!(
            bearer_token(&headers(&["Basic dXNlcjpw"])),
            Err(TokenError::Missing)
        ));
        assert!(matches!(
            bearer_token(&headers(&["Bearer"])),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(&headers(&["Bearer "])),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(&headers(&["Bearer a b"])),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(TokenError::Malformed(_))
        ));
    }
}
