//! What reading a bundle may cost: [`BundleLimits`], and the running count kept against them.

use crate::error::{PolicyError, Result};

/// Size and count limits applied while reading a bundle, before anything is parsed.
///
/// The defaults suit policy bundles (which are small) while bounding what a hostile archive
/// can make the process allocate: 16 MiB compressed, 64 MiB uncompressed, 10,000 files,
/// 1,024-byte paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    pub(super) max_compressed_bytes: u64,
    pub(super) max_uncompressed_bytes: u64,
    pub(super) max_files: usize,
    pub(super) max_path_len: usize,
    pub(super) allow_symlinks: bool,
}

impl Default for BundleLimits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 16 << 20,
            max_uncompressed_bytes: 64 << 20,
            max_files: 10_000,
            max_path_len: 1024,
            allow_symlinks: false,
        }
    }
}

impl BundleLimits {
    /// Largest accepted `.tar.gz` file, in bytes.
    #[must_use]
    pub const fn max_compressed_bytes(mut self, n: u64) -> Self {
        self.max_compressed_bytes = n;
        self
    }

    /// Largest accepted total size of all files after decompression, in bytes.
    #[must_use]
    pub const fn max_uncompressed_bytes(mut self, n: u64) -> Self {
        self.max_uncompressed_bytes = n;
        self
    }

    /// Largest accepted number of files.
    #[must_use]
    pub const fn max_files(mut self, n: usize) -> Self {
        self.max_files = n;
        self
    }

    /// Largest accepted length of one path inside the bundle, in bytes.
    #[must_use]
    pub const fn max_path_len(mut self, n: usize) -> Self {
        self.max_path_len = n;
        self
    }

    pub(crate) const fn compressed_bytes_limit(&self) -> u64 {
        self.max_compressed_bytes
    }

    /// Follow symbolic links to regular files when loading a *directory* (as Kubernetes
    /// ConfigMap mounts need). Links to directories are still never followed, and archives
    /// may never contain links of any kind.
    #[must_use]
    pub const fn allow_symlinks_in_directories(mut self) -> Self {
        self.allow_symlinks = true;
        self
    }
}

pub(super) struct Budget<'a> {
    limits: &'a BundleLimits,
    files: usize,
    bytes: u64,
}

impl<'a> Budget<'a> {
    pub(super) fn new(limits: &'a BundleLimits) -> Self {
        Self {
            limits,
            files: 0,
            bytes: 0,
        }
    }

    pub(super) fn add_file(&mut self, size: u64) -> Result<()> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(PolicyError::Limit(format!(
                "more than {} files",
                self.limits.max_files
            )));
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_uncompressed_bytes {
            return Err(PolicyError::Limit(format!(
                "more than {} bytes uncompressed",
                self.limits.max_uncompressed_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_files_and_bytes() {
        let limits = BundleLimits::default()
            .max_files(2)
            .max_uncompressed_bytes(10);
        let mut budget = Budget::new(&limits);
        budget.add_file(4).unwrap();
        budget.add_file(6).unwrap();
        assert!(matches!(budget.add_file(0), Err(PolicyError::Limit(m)) if m.contains("files")));
        let mut budget = Budget::new(&limits);
        assert!(matches!(budget.add_file(11), Err(PolicyError::Limit(m)) if m.contains("bytes")));
    }
}
