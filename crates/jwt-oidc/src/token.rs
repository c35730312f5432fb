//! Lean, borrowing parsers for the JOSE header and the claims set of a compact JWS.
//!
//! Only the members the validator acts on are read; everything else is skipped without
//! building values. Duplicate members the validator reads are refused (serde reports them),
//! and both parts must be JSON objects.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::AuthError;

/// The three segments of a compact JWS, not yet decoded.
pub(crate) struct Segments<'t> {
    pub(crate) header: &'t [u8],
    pub(crate) payload: &'t [u8],
    pub(crate) signature: &'t [u8],
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'t [u8],
}

pub(crate) fn split(token: &str) -> Result<Segments<'_>, AuthError> {
    let bytes = token.as_bytes();
    // Only the first and the last dot are searched for: a dot between them lands in the
    // payload, which base64url decoding then refuses, so the payload is not scanned twice.
    let (Some(first), Some(second)) = (memchr::memchr(b'.', bytes), memchr::memrchr(b'.', bytes))
    else {
        return Err(AuthError::Malformed("not three dot-separated segments"));
    };
    if first == second {
        return Err(AuthError::Malformed("not three dot-separated segments"));
    }
    let (header, rest) = bytes.split_at(first);
    let payload = &rest[1..second - first];
    let signature = &bytes[second + 1..];
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed("empty header or payload segment"));
    }
    if signature.is_empty() {
        return Err(AuthError::Malformed("empty signature"));
    }
    Ok(Segments {
        header,
        payload,
        signature,
        signing_input: &bytes[..second],
    })
}

/// Strict base64url without padding (RFC 7515 §2); non-canonical trailing bits are refused.
/// SIMD-accelerated (`base64-simd`): decoding is a visible share of a validation.
pub(crate) fn b64_decode(segment: &[u8], what: &'static str) -> Result<Vec<u8>, AuthError> {
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(segment)
        .map_err(|_| AuthError::Malformed(what))
}

/// Decodes into `out`, returning the used prefix.
pub(crate) fn b64_decode_into<'o>(
    segment: &[u8],
    out: &'o mut [u8],
    what: &'static str,
) -> Result<&'o [u8], AuthError> {
    use base64_simd::AsOut as _;
    let engine = base64_simd::URL_SAFE_NO_PAD;
    let n = engine
        .decoded_length(segment)
        .map_err(|_| AuthError::Malformed(what))?;
    let dst = out.get_mut(..n).ok_or(AuthError::Malformed(what))?;
    let decoded = engine
        .decode(segment, dst.as_out())
        .map_err(|_| AuthError::Malformed(what))?;
    Ok(decoded)
}

fn starts_with_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The JOSE header members the validator acts on.
#[derive(Deserialize)]
pub(crate) struct RawHeader<'a> {
    #[serde(borrow, default)]
    pub(crate) alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) crit: Option<Vec<BorrowedStr<'a>>>,
    #[serde(default)]
    pub(crate) b64: Option<bool>,
    #[serde(default)]
    pub(crate) jwk: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) jku: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) x5u: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) x5c: Option<IgnoredAny>,
}

pub(crate) fn parse_header(json: &[u8]) -> Result<RawHeader<'_>, AuthError> {
    if !starts_with_object(json) {
        return Err(AuthError::Malformed("header is not a JSON object"));
    }
    let text =
        std::str::from_utf8(json).map_err(|_| AuthError::Malformed("header is not UTF-8"))?;
    check_depth(json)?;
    serde_json::from_str(text).map_err(|_| AuthError::Malformed("header is not valid JSON"))
}

/// A string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
pub(crate) struct BorrowedStr<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// A claim that is either one string or an array of strings (`aud`, `scp`).
pub(crate) enum StrList<'a> {
    One(Cow<'a, str>),
    Many(Vec<BorrowedStr<'a>>),
}

impl<'a> StrList<'a> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            StrList::One(s) => (Some(s.as_ref()), &[][..]),
            StrList::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().map(|s| s.0.as_ref()))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StrList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StrList<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrList::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrList::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
                while let Some(s) = seq.next_element::<BorrowedStr<'a>>()? {
                    out.push(s);
                }
                Ok(StrList::Many(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch; fractions are truncated, negative
/// and non-finite values are refused.
#[derive(Clone, Copy)]
pub(crate) struct NumericDate(pub(crate) u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("negative date"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() && (0.0..9.0e15).contains(&v) {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(NumericDate(v.trunc() as u64))
                } else {
                    Err(E::custom("date out of range"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The `cnf` claim (RFC 7800): the certificate thumbprint, and whether any other
/// confirmation method is present.
#[derive(Default)]
pub(crate) struct RawCnf<'a> {
    pub(crate) x5t_s256: Option<Cow<'a, str>>,
    pub(crate) other_methods: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawCnf<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawCnf<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a confirmation object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = RawCnf::default();
                while let Some(key) = map.next_key::<BorrowedStr<'a>>()? {
                    if key.0 == "x5t#S256" {
                        if out.x5t_s256.is_some() {
                            return Err(de::Error::duplicate_field("x5t#S256"));
                        }
                        out.x5t_s256 = Some(map.next_value::<BorrowedStr<'a>>()?.0);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        out.other_methods = true;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The registered and well-known claims the validator acts on.
#[derive(Deserialize)]
pub(crate) struct RawClaims<'a> {
    #[serde(borrow, default)]
    pub(crate) iss: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) sub: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) aud: Option<StrList<'a>>,
    #[serde(default)]
    pub(crate) exp: Option<NumericDate>,
    #[serde(default)]
    pub(crate) nbf: Option<NumericDate>,
    #[serde(default)]
    pub(crate) iat: Option<NumericDate>,
    #[serde(borrow, default)]
    pub(crate) scope: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) scp: Option<StrList<'a>>,
    #[serde(borrow, default)]
    pub(crate) cnf: Option<RawCnf<'a>>,
    #[serde(borrow, default)]
    pub(crate) client_id: Option<Cow<'a, str>>,
}

pub(crate) fn parse_claims(json: &str) -> Result<RawClaims<'_>, AuthError> {
    if !starts_with_object(json.as_bytes()) {
        return Err(AuthError::Malformed("claims set is not a JSON object"));
    }
    serde_json::from_str(json).map_err(|_| {
        AuthError::Malformed("claims set is not valid JSON or a claim has the wrong type")
    })
}

/// Deepest JSON nesting accepted in a claims set.
pub(crate) const MAX_DEPTH: usize = 32;

/// Refuses claims sets nested deeper than [`MAX_DEPTH`]. A quick count of brackets skips the
/// scan for ordinary tokens.
pub(crate) fn check_depth(json: &[u8]) -> Result<(), AuthError> {
    if memchr::memchr2_iter(b'[', b'{', json).count() <= MAX_DEPTH {
        return Ok(());
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(AuthError::Malformed("JSON is nested too deeply"));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The top-level member names of a claims set (for required-claim checks).
pub(crate) fn claim_names(json: &str) -> Result<Vec<BorrowedStr<'_>>, AuthError> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<BorrowedStr<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut names = Vec::new();
            while let Some(k) = map.next_key::<BorrowedStr<'de>>()? {
                let v = map.next_value::<serde_json::Value>()?;
                if !v.is_null() {
                    names.push(k);
                }
            }
            Ok(names)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de::Deserializer::deserialize_map(&mut de, V)
        .map_err(|_| AuthError::Malformed("claims set is not valid JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_needs_exactly_three_non_empty_parts() {
        assert!(split("a.b.c").is_ok());
        for bad in ["", "a.b", ".b.c", "a..c", "a.b.", "...", "abc"] {
            assert!(split(bad).is_err(), "{bad}");
        }
        // Extra dots end up in the payload, where base64url decoding refuses them.
        let extra = split("a.b.c.d").unwrap();
        assert_eq!(extra.payload, b"b.c");
        assert!(b64_decode(extra.payload, "payload").is_err());
        let s = split("aa.bb.cc").unwrap();
        assert_eq!(s.signing_input, b"aa.bb");
        assert_eq!(s.signature, b"cc");
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64_decode(b"AA", "x").unwrap(), [0]);
        for bad in [&b"AB"[..], b"AA==", b"A", b"A+", b"A/", b"AA.A", b"AA A"] {
            assert!(b64_decode(bad, "x").is_err(), "{bad:?}");
            assert!(b64_decode_into(bad, &mut [0u8; 8], "x").is_err(), "{bad:?}");
        }
        assert!(b64_decode_into(b"AAAAAAAAAAAA", &mut [0u8; 4], "x").is_err());
    }

    #[test]
    fn arrays_and_duplicates_are_not_claims_sets() {
        assert!(parse_claims(r#"["x", null, 5]"#).is_err());
        assert!(parse_claims(r#"{"iss":"a","iss":"b"}"#).is_err());
        assert!(parse_claims(r#"{"exp":-1}"#).is_err());
        assert!(parse_claims(r#"{"exp":"tomorrow"}"#).is_err());
        let c = parse_claims(r#"{"exp":1.9e9,"aud":["a","b"],"x":[[[]]]}"#).unwrap();
        assert_eq!(c.exp.map(|d| d.0), Some(1_900_000_000));
        assert_eq!(c.aud.unwrap().iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn depth_is_limited_outside_strings_only() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert!(check_depth(deep.as_bytes()).is_err());
        let in_string = format!("{{\"a\":\"{}\"}}", "[".repeat(400));
        assert!(check_depth(in_string.as_bytes()).is_ok());
        let wide = format!("{{\"a\":[{}]}}", vec!["[]"; 100].join(","));
        assert!(check_depth(wide.as_bytes()).is_ok());
    }

    #[test]
    fn cnf_reports_other_methods() {
        let c = parse_claims(r#"{"cnf":{"jkt":"abc"}}"#).unwrap();
        let cnf = c.cnf.unwrap();
        assert!(cnf.other_methods && cnf.x5t_s256.is_none());
    }
}
