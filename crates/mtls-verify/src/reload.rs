//! Hot reload: poll the material files, wait for them to settle, validate, swap.
//!
//! Files are read by path on every poll, so both ways cert-manager and people update them
//! are seen: the Kubernetes `..data` symlink swap (the path resolves to the new directory)
//! and editors writing in place. A change is applied only once two reads in a row give the
//! same bytes, so a half-written file is never taken; bad material is logged, counted and
//! ignored while the last good set keeps serving.
//!
//! Two refinements keep a rotation from getting stuck:
//!
//! - A refusal that depends on the clock (our certificate not valid yet, or expired; a CRL
//!   past its nextUpdate) is validated again, quietly, on every later poll: a certificate
//!   issued a few seconds ahead of this host's clock is taken from the first poll after its
//!   notBefore, with no further file change. Other refusals are remembered by hash and not
//!   looked at again until the files change.
//! - A refused certificate or key never holds back the rest of the set: the CA bundle and
//!   CRLs written with it are put in service with the certificate already serving (as their
//!   own generation), so revocations apply from the first poll that reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::material::{CRL_EXPIRED, LoadedIdentity, load_identity};
use crate::pem::Source;
use crate::server::{CommonSettings, MaterialStatus};

/// How long to wait before the confirming second read after a change was seen.
const SETTLE: Duration = Duration::from_millis(100);
/// At most one expiry warning per this period (plus one per swap).
const EXPIRY_WARNING_PERIOD: Duration = Duration::from_secs(3600);
/// The first this many files are our own certificate chain and key; the others (the CA
/// bundle, CRLs) say whom we trust.
const IDENTITY_FILES: usize = 2;

/// The bytes of every material file, read in one pass, with each file's hash and the set's.
pub(crate) struct Snapshot {
    pub(crate) contents: Vec<Arc<[u8]>>,
    /// SHA-256 of each file, in order.
    pub(crate) digests: Vec<[u8; 32]>,
    /// The hash of the whole set ([`set_hash`] of `digests`).
    pub(crate) hash: [u8; 32],
}

pub(crate) fn snapshot(sources: &[Source]) -> Result<Snapshot, Error> {
    let mut contents = Vec::with_capacity(sources.len());
    let mut digests = Vec::with_capacity(sources.len());
    for source in sources {
        let bytes = source.read()?;
        digests.push(Sha256::digest(&bytes).into());
        contents.push(bytes);
    }
    let hash = set_hash(&digests);
    Ok(Snapshot {
        contents,
        digests,
        hash,
    })
}

/// The hash of a set of files from the hashes of its files.
fn set_hash(digests: &[[u8; 32]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for digest in digests {
        hasher.update(digest);
    }
    hasher.finalize().into()
}

/// Whether a refusal could turn into an acceptance of the same bytes as time passes (or the
/// host's clock is corrected), so that the same files are worth validating again.
fn depends_on_clock(e: &Error) -> bool {
    match e {
        Error::CertificateNotYetValid { .. } | Error::CertificateExpired { .. } => true,
        Error::Crl { reason, .. } => reason.starts_with(CRL_EXPIRED),
        _ => false,
    }
}

/// Counters and the last error, shared by a TLS handle and its reloader.
#[derive(Default)]
pub(crate) struct StatusCell {
    rejected: AtomicU64,
    last_error: Mutex<Option<Error>>,
    last_expiry_warning: Mutex<Option<Instant>>,
}

impl StatusCell {
    pub(crate) fn reject(&self, what: &str, e: Error) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            material = what,
            reason = %e,
            "rejected new TLS material; still serving the last good set"
        );
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
    }

    pub(crate) fn accepted(&self) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
        if let Ok(mut w) = self.last_expiry_warning.lock() {
            *w = None;
        }
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn last_error(&self) -> Option<Error> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Logs a warning if `not_after` is within `window`, at most once per hour.
    pub(crate) fn check_expiry(
        &self,
        what: &str,
        serial: &str,
        not_after: SystemTime,
        window: Duration,
    ) {
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left > window {
            return;
        }
        let Ok(mut last) = self.last_expiry_warning.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < EXPIRY_WARNING_PERIOD) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            material = what,
            serial,
            not_after = %crate::identity::rfc3339(not_after),
            expires_in_secs = left.as_secs(),
            "TLS certificate expires soon; rotate it"
        );
    }
}

/// Something whose material can be reloaded from files.
pub(crate) trait Reload: Send + Sync + 'static {
    /// A name for logs (`server` / `client`).
    fn what(&self) -> &'static str;
    /// The files, in the order `apply` expects their contents.
    fn sources(&self) -> &[Source];
    /// The hash of the material now serving.
    fn applied_hash(&self) -> [u8; 32];
    /// Validates the snapshot and swaps it in. On success the status cell is marked accepted
    /// before the new material is published (a status showing it never shows the error it
    /// replaced). On refusal the error is reported to the status cell first when `report`
    /// is set; then, if only our certificate or key was refused, the snapshot's other files
    /// are published with the certificate already serving when they are valid and differ
    /// from those serving (a status showing them also shows why the certificate was not
    /// taken).
    fn apply(&self, snapshot: &Snapshot, report: bool) -> Result<(), Error>;
    /// The status cell.
    fn status_cell(&self) -> &StatusCell;
    /// Warns if the serving certificate expires soon (rate-limited).
    fn check_expiry(&self);
    /// Serializes `apply` between the reloader thread and `reload_now`.
    fn reload_lock(&self) -> &Mutex<()>;
    /// Called with the hash of every snapshot the poller reads (a hook for tests).
    fn observed(&self, _hash: &[u8; 32]) {}
}

/// One side's TLS configuration (server or client), built from the material files.
pub(crate) trait Build: Send + Sync + 'static {
    /// What one build produces and handshakes use.
    type Config: Send + Sync + 'static;
    /// A name for logs (`server` / `client`).
    const WHAT: &'static str;
    /// The files: our certificate chain and key ([`IDENTITY_FILES`]), then the files that
    /// say whom we trust, in the order `config` expects them.
    fn sources(&self) -> &[Source];
    /// The reload interval and expiry-warning window.
    fn common(&self) -> &CommonSettings;
    /// The provider our private key is loaded with.
    fn provider(&self) -> &CryptoProvider;
    /// Validates the snapshot's trust files (those after [`IDENTITY_FILES`]) and builds the
    /// configuration that presents `identity`.
    fn config(&self, identity: &LoadedIdentity, snapshot: &Snapshot)
    -> Result<Self::Config, Error>;
}

/// Validates the snapshot's certificate chain and key.
fn identity_of<B: Build>(parts: &B, snapshot: &Snapshot) -> Result<LoadedIdentity, Error> {
    let ([cert, key, ..], [cert_src, key_src, ..]) =
        (snapshot.contents.as_slice(), parts.sources())
    else {
        return Err(Error::Task("material snapshot is incomplete".into()));
    };
    load_identity(cert, cert_src.path(), key, key_src.path(), parts.provider())
}

/// One built set of material, swapped in whole.
pub(crate) struct Generation<C> {
    pub(crate) config: C,
    pub(crate) identity: LoadedIdentity,
    pub(crate) generation: u64,
    /// SHA-256 of each file this generation was built from.
    digests: Vec<[u8; 32]>,
    pub(crate) hash: [u8; 32],
    pub(crate) loaded_at: SystemTime,
}

impl<C> Generation<C> {
    fn new(config: C, identity: LoadedIdentity, digests: Vec<[u8; 32]>, generation: u64) -> Self {
        Generation {
            config,
            identity,
            generation,
            hash: set_hash(&digests),
            digests,
            loaded_at: SystemTime::now(),
        }
    }
}

/// The material one side serves: the build parts, the current generation (an `ArcSwap`, so
/// handshakes never wait for a reload) and the reload bookkeeping.
pub(crate) struct Reloadable<B: Build> {
    pub(crate) parts: B,
    current: ArcSwap<Generation<B::Config>>,
    status: StatusCell,
    reload_lock: Mutex<()>,
}

impl<B: Build> Reloadable<B> {
    /// Reads the files and builds generation 1.
    pub(crate) fn new(parts: B) -> Result<Self, Error> {
        let snap = snapshot(parts.sources())?;
        let identity = identity_of(&parts, &snap)?;
        let config = parts.config(&identity, &snap)?;
        let first = Generation::new(config, identity, snap.digests, 1);
        let this = Reloadable {
            parts,
            current: ArcSwap::from_pointee(first),
            status: StatusCell::default(),
            reload_lock: Mutex::new(()),
        };
        this.check_expiry();
        Ok(this)
    }

    /// The generation serving now.
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Generation<B::Config>>> {
        self.current.load()
    }

    /// What is serving now and how reloads went.
    pub(crate) fn status(&self) -> MaterialStatus {
        let current = self.current.load();
        let leaf = &current.identity.leaf;
        let expires_in = leaf
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        MaterialStatus {
            serial: leaf.serial_hex().to_owned(),
            subject: leaf.subject().to_owned(),
            not_after: leaf.not_after(),
            expires_in,
            expiring_soon: expires_in <= self.parts.common().expiry_warning,
            generation: current.generation,
            loaded_at: current.loaded_at,
            last_error: self.status.last_error(),
            rejected_updates: self.status.rejected(),
        }
    }

    /// Starts the background poller.
    pub(crate) fn spawn_reloader(self: &Arc<Self>) -> ReloadHandle {
        spawn(self, self.parts.common().reload_interval)
    }

    /// After our certificate or key in `snapshot` was refused: publishes the snapshot's trust
    /// files (CA bundle, CRLs) with the identity serving now, if they differ and are valid.
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
                let next = current.generation + 1;
                let generation = Generation::new(config, current.identity.clone(), digests, next);
                tracing::info!(
                    material = B::WHAT,
                    serial = current.identity.leaf.serial_hex(),
                    generation = next,
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
}

impl<B: Build> Reload for Reloadable<B> {
    fn what(&self) -> &'static str {
        B::WHAT
    }

    fn sources(&self) -> &[Source] {
        self.parts.sources()
    }

    fn applied_hash(&self) -> [u8; 32] {
        self.current.load().hash
    }

    fn apply(&self, snapshot: &Snapshot, report: bool) -> Result<(), Error> {
        // Callers hold the reload lock: nothing else publishes until we return.
        let current = self.current.load_full();
        let identity = match identity_of(&self.parts, snapshot) {
            Ok(identity) => identity,
            Err(e) => {
                if report {
                    self.status.reject(B::WHAT, e.clone());
                }
                self.apply_trust(&current, snapshot, report);
                return Err(e);
            }
        };
        let config = match self.parts.config(&identity, snapshot) {
            Ok(config) => config,
            Err(e) => {
                if report {
                    self.status.reject(B::WHAT, e.clone());
                }
                return Err(e);
            }
        };
        let next = current.generation + 1;
        let generation = Generation::new(config, identity, snapshot.digests.clone(), next);
        tracing::info!(
            material = B::WHAT,
            serial = generation.identity.leaf.serial_hex(),
            generation = next,
            "new TLS material in use"
        );
        // Accepted before published (the `Reload::apply` contract).
        self.status.accepted();
        self.current.store(Arc::new(generation));
        Ok(())
    }

    fn status_cell(&self) -> &StatusCell {
        &self.status
    }

    fn check_expiry(&self) {
        let current = self.current.load();
        self.status.check_expiry(
            B::WHAT,
            current.identity.leaf.serial_hex(),
            current.identity.leaf.not_after(),
            self.parts.common().expiry_warning,
        );
    }

    fn reload_lock(&self) -> &Mutex<()> {
        &self.reload_lock
    }
}

/// One reload attempt without waiting for the files to settle: for `reload_now`.
pub(crate) fn reload_once<R: Reload>(target: &R) -> Result<(), Error> {
    let _guard = target
        .reload_lock()
        .lock()
        .map_err(|_| Error::Task("reload lock poisoned".into()))?;
    let snap = match snapshot(target.sources()) {
        Ok(s) => s,
        Err(e) => {
            target.status_cell().reject(target.what(), e.clone());
            return Err(e);
        }
    };
    if snap.hash == target.applied_hash() {
        return Ok(());
    }
    target.apply(&snap, true)?;
    target.check_expiry();
    Ok(())
}

/// Runs [`reload_once`] on tokio's blocking pool.
pub(crate) async fn reload_now<R: Reload>(target: Arc<R>) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || reload_once(&*target))
        .await
        .map_err(|e| Error::Task(format!("reload task: {e}")))?
}

/// What the handle tells the reloader thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Keep polling until the TLS handle itself is dropped.
    Detach,
}

/// Handle to a background reloader; dropping it (or calling [`stop`](Self::stop)) stops the
/// polling, [`detach`](Self::detach) lets it run for as long as the TLS handle lives.
#[derive(Debug)]
#[must_use = "the reloader stops when its handle is dropped; keep it or call .detach()"]
pub struct ReloadHandle {
    stop: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl ReloadHandle {
    /// A handle that does nothing (material given as bytes cannot change).
    pub(crate) fn inert() -> Self {
        ReloadHandle {
            stop: None,
            thread: None,
        }
    }

    /// Whether a reloader is polling files.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Lets the reloader run until the `ServerTls`/`ClientTls` (all clones) is dropped.
    pub fn detach(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(Command::Detach);
        }
        self.thread.take();
    }

    /// Stops polling and waits for the reloader to finish its current step.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which then exits on its own.
        self.stop.take();
    }
}

/// Starts polling `target`'s files every `interval` on a dedicated thread.
pub(crate) fn spawn<R: Reload>(target: &Arc<R>, interval: Duration) -> ReloadHandle {
    if target
        .sources()
        .iter()
        .all(|s| matches!(s, Source::Memory(_)))
    {
        return ReloadHandle::inert();
    }
    let weak = Arc::downgrade(target);
    let what = target.what();
    let (tx, rx) = mpsc::channel::<Command>();
    let spawned = std::thread::Builder::new()
        .name(format!("mtls-reload-{what}"))
        .spawn(move || poll_loop(&weak, &rx, interval, SETTLE.min(interval)));
    match spawned {
        Ok(thread) => ReloadHandle {
            stop: Some(tx),
            thread: Some(thread),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot start the TLS material reloader thread");
            ReloadHandle::inert()
        }
    }
}

/// Content that `apply` refused, remembered so it is not validated and reported on every poll.
struct Refused {
    hash: [u8; 32],
    /// The refusal depends on the clock: the same bytes are validated again, quietly, on
    /// every poll until they are taken or refused for another reason.
    recheck: bool,
}

fn poll_loop<R: Reload>(
    target: &Weak<R>,
    stop: &mpsc::Receiver<Command>,
    interval: Duration,
    settle: Duration,
) {
    let mut wait = interval;
    // The hash seen once and waiting for a confirming read.
    let mut pending: Option<[u8; 32]> = None;
    let mut refused: Option<Refused> = None;
    // A read error seen once (files may be mid-swap) and one already reported.
    let mut pending_read_error: Option<String> = None;
    let mut reported_read_error: Option<String> = None;
    let mut detached = false;
    loop {
        if detached {
            std::thread::sleep(wait);
        } else {
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Command::Detach) => detached = true,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(target) = target.upgrade() else {
            return;
        };
        wait = interval;
        let Ok(_guard) = target.reload_lock().lock() else {
            return;
        };
        let snap = match snapshot(target.sources()) {
            Ok(s) => {
                pending_read_error = None;
                reported_read_error = None;
                s
            }
            Err(e) => {
                let text = e.to_string();
                if pending_read_error.as_deref() == Some(&text) {
                    if reported_read_error.as_deref() != Some(&text) {
                        target.status_cell().reject(target.what(), e);
                        reported_read_error = Some(text);
                    }
                } else {
                    pending_read_error = Some(text);
                    wait = settle;
                }
                continue;
            }
        };
        target.observed(&snap.hash);
        if snap.hash == target.applied_hash() {
            pending = None;
            target.check_expiry();
            continue;
        }
        if let Some(r) = refused.as_mut().filter(|r| r.hash == snap.hash) {
            // These bytes were confirmed by two reads when first refused.
            pending = None;
            if r.recheck {
                match target.apply(&snap, false) {
                    Ok(()) => {
                        refused = None;
                        target.check_expiry();
                    }
                    Err(e) if !depends_on_clock(&e) => {
                        // Past the clock, something else is wrong: report it, once.
                        r.recheck = false;
                        target.status_cell().reject(target.what(), e);
                    }
                    Err(_) => {}
                }
            }
            continue;
        }
        if pending != Some(snap.hash) {
            pending = Some(snap.hash);
            wait = settle;
            continue;
        }
        pending = None;
        match target.apply(&snap, true) {
            Ok(()) => {
                refused = None;
                target.check_expiry();
            }
            Err(e) => {
                refused = Some(Refused {
                    hash: snap.hash,
                    recheck: depends_on_clock(&e),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    /// A reload target over one file that accepts only content ending in "END\n", refuses
    /// content starting with "later" as not yet valid until `valid_later` is set, and records
    /// every content it was asked to apply.
    struct Fake {
        sources: Vec<Source>,
        reads: AtomicUsize,
        seen: Mutex<Vec<[u8; 32]>>,
        applied: Mutex<Vec<String>>,
        hash: Mutex<[u8; 32]>,
        status: StatusCell,
        lock: Mutex<()>,
        valid_later: std::sync::atomic::AtomicBool,
    }

    impl Fake {
        fn new(sources: Vec<Source>) -> Arc<Fake> {
            let first = snapshot(&sources).unwrap();
            Arc::new(Fake {
                sources,
                reads: AtomicUsize::new(0),
                seen: Mutex::new(Vec::new()),
                applied: Mutex::new(Vec::new()),
                hash: Mutex::new(first.hash),
                status: StatusCell::default(),
                lock: Mutex::new(()),
                valid_later: std::sync::atomic::AtomicBool::new(false),
            })
        }
    }

    impl Reload for Fake {
        fn what(&self) -> &'static str {
            "fake"
        }
        fn sources(&self) -> &[Source] {
            self.reads.fetch_add(1, Ordering::SeqCst);
            &self.sources
        }
        fn applied_hash(&self) -> [u8; 32] {
            *self.hash.lock().unwrap()
        }
        fn apply(&self, snapshot: &Snapshot, report: bool) -> Result<(), Error> {
            let text = String::from_utf8_lossy(&snapshot.contents[0]).into_owned();
            self.applied.lock().unwrap().push(text.clone());
            let e = if !text.ends_with("END\n") {
                Some(Error::Certificate("incomplete".into()))
            } else if text.starts_with("later") && !self.valid_later.load(Ordering::SeqCst) {
                Some(Error::CertificateNotYetValid {
                    path: "material".into(),
                    not_before: "later".into(),
                })
            } else {
                None
            };
            if let Some(e) = e {
                if report {
                    self.status.reject("fake", e.clone());
                }
                return Err(e);
            }
            self.status.accepted();
            *self.hash.lock().unwrap() = snapshot.hash;
            Ok(())
        }
        fn status_cell(&self) -> &StatusCell {
            &self.status
        }
        fn check_expiry(&self) {}
        fn observed(&self, hash: &[u8; 32]) {
            self.seen.lock().unwrap().push(*hash);
        }
        fn reload_lock(&self) -> &Mutex<()> {
            &self.lock
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_change_is_applied_only_once_two_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let file: PathBuf = dir.path().join("material");
        std::fs::write(&file, "v1 END\n").unwrap();
        let fake = Fake::new(vec![Source::File(file.clone())]);
        // A long settle delay gives this test ample time between the reloader's reads.
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&fake);
        let thread = std::thread::spawn(move || {
            poll_loop(
                &weak,
                &rx,
                Duration::from_millis(20),
                Duration::from_millis(1500),
            )
        });

        // Half a write: seen once, then replaced by the complete content before the
        // confirming read. The half-written content must never reach `apply`.
        std::fs::write(&file, "v2 partial").unwrap();
        let partial = snapshot(&[Source::File(file.clone())]).unwrap().hash;
        wait_until("the reloader to see the partial file", || {
            fake.seen.lock().unwrap().contains(&partial)
        });
        std::fs::write(&file, "v2 complete END\n").unwrap();
        wait_until("v2 applied", || !fake.applied.lock().unwrap().is_empty());
        assert_eq!(*fake.applied.lock().unwrap(), ["v2 complete END\n"]);
        assert_eq!(fake.status.rejected(), 0);

        // Content that stays bad is validated once, counted once, and not retried.
        std::fs::write(&file, "v3 broken").unwrap();
        wait_until("v3 rejected", || fake.status.rejected() == 1);
        let reads = fake.reads.load(Ordering::SeqCst);
        wait_until("more polls", || {
            fake.reads.load(Ordering::SeqCst) >= reads + 5
        });
        assert_eq!(fake.status.rejected(), 1);
        assert_eq!(fake.applied.lock().unwrap().len(), 2);
        assert!(fake.status.last_error().is_some());

        drop(tx);
        thread.join().unwrap();
    }

    #[test]
    fn the_reloader_stops_when_its_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("material");
        std::fs::write(&file, "v1 END\n").unwrap();
        let fake = Fake::new(vec![Source::File(file)]);
        let handle = spawn(&fake, Duration::from_millis(10));
        assert!(handle.is_running());
        wait_until("a poll", || fake.reads.load(Ordering::SeqCst) > 0);
        // The thread holds the only weak reference; it is gone once the thread has exited.
        assert_eq!(Arc::weak_count(&fake), 1);
        drop(handle);
        wait_until("the reloader thread to exit", || {
            Arc::weak_count(&fake) == 0
        });

        let handle = spawn(&fake, Duration::from_millis(10));
        assert!(handle.is_running());
        handle.stop();
        assert_eq!(Arc::weak_count(&fake), 0);

        // A detached reloader keeps polling until the target itself is dropped.
        spawn(&fake, Duration::from_millis(10)).detach();
        let reads = fake.reads.load(Ordering::SeqCst);
        wait_until("polls after detach", || {
            fake.reads.load(Ordering::SeqCst) > reads + 2
        });

        // Any reloader exits once the TLS handle it serves is gone.
        let handle = spawn(&fake, Duration::from_millis(10));
        drop(fake);
        wait_until("the reloader to exit", || !handle.is_running());
    }

    #[test]
    fn a_refusal_that_depends_on_the_clock_is_checked_again_on_later_polls() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("material");
        std::fs::write(&file, "v1 END\n").unwrap();
        let fake = Fake::new(vec![Source::File(file.clone())]);
        let handle = spawn(&fake, Duration::from_millis(5));

        std::fs::write(&file, "later v2 END\n").unwrap();
        wait_until("v2 refused", || fake.status.rejected() == 1);
        assert!(matches!(
            fake.status.last_error(),
            Some(Error::CertificateNotYetValid { .. })
        ));
        // Checked again on every poll, quietly: counted and reported once.
        let tries = fake.applied.lock().unwrap().len();
        wait_until("re-checks", || {
            fake.applied.lock().unwrap().len() >= tries + 3
        });
        assert_eq!(fake.status.rejected(), 1);

        // Once the clock allows it, the same bytes are taken with no file change.
        fake.valid_later.store(true, Ordering::SeqCst);
        wait_until("v2 applied", || fake.status.last_error().is_none());
        let applied = fake.applied.lock().unwrap().clone();
        assert!(applied.iter().all(|a| a == "later v2 END\n"), "{applied:?}");
        assert_eq!(fake.status.rejected(), 1);
        let tries = applied.len();
        let reads = fake.reads.load(Ordering::SeqCst);
        wait_until("more polls", || {
            fake.reads.load(Ordering::SeqCst) >= reads + 3
        });
        assert_eq!(fake.applied.lock().unwrap().len(), tries, "applied again");
        handle.stop();
    }
}
