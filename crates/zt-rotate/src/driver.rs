//! Running a file watcher into a holder on a background thread.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::task::StopSignal;
use crate::watch::{FileSnapshot, FileWatcher, WatchEvent};
use crate::{Error, MaterialHolder, TaskHandle};

/// Runs a [`FileWatcher`] into a holder: each settled change goes through the loader (which
/// turns the snapshot's bytes into the holder's material) and [`MaterialHolder::update`].
///
/// Refused material is counted and logged by the holder and the last good material keeps
/// serving; it is not looked at again until the files change, unless the holder calls the
/// refusal [transient](MaterialHolder::is_transient) (a certificate not valid yet): then the
/// same snapshot is retried with capped backoff (see [`FileWatcher::retry_backoff`]) until
/// it is taken or refused for another reason. A path that stays unreadable is reported to
/// [`MaterialHolder::source_failed`].
///
/// The thread holds the holder weakly: it ends when the holder is dropped, when the
/// returned handle is dropped or stopped, whichever comes first (after
/// [`TaskHandle::detach`], only the former).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use zt_rotate::{FileRotation, FileWatcher, MaterialHolder, RotationStatus, StatusRecorder};
///
/// /// Holds the text of one file (a real holder would parse and publish with ArcSwap).
/// struct Motd {
///     text: std::sync::Mutex<String>,
///     status: StatusRecorder<zt_rotate::Error>,
/// }
/// impl MaterialHolder for Motd {
///     type Material = String;
///     type Error = zt_rotate::Error;
///     fn update(&self, text: String) -> Result<(), zt_rotate::Error> {
///         self.status.record_published();
///         *self.text.lock().unwrap() = text;
///         Ok(())
///     }
///     fn source_failed(&self, error: zt_rotate::Error) {
///         self.status.record_failure(error);
///     }
///     fn status(&self) -> RotationStatus {
///         self.status.snapshot()
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("motd");
/// std::fs::write(&path, "hello")?;
/// let motd = Arc::new(Motd { text: Default::default(), status: StatusRecorder::new("motd") });
/// let watcher = FileWatcher::new().file(&path).poll_interval(Duration::from_millis(20));
/// let file = path.clone();
/// let handle = zt_rotate::watch_files(watcher, &motd, move |snapshot| {
///     Ok(String::from_utf8_lossy(snapshot.get(&file).unwrap_or_default()).into_owned())
/// })?;
/// let deadline = std::time::Instant::now() + Duration::from_secs(10);
/// while motd.status().generation < 1 {
///     assert!(std::time::Instant::now() < deadline);
///     std::thread::sleep(Duration::from_millis(5));
/// }
/// assert_eq!(*motd.text.lock().unwrap(), "hello");
/// drop(handle); // stops the thread
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::Spawn`] if the thread cannot be started.
pub fn watch_files<H, L>(
    watcher: FileWatcher,
    holder: &Arc<H>,
    loader: L,
) -> Result<TaskHandle, Error>
where
    H: MaterialHolder + 'static,
    H::Error: From<Error>,
    L: FnMut(&FileSnapshot) -> Result<H::Material, H::Error> + Send + 'static,
{
    FileRotation::new(watcher, loader).spawn(holder)
}

type PollHook<H> = Box<dyn FnMut(&H) + Send>;

/// [`watch_files`] with options: a thread name, and a hook run after every poll.
pub struct FileRotation<H, L> {
    watcher: FileWatcher,
    loader: L,
    name: String,
    on_poll: Option<PollHook<H>>,
}

impl<H, L> fmt::Debug for FileRotation<H, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRotation")
            .field("watcher", &self.watcher)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<H, L> FileRotation<H, L>
where
    H: MaterialHolder + 'static,
    H::Error: From<Error>,
    L: FnMut(&FileSnapshot) -> Result<H::Material, H::Error> + Send + 'static,
{
    /// Feeds what `watcher` sees through `loader`.
    pub fn new(watcher: FileWatcher, loader: L) -> Self {
        FileRotation {
            watcher,
            loader,
            name: "zt-rotate-watch".to_owned(),
            on_poll: None,
        }
    }

    /// Names the thread (default `zt-rotate-watch`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs `hook` with the holder after every poll (periodic checks such as expiry
    /// warnings).
    pub fn on_poll(mut self, hook: impl FnMut(&H) + Send + 'static) -> Self {
        self.on_poll = Some(Box::new(hook));
        self
    }

    /// Starts the thread.
    ///
    /// # Errors
    /// [`Error::Spawn`] if the thread cannot be started.
    pub fn spawn(self, holder: &Arc<H>) -> Result<TaskHandle, Error> {
        let weak = Arc::downgrade(holder);
        let name = self.name.clone();
        TaskHandle::spawn_thread(&name, move |stop| self.run(&weak, &stop))
    }

    fn run(mut self, holder: &Weak<H>, stop: &StopSignal) {
        #[cfg(target_os = "linux")]
        let inotify = if self.watcher.inotify {
            crate::watch::inotify::Inotify::new()
        } else {
            None
        };
        let interval = self.watcher.poll_interval;
        let settle = self.watcher.settle_window();
        let (retry_min, retry_max) = self.watcher.retry_bounds();
        let mut retry: Option<Retry> = None;
        let mut next_poll = Instant::now();
        // Events in a busy directory wake at most one read per settle window.
        let mut last_poll = next_poll.checked_sub(settle).unwrap_or(next_poll);
        let mut pending = false;
        loop {
            let deadline = retry.as_ref().map_or(next_poll, |r| r.at.min(next_poll));
            #[cfg(target_os = "linux")]
            if let Some(inotify) = &inotify {
                inotify.watch(&self.watcher.directories_to_watch());
                match inotify.wait(stop, deadline) {
                    crate::watch::inotify::Woken::Stop => return,
                    // A change while a read waits to be confirmed does not hurry the
                    // confirmation: the settle window runs from the first read.
                    crate::watch::inotify::Woken::Changed if !pending => {
                        next_poll = next_poll.min((last_poll + settle).max(Instant::now()));
                    }
                    _ => {}
                }
            } else if stop.wait_until(deadline) {
                return;
            }
            #[cfg(not(target_os = "linux"))]
            if stop.wait_until(deadline) {
                return;
            }
            let now = Instant::now();
            if now < next_poll && retry.as_ref().is_none_or(|r| now < r.at) {
                continue;
            }
            let Some(holder) = holder.upgrade() else {
                return;
            };
            pending = false;
            last_poll = now;
            next_poll = now + interval;
            match self.watcher.poll() {
                WatchEvent::Pending => {
                    pending = true;
                    next_poll = now + settle;
                }
                WatchEvent::Changed(snapshot) => {
                    retry = self
                        .apply(&holder, &snapshot)
                        .then(|| Retry::first(snapshot, retry_min));
                }
                WatchEvent::Unchanged => {
                    if let Some(r) = retry.take_if(|r| now >= r.at) {
                        retry = self.apply(&holder, &r.snapshot).then(|| r.next(retry_max));
                    }
                }
                WatchEvent::Unreadable(error) => holder.source_failed(H::Error::from(error)),
            }
            if let Some(hook) = &mut self.on_poll {
                hook(&holder);
            }
        }
    }

    /// Loads and updates; true if the refusal is transient (worth retrying as it is).
    fn apply(&mut self, holder: &H, snapshot: &FileSnapshot) -> bool {
        match (self.loader)(snapshot) {
            Ok(material) => match holder.update(material) {
                Ok(()) => false,
                Err(e) => holder.is_transient(&e),
            },
            Err(e) => {
                let transient = holder.is_transient(&e);
                holder.source_failed(e);
                transient
            }
        }
    }
}

/// A snapshot refused for a transient reason, retried as it is.
struct Retry {
    snapshot: FileSnapshot,
    at: Instant,
    backoff: Duration,
}

impl Retry {
    fn first(snapshot: FileSnapshot, backoff: Duration) -> Self {
        Retry {
            snapshot,
            at: Instant::now() + backoff,
            backoff,
        }
    }

    fn next(self, max: Duration) -> Self {
        let backoff = self.backoff.saturating_mul(2).min(max);
        Retry {
            snapshot: self.snapshot,
            at: Instant::now() + backoff,
            backoff,
        }
    }
}
