//! Hardened rustls configuration, client-certificate verification and peer identity.
//!
//! `mtls-verify` builds the TLS side of a zero-trust service:
//!
//! - [`ServerTlsBuilder`] → [`ServerTls`]: TLS 1.3 only, client certificates required and
//!   verified by rustls's `WebPkiClientVerifier` *plus* the checks it lacks (an identity
//!   [authorizer](IdentityAuthorizer), RSA ≥ 2048, no SHA-1, chain depth and size caps),
//!   CRLs with unknown status denied, session resumption, ALPN `h2`/`http/1.1`,
//!   post-quantum hybrid key exchange first, and hot reload of every file.
//! - [`PeerIdentity`]: the verified client's SPIFFE ID, SANs, subject, serial and SHA-256
//!   fingerprint, parsed once per connection ([`ServerTls::peer_identity`]).
//! - [`ClientTlsBuilder`] → [`ClientTls`] for outbound mTLS.
//! - SPIFFE trust with federated trust domains: with a [`TrustDomainPolicy`] set, each peer
//!   chain is verified against the bundle of the peer's own trust domain (its leaf's single
//!   SPIFFE URI SAN), never a union of bundles; bundles are PEM, DER or SPIFFE bundle JSON,
//!   from files (watched) or any source (`TlsMaterial::federated_bundle`). See
//!   `docs/spiffe.md`.
//! - Fail closed on expiry (opt-in, `refuse_handshakes_after_expiry`): our certificate past
//!   its notAfter is no longer presented, so new handshakes fail on our side.
//! - Rotation the ztkit way (`zt-rotate`, `docs/rotation.md`): both handles are
//!   [`MaterialHolder`]s, so any source can [`update`](MaterialHolder::update) them with
//!   [`TlsMaterial`]; `spawn_reloader` watches the files (polling with settling, inotify
//!   wake-ups) and returns a [`ReloadHandle`] that stops it when dropped.
//! - [`verify_client_chain`]: the server's verification as a function, for the CLI.
//! - [`capture_refused_certificate`]: what a refused client presented, for an acceptor's
//!   audit record.
//!
//! See `docs/mtls.md` for what is verified and why, every option with its default, and how
//! rotation behaves.
//!
//! ```
//! use mtls_verify::{IdentityAuthorizer, ServerTlsBuilder};
//! use ztkit_test_support::TestPki;
//!
//! let pki = TestPki::new(); // a throw-away CA, server and client certificates
//! let tls = ServerTlsBuilder::from_pem(
//!     pki.server.chain_pem.as_bytes(),
//!     pki.server.key_pem.as_bytes(),
//!     pki.ca.cert_pem.as_bytes(),
//! )
//! .authorizer(IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/default/sa/client"])?)
//! .build()?;
//!
//! let config = tls.config(); // an Arc<rustls::ServerConfig> for the TLS acceptor
//! assert_eq!(config.alpn_protocols[0], b"h2");
//! assert_eq!(tls.status().generation, 1);
//!
//! // The same verification the server runs, as a function:
//! let options = mtls_verify::ChainVerifyOptions::new(vec![pki.ca.cert_der.clone()]);
//! let peer = mtls_verify::verify_client_chain(&pki.client.chain_der, &options)?;
//! assert_eq!(
//!     peer.spiffe_id().map(|id| id.as_str()),
//!     Some("spiffe://example.org/ns/default/sa/client")
//! );
//! # Ok::<(), mtls_verify::Error>(())
//! ```

/// The rustls this crate is built against (0.23, aws-lc-rs), re-exported so callers use the
/// same version.
pub use rustls;

pub use authorizer::{AuthorizeIdentity, IdentityAuthorizer, IdentityRejection};
pub use client::{ClientTls, ClientTlsBuilder};
pub use error::Error;
pub use identity::{MAX_CERTIFICATE_SIZE, PeerIdentity};
pub use refused::{RefusedCertificate, capture_refused_certificate};
pub use reload::{ReloadHandle, TlsMaterial};
pub use server::{
    DEFAULT_EXPIRY_WARNING, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_RELOAD_INTERVAL, MaterialStatus,
    ServerTls, ServerTlsBuilder,
};
pub use spiffe::SpiffeId;
pub use trust_domains::TrustDomainPolicy;
pub use verifier::{
    ChainVerifyOptions, DEFAULT_MAX_CHAIN_DEPTH, DEFAULT_MIN_RSA_BITS, human_reason,
    server_certificate_verifier, verify_client_chain,
};
/// The rotation seam shared by every ztkit holder (from `zt-rotate`): [`ServerTls`] and
/// [`ClientTls`] implement it, so any source can feed them [`TlsMaterial`].
pub use zt_rotate::{MaterialHolder, RotationStatus};

mod authorizer;
mod client;
mod der;
mod error;
mod identity;
mod material;
pub mod pem;
mod refusal_log;
mod refused;
mod reload;
mod server;
pub mod spiffe;
mod trust_domains;
mod verifier;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};

/// The crypto provider used everywhere in ztkit: aws-lc-rs with key exchange groups
/// X25519MLKEM768 (post-quantum hybrid), X25519, secp256r1, in that order; TLS 1.3 AEAD
/// suites, and TLS 1.2 ECDHE-AEAD suites that are only used when TLS 1.2 is enabled.
///
/// ```
/// let provider = mtls_verify::crypto_provider();
/// assert_eq!(provider.kx_groups[0].name(), rustls::NamedGroup::X25519MLKEM768);
/// ```
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                    cipher_suite::TLS13_AES_256_GCM_SHA384,
                    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                ],
                kx_groups: vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                ],
                ..aws_lc_rs::default_provider()
            })
        })
        .clone()
}
