//! The response future shared by the layers that must await something before (or after)
//! calling the inner service: token validation, the audit append.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

/// A boxed response future (`Send`), the response future of `JwtAuth`
/// and `Audit`.
pub struct BoxResponseFuture<B, E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>,
}

#[cfg(any(feature = "jwt", feature = "audit", feature = "policy"))]
impl<B, E> BoxResponseFuture<B, E> {
    pub(crate) fn new(fut: impl Future<Output = Result<Response<B>, E>> + Send + 'static) -> Self {
        BoxResponseFuture {
            inner: Box::pin(fut),
        }
    }
}

impl<B, E> Future for BoxResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for BoxResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxResponseFuture").finish_non_exhaustive()
    }
}
