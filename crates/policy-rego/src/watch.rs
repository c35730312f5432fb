//! Watching a bundle directory or file and reloading the engine when it changes, on
//! zt-rotate's [`FileWatcher`] and driver.
//!
//! Each poll reads the content once (every file's path and bytes for a directory, read by
//! the bundle rules and within [`BundleLimits`](crate::BundleLimits); the bytes for an
//! archive). New content is acted on only once two consecutive reads gave the same bytes, so
//! a file that is still being written is not loaded half way. Then the engine reloads from
//! the bytes that read judged settled, never from a further read (which could catch a newer
//! or half-written set and file its outcome under the wrong content): the bundle is built
//! from them, compiled and its tests run before it replaces the old one
//! ([`MaterialHolder::update`]); a refused set is logged, recorded in the engine's
//! [`RotationStatus`](zt_rotate::RotationStatus), and not retried until the content changes
//! again. In the background ([`PolicyWatcher::spawn`]) zt-rotate's driver also wakes on
//! inotify events (a Kubernetes `..data` swap is seen before the next poll).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use zt_rotate::{FileRotation, FileSnapshot, FileWatcher, MaterialHolder, RotationStatus};

use crate::bundle::read::read_dir_files;
use crate::bundle::{Bundle, BundleLoader};
use crate::engine::PolicyEngine;
use crate::error::PolicyError;

/// What one poll found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The content is the one in force (or the one last refused).
    Unchanged,
    /// New content (or a read error) was seen for the first time; it is acted on when the
    /// next poll sees the same.
    Pending,
    /// New content was loaded and is now in force.
    Loaded {
        /// The new revision.
        revision: String,
    },
    /// New content was refused; the previous set stays in force.
    Refused {
        /// Why.
        error: PolicyError,
    },
    /// The path could not be read, on two polls in a row (it may be in the middle of being
    /// replaced); the previous set stays in force.
    Unreadable {
        /// Why.
        error: PolicyError,
    },
}

/// Stops the background watcher when dropped or [stopped](zt_rotate::TaskHandle::stop):
/// zt-rotate's handle, shared by every rotating source of the workspace.
pub type WatchHandle = zt_rotate::TaskHandle;

/// What the watcher and its background thread share: the engine, how to make a bundle of
/// what was read, and who listens.
struct Shared {
    engine: PolicyEngine,
    path: PathBuf,
    is_dir: bool,
    loader: BundleLoader,
    files: Mutex<FileWatcher>,
    subscribers: Mutex<Vec<mpsc::Sender<WatchEvent>>>,
}

/// Reloads a [`PolicyEngine`] when its bundle changes on disk.
///
/// Drive it with [`poll`](Self::poll) (deterministic, for tests and custom schedulers) or
/// [`spawn`](Self::spawn) a background thread (zt-rotate's driver) that polls at an interval
/// and on inotify wake-ups.
#[derive(Clone)]
pub struct PolicyWatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// Watches `path` (a bundle directory or a `.tar.gz` file) for `engine`. The content at
    /// `path` now is taken to be the one in force (create the watcher right after loading the
    /// engine from the same path).
    pub fn new(engine: PolicyEngine, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let loader = engine.options().loader().clone();
        let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
        let mut files = file_watcher(&path, is_dir, &loader);
        if let Err(error) = files.mark_current() {
            tracing::debug!(path = %path.display(), %error, "policy bundle unreadable at start");
        }
        Self {
            shared: Arc::new(Shared {
                engine,
                path,
                is_dir,
                loader,
                files: Mutex::new(files),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Receives every event after this call (except [`WatchEvent::Unchanged`]; from the
    /// background thread, only [`Loaded`](WatchEvent::Loaded),
    /// [`Refused`](WatchEvent::Refused) and [`Unreadable`](WatchEvent::Unreadable)).
    pub fn subscribe(&self) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel();
        self.shared
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Checks the path once and acts on what it finds.
    pub fn poll(&self) -> WatchEvent {
        let shared = &self.shared;
        let mut files = shared.files.lock().unwrap_or_else(PoisonError::into_inner);
        let event = match files.poll() {
            zt_rotate::WatchEvent::Unchanged => WatchEvent::Unchanged,
            zt_rotate::WatchEvent::Pending => WatchEvent::Pending,
            zt_rotate::WatchEvent::Changed(snapshot) => {
                return shared.apply(shared.bundle_of(&snapshot));
            }
            zt_rotate::WatchEvent::Unreadable(error) => {
                return shared.unreadable(PolicyError::from(error));
            }
            _ => WatchEvent::Unchanged,
        };
        shared.publish(&event);
        event
    }

    /// Polls every `interval` on a background thread (zt-rotate's driver, which also wakes
    /// on inotify events in the watched directories), until the handle is dropped or
    /// stopped. New content is taken once a read `interval` later gives the same bytes.
    ///
    /// The thread takes over this watcher's state (what is in force, what is pending);
    /// [`poll`](Self::poll) afterwards starts from the content on disk at this call. It keeps
    /// the engine it reloads alive for as long as it runs.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Watch`] if the thread cannot be started.
    pub fn spawn(&self, interval: Duration) -> Result<WatchHandle, PolicyError> {
        let shared = &self.shared;
        let files = {
            let mut guard = shared.files.lock().unwrap_or_else(PoisonError::into_inner);
            let mut fresh = file_watcher(&shared.path, shared.is_dir, &shared.loader);
            // Unreadable now: the next poll reports it.
            let _ = fresh.mark_current();
            std::mem::replace(&mut *guard, fresh)
        };
        let files = files.poll_interval(interval).settle(interval);
        // The loader holds the watcher strongly, so the driver (which holds its holder
        // weakly) runs until the handle stops it, as a policy watcher always has.
        let keep = Arc::clone(shared);
        FileRotation::new(files, move |snapshot: &FileSnapshot| {
            Ok::<_, PolicyError>(keep.bundle_of(snapshot))
        })
        .thread_name("policy-watch")
        .spawn(shared)
        .map_err(PolicyError::from)
    }
}

/// A [`FileWatcher`] that reads `path` as a bundle: an archive within the compressed-size
/// limit, or a directory by the bundle rules (hidden entries, links, limits).
fn file_watcher(path: &Path, is_dir: bool, loader: &BundleLoader) -> FileWatcher {
    let limits = *loader.configured_limits();
    if is_dir {
        FileWatcher::new().dir_with(path, move |dir| {
            let files = read_dir_files(dir, &limits)?;
            Ok(files
                .into_iter()
                .map(|(name, bytes)| (PathBuf::from(name), bytes))
                .collect())
        })
    } else {
        FileWatcher::new()
            .file(path)
            .max_file_size(limits.compressed_bytes_limit())
    }
}

impl Shared {
    /// The bundle made of exactly the snapshot's bytes, as [`BundleLoader::load_path`]
    /// would make it.
    fn bundle_of(&self, snapshot: &FileSnapshot) -> Result<Bundle, PolicyError> {
        let name = self.path.display().to_string();
        if self.is_dir {
            let files: BTreeMap<String, Vec<u8>> = snapshot
                .files_under(&self.path)
                .map(|(rel, bytes)| {
                    let rel = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    (rel, bytes.to_vec())
                })
                .collect();
            self.loader.assemble(name, files)
        } else {
            let bytes = snapshot.get(&self.path).unwrap_or_default();
            self.loader.load_tar_gz(&name, bytes)
        }
    }

    /// Hands a bundle made of settled bytes (or why they make none) to the engine and tells
    /// the subscribers.
    fn apply(&self, bundle: Result<Bundle, PolicyError>) -> WatchEvent {
        let outcome = match bundle {
            Ok(bundle) => self.engine.update(bundle),
            Err(error) => {
                // Bytes that settled but do not make a bundle are refused content, as a set
                // that does not compile is.
                self.engine
                    .refuse(&self.path.display().to_string(), error.clone());
                Err(error)
            }
        };
        let event = match outcome {
            Ok(()) => WatchEvent::Loaded {
                revision: self.engine.revision(),
            },
            Err(error) => WatchEvent::Refused { error },
        };
        self.publish(&event);
        event
    }

    /// Records that the path could not be read and tells the subscribers.
    fn unreadable(&self, error: PolicyError) -> WatchEvent {
        tracing::debug!(path = %self.path.display(), %error, "policy bundle unreadable");
        self.engine.source_failed(error.clone());
        let event = WatchEvent::Unreadable { error };
        self.publish(&event);
        event
    }

    fn publish(&self, event: &WatchEvent) {
        if matches!(event, WatchEvent::Unchanged) {
            return;
        }
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|tx| tx.send(event.clone()).is_ok());
    }
}

/// The background driver's view of the watcher: a bundle made of settled bytes (or why they
/// make none) goes to the engine, outcomes to the subscribers.
impl MaterialHolder for Shared {
    type Material = Result<Bundle, PolicyError>;
    type Error = PolicyError;

    fn update(&self, bundle: Result<Bundle, PolicyError>) -> Result<(), PolicyError> {
        match self.apply(bundle) {
            WatchEvent::Refused { error } => Err(error),
            _ => Ok(()),
        }
    }

    fn source_failed(&self, error: PolicyError) {
        self.unreadable(error);
    }

    fn status(&self) -> RotationStatus {
        self.engine.status()
    }
}

impl From<zt_rotate::Error> for PolicyError {
    fn from(error: zt_rotate::Error) -> Self {
        match &error {
            // The bundle reader's own refusal (a link, a limit, an unreadable file).
            zt_rotate::Error::Read { reason, .. } => reason
                .downcast_ref::<PolicyError>()
                .cloned()
                .unwrap_or(PolicyError::Watch(error)),
            zt_rotate::Error::FileTooLarge { .. } => PolicyError::Limit(error.to_string()),
            zt_rotate::Error::Io { path, source } => PolicyError::Io {
                path: path.display().to_string(),
                source: Arc::clone(source),
            },
            _ => PolicyError::Watch(error),
        }
    }
}
