//! SPIFFE workload identity for ztkit: X.509-SVIDs from the SPIFFE Workload API, rotating
//! into `mtls-verify`'s rustls holders (issue 9, first slice).
//!
//! [`SvidSource`] connects to the Workload API (`SPIFFE_ENDPOINT_SOCKET`, or an explicit
//! `unix:` / `tcp:` address), waits for the first X.509-SVID with a timeout, then follows
//! the `FetchX509SVID` stream in a background task. Every new SVID is pushed through
//! [`MaterialHolder::update`] into the [`ServerTls`](mtls_verify::ServerTls) /
//! [`ClientTls`](mtls_verify::ClientTls) holders it built ([`SvidSource::server_tls`],
//! [`SvidSource::client_tls`]) or was given ([`SvidSource::feed`]): the same holders files
//! feed, so the verification, `PeerIdentity`, status and refusal rules are mtls-verify's,
//! and new handshakes use the new SVID without a restart.
//!
//! ```no_run
//! use std::time::Duration;
//! use mtls_verify::IdentityAuthorizer;
//! use svid_client::SvidSource;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = SvidSource::builder()
//!     .endpoint("unix:/run/spire/agent.sock")
//!     .first_svid_timeout(Duration::from_secs(10))
//!     .connect()
//!     .await?;
//! let server = source.server_tls(|tls| {
//!     tls.authorizer(svid_client::authorize::member_of("example.org").unwrap())
//! })?;
//! let client = source.client_tls(|tls| {
//!     tls.server_authorizer(IdentityAuthorizer::spiffe_ids(["spiffe://example.org/api"]).unwrap())
//!         .allow_any_hostname()
//! })?;
//! println!("serving as {:?}", source.status().identity.spiffe_id());
//! # let _ = (server, client); Ok(()) }
//! ```
//!
//! ## Design choices
//!
//! - **One path for TLS material.** The source does not build rustls configs or verifiers of
//!   its own: it turns each update (the default SVID, its chain, key, and the bundle of its
//!   own trust domain) into a `TlsMaterial` and hands it to the holders. A holder that
//!   refuses keeps its last good material; the source records the refusal in its status
//!   and keeps its previous SVID as the one new holders start from.
//! - **Trust: a bundle per trust domain.** Each update's bundles become the holders' bundle
//!   set: the SVID's own trust domain's as the CA bundle, the others as federated bundles
//!   (`TlsMaterial::federated_bundle`). Holders built by the source verify a peer against
//!   the bundle of the peer's own trust domain, never a union, under mtls-verify's
//!   [`TrustDomainPolicy`](mtls_verify::TrustDomainPolicy), local only unless `configure`
//!   sets another (`docs/spiffe.md`, "Trust domains and federation").
//! - **Startup.** `connect` retries, with the reconnection backoff, until the first-SVID
//!   timeout, then says why nothing came: no socket at the path, nothing accepting on it,
//!   no identity for this workload, refused material, or an agent that answered nothing.
//! - **Which SVID.** The default one (the first of each update), or the one with the hint
//!   given to [`SvidSourceBuilder::svid_hint`]. An SVID outside its validity period is
//!   refused before any holder sees it (an agent's clock or cache gone wrong must not
//!   replace a good SVID).
//! - **Following.** When the stream fails or ends (agent restart), the task reconnects with
//!   capped, jittered backoff; holders keep serving the last SVID meanwhile, and the failure
//!   is recorded (once, by `zt-rotate`'s `StatusRecorder`) in [`SvidSource::status`] and in
//!   each holder's status through `source_failed`.
//! - **Expiry.** An SVID not renewed within its warning window (a quarter of its lifetime
//!   by default, [`SvidSourceBuilder::expiry_warning`]) is reported once, and once more when
//!   it expires ([`Error::NotRenewed`], logged at `warn` and in the status), also while the
//!   agent is unreachable. Holders built by the source refuse new handshakes once their SVID
//!   expired (`refuse_handshakes_after_expiry`): fail closed until the next SVID arrives.
//! - **Ownership.** The task is owned by a `zt_rotate::TaskHandle` inside the source:
//!   dropping the source stops it.
//! - **Dependencies.** `spiffe` with `workload-api-x509` only (its client and X.509 types);
//!   not `x509-source`, whose own cache and supervisor would be a second rotation path.
//!
//! ## Authorizers
//!
//! [`authorize`] names go-spiffe's authorizers (`exact`, `one_of`, `member_of`, a closure)
//! on top of mtls-verify's [`IdentityAuthorizer`](mtls_verify::IdentityAuthorizer), usable
//! for servers (`ServerTlsBuilder::authorizer`) and clients
//! (`ClientTlsBuilder::server_authorizer`).
//!
//! ## JWT-SVIDs (feature `jwt`)
//!
//! `jwt::JwtSvidSource` fetches JWT-SVIDs for an audience (also
//! `SvidSource::fetch_jwt_svid`), validates incoming ones through the agent
//! (`ValidateJWTSVID`) or offline against the JWT bundles it follows (`FetchJWTBundles`),
//! with a `JwtSvidValidator` that is a jwt-oidc authenticator with one issuer per trust
//! domain, chosen by the `sub`'s trust domain. It implements jwt-oidc's `ValidateToken`, so
//! zt-tower's `JwtAuthLayer::new(validator)` takes JWT-SVIDs as bearer tokens (the
//! principal, `Claims::subject()`, is the SPIFFE ID). Design in the module docs.
//!
//! ## Testing
//!
//! The `testing` feature adds `testing::TestWorkloadApi`, a Workload API server faithful
//! to SPIFFE's public `workload.proto` (not SPIRE, not for production).
//!
//! ## Done and left (issue 9)
//!
//! Done: `SvidSource` (address from the environment or given, first-SVID timeout with
//! distinguishable errors, stream following with reconnection, SVID selection by hint,
//! expired/malformed/mismatched updates refused with the last SVID kept, a warning before
//! an SVID expires without renewal and at expiry, new handshakes refused once it expired),
//! rotation into `ServerTls`/`ClientTls` (built by the source or fed), federated bundles
//! with per-peer-trust-domain verification and the trust-domain policies (bundles updated
//! live), static bundle files (PEM or SPIFFE bundle JSON, in mtls-verify), status, the
//! authorizer names, the test server's X.509 RPCs (checked with the `spiffe` crate's own
//! client) and its JWT RPCs (issuing ES256 JWT-SVIDs with keys rotated on demand,
//! `FetchJWTBundles`, `ValidateJWTSVID`); JWT-SVIDs on the client side (fetch, offline and
//! agent validation, `JwtAuthLayer` through jwt-oidc's `ValidateToken`, `tests/jwt.rs`).
//! Tested through real TLS handshakes (`tests/source.rs`, `tests/federation.rs`); design and
//! mapping to go-spiffe in `docs/spiffe.md`.
//!
//! Federation over the network ([`bundle_endpoint`]): serving this trust domain's bundle,
//! fetching a foreign one (`https_web`, `https_spiffe`) into a file refreshed by its hint or
//! straight into a source's holders (`SvidSource::federate_with`);
//! `ztkit spiffe bundle-endpoint` serves one from the command line.
//!
//! tonic/axum: `TlsListener` and `zt_tower::tls_channel` take the holders (docs/spiffe.md).
//!
//! Demo: the SPIFFE part of `examples/demo.rs`. Benchmarks: `benches/svid_handshake.rs`,
//! docs/benchmarks.md.

pub use error::Error;
#[cfg(feature = "jwt")]
pub use jwt::{JwtSvid, JwtSvidSource, JwtSvidValidator};
pub use source::{
    DEFAULT_FIRST_SVID_TIMEOUT, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, ENDPOINT_ENV,
    SvidSource, SvidSourceBuilder, SvidStatus,
};
/// The rotation seam (from `zt-rotate`), re-exported.
pub use zt_rotate::{MaterialHolder, RotationStatus};

pub mod authorize;
pub mod bundle_endpoint;
mod error;
#[cfg(feature = "jwt")]
pub mod jwt;
mod source;
#[cfg(feature = "testing")]
pub mod testing;
