//! The server side: a hardened, hot-reloadable `rustls::ServerConfig` that requires and
//! verifies client certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::{HandshakeKind, NamedGroup, ServerConfig, ServerConnection, SupportedProtocolVersion};

use crate::material::{IdentityResolver, LoadedIdentity, load_crls, load_roots};
use crate::pem::Source;
use crate::reload::{self, Build, ReloadHandle, Reloadable, Snapshot};
use crate::trust_domains::TrustDomainBundles;
use crate::verifier::{
    Anchors, ClientVerifier, ClientVerifierOptions, IdentityCache, fingerprint, into_error,
};
use crate::{AuthorizeIdentity, Error, PeerIdentity, TrustDomainPolicy};
use zt_rotate::RotationStatus;

/// Default handshake timeout (enforced by the acceptor, e.g. `zt-tower`'s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between polls of the material files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Default window before expiry in which warnings are logged.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions kept by the server's in-memory resumption cache.
const SESSION_CACHE_SIZE: usize = 4096;

/// Settings shared by the server and client builders.
#[derive(Clone)]
pub(crate) struct CommonSettings {
    pub(crate) allow_tls12: bool,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) kx_groups: Option<Vec<NamedGroup>>,
    pub(crate) reload_interval: Duration,
    pub(crate) expiry_warning: Duration,
    /// SPIFFE trust (a bundle per peer trust domain) when set; one CA bundle otherwise.
    pub(crate) trust_domain_policy: Option<TrustDomainPolicy>,
    /// Stop presenting our certificate once it expired (fail closed).
    pub(crate) refuse_after_expiry: bool,
}

impl Default for CommonSettings {
    fn default() -> Self {
        CommonSettings {
            allow_tls12: false,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            kx_groups: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
            trust_domain_policy: None,
            refuse_after_expiry: false,
        }
    }
}

impl CommonSettings {
    pub(crate) fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        static TLS13_AND_12: &[&SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        if self.allow_tls12 {
            TLS13_AND_12
        } else {
            TLS13_ONLY
        }
    }

    pub(crate) fn provider(&self) -> Result<Arc<CryptoProvider>, Error> {
        let base = crate::crypto_provider();
        let Some(groups) = &self.kx_groups else {
            return Ok(base);
        };
        if groups.is_empty() {
            return Err(Error::Config("key_exchange_groups is empty".into()));
        }
        let mut kx = Vec::with_capacity(groups.len());
        for name in groups {
            let found = base
                .kx_groups
                .iter()
                .find(|g| g.name() == *name)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "key exchange group {name:?} is not offered (use X25519MLKEM768, X25519 or secp256r1)"
                    ))
                })?;
            kx.push(*found);
        }
        let mut provider = (*base).clone();
        provider.kx_groups = kx;
        Ok(Arc::new(provider))
    }

    /// The trust anchors of one build: the CA bundle, or (with a trust-domain policy) the
    /// allowed bundles of the set, keyed by trust domain.
    pub(crate) fn anchors(
        &self,
        identity: &LoadedIdentity,
        ca: (&[u8], &Path),
        snap: &Snapshot,
    ) -> Result<Anchors, Error> {
        match &self.trust_domain_policy {
            None => Ok(Anchors::Single(load_roots(ca.0, ca.1)?)),
            Some(policy) => Ok(Anchors::ByTrustDomain(TrustDomainBundles::select(
                policy,
                &identity.leaf,
                ca,
                &snap.federated,
                snap.initial,
            )?)),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.reload_interval.is_zero() {
            return Err(Error::Config("reload_interval must be above zero".into()));
        }
        if self.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(Error::Config(
                "ALPN protocol names must be 1 to 255 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// A snapshot of the material a [`ServerTls`] or [`ClientTls`](crate::ClientTls) is serving.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct MaterialStatus {
    /// Serial of our certificate (lower-case hex).
    pub serial: String,
    /// Subject of our certificate.
    pub subject: String,
    /// When our certificate expires.
    pub not_after: SystemTime,
    /// Time left until then (zero once expired).
    pub expires_in: Duration,
    /// Whether expiry is within the configured warning window.
    pub expiring_soon: bool,
    /// Bumps by one each time new material is swapped in (1 after `build`), including CA
    /// bundles and CRLs put in service while the certificate written with them was refused.
    pub generation: u64,
    /// When the serving material was loaded.
    pub loaded_at: SystemTime,
    /// The error of the last rejected update, cleared by the next one taken whole.
    pub last_error: Option<Error>,
    /// How many updates were rejected since `build` (a refusal repeated with no update
    /// taken in between, such as the re-checks of a certificate not valid yet, counts once).
    pub rejected_updates: u64,
    /// The same rotation status every ztkit holder reports.
    pub rotation: RotationStatus,
}

// === ServerTlsBuilder ===

/// Builds a [`ServerTls`]: our certificate and key, the CAs that issue client certificates,
/// optional CRLs, and the verification policy. Every default is the strict choice; see
/// `docs/mtls.md` for the full table.
///
/// ```
/// use mtls_verify::{IdentityAuthorizer, ServerTlsBuilder};
/// use ztkit_test_support::TestPki;
///
/// let pki = TestPki::new();
/// let tls = ServerTlsBuilder::from_pem(
///     pki.server.chain_pem.as_bytes(),
///     pki.server.key_pem.as_bytes(),
///     pki.ca.cert_pem.as_bytes(),
/// )
/// .authorizer(IdentityAuthorizer::trust_domain("example.org")?)
/// .build()?;
/// let config = tls.config();
/// assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// assert_eq!(tls.status().serial, pki.server.serial_hex());
///
/// // A key that does not belong to the certificate is refused at build time.
/// let err = ServerTlsBuilder::from_pem(
///     pki.server.chain_pem.as_bytes(),
///     pki.client.key_pem.as_bytes(),
///     pki.ca.cert_pem.as_bytes(),
/// )
/// .build()
/// .unwrap_err();
/// assert!(matches!(err, mtls_verify::Error::KeyMismatch { .. }));
/// # Ok::<(), mtls_verify::Error>(())
/// ```
pub struct ServerTlsBuilder {
    cert: Source,
    key: Source,
    client_ca: Source,
    crls: Vec<Source>,
    federated: Vec<(String, Source)>,
    verifier: ClientVerifierOptions,
    common: CommonSettings,
    handshake_timeout: Duration,
}

impl fmt::Debug for ServerTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsBuilder")
            .field("cert", &self.cert.path())
            .field("key", &self.key.path())
            .field("client_ca", &self.client_ca.path())
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

impl ServerTlsBuilder {
    /// Material from files (PEM): our chain (leaf first), our private key, and the CA bundle
    /// that client certificates must chain to. The files are re-read by
    /// [`ServerTls::spawn_reloader`].
    pub fn from_files(
        cert_chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: impl Into<PathBuf>,
    ) -> Self {
        Self::new(
            Source::File(cert_chain.into()),
            Source::File(key.into()),
            Source::File(client_ca.into()),
        )
    }

    /// Material given as PEM bytes; it cannot be reloaded.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8], client_ca_pem: &[u8]) -> Self {
        Self::new(
            Source::Memory(Arc::from(cert_chain_pem)),
            Source::Memory(Arc::from(key_pem)),
            Source::Memory(Arc::from(client_ca_pem)),
        )
    }

    fn new(cert: Source, key: Source, client_ca: Source) -> Self {
        ServerTlsBuilder {
            cert,
            key,
            client_ca,
            crls: Vec::new(),
            federated: Vec::new(),
            verifier: ClientVerifierOptions::default(),
            common: CommonSettings::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Adds a CRL file (PEM or DER, reloaded with the rest). With CRLs, every certificate in
    /// a client chain must have a known revocation status.
    pub fn crl_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.crls.push(Source::File(path.into()));
        self
    }

    /// Adds CRLs given as PEM bytes.
    pub fn crl_pem(mut self, pem: &[u8]) -> Self {
        self.crls.push(Source::Memory(Arc::from(pem)));
        self
    }

    /// Sets who may connect once the chain verified (default: [`IdentityAuthorizer::any`](crate::IdentityAuthorizer::any)).
    pub fn authorizer(mut self, authorizer: impl AuthorizeIdentity) -> Self {
        self.verifier.authorizer = Arc::new(authorizer);
        self
    }

    /// Accepts client certificates whose revocation status no configured CRL covers
    /// (default: refused, when CRLs are given).
    pub fn allow_unknown_revocation_status(mut self) -> Self {
        self.verifier.allow_unknown_revocation_status = true;
        self
    }

    /// Uses CRLs past their nextUpdate (default: an expired CRL is an error at load time and
    /// fails verification while serving).
    pub fn allow_expired_crls(mut self) -> Self {
        self.verifier.allow_expired_crls = true;
        self
    }

    /// Lets clients connect without a certificate (default: required). A certificate that
    /// is presented is still fully verified; [`ServerTls::peer_identity`] returns `None`
    /// for clients without one.
    pub fn allow_unauthenticated(mut self) -> Self {
        self.verifier.allow_unauthenticated = true;
        self
    }

    /// Also accepts TLS 1.2 (ECDHE with AEAD suites only). Default: TLS 1.3 only.
    pub fn allow_tls12(mut self) -> Self {
        self.common.allow_tls12 = true;
        self
    }

    /// Minimum RSA key size in the client's leaf and intermediates (default 2048; values
    /// below 2048 are refused by `build`).
    pub fn min_rsa_bits(mut self, bits: u32) -> Self {
        self.verifier.policy.min_rsa_bits = bits;
        self
    }

    /// Maximum certificates a client may present, leaf included, not counting a root it
    /// appends (default 5). Checked before any signature is verified.
    pub fn max_chain_depth(mut self, n: usize) -> Self {
        self.verifier.policy.max_chain_depth = n;
        self
    }

    /// ALPN protocols in preference order (default `h2`, `http/1.1`).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.common.alpn = protocols;
        self
    }

    /// How long a handshake may take (default 10 s); enforced by the acceptor, which reads
    /// it from [`ServerTls::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Restricts and orders the key exchange groups (default X25519MLKEM768, X25519,
    /// secp256r1). Meant for benchmarks and interop tests.
    pub fn key_exchange_groups(mut self, groups: &[NamedGroup]) -> Self {
        self.common.kx_groups = Some(groups.to_vec());
        self
    }

    /// How often the reloader polls the files (default 1 s).
    pub fn reload_interval(mut self, interval: Duration) -> Self {
        self.common.reload_interval = interval;
        self
    }

    /// How long before our certificate expires to start warning (default 7 days).
    pub fn expiry_warning(mut self, window: Duration) -> Self {
        self.common.expiry_warning = window;
        self
    }

    /// Reads and validates all material and builds the handle.
    ///
    /// # Errors
    /// A typed error naming the offending file: [`Error::Io`], [`Error::Pem`],
    /// [`Error::NoCertificate`], [`Error::NoPrivateKey`], [`Error::InvalidPrivateKey`],
    /// [`Error::KeyMismatch`], [`Error::CertificateExpired`],
    /// [`Error::CertificateNotYetValid`], [`Error::EmptyCaBundle`],
    /// [`Error::InvalidCaCertificate`], [`Error::Crl`]; [`Error::Config`] for unusable options.
    pub fn build(self) -> Result<ServerTls, Error> {
        self.common.validate()?;
        self.verifier.policy.validate()?;
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config("handshake_timeout must be above zero".into()));
        }
        let provider = self.common.provider()?;
        let mut sources = vec![self.cert, self.key, self.client_ca];
        sources.extend(self.crls);
        let session_storage: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        let parts = Parts {
            sources,
            federated: self.federated,
            verifier: self.verifier,
            common: self.common,
            provider,
            cache: Arc::new(IdentityCache::new()),
            session_storage,
            ticketer,
        };
        let shared = Arc::new(Reloadable::new(parts)?);
        let handshake_timeout = self.handshake_timeout;
        Ok(ServerTls {
            shared,
            handshake_timeout,
        })
    }
}

crate::trust_domains::impl_spiffe_trust_options!(ServerTlsBuilder);

// === ServerTls ===

/// A cheap, cloneable handle to the server's current TLS configuration.
///
/// New handshakes should take [`config`](Self::config) each time (it is an `ArcSwap` load);
/// established connections keep the `Arc` they started with and are unaffected by reloads.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Reloadable<Parts>>,
    handshake_timeout: Duration,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.load();
        f.debug_struct("ServerTls")
            .field("serial", &current.identity.leaf.serial_hex())
            .field("generation", &current.generation)
            .finish_non_exhaustive()
    }
}

struct Parts {
    sources: Vec<Source>,
    federated: Vec<(String, Source)>,
    verifier: ClientVerifierOptions,
    common: CommonSettings,
    provider: Arc<CryptoProvider>,
    cache: Arc<IdentityCache>,
    session_storage: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

/// What one build of the server material produces.
struct ServerConfigs {
    config: Arc<ServerConfig>,
    verifier: Arc<ClientVerifier>,
}

impl Build for Parts {
    type Config = ServerConfigs;
    const WHAT: &'static str = "server";
    const MATERIAL: &'static str = "server TLS material";

    fn sources(&self) -> &[Source] {
        &self.sources
    }

    fn federated_sources(&self) -> &[(String, Source)] {
        &self.federated
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn provider(&self) -> &CryptoProvider {
        &self.provider
    }

    fn config(&self, identity: &LoadedIdentity, snap: &Snapshot) -> Result<ServerConfigs, Error> {
        let [_, _, ca, crl_files @ ..] = snap.contents.as_slice() else {
            return Err(Error::Task("material snapshot is incomplete".into()));
        };
        let [_, _, ca_path, crl_paths @ ..] = snap.paths.as_slice() else {
            return Err(Error::Task("material snapshot is incomplete".into()));
        };
        let anchors = self.common.anchors(identity, (ca, ca_path), snap)?;
        let mut crls = Vec::new();
        for (bytes, path) in crl_files.iter().zip(crl_paths) {
            crls.extend(load_crls(bytes, path, self.verifier.allow_expired_crls)?);
        }
        let verifier = Arc::new(ClientVerifier::with_anchors(
            anchors,
            crls,
            self.verifier.clone(),
            Some(self.cache.clone()),
        )?);
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(self.common.versions())?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(IdentityResolver::new(
                identity,
                self.common.refuse_after_expiry,
            )));
        config.alpn_protocols = self.common.alpn.clone();
        config.session_storage = self.session_storage.clone();
        config.ticketer = self.ticketer.clone();
        Ok(ServerConfigs {
            config: Arc::new(config),
            verifier,
        })
    }
}

impl ServerTls {
    /// The current configuration; each new handshake should load it afresh.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.shared.load().config.config.clone()
    }

    /// The current client-certificate verifier (the one inside [`config`](Self::config)),
    /// for callers that assemble their own `rustls::ServerConfig` or measure it.
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.shared.load().config.verifier.clone()
    }

    /// The configured handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The verified client's identity on an established connection.
    ///
    /// For a full handshake this returns the identity the verifier parsed during the
    /// handshake (parsing again only if it was evicted). A resumed session skipped the
    /// verifier, so its stored chain is verified again with the *current* material,
    /// revocation lists and authorizer.
    ///
    /// # Errors
    /// [`Error::NoPeerCertificate`] if client authentication is required and no certificate
    /// is present (only possible before the handshake completed);
    /// [`Error::HandshakeIncomplete`] while handshaking; for a resumed session, the reason
    /// its chain no longer verifies.
    pub fn peer_identity(
        &self,
        conn: &ServerConnection,
    ) -> Result<Option<Arc<PeerIdentity>>, Error> {
        if conn.is_handshaking() {
            return Err(Error::HandshakeIncomplete);
        }
        let Some((leaf, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first())
        else {
            return if self.shared.parts.verifier.allow_unauthenticated {
                Ok(None)
            } else {
                Err(Error::NoPeerCertificate)
            };
        };
        if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
            let current = self.shared.load();
            let identity = current
                .config
                .verifier
                .verify_identity(leaf, intermediates, UnixTime::now())
                .map_err(into_error)?;
            return Ok(Some(Arc::new(identity)));
        }
        if let Some(identity) = self.shared.parts.cache.take(&fingerprint(leaf)) {
            return Ok(Some(identity));
        }
        Ok(Some(Arc::new(PeerIdentity::from_der(leaf)?)))
    }

    /// Starts polling the material files every `reload_interval` on a background thread
    /// (no async runtime needed). Returns an inert handle when all material was given as
    /// bytes. Polling stops when the handle is dropped; call
    /// [`ReloadHandle::detach`] to keep it running for the lifetime of this `ServerTls`.
    pub fn spawn_reloader(&self) -> ReloadHandle {
        self.shared.spawn_reloader()
    }

    /// Reads the files now and swaps in new material if it changed and is valid (no wait
    /// for the files to settle). Runs on tokio's blocking pool.
    ///
    /// # Errors
    /// The validation error of the new material (which is also counted and logged; the
    /// last good material keeps serving).
    pub async fn reload_now(&self) -> Result<(), Error> {
        reload::reload_now(self.shared.clone()).await
    }

    /// What is serving now and how reloads went.
    pub fn status(&self) -> MaterialStatus {
        self.shared.status()
    }
}

reload::impl_material_holder!(
    /// Updates from any source: validated whole, swapped in for new handshakes, refused
    /// material counted in [`MaterialStatus::rejected_updates`] while the last good set keeps
    /// serving. See [`TlsMaterial`](crate::TlsMaterial) and `docs/rotation.md`.
    ServerTls
);
