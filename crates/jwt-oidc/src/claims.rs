//! [`Claims`]: what a verified token says, for the next layers and for handlers.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Algorithm;

/// The claims of a verified access token.
///
/// Registered claims are read once during validation; the full claims set is kept as the
/// signed JSON text and parsed into a [`serde_json::Value`] only when [`Claims::raw`] is first
/// called. Roles are read the same way, lazily, from the configured claim path.
pub struct Claims {
    pub(crate) issuer: Box<str>,
    pub(crate) subject: Option<Box<str>>,
    pub(crate) audiences: Box<[Box<str>]>,
    pub(crate) expires_at: u64,
    pub(crate) issued_at: Option<u64>,
    pub(crate) not_before: Option<u64>,
    /// Space-separated scopes (from `scope`, else `scp` joined with spaces).
    pub(crate) scope: Box<str>,
    pub(crate) client_id: Option<Box<str>>,
    pub(crate) cert_thumbprint: Option<[u8; 32]>,
    pub(crate) key_id: Option<Box<str>>,
    pub(crate) algorithm: Algorithm,
    pub(crate) payload: String,
    pub(crate) roles_path: Option<Arc<[Box<str>]>>,
    pub(crate) raw: OnceLock<serde_json::Value>,
    pub(crate) roles: OnceLock<Box<[Box<str>]>>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("audiences", &self.audiences)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field("certificate_bound", &self.cert_thumbprint.is_some())
            .finish_non_exhaustive()
    }
}

fn secs(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t)
}

impl Claims {
    /// `iss`: the issuer, exactly as configured.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `sub`, when present.
    #[must_use]
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// `aud`: one or more audiences (one of them is a configured audience).
    #[must_use]
    pub fn audiences(&self) -> &[Box<str>] {
        &self.audiences
    }

    /// `exp`.
    #[must_use]
    pub fn expires_at(&self) -> SystemTime {
        secs(self.expires_at)
    }

    /// `exp` in seconds since the Unix epoch.
    #[must_use]
    pub fn expires_at_unix(&self) -> u64 {
        self.expires_at
    }

    /// `iat`, when present.
    #[must_use]
    pub fn issued_at(&self) -> Option<SystemTime> {
        self.issued_at.map(secs)
    }

    /// `nbf`, when present.
    #[must_use]
    pub fn not_before(&self) -> Option<SystemTime> {
        self.not_before.map(secs)
    }

    /// The granted scopes, from `scope` (RFC 8693/9068, space-separated) or else `scp`
    /// (a string or an array, as Azure AD and Okta send it).
    pub fn scopes(&self) -> impl Iterator<Item = &str> + '_ {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// True when `scope` is among [`Claims::scopes`] (exact, case-sensitive).
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// `client_id` (RFC 9068), when present.
    #[must_use]
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The SHA-256 thumbprint from `cnf.x5t#S256` when the token is certificate-bound
    /// (RFC 8705). Validation already checked it against the connection's certificate.
    #[must_use]
    pub fn certificate_thumbprint(&self) -> Option<&[u8; 32]> {
        self.cert_thumbprint.as_ref()
    }

    /// The `kid` of the key that verified the token.
    #[must_use]
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The algorithm of the key that verified the token.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The verified claims set as JSON text, exactly as signed.
    #[must_use]
    pub fn json(&self) -> &str {
        &self.payload
    }

    /// The whole claims set as JSON, parsed on first use. A claims set nested deeper than
    /// serde_json's recursion limit yields an empty object here (its registered claims were
    /// still validated).
    #[must_use]
    pub fn raw(&self) -> &serde_json::Value {
        self.raw.get_or_init(|| {
            serde_json::from_str(&self.payload)
                .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
        })
    }

    /// One top-level claim from [`Claims::raw`].
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.raw().get(name)
    }

    /// The roles found at the configured claim path (default `roles`; for Keycloak
    /// `realm_access.roles`): an array of strings or one space-separated string. Empty when
    /// the claim is absent or has another shape.
    #[must_use]
    pub fn roles(&self) -> &[Box<str>] {
        self.roles.get_or_init(|| {
            let Some(path) = self.roles_path.as_deref() else {
                return Box::default();
            };
            let mut node = self.raw();
            for segment in path {
                match node.get(segment.as_ref()) {
                    Some(next) => node = next,
                    None => return Box::default(),
                }
            }
            match node {
                serde_json::Value::Array(items) => items
                    .iter()
                    .filter_map(|v| v.as_str())
                    .map(Into::into)
                    .collect(),
                serde_json::Value::String(s) => s
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(Into::into)
                    .collect(),
                _ => Box::default(),
            }
        })
    }

    /// True when `role` is among [`Claims::roles`].
    #[must_use]
    pub fn has_role(&self, role: &str) -> bool {
        self.roles().iter().any(|r| r.as_ref() == role)
    }
}
