//! A directory laid out the way the kubelet projects a Kubernetes Secret, for rotation tests.

use std::path::{Path, PathBuf};

/// A directory laid out like a Kubernetes Secret volume: the files live in a timestamped
/// `..<time>/` directory, `..data` links to it, and each visible name is a link through
/// `..data`. [`swap`](Self::swap) replaces the set as the kubelet's atomic writer does.
///
/// ```
/// # #[cfg(unix)] {
/// use ztkit_test_support::SecretVolume;
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut volume = SecretVolume::new(dir.path(), &[("tls.crt", "v1")]);
/// assert_eq!(std::fs::read_to_string(volume.path("tls.crt")).unwrap(), "v1");
/// volume.swap(&[("tls.crt", "v2")]);
/// assert_eq!(std::fs::read_to_string(volume.path("tls.crt")).unwrap(), "v2");
/// # }
/// ```
#[derive(Debug)]
pub struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    /// Lays out `files` (name, contents) in `dir`, which must exist.
    #[cfg(unix)]
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> Self {
        let mut volume = SecretVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        volume.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
        }
        volume
    }

    /// The visible path of the file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory `..data` links to now (where in-place writes land).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("..data")
    }

    /// The kubelet's atomic writer: a new timestamped directory holding `files`, a
    /// `..data_tmp` link to it renamed over `..data`, then the old directory removed.
    #[cfg(unix)]
    pub fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let name = format!("..2026_11_25_10_00_00.{}", self.generation);
        let data_dir = self.dir.join(&name);
        std::fs::create_dir(&data_dir).unwrap();
        for (file, contents) in files {
            std::fs::write(data_dir.join(file), contents).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        let old = std::fs::read_link(self.data_dir()).ok();
        std::fs::rename(&tmp, self.data_dir()).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}
