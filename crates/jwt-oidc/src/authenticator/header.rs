//! The header checks, and the per-thread memo of the last valid header: issuers put the same
//! `alg`/`kid`/`typ` header on every token, so a byte-for-byte repeat reuses the verdict.

use crate::claims::ShortText;
use crate::error::untrusted;
use crate::token;
use crate::{Algorithm, AuthError};

use super::JwtAuthenticator;

/// What a header that passed every check decided.
#[derive(Clone)]
pub(super) struct CheckedHeader {
    pub(super) alg: Algorithm,
    pub(super) kid: Option<ShortText>,
}

/// The last valid header a thread saw, and for which authenticator (the checks depend on its
/// configuration).
struct HeaderMemo {
    authenticator: u64,
    segment: Vec<u8>,
    header: CheckedHeader,
}

thread_local! {
    static LAST_HEADER: std::cell::RefCell<Option<HeaderMemo>> = const { std::cell::RefCell::new(None) };
}

/// Normalises a media type for `typ` comparison (RFC 7515 §4.1.9, RFC 9068 §4).
/// `typ` equals the (normalised) `expected`, ignoring ASCII case and an `application/`
/// prefix, without allocating.
fn same_media_type(typ: &str, expected: &str) -> bool {
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") && !typ[12..].contains('/') => {
            &typ[12..]
        }
        _ => typ,
    };
    bare.eq_ignore_ascii_case(expected)
}

pub(super) fn media_type(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') => rest.to_owned(),
        _ => t,
    }
}

impl JwtAuthenticator {
    /// The header's verdict, from this thread's memo when the header is a byte-for-byte
    /// repeat of the last valid one (issuers put the same `alg`/`kid`/`typ` header on every
    /// token, so this skips a decode and a parse per request).
    pub(super) fn checked_header(&self, segment: &[u8]) -> Result<CheckedHeader, AuthError> {
        let id = self.inner.id;
        let hit = LAST_HEADER.with_borrow(|memo| match memo {
            Some(m) if m.authenticator == id && *m.segment == *segment => Some(m.header.clone()),
            _ => None,
        });
        if let Some(header) = hit {
            return Ok(header);
        }
        let header = self.check_header(segment)?;
        LAST_HEADER.with_borrow_mut(|memo| match memo {
            Some(m) => {
                m.authenticator = id;
                m.segment.clear();
                m.segment.extend_from_slice(segment);
                m.header = header.clone();
            }
            None => {
                *memo = Some(HeaderMemo {
                    authenticator: id,
                    segment: segment.to_vec(),
                    header: header.clone(),
                });
            }
        });
        Ok(header)
    }

    /// Decodes the header and runs every header check: no key references, an allowed `alg`,
    /// only understood `crit` names, no unencoded payload, the required `typ`.
    fn check_header(&self, segment: &[u8]) -> Result<CheckedHeader, AuthError> {
        let cfg = &self.inner.config;
        let mut header_buf = [0u8; 240];
        let header_vec;
        let header_json: &[u8] = if segment.len() <= 320 {
            token::b64_decode_into(segment, &mut header_buf, "header is not base64url")?
        } else {
            header_vec = token::b64_decode(segment, "header is not base64url")?;
            &header_vec
        };
        let header = token::parse_header(header_json)?;
        if let Some(name) = header.key_reference {
            return Err(AuthError::ForbiddenHeader(name));
        }
        let Some(alg_name) = header.alg.as_deref() else {
            return Err(AuthError::Malformed("header has no alg"));
        };
        let alg = match Algorithm::from_name(alg_name) {
            Some(a) if cfg.allowed.contains(&a) => a,
            _ => {
                return Err(AuthError::AlgorithmNotAllowed {
                    alg: untrusted(alg_name),
                });
            }
        };
        if let Some(crit) = &header.crit {
            if crit.is_empty() {
                return Err(AuthError::Malformed("crit is empty"));
            }
            for name in crit {
                if !cfg.accepted_crit.iter().any(|c| **c == **name) {
                    return Err(AuthError::UnknownCritical {
                        name: untrusted(name),
                    });
                }
            }
        }
        if header.b64 == Some(false) {
            return Err(AuthError::Malformed(
                "unencoded payloads (b64: false) are not supported",
            ));
        }
        if let Some(expected) = &cfg.required_type
            && !header
                .typ
                .as_deref()
                .is_some_and(|t| same_media_type(t, expected))
        {
            return Err(AuthError::WrongType {
                expected: expected.clone(),
            });
        }
        Ok(CheckedHeader {
            alg,
            kid: header.kid.as_deref().map(ShortText::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::IssuerConfig;
    use crate::testing::{TestKey, b64url, jwks};

    fn authenticator(required_type: Option<&str>) -> JwtAuthenticator {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let builder = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks("https://i", jwks(&[&key])))
            .audience("api")
            .allow_critical_header("understood");
        match required_type {
            Some(t) => builder.require_type(t),
            None => builder,
        }
        .build()
        .unwrap()
    }

    fn segment(header: &Value) -> Vec<u8> {
        b64url(header.to_string().as_bytes()).into_bytes()
    }

    #[test]
    fn media_types_compare_without_case_or_the_application_prefix() {
        assert!(same_media_type("at+jwt", "at+jwt"));
        assert!(same_media_type("application/AT+JWT", "at+jwt"));
        assert!(!same_media_type("application/x/at+jwt", "at+jwt"));
        assert!(!same_media_type("jwt", "at+jwt"));
        assert_eq!(media_type("Application/At+JWT"), "at+jwt");
        assert_eq!(media_type("application/a/b"), "application/a/b");
    }

    #[test]
    fn a_valid_header_gives_its_algorithm_and_kid() {
        let auth = authenticator(None);
        let h = auth
            .check_header(&segment(
                &json!({"alg": "ES256", "kid": "k1", "crit": ["understood"], "understood": 1}),
            ))
            .unwrap();
        assert_eq!(h.alg, Algorithm::Es256);
        assert_eq!(h.kid.as_ref().map(ShortText::get), Some("k1"));
    }

    #[test]
    fn every_header_check_refuses() {
        let auth = authenticator(Some("at+jwt"));
        let cases = [
            json!({"kid": "k1", "typ": "at+jwt"}),
            json!({"alg": "none", "typ": "at+jwt"}),
            json!({"alg": "HS256", "typ": "at+jwt"}),
            json!({"alg": "ES256", "typ": "at+jwt", "jku": "https://evil"}),
            json!({"alg": "ES256", "typ": "at+jwt", "crit": []}),
            json!({"alg": "ES256", "typ": "at+jwt", "crit": ["unknown"]}),
            json!({"alg": "ES256", "typ": "at+jwt", "b64": false}),
            json!({"alg": "ES256", "typ": "JWT"}),
            json!({"alg": "ES256"}),
        ];
        for header in cases {
            assert!(auth.check_header(&segment(&header)).is_err(), "{header}");
        }
        assert!(auth.check_header(b"!!").is_err());
        let ok = json!({"alg": "ES256", "typ": "application/at+jwt", "kid": "k1"});
        assert!(auth.check_header(&segment(&ok)).is_ok());
    }

    #[test]
    fn the_memo_is_per_authenticator_and_never_lets_another_header_through() {
        let lenient = authenticator(None);
        let strict = authenticator(Some("at+jwt"));
        let no_typ = segment(&json!({"alg": "ES256", "kid": "k1"}));
        assert!(lenient.checked_header(&no_typ).is_ok());
        // Same thread, same bytes, but the other authenticator's rules apply.
        assert!(matches!(
            strict.checked_header(&no_typ),
            Err(AuthError::WrongType { .. })
        ));
        assert!(lenient.checked_header(&no_typ).is_ok());
        let none = segment(&json!({"alg": "none", "kid": "k1"}));
        assert!(lenient.checked_header(&none).is_err());
    }
}
