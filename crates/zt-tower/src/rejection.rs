//! The one place where a denial becomes a response, for HTTP and for gRPC.
//!
//! Every layer in this crate that refuses a request builds a [`Rejection`] and turns it
//! into a response here ([`Rejection::into_refusal`], which also attaches the deny
//! [`Verdict`] the audit record is made from), so the protocol rules live in one module:
//!
//! * HTTP: `401 Unauthorized` with `WWW-Authenticate: Bearer …` (RFC 6750), `403 Forbidden`,
//!   or `503 Service Unavailable`; empty body.
//! * gRPC (request `content-type: application/grpc*`): HTTP `200` with a trailers-only
//!   response carrying `grpc-status` 16 (`UNAUTHENTICATED`), 7 (`PERMISSION_DENIED`) or
//!   14 (`UNAVAILABLE`) and a percent-encoded `grpc-message`.
//!
//! The reason is short, for humans, and never contains a token, a key or a certificate.
//!
//! ```
//! use http::{Request, StatusCode};
//! use zt_tower::rejection::Rejection;
//!
//! let grpc = Request::builder()
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! let res = Rejection::permission_denied("spiffe id not allowed").into_response::<String>(grpc.headers());
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "7");
//!
//! let plain = Request::builder().body(()).unwrap();
//! let res = Rejection::unauthenticated("no token").into_response::<String>(plain.headers());
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], "Bearer");
//! ```

use std::borrow::Cow;
use std::fmt;

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::Verdict;

/// What kind of refusal a [`Rejection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The caller is not (validly) authenticated: HTTP 401, gRPC `UNAUTHENTICATED` (16).
    Unauthenticated,
    /// The caller is known but not allowed: HTTP 403, gRPC `PERMISSION_DENIED` (7).
    PermissionDenied,
    /// A dependency the decision needs failed (fail closed): HTTP 503, gRPC `UNAVAILABLE` (14).
    Unavailable,
}

impl RejectionKind {
    /// The HTTP status for plain HTTP callers.
    pub fn http_status(self) -> StatusCode {
        match self {
            RejectionKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            RejectionKind::PermissionDenied => StatusCode::FORBIDDEN,
            RejectionKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code for gRPC callers.
    pub fn grpc_code(self) -> u16 {
        match self {
            RejectionKind::Unauthenticated => 16,
            RejectionKind::PermissionDenied => 7,
            RejectionKind::Unavailable => 14,
        }
    }
}

/// A refusal: its kind, a short reason and, for bearer-token layers, the RFC 6750 error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    reason: Cow<'static, str>,
    bearer_error: Option<&'static str>,
    detail: Option<String>,
}

impl Rejection {
    /// 401 / `UNAUTHENTICATED` without a bearer error code (`WWW-Authenticate: Bearer`).
    pub fn unauthenticated(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            kind: RejectionKind::Unauthenticated,
            reason: reason.into(),
            bearer_error: None,
            detail: None,
        }
    }

    /// 403 / `PERMISSION_DENIED`.
    pub fn permission_denied(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            kind: RejectionKind::PermissionDenied,
            reason: reason.into(),
            bearer_error: None,
            detail: None,
        }
    }

    /// 503 / `UNAVAILABLE`: a source the decision depends on failed and we fail closed.
    pub fn unavailable(reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            kind: RejectionKind::Unavailable,
            reason: reason.into(),
            bearer_error: None,
            detail: None,
        }
    }

    /// What the audit record gives as the reason instead of [`reason`](Self::reason), when
    /// there is more to say than the client should be told (the validation error behind
    /// an `invalid token`, the scope that was missing). Never a token or a key.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an RFC 6750 error code (`invalid_token`, `insufficient_scope`, `invalid_request`)
    /// to the `WWW-Authenticate: Bearer` challenge.
    pub fn with_bearer_error(mut self, code: &'static str) -> Self {
        self.bearer_error = Some(code);
        self
    }

    /// The kind of refusal.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The short human reason (also what goes to the log).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Builds the response for a request with the given headers: gRPC if its content type
    /// is `application/grpc*`, HTTP otherwise.
    pub fn into_response<B: Default>(self, request_headers: &HeaderMap) -> Response<B> {
        if is_grpc(request_headers) {
            self.into_grpc_response()
        } else {
            self.into_http_response()
        }
    }

    /// [`into_response`](Self::into_response), carrying a deny [`Verdict`] by `decided_by`
    /// with this rejection's [detail](Self::with_detail), else its reason: what
    /// `AuditLayer` records. Every layer and extractor of this crate refuses this way; see
    /// [`crate::verdict`].
    pub fn into_refusal<B: Default>(
        mut self,
        decided_by: impl Into<Cow<'static, str>>,
        request_headers: &HeaderMap,
    ) -> Response<B> {
        let reason = self
            .detail
            .take()
            .unwrap_or_else(|| self.reason.to_string());
        let verdict = Verdict::deny(decided_by, reason);
        let mut res = self.into_response(request_headers);
        verdict.attach(&mut res);
        res
    }

    /// The plain HTTP form: status, `WWW-Authenticate` where it applies, empty body.
    pub fn into_http_response<B: Default>(self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.kind.http_status();
        if let Some(challenge) = self.challenge() {
            res.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        res
    }

    /// The gRPC form: HTTP 200, trailers-only (`grpc-status` and `grpc-message` as headers).
    pub fn into_grpc_response<B: Default>(self) -> Response<B> {
        let mut res = Response::new(B::default());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.kind.grpc_code()));
        if let Ok(msg) = HeaderValue::from_str(&percent_encode_grpc_message(&self.reason)) {
            headers.insert("grpc-message", msg);
        }
        if let Some(challenge) = self.challenge() {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        res
    }

    fn challenge(&self) -> Option<HeaderValue> {
        match (self.kind, self.bearer_error) {
            (RejectionKind::Unavailable, _) => None,
            (RejectionKind::PermissionDenied, None) => None,
            (_, None) => Some(HeaderValue::from_static("Bearer")),
            (_, Some(code)) => HeaderValue::from_str(&format!("Bearer error=\"{code}\"")).ok(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.reason)
    }
}

/// True when the request is gRPC (`content-type: application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
#[cfg(any(feature = "policy", feature = "audit"))]
pub(crate) fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn percent_encode_grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&grpc_headers("application/grpc")));
        assert!(is_grpc(&grpc_headers("application/grpc+proto")));
        assert!(is_grpc(&grpc_headers("application/grpc; charset=utf-8")));
        assert!(!is_grpc(&grpc_headers("application/grpc-web")));
        assert!(!is_grpc(&grpc_headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn http_statuses_and_challenges() {
        let res: Response<()> = Rejection::unauthenticated("x")
            .with_bearer_error("invalid_token")
            .into_http_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );

        let res: Response<()> = Rejection::permission_denied("x")
            .with_bearer_error("insufficient_scope")
            .into_http_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"insufficient_scope\""
        );

        let res: Response<()> = Rejection::permission_denied("x").into_http_response();
        assert!(res.headers().get(WWW_AUTHENTICATE).is_none());

        let res: Response<()> = Rejection::unavailable("audit log down").into_http_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn grpc_trailers_only() {
        let res: Response<()> = Rejection::unauthenticated("bad token")
            .into_response(&grpc_headers("application/grpc"));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "16");
        assert_eq!(res.headers()["grpc-message"], "bad token");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/grpc");

        let res: Response<()> = Rejection::unavailable("down").into_grpc_response();
        assert_eq!(res.headers()["grpc-status"], "14");
    }

    #[cfg(any(feature = "policy", feature = "audit"))]
    #[test]
    fn grpc_paths() {
        assert_eq!(
            grpc_method("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(grpc_method("/x"), None);
        assert_eq!(grpc_method("/a/b/c"), None);
        assert_eq!(grpc_method("//m"), None);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc_message("a b%c"), "a b%25c");
        assert_eq!(percent_encode_grpc_message("é\n"), "%C3%A9%0A");
    }
}
