//! Reading a bundle's files, from a `.tar.gz` archive or a directory, within [`BundleLimits`]
//! and refusing unsafe entries, before anything is parsed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::limits::Budget;
use super::{BundleLimits, MANIFEST_FILE, SIGNATURES_FILE};
use crate::error::{PolicyError, Result};

pub(crate) fn read_file_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| PolicyError::io(path.display(), e))?;
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| PolicyError::io(path.display(), e))?;
    if buf.len() as u64 > limit {
        return Err(PolicyError::Limit(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Normalizes an archive path: strips leading `/` and `./`, refuses `..`, NUL and backslashes.
pub(crate) fn normalize_entry_path(raw: &[u8], limits: &BundleLimits) -> Result<String> {
    let shown = String::from_utf8_lossy(raw)
        .chars()
        .take(200)
        .collect::<String>();
    if raw.len() > limits.max_path_len {
        return Err(PolicyError::Limit(format!(
            "path longer than {} bytes",
            limits.max_path_len
        )));
    }
    let s = std::str::from_utf8(raw).map_err(|_| PolicyError::UnsafeEntry {
        path: shown.clone(),
        reason: "path is not valid UTF-8",
    })?;
    if s.contains('\0') || s.contains('\\') {
        return Err(PolicyError::UnsafeEntry {
            path: shown,
            reason: "path contains NUL or backslash",
        });
    }
    let mut parts = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                return Err(PolicyError::UnsafeEntry {
                    path: shown,
                    reason: "path traversal (..)",
                });
            }
            seg => parts.push(seg),
        }
    }
    Ok(parts.join("/"))
}

pub(super) fn read_tar_gz(
    bytes: &[u8],
    limits: &BundleLimits,
) -> Result<BTreeMap<String, Vec<u8>>> {
    if bytes.len() as u64 > limits.max_compressed_bytes {
        return Err(PolicyError::Limit(format!(
            "archive is larger than {} bytes",
            limits.max_compressed_bytes
        )));
    }
    if bytes.get(..2) != Some(&[0x1f, 0x8b]) {
        return Err(PolicyError::Archive("not gzip data".into()));
    }
    // Bound the decompressed stream as a whole too, so tar headers and padding cannot be used
    // to inflate without limit.
    let stream_limit = limits
        .max_uncompressed_bytes
        .saturating_add(512 * (limits.max_files as u64 + 16))
        .saturating_add(1 << 20);
    let gz = flate2::read::MultiGzDecoder::new(bytes).take(stream_limit);
    let mut archive = tar::Archive::new(gz);
    let mut budget = Budget::new(limits);
    let mut files = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| PolicyError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| PolicyError::Archive(e.to_string()))?;
        let raw_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let shown = String::from_utf8_lossy(&raw_path)
            .chars()
            .take(200)
            .collect();
        let reason = if kind.is_symlink() {
            Some("symbolic link")
        } else if kind.is_hard_link() {
            Some("hard link")
        } else if kind.is_file() || kind.is_contiguous() {
            None
        } else {
            Some("not a regular file")
        };
        if let Some(reason) = reason {
            return Err(PolicyError::UnsafeEntry {
                path: shown,
                reason,
            });
        }
        let path = normalize_entry_path(&raw_path, limits)?;
        if path.is_empty() {
            return Err(PolicyError::UnsafeEntry {
                path: shown,
                reason: "empty path",
            });
        }
        let size = entry.size();
        budget.add_file(size)?;
        let mut content = Vec::with_capacity(usize::try_from(size.min(1 << 20)).unwrap_or(0));
        (&mut entry)
            .take(size.saturating_add(1))
            .read_to_end(&mut content)
            .map_err(|e| PolicyError::Archive(format!("{path}: {e}")))?;
        if content.len() as u64 != size {
            return Err(PolicyError::Archive(format!("{path}: truncated entry")));
        }
        if files.insert(path.clone(), content).is_some() {
            return Err(PolicyError::UnsafeEntry {
                path,
                reason: "duplicate path",
            });
        }
    }
    Ok(files)
}

pub(crate) fn read_dir_files(
    dir: &Path,
    limits: &BundleLimits,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut budget = Budget::new(limits);
    let mut files = BTreeMap::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&abs).map_err(|e| PolicyError::io(abs.display(), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| PolicyError::io(abs.display(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(PolicyError::UnsafeEntry {
                    path: entry.path().display().to_string(),
                    reason: "path is not valid UTF-8",
                });
            };
            let rel_path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if name.starts_with('.')
                && !(rel.is_empty() && (name == MANIFEST_FILE || name == SIGNATURES_FILE))
            {
                continue;
            }
            if rel_path.len() > limits.max_path_len {
                return Err(PolicyError::Limit(format!(
                    "path longer than {} bytes",
                    limits.max_path_len
                )));
            }
            let p = entry.path();
            let meta =
                std::fs::symlink_metadata(&p).map_err(|e| PolicyError::io(p.display(), e))?;
            let ft = meta.file_type();
            let meta = if ft.is_symlink() {
                if !limits.allow_symlinks {
                    return Err(PolicyError::UnsafeEntry {
                        path: rel_path,
                        reason: "symbolic link",
                    });
                }
                let target = std::fs::metadata(&p).map_err(|e| PolicyError::io(p.display(), e))?;
                if !target.is_file() {
                    return Err(PolicyError::UnsafeEntry {
                        path: rel_path,
                        reason: "symbolic link to something other than a regular file",
                    });
                }
                target
            } else {
                meta
            };
            if meta.is_dir() {
                stack.push((p, rel_path));
            } else if meta.is_file() {
                budget.add_file(meta.len())?;
                let content = read_file_limited(&p, meta.len())?;
                files.insert(rel_path, content);
            } else {
                return Err(PolicyError::UnsafeEntry {
                    path: rel_path,
                    reason: "not a regular file",
                });
            }
        }
    }
    Ok(files)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_normalized_or_refused() {
        let l = BundleLimits::default();
        assert_eq!(
            normalize_entry_path(b"/a/./b.rego", &l).unwrap(),
            "a/b.rego"
        );
        assert_eq!(
            normalize_entry_path(b"./.manifest", &l).unwrap(),
            ".manifest"
        );
        assert!(normalize_entry_path(b"a/../../etc/passwd", &l).is_err());
        assert!(normalize_entry_path(b"a\\b", &l).is_err());
        assert!(normalize_entry_path(&[b'a'; 2000], &l).is_err());
    }

    #[test]
    fn archives_are_refused_before_decompression_when_too_large_or_not_gzip() {
        let l = BundleLimits::default().max_compressed_bytes(4);
        assert!(matches!(
            read_tar_gz(&[0x1f, 0x8b, 0, 0, 0], &l),
            Err(PolicyError::Limit(_))
        ));
        let l = BundleLimits::default();
        assert!(matches!(
            read_tar_gz(b"plain", &l),
            Err(PolicyError::Archive(_))
        ));
    }

    #[test]
    fn directories_skip_hidden_entries_but_keep_the_bundle_files() {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in [
            (".manifest", "{}"),
            (".git/x", "x"),
            ("a/.hidden", "h"),
            ("a/p.rego", "package p"),
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        let files = read_dir_files(dir.path(), &BundleLimits::default()).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), [".manifest", "a/p.rego"]);
        let big = dir.path().join("a/p.rego");
        assert!(matches!(
            read_file_limited(&big, 3),
            Err(PolicyError::Limit(_))
        ));
    }
}
