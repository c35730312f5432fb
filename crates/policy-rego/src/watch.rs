//! Watching a bundle directory or file and reloading the engine when it changes.
//!
//! Each poll reads the content once (every file's path and bytes for a directory, the bytes
//! for an archive) and takes its SHA-256 fingerprint. A new fingerprint is acted on only once
//! it has been seen on two consecutive polls, so a file that is still being written is not
//! loaded half way. Then the engine reloads from the bytes that poll read and fingerprinted,
//! never from a further read (which could catch a newer or half-written set and file its
//! outcome under the wrong fingerprint): the set is built, compiled and its tests run before
//! it replaces the old one; a refused set is logged and not retried until the content changes
//! again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_lc_rs::digest;

use crate::bundle::read::{read_dir_files, read_file_limited};
use crate::bundle::{Bundle, BundleLoader};
use crate::engine::PolicyEngine;
use crate::error::PolicyError;

/// What one poll found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The content is the one in force (or the one last refused).
    Unchanged,
    /// New content was seen for the first time; it is loaded when the next poll sees it
    /// unchanged.
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
    /// The path could not be read (it may be in the middle of being replaced).
    Unreadable {
        /// Why.
        error: PolicyError,
    },
}

type Fingerprint = [u8; 32];

#[derive(Default)]
struct State {
    in_force: Option<Fingerprint>,
    refused: Option<Fingerprint>,
    pending: Option<Fingerprint>,
}

struct Shared {
    engine: PolicyEngine,
    path: PathBuf,
    state: Mutex<State>,
    subscribers: Mutex<Vec<mpsc::Sender<WatchEvent>>>,
}

/// Reloads a [`PolicyEngine`] when its bundle changes on disk.
///
/// Drive it with [`poll`](Self::poll) (deterministic, for tests and custom schedulers) or
/// [`spawn`](Self::spawn) a background thread that polls at an interval.
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
    /// Watches `path` for `engine`. The content at `path` now is taken to be the one in
    /// force (create the watcher right after loading the engine from the same path).
    pub fn new(engine: PolicyEngine, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let in_force = Snapshot::read(&path, engine.options().loader())
            .ok()
            .map(|s| s.fingerprint());
        Self {
            shared: Arc::new(Shared {
                engine,
                path,
                state: Mutex::new(State {
                    in_force,
                    ..State::default()
                }),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Receives every event after this call (except [`WatchEvent::Unchanged`]).
    pub fn subscribe(&self) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel();
        if let Ok(mut subs) = self.shared.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    /// Checks the path once and acts on what it finds.
    pub fn poll(&self) -> WatchEvent {
        let event = self.poll_inner();
        if !matches!(event, WatchEvent::Unchanged)
            && let Ok(mut subs) = self.shared.subscribers.lock()
        {
            subs.retain(|tx| tx.send(event.clone()).is_ok());
        }
        event
    }

    fn poll_inner(&self) -> WatchEvent {
        let shared = &self.shared;
        let loader = shared.engine.options().loader();
        let snapshot = match Snapshot::read(&shared.path, loader) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::debug!(path = %shared.path.display(), %error, "policy bundle unreadable");
                return WatchEvent::Unreadable { error };
            }
        };
        let fp = snapshot.fingerprint();
        let Ok(mut state) = shared.state.lock() else {
            return WatchEvent::Unchanged;
        };
        if state.in_force == Some(fp) || state.refused == Some(fp) {
            state.pending = None;
            return WatchEvent::Unchanged;
        }
        if state.pending != Some(fp) {
            state.pending = Some(fp);
            return WatchEvent::Pending;
        }
        state.pending = None;
        let source = shared.path.display().to_string();
        let bundle = snapshot.into_bundle(source.clone(), loader);
        match shared.engine.reload_loaded(&source, bundle) {
            Ok(revision) => {
                state.in_force = Some(fp);
                state.refused = None;
                WatchEvent::Loaded { revision }
            }
            Err(error) => {
                state.refused = Some(fp);
                WatchEvent::Refused { error }
            }
        }
    }

    /// Polls every `interval` on a background thread until the handle is dropped or
    /// [`WatchHandle::stop`] is called.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Io`] if the thread cannot be started.
    pub fn spawn(&self, interval: Duration) -> Result<WatchHandle, PolicyError> {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                // Any message or a dropped sender stops the loop.
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    me.poll();
                }
            })
            .map_err(|e| PolicyError::io("policy watcher thread", e))?;
        Ok(WatchHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// Stops the background watcher when dropped.
#[derive(Debug)]
pub struct WatchHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Stops the watcher and waits for its thread to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The bundle as one poll read it: the files of a directory or the bytes of an archive.
enum Snapshot {
    Dir(BTreeMap<String, Vec<u8>>),
    Archive(Vec<u8>),
}

impl Snapshot {
    /// Reads `path` once, within `loader`'s limits.
    fn read(path: &Path, loader: &BundleLoader) -> Result<Self, PolicyError> {
        let limits = loader.configured_limits();
        let meta = std::fs::metadata(path).map_err(|e| PolicyError::io(path.display(), e))?;
        Ok(if meta.is_dir() {
            Snapshot::Dir(read_dir_files(path, limits)?)
        } else {
            Snapshot::Archive(read_file_limited(path, limits.compressed_bytes_limit())?)
        })
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut ctx = digest::Context::new(&digest::SHA256);
        match self {
            Snapshot::Dir(files) => {
                for (name, content) in files {
                    ctx.update(&(name.len() as u64).to_le_bytes());
                    ctx.update(name.as_bytes());
                    ctx.update(&(content.len() as u64).to_le_bytes());
                    ctx.update(content);
                }
            }
            Snapshot::Archive(bytes) => ctx.update(bytes),
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The bundle made of exactly these bytes, as [`BundleLoader::load_path`] would make it.
    fn into_bundle(self, name: String, loader: &BundleLoader) -> Result<Bundle, PolicyError> {
        match self {
            Snapshot::Dir(files) => loader.assemble(name, files),
            Snapshot::Archive(bytes) => loader.load_tar_gz(&name, &bytes),
        }
    }
}
