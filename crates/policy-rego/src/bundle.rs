//! Loading policy bundles: OPA `.tar.gz` bundles and plain directories.
//!
//! Both use OPA's bundle layout:
//!
//! - `*.rego` — Rego modules (v1 syntax unless the manifest says `"rego_version": 0`);
//! - `data.json` / `data.yaml` / `data.yml` at any depth — data documents mounted at the
//!   directory's path (`roles/bindings/data.json` → `data.roles.bindings`);
//! - `.manifest` — optional `{"revision": "...", "roots": ["..."], "metadata": {...}}`;
//! - `.signatures.json` — optional signature, required when a [`SignatureVerifier`] is
//!   configured.
//!
//! Other files are ignored (but covered by the signature when one is checked). Untrusted
//! archives are bounded by [`BundleLimits`], and entries that are links, devices or paths with
//! `..` are refused outright.

pub(crate) mod canonical;
mod signature;
mod writer;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use regorus::Value;
use serde::{Deserialize, Serialize};

pub use signature::{SIGNATURES_FILE, SignatureVerifier};
pub use writer::{BundleSigner, BundleWriter};

use crate::error::{PolicyError, Result};

/// The name of the manifest file inside a bundle.
pub const MANIFEST_FILE: &str = ".manifest";

/// Size and count limits applied while reading a bundle, before anything is parsed.
///
/// The defaults suit policy bundles (which are small) while bounding what a hostile archive
/// can make the process allocate: 16 MiB compressed, 64 MiB uncompressed, 10,000 files,
/// 1,024-byte paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    max_compressed_bytes: u64,
    max_uncompressed_bytes: u64,
    max_files: usize,
    max_path_len: usize,
    allow_symlinks: bool,
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

    pub(crate) const fn get_max_compressed_bytes(&self) -> u64 {
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

/// The parsed `.manifest` of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Manifest {
    /// The bundle's revision (empty when absent).
    #[serde(default)]
    pub revision: String,
    /// The data and package paths this bundle owns, slash-separated (`["http/authz"]`); `None`
    /// means the whole `data` tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<String>>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The Rego language version of the modules: `1` (default) or `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego_version: Option<u8>,
}

/// A loaded (and, when configured, signature-verified) bundle: modules, data and manifest.
/// Compile it into a [`PolicySet`](crate::PolicySet).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub(crate) name: String,
    pub(crate) manifest: Manifest,
    pub(crate) modules: Vec<(String, String)>,
    pub(crate) data: Value,
    pub(crate) signed: bool,
}

impl Bundle {
    /// Where the bundle came from (its path, or the name given to
    /// [`BundleLoader::load_tar_gz`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bundle's manifest (defaults when it has none).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The revision from the manifest (empty when none).
    pub fn revision(&self) -> &str {
        &self.manifest.revision
    }

    /// The Rego modules as `(path, source)`, sorted by path.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.modules.iter().map(|(p, s)| (p.as_str(), s.as_str()))
    }

    /// The merged data document as JSON.
    pub fn data_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.data).unwrap_or(serde_json::Value::Null)
    }

    /// Whether a signature was verified for this bundle.
    pub fn is_signed(&self) -> bool {
        self.signed
    }
}

/// Reads bundles from directories and `.tar.gz` archives, enforcing [`BundleLimits`] and,
/// when a key is configured, the bundle signature.
#[derive(Debug, Clone, Default)]
pub struct BundleLoader {
    limits: BundleLimits,
    verifier: Option<SignatureVerifier>,
}

impl BundleLoader {
    /// A loader with default limits and no signature requirement.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the limits.
    #[must_use]
    pub fn limits(mut self, limits: BundleLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Requires every bundle to carry a `.signatures.json` that verifies with this key.
    #[must_use]
    pub fn verification_key(mut self, verifier: SignatureVerifier) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The configured limits.
    pub fn get_limits(&self) -> &BundleLimits {
        &self.limits
    }

    /// Loads a directory, or a file holding a `.tar.gz` bundle.
    ///
    /// # Errors
    ///
    /// Any [`PolicyError`] from reading, limits, signature, manifest or data parsing.
    pub fn load_path(&self, path: impl AsRef<Path>) -> Result<Bundle> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| PolicyError::io(path.display(), e))?;
        if meta.is_dir() {
            self.load_dir(path)
        } else {
            let bytes = read_file_limited(path, self.limits.max_compressed_bytes)?;
            self.load_tar_gz(&path.display().to_string(), &bytes)
        }
    }

    /// Loads a bundle directory.
    ///
    /// Hidden entries (names starting with `.`) are skipped except the bundle's own
    /// `.manifest` and `.signatures.json` at the top.
    ///
    /// # Errors
    ///
    /// Any [`PolicyError`] from reading, limits, signature, manifest or data parsing.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<Bundle> {
        let dir = dir.as_ref();
        let files = read_dir_files(dir, &self.limits)?;
        self.assemble(dir.display().to_string(), files)
    }

    /// Loads a gzip-compressed tar bundle from memory. `name` is only used in messages and
    /// decision logs.
    ///
    /// # Errors
    ///
    /// Any [`PolicyError`] from decompression, limits, unsafe entries, signature, manifest or
    /// data parsing.
    pub fn load_tar_gz(&self, name: &str, bytes: &[u8]) -> Result<Bundle> {
        let files = read_tar_gz(bytes, &self.limits)?;
        self.assemble(name.to_owned(), files)
    }

    /// Builds a bundle from files already read (`path` → bytes, as [`read_dir_files`] and
    /// the archive reader give them): signature, manifest, modules and data.
    pub(crate) fn assemble(
        &self,
        name: String,
        files: BTreeMap<String, Vec<u8>>,
    ) -> Result<Bundle> {
        if let Some(v) = &self.verifier {
            v.verify(&files)?;
        }
        let manifest = match files.get(MANIFEST_FILE) {
            Some(bytes) => serde_json::from_slice::<Manifest>(bytes)
                .map_err(|e| PolicyError::Manifest(format!("{MANIFEST_FILE}: {e}")))?,
            None => Manifest::default(),
        };
        if let Some(v) = manifest.rego_version
            && v > 1
        {
            return Err(PolicyError::Manifest(format!("unknown rego_version {v}")));
        }
        let roots = manifest_roots_of(&manifest)?;

        let mut modules = Vec::new();
        let mut data = Value::new_object();
        for (path, bytes) in files {
            let base = path.rsplit('/').next().unwrap_or(&path);
            let dir_segments: Vec<&str> = match path.rfind('/') {
                Some(i) => path.get(..i).unwrap_or_default().split('/').collect(),
                None => Vec::new(),
            };
            if path.ends_with(".rego") {
                let src = String::from_utf8(bytes).map_err(|_| PolicyError::Parse {
                    path: path.clone(),
                    detail: "not valid UTF-8".into(),
                })?;
                modules.push((path, src));
            } else if base == "data.json" || base == "data.yaml" || base == "data.yml" {
                let doc = parse_data(&path, &bytes)?;
                check_data_roots(&path, &dir_segments, &doc, &roots)?;
                merge_at(&mut data, &dir_segments, doc).map_err(|detail| PolicyError::Data {
                    path: path.clone(),
                    detail,
                })?;
            }
        }
        Ok(Bundle {
            name,
            manifest,
            modules,
            data,
            signed: self.verifier.is_some(),
        })
    }
}

/// `None` = everything; otherwise the list of root paths split into segments.
pub(crate) type Roots = Option<Vec<Vec<String>>>;

pub(crate) fn manifest_roots_of(m: &Manifest) -> Result<Roots> {
    let Some(roots) = &m.roots else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for r in roots {
        let r = r.trim_matches('/');
        if r.is_empty() {
            return Ok(None);
        }
        out.push(r.split('/').map(str::to_owned).collect::<Vec<_>>());
    }
    // Overlapping roots are ambiguous (OPA refuses them too).
    for (i, a) in out.iter().enumerate() {
        for b in out.iter().skip(i + 1) {
            if a.starts_with(b) || b.starts_with(a) {
                return Err(PolicyError::Manifest(format!(
                    "roots {} and {} overlap",
                    a.join("/"),
                    b.join("/")
                )));
            }
        }
    }
    Ok(Some(out))
}

/// Whether `path` lies under one of `roots`.
pub(crate) fn under_roots(path: &[&str], roots: &Roots) -> bool {
    match roots {
        None => true,
        Some(roots) => roots
            .iter()
            .any(|r| r.len() <= path.len() && r.iter().zip(path).all(|(a, b)| a.as_str() == *b)),
    }
}

fn is_prefix_of_root(path: &[&str], roots: &Roots) -> bool {
    match roots {
        None => true,
        Some(roots) => roots.iter().any(|r| {
            path.len() < r.len() && path.iter().zip(r.iter()).all(|(a, b)| *a == b.as_str())
        }),
    }
}

fn check_data_roots(file: &str, at: &[&str], doc: &Value, roots: &Roots) -> Result<()> {
    if under_roots(at, roots) {
        return Ok(());
    }
    if is_prefix_of_root(at, roots)
        && let Ok(obj) = doc.as_object()
    {
        for (k, v) in obj.iter() {
            let key = match k.as_string() {
                Ok(s) => s.to_string(),
                Err(_) => k.to_string(),
            };
            let mut p: Vec<&str> = at.to_vec();
            p.push(&key);
            check_data_roots(file, &p, v, roots)?;
        }
        return Ok(());
    }
    Err(PolicyError::Manifest(format!(
        "{file}: data path /{} is outside the manifest roots",
        at.join("/")
    )))
}

fn parse_data(path: &str, bytes: &[u8]) -> Result<Value> {
    let err = |detail: String| PolicyError::Data {
        path: path.to_owned(),
        detail,
    };
    let v = if path.ends_with(".json") {
        let s = std::str::from_utf8(bytes).map_err(|_| err("not valid UTF-8".into()))?;
        Value::from_json_str(s).map_err(|e| err(e.to_string()))?
    } else {
        let j: serde_json::Value =
            serde_yaml::from_slice(bytes).map_err(|e| err(format!("not valid YAML: {e}")))?;
        Value::from(j)
    };
    if v.as_object().is_err() {
        return Err(err("the document is not an object".into()));
    }
    Ok(v)
}

/// Deep-merges `doc` into `root` at `path`. Objects merge key by key; any other collision is
/// an error (as in OPA).
pub(crate) fn merge_at(root: &mut Value, path: &[&str], doc: Value) -> Result<(), String> {
    let mut cur = root;
    for seg in path {
        let obj = cur
            .as_object_mut()
            .map_err(|_| format!("data path /{} collides with a non-object", path.join("/")))?;
        let key = Value::from(*seg);
        if obj.get(&key).is_none() {
            obj.insert(key.clone(), Value::new_object());
        }
        cur = obj
            .get_mut(&key)
            .ok_or_else(|| "internal: inserted key vanished".to_owned())?;
    }
    merge_values(
        cur,
        doc,
        &mut path.iter().map(|s| (*s).to_owned()).collect(),
    )
}

fn merge_values(dst: &mut Value, src: Value, at: &mut Vec<String>) -> Result<(), String> {
    let src_obj = match src.as_object() {
        Ok(o) => o.clone(),
        Err(_) => return Err(format!("conflicting values at /{}", at.join("/"))),
    };
    let dst_obj = dst
        .as_object_mut()
        .map_err(|_| format!("conflicting values at /{}", at.join("/")))?;
    for (k, v) in src_obj.iter() {
        match dst_obj.get_mut(k) {
            Some(existing) if existing.as_object().is_ok() && v.as_object().is_ok() => {
                at.push(k.as_string().map(|s| s.to_string()).unwrap_or_default());
                merge_values(existing, v.clone(), at)?;
                at.pop();
            }
            Some(_) => {
                let key = k.as_string().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!("conflicting values at /{}/{key}", at.join("/")));
            }
            None => {
                dst_obj.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

// === reading ===

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

struct Budget<'a> {
    limits: &'a BundleLimits,
    files: usize,
    bytes: u64,
}

impl Budget<'_> {
    fn add_file(&mut self, size: u64) -> Result<()> {
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

fn read_tar_gz(bytes: &[u8], limits: &BundleLimits) -> Result<BTreeMap<String, Vec<u8>>> {
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
    let mut budget = Budget {
        limits,
        files: 0,
        bytes: 0,
    };
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
    let mut budget = Budget {
        limits,
        files: 0,
        bytes: 0,
    };
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
    fn merge_conflicts_are_errors() {
        let mut root = Value::new_object();
        merge_at(
            &mut root,
            &["a"],
            Value::from_json_str(r#"{"x": {"y": 1}}"#).unwrap(),
        )
        .unwrap();
        merge_at(
            &mut root,
            &["a"],
            Value::from_json_str(r#"{"x": {"z": 2}}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            serde_json::json!({"a": {"x": {"y": 1, "z": 2}}})
        );
        assert!(
            merge_at(
                &mut root,
                &["a", "x"],
                Value::from_json_str(r#"{"y": 3}"#).unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn roots_contain_paths() {
        let m = Manifest {
            roots: Some(vec!["http/authz".into(), "roles".into()]),
            ..Manifest::default()
        };
        let r = manifest_roots_of(&m).unwrap();
        assert!(under_roots(&["http", "authz"], &r));
        assert!(under_roots(&["roles", "x"], &r));
        assert!(!under_roots(&["http"], &r));
        assert!(!under_roots(&["other"], &r));
        let overlapping = Manifest {
            roots: Some(vec!["a".into(), "a/b".into()]),
            ..Manifest::default()
        };
        assert!(manifest_roots_of(&overlapping).is_err());
    }
}
