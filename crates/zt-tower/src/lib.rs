//! Tower layers that wire ztkit's identity, authentication, policy and audit into axum and
//! tonic.
//!
//! * [`TlsListener`] — a TLS acceptor for `axum::serve` and tonic's `serve_with_incoming`
//!   that verifies client certificates with [`mtls_verify`] and attaches a
//!   [`TlsConnectInfo`] (with the [`PeerIdentity`](mtls_verify::PeerIdentity)) to every request.
//! * `tls_channel` (feature `tonic`) — the client side: a tonic `Channel` over mutual TLS
//!   from an mtls-verify `ClientTls` (files or SVIDs), taking the current certificate at
//!   each connection and checking the server's identity.
//! * [`RequireIdentityLayer`] — allow or deny by the verified identity.
//! * `JwtAuthLayer`, `RequireClaimsLayer` (feature `jwt`) — bearer tokens with
//!   [`jwt_oidc`](https://docs.rs/jwt-oidc), certificate-bound to the mTLS identity.
//! * [`rejection`] — the single place where a denial becomes an HTTP or gRPC response.
//! * [`verdict`] — who decided a request, carried back up on its response for the audit.
//!
//! * `PolicyLayer` (feature `policy`) — Rego decisions with `policy-rego`.
//! * `L7RulesLayer` (feature `l7`) — the kernel filter's HTTP method/path rules
//!   ([`ebpf_l7_filter`](https://docs.rs/ebpf-l7-filter)) enforced in the process, for TLS,
//!   HTTP/2 and gRPC.
//! * `AuditLayer` (feature `audit`) — exactly one hash-chained audit record per request with
//!   `zt-audit`, whatever became of it: completed, refused, failed, panicked or aborted.
//!
//! Identity flows down as request extensions; nothing is read from headers that claim one.
//! Verdicts flow back up as response extensions ([`Verdict`]).
//!
//! Features: `axum` (the `VerifiedPeer` extractor and `axum::serve` support), `tonic`
//! (tonic's `Connected` for [`TlsStream`] and `RequestIdentityExt`), `jwt` (the bearer-token
//! layers), `policy`, `audit`, `l7`.

mod acceptor;
#[cfg(feature = "audit")]
pub mod audit;
#[cfg(feature = "tonic")]
pub mod channel;
mod future;
mod identity;
#[cfg(feature = "jwt")]
pub mod jwt;
#[cfg(feature = "l7")]
pub mod l7;
#[cfg(feature = "policy")]
pub mod policy;
pub mod rejection;
mod require_identity;
pub mod verdict;

pub use acceptor::{
    AcceptorStats, AcceptorStatsHandle, TlsIncoming, TlsListener, TlsListenerOptions, TlsStream,
};
#[cfg(all(feature = "audit", feature = "policy"))]
pub use audit::decision_log_sink;
#[cfg(feature = "audit")]
pub use audit::{Audit, AuditLayer, AuditResponseFuture};
#[cfg(feature = "tonic")]
pub use channel::{TlsChannelConnector, tls_channel, tls_channel_lazy};
pub use future::BoxResponseFuture;
#[cfg(feature = "tonic")]
pub use identity::RequestIdentityExt;
#[cfg(feature = "axum")]
pub use identity::VerifiedPeer;
pub use identity::{TlsConnectInfo, connect_info, peer_identity};
#[cfg(all(feature = "jwt", feature = "tonic"))]
pub use jwt::RequestClaimsExt;
#[cfg(all(feature = "jwt", feature = "axum"))]
pub use jwt::TokenClaims;
#[cfg(feature = "jwt")]
pub use jwt::{
    CheckClaims, JwtAuth, JwtAuthLayer, JwtResponseFuture, RequireClaims, RequireClaimsLayer,
    request_claims,
};
#[cfg(feature = "l7")]
pub use l7::{L7Decision, L7Rules, L7RulesLayer, decide_request, l7_decision};
#[cfg(all(feature = "policy", feature = "axum"))]
pub use policy::Decision;
#[cfg(feature = "policy")]
pub use policy::{Policy, PolicyInputCache, PolicyLayer, policy_input, request_decision};
pub use rejection::Rejection;
pub use require_identity::{RequireIdentity, RequireIdentityLayer, ResponseFuture};
pub use verdict::{Verdict, response_verdict};
