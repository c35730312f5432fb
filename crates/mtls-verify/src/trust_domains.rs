//! SPIFFE trust: one CA bundle per trust domain, chosen by the *peer's* trust domain before
//! its chain is built, and the policy saying which trust domains of the bundle set count.
//!
//! A union of every bundle in one root store would let the CA of a federated trust domain
//! sign certificates naming identities of *another* trust domain (ours included); here the
//! peer's leaf names its trust domain (its single SPIFFE URI SAN), and only that trust
//! domain's CAs can anchor its chain.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::material::{ca_certificates_at, root_store};
use crate::spiffe::validate_trust_domain;
use crate::{Error, PeerIdentity};

/// Which trust domains of the bundle set a SPIFFE peer may belong to (go-spiffe leaves this
/// to the bundle set given to `tlsconfig`; ztkit names it, and starts from the strict end).
///
/// Setting a policy on a builder
/// ([`ServerTlsBuilder::trust_domain_policy`](crate::ServerTlsBuilder::trust_domain_policy),
/// [`ClientTlsBuilder::trust_domain_policy`](crate::ClientTlsBuilder::trust_domain_policy))
/// turns on SPIFFE trust: our own certificate must be an X509-SVID (its trust domain is the
/// *local* one, whose bundle is the CA bundle), other trust domains' bundles are added as
/// federated bundles, and a peer is verified against the bundle of its own trust domain only.
///
/// ```
/// use mtls_verify::TrustDomainPolicy;
///
/// assert_eq!(TrustDomainPolicy::default(), TrustDomainPolicy::local_only());
/// let federated = TrustDomainPolicy::allow_list(["example.org", "partner.org"])?;
/// assert!(federated.allows("partner.org", "example.org"));
/// assert!(!federated.allows("other.org", "example.org"));
/// assert!(TrustDomainPolicy::allow_list(Vec::<String>::new()).is_err());
/// assert!(TrustDomainPolicy::any_in_bundle_set().allows("other.org", "example.org"));
/// # Ok::<(), mtls_verify::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustDomainPolicy {
    kind: PolicyKind,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum PolicyKind {
    #[default]
    LocalOnly,
    AllowList(Arc<[String]>),
    AnyInBundleSet,
}

impl TrustDomainPolicy {
    /// Only peers of our own trust domain (the default): federated bundles are not used.
    pub fn local_only() -> Self {
        TrustDomainPolicy {
            kind: PolicyKind::LocalOnly,
        }
    }

    /// Peers of these trust domains (`example.org` or `spiffe://example.org`), each only
    /// while the bundle set holds its bundle. The local trust domain is not implied: list it
    /// to accept it.
    ///
    /// # Errors
    /// [`Error::SpiffeId`] for an invalid trust domain name, [`Error::Config`] for an empty
    /// list.
    pub fn allow_list<I, S>(trust_domains: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for td in trust_domains {
            let td = td.as_ref();
            let td = td.strip_prefix("spiffe://").unwrap_or(td);
            validate_trust_domain(td)?;
            list.push(td.to_owned());
        }
        if list.is_empty() {
            return Err(Error::Config(
                "TrustDomainPolicy::allow_list needs at least one trust domain".into(),
            ));
        }
        list.sort();
        list.dedup();
        Ok(TrustDomainPolicy {
            kind: PolicyKind::AllowList(list.into()),
        })
    }

    /// Peers of any trust domain whose bundle is in the bundle set (federation decided by
    /// whoever fills the bundle set: the SPIRE server's federation relationships).
    pub fn any_in_bundle_set() -> Self {
        TrustDomainPolicy {
            kind: PolicyKind::AnyInBundleSet,
        }
    }

    /// Whether a peer of `trust_domain` may be verified when ours is `local`.
    pub fn allows(&self, trust_domain: &str, local: &str) -> bool {
        match &self.kind {
            PolicyKind::LocalOnly => trust_domain == local,
            PolicyKind::AllowList(list) => list.iter().any(|td| td == trust_domain),
            PolicyKind::AnyInBundleSet => true,
        }
    }
}

impl fmt::Display for TrustDomainPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PolicyKind::LocalOnly => f.write_str("local trust domain only"),
            PolicyKind::AllowList(list) => write!(f, "allow list [{}]", list.join(", ")),
            PolicyKind::AnyInBundleSet => f.write_str("any trust domain in the bundle set"),
        }
    }
}

/// A federated trust domain's bundle as material carries it: its name, where it came from
/// (a file, or `<memory>`) and its bytes (PEM, DER, or SPIFFE bundle JSON).
pub(crate) type FederatedPart = (String, PathBuf, Arc<[u8]>);

/// One bundle as given: bytes to parse (PEM, DER, SPIFFE JSON) or certificates.
enum BundleInput<'a> {
    Bytes(&'a [u8]),
    Certificates(&'a [CertificateDer<'static>]),
}

impl BundleInput<'_> {
    fn certificates(&self, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
        match self {
            BundleInput::Bytes(bytes) => ca_certificates_at(bytes, path),
            BundleInput::Certificates(certs) => Ok(certs.to_vec()),
        }
    }
}

/// The bundles a SPIFFE verifier uses: one root store per allowed trust domain of the set.
#[derive(Clone, Debug)]
pub(crate) struct TrustDomainBundles {
    pub(crate) policy: TrustDomainPolicy,
    pub(crate) roots: BTreeMap<String, Arc<RootCertStore>>,
    /// Trust domains in the bundle set that the policy excludes (for refusal reasons).
    excluded: Vec<String>,
}

impl TrustDomainBundles {
    /// Chooses and parses the bundles the policy allows. `ours` is our own leaf (its trust
    /// domain is the local one, whose bundle is `local_bundle`). With `initial` (a builder's
    /// `build`), a policy that allows no bundle of the set is an error; for an update it is
    /// published (every peer is then refused, fail closed) with a warning, since refusing
    /// the update would keep trusting bundles that were just removed.
    pub(crate) fn select(
        policy: &TrustDomainPolicy,
        ours: &PeerIdentity,
        local_bundle: (&[u8], &Path),
        federated: &[FederatedPart],
        initial: bool,
    ) -> Result<Self, Error> {
        let local = ours
            .spiffe_id()
            .ok_or_else(|| {
                Error::Config(format!(
                    "a trust-domain policy needs our own certificate to be an X509-SVID (exactly \
                     one SPIFFE URI SAN) naming the local trust domain; {} is not",
                    ours.subject()
                ))
            })?
            .trust_domain()
            .to_owned();
        let federated = federated
            .iter()
            .map(|(td, path, bytes)| (td.as_str(), path.as_path(), BundleInput::Bytes(bytes)));
        Self::assemble(
            policy,
            local,
            (BundleInput::Bytes(local_bundle.0), local_bundle.1),
            federated,
            initial,
        )
    }

    /// [`select`](Self::select) for bundles already parsed, with the local trust domain
    /// named (the CLI's chain check, which has no certificate of its own).
    pub(crate) fn from_certificates(
        policy: &TrustDomainPolicy,
        local: &str,
        local_bundle: &[CertificateDer<'static>],
        federated: &[(String, Vec<CertificateDer<'static>>)],
    ) -> Result<Self, Error> {
        validate_trust_domain(local)?;
        let memory = Path::new(crate::error::MEMORY);
        let federated = federated
            .iter()
            .map(|(td, certs)| (td.as_str(), memory, BundleInput::Certificates(certs)));
        Self::assemble(
            policy,
            local.to_owned(),
            (BundleInput::Certificates(local_bundle), memory),
            federated,
            true,
        )
    }

    fn assemble<'a>(
        policy: &TrustDomainPolicy,
        local: String,
        local_bundle: (BundleInput<'a>, &'a Path),
        federated: impl Iterator<Item = (&'a str, &'a Path, BundleInput<'a>)>,
        initial: bool,
    ) -> Result<Self, Error> {
        let mut roots = BTreeMap::new();
        let mut excluded = Vec::new();
        let mut seen = vec![local.clone()];
        if policy.allows(&local, &local) {
            let (input, path) = local_bundle;
            roots.insert(local.clone(), root_store(&input.certificates(path)?, path)?);
        } else {
            excluded.push(local.clone());
        }
        for (td, path, input) in federated {
            validate_trust_domain(td)?;
            if seen.iter().any(|s| s == td) {
                return Err(Error::Config(format!(
                    "two bundles for trust domain {td} (the local trust domain's bundle is the CA \
                     bundle; federated bundles name other trust domains)"
                )));
            }
            seen.push(td.to_owned());
            if !policy.allows(td, &local) {
                excluded.push(td.to_owned());
                continue;
            }
            // An empty federated bundle (no X.509 authorities) means no bundle for that
            // trust domain: its peers are refused, as if it were not in the set.
            let certs = input.certificates(path)?;
            if !certs.is_empty() {
                roots.insert(td.to_owned(), root_store(&certs, path)?);
            }
        }
        if roots.is_empty() {
            let message = format!(
                "the trust-domain policy ({policy}) allows none of the trust domains in the \
                 bundle set ({}): no peer could be verified",
                seen.join(", ")
            );
            if initial {
                return Err(Error::Config(message));
            }
            tracing::warn!(reason = %message, "every peer is refused until an allowed bundle arrives");
        }
        Ok(TrustDomainBundles {
            policy: policy.clone(),
            roots,
            excluded,
        })
    }

    /// The trust domain whose bundle must anchor `peer`'s chain, or why there is none.
    pub(crate) fn trust_domain_of<'a>(&self, peer: &'a PeerIdentity) -> Result<&'a str, Error> {
        let Some(id) = peer.spiffe_id() else {
            return Err(Error::Certificate(format!(
                "not an X509-SVID: {} URI SANs where exactly one SPIFFE ID is required to choose \
                 the trust bundle",
                peer.uri_sans().len()
            )));
        };
        let td = id.trust_domain();
        if self.roots.contains_key(td) {
            return Ok(td);
        }
        let reason = if self.excluded.iter().any(|x| x == td) {
            format!("excluded by the trust-domain policy ({})", self.policy)
        } else {
            "no bundle for it in the bundle set".to_owned()
        };
        Err(Error::UntrustedTrustDomain {
            trust_domain: td.to_owned(),
            reason,
        })
    }
}

/// The SPIFFE trust options of a TLS builder (`ServerTlsBuilder`, `ClientTlsBuilder`): both
/// have a `common: CommonSettings` and a `federated: Vec<(String, Source)>`.
macro_rules! impl_spiffe_trust_options {
    ($builder:ty) => {
        /// SPIFFE trust: a bundle per trust domain, federation, fail-closed expiry.
        impl $builder {
            /// Turns on SPIFFE trust with this policy: our certificate must be an X509-SVID,
            /// the CA bundle is the bundle of its (the local) trust domain, federated bundles
            /// ([`federated_bundle_file`](Self::federated_bundle_file)) add other trust
            /// domains, and each peer chain is verified against the bundle of the peer's own
            /// trust domain (from its leaf's single SPIFFE URI SAN), if the policy allows it,
            /// never against a union of bundles. Without a policy (the default) every peer
            /// chain is verified against the one CA bundle. `build` fails if the policy
            /// allows no bundle of the set. See [`TrustDomainPolicy`](crate::TrustDomainPolicy).
            pub fn trust_domain_policy(mut self, policy: crate::TrustDomainPolicy) -> Self {
                self.common.trust_domain_policy = Some(policy);
                self
            }

            /// Adds the bundle file of a federated trust domain (PEM, DER, or SPIFFE bundle
            /// JSON), reloaded with the rest; used with a
            /// [trust-domain policy](Self::trust_domain_policy). A file holding no
            /// certificate (`{"keys": []}`) means no bundle for that trust domain.
            pub fn federated_bundle_file(
                mut self,
                trust_domain: &str,
                path: impl Into<std::path::PathBuf>,
            ) -> Self {
                self.federated.push((
                    trust_domain.to_owned(),
                    crate::pem::Source::File(path.into()),
                ));
                self
            }

            /// Adds the bundle of a federated trust domain given as bytes; see
            /// [`federated_bundle_file`](Self::federated_bundle_file).
            pub fn federated_bundle(mut self, trust_domain: &str, bundle: &[u8]) -> Self {
                self.federated.push((
                    trust_domain.to_owned(),
                    crate::pem::Source::Memory(std::sync::Arc::from(bundle)),
                ));
                self
            }

            /// Stops presenting our certificate once it has expired, so new handshakes fail
            /// on our side (fail closed: a server has no certificate to send, a client sends
            /// none) until a renewed one is swapped in. Default: the expired certificate is
            /// still presented and peers refuse it. Sources of short-lived certificates
            /// (SPIFFE) turn this on.
            pub fn refuse_handshakes_after_expiry(mut self) -> Self {
                self.common.refuse_after_expiry = true;
                self
            }
        }
    };
}
pub(crate) use impl_spiffe_trust_options;
