//! The crate's one error type.

use std::path::PathBuf;
use std::sync::Arc;

use crate::authorizer::IdentityRejection;

/// Everything that can go wrong in this crate.
///
/// Variants about key material name the file they came from (or `<memory>` for material
/// given as bytes). The text never contains key bytes or whole certificates.
/// The type is `Clone` (shared parts sit behind `Arc`) so a status snapshot can carry the
/// last reload error.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: Arc<std::io::Error>,
    },

    /// A file is larger than the limit for its kind of material.
    #[error("{} is too large ({size} bytes, limit {limit})", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// A file is not valid PEM (or DER) of the expected kind.
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate file holds no certificate.
    #[error("{} contains no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A key file holds no private key.
    #[error("{} contains no private key", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// The private key is unusable (unsupported algorithm or malformed).
    #[error("{}: unusable private key: {reason}", path.display())]
    InvalidPrivateKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The private key does not belong to the certificate.
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// A certificate of our own has expired.
    #[error("the certificate in {} expired at {not_after}", path.display())]
    CertificateExpired {
        /// The file.
        path: PathBuf,
        /// When it expired (RFC 3339).
        not_after: String,
    },

    /// A certificate of our own is not valid yet.
    #[error("the certificate in {} is not valid before {not_before}", path.display())]
    CertificateNotYetValid {
        /// The file.
        path: PathBuf,
        /// When it becomes valid (RFC 3339).
        not_before: String,
    },

    /// A CA bundle holds no usable certificate.
    #[error("the CA bundle {} contains no certificate", path.display())]
    EmptyCaBundle {
        /// The file.
        path: PathBuf,
    },

    /// A CA certificate could not be used as a trust anchor.
    #[error("the CA bundle {} holds an unusable certificate: {reason}", path.display())]
    InvalidCaCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A CRL could not be parsed, is expired, or is otherwise unusable.
    #[error("CRL {}: {reason}", path.display())]
    Crl {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A certificate could not be parsed or violates a rule of this crate.
    #[error("certificate: {0}")]
    Certificate(String),

    /// A certificate chain failed verification; the text is the human reason.
    #[error("certificate verification failed: {0}")]
    Verification(String),

    /// The chain verified but the identity authorizer refused it.
    #[error("peer not authorized: {0}")]
    NotAuthorized(IdentityRejection),

    /// A SPIFFE peer's trust domain has no bundle this side may use: none in the bundle set,
    /// or one the trust-domain policy excludes.
    #[error("trust domain {trust_domain} is not trusted: {reason}")]
    UntrustedTrustDomain {
        /// The peer's trust domain.
        trust_domain: String,
        /// Why no bundle of it is used.
        reason: String,
    },

    /// A SPIFFE bundle (JSON, `use: "x509-svid"` keys with `x5c`) cannot be used.
    #[error("SPIFFE bundle {}: {reason}", path.display())]
    SpiffeBundle {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A string is not a valid SPIFFE ID.
    #[error("invalid SPIFFE ID: {0}")]
    SpiffeId(String),

    /// A DNS name pattern given to an authorizer is invalid.
    #[error("invalid DNS name pattern {pattern:?}: {reason}")]
    DnsPattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },

    /// A builder option has an unusable value.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The connection presented no client certificate although one is required.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    /// The connection is still handshaking, so there is no verified peer yet.
    #[error("the TLS handshake has not completed")]
    HandshakeIncomplete,

    /// An error from rustls.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),

    /// A background task failed (for example it panicked or its runtime shut down).
    #[error("background task failed: {0}")]
    Task(String),
}

/// The path reported for material given as bytes.
pub(crate) const MEMORY: &str = "<memory>";
