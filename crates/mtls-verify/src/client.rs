//! The client side: outbound mTLS with our certificate, verifying the server's chain and
//! identity, hot-reloadable like the server side.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, NamedGroup};

use crate::material::{IdentityResolver, LoadedIdentity};
use crate::pem::Source;
use crate::reload::{self, Build, ReloadHandle, Reloadable, Snapshot};
use crate::server::{CommonSettings, MaterialStatus};
use crate::verifier::{ChainPolicy, ServerVerifier};
use crate::{AuthorizeIdentity, Error, IdentityAuthorizer};

/// Builds a [`ClientTls`] for outbound mTLS (tonic `Channel`, hyper client): our certificate
/// and key, the CA bundle that server certificates must chain to, and an optional authorizer
/// for the server's identity.
///
/// The server's certificate is checked against the name the client connects to (as in any
/// TLS client) *and* against the authorizer. With a SPIFFE authorizer, the hostname check
/// can be replaced by the authorizer through the named opt-in
/// [`allow_any_hostname`](Self::allow_any_hostname)
/// (SPIFFE workloads often have no DNS name matching the address dialled).
///
/// ```
/// use mtls_verify::{ClientTlsBuilder, IdentityAuthorizer};
/// use ztkit_test_support::TestPki;
///
/// let pki = TestPki::new();
/// let tls = ClientTlsBuilder::from_pem(
///     pki.client.chain_pem.as_bytes(),
///     pki.client.key_pem.as_bytes(),
///     pki.ca.cert_pem.as_bytes(),
/// )
/// .server_authorizer(IdentityAuthorizer::dns_san_patterns(["localhost"])?)
/// .build()?;
/// assert!(tls.config().client_auth_cert_resolver.has_certs());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
pub struct ClientTlsBuilder {
    cert: Source,
    key: Source,
    server_ca: Source,
    federated: Vec<(String, Source)>,
    authorizer: Option<IdentityAuthorizer>,
    identity_only: bool,
    policy: ChainPolicy,
    common: CommonSettings,
}

impl fmt::Debug for ClientTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsBuilder")
            .field("cert", &self.cert.path())
            .field("key", &self.key.path())
            .field("server_ca", &self.server_ca.path())
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

impl ClientTlsBuilder {
    /// Material from files (PEM): our chain, our key, and the CA bundle for servers.
    pub fn from_files(
        cert_chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        server_ca: impl Into<PathBuf>,
    ) -> Self {
        Self::new(
            Source::File(cert_chain.into()),
            Source::File(key.into()),
            Source::File(server_ca.into()),
        )
    }

    /// Material given as PEM bytes; it cannot be reloaded.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8], server_ca_pem: &[u8]) -> Self {
        Self::new(
            Source::Memory(Arc::from(cert_chain_pem)),
            Source::Memory(Arc::from(key_pem)),
            Source::Memory(Arc::from(server_ca_pem)),
        )
    }

    fn new(cert: Source, key: Source, server_ca: Source) -> Self {
        ClientTlsBuilder {
            cert,
            key,
            server_ca,
            federated: Vec::new(),
            authorizer: None,
            identity_only: false,
            policy: ChainPolicy::default(),
            common: CommonSettings::default(),
        }
    }

    /// Checks the server's identity (SPIFFE ID, DNS SANs…) after its chain verified,
    /// in addition to the hostname check.
    pub fn server_authorizer(mut self, authorizer: IdentityAuthorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Skips the hostname check and relies on the server authorizer alone. `build` refuses
    /// this unless the authorizer is SPIFFE-based (exact IDs or a trust domain).
    pub fn allow_any_hostname(mut self) -> Self {
        self.identity_only = true;
        self
    }

    /// ALPN protocols offered (default `h2`, `http/1.1`).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.common.alpn = protocols;
        self
    }

    /// Also offers TLS 1.2 (ECDHE with AEAD suites only). Default: TLS 1.3 only.
    pub fn allow_tls12(mut self) -> Self {
        self.common.allow_tls12 = true;
        self
    }

    /// Minimum RSA key size in the server's chain (default 2048).
    pub fn min_rsa_bits(mut self, bits: u32) -> Self {
        self.policy.min_rsa_bits = bits;
        self
    }

    /// Maximum certificates the server may present (default 5).
    pub fn max_chain_depth(mut self, n: usize) -> Self {
        self.policy.max_chain_depth = n;
        self
    }

    /// Restricts and orders the key exchange groups offered.
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
    /// The same typed, file-naming errors as
    /// [`ServerTlsBuilder::build`](crate::ServerTlsBuilder::build), and
    /// [`Error::Config`] for the hostname opt-in without a SPIFFE authorizer.
    pub fn build(self) -> Result<ClientTls, Error> {
        self.common.validate()?;
        self.policy.validate()?;
        if self.identity_only
            && !self
                .authorizer
                .as_ref()
                .is_some_and(IdentityAuthorizer::is_spiffe_based)
        {
            return Err(Error::Config(
                "allow_any_hostname needs a SPIFFE-based server_authorizer \
                 (spiffe_ids or trust_domain)"
                    .into(),
            ));
        }
        let provider = self.common.provider()?;
        let sources = vec![self.cert, self.key, self.server_ca];
        let parts = ClientParts {
            sources,
            federated: self.federated,
            authorizer: self
                .authorizer
                .map(|a| Arc::new(a) as Arc<dyn AuthorizeIdentity>),
            identity_only: self.identity_only,
            policy: self.policy,
            common: self.common,
            provider,
            sessions: Arc::new(ClientSessionMemoryCache::new(256)),
        };
        let shared = Arc::new(Reloadable::new(parts)?);
        Ok(ClientTls { shared })
    }
}

crate::trust_domains::impl_spiffe_trust_options!(ClientTlsBuilder);

/// A cheap, cloneable handle to the client's current TLS configuration.
#[derive(Clone)]
pub struct ClientTls {
    shared: Arc<Reloadable<ClientParts>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.load();
        f.debug_struct("ClientTls")
            .field("serial", &current.identity.leaf.serial_hex())
            .field("generation", &current.generation)
            .finish_non_exhaustive()
    }
}

struct ClientParts {
    sources: Vec<Source>,
    federated: Vec<(String, Source)>,
    authorizer: Option<Arc<dyn AuthorizeIdentity>>,
    identity_only: bool,
    policy: ChainPolicy,
    common: CommonSettings,
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn ClientSessionStore>,
}

impl Build for ClientParts {
    type Config = Arc<ClientConfig>;
    const WHAT: &'static str = "client";
    const MATERIAL: &'static str = "client TLS material";

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

    fn config(
        &self,
        identity: &LoadedIdentity,
        snap: &Snapshot,
    ) -> Result<Arc<ClientConfig>, Error> {
        let ([_, _, ca], [_, _, ca_path]) = (snap.contents.as_slice(), snap.paths.as_slice())
        else {
            return Err(if snap.contents.len() > 3 {
                Error::Config("client TLS material takes no CRLs".into())
            } else {
                Error::Task("material snapshot is incomplete".into())
            });
        };
        let anchors = self.common.anchors(identity, (ca, ca_path), snap)?;
        let verifier = Arc::new(ServerVerifier::new(
            anchors,
            self.policy,
            self.authorizer.clone(),
            !self.identity_only,
        )?);
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(self.common.versions())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(IdentityResolver::new(
                identity,
                self.common.refuse_after_expiry,
            )));
        config.alpn_protocols = self.common.alpn.clone();
        config.resumption = Resumption::store(self.sessions.clone());
        Ok(Arc::new(config))
    }
}

impl ClientTls {
    /// The current configuration; each new connection should load it afresh.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.shared.load().config.clone()
    }

    /// Starts polling the material files on a background thread; see
    /// [`ServerTls::spawn_reloader`](crate::ServerTls::spawn_reloader).
    pub fn spawn_reloader(&self) -> ReloadHandle {
        self.shared.spawn_reloader()
    }

    /// Reads the files now and swaps in new material if it changed and is valid.
    ///
    /// # Errors
    /// The validation error of the new material (the last good material keeps serving).
    pub async fn reload_now(&self) -> Result<(), Error> {
        reload::reload_now(self.shared.clone()).await
    }

    /// What is serving now and how reloads went.
    pub fn status(&self) -> MaterialStatus {
        self.shared.status()
    }
}

reload::impl_material_holder!(
    /// Updates from any source, as for [`ServerTls`](crate::ServerTls); a client's material has
    /// no CRLs.
    ClientTls
);
