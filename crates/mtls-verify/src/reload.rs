//! Rotation of the TLS material: the server and client holders, fed through
//! [`MaterialHolder`] by `zt-rotate`'s file watcher or by any source of your own.
//!
//! A [`ServerTls`](crate::ServerTls) or [`ClientTls`](crate::ClientTls) *is* the holder:
//! [`MaterialHolder::update`] takes a [`TlsMaterial`] (our chain and key, the CA bundle,
//! CRLs), validates all of it, builds the rustls configuration and swaps it in whole
//! (`ArcSwap`: handshakes never wait for an update). Refused material is logged, counted
//! and ignored while the last good set keeps serving.
//!
//! Files are one source among others: [`spawn_reloader`](crate::ServerTls::spawn_reloader)
//! runs `zt-rotate`'s watcher over the material files. It re-reads them by path on every poll
//! and on inotify events in their directories, so both ways cert-manager and people update
//! them are seen: the Kubernetes `..data` symlink swap and editors writing in place. A
//! change is taken only once two reads in a row give the same bytes, and the bytes
//! validated are those two reads saw.
//!
//! Two refinements keep a rotation from getting stuck:
//!
//! - A refusal that depends on the clock (our certificate not valid yet, or expired; a CRL
//!   past its nextUpdate) is [transient](MaterialHolder::is_transient): the watcher validates
//!   the same bytes again, quietly, with backoff capped at the reload interval, so a
//!   certificate issued a few seconds ahead of this host's clock is taken right after its
//!   notBefore with no further file change. Other refusals are not looked at again until the
//!   files change.
//! - A refused certificate or key never holds back the rest of the set: the CA bundle and
//!   CRLs written with it are put in service with the certificate already serving (as their
//!   own generation), so revocations apply from the first update that carries them.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use sha2::{Digest, Sha256};
use zt_rotate::{
    FileRotation, FileSnapshot, FileWatcher, MaterialHolder, Publication, RotationStatus,
    StatusRecorder,
};

use crate::Error;
use crate::error::MEMORY;
use crate::material::{CRL_EXPIRED, LoadedIdentity, load_identity};
use crate::pem::{MAX_FILE_SIZE, Source};
use crate::server::{CommonSettings, MaterialStatus};
use crate::trust_domains::FederatedPart;

/// Owns the background reloader started by `spawn_reloader`: `zt-rotate`'s
/// [`TaskHandle`](zt_rotate::TaskHandle). Dropping it (or calling `stop`) stops the
/// polling; `detach` lets it run for as long as the `ServerTls`/`ClientTls` lives.
pub type ReloadHandle = zt_rotate::TaskHandle;

/// How long after a change was seen the confirming read happens.
const SETTLE: Duration = Duration::from_millis(100);
/// At most one expiry warning per this period (plus one per new certificate).
const EXPIRY_WARNING_PERIOD: Duration = Duration::from_secs(3600);
/// The first this many parts are our own certificate chain and key; the others (the CA
/// bundle, CRLs) say whom we trust.
const IDENTITY_FILES: usize = 2;

// === TlsMaterial ===

/// One complete set of TLS material, as an update to a [`ServerTls`](crate::ServerTls) or
/// [`ClientTls`](crate::ClientTls) carries it: our certificate chain (leaf first) and private
/// key, the CA bundle that peers' certificates must chain to, and (server only) CRLs. PEM or
/// DER, as in the files.
///
/// ```
/// use mtls_verify::{MaterialHolder, ServerTlsBuilder, TlsMaterial};
/// use ztkit_test_support::TestPki;
///
/// let (old, new) = (TestPki::new(), TestPki::new());
/// let tls = ServerTlsBuilder::from_pem(
///     old.server.chain_pem.as_bytes(),
///     old.server.key_pem.as_bytes(),
///     old.ca.cert_pem.as_bytes(),
/// )
/// .build()?;
/// // Material from anywhere (a secrets manager, the SPIFFE Workload API…):
/// tls.update(TlsMaterial::from_pem(
///     new.server.chain_pem.as_bytes(),
///     new.server.key_pem.as_bytes(),
///     new.ca.cert_pem.as_bytes(),
/// ))?;
/// assert_eq!(tls.status().serial, new.server.serial_hex());
/// assert_eq!(tls.status().generation, 2);
///
/// // Refused material leaves the last good set serving.
/// let mismatched = TlsMaterial::from_pem(
///     new.server.chain_pem.as_bytes(),
///     old.server.key_pem.as_bytes(),
///     new.ca.cert_pem.as_bytes(),
/// );
/// assert!(matches!(tls.update(mismatched), Err(mtls_verify::Error::KeyMismatch { .. })));
/// assert_eq!(tls.status().serial, new.server.serial_hex());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
#[derive(Clone)]
pub struct TlsMaterial {
    /// Each part's name for errors (a file path, or `<memory>`) and its bytes: chain, key,
    /// CA bundle, then CRLs.
    parts: Vec<(PathBuf, Arc<[u8]>)>,
    /// Federated trust domains' bundles, used by holders with a trust-domain policy.
    federated: Vec<FederatedPart>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and sizes only: never key bytes.
        let mut list = f.debug_list();
        for (name, bytes) in &self.parts {
            list.entry(&format_args!("{} ({} bytes)", name.display(), bytes.len()));
        }
        for (td, name, bytes) in &self.federated {
            list.entry(&format_args!(
                "bundle of {td}: {} ({} bytes)",
                name.display(),
                bytes.len()
            ));
        }
        list.finish()
    }
}

impl TlsMaterial {
    /// Our chain and key, and the CA bundle for peers, as bytes.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Self {
        let part = |bytes: &[u8]| (PathBuf::from(MEMORY), Arc::from(bytes));
        TlsMaterial {
            parts: vec![part(cert_chain_pem), part(key_pem), part(ca_pem)],
            federated: Vec::new(),
        }
    }

    /// Adds the bundle of a federated trust domain (PEM, DER, or SPIFFE bundle JSON). Only a
    /// holder built with a [trust-domain policy](crate::TrustDomainPolicy) uses it, for peers
    /// of that trust domain the policy allows; the CA bundle is the local trust domain's.
    pub fn federated_bundle(mut self, trust_domain: &str, bundle: &[u8]) -> Self {
        self.federated.push((
            trust_domain.to_owned(),
            PathBuf::from(MEMORY),
            Arc::from(bundle),
        ));
        self
    }

    /// Adds CRLs (PEM or DER; a server's only: a client refuses material with CRLs).
    pub fn crl_pem(mut self, pem: &[u8]) -> Self {
        self.parts.push((PathBuf::from(MEMORY), Arc::from(pem)));
        self
    }

    /// Reads every source now (files by path; bytes as given).
    pub(crate) fn read(sources: &[Source], federated: &[(String, Source)]) -> Result<Self, Error> {
        let mut parts = Vec::with_capacity(sources.len());
        for source in sources {
            parts.push((source.path().to_owned(), source.read()?));
        }
        let mut bundles = Vec::with_capacity(federated.len());
        for (td, source) in federated {
            bundles.push((td.clone(), source.path().to_owned(), source.read()?));
        }
        Ok(TlsMaterial {
            parts,
            federated: bundles,
        })
    }

    /// The material in a watcher's snapshot: each file's bytes as the snapshot holds them.
    fn from_snapshot(
        sources: &[Source],
        federated: &[(String, Source)],
        snapshot: &FileSnapshot,
    ) -> Result<Self, Error> {
        let bytes_of = |source: &Source| match source {
            Source::File(path) => snapshot.get_shared(path).ok_or_else(|| {
                Error::Task(format!("{} is missing from the snapshot", path.display()))
            }),
            Source::Memory(bytes) => Ok(bytes.clone()),
        };
        let mut parts = Vec::with_capacity(sources.len());
        for source in sources {
            parts.push((source.path().to_owned(), bytes_of(source)?));
        }
        let mut bundles = Vec::with_capacity(federated.len());
        for (td, source) in federated {
            bundles.push((td.clone(), source.path().to_owned(), bytes_of(source)?));
        }
        Ok(TlsMaterial {
            parts,
            federated: bundles,
        })
    }
}

/// The parts of one update with their hashes, as the builds read them.
pub(crate) struct Snapshot {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) contents: Vec<Arc<[u8]>>,
    /// Federated trust domains' bundles.
    pub(crate) federated: Vec<FederatedPart>,
    /// Whether this is the material a builder starts from (`build`), not an update.
    pub(crate) initial: bool,
    /// SHA-256 of each part, in order, then of each federated bundle (with its name).
    digests: Vec<[u8; 32]>,
}

impl Snapshot {
    fn of(material: TlsMaterial) -> Self {
        let (paths, contents): (Vec<_>, Vec<_>) = material.parts.into_iter().unzip();
        let mut digests: Vec<[u8; 32]> =
            contents.iter().map(|c| Sha256::digest(c).into()).collect();
        for (td, _, bytes) in &material.federated {
            let mut hash = Sha256::new();
            hash.update(td.as_bytes());
            hash.update([0]);
            hash.update(bytes);
            digests.push(hash.finalize().into());
        }
        Snapshot {
            paths,
            contents,
            federated: material.federated,
            initial: false,
            digests,
        }
    }
}

/// Whether a refusal could turn into an acceptance of the same bytes as time passes (or the
/// host's clock is corrected), so that the same material is worth validating again.
pub(crate) fn depends_on_clock(e: &Error) -> bool {
    match e {
        Error::CertificateNotYetValid { .. } | Error::CertificateExpired { .. } => true,
        Error::Crl { reason, .. } => reason.starts_with(CRL_EXPIRED),
        _ => false,
    }
}

impl From<zt_rotate::Error> for Error {
    fn from(e: zt_rotate::Error) -> Self {
        match e {
            zt_rotate::Error::Io { path, source } => Error::Io { path, source },
            zt_rotate::Error::FileTooLarge { path, size, limit } => {
                Error::FileTooLarge { path, size, limit }
            }
            other => Error::Task(other.to_string()),
        }
    }
}

// === Build ===

/// One side's TLS configuration (server or client), built from the material.
pub(crate) trait Build: Send + Sync + 'static {
    /// What one build produces and handshakes use.
    type Config: Send + Sync + 'static;
    /// A name for logs (`server` / `client`).
    const WHAT: &'static str;
    /// The same, naming the material (for the rotation status's logs).
    const MATERIAL: &'static str;
    /// The material's sources given to the builder: our certificate chain and key
    /// ([`IDENTITY_FILES`]), then those that say whom we trust.
    fn sources(&self) -> &[Source];
    /// The federated trust domains' bundles given to the builder.
    fn federated_sources(&self) -> &[(String, Source)];
    /// The reload interval and expiry-warning window.
    fn common(&self) -> &CommonSettings;
    /// The provider our private key is loaded with.
    fn provider(&self) -> &CryptoProvider;
    /// Validates the snapshot's trust parts (those after [`IDENTITY_FILES`]) and builds the
    /// configuration that presents `identity`.
    fn config(&self, identity: &LoadedIdentity, snapshot: &Snapshot)
    -> Result<Self::Config, Error>;
}

/// Validates the snapshot's certificate chain and key.
fn identity_of<B: Build>(parts: &B, snapshot: &Snapshot) -> Result<LoadedIdentity, Error> {
    let ([cert, key, ..], [cert_path, key_path, ..]) =
        (snapshot.contents.as_slice(), snapshot.paths.as_slice())
    else {
        return Err(Error::Task("TLS material is incomplete".into()));
    };
    load_identity(cert, cert_path, key, key_path, parts.provider())
}

/// One built set of material, swapped in whole.
pub(crate) struct Generation<C> {
    pub(crate) config: C,
    pub(crate) identity: LoadedIdentity,
    pub(crate) generation: u64,
    /// SHA-256 of each part this generation was built from.
    digests: Vec<[u8; 32]>,
    pub(crate) loaded_at: SystemTime,
}

impl<C> Generation<C> {
    fn new(
        config: C,
        identity: LoadedIdentity,
        digests: Vec<[u8; 32]>,
        publication: Publication,
    ) -> Self {
        Generation {
            config,
            identity,
            generation: publication.generation,
            digests,
            loaded_at: publication.at,
        }
    }

    /// How long until the serving certificate expires (zero once it has).
    fn expires_in(&self) -> Duration {
        self.identity
            .leaf
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

// === Reloadable ===

/// The material one side serves: the build parts, the current generation (an `ArcSwap`, so
/// handshakes never wait for an update) and the rotation status.
pub(crate) struct Reloadable<B: Build> {
    pub(crate) parts: B,
    current: ArcSwap<Generation<B::Config>>,
    status: StatusRecorder<Error>,
    last_expiry_warning: Mutex<Option<Instant>>,
    /// Serialises updates (the watcher, `reload_now` and pushes of other sources).
    update_lock: Mutex<()>,
}

impl<B: Build> Reloadable<B> {
    /// Reads the sources and builds generation 1.
    pub(crate) fn new(parts: B) -> Result<Self, Error> {
        let mut snap = Snapshot::of(TlsMaterial::read(
            parts.sources(),
            parts.federated_sources(),
        )?);
        snap.initial = true;
        let identity = identity_of(&parts, &snap)?;
        let config = parts.config(&identity, &snap)?;
        let status = StatusRecorder::new(B::MATERIAL);
        let first = Generation::new(config, identity, snap.digests, status.record_published());
        let this = Reloadable {
            parts,
            current: ArcSwap::from_pointee(first),
            status,
            last_expiry_warning: Mutex::new(None),
            update_lock: Mutex::new(()),
        };
        this.check_expiry();
        Ok(this)
    }

    /// The generation serving now.
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Generation<B::Config>>> {
        self.current.load()
    }

    /// What is serving now and how updates went.
    pub(crate) fn status(&self) -> MaterialStatus {
        let current = self.current.load();
        let leaf = &current.identity.leaf;
        let expires_in = current.expires_in();
        let rotation = self.status.snapshot();
        MaterialStatus {
            serial: leaf.serial_hex().to_owned(),
            subject: leaf.subject().to_owned(),
            not_after: leaf.not_after(),
            expires_in,
            expiring_soon: expires_in <= self.parts.common().expiry_warning,
            generation: current.generation,
            loaded_at: current.loaded_at,
            last_error: self.status.last_error(),
            rejected_updates: rotation.failures,
            rotation,
        }
    }

    /// Starts the background watcher over the material files.
    pub(crate) fn spawn_reloader(self: &Arc<Self>) -> ReloadHandle {
        let sources = self.parts.sources().to_vec();
        let federated = self.parts.federated_sources().to_vec();
        let mut watcher = FileWatcher::new()
            .poll_interval(self.parts.common().reload_interval)
            .settle(SETTLE)
            .max_file_size(MAX_FILE_SIZE);
        let mut files = 0;
        for source in sources.iter().chain(federated.iter().map(|(_, s)| s)) {
            if let Source::File(path) = source {
                watcher = watcher.file(path);
                files += 1;
            }
        }
        if files == 0 {
            return ReloadHandle::inert();
        }
        let spawned = FileRotation::new(watcher, move |snapshot: &FileSnapshot| {
            TlsMaterial::from_snapshot(&sources, &federated, snapshot)
        })
        .thread_name(format!("mtls-reload-{}", B::WHAT))
        .on_poll(Self::check_expiry)
        .spawn(self);
        spawned.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot start the TLS material reloader");
            ReloadHandle::inert()
        })
    }

    /// Reads the files now and applies them (no wait for them to settle).
    fn reload_once(&self) -> Result<(), Error> {
        let material = TlsMaterial::read(self.parts.sources(), self.parts.federated_sources())
            .inspect_err(|e| {
                self.status.record_failure(e.clone());
            })?;
        self.update(material)
    }

    /// After our certificate or key in `snapshot` was refused: publishes the snapshot's trust
    /// parts (CA bundle, CRLs) with the identity serving now, if they differ and are valid.
    fn apply_trust(&self, current: &Generation<B::Config>, snapshot: &Snapshot, report: bool) {
        let digests: Vec<[u8; 32]> = current
            .digests
            .iter()
            .take(IDENTITY_FILES)
            .chain(snapshot.digests.iter().skip(IDENTITY_FILES))
            .copied()
            .collect();
        if digests == current.digests {
            return;
        }
        match self.parts.config(&current.identity, snapshot) {
            Ok(config) => {
                let publication = self.status.record_partial_publication();
                let generation =
                    Generation::new(config, current.identity.clone(), digests, publication);
                tracing::info!(
                    material = B::WHAT,
                    serial = current.identity.leaf.serial_hex(),
                    generation = generation.generation,
                    "new CA bundle and CRLs in use with the certificate already serving"
                );
                self.current.store(Arc::new(generation));
            }
            Err(e) if report => tracing::warn!(
                material = B::WHAT,
                reason = %e,
                "the CA bundle and CRLs written with the refused certificate are refused too"
            ),
            Err(_) => {}
        }
    }

    /// Warns if the serving certificate expires within the window, at most once per hour.
    fn check_expiry(&self) {
        let current = self.current.load();
        let leaf = &current.identity.leaf;
        let left = current.expires_in();
        if left > self.parts.common().expiry_warning {
            return;
        }
        let mut last = self
            .last_expiry_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < EXPIRY_WARNING_PERIOD) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            material = B::WHAT,
            serial = leaf.serial_hex(),
            not_after = %crate::identity::rfc3339(leaf.not_after()),
            expires_in_secs = left.as_secs(),
            "TLS certificate expires soon; rotate it"
        );
    }
}

impl<B: Build> MaterialHolder for Reloadable<B> {
    type Material = TlsMaterial;
    type Error = Error;

    fn update(&self, material: TlsMaterial) -> Result<(), Error> {
        let _serial = self
            .update_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = Snapshot::of(material);
        let current = self.current.load_full();
        if snapshot.digests == current.digests {
            return Ok(());
        }
        let identity = match identity_of(&self.parts, &snapshot) {
            Ok(identity) => identity,
            Err(e) => {
                // A repeat of the same refusal (a retry) is neither counted nor logged.
                let new = self.status.record_failure(e.clone());
                self.apply_trust(&current, &snapshot, new);
                return Err(e);
            }
        };
        let config = match self.parts.config(&identity, &snapshot) {
            Ok(config) => config,
            Err(e) => {
                self.status.record_failure(e.clone());
                return Err(e);
            }
        };
        // Recorded before published: a status showing the new material never shows the
        // error it replaced.
        let publication = self.status.record_published();
        let generation = Generation::new(config, identity, snapshot.digests, publication);
        tracing::info!(
            material = B::WHAT,
            serial = generation.identity.leaf.serial_hex(),
            generation = generation.generation,
            "new TLS material in use"
        );
        self.current.store(Arc::new(generation));
        // A new certificate gets its own expiry warning.
        *self
            .last_expiry_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.check_expiry();
        Ok(())
    }

    fn source_failed(&self, error: Error) {
        self.status.record_failure(error);
    }

    fn status(&self) -> RotationStatus {
        self.status.snapshot()
    }

    fn is_transient(&self, error: &Error) -> bool {
        depends_on_clock(error)
    }
}

/// Implements [`MaterialHolder`] for a public handle by delegating to its `shared`
/// [`Reloadable`].
macro_rules! impl_material_holder {
    ($(#[$doc:meta])* $handle:ty) => {
        $(#[$doc])*
        impl zt_rotate::MaterialHolder for $handle {
            type Material = crate::TlsMaterial;
            type Error = crate::Error;

            fn update(&self, material: crate::TlsMaterial) -> Result<(), crate::Error> {
                zt_rotate::MaterialHolder::update(&*self.shared, material)
            }

            fn source_failed(&self, error: crate::Error) {
                zt_rotate::MaterialHolder::source_failed(&*self.shared, error);
            }

            fn status(&self) -> zt_rotate::RotationStatus {
                zt_rotate::MaterialHolder::status(&*self.shared)
            }

            fn is_transient(&self, error: &crate::Error) -> bool {
                zt_rotate::MaterialHolder::is_transient(&*self.shared, error)
            }
        }
    };
}
pub(crate) use impl_material_holder;

/// Runs [`Reloadable::reload_once`] on tokio's blocking pool.
pub(crate) async fn reload_now<B: Build>(target: Arc<Reloadable<B>>) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || target.reload_once())
        .await
        .map_err(|e| Error::Task(format!("reload task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerTlsBuilder;
    use ztkit_test_support::TestPki;

    #[test]
    fn material_equal_to_what_serves_is_taken_without_a_new_generation() {
        let pki = TestPki::new();
        let pem =
            [&pki.server.chain_pem, &pki.server.key_pem, &pki.ca.cert_pem].map(|p| p.as_bytes());
        let tls = ServerTlsBuilder::from_pem(pem[0], pem[1], pem[2])
            .build()
            .unwrap();
        let same = TlsMaterial::from_pem(pem[0], pem[1], pem[2]);
        assert!(!format!("{same:?}").contains("PRIVATE"), "{same:?}");
        tls.update(same).unwrap();
        let status = MaterialHolder::status(&tls);
        assert_eq!((status.generation, status.failures), (1, 0));
    }

    #[test]
    fn a_client_refuses_material_with_crls_and_counts_a_repeat_once() {
        let pki = TestPki::new();
        let tls = crate::ClientTlsBuilder::from_pem(
            pki.client.chain_pem.as_bytes(),
            pki.client.key_pem.as_bytes(),
            pki.ca.cert_pem.as_bytes(),
        )
        .build()
        .unwrap();
        let with_crl = || {
            TlsMaterial::from_pem(
                pki.server.chain_pem.as_bytes(),
                pki.server.key_pem.as_bytes(),
                pki.ca.cert_pem.as_bytes(),
            )
            .crl_pem(pki.ca.crl(&[]).pem.as_bytes())
        };
        let err = tls.update(with_crl()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(tls.update(with_crl()).is_err());
        let status = tls.status();
        assert_eq!((status.generation, status.rejected_updates), (1, 1));
        assert!(!tls.is_transient(&err));
        assert!(tls.is_transient(&Error::CertificateNotYetValid {
            path: "x".into(),
            not_before: "later".into(),
        }));
    }
}
