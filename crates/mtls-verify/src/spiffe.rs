//! SPIFFE IDs, parsed strictly per the SPIFFE-ID specification.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The longest SPIFFE ID accepted, in bytes (SPIFFE-ID spec, section 2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name accepted, in bytes (SPIFFE-ID spec, section 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE ID such as `spiffe://example.org/ns/web/sa/frontend`.
///
/// Parsing follows the SPIFFE-ID specification: the scheme is exactly `spiffe`, the trust
/// domain is lower-case `[a-z0-9.-_]` with no port, user info, query or fragment, and every
/// path segment is non-empty, not `.` or `..`, and made of `[A-Za-z0-9.-_]`. The whole ID is
/// at most 2048 bytes. An ID with no path names the trust domain itself.
///
/// ```
/// use mtls_verify::SpiffeId;
///
/// let id: SpiffeId = "spiffe://example.org/ns/web/sa/frontend".parse()?;
/// assert_eq!(id.trust_domain(), "example.org");
/// assert_eq!(id.path(), "/ns/web/sa/frontend");
/// assert!(SpiffeId::parse("spiffe://Example.org/x").is_err()); // upper-case trust domain
/// # Ok::<(), mtls_verify::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (== id.len() when the path is empty).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    ///
    /// # Errors
    /// [`Error::SpiffeId`] naming the rule that `s` breaks.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Err(Error::SpiffeId(reason.to_owned()));
        if s.is_empty() {
            return fail("empty");
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return fail("longer than 2048 bytes");
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return fail("scheme must be \"spiffe://\" (lower case)");
        };
        let td_end = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_end);
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            id: s.to_owned(),
            path_start: SCHEME.len() + td_end,
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.id
            .get(SCHEME.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path, e.g. `/ns/web/sa/frontend`; empty for a trust-domain ID.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

/// Checks a trust domain name: non-empty, at most 255 bytes, `[a-z0-9.-_]` only.
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), Error> {
    if td.is_empty() {
        return Err(Error::SpiffeId("trust domain is empty".into()));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(Error::SpiffeId("trust domain longer than 255 bytes".into()));
    }
    if let Some(c) = td.chars().find(|c| !is_trust_domain_char(*c)) {
        let why = match c {
            ':' => "trust domain must not contain a port".to_owned(),
            '@' => "trust domain must not contain user info".to_owned(),
            '?' => "query is not allowed".to_owned(),
            '#' => "fragment is not allowed".to_owned(),
            '%' => "percent-encoding is not allowed".to_owned(),
            c if c.is_ascii_uppercase() => "trust domain must be lower case".to_owned(),
            _ => format!(
                "trust domain contains {c:?}; only lower-case letters, digits, '.', '-' and '_' are allowed"
            ),
        };
        return Err(Error::SpiffeId(why));
    }
    Ok(())
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn validate_path(path: &str) -> Result<(), Error> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    for segment in path.split('/').skip(1) {
        match segment {
            "" => {
                return Err(Error::SpiffeId(
                    "path segments must not be empty (no \"//\" and no trailing '/')".into(),
                ));
            }
            "." | ".." => {
                return Err(Error::SpiffeId(
                    "path segments must not be \".\" or \"..\"".into(),
                ));
            }
            _ => {}
        }
        if let Some(c) = segment.chars().find(|c| !is_path_char(*c)) {
            let why = match c {
                '?' => "query is not allowed".to_owned(),
                '#' => "fragment is not allowed".to_owned(),
                '%' => "percent-encoding is not allowed".to_owned(),
                _ => format!(
                    "path contains {c:?}; only letters, digits, '.', '-' and '_' are allowed"
                ),
            };
            return Err(Error::SpiffeId(why));
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({:?})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        SpiffeId::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let cases: &[(&str, &str, &str)] = &[
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/a", "example.org", "/a"),
            (
                "spiffe://example.org/ns/web/sa/frontend",
                "example.org",
                "/ns/web/sa/frontend",
            ),
            ("spiffe://a", "a", ""),
            (
                "spiffe://trust_domain-1.example",
                "trust_domain-1.example",
                "",
            ),
            ("spiffe://td/Upper/CASE", "td", "/Upper/CASE"),
            ("spiffe://td/a.b/c-d/e_f", "td", "/a.b/c-d/e_f"),
            ("spiffe://td/...", "td", "/..."),
            ("spiffe://td/.a", "td", "/.a"),
            ("spiffe://td/..a", "td", "/..a"),
            ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
            ("spiffe://td/0/1/2", "td", "/0/1/2"),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain(), *td, "{input}");
            assert_eq!(id.path(), *path, "{input}");
            assert_eq!(id.as_str(), *input);
            assert_eq!(id.to_string(), *input);
            assert_eq!(input.parse::<SpiffeId>().unwrap(), id);
        }
    }

    #[test]
    fn invalid_ids() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("example.org/a", "scheme"),
            ("spiffe:/example.org", "scheme"),
            ("spiffe:example.org", "scheme"),
            ("SPIFFE://example.org", "scheme"),
            ("Spiffe://example.org", "scheme"),
            ("https://example.org/a", "scheme"),
            ("spiffe://", "trust domain is empty"),
            ("spiffe:///a", "trust domain is empty"),
            ("spiffe://Example.org", "lower case"),
            ("spiffe://EXAMPLE.ORG/a", "lower case"),
            ("spiffe://example.org:8080/a", "port"),
            ("spiffe://user@example.org/a", "user info"),
            ("spiffe://user:pw@example.org/a", "port"),
            ("spiffe://example.org?x=1", "query"),
            ("spiffe://example.org/a?x=1", "query"),
            ("spiffe://example.org#frag", "fragment"),
            ("spiffe://example.org/a#frag", "fragment"),
            ("spiffe://exa%6dple.org/a", "percent"),
            ("spiffe://example.org/a%20b", "percent"),
            ("spiffe://example.org/", "empty"),
            ("spiffe://example.org/a/", "empty"),
            ("spiffe://example.org//a", "empty"),
            ("spiffe://example.org/a//b", "empty"),
            ("spiffe://example.org/.", "\".\""),
            ("spiffe://example.org/..", "\".\""),
            ("spiffe://example.org/a/./b", "\".\""),
            ("spiffe://example.org/a/../b", "\".\""),
            ("spiffe://example.org/a b", "path contains"),
            ("spiffe://example.org/a+b", "path contains"),
            ("spiffe://example.org/ünï", "path contains"),
            ("spiffe://exämple.org/a", "trust domain contains"),
            ("spiffe://exa mple.org", "trust domain contains"),
            ("spiffe://[::1]/a", "trust domain contains"),
            ("spiffe://example.org\\a", "trust domain contains"),
        ];
        for (input, why) in cases {
            match SpiffeId::parse(input) {
                Ok(id) => panic!("{input:?} parsed as {id:?}"),
                Err(e) => assert!(e.to_string().contains(why), "{input:?}: {e} (want {why:?})"),
            }
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{td}")).is_ok());
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert!(SpiffeId::parse(&format!("spiffe://{td}")).is_err());

        let base = "spiffe://td/";
        let ok = format!("{base}{}", "p".repeat(MAX_SPIFFE_ID_LEN - base.len()));
        assert_eq!(ok.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&ok).is_ok());
        let too_long = format!("{ok}p");
        let err = SpiffeId::parse(&too_long).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
    }

    #[test]
    fn serializes_as_string() {
        let id = SpiffeId::parse("spiffe://td/x").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://td/x\"");
    }
}
