//! inotify on the watched paths' directories (Linux): wakes the watcher as soon as an entry
//! is created, written, renamed or removed there, instead of at the next poll.

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;

use crate::task::StopSignal;

/// What ended a wait.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The handle asked the task to stop.
    Stop,
    /// The deadline passed.
    Deadline,
    /// An entry changed in a watched directory.
    Changed,
}

pub(crate) struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    pub(crate) fn new() -> Option<Self> {
        match inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK) {
            Ok(fd) => Some(Inotify { fd }),
            Err(e) => {
                tracing::debug!(error = %e, "inotify unavailable; polling only");
                None
            }
        }
    }

    /// Watches `dirs` (again: adding a watch twice is harmless, and directories that were
    /// replaced since are picked up). Directories that cannot be watched are left to polls.
    pub(crate) fn watch(&self, dirs: &[PathBuf]) {
        let flags = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::ATTRIB
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        for dir in dirs {
            if let Err(e) = inotify::add_watch(&self.fd, dir.as_path(), flags) {
                tracing::trace!(dir = %dir.display(), error = %e, "cannot watch directory");
            }
        }
    }

    /// Reads every queued event; true if there was one.
    fn drain(&self) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut any = false;
        loop {
            match reader.next() {
                Ok(_) => any = true,
                Err(Errno::INTR) => {}
                Err(_) => return any,
            }
        }
    }

    /// Waits until `deadline`, a stop request, or an inotify event.
    pub(crate) fn wait(&self, stop: &StopSignal, deadline: Instant) -> Woken {
        let Some(stop_fd) = stop.event_fd() else {
            // No eventfd: wake on the stop signal and the deadline only.
            return if stop.wait_until(deadline) {
                Woken::Stop
            } else {
                Woken::Deadline
            };
        };
        loop {
            if stop.is_stopped() {
                return Woken::Stop;
            }
            let now = Instant::now();
            if now >= deadline {
                return Woken::Deadline;
            }
            let timeout = Timespec::try_from(deadline - now).ok();
            let mut fds = [
                PollFd::new(stop_fd, PollFlags::IN),
                PollFd::new(&self.fd, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "poll on inotify failed; polling only");
                    return if stop.wait_until(deadline) {
                        Woken::Stop
                    } else {
                        Woken::Deadline
                    };
                }
            }
            if stop.is_stopped() {
                return Woken::Stop;
            }
            if !fds[1].revents().is_empty() && self.drain() {
                return Woken::Changed;
            }
        }
    }
}
