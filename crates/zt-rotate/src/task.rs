//! Background tasks owned by a handle: stopped when the handle is dropped.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

/// Owns a background task (a thread, or a tokio task with the `tokio` feature) that feeds
/// a holder. Dropping the handle or calling [`stop`](Self::stop) stops the task and waits
/// for a thread to finish its current step; [`detach`](Self::detach) lets it run on (a
/// driver from this crate then runs until its holder is dropped).
///
/// ```
/// use std::time::Duration;
/// use zt_rotate::TaskHandle;
///
/// let handle = TaskHandle::spawn_thread("ticker", |stop| {
///     // Work until told to stop; `wait` returns true once the handle asks.
///     while !stop.wait(Duration::from_secs(60)) {}
/// })?;
/// assert!(handle.is_running());
/// handle.stop(); // returns promptly: the wait above is woken
/// # Ok::<(), zt_rotate::Error>(())
/// ```
#[must_use = "the task stops when its handle is dropped; keep the handle or call .detach()"]
pub struct TaskHandle {
    inner: Option<Inner>,
}

enum Inner {
    Thread {
        signal: StopSignal,
        thread: JoinHandle<()>,
    },
    #[cfg(feature = "tokio")]
    Tokio(tokio::task::AbortHandle),
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            None => "inert",
            Some(Inner::Thread { .. }) => "thread",
            #[cfg(feature = "tokio")]
            Some(Inner::Tokio(_)) => "tokio",
        };
        f.debug_struct("TaskHandle")
            .field("kind", &kind)
            .field("running", &self.is_running())
            .finish()
    }
}

impl TaskHandle {
    /// A handle that owns nothing (for material that cannot change, such as PEM given as
    /// bytes). It is never running.
    pub fn inert() -> Self {
        TaskHandle { inner: None }
    }

    /// Runs `task` on a new thread named `name`. The task is given the [`StopSignal`] it
    /// must watch: it should return soon after [`StopSignal::wait`] or
    /// [`StopSignal::is_stopped`] says so.
    ///
    /// # Errors
    /// [`Error::Spawn`] if the thread cannot be started.
    pub fn spawn_thread(
        name: &str,
        task: impl FnOnce(StopSignal) + Send + 'static,
    ) -> Result<Self, Error> {
        let signal = StopSignal::new();
        let theirs = signal.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || task(theirs))
            .map_err(|e| Error::Spawn {
                name: name.to_owned(),
                source: Arc::new(e),
            })?;
        Ok(TaskHandle {
            inner: Some(Inner::Thread { signal, thread }),
        })
    }

    /// Owns a tokio task: it is aborted when the handle is dropped or stopped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let task = tokio::spawn(async {
    ///     loop {
    ///         tokio::time::sleep(std::time::Duration::from_secs(60)).await; // refresh keys…
    ///     }
    /// });
    /// let handle = zt_rotate::TaskHandle::from_tokio(task);
    /// assert!(handle.is_running());
    /// drop(handle); // aborts the task
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn from_tokio(task: tokio::task::JoinHandle<()>) -> Self {
        TaskHandle {
            inner: Some(Inner::Tokio(task.abort_handle())),
        }
    }

    /// Whether the task is still running.
    pub fn is_running(&self) -> bool {
        match &self.inner {
            None => false,
            Some(Inner::Thread { thread, .. }) => !thread.is_finished(),
            #[cfg(feature = "tokio")]
            Some(Inner::Tokio(task)) => !task.is_finished(),
        }
    }

    /// Stops the task and, for a thread, waits for it to finish its current step.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Lets the task run on without this handle. A driver from this crate runs until the
    /// holder it feeds is dropped; a task of your own should make sure it ends.
    pub fn detach(mut self) {
        match self.inner.take() {
            Some(Inner::Thread { signal, .. }) => signal.set(State::Detached),
            #[cfg(feature = "tokio")]
            Some(Inner::Tokio(_)) => {}
            None => {}
        }
    }

    fn shutdown(&mut self) {
        match self.inner.take() {
            Some(Inner::Thread { signal, thread }) => {
                signal.set(State::Stopped);
                // A task that drops its own handle must not wait for itself.
                if thread.thread().id() != std::thread::current().id() {
                    let _ = thread.join();
                }
            }
            #[cfg(feature = "tokio")]
            Some(Inner::Tokio(task)) => task.abort(),
            None => {}
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// === StopSignal ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    Detached,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Readable once stop is asked (Linux): lets a thread also waiting on inotify wake.
    #[cfg(target_os = "linux")]
    event: Option<rustix::fd::OwnedFd>,
}

/// What a task run by [`TaskHandle::spawn_thread`] watches to know when to stop.
#[derive(Clone)]
pub struct StopSignal {
    shared: Arc<Shared>,
}

impl fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopSignal {
    fn new() -> Self {
        StopSignal {
            shared: Arc::new(Shared {
                state: Mutex::new(State::Running),
                changed: Condvar::new(),
                #[cfg(target_os = "linux")]
                event: rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
                .ok(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, to: State) {
        let mut state = self.lock();
        if *state != State::Running {
            return;
        }
        *state = to;
        drop(state);
        self.shared.changed.notify_all();
        #[cfg(target_os = "linux")]
        if to == State::Stopped
            && let Some(fd) = &self.shared.event
        {
            // Never read back: the eventfd stays readable, so every later poll returns.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// Whether the handle asked the task to stop.
    pub fn is_stopped(&self) -> bool {
        *self.lock() == State::Stopped
    }

    /// Waits up to `timeout`; returns true as soon as the task should stop.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now() + timeout)
    }

    /// Waits until `deadline`; returns true as soon as the task should stop.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if *state == State::Stopped {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The file descriptor that becomes readable when stop is asked, if there is one.
    #[cfg(target_os = "linux")]
    pub(crate) fn event_fd(&self) -> Option<&rustix::fd::OwnedFd> {
        self.shared.event.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn drop_stops_and_joins_a_thread_and_detach_lets_it_run() {
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let handle = TaskHandle::spawn_thread("t", move |stop| {
            while !stop.wait(Duration::from_secs(3600)) {}
            flag.store(true, Ordering::SeqCst);
        })
        .unwrap();
        assert!(handle.is_running());
        let started = Instant::now();
        drop(handle);
        // Joined: the thread has finished by the time drop returns.
        assert!(ended.load(Ordering::SeqCst));
        assert!(started.elapsed() < Duration::from_secs(60));

        let (tx, rx) = std::sync::mpsc::channel();
        let handle = TaskHandle::spawn_thread("t", move |stop| {
            // A detached task is never told to stop: this wait times out.
            let stopped = stop.wait(Duration::from_millis(50));
            let _ = tx.send(stopped);
        })
        .unwrap();
        handle.detach();
        assert!(!rx.recv().unwrap());
        assert!(!TaskHandle::inert().is_running());
    }
}
