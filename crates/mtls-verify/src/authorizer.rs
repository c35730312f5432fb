//! Deciding whether a verified peer may connect: SPIFFE IDs, trust domains, DNS patterns,
//! closures.

use std::fmt;
use std::sync::Arc;

use crate::spiffe::validate_trust_domain;
use crate::{Error, PeerIdentity, SpiffeId};

/// Decides whether a peer whose chain has been verified is allowed.
///
/// Implemented by [`IdentityAuthorizer`] and by every closure
/// `Fn(&PeerIdentity) -> bool + Send + Sync + 'static` (a `false` becomes a generic
/// [`IdentityRejection`]). Implementations run inside the TLS handshake: keep them fast and
/// never block.
///
/// ```
/// use mtls_verify::{AuthorizeIdentity, PeerIdentity};
/// use ztkit_test_support::TestCa;
///
/// let only_web = |p: &PeerIdentity| p.dns_sans().iter().any(|d| d == "web.local");
/// let ca = TestCa::new("root");
/// let web = PeerIdentity::from_der(&ca.leaf("w").dns("web.local").issue().cert_der)?;
/// let db = PeerIdentity::from_der(&ca.leaf("d").dns("db.local").issue().cert_der)?;
/// assert!(only_web.authorize(&web).is_ok());
/// assert!(only_web.authorize(&db).is_err());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
pub trait AuthorizeIdentity: Send + Sync + 'static {
    /// `Ok(())` to allow the peer, or a [`IdentityRejection`] saying why not.
    ///
    /// # Errors
    /// A [`IdentityRejection`] with a short human-readable reason (it is logged; keep secrets out).
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), IdentityRejection>;
}

impl<F> AuthorizeIdentity for F
where
    F: Fn(&PeerIdentity) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), IdentityRejection> {
        if self(peer) {
            Ok(())
        } else {
            Err(IdentityRejection::new(
                "refused by the authorization predicate",
            ))
        }
    }
}

/// Why an authorizer refused a verified peer's identity: a short, human-readable reason.
///
/// Not to be confused with `zt_tower::rejection::Rejection`, the HTTP/gRPC refusal of a
/// request: this one is the authorizer's answer, which `zt-tower` turns into one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRejection(Arc<str>);

impl IdentityRejection {
    /// A rejection with the given reason.
    pub fn new(reason: impl Into<String>) -> Self {
        IdentityRejection(Arc::from(reason.into()))
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdentityRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityRejection {}

type CustomFn = dyn Fn(&PeerIdentity) -> Result<(), IdentityRejection> + Send + Sync + 'static;

/// The ready-made authorizers: any verified peer, exact SPIFFE IDs, a trust domain, DNS SAN
/// patterns, a closure, or any of several.
///
/// SPIFFE-based authorizers only accept peers whose leaf is a valid X509-SVID (exactly one
/// URI SAN holding a valid SPIFFE ID); see [`PeerIdentity::spiffe_id`].
///
/// ```
/// use mtls_verify::{AuthorizeIdentity, IdentityAuthorizer, PeerIdentity};
/// use ztkit_test_support::TestCa;
///
/// let ca = TestCa::new("root");
/// let peer = PeerIdentity::from_der(
///     &ca.leaf("fe").spiffe_id("spiffe://example.org/ns/web/sa/frontend").issue().cert_der,
/// )?;
/// assert!(IdentityAuthorizer::trust_domain("example.org")?.authorize(&peer).is_ok());
/// assert!(IdentityAuthorizer::trust_domain("other.org")?.authorize(&peer).is_err());
/// let exact = IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/web/sa/backend"])?;
/// assert!(exact.authorize(&peer).is_err());
/// let either = IdentityAuthorizer::any_of(vec![exact, IdentityAuthorizer::trust_domain("example.org")?]);
/// assert!(either.authorize(&peer).is_ok());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
#[derive(Clone)]
pub struct IdentityAuthorizer {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Any,
    SpiffeIds(Arc<[SpiffeId]>),
    TrustDomain(Arc<str>),
    DnsPatterns(Arc<[DnsPattern]>),
    Custom(Arc<CustomFn>),
    AnyOf(Arc<[IdentityAuthorizer]>),
}

impl IdentityAuthorizer {
    /// Allows any peer whose chain verified (the explicit form of "authentication only").
    pub fn any() -> Self {
        IdentityAuthorizer { kind: Kind::Any }
    }

    /// Allows peers whose SPIFFE ID equals one of `ids` exactly.
    ///
    /// # Errors
    /// [`Error::SpiffeId`] if an entry is not a valid SPIFFE ID; [`Error::Config`] if the list
    /// is empty.
    pub fn spiffe_ids<I, S>(ids: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = ids
            .into_iter()
            .map(|s| SpiffeId::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(Error::Config(
                "IdentityAuthorizer::spiffe_ids needs at least one ID".into(),
            ));
        }
        list.sort();
        list.dedup();
        Ok(IdentityAuthorizer {
            kind: Kind::SpiffeIds(list.into()),
        })
    }

    /// Allows peers whose SPIFFE ID belongs to the trust domain `td` (e.g. `example.org`;
    /// a `spiffe://` prefix is accepted and ignored).
    ///
    /// # Errors
    /// [`Error::SpiffeId`] if `td` is not a valid trust domain name.
    pub fn trust_domain(td: &str) -> Result<Self, Error> {
        let td = td.strip_prefix("spiffe://").unwrap_or(td);
        validate_trust_domain(td)?;
        Ok(IdentityAuthorizer {
            kind: Kind::TrustDomain(Arc::from(td)),
        })
    }

    /// Allows peers with a DNS SAN matching one of `patterns`: an exact name
    /// (`api.example.org`) or a wildcard for exactly one label (`*.example.org` matches
    /// `a.example.org`, not `a.b.example.org` nor `example.org`). Matching ignores ASCII case
    /// and a trailing dot; wildcard SANs in the peer's certificate never match a wildcard
    /// pattern's label.
    ///
    /// # Errors
    /// [`Error::DnsPattern`] for a pattern that is not a DNS name, has `*` anywhere but as the
    /// whole first label, or whose wildcard suffix has fewer than two labels (`*.com`);
    /// [`Error::Config`] if the list is empty.
    pub fn dns_san_patterns<I, S>(patterns: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = patterns
            .into_iter()
            .map(|p| DnsPattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(Error::Config(
                "IdentityAuthorizer::dns_san_patterns needs at least one pattern".into(),
            ));
        }
        Ok(IdentityAuthorizer {
            kind: Kind::DnsPatterns(list.into()),
        })
    }

    /// Decides with a closure that returns a [`IdentityRejection`] to refuse.
    pub fn custom(
        f: impl Fn(&PeerIdentity) -> Result<(), IdentityRejection> + Send + Sync + 'static,
    ) -> Self {
        IdentityAuthorizer {
            kind: Kind::Custom(Arc::new(f)),
        }
    }

    /// Allows a peer if any authorizer in `list` allows it (an empty list allows nobody).
    pub fn any_of(list: Vec<IdentityAuthorizer>) -> Self {
        IdentityAuthorizer {
            kind: Kind::AnyOf(list.into()),
        }
    }

    /// Whether this authorizer decides by SPIFFE ID alone (exact IDs or a trust domain, or
    /// any-of such). Used by the client side to allow replacing the hostname check.
    pub fn is_spiffe_based(&self) -> bool {
        match &self.kind {
            Kind::SpiffeIds(_) | Kind::TrustDomain(_) => true,
            Kind::AnyOf(list) => !list.is_empty() && list.iter().all(Self::is_spiffe_based),
            Kind::Any | Kind::DnsPatterns(_) | Kind::Custom(_) => false,
        }
    }
}

impl AuthorizeIdentity for IdentityAuthorizer {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), IdentityRejection> {
        match &self.kind {
            Kind::Any => Ok(()),
            Kind::SpiffeIds(ids) => {
                let id = peer_spiffe_id(peer)?;
                if ids.binary_search(id).is_ok() {
                    Ok(())
                } else {
                    Err(IdentityRejection::new(format!(
                        "SPIFFE ID {id} is not in the allowed list"
                    )))
                }
            }
            Kind::TrustDomain(td) => {
                let id = peer_spiffe_id(peer)?;
                if id.trust_domain() == &**td {
                    Ok(())
                } else {
                    Err(IdentityRejection::new(format!(
                        "SPIFFE ID {id} is not in trust domain {td}"
                    )))
                }
            }
            Kind::DnsPatterns(patterns) => {
                let hit = peer
                    .dns_sans()
                    .iter()
                    .any(|san| patterns.iter().any(|p| p.matches(san)));
                if hit {
                    Ok(())
                } else {
                    Err(IdentityRejection::new(format!(
                        "no DNS SAN of the peer ({}) matches the allowed patterns",
                        summarize(peer.dns_sans())
                    )))
                }
            }
            Kind::Custom(f) => f(peer),
            Kind::AnyOf(list) => {
                let mut reasons = Vec::with_capacity(list.len().min(4));
                for a in list.iter() {
                    match a.authorize(peer) {
                        Ok(()) => return Ok(()),
                        Err(r) if reasons.len() < 4 => reasons.push(r.0),
                        Err(_) => {}
                    }
                }
                if reasons.is_empty() {
                    return Err(IdentityRejection::new(
                        "no authorizer allows any peer (empty any_of)",
                    ));
                }
                Err(IdentityRejection::new(reasons.join("; ")))
            }
        }
    }
}

fn peer_spiffe_id(peer: &PeerIdentity) -> Result<&SpiffeId, IdentityRejection> {
    peer.spiffe_id().ok_or_else(|| {
        IdentityRejection::new(match peer.uri_sans().len() {
            0 => "peer has no SPIFFE ID (no URI SAN)",
            1 => "peer has no SPIFFE ID (its URI SAN is not a valid SPIFFE ID)",
            _ => "peer has no SPIFFE ID (an X509-SVID has exactly one URI SAN)",
        })
    })
}

/// At most three names, for log lines that must stay short.
fn summarize(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut s = names
        .iter()
        .take(3)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 3 {
        s.push_str(&format!(", and {} more", names.len() - 3));
    }
    s
}

impl fmt::Debug for IdentityAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Any => f.write_str("IdentityAuthorizer::any()"),
            Kind::SpiffeIds(ids) => f
                .debug_tuple("IdentityAuthorizer::spiffe_ids")
                .field(ids)
                .finish(),
            Kind::TrustDomain(td) => f
                .debug_tuple("IdentityAuthorizer::trust_domain")
                .field(td)
                .finish(),
            Kind::DnsPatterns(p) => f
                .debug_tuple("IdentityAuthorizer::dns_san_patterns")
                .field(p)
                .finish(),
            Kind::Custom(_) => f.write_str("IdentityAuthorizer::custom(..)"),
            Kind::AnyOf(list) => f
                .debug_tuple("IdentityAuthorizer::any_of")
                .field(list)
                .finish(),
        }
    }
}

/// A DNS name or a one-label wildcard, stored lower-case without a trailing dot.
#[derive(Clone, PartialEq, Eq)]
struct DnsPattern {
    /// For a wildcard: the suffix including its leading dot (`.example.org`).
    name: String,
    wildcard: bool,
}

impl fmt::Debug for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "\"*{}\"", self.name)
        } else {
            write!(f, "{:?}", self.name)
        }
    }
}

impl DnsPattern {
    fn parse(pattern: &str) -> Result<Self, Error> {
        let fail = |reason: &str| {
            Err(Error::DnsPattern {
                pattern: pattern.chars().take(256).collect(),
                reason: reason.to_owned(),
            })
        };
        let p = pattern.strip_suffix('.').unwrap_or(pattern);
        if p.is_empty() {
            return fail("empty");
        }
        if p.len() > 253 {
            return fail("longer than 253 characters");
        }
        let (wildcard, rest) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        let mut labels = 0usize;
        for label in rest.split('.') {
            labels += 1;
            if label.is_empty() {
                return fail("empty label");
            }
            if label.len() > 63 {
                return fail("label longer than 63 characters");
            }
            if label.contains('*') {
                return fail("'*' is only allowed as the whole first label (\"*.example.org\")");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return fail("only letters, digits, '-' and '_' are allowed in a label");
            }
        }
        if wildcard && labels < 2 {
            return fail("a wildcard needs a suffix of at least two labels");
        }
        let lower = rest.to_ascii_lowercase();
        Ok(if wildcard {
            DnsPattern {
                name: format!(".{lower}"),
                wildcard: true,
            }
        } else {
            DnsPattern {
                name: lower,
                wildcard: false,
            }
        })
    }

    fn matches(&self, san: &str) -> bool {
        let san = san.strip_suffix('.').unwrap_or(san);
        if !self.wildcard {
            return san.eq_ignore_ascii_case(&self.name);
        }
        let Some(split) = san.len().checked_sub(self.name.len()) else {
            return false;
        };
        if split == 0 || !san.is_char_boundary(split) {
            return false;
        }
        let (first, suffix) = san.split_at(split);
        suffix.eq_ignore_ascii_case(&self.name)
            && first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztkit_test_support::TestCa;

    fn peer_with(
        f: impl FnOnce(ztkit_test_support::LeafBuilder<'_>) -> ztkit_test_support::LeafBuilder<'_>,
    ) -> PeerIdentity {
        let ca = TestCa::new("root");
        let cert = f(ca.leaf("peer")).issue();
        PeerIdentity::from_der(&cert.cert_der).unwrap()
    }

    #[test]
    fn dns_pattern_matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("api.example.org", "api.example.org", true),
            ("api.example.org", "API.Example.ORG", true),
            ("api.example.org", "api.example.org.", true),
            ("api.example.org.", "api.example.org", true),
            ("API.example.org", "api.example.org", true),
            ("api.example.org", "api2.example.org", false),
            ("api.example.org", "example.org", false),
            ("api.example.org", "x.api.example.org", false),
            ("*.example.org", "a.example.org", true),
            ("*.example.org", "A-1_b.Example.Org", true),
            ("*.example.org", "a.example.org.", true),
            ("*.example.org", "example.org", false),
            ("*.example.org", ".example.org", false),
            ("*.example.org", "a.b.example.org", false),
            ("*.example.org", "*.example.org", false),
            ("*.example.org", "a.example.org.evil", false),
            ("*.example.org", "aexample.org", false),
            ("*.example.org", "a.other.org", false),
            ("*.svc.cluster.local", "web.svc.cluster.local", true),
            ("*.example.org", "ä.example.org", false),
        ];
        for (pattern, san, want) in cases {
            let p = DnsPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(san), *want, "{pattern} vs {san}");
        }
    }

    #[test]
    fn dns_pattern_validation_table() {
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            (".", "empty"),
            ("*", "'*'"),
            ("*.", "'*'"),
            ("*.com", "two labels"),
            ("a.*.example.org", "'*'"),
            ("*a.example.org", "'*'"),
            ("a*.example.org", "'*'"),
            ("**.example.org", "'*'"),
            ("*.*.example.org", "'*'"),
            ("a..example.org", "empty label"),
            (".example.org", "empty label"),
            ("a b.org", "only letters"),
            ("a/b.org", "only letters"),
            ("ä.org", "only letters"),
        ];
        for (pattern, why) in bad {
            let err = DnsPattern::parse(pattern).unwrap_err();
            assert!(err.to_string().contains(why), "{pattern:?}: {err}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(DnsPattern::parse(&long_label).is_err());
        let long_name = format!("{}a", "abcdefghi.".repeat(26));
        assert!(long_name.len() > 253);
        assert!(DnsPattern::parse(&long_name).is_err());
        assert!(DnsPattern::parse("localhost").is_ok());
        assert!(DnsPattern::parse("_srv.example.org").is_ok());
    }

    #[test]
    fn dns_authorizer_checks_every_san() {
        let peer = peer_with(|b| b.dns("a.other.org").dns("web.example.org"));
        let a = IdentityAuthorizer::dns_san_patterns(["*.example.org"]).unwrap();
        assert!(a.authorize(&peer).is_ok());
        let a = IdentityAuthorizer::dns_san_patterns(["db.example.org", "*.x.org"]).unwrap();
        let r = a.authorize(&peer).unwrap_err();
        assert!(r.reason().contains("a.other.org"), "{r}");
        assert!(IdentityAuthorizer::dns_san_patterns(Vec::<String>::new()).is_err());
    }

    #[test]
    fn spiffe_authorizers() {
        let fe = peer_with(|b| b.spiffe_id("spiffe://example.org/ns/web/sa/fe"));
        let two = peer_with(|b| {
            b.spiffe_id("spiffe://example.org/ns/web/sa/fe")
                .spiffe_id("spiffe://example.org/ns/web/sa/fe2")
        });
        let bad = peer_with(|b| b.spiffe_id("spiffe://example.org/ns/../sa/fe"));
        let none = peer_with(|b| b.dns("x.org"));

        let exact = IdentityAuthorizer::spiffe_ids([
            "spiffe://example.org/ns/web/sa/fe",
            "spiffe://example.org/ns/web/sa/other",
        ])
        .unwrap();
        let td = IdentityAuthorizer::trust_domain("example.org").unwrap();
        let td_prefixed = IdentityAuthorizer::trust_domain("spiffe://example.org").unwrap();
        for a in [&exact, &td, &td_prefixed] {
            assert!(a.authorize(&fe).is_ok(), "{a:?}");
            assert!(
                a.authorize(&two)
                    .unwrap_err()
                    .reason()
                    .contains("exactly one")
            );
            assert!(
                a.authorize(&bad)
                    .unwrap_err()
                    .reason()
                    .contains("not a valid")
            );
            assert!(
                a.authorize(&none)
                    .unwrap_err()
                    .reason()
                    .contains("no URI SAN")
            );
        }
        let other = IdentityAuthorizer::spiffe_ids(["spiffe://example.org/ns/web/sa/x"]).unwrap();
        assert!(
            other
                .authorize(&fe)
                .unwrap_err()
                .reason()
                .contains("not in the allowed list")
        );
        let other_td = IdentityAuthorizer::trust_domain("example.com").unwrap();
        assert!(other_td.authorize(&fe).is_err());
        // A trust domain that is a suffix or prefix of the real one must not match.
        let prefix_td = IdentityAuthorizer::trust_domain("example.or").unwrap();
        assert!(prefix_td.authorize(&fe).is_err());

        assert!(IdentityAuthorizer::spiffe_ids(["spiffe://Example.org/x"]).is_err());
        assert!(IdentityAuthorizer::spiffe_ids(Vec::<&str>::new()).is_err());
        assert!(IdentityAuthorizer::trust_domain("Example.org").is_err());
        assert!(IdentityAuthorizer::trust_domain("").is_err());
        assert!(exact.is_spiffe_based() && td.is_spiffe_based());
        assert!(!IdentityAuthorizer::any().is_spiffe_based());
    }

    #[test]
    fn any_custom_any_of_and_closures() {
        let fe = peer_with(|b| b.spiffe_id("spiffe://example.org/fe").dns("fe.local"));
        assert!(IdentityAuthorizer::any().authorize(&fe).is_ok());
        let deny = IdentityAuthorizer::custom(|p| {
            Err(IdentityRejection::new(format!(
                "no entry for {}",
                p.subject_cn().unwrap_or("?")
            )))
        });
        assert_eq!(
            deny.authorize(&fe).unwrap_err().reason(),
            "no entry for peer"
        );
        let none = IdentityAuthorizer::any_of(vec![]);
        assert!(none.authorize(&fe).is_err());
        let both_fail = IdentityAuthorizer::any_of(vec![
            deny.clone(),
            IdentityAuthorizer::trust_domain("other.org").unwrap(),
        ]);
        let r = both_fail.authorize(&fe).unwrap_err();
        assert!(
            r.reason().contains("no entry") && r.reason().contains("other.org"),
            "{r}"
        );
        let one_ok = IdentityAuthorizer::any_of(vec![
            deny,
            IdentityAuthorizer::dns_san_patterns(["fe.local"]).unwrap(),
        ]);
        assert!(one_ok.authorize(&fe).is_ok());

        let closure = |p: &PeerIdentity| p.subject_cn() == Some("peer");
        assert!(closure.authorize(&fe).is_ok());
        let closure = |p: &PeerIdentity| p.subject_cn() == Some("nobody");
        assert!(closure.authorize(&fe).is_err());
    }
}
