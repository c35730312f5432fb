//! The file operations the writer uses, behind a seam.
//!
//! [`LogFile`] is what the writer does to an open log file (append, fsync, cut off, ask
//! the length) and [`LogFiles`] opens one. In production both are `std::fs`: a
//! [`File`] opened by [`RealFiles`]. Unit tests open files that fail fsyncs on demand
//! (`FaultyFiles`), which is how the fsync-failure paths of the group commit are driven
//! without test-only fields in the writer's state.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::AuditError;
use crate::files;

/// An open log file, as the writer uses it. Every method takes `&self`: the file is shared
/// between appenders (writes happen under the writer's lock) and the fsync leader (which
/// fsyncs without it).
pub(super) trait LogFile: fmt::Debug + Send + Sync {
    /// Appends all of `buf`.
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length.
    fn len(&self) -> io::Result<u64>;
}

/// Opens a log file for appending.
pub(super) trait LogFiles: fmt::Debug + Send + Sync {
    /// Opens (creating it if missing) the file at `path`.
    fn open_append(&self, path: &Path) -> Result<Arc<dyn LogFile>, AuditError>;
}

impl LogFile for File {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut file: &File = self;
        Write::write_all(&mut file, buf)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// The real file system.
#[derive(Debug, Clone, Copy)]
pub(super) struct RealFiles;

impl LogFiles for RealFiles {
    fn open_append(&self, path: &Path) -> Result<Arc<dyn LogFile>, AuditError> {
        Ok(Arc::new(files::open_append(path)?))
    }
}

/// Files that fail fsyncs on demand, for the unit tests of the writer.
#[cfg(test)]
pub(super) mod faults {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Mutex, PoisonError};

    use super::*;

    /// Opens real files whose next `n` fsyncs (counted across all files opened by this)
    /// fail, after [`fail_next_fsyncs`](Self::fail_next_fsyncs), or whose next fsync waits
    /// for the test, after [`hold_next_fsync`](Self::hold_next_fsync).
    #[derive(Debug, Clone, Default)]
    pub(in crate::log) struct FaultyFiles {
        fsync_failures: Arc<AtomicU32>,
        held: Arc<Mutex<Option<HeldFsync>>>,
    }

    #[derive(Debug)]
    struct HeldFsync {
        entered: Sender<()>,
        release: Receiver<()>,
    }

    /// The test's side of a held fsync.
    #[derive(Debug)]
    pub(in crate::log) struct FsyncHold {
        /// Receives once the fsync has started (and waits).
        pub(in crate::log) entered: Receiver<()>,
        /// Send (or drop) to let it finish.
        pub(in crate::log) release: Sender<()>,
    }

    impl FaultyFiles {
        /// Makes the next fsync wait until the test releases it.
        pub(in crate::log) fn hold_next_fsync(&self) -> FsyncHold {
            let (entered_tx, entered) = channel();
            let (release, release_rx) = channel();
            *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(HeldFsync {
                entered: entered_tx,
                release: release_rx,
            });
            FsyncHold { entered, release }
        }

        fn wait_if_held(&self) {
            let held = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(held) = held {
                let _ = held.entered.send(());
                let _ = held.release.recv();
            }
        }

        /// Makes the next `n` fsyncs fail.
        pub(in crate::log) fn fail_next_fsyncs(&self, n: u32) {
            self.fsync_failures.store(n, Ordering::SeqCst);
        }

        /// Takes one pending failure, if any.
        fn take_failure(&self) -> bool {
            self.fsync_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    impl LogFiles for FaultyFiles {
        fn open_append(&self, path: &Path) -> Result<Arc<dyn LogFile>, AuditError> {
            Ok(Arc::new(FaultyFile {
                file: files::open_append(path)?,
                faults: self.clone(),
            }))
        }
    }

    #[derive(Debug)]
    struct FaultyFile {
        file: File,
        faults: FaultyFiles,
    }

    impl LogFile for FaultyFile {
        fn write_all(&self, buf: &[u8]) -> io::Result<()> {
            LogFile::write_all(&self.file, buf)
        }

        fn sync_data(&self) -> io::Result<()> {
            self.faults.wait_if_held();
            if self.faults.take_failure() {
                return Err(io::Error::other("injected fsync failure"));
            }
            LogFile::sync_data(&self.file)
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            LogFile::set_len(&self.file, len)
        }

        fn len(&self) -> io::Result<u64> {
            LogFile::len(&self.file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::faults::FaultyFiles;
    use super::*;

    #[test]
    fn real_files_append_cut_and_report_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = RealFiles.open_append(&dir.path().join("a.jsonl")).unwrap();
        file.write_all(b"one\n").unwrap();
        file.write_all(b"two\n").unwrap();
        file.sync_data().unwrap();
        assert_eq!(file.len().unwrap(), 8);
        file.set_len(4).unwrap();
        assert_eq!(file.len().unwrap(), 4);
        // Appending continues at the (new) end.
        file.write_all(b"three\n").unwrap();
        let text = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
        assert_eq!(text, "one\nthree\n");
    }

    #[test]
    fn faulty_files_fail_exactly_the_requested_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultyFiles::default();
        let a = faults.open_append(&dir.path().join("a")).unwrap();
        let b = faults.open_append(&dir.path().join("b")).unwrap();
        a.sync_data().unwrap();
        faults.fail_next_fsyncs(2);
        assert!(a.sync_data().is_err());
        assert!(b.sync_data().is_err());
        a.sync_data().unwrap();
        b.sync_data().unwrap();
    }
}
