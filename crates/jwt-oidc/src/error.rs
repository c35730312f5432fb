//! The crate's one error type and its mapping to RFC 6750 error codes.

use crate::Algorithm;

/// Why a token was refused, or why configuration or a key source failed.
///
/// `Display` gives the detailed reason, meant for logs: it names the check or the claim that
/// failed and never contains the token, a key or a signature. What a client should be told is
/// only [`AuthError::bearer_error`] (RFC 6750): no detail that helps an attacker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is longer than the configured limit; it was refused before any parsing.
    #[error("token is {len} bytes, over the {limit}-byte limit")]
    TokenTooLarge {
        /// Length of the presented token in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The token is not a well-formed compact JWS: segments, base64url, UTF-8 or JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is refused: `none`, HMAC, unknown, or outside the allow-list.
    #[error("algorithm {alg:?} is not accepted")]
    AlgorithmNotAllowed {
        /// The `alg` from the header (truncated, escaped).
        alg: Box<str>,
    },
    /// The header's `alg` differs from the algorithm of the key named by `kid`.
    #[error("header alg {header:?} does not match the key's algorithm {key}")]
    AlgorithmMismatch {
        /// The `alg` from the header.
        header: Box<str>,
        /// The algorithm bound to the key.
        key: Algorithm,
    },
    /// The header carries a key or a key location (`jwk`, `jku`, `x5u`, `x5c`); keys are only
    /// ever taken from the issuer's configured key set.
    #[error("header parameter {0:?} is not accepted")]
    ForbiddenHeader(&'static str),
    /// `crit` names a header extension this validator does not understand.
    #[error("critical header parameter {name:?} is not understood")]
    UnknownCritical {
        /// The name listed in `crit` (truncated, escaped).
        name: Box<str>,
    },
    /// The `typ` header is missing or is not the required type (for example `at+jwt`).
    #[error("token type is not {expected:?}")]
    WrongType {
        /// The required type.
        expected: Box<str>,
    },
    /// The token has no `kid` header.
    #[error("token has no kid header")]
    MissingKeyId,
    /// No key with the token's `kid` in the issuer's key set, even after a refresh.
    #[error("no key {kid:?} in the key set of issuer {issuer}")]
    UnknownKey {
        /// The token's `kid` (truncated, escaped).
        kid: Box<str>,
        /// The issuer whose key set was searched.
        issuer: Box<str>,
    },
    /// The `iss` claim is missing or names no configured issuer (compared exactly).
    #[error("issuer {iss:?} is not configured")]
    UnknownIssuer {
        /// The token's `iss` (truncated, escaped); empty when missing.
        iss: Box<str>,
    },
    /// The issuer's keys have never been loaded, or the last good ones are older than the
    /// allowed staleness (fail closed).
    #[error("keys of issuer {issuer} are unavailable: {reason}")]
    KeysUnavailable {
        /// The issuer.
        issuer: Box<str>,
        /// Why (`never loaded`, `stale`).
        reason: &'static str,
    },
    /// The signature does not verify with the issuer's key.
    #[error("signature is invalid")]
    InvalidSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    /// `iat` is older than the configured maximum token age.
    #[error("token is older than the maximum age")]
    TooOld,
    /// A required claim is absent.
    #[error("claim {claim:?} is missing")]
    MissingClaim {
        /// The claim's name.
        claim: Box<str>,
    },
    /// A claim has the wrong JSON type or an impossible value.
    #[error("claim {claim:?} is invalid: {reason}")]
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `aud` does not contain any configured audience.
    #[error("token audience does not match")]
    WrongAudience,
    /// The token is bound to a client certificate (`cnf.x5t#S256`) other than the one on
    /// this connection (RFC 8705).
    #[error("token is bound to another client certificate")]
    CertificateMismatch,
    /// The token is certificate-bound but the connection presented no client certificate.
    #[error("token is certificate-bound but the connection has no client certificate")]
    NoClientCertificate,
    /// Certificate binding is mandatory and the token has no `cnf.x5t#S256`.
    #[error("token is not certificate-bound and binding is required")]
    CertificateBindingRequired,
    /// The token's `cnf` uses a confirmation method this validator does not implement (for
    /// example DPoP's `jkt`), so it cannot be accepted as a bearer token.
    #[error("unsupported confirmation method in cnf")]
    UnsupportedConfirmation,
    /// A scope required by the configuration is not granted by the token.
    #[error("required scope {scope:?} is not granted")]
    InsufficientScope {
        /// The missing scope.
        scope: Box<str>,
    },
    /// The application's custom check refused the token.
    #[error("refused by custom check: {reason}")]
    Rejected {
        /// The reason the check gave.
        reason: Box<str>,
    },
    /// The configuration is invalid.
    #[error("invalid configuration of {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// What is wrong.
        reason: Box<str>,
    },
    /// Fetching a discovery document or a JWKS failed.
    #[error("fetching {url} failed: {reason}")]
    Fetch {
        /// The URL (from configuration or the issuer's discovery document, never from a token).
        url: Box<str>,
        /// What went wrong.
        reason: Box<str>,
    },
    /// OIDC discovery failed (document invalid or its `issuer` differs from the configured one).
    #[error("discovery for issuer {issuer} failed: {reason}")]
    Discovery {
        /// The configured issuer.
        issuer: Box<str>,
        /// What went wrong.
        reason: Box<str>,
    },
    /// A JWKS document is unusable as a whole (not JSON, no `keys`, no usable key).
    #[error("invalid JWKS: {reason}")]
    InvalidJwks {
        /// What is wrong.
        reason: Box<str>,
    },
}

/// The RFC 6750 §3.1 error code a refusal maps to (the `error="…"` of `WWW-Authenticate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BearerError {
    /// `invalid_request`: the request is malformed (for example an oversized token).
    InvalidRequest,
    /// `invalid_token`: the token is expired, revoked, malformed or invalid (HTTP 401).
    InvalidToken,
    /// `insufficient_scope`: the token is valid but lacks a required scope (HTTP 403).
    InsufficientScope,
}

impl BearerError {
    /// The code as it appears in `WWW-Authenticate: Bearer error="…"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// The HTTP status RFC 6750 recommends: 400, 401 or 403.
    #[must_use]
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::InvalidToken => 401,
            Self::InsufficientScope => 403,
        }
    }
}

impl std::fmt::Display for BearerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AuthError {
    /// The RFC 6750 error code to send to the client. Everything that is not a missing scope
    /// is `invalid_token` (401), including unavailable keys: failures never turn into *allow*
    /// and never reveal which check failed.
    #[must_use]
    pub fn bearer_error(&self) -> BearerError {
        match self {
            Self::InsufficientScope { .. } => BearerError::InsufficientScope,
            _ => BearerError::InvalidToken,
        }
    }

    /// True when the refusal comes from our side (keys unavailable, configuration, fetch)
    /// rather than from the token; worth a warning in the logs and a metric.
    #[must_use]
    pub fn is_server_side(&self) -> bool {
        matches!(
            self,
            Self::KeysUnavailable { .. }
                | Self::InvalidConfig { .. }
                | Self::Fetch { .. }
                | Self::Discovery { .. }
                | Self::InvalidJwks { .. }
        )
    }
}

/// Up to 64 characters of untrusted text for an error message; `Debug` formatting of the
/// result escapes quotes and control characters.
pub(crate) fn untrusted(s: &str) -> Box<str> {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.into(),
        Some((i, _)) => {
            let mut out = String::with_capacity(i + 3);
            out.push_str(&s[..i]);
            out.push('…');
            out.into_boxed_str()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_truncated_and_escaped_when_shown() {
        let long = "a".repeat(500);
        assert_eq!(untrusted(&long).chars().count(), 65);
        let e = AuthError::UnknownKey {
            kid: untrusted("../\n\"x"),
            issuer: "i".into(),
        };
        assert!(e.to_string().contains(r#""../\n\"x""#), "{e}");
    }

    #[test]
    fn only_missing_scope_is_403() {
        assert_eq!(
            AuthError::InsufficientScope { scope: "a".into() }
                .bearer_error()
                .http_status(),
            403
        );
        assert_eq!(AuthError::Expired.bearer_error(), BearerError::InvalidToken);
        assert_eq!(AuthError::Expired.bearer_error().as_str(), "invalid_token");
    }
}
