//! [`Claims`]: what a verified token says, for the next layers and for handlers.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Algorithm;

/// The claims of a verified access token.
///
/// The claims set is read once during validation, by the crate's strict reader, into the
/// registered claims (mostly spans of the signed JSON text); every other claim is checked
/// and skipped. The whole set as a [`serde_json::Value`] ([`Claims::raw`]) is built from the
/// kept text on first use, by the same reader, so a server that never reads it pays nothing
/// for it. Roles are read lazily from that value, at the configured claim path.
pub struct Claims {
    pub(crate) issuer: Text,
    pub(crate) subject: Option<Text>,
    pub(crate) audience: Option<Text>,
    pub(crate) more_audiences: Box<[Text]>,
    pub(crate) expires_at: u64,
    pub(crate) issued_at: Option<u64>,
    pub(crate) not_before: Option<u64>,
    /// Space-separated scopes (from `scope`, else `scp` joined with spaces).
    pub(crate) scope: Option<Text>,
    pub(crate) client_id: Option<Text>,
    pub(crate) cert_thumbprint: Option<[u8; 32]>,
    pub(crate) key_id: Option<ShortText>,
    pub(crate) algorithm: Algorithm,
    /// The signed claims set; most strings above are spans into it (no copies).
    pub(crate) payload: String,
    pub(crate) roles_path: Option<Arc<[Box<str>]>>,
    /// The whole claims set, built from `payload` on first use.
    pub(crate) raw: OnceLock<serde_json::Value>,
    pub(crate) roles: OnceLock<Box<[Box<str>]>>,
}

/// A claim's text: a span of the payload when it had no JSON escapes, else a copy.
#[derive(Clone, Debug)]
pub(crate) enum Text {
    Span(u32, u32),
    Owned(Box<str>),
}

/// Short text (a `kid`) stored inline, longer text on the heap.
#[derive(Clone, Debug)]
pub(crate) enum ShortText {
    Inline(u8, [u8; 46]),
    Heap(Box<str>),
}

impl ShortText {
    pub(crate) fn new(s: &str) -> Self {
        let mut buf = [0u8; 46];
        match (u8::try_from(s.len()), buf.get_mut(..s.len())) {
            (Ok(len), Some(dst)) => {
                dst.copy_from_slice(s.as_bytes());
                ShortText::Inline(len, buf)
            }
            _ => ShortText::Heap(s.into()),
        }
    }

    pub(crate) fn get(&self) -> &str {
        match self {
            ShortText::Inline(len, buf) => buf
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            ShortText::Heap(s) => s,
        }
    }
}

impl Text {
    /// `value` borrowed from `payload` becomes a span; anything else is copied.
    pub(crate) fn new(payload: &str, value: &str) -> Self {
        let offset = (value.as_ptr() as usize).wrapping_sub(payload.as_ptr() as usize);
        match (u32::try_from(offset), u32::try_from(value.len())) {
            (Ok(start), Ok(len))
                if offset
                    .checked_add(value.len())
                    .is_some_and(|end| end <= payload.len())
                    && payload.get(offset..offset + value.len()).is_some() =>
            {
                Text::Span(start, len)
            }
            _ => Text::Owned(value.into()),
        }
    }

    pub(crate) fn get<'a>(&'a self, payload: &'a str) -> &'a str {
        match self {
            Text::Span(start, len) => {
                let (start, len) = (*start as usize, *len as usize);
                payload.get(start..start + len).unwrap_or_default()
            }
            Text::Owned(s) => s,
        }
    }
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("issuer", &self.issuer())
            .field("subject", &self.subject())
            .field("audiences", &self.audiences().collect::<Vec<_>>())
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope.as_ref().map(|s| s.get(&self.payload)))
            .field("client_id", &self.client_id())
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
        self.issuer.get(&self.payload)
    }

    /// `sub`, when present.
    #[must_use]
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_ref().map(|t| t.get(&self.payload))
    }

    /// `aud`: one or more audiences (one of them is a configured audience, unless the
    /// audience check was switched off).
    pub fn audiences(&self) -> impl Iterator<Item = &str> + '_ {
        self.audience
            .iter()
            .chain(self.more_audiences.iter())
            .map(|t| t.get(&self.payload))
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
        let scope = self.scope.as_ref().map_or("", |s| s.get(&self.payload));
        scope.split(' ').filter(|s| !s.is_empty())
    }

    /// True when `scope` is among [`Claims::scopes`] (exact, case-sensitive).
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// `client_id` (RFC 9068), when present.
    #[must_use]
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_ref().map(|t| t.get(&self.payload))
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
        self.key_id.as_ref().map(ShortText::get)
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

    /// The whole claims set as JSON (an object), built on first use from the verified text by
    /// the same strict reader that validated it (no second parser: duplicate registered
    /// claims, nesting deeper than 32 and numbers serde_json cannot read were refused during
    /// validation; of duplicate other claims the last counts, as in serde_json).
    #[must_use]
    pub fn raw(&self) -> &serde_json::Value {
        self.raw
            .get_or_init(|| crate::json::claims_value(&self.payload))
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

#[cfg(test)]
impl Claims {
    /// Minimal claims for unit tests: an issuer, an expiry, an empty claims set.
    pub(crate) fn for_tests(issuer: &str, expires_at: u64) -> Claims {
        Claims {
            issuer: Text::Owned(issuer.into()),
            subject: None,
            audience: None,
            more_audiences: Box::default(),
            expires_at,
            issued_at: None,
            not_before: None,
            scope: None,
            client_id: None,
            cert_thumbprint: None,
            key_id: None,
            algorithm: Algorithm::Es256,
            payload: "{}".to_owned(),
            roles_path: None,
            raw: OnceLock::new(),
            roles: OnceLock::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ShortText, Text};

    #[test]
    fn short_text_inline_and_heap() {
        assert!(matches!(ShortText::new("kid-1"), ShortText::Inline(5, _)));
        assert_eq!(ShortText::new("kid-1").get(), "kid-1");
        let long = "k".repeat(100);
        assert!(matches!(ShortText::new(&long), ShortText::Heap(_)));
        assert_eq!(ShortText::new(&long).get(), long);
    }

    #[test]
    fn spans_only_for_text_inside_the_payload() {
        let payload = String::from(r#"{"sub":"alice"}"#);
        let inside = &payload[8..13];
        let t = Text::new(&payload, inside);
        assert!(matches!(t, Text::Span(8, 5)));
        assert_eq!(t.get(&payload), "alice");
        let outside = String::from("alice");
        let t = Text::new(&payload, &outside);
        assert!(matches!(t, Text::Owned(_)));
        assert_eq!(t.get(&payload), "alice");
    }
}
