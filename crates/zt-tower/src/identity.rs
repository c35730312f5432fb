//! Where a request's verified peer identity lives, and how to get it back.
//!
//! The TLS acceptor ([`crate::TlsListener`]) verifies the client's chain once per
//! connection and stores the result in a [`TlsConnectInfo`]. Servers put that value into
//! every request's extensions:
//!
//! * tonic does it by itself for `serve_with_incoming` (the stream implements tonic's
//!   `Connected`), so handlers find it with [`RequestIdentityExt::peer_identity`];
//! * axum does it with `into_make_service_with_connect_info::<TlsConnectInfo>()`, and
//!   handlers take the [`VerifiedPeer`] extractor.
//!
//! Layers read it with [`peer_identity`], which understands both placements and also an
//! `Arc<PeerIdentity>` inserted directly by another source. Nothing here ever reads an
//! identity from a header: incoming headers that claim an identity are not trusted.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Extensions;
use mtls_verify::PeerIdentity;

/// What the TLS acceptor learnt about one connection.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub(crate) remote_addr: SocketAddr,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) identity: Option<Arc<PeerIdentity>>,
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) server_name: Option<String>,
    pub(crate) resumed: bool,
}

impl TlsConnectInfo {
    /// Builds connection info by hand (for tests and for other acceptors).
    pub fn new(remote_addr: SocketAddr, identity: Option<Arc<PeerIdentity>>) -> Self {
        TlsConnectInfo {
            remote_addr,
            local_addr: None,
            identity,
            alpn: None,
            server_name: None,
            resumed: false,
        }
    }

    /// The client's socket address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// Our socket address for this connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The verified client identity, if the client presented a certificate.
    pub fn identity(&self) -> Option<&Arc<PeerIdentity>> {
        self.identity.as_ref()
    }

    /// The negotiated ALPN protocol (`h2`, `http/1.1`).
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The SNI name the client asked for.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Whether the TLS session was resumed (the chain was re-verified against current material).
    pub fn resumed(&self) -> bool {
        self.resumed
    }
}

/// The verified peer identity of the connection a request came in on, if any.
///
/// Looks for, in order: an `Arc<PeerIdentity>` inserted directly, a [`TlsConnectInfo`]
/// (tonic), and axum's `ConnectInfo<TlsConnectInfo>` (with the `axum` feature).
pub fn peer_identity(extensions: &Extensions) -> Option<&Arc<PeerIdentity>> {
    if let Some(id) = extensions.get::<Arc<PeerIdentity>>() {
        return Some(id);
    }
    connect_info(extensions).and_then(|info| info.identity.as_ref())
}

/// The [`TlsConnectInfo`] of the connection a request came in on, if any.
pub fn connect_info(extensions: &Extensions) -> Option<&TlsConnectInfo> {
    if let Some(info) = extensions.get::<TlsConnectInfo>() {
        return Some(info);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<TlsConnectInfo>>() {
        return Some(&info.0);
    }
    None
}

/// Axum extractor for the verified client identity.
///
/// Refuses the request with 403 (or gRPC `PERMISSION_DENIED`) when the connection has
/// no verified identity, with a deny [`Verdict`](crate::Verdict) by `VerifiedPeer` on the
/// response; use `Option<VerifiedPeer>` where a certificate is optional.
///
/// ```
/// use axum::{Router, routing::get};
/// use zt_tower::VerifiedPeer;
///
/// async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
///     peer.spiffe_id().map(|id| id.to_string()).unwrap_or_default()
/// }
/// let app: Router = Router::new().route("/whoami", get(whoami));
/// ```
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub struct VerifiedPeer(pub Arc<PeerIdentity>);

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for VerifiedPeer {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match peer_identity(&parts.extensions) {
            Some(id) => Ok(VerifiedPeer(id.clone())),
            None => Err(
                crate::Rejection::permission_denied("client certificate required")
                    .into_refusal("VerifiedPeer", &parts.headers),
            ),
        }
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for VerifiedPeer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(peer_identity(&parts.extensions).map(|id| VerifiedPeer(id.clone())))
    }
}

/// Reach the verified identity from a tonic handler.
///
/// ```
/// use zt_tower::RequestIdentityExt;
///
/// fn caller(req: &tonic::Request<()>) -> String {
///     req.peer_identity()
///         .and_then(|p| p.spiffe_id().map(|id| id.to_string()))
///         .unwrap_or_else(|| "anonymous".into())
/// }
/// assert_eq!(caller(&tonic::Request::new(())), "anonymous");
/// ```
#[cfg(feature = "tonic")]
pub trait RequestIdentityExt {
    /// The verified client identity of the connection this request came in on.
    fn peer_identity(&self) -> Option<&Arc<PeerIdentity>>;
    /// The TLS connection info of the connection this request came in on.
    fn tls_connect_info(&self) -> Option<&TlsConnectInfo>;
}

#[cfg(feature = "tonic")]
impl<T> RequestIdentityExt for tonic::Request<T> {
    fn peer_identity(&self) -> Option<&Arc<PeerIdentity>> {
        peer_identity(self.extensions())
    }

    fn tls_connect_info(&self) -> Option<&TlsConnectInfo> {
        self.extensions().get::<TlsConnectInfo>()
    }
}
