//! Authorizers by SPIFFE ID, named as go-spiffe's `tlsconfig.Authorize*`. They are
//! mtls-verify's [`IdentityAuthorizer`]s (not a second implementation): only peers whose
//! leaf is a valid X509-SVID (exactly one URI SAN holding a SPIFFE ID) can pass the SPIFFE
//! ones.
//!
//! ```
//! use mtls_verify::{AuthorizeIdentity, PeerIdentity};
//! use svid_client::authorize;
//! use ztkit_test_support::TestCa;
//!
//! let ca = TestCa::new("root");
//! let peer = PeerIdentity::from_der(
//!     &ca.leaf("web").spiffe_id("spiffe://example.org/web").issue().cert_der,
//! )?;
//! assert!(authorize::exact("spiffe://example.org/web")?.authorize(&peer).is_ok());
//! assert!(authorize::exact("spiffe://example.org/db")?.authorize(&peer).is_err());
//! assert!(authorize::one_of(["spiffe://example.org/db", "spiffe://example.org/web"])?
//!     .authorize(&peer)
//!     .is_ok());
//! assert!(authorize::member_of("example.org")?.authorize(&peer).is_ok());
//! assert!(authorize::member_of("other.org")?.authorize(&peer).is_err());
//! let by_path = authorize::matching(|id| id.path().starts_with("/web"));
//! assert!(by_path.authorize(&peer).is_ok());
//! # Ok::<(), mtls_verify::Error>(())
//! ```

use mtls_verify::{IdentityAuthorizer, IdentityRejection, SpiffeId};

/// Allows exactly this SPIFFE ID.
///
/// # Errors
/// [`mtls_verify::Error::SpiffeId`] if `id` is not a valid SPIFFE ID.
pub fn exact(id: &str) -> Result<IdentityAuthorizer, mtls_verify::Error> {
    IdentityAuthorizer::spiffe_ids([id])
}

/// Allows any of these SPIFFE IDs.
///
/// # Errors
/// [`mtls_verify::Error::SpiffeId`] for an invalid ID; [`mtls_verify::Error::Config`] for
/// an empty list (which would allow nobody: refused rather than silently closed).
pub fn one_of<I, S>(ids: I) -> Result<IdentityAuthorizer, mtls_verify::Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    IdentityAuthorizer::spiffe_ids(ids)
}

/// Allows any SPIFFE ID of this trust domain (`example.org` or `spiffe://example.org`).
///
/// # Errors
/// [`mtls_verify::Error::SpiffeId`] if `trust_domain` is not a valid trust domain name.
pub fn member_of(trust_domain: &str) -> Result<IdentityAuthorizer, mtls_verify::Error> {
    IdentityAuthorizer::trust_domain(trust_domain)
}

/// Allows a peer whose SPIFFE ID satisfies `check`; peers without a (valid, single) SPIFFE
/// ID are refused.
pub fn matching(check: impl Fn(&SpiffeId) -> bool + Send + Sync + 'static) -> IdentityAuthorizer {
    IdentityAuthorizer::custom(move |peer| match peer.spiffe_id() {
        Some(id) if check(id) => Ok(()),
        Some(id) => Err(IdentityRejection::new(format!(
            "SPIFFE ID {id} not allowed"
        ))),
        None => Err(IdentityRejection::new("no SPIFFE ID")),
    })
}
