//! The crate's error type.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Everything that can go wrong in `svid-client`.
///
/// The four ways of not getting a first SVID are told apart: no socket at the path
/// ([`NoAgentSocket`](Error::NoAgentSocket)), nothing accepting on it
/// ([`AgentUnreachable`](Error::AgentUnreachable)), an agent that has no identity for this
/// workload ([`NoIdentity`](Error::NoIdentity)), and an agent that answers nothing
/// ([`FirstSvidTimeout`](Error::FirstSvidTimeout)).
#[derive(thiserror::Error, Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// No Workload API address was given and `SPIFFE_ENDPOINT_SOCKET` is not set (or not
    /// UTF-8).
    #[error("no Workload API address: SPIFFE_ENDPOINT_SOCKET is not set and none was given")]
    NoEndpoint,

    /// The Workload API address does not parse (`unix:/path` or `tcp:IP:port` expected).
    #[error("invalid Workload API address {address:?}: {reason}")]
    InvalidEndpoint {
        /// The address as given.
        address: String,
        /// Why it was refused.
        reason: String,
    },

    /// The Workload API socket does not exist (no agent, or the socket is not mounted).
    #[error(
        "no Workload API socket at {path}: is the SPIFFE agent running and its socket mounted?"
    )]
    NoAgentSocket {
        /// The socket path.
        path: PathBuf,
    },

    /// The Workload API could not be reached (connection refused, …).
    #[error("cannot reach the Workload API at {endpoint}: {reason}")]
    AgentUnreachable {
        /// The address.
        endpoint: String,
        /// The transport's error.
        reason: String,
    },

    /// The agent answered but has no identity for this workload (`PermissionDenied`, for
    /// SPIRE "no identity issued": no registration entry matches the workload's selectors).
    #[error("the Workload API at {endpoint} issued no identity to this workload: {reason}")]
    NoIdentity {
        /// The address.
        endpoint: String,
        /// The agent's message.
        reason: String,
    },

    /// Connected, but no usable X.509-SVID arrived within the first-SVID timeout.
    #[error("no X.509-SVID from the Workload API at {endpoint} within {waited:?}")]
    FirstSvidTimeout {
        /// The address.
        endpoint: String,
        /// The timeout.
        waited: Duration,
    },

    /// Connected, but no JWT bundle set with keys arrived within the first-bundles timeout.
    #[error("no JWT bundles from the Workload API at {endpoint} within {waited:?}")]
    FirstBundlesTimeout {
        /// The address.
        endpoint: String,
        /// The timeout.
        waited: Duration,
    },

    /// The Workload API refused a JWT-SVID it was asked to validate (`ValidateJWTSVID`).
    #[error("JWT-SVID refused by the Workload API: {0}")]
    InvalidJwtSvid(String),

    /// jwt-oidc refused a JWT-SVID validator's configuration or a JWT bundle set.
    #[cfg(feature = "jwt")]
    #[error(transparent)]
    Jwt(#[from] jwt_oidc::AuthError),

    /// The Workload API failed while following its stream (after the first SVID).
    #[error("Workload API at {endpoint}: {reason}")]
    WorkloadApi {
        /// The address.
        endpoint: String,
        /// What failed.
        reason: String,
    },

    /// An update from the Workload API was refused (no SVID, no bundle for the SVID's own
    /// trust domain, malformed); the last good material keeps serving.
    #[error("refused Workload API update: {0}")]
    InvalidUpdate(String),

    /// The current X.509-SVID was not renewed in time: it expires soon (`expired: false`,
    /// inside the expiry-warning window) or has expired (`expired: true`). Peers refuse an
    /// expired SVID, so this is the warning to act on.
    #[error("the X.509-SVID of {spiffe_id} {} at {} and was not renewed", if *expired { "expired" } else { "expires" }, humantime(*not_after))]
    NotRenewed {
        /// The SVID's SPIFFE ID.
        spiffe_id: String,
        /// Its expiry.
        not_after: SystemTime,
        /// Whether it has expired.
        expired: bool,
    },

    /// A bundle endpoint could not be served, reached, authenticated, or returned an unusable
    /// bundle (federation over the network).
    #[error("bundle endpoint: {0}")]
    Federation(String),

    /// mtls-verify refused the material (or a holder could not be built from it).
    #[error(transparent)]
    Tls(#[from] mtls_verify::Error),

    /// The background task could not be started.
    #[error("cannot start the Workload API task: {0}")]
    Task(String),
}

/// RFC 3339, UTC.
fn humantime(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}
