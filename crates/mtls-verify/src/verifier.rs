//! Client-certificate verification: rustls's `WebPkiClientVerifier` wrapped with the checks
//! it lacks (size and depth caps, key strength, no SHA-1, identity authorization), plus the
//! same chain policy for server certificates on the client side.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertRevocationListError, CertificateError, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::identity::{MAX_CERTIFICATE_SIZE, serial_to_hex};
use crate::refusal_log::RefusalLogLimit;
use crate::trust_domains::TrustDomainBundles;
use crate::{
    AuthorizeIdentity, Error, IdentityAuthorizer, PeerIdentity, TrustDomainPolicy, der, refused,
};

/// Default minimum RSA modulus size in bits.
pub const DEFAULT_MIN_RSA_BITS: u32 = 2048;
/// Default maximum number of certificates a peer may present (leaf and intermediates,
/// not counting a root it may append).
pub const DEFAULT_MAX_CHAIN_DEPTH: usize = 5;

// === ChainPolicy ===

/// The cheap structural checks run on a presented chain before any signature is verified.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainPolicy {
    pub(crate) min_rsa_bits: u32,
    pub(crate) max_chain_depth: usize,
}

impl Default for ChainPolicy {
    fn default() -> Self {
        ChainPolicy {
            min_rsa_bits: DEFAULT_MIN_RSA_BITS,
            max_chain_depth: DEFAULT_MAX_CHAIN_DEPTH,
        }
    }
}

impl ChainPolicy {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.min_rsa_bits < DEFAULT_MIN_RSA_BITS {
            return Err(Error::Config(format!(
                "min_rsa_bits {} is below 2048, which the crypto provider does not verify",
                self.min_rsa_bits
            )));
        }
        if self.max_chain_depth == 0 {
            return Err(Error::Config("max_chain_depth must be at least 1".into()));
        }
        Ok(())
    }

    /// Size and depth caps, then per certificate: parseable, no SHA-1/MD5 signature, RSA key
    /// at least `min_rsa_bits`. Constant work per certificate, bounded certificate count.
    pub(crate) fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        let presented = intermediates.len().saturating_add(1);
        // A peer may append its root; allow one extra certificate for it, no more.
        if presented > self.max_chain_depth.saturating_add(1)
            || (presented > self.max_chain_depth && !last_is_self_issued(intermediates))
        {
            return Err(Error::Certificate(format!(
                "chain of {presented} certificates exceeds the maximum depth of {}",
                self.max_chain_depth
            )));
        }
        for (i, cert) in std::iter::once(end_entity).chain(intermediates).enumerate() {
            let which = || position_name(i);
            if cert.len() > MAX_CERTIFICATE_SIZE {
                return Err(Error::Certificate(format!(
                    "{} is {} bytes, over the {MAX_CERTIFICATE_SIZE}-byte limit",
                    which(),
                    cert.len()
                )));
            }
            let summary = der::summarize(cert)
                .ok_or_else(|| Error::Certificate(format!("{} is not valid DER X.509", which())))?;
            if let Some(alg) = summary.weak_signature() {
                return Err(Error::Certificate(format!(
                    "{} (serial {}) is signed with {alg}; SHA-1 and weaker signatures are refused",
                    which(),
                    serial_to_hex(summary.serial)
                )));
            }
            if let Some(bits) = summary.rsa_bits
                && bits < self.min_rsa_bits as usize
            {
                return Err(Error::Certificate(format!(
                    "{} (serial {}) has a {bits}-bit RSA key; at least {} bits are required",
                    which(),
                    serial_to_hex(summary.serial),
                    self.min_rsa_bits
                )));
            }
        }
        Ok(())
    }
}

fn position_name(i: usize) -> String {
    if i == 0 {
        "the leaf certificate".to_owned()
    } else {
        format!("intermediate certificate #{i}")
    }
}

/// Whether the last presented certificate looks like a root (issuer == subject), which some
/// clients append; it does not count towards the depth.
fn last_is_self_issued(intermediates: &[CertificateDer<'_>]) -> bool {
    intermediates
        .last()
        .and_then(|last| der::summarize(last))
        .is_some_and(|s| s.issuer == s.subject)
}

// === IdentityCache ===

/// Identities parsed by the verifier during handshakes, waiting to be picked up by
/// `ServerTls::peer_identity` for the same connection. Bounded; a miss only costs a re-parse.
pub(crate) struct IdentityCache {
    map: Mutex<HashMap<[u8; 32], Arc<PeerIdentity>>>,
}

const IDENTITY_CACHE_CAPACITY: usize = 1024;

impl IdentityCache {
    pub(crate) fn new() -> Self {
        IdentityCache {
            map: Mutex::new(HashMap::with_capacity(64)),
        }
    }

    fn insert(&self, identity: Arc<PeerIdentity>) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= IDENTITY_CACHE_CAPACITY
            && !map.contains_key(identity.fingerprint_sha256())
            && let Some(victim) = map.keys().next().copied()
        {
            map.remove(&victim);
        }
        map.insert(*identity.fingerprint_sha256(), identity);
    }

    pub(crate) fn take(&self, fingerprint: &[u8; 32]) -> Option<Arc<PeerIdentity>> {
        self.map.lock().ok()?.remove(fingerprint)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

// === ClientVerifier ===

/// Options of the client-certificate verifier; shared by the server config and
/// [`verify_client_chain`].
#[derive(Clone)]
pub(crate) struct ClientVerifierOptions {
    pub(crate) policy: ChainPolicy,
    pub(crate) authorizer: Arc<dyn AuthorizeIdentity>,
    pub(crate) allow_unknown_revocation_status: bool,
    pub(crate) allow_expired_crls: bool,
    pub(crate) allow_unauthenticated: bool,
}

impl Default for ClientVerifierOptions {
    fn default() -> Self {
        ClientVerifierOptions {
            policy: ChainPolicy::default(),
            authorizer: Arc::new(IdentityAuthorizer::any()),
            allow_unknown_revocation_status: false,
            allow_expired_crls: false,
            allow_unauthenticated: false,
        }
    }
}

/// The CA bundles a verifier anchors peer chains to.
pub(crate) enum Anchors {
    /// One bundle for every peer (the file-based setups).
    Single(Arc<RootCertStore>),
    /// SPIFFE: the bundle of the peer's own trust domain, as the policy allows.
    ByTrustDomain(TrustDomainBundles),
}

/// The server's webpki verifiers: one, or one per trust domain.
enum ClientTrust {
    Single(Arc<dyn ClientCertVerifier>),
    ByTrustDomain {
        bundles: TrustDomainBundles,
        verifiers: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
        /// The subjects of every allowed bundle's CAs.
        hints: Vec<DistinguishedName>,
    },
}

/// The server's client-certificate verifier.
pub(crate) struct ClientVerifier {
    trust: ClientTrust,
    algs: WebPkiSupportedAlgorithms,
    options: ClientVerifierOptions,
    cache: Option<Arc<IdentityCache>>,
    /// Rate limit of the refusal `warn` lines (see [`crate::refusal_log`]).
    refusal_log: RefusalLogLimit,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mtls_verify::ClientVerifier")
            .field("policy", &self.options.policy)
            .finish_non_exhaustive()
    }
}

/// rustls's webpki client verifier over one root store, with our revocation options.
fn webpki_client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    options: &ClientVerifierOptions,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, crate::crypto_provider())
        .with_crls(crls);
    if options.allow_unknown_revocation_status {
        builder = builder.allow_unknown_revocation_status();
    }
    if !options.allow_expired_crls {
        builder = builder.enforce_revocation_expiration();
    }
    if options.allow_unauthenticated {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("client verifier: {e}")))
}

impl ClientVerifier {
    #[cfg(test)]
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        options: ClientVerifierOptions,
        cache: Option<Arc<IdentityCache>>,
    ) -> Result<Self, Error> {
        Self::with_anchors(Anchors::Single(roots), crls, options, cache)
    }

    pub(crate) fn with_anchors(
        anchors: Anchors,
        crls: Vec<CertificateRevocationListDer<'static>>,
        options: ClientVerifierOptions,
        cache: Option<Arc<IdentityCache>>,
    ) -> Result<Self, Error> {
        options.policy.validate()?;
        let trust = match anchors {
            Anchors::Single(roots) => {
                ClientTrust::Single(webpki_client_verifier(roots, crls, &options)?)
            }
            Anchors::ByTrustDomain(bundles) => {
                let mut verifiers = BTreeMap::new();
                let mut hints = Vec::new();
                for (td, roots) in &bundles.roots {
                    hints.extend(
                        roots
                            .roots
                            .iter()
                            .map(|ta| DistinguishedName::from(ta.subject.as_ref().to_vec())),
                    );
                    verifiers.insert(
                        td.clone(),
                        webpki_client_verifier(roots.clone(), crls.clone(), &options)?,
                    );
                }
                ClientTrust::ByTrustDomain {
                    bundles,
                    verifiers,
                    hints,
                }
            }
        };
        Ok(ClientVerifier {
            trust,
            algs: crate::crypto_provider().signature_verification_algorithms,
            options,
            cache,
            refusal_log: RefusalLogLimit::default(),
        })
    }

    /// The webpki verifier for this peer: the only one, or its trust domain's.
    fn inner_for(&self, peer: &PeerIdentity) -> Result<&Arc<dyn ClientCertVerifier>, Error> {
        match &self.trust {
            ClientTrust::Single(inner) => Ok(inner),
            ClientTrust::ByTrustDomain {
                bundles, verifiers, ..
            } => {
                let td = bundles.trust_domain_of(peer)?;
                verifiers
                    .get(td)
                    .ok_or_else(|| Error::UntrustedTrustDomain {
                        trust_domain: td.to_owned(),
                        reason: "no bundle for it in the bundle set".into(),
                    })
            }
        }
    }

    /// The full check: policy, parse, inner webpki verification, authorizer. Logs failures.
    pub(crate) fn verify_identity(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<PeerIdentity, rustls::Error> {
        // Each refusal is also noted for an acceptor capturing it (`refused`), which then
        // records the certificate in its audit trail; a no-op otherwise.
        if let Err(e) = self.options.policy.check(end_entity, intermediates) {
            self.warn_refused(None, &e.to_string());
            refused::note(end_entity, None, || e.to_string());
            return Err(other(e));
        }
        let identity = match PeerIdentity::from_der(end_entity) {
            Ok(id) => id,
            Err(e) => {
                self.warn_refused(None, &e.to_string());
                refused::note(end_entity, None, || e.to_string());
                return Err(other(e));
            }
        };
        let inner = match self.inner_for(&identity) {
            Ok(inner) => inner,
            Err(e) => {
                let reason = e.to_string();
                self.warn_refused(Some(&identity), &reason);
                refused::note(end_entity, Some(&identity), || reason);
                return Err(other(e));
            }
        };
        if let Err(e) = inner.verify_client_cert(end_entity, intermediates, now) {
            let reason = human_reason(&e);
            self.warn_refused(Some(&identity), &reason);
            refused::note(end_entity, Some(&identity), || reason);
            return Err(e);
        }
        if let Err(r) = self.options.authorizer.authorize(&identity) {
            let reason = format!("not authorized: {r}");
            self.refusal_log.warn(&reason, || {
                tracing::warn!(
                    subject = identity.subject(),
                    serial = identity.serial_hex(),
                    reason = %r,
                    "client not authorized"
                );
            });
            refused::note(end_entity, Some(&identity), || reason);
            return Err(other(Error::NotAuthorized(r)));
        }
        Ok(identity)
    }

    /// The same verifier with its refusal lines limited by `refusal_log` (a test clock).
    #[cfg(test)]
    fn with_refusal_log(mut self, refusal_log: RefusalLogLimit) -> Self {
        self.refusal_log = refusal_log;
        self
    }

    /// The `warn` line of a refused client certificate, rate-limited.
    fn warn_refused(&self, identity: Option<&PeerIdentity>, reason: &str) {
        self.refusal_log.warn(reason, || match identity {
            Some(identity) => tracing::warn!(
                subject = identity.subject(),
                serial = identity.serial_hex(),
                reason = %reason,
                "client certificate refused"
            ),
            None => tracing::warn!(reason = %reason, "client certificate refused"),
        });
    }
}

fn other(e: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        match &self.trust {
            ClientTrust::Single(inner) => inner.offer_client_auth(),
            ClientTrust::ByTrustDomain { .. } => true,
        }
    }

    fn client_auth_mandatory(&self) -> bool {
        match &self.trust {
            ClientTrust::Single(inner) => inner.client_auth_mandatory(),
            ClientTrust::ByTrustDomain { .. } => !self.options.allow_unauthenticated,
        }
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.trust {
            ClientTrust::Single(inner) => inner.root_hint_subjects(),
            ClientTrust::ByTrustDomain { hints, .. } => hints,
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = self.verify_identity(end_entity, intermediates, now)?;
        if let Some(cache) = &self.cache {
            cache.insert(Arc::new(identity));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.trust {
            ClientTrust::Single(inner) => inner.verify_tls12_signature(message, cert, dss),
            ClientTrust::ByTrustDomain { .. } => {
                rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
            }
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.trust {
            ClientTrust::Single(inner) => inner.verify_tls13_signature(message, cert, dss),
            ClientTrust::ByTrustDomain { .. } => {
                rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
            }
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.trust {
            ClientTrust::Single(inner) => inner.supported_verify_schemes(),
            ClientTrust::ByTrustDomain { .. } => self.algs.supported_schemes(),
        }
    }
}

/// The SHA-256 of a DER certificate, the key of the identity cache.
pub(crate) fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// A short human-readable reason for a rustls verification error.
pub fn human_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<Error>() {
                Some(Error::NotAuthorized(r)) => format!("not authorized: {r}"),
                Some(Error::Certificate(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => match inner.downcast_ref::<webpki::Error>() {
                    Some(w) => webpki_reason(w),
                    None => inner.to_string(),
                },
            },
            CertificateError::ExpiredContext { time, not_after } => format!(
                "the certificate expired at {} (verification time {})",
                unix_rfc3339(*not_after),
                unix_rfc3339(*time)
            ),
            CertificateError::Expired => "the certificate has expired".to_owned(),
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "the certificate is not valid before {} (verification time {})",
                unix_rfc3339(*not_before),
                unix_rfc3339(*time)
            ),
            CertificateError::NotValidYet => "the certificate is not valid yet".to_owned(),
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                "a CRL needed for this chain is past its nextUpdate (expired)".to_owned()
            }
            CertificateError::UnknownIssuer => {
                "not issued by a trusted CA (unknown issuer)".to_owned()
            }
            CertificateError::Revoked => "the certificate has been revoked (CRL)".to_owned(),
            CertificateError::UnknownRevocationStatus => {
                "revocation status unknown: no CRL covers this certificate's issuer".to_owned()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the certificate's extended key usage does not allow this use \
                 (clientAuth/serverAuth)"
                    .to_owned()
            }
            CertificateError::BadEncoding => "the certificate is not valid DER".to_owned(),
            CertificateError::BadSignature => "a signature in the chain is invalid".to_owned(),
            _ => e.to_string(),
        },
        rustls::Error::InvalidCertRevocationList(CertRevocationListError::BadSignature) => {
            "a CRL has an invalid signature".to_owned()
        }
        _ => e.to_string(),
    }
}

fn webpki_reason(e: &webpki::Error) -> String {
    use webpki::Error as W;
    match e {
        W::CaUsedAsEndEntity => {
            "a CA certificate (basicConstraints CA:TRUE) cannot be used as a peer certificate"
                .to_owned()
        }
        W::EndEntityUsedAsCa => "an end-entity certificate was used as an issuer".to_owned(),
        W::NameConstraintViolation => "the chain violates a CA's name constraints".to_owned(),
        W::PathLenConstraintViolated => {
            "the chain violates a CA's path length constraint".to_owned()
        }
        W::MaximumPathDepthExceeded
        | W::MaximumPathBuildCallsExceeded
        | W::MaximumSignatureChecksExceeded => {
            "the chain is too long or too complex to verify".to_owned()
        }
        other => format!("{other:?}"),
    }
}

fn unix_rfc3339(t: UnixTime) -> String {
    crate::identity::rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs()))
}

/// Converts a verification failure into this crate's [`Error`], keeping our own errors.
pub(crate) fn into_error(e: rustls::Error) -> Error {
    if let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) = &e
        && let Some(ours) = inner.downcast_ref::<Error>()
    {
        return ours.clone();
    }
    Error::Verification(human_reason(&e))
}

// === verify_client_chain ===

/// Settings for [`verify_client_chain`]; the defaults are the server's.
///
/// ```
/// use mtls_verify::{ChainVerifyOptions, IdentityAuthorizer, verify_client_chain};
/// use ztkit_test_support::TestCa;
///
/// let ca = TestCa::new("root");
/// let leaf = ca.leaf("fe").spiffe_id("spiffe://example.org/fe").client_auth().issue();
/// let options = ChainVerifyOptions::new(vec![ca.cert_der.clone()])
///     .authorizer(IdentityAuthorizer::trust_domain("example.org")?);
/// let id = verify_client_chain(&leaf.chain_der, &options)?;
/// assert_eq!(id.spiffe_id().unwrap().as_str(), "spiffe://example.org/fe");
///
/// let strict = options.authorizer(IdentityAuthorizer::trust_domain("other.org")?);
/// assert!(verify_client_chain(&leaf.chain_der, &strict).is_err());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
#[derive(Clone)]
pub struct ChainVerifyOptions {
    ca_certs: Vec<CertificateDer<'static>>,
    /// SPIFFE trust: the local trust domain and the policy.
    spiffe: Option<(String, TrustDomainPolicy)>,
    federated: Vec<(String, Vec<CertificateDer<'static>>)>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    options: ClientVerifierOptions,
    time: Option<SystemTime>,
}

impl fmt::Debug for ChainVerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainVerifyOptions")
            .field("ca_certs", &self.ca_certs.len())
            .field("crls", &self.crls.len())
            .field("policy", &self.options.policy)
            .finish_non_exhaustive()
    }
}

impl ChainVerifyOptions {
    /// Trust the given CA certificates; no CRLs, any identity, server defaults otherwise.
    pub fn new(ca_certs: Vec<CertificateDer<'static>>) -> Self {
        ChainVerifyOptions {
            ca_certs,
            spiffe: None,
            federated: Vec::new(),
            crls: Vec::new(),
            options: ClientVerifierOptions::default(),
            time: None,
        }
    }

    /// Verifies with SPIFFE trust, as a server built with
    /// [`trust_domain_policy`](crate::ServerTlsBuilder::trust_domain_policy): the CA
    /// certificates given to [`new`](Self::new) are the bundle of `local_trust_domain`,
    /// [`federated_bundle`](Self::federated_bundle)s add other trust domains, and the chain
    /// is verified against the bundle of its leaf's trust domain if `policy` allows it.
    pub fn spiffe_trust(mut self, local_trust_domain: &str, policy: TrustDomainPolicy) -> Self {
        let td = local_trust_domain.trim_start_matches("spiffe://");
        self.spiffe = Some((td.to_owned(), policy));
        self
    }

    /// Adds a federated trust domain's bundle (used with [`spiffe_trust`](Self::spiffe_trust)).
    pub fn federated_bundle(
        mut self,
        trust_domain: &str,
        ca_certs: Vec<CertificateDer<'static>>,
    ) -> Self {
        let td = trust_domain.trim_start_matches("spiffe://");
        self.federated.push((td.to_owned(), ca_certs));
        self
    }

    /// Adds CRLs (revocation status of every certificate in the chain is then required
    /// unless [`allow_unknown_revocation_status`](Self::allow_unknown_revocation_status)).
    pub fn crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.crls.extend(crls);
        self
    }

    /// Sets the identity authorizer (default: any verified chain).
    pub fn authorizer(mut self, authorizer: impl AuthorizeIdentity) -> Self {
        self.options.authorizer = Arc::new(authorizer);
        self
    }

    /// Accepts certificates whose revocation status no CRL covers.
    pub fn allow_unknown_revocation_status(mut self) -> Self {
        self.options.allow_unknown_revocation_status = true;
        self
    }

    /// Uses CRLs past their nextUpdate instead of failing.
    pub fn allow_expired_crls(mut self) -> Self {
        self.options.allow_expired_crls = true;
        self
    }

    /// Minimum RSA key size (default 2048; lower values are refused).
    pub fn min_rsa_bits(mut self, bits: u32) -> Self {
        self.options.policy.min_rsa_bits = bits;
        self
    }

    /// Maximum certificates presented, leaf included (default 5).
    pub fn max_chain_depth(mut self, n: usize) -> Self {
        self.options.policy.max_chain_depth = n;
        self
    }

    /// Verifies as of `time` instead of now.
    pub fn at_time(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }
}

/// Verifies a client chain (leaf first, then intermediates) exactly as the server does —
/// same code, same defaults — and returns the peer's identity.
///
/// # Errors
/// [`Error::EmptyCaBundle`]/[`Error::InvalidCaCertificate`]/[`Error::Crl`] for unusable trust
/// material; otherwise an error whose `Display` is the human reason the chain was refused
/// ([`Error::Certificate`] for our own checks, [`Error::NotAuthorized`] for the authorizer,
/// [`Error::Verification`] for chain, validity, EKU and revocation failures).
pub fn verify_client_chain(
    chain: &[CertificateDer<'_>],
    options: &ChainVerifyOptions,
) -> Result<PeerIdentity, Error> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(Error::NoPeerCertificate);
    };
    let memory = std::path::Path::new(crate::error::MEMORY);
    let anchors = match &options.spiffe {
        None => Anchors::Single(crate::material::root_store(&options.ca_certs, memory)?),
        Some((local, policy)) => Anchors::ByTrustDomain(TrustDomainBundles::from_certificates(
            policy,
            local,
            &options.ca_certs,
            &options.federated,
        )?),
    };
    for crl in &options.crls {
        crate::material::check_crl(crl, memory, options.options.allow_expired_crls)?;
    }
    let verifier =
        ClientVerifier::with_anchors(anchors, options.crls.clone(), options.options.clone(), None)?;
    let now = UnixTime::since_unix_epoch(
        options
            .time
            .unwrap_or_else(SystemTime::now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier
        .verify_identity(leaf, intermediates, now)
        .map_err(into_error)
}

/// A verifier of server certificates for connections that present no certificate of their
/// own (a SPIFFE bundle endpoint's client): the client side's checks (chain policy, webpki
/// with CRL-free roots `ca_certs`, the authorizer). With an authorizer that decides by SPIFFE
/// ID alone the hostname is not checked (an SVID names no host: the bundle endpoint profile
/// `https_spiffe`); otherwise, or without an authorizer, the hostname is checked as any TLS
/// client does (`https_web`).
///
/// ```
/// use mtls_verify::{IdentityAuthorizer, server_certificate_verifier};
/// use ztkit_test_support::TestCa;
///
/// let ca = TestCa::new("partner.org");
/// let verifier = server_certificate_verifier(
///     &[ca.cert_der.clone()],
///     Some(IdentityAuthorizer::spiffe_ids(["spiffe://partner.org/bundle-endpoint"])?),
/// )?;
/// let config = rustls::ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
///     .with_safe_default_protocol_versions()?
///     .dangerous()
///     .with_custom_certificate_verifier(verifier)
///     .with_no_client_auth();
/// # let _ = config;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::EmptyCaBundle`] / [`Error::InvalidCaCertificate`] for unusable CA certificates.
pub fn server_certificate_verifier(
    ca_certs: &[CertificateDer<'static>],
    authorizer: Option<IdentityAuthorizer>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let roots = crate::material::root_store(ca_certs, std::path::Path::new(crate::error::MEMORY))?;
    let check_hostname = !authorizer
        .as_ref()
        .is_some_and(IdentityAuthorizer::is_spiffe_based);
    let authorizer = authorizer.map(|a| Arc::new(a) as Arc<dyn AuthorizeIdentity>);
    Ok(Arc::new(ServerVerifier::new(
        Anchors::Single(roots),
        ChainPolicy::default(),
        authorizer,
        check_hostname,
    )?))
}

// === ServerVerifier (client side) ===

/// One trust anchor set of the client side: its roots, and the hostname-checking webpki
/// verifier over them (when the hostname is checked).
struct ServerAnchor {
    roots: Arc<RootCertStore>,
    hostname: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerAnchor {
    fn new(roots: Arc<RootCertStore>, check_hostname: bool) -> Result<Self, Error> {
        let hostname = if check_hostname {
            Some(
                WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    crate::crypto_provider(),
                )
                .build()
                .map_err(|e| Error::Config(format!("server verifier: {e}")))?,
            )
        } else {
            None
        };
        Ok(ServerAnchor { roots, hostname })
    }
}

enum ServerTrust {
    Single(ServerAnchor),
    ByTrustDomain {
        bundles: TrustDomainBundles,
        anchors: BTreeMap<String, ServerAnchor>,
    },
}

/// The client's verifier of server certificates: the same chain policy, then rustls's
/// webpki verification (with or without the hostname check), then the authorizer.
pub(crate) struct ServerVerifier {
    trust: ServerTrust,
    check_hostname: bool,
    algs: WebPkiSupportedAlgorithms,
    policy: ChainPolicy,
    authorizer: Option<Arc<dyn AuthorizeIdentity>>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mtls_verify::ServerVerifier")
            .field("hostname_check", &self.check_hostname)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ServerVerifier {
    pub(crate) fn new(
        anchors: Anchors,
        policy: ChainPolicy,
        authorizer: Option<Arc<dyn AuthorizeIdentity>>,
        check_hostname: bool,
    ) -> Result<Self, Error> {
        policy.validate()?;
        let trust = match anchors {
            Anchors::Single(roots) => {
                ServerTrust::Single(ServerAnchor::new(roots, check_hostname)?)
            }
            Anchors::ByTrustDomain(bundles) => {
                let mut anchors = BTreeMap::new();
                for (td, roots) in &bundles.roots {
                    anchors.insert(
                        td.clone(),
                        ServerAnchor::new(roots.clone(), check_hostname)?,
                    );
                }
                ServerTrust::ByTrustDomain { bundles, anchors }
            }
        };
        Ok(ServerVerifier {
            trust,
            check_hostname,
            algs: crate::crypto_provider().signature_verification_algorithms,
            policy,
            authorizer,
        })
    }

    /// The anchors for this server's chain: the only ones, or its trust domain's.
    fn anchor_for(&self, end_entity: &CertificateDer<'_>) -> Result<&ServerAnchor, Error> {
        match &self.trust {
            ServerTrust::Single(anchor) => Ok(anchor),
            ServerTrust::ByTrustDomain { bundles, anchors } => {
                let peer = PeerIdentity::from_der(end_entity)?;
                let td = bundles.trust_domain_of(&peer)?;
                anchors.get(td).ok_or_else(|| Error::UntrustedTrustDomain {
                    trust_domain: td.to_owned(),
                    reason: "no bundle for it in the bundle set".into(),
                })
            }
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Err(e) = self.policy.check(end_entity, intermediates) {
            tracing::warn!(server = ?server_name, reason = %e, "server certificate refused");
            return Err(other(e));
        }
        let anchor = match self.anchor_for(end_entity) {
            Ok(anchor) => anchor,
            Err(e) => {
                tracing::warn!(server = ?server_name, reason = %e, "server certificate refused");
                return Err(other(e));
            }
        };
        let result = match &anchor.hostname {
            Some(inner) => inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ()),
            None => ParsedCertificate::try_from(end_entity).and_then(|parsed| {
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &anchor.roots,
                    intermediates,
                    now,
                    self.algs.all,
                )
            }),
        };
        if let Err(e) = result {
            tracing::warn!(server = ?server_name, reason = %human_reason(&e), "server certificate refused");
            return Err(e);
        }
        if let Some(authorizer) = &self.authorizer {
            let identity = PeerIdentity::from_der(end_entity).map_err(other)?;
            if let Err(r) = authorizer.authorize(&identity) {
                tracing::warn!(
                    server = ?server_name,
                    subject = identity.subject(),
                    serial = identity.serial_hex(),
                    reason = %r,
                    "server not authorized"
                );
                return Err(other(Error::NotAuthorized(r)));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal_log::{REFUSAL_LINES_PER_WINDOW, REFUSAL_LOG_WINDOW};
    use std::time::Instant;
    use ztkit_test_support::{TestCa, TestPki};

    fn capture_lines(f: impl FnOnce()) -> Vec<String> {
        ztkit_test_support::capture_warnings(f)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_flood_of_refused_certificates_logs_a_bounded_number_of_lines_and_a_summary() {
        let pki = TestPki::new();
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        let roots = crate::material::root_store(
            std::slice::from_ref(&pki.ca.cert_der),
            std::path::Path::new(crate::error::MEMORY),
        )
        .unwrap();
        let options = ClientVerifierOptions {
            authorizer: Arc::new(IdentityAuthorizer::trust_domain("other.org").unwrap()),
            ..ClientVerifierOptions::default()
        };
        let verifier = ClientVerifier::new(roots, Vec::new(), options, None)
            .unwrap()
            .with_refusal_log(RefusalLogLimit::with_clock(Arc::new(move || {
                *read.lock().unwrap()
            })));
        let stranger = TestCa::new("stranger CA").leaf("x").client_auth().issue();
        let unix_now = UnixTime::now();
        let lines = capture_lines(|| {
            for _ in 0..100 {
                verifier
                    .verify_identity(&stranger.cert_der, &[], unix_now)
                    .unwrap_err();
            }
            // Another reason still gets its first line once the budget is spent.
            for _ in 0..5 {
                verifier
                    .verify_identity(&pki.client.cert_der, &[], unix_now)
                    .unwrap_err();
            }
        });
        let refused = |lines: &[String]| {
            lines
                .iter()
                .filter(|l| l.contains("client certificate refused") && !l.contains("suppressed"))
                .count()
        };
        assert_eq!(
            refused(&lines),
            REFUSAL_LINES_PER_WINDOW as usize,
            "{lines:#?}"
        );
        let unauthorized = lines.iter().filter(|l| l.contains("client not authorized"));
        assert_eq!(unauthorized.count(), 1, "{lines:#?}");
        assert!(
            !lines.iter().any(|l| l.contains("suppressed")),
            "{lines:#?}"
        );

        *now.lock().unwrap() += REFUSAL_LOG_WINDOW;
        let lines = capture_lines(|| {
            verifier
                .verify_identity(&stranger.cert_der, &[], unix_now)
                .unwrap_err();
        });
        let suppressed = 100 - REFUSAL_LINES_PER_WINDOW as usize + 4;
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].contains(&format!("suppressed {suppressed} similar lines")),
            "{lines:#?}"
        );
        assert_eq!(refused(&lines), 1, "{lines:#?}");
    }

    #[test]
    fn identity_cache_is_bounded_and_drains() {
        let cache = IdentityCache::new();
        let ca = TestCa::new("root");
        let leaf = ca.leaf("x").issue();
        let id = Arc::new(PeerIdentity::from_der(&leaf.cert_der).unwrap());
        cache.insert(id.clone());
        assert_eq!(
            cache.take(&fingerprint(&leaf.cert_der)).as_deref(),
            Some(&*id)
        );
        assert!(cache.take(&fingerprint(&leaf.cert_der)).is_none());
        // Fill past capacity with distinct fingerprints: size stays bounded.
        for i in 0..(IDENTITY_CACHE_CAPACITY + 10) {
            let mut fake = (*id).clone();
            fake.set_fingerprint_for_test(Sha256::digest(i.to_be_bytes()).into());
            cache.insert(Arc::new(fake));
        }
        assert_eq!(cache.len(), IDENTITY_CACHE_CAPACITY);
    }

    #[test]
    fn depth_counts_an_appended_root_once() {
        let root = TestCa::new("root");
        let mut ca = root.intermediate("i1");
        for i in 2..=4 {
            ca = ca.intermediate(&format!("i{i}"));
        }
        let leaf = ca.leaf("x").issue();
        assert_eq!(leaf.chain_der.len(), 5);
        let policy = ChainPolicy::default();
        let (ee, ints) = leaf.chain_der.split_first().unwrap();
        policy.check(ee, ints).unwrap();
        // Appending the self-signed root is tolerated…
        let mut with_root = ints.to_vec();
        with_root.push(root.cert_der.clone());
        policy.check(ee, &with_root).unwrap();
        // …but another intermediate is not.
        let mut with_extra = ints.to_vec();
        with_extra.push(ints[0].clone());
        let err = policy.check(ee, &with_extra).unwrap_err();
        assert!(err.to_string().contains("maximum depth of 5"), "{err}");
    }

    #[test]
    fn human_reasons_are_plain() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(human_reason(&e).contains("trusted CA"));
        let e = other(Error::NotAuthorized(crate::IdentityRejection::new("nope")));
        assert_eq!(human_reason(&e), "not authorized: nope");
        assert!(matches!(into_error(e), Error::NotAuthorized(_)));
    }
}
