//! Watching a set of files and directories: poll, wait for the content to settle, hand
//! over exactly the bytes that were judged settled.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::Error;

#[cfg(target_os = "linux")]
pub(crate) mod inotify;

/// Default time between two polls.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default settle window: a change is taken once a read this long after it gives the same
/// bytes.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(100);
/// Default size limit of one file.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;
/// Default size limit of all the files of one watched directory together.
pub const DEFAULT_MAX_DIR_SIZE: u64 = 64 * 1024 * 1024;

/// Reads a watched directory: returns each file's path relative to the directory and its
/// bytes. See [`FileWatcher::dir_with`].
pub type DirReader = Arc<
    dyn Fn(&Path) -> Result<Vec<(PathBuf, Vec<u8>)>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

enum Target {
    File(PathBuf),
    Dir {
        path: PathBuf,
        reader: Option<DirReader>,
    },
}

impl Target {
    fn path(&self) -> &Path {
        match self {
            Target::File(path) | Target::Dir { path, .. } => path,
        }
    }
}

/// The content of every watched path as one read saw it: each file's path and bytes, read
/// once, and a fingerprint of the whole set.
///
/// A loader given a snapshot validates exactly these bytes, never a further read of the
/// files: a writer racing the reader cannot make the loader take bytes other than those
/// that were judged settled. Cloning is cheap (the bytes are shared).
#[derive(Clone)]
pub struct FileSnapshot {
    files: Arc<BTreeMap<PathBuf, Arc<[u8]>>>,
    fingerprint: u64,
}

impl PartialEq for FileSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.files == other.files
    }
}

impl Eq for FileSnapshot {}

impl fmt::Debug for FileSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSnapshot")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

impl FileSnapshot {
    fn new(files: BTreeMap<PathBuf, Arc<[u8]>>) -> Self {
        let mut hasher = DefaultHasher::new();
        for (path, bytes) in &files {
            path.hash(&mut hasher);
            bytes.hash(&mut hasher);
        }
        FileSnapshot {
            fingerprint: hasher.finish(),
            files: Arc::new(files),
        }
    }

    /// The bytes of the file at `path` (as given to the watcher, or under a watched
    /// directory joined to the directory's path).
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&[u8]> {
        self.files.get(path.as_ref()).map(|b| &**b)
    }

    /// The bytes of the file at `path`, shared.
    pub fn get_shared(&self, path: impl AsRef<Path>) -> Option<Arc<[u8]>> {
        self.files.get(path.as_ref()).cloned()
    }

    /// Every file, in path order.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_path(), &**b))
    }

    /// The files under `dir`, with their paths relative to it, in path order.
    pub fn files_under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a Path, &'a [u8])> {
        self.files
            .iter()
            .filter_map(move |(p, b)| p.strip_prefix(dir).ok().map(|rel| (rel, &**b)))
    }

    /// How many files the snapshot holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the snapshot holds no file (an empty directory).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// A 64-bit fingerprint of the paths and bytes, for logs. (Snapshots compare equal by
    /// their bytes, not by this value alone.)
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// What one [`FileWatcher::poll`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The content is the one last reported.
    Unchanged,
    /// New content (or a read error) was seen for the first time: it is reported once the
    /// next poll, a settle window later, sees the same.
    Pending,
    /// New content has settled: two reads in a row gave these bytes.
    Changed(FileSnapshot),
    /// The paths cannot be read, on two polls in a row with the same error (a path in the
    /// middle of being replaced is not reported).
    Unreadable(Error),
}

/// Watches a set of files and directories for changes that have settled.
///
/// [`poll`](Self::poll) reads every path once: a change is reported when two reads in a
/// row give the same bytes, and the [`FileSnapshot`] it carries holds those bytes, so the
/// loader validates exactly what was judged settled. Drive it yourself with `poll`, or run
/// it into a holder with [`watch_files`](crate::watch_files), which polls every
/// [`poll_interval`](Self::poll_interval), confirms a change a
/// [`settle`](Self::settle) window later, and on Linux also wakes on inotify events in the
/// watched paths' directories, so a Kubernetes `..data` symlink swap is seen well before
/// the next poll (polling stays the authority: a missed event only delays a change).
///
/// ```
/// use zt_rotate::{FileWatcher, WatchEvent};
///
/// let dir = tempfile::tempdir()?;
/// let cert = dir.path().join("tls.crt");
/// std::fs::write(&cert, "v1")?;
/// let mut watcher = FileWatcher::new().file(&cert);
/// watcher.mark_current()?; // what is there now is already in use
/// assert!(matches!(watcher.poll(), WatchEvent::Unchanged));
///
/// std::fs::write(&cert, "v2")?;
/// assert!(matches!(watcher.poll(), WatchEvent::Pending)); // seen once
/// let WatchEvent::Changed(snapshot) = watcher.poll() else { panic!("not settled") };
/// assert_eq!(snapshot.get(&cert), Some(&b"v2"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FileWatcher {
    targets: Vec<Target>,
    pub(crate) poll_interval: Duration,
    pub(crate) settle: Duration,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Option<Duration>,
    pub(crate) inotify: bool,
    max_file_size: u64,
    max_dir_size: u64,
    last: Option<FileSnapshot>,
    pending: Option<FileSnapshot>,
    pending_error: Option<String>,
}

impl fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWatcher")
            .field("paths", &self.paths().collect::<Vec<_>>())
            .field("poll_interval", &self.poll_interval)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl Default for FileWatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl FileWatcher {
    /// A watcher over no path yet; add them with [`file`](Self::file) and
    /// [`dir`](Self::dir).
    pub fn new() -> Self {
        FileWatcher {
            targets: Vec::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            settle: DEFAULT_SETTLE,
            retry_min: DEFAULT_SETTLE,
            retry_max: None,
            inotify: true,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_dir_size: DEFAULT_MAX_DIR_SIZE,
            last: None,
            pending: None,
            pending_error: None,
        }
    }

    /// Watches a file (followed through symlinks; read whole, up to
    /// [`max_file_size`](Self::max_file_size)).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.targets.push(Target::File(path.into()));
        self
    }

    /// Watches a directory recursively: every regular file under it (symlinks followed),
    /// skipping entries whose name starts with `.` (a Kubernetes volume's `..data` and
    /// `..<timestamp>` entries, editors' temporary files).
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.targets.push(Target::Dir {
            path: path.into(),
            reader: None,
        });
        self
    }

    /// Watches a directory read by `reader` (which applies its own rules: which names count,
    /// whether symlinks are allowed, size limits). It returns each file's path relative to
    /// the directory with its bytes; its error is reported as [`Error::Read`].
    pub fn dir_with(
        mut self,
        path: impl Into<PathBuf>,
        reader: impl Fn(
            &Path,
        )
            -> Result<Vec<(PathBuf, Vec<u8>)>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.targets.push(Target::Dir {
            path: path.into(),
            reader: Some(Arc::new(reader)),
        });
        self
    }

    /// Time between polls (default 1 s). A zero interval is taken as 1 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long after a change the confirming read happens (default 100 ms, at most the
    /// poll interval).
    pub fn settle(mut self, window: Duration) -> Self {
        self.settle = window;
        self
    }

    /// Backoff for retrying an update refused for a reason that may pass by itself (see
    /// [`MaterialHolder::is_transient`](crate::MaterialHolder::is_transient)): the first
    /// retry after `min`, doubling up to `max` (default: from the settle window up to the
    /// poll interval).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = Some(max.max(min));
        self
    }

    /// Polls only: no inotify wake-ups (default: on, on Linux).
    pub fn without_inotify(mut self) -> Self {
        self.inotify = false;
        self
    }

    /// Largest file read (default 16 MiB); a larger one is [`Error::FileTooLarge`].
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Largest total of the files of one watched directory (default 64 MiB).
    pub fn max_dir_size(mut self, bytes: u64) -> Self {
        self.max_dir_size = bytes;
        self
    }

    /// The watched paths, as given.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.targets.iter().map(Target::path)
    }

    pub(crate) fn settle_window(&self) -> Duration {
        self.settle.min(self.poll_interval)
    }

    pub(crate) fn retry_bounds(&self) -> (Duration, Duration) {
        let max = self.retry_max.unwrap_or(self.poll_interval);
        (self.retry_min.min(max), max)
    }

    /// Reads every watched path once, now.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::FileTooLarge`], or [`Error::Read`] from a directory reader.
    pub fn read(&self) -> Result<FileSnapshot, Error> {
        let mut files = BTreeMap::new();
        for target in &self.targets {
            match target {
                Target::File(path) => {
                    let bytes = read_limited(path, self.max_file_size)?;
                    files.insert(path.clone(), Arc::from(bytes));
                }
                Target::Dir { path, reader: None } => {
                    let mut total = 0;
                    self.read_dir(path, path, &mut total, &mut files)?;
                }
                Target::Dir {
                    path,
                    reader: Some(reader),
                } => {
                    let read = reader(path).map_err(|e| Error::Read {
                        path: path.clone(),
                        reason: Arc::from(e),
                    })?;
                    for (rel, bytes) in read {
                        files.insert(path.join(rel), Arc::from(bytes));
                    }
                }
            }
        }
        Ok(FileSnapshot::new(files))
    }

    fn read_dir(
        &self,
        root: &Path,
        dir: &Path,
        total: &mut u64,
        files: &mut BTreeMap<PathBuf, Arc<[u8]>>,
    ) -> Result<(), Error> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            if meta.is_dir() {
                self.read_dir(root, &path, total, files)?;
            } else if meta.is_file() {
                let bytes = read_limited(&path, self.max_file_size)?;
                *total += bytes.len() as u64;
                if *total > self.max_dir_size {
                    return Err(Error::FileTooLarge {
                        path: root.to_owned(),
                        size: *total,
                        limit: self.max_dir_size,
                    });
                }
                files.insert(path, Arc::from(bytes));
            }
        }
        Ok(())
    }

    /// Reads the paths now and takes their content as the one in use: polls report changes
    /// from it. Without this, the first content that settles is reported as a change.
    ///
    /// # Errors
    /// As [`read`](Self::read); the watcher is unchanged then.
    pub fn mark_current(&mut self) -> Result<FileSnapshot, Error> {
        let snapshot = self.read()?;
        self.last = Some(snapshot.clone());
        self.pending = None;
        Ok(snapshot)
    }

    /// The content last reported by [`WatchEvent::Changed`] or taken by
    /// [`mark_current`](Self::mark_current).
    pub fn current(&self) -> Option<&FileSnapshot> {
        self.last.as_ref()
    }

    /// Reads the paths once and says what changed; never sleeps.
    pub fn poll(&mut self) -> WatchEvent {
        let snapshot = match self.read() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.pending = None;
                let text = error.to_string();
                if self.pending_error.as_deref() == Some(text.as_str()) {
                    return WatchEvent::Unreadable(error);
                }
                tracing::debug!(%error, "watched path unreadable; checking again");
                self.pending_error = Some(text);
                return WatchEvent::Pending;
            }
        };
        self.pending_error = None;
        if self.last.as_ref() == Some(&snapshot) {
            self.pending = None;
            return WatchEvent::Unchanged;
        }
        if self.pending.as_ref() == Some(&snapshot) {
            self.pending = None;
            self.last = Some(snapshot.clone());
            return WatchEvent::Changed(snapshot);
        }
        self.pending = Some(snapshot);
        WatchEvent::Pending
    }

    /// The directories whose entries tell of a change: each watched file's directory (the
    /// one holding `..data`) and the directory it resolves into, each watched directory, the
    /// directory holding it, and the directories of the files last read under it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn directories_to_watch(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let add_parent_of = |p: &Path, dirs: &mut Vec<PathBuf>| {
            if let Some(parent) = p.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                dirs.push(parent.to_owned());
            }
        };
        for target in &self.targets {
            let path = target.path();
            add_parent_of(path, &mut dirs);
            if let Ok(real) = std::fs::canonicalize(path) {
                if matches!(target, Target::File(_)) {
                    add_parent_of(&real, &mut dirs);
                } else {
                    dirs.push(real);
                }
            }
            if let Target::Dir { path, .. } = target {
                dirs.push(path.clone());
                if let Some(last) = &self.last {
                    for (file, _) in last.files_under(path) {
                        add_parent_of(&path.join(file), &mut dirs);
                    }
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let size = bytes.len() as u64;
    if size > limit {
        return Err(Error::FileTooLarge {
            path: path.to_owned(),
            size,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_two_reads_agree_with_the_bytes_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("material");
        std::fs::write(&file, "v1").unwrap();
        let mut watcher = FileWatcher::new().file(&file);
        // Without a current content, the first settled content is a change.
        assert!(matches!(watcher.poll(), WatchEvent::Pending));
        assert!(matches!(watcher.poll(), WatchEvent::Changed(s) if s.get(&file) == Some(b"v1")));
        assert!(matches!(watcher.poll(), WatchEvent::Unchanged));

        // Half a write, then the whole: the half is never reported.
        std::fs::write(&file, "v2 half").unwrap();
        assert!(matches!(watcher.poll(), WatchEvent::Pending));
        std::fs::write(&file, "v2 whole").unwrap();
        assert!(matches!(watcher.poll(), WatchEvent::Pending));
        let WatchEvent::Changed(snapshot) = watcher.poll() else {
            panic!("not reported")
        };
        assert_eq!(snapshot.get(&file), Some(&b"v2 whole"[..]));
        assert_eq!(watcher.current(), Some(&snapshot));
    }

    #[test]
    fn a_missing_file_is_unreadable_on_the_second_poll_and_limits_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("missing");
        let mut watcher = FileWatcher::new().file(&file);
        assert!(matches!(watcher.poll(), WatchEvent::Pending));
        assert!(
            matches!(watcher.poll(), WatchEvent::Unreadable(Error::Io { path, .. }) if path == file)
        );

        std::fs::write(&file, "12345").unwrap();
        let watcher = FileWatcher::new().file(&file).max_file_size(4);
        assert!(matches!(
            watcher.read(),
            Err(Error::FileTooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
    }

    #[test]
    fn a_directory_is_read_recursively_without_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        std::fs::create_dir_all(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("a.rego"), "a").unwrap();
        std::fs::write(dir.path().join("sub/deeper/b.json"), "b").unwrap();
        std::fs::write(dir.path().join("..data/c"), "hidden").unwrap();
        std::fs::write(dir.path().join(".swp"), "hidden").unwrap();
        let watcher = FileWatcher::new().dir(dir.path());
        let snapshot = watcher.read().unwrap();
        let names: Vec<_> = snapshot
            .files_under(dir.path())
            .map(|(p, b)| (p.to_owned(), b.to_vec()))
            .collect();
        assert_eq!(
            names,
            [
                (PathBuf::from("a.rego"), b"a".to_vec()),
                (PathBuf::from("sub/deeper/b.json"), b"b".to_vec())
            ]
        );
        let too_small = FileWatcher::new().dir(dir.path()).max_dir_size(1);
        assert!(matches!(too_small.read(), Err(Error::FileTooLarge { .. })));

        // A reader of one's own decides what counts.
        let custom = FileWatcher::new().dir_with(dir.path(), |_| {
            Ok(vec![(PathBuf::from(".manifest"), b"{}".to_vec())])
        });
        assert_eq!(
            custom.read().unwrap().get(dir.path().join(".manifest")),
            Some(&b"{}"[..])
        );
        let refusing = FileWatcher::new().dir_with(dir.path(), |_| Err("symbolic link".into()));
        assert!(matches!(refusing.read(), Err(Error::Read { .. })));
    }
}
