//! Allow or deny requests by the verified client identity.
//!
//! [`RequireIdentityLayer`] takes any [`AuthorizeIdentity`] (an [`IdentityAuthorizer`],
//! or a closure `Fn(&PeerIdentity) -> bool`) and refuses requests whose connection has no
//! verified identity or an identity the authorizer rejects: 403 for HTTP,
//! `PERMISSION_DENIED` for gRPC (see [`crate::rejection`]).
//!
//! ```
//! use std::{net::SocketAddr, sync::Arc};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use zt_tower::{RequireIdentityLayer, TlsConnectInfo};
//! use mtls_verify::{IdentityAuthorizer, PeerIdentity};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequireIdentityLayer::new(
//!         IdentityAuthorizer::trust_domain("example.org").unwrap(),
//!     ))
//!     .service_fn(|_req: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) });
//!
//! // No TLS identity on the request: refused.
//! let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use mtls_verify::AuthorizeIdentity;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::verdict::Passed;
use crate::{Rejection, Verdict, peer_identity};

/// Layer that applies [`RequireIdentity`]; see the module docs.
#[derive(Clone)]
pub struct RequireIdentityLayer {
    authorizer: Arc<dyn AuthorizeIdentity>,
}

impl RequireIdentityLayer {
    /// Requires a verified client identity accepted by `authorizer`.
    pub fn new(authorizer: impl AuthorizeIdentity) -> Self {
        RequireIdentityLayer {
            authorizer: Arc::new(authorizer),
        }
    }
}

impl fmt::Debug for RequireIdentityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireIdentityLayer")
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequireIdentityLayer {
    type Service = RequireIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireIdentity {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// Middleware that refuses requests without an acceptable verified client identity.
#[derive(Clone)]
pub struct RequireIdentity<S> {
    inner: S,
    authorizer: Arc<dyn AuthorizeIdentity>,
}

impl<S> RequireIdentity<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, authorizer: impl AuthorizeIdentity) -> Self {
        RequireIdentity {
            inner,
            authorizer: Arc::new(authorizer),
        }
    }

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

impl<S: fmt::Debug> fmt::Debug for RequireIdentity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireIdentity")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireIdentity<S>
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
        let verdict = match peer_identity(req.extensions()) {
            None => Err(Rejection::permission_denied("client certificate required")),
            Some(peer) => self.authorizer.authorize(peer).map_err(|rejected| {
                tracing::info!(
                    spiffe_id = peer.spiffe_id().map(|id| id.as_str()),
                    subject = peer.subject(),
                    reason = %rejected,
                    "request refused by identity authorizer"
                );
                Rejection::permission_denied(format!("identity not authorized: {rejected}"))
            }),
        };
        match verdict {
            Ok(()) => ResponseFuture::inner(
                self.inner.call(req),
                Passed::new(Verdict::allow("identity")),
            ),
            Err(rejection) => {
                ResponseFuture::rejected(rejection.into_refusal("identity", req.headers()))
            }
        }
    }
}

pin_project! {
    /// Response future of [`RequireIdentity`] and the other gate layers: either the inner
    /// service's future, whose response gets the gate's allow [`Verdict`] on the way out
    /// (unless one from further in is there already), or a ready refusal.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] future: F, passed: Option<Passed> },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(future: F, passed: Passed) -> Self {
        ResponseFuture {
            state: State::Inner {
                future,
                passed: Some(passed),
            },
        }
    }

    pub(crate) fn rejected(response: Response<B>) -> Self {
        ResponseFuture {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future, passed } => {
                let mut res = ready!(future.poll(cx))?;
                if let Some(passed) = passed.take() {
                    passed.stamp(&mut res);
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Rejected { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(res)),
                // Polled again after completion: the contract of Future says this may
                // misbehave; we stay pending rather than panic on a request path.
                None => Poll::Pending,
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
