//! Lean, borrowing parsers for the JOSE header and the claims set of a compact JWS.
//!
//! Only the members the validator acts on are read; everything else is checked and skipped
//! without building values ([`crate::json`]). Duplicate members the validator reads are
//! refused, both parts must be JSON objects, and nesting is limited to
//! [`crate::json::MAX_DEPTH`].

use std::borrow::Cow;

use crate::AuthError;
use crate::json::{JsonError, Reader};

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

fn header_error(e: JsonError) -> AuthError {
    match e {
        JsonError::TooDeep => AuthError::Malformed("JSON is nested too deeply"),
        JsonError::WrongType | JsonError::Duplicate => {
            AuthError::Malformed("header member has the wrong type or appears twice")
        }
        JsonError::Syntax => AuthError::Malformed("header is not valid JSON"),
    }
}

fn claims_error(e: JsonError) -> AuthError {
    match e {
        JsonError::TooDeep => AuthError::Malformed("JSON is nested too deeply"),
        _ => AuthError::Malformed("claims set is not valid JSON or a claim has the wrong type"),
    }
}

/// Marks member `bit` as seen; a second sighting is a duplicate.
fn first_sighting(seen: &mut u32, bit: u32) -> Result<(), JsonError> {
    if *seen & (1 << bit) != 0 {
        return Err(JsonError::Duplicate);
    }
    *seen |= 1 << bit;
    Ok(())
}

/// The JOSE header members the validator acts on.
#[derive(Default)]
pub(crate) struct RawHeader<'a> {
    pub(crate) alg: Option<Cow<'a, str>>,
    pub(crate) kid: Option<Cow<'a, str>>,
    pub(crate) typ: Option<Cow<'a, str>>,
    pub(crate) crit: Option<Vec<Cow<'a, str>>>,
    pub(crate) b64: Option<bool>,
    /// The first of `jwk`, `jku`, `x5u`, `x5c` present (with any value, even `null`).
    pub(crate) key_reference: Option<&'static str>,
}

/// Parses the decoded header. `null` counts as absent for the members read, except the key
/// references (`jwk`, `jku`, `x5u`, `x5c`), whose mere presence is refused later.
pub(crate) fn parse_header(json: &[u8]) -> Result<RawHeader<'_>, AuthError> {
    let text =
        std::str::from_utf8(json).map_err(|_| AuthError::Malformed("header is not UTF-8"))?;
    let mut r = Reader::new(text);
    if r.peek() != Ok(b'{') {
        return Err(AuthError::Malformed("header is not a JSON object"));
    }
    let mut h = RawHeader::default();
    let mut seen = 0u32;
    r.object(|r, name| {
        let bit = match &*name {
            "alg" => 0,
            "kid" => 1,
            "typ" => 2,
            "crit" => 3,
            "b64" => 4,
            "jwk" | "jku" | "x5u" | "x5c" => {
                if h.key_reference.is_none() {
                    h.key_reference = Some(match &*name {
                        "jwk" => "jwk",
                        "jku" => "jku",
                        "x5u" => "x5u",
                        _ => "x5c",
                    });
                }
                return r.skip_value();
            }
            _ => return r.skip_value(),
        };
        first_sighting(&mut seen, bit)?;
        if r.null()? {
            return Ok(());
        }
        match bit {
            0 => h.alg = Some(r.string()?),
            1 => h.kid = Some(r.string()?),
            2 => h.typ = Some(r.string()?),
            3 => {
                let mut names = Vec::new();
                r.array(|r| {
                    names.push(r.string()?);
                    Ok(())
                })?;
                h.crit = Some(names);
            }
            _ => h.b64 = Some(r.boolean()?),
        }
        Ok(())
    })
    .and_then(|()| r.finish())
    .map_err(header_error)?;
    Ok(h)
}

/// A claim that is either one string or an array of strings (`aud`, `scp`).
pub(crate) enum StrList<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl<'a> StrList<'a> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            StrList::One(s) => (Some(s.as_ref()), &[][..]),
            StrList::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().map(AsRef::as_ref))
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, JsonError> {
        if r.peek()? == b'[' {
            let mut out = Vec::new();
            r.array(|r| {
                out.push(r.string()?);
                Ok(())
            })?;
            Ok(StrList::Many(out))
        } else {
            r.string().map(StrList::One)
        }
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch.
#[derive(Clone, Copy)]
pub(crate) struct NumericDate(pub(crate) u64);

/// The `cnf` claim (RFC 7800): the certificate thumbprint, and whether any other
/// confirmation method is present.
#[derive(Default)]
pub(crate) struct RawCnf<'a> {
    pub(crate) x5t_s256: Option<Cow<'a, str>>,
    pub(crate) other_methods: bool,
}

impl<'a> RawCnf<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, JsonError> {
        let mut out = RawCnf::default();
        r.object(|r, name| {
            if name == "x5t#S256" {
                if out.x5t_s256.is_some() {
                    return Err(JsonError::Duplicate);
                }
                out.x5t_s256 = Some(r.string()?);
            } else {
                r.skip_value()?;
                out.other_methods = true;
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// The registered and well-known claims the validator acts on.
#[derive(Default)]
pub(crate) struct RawClaims<'a> {
    pub(crate) iss: Option<Cow<'a, str>>,
    pub(crate) sub: Option<Cow<'a, str>>,
    pub(crate) aud: Option<StrList<'a>>,
    pub(crate) exp: Option<NumericDate>,
    pub(crate) nbf: Option<NumericDate>,
    pub(crate) iat: Option<NumericDate>,
    pub(crate) scope: Option<Cow<'a, str>>,
    pub(crate) scp: Option<StrList<'a>>,
    pub(crate) cnf: Option<RawCnf<'a>>,
    pub(crate) client_id: Option<Cow<'a, str>>,
    /// Every top-level member name, in order, and whether its value is `null`: collected only
    /// when asked for (required-claim checks), so the common path allocates nothing for it.
    pub(crate) names: Vec<(Cow<'a, str>, bool)>,
}

impl RawClaims<'_> {
    /// True when the claims set has member `name` with a non-null value. Of duplicate members
    /// (allowed for claims the validator does not read) the last counts, as in
    /// [`crate::Claims::raw`]. Needs the names ([`parse_claims`] with `collect_names`).
    pub(crate) fn has_non_null(&self, name: &str) -> bool {
        self.names
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, null)| !null)
    }
}

/// Parses the claims set in one pass. `null` counts as absent; a claim read here that
/// appears twice, or has the wrong type, refuses the token. Every other member is checked
/// (syntax, nesting, numbers serde_json can read) and skipped without building a value:
/// [`crate::Claims::raw`] builds the whole set later, from the same text with the same
/// reader, only when something asks for it. With `collect_names`, the member names are kept
/// too ([`RawClaims::has_non_null`]).
pub(crate) fn parse_claims(json: &str, collect_names: bool) -> Result<RawClaims<'_>, AuthError> {
    let mut r = Reader::new(json);
    if r.peek() != Ok(b'{') {
        return Err(AuthError::Malformed("claims set is not a JSON object"));
    }
    let mut c = RawClaims::default();
    let mut seen = 0u32;
    r.object(|r, name| {
        let bit = match &*name {
            "iss" => 0,
            "sub" => 1,
            "aud" => 2,
            "exp" => 3,
            "nbf" => 4,
            "iat" => 5,
            "scope" => 6,
            "scp" => 7,
            "cnf" => 8,
            "client_id" => 9,
            _ if collect_names => {
                let null = r.null()?;
                if !null {
                    r.skip_value()?;
                }
                c.names.push((name, null));
                return Ok(());
            }
            _ => return r.skip_value(),
        };
        first_sighting(&mut seen, bit)?;
        let null = r.null()?;
        if collect_names {
            c.names.push((name, null));
        }
        if null {
            return Ok(());
        }
        match bit {
            0 => c.iss = Some(r.string()?),
            1 => c.sub = Some(r.string()?),
            2 => c.aud = Some(StrList::read(r)?),
            3 => c.exp = Some(NumericDate(r.numeric_date()?)),
            4 => c.nbf = Some(NumericDate(r.numeric_date()?)),
            5 => c.iat = Some(NumericDate(r.numeric_date()?)),
            6 => c.scope = Some(r.string()?),
            7 => c.scp = Some(StrList::read(r)?),
            8 => c.cnf = Some(RawCnf::read(r)?),
            _ => c.client_id = Some(r.string()?),
        }
        Ok(())
    })
    .and_then(|()| r.finish())
    .map_err(claims_error)?;
    Ok(c)
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
        assert!(parse_claims(r#"["x", null, 5]"#, false).is_err());
        assert!(parse_claims(r#"{"iss":"a","iss":"b"}"#, false).is_err());
        assert!(parse_claims(r#"{"exp":-1}"#, false).is_err());
        assert!(parse_claims(r#"{"exp":"tomorrow"}"#, false).is_err());
        let c = parse_claims(r#"{"exp":1.9e9,"aud":["a","b"],"x":[[[]]]}"#, false).unwrap();
        assert_eq!(c.exp.map(|d| d.0), Some(1_900_000_000));
        assert_eq!(c.aud.unwrap().iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn depth_is_limited_while_parsing() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert!(matches!(
            parse_claims(&deep, false),
            Err(AuthError::Malformed("JSON is nested too deeply"))
        ));
        assert!(parse_header(deep.as_bytes()).is_err());
    }

    #[test]
    fn header_members() {
        let h =
            parse_header(br#"{"alg":"RS256","kid":"k\u0031","crit":["exp"],"b64":true,"x":{}}"#)
                .unwrap();
        assert_eq!(h.alg.as_deref(), Some("RS256"));
        assert_eq!(h.kid.as_deref(), Some("k1"));
        assert_eq!(h.crit.unwrap(), ["exp"]);
        assert_eq!(h.b64, Some(true));
        assert_eq!(h.key_reference, None);
        let h = parse_header(br#"{"alg":"RS256","jku":null}"#).unwrap();
        assert_eq!(h.key_reference, Some("jku"));
        for bad in [
            &br#"{"alg":"RS256","alg":"none"}"#[..],
            br#"{"alg":5}"#,
            br#"{"b64":"false"}"#,
            br#"{"crit":"exp"}"#,
            br#"["alg"]"#,
            b"{\"alg\":\"\xff\"}",
        ] {
            assert!(
                parse_header(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn member_names_are_collected_only_when_asked_and_the_last_duplicate_counts() {
        let text = r#"{"x":1,"x":null,"y":null,"y":[],"iss":null,"sub":"s","z":{"w":1}}"#;
        assert!(parse_claims(text, false).unwrap().names.is_empty());
        let c = parse_claims(text, true).unwrap();
        let names: Vec<_> = c.names.iter().map(|(n, null)| (&**n, *null)).collect();
        assert_eq!(
            names,
            [
                ("x", false),
                ("x", true),
                ("y", true),
                ("y", false),
                ("iss", true),
                ("sub", false),
                ("z", false)
            ]
        );
        assert!(!c.has_non_null("x") && c.has_non_null("y") && !c.has_non_null("iss"));
        assert!(c.has_non_null("sub") && c.has_non_null("z") && !c.has_non_null("w"));
        // The same verdicts either way, and a duplicate registered claim is still refused.
        for bad in [r#"{"sub":"a","x":1,"sub":null}"#, r#"{"x":1,"y":[1,]}"#] {
            assert!(parse_claims(bad, true).is_err() && parse_claims(bad, false).is_err());
        }
    }

    #[test]
    fn cnf_reports_other_methods() {
        let c = parse_claims(r#"{"cnf":{"jkt":"abc"}}"#, false).unwrap();
        let cnf = c.cnf.unwrap();
        assert!(cnf.other_methods && cnf.x5t_s256.is_none());
    }
}
