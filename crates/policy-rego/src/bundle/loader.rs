//! [`BundleLoader`]: files read from a directory or an archive become a [`Bundle`] (signature
//! first, then manifest, modules and data).

use std::collections::BTreeMap;
use std::path::Path;

use regorus::Value;

use super::merge::merge_at;
use super::read::{read_dir_files, read_file_limited, read_tar_gz};
use super::roots::{check_data_roots, manifest_roots_of};
use super::{Bundle, BundleLimits, MANIFEST_FILE, Manifest, SignatureVerifier};
use crate::error::{PolicyError, Result};

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
    pub fn configured_limits(&self) -> &BundleLimits {
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

fn parse_data(path: &str, bytes: &[u8]) -> Result<Value> {
    let err = |detail: String| PolicyError::Data {
        path: path.to_owned(),
        detail,
    };
    let v = if path.ends_with(".json") {
        let s = std::str::from_utf8(bytes).map_err(|_| err("not valid UTF-8".into()))?;
        Value::from_json_str(s).map_err(|e| err(e.to_string()))?
    } else {
        Value::from(super::yaml_document(bytes).map_err(err)?)
    };
    if v.as_object().is_err() {
        return Err(err("the document is not an object".into()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        list.iter()
            .map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn data_documents_are_mounted_at_their_directory() {
        let b = BundleLoader::new()
            .assemble(
                "t".into(),
                files(&[
                    ("a/b/data.json", r#"{"x": 1}"#),
                    ("a/data.yaml", "y: [1, 2]\n"),
                    ("p.rego", "package p"),
                    ("README.md", "ignored"),
                ]),
            )
            .unwrap();
        assert_eq!(
            b.data_json(),
            serde_json::json!({"a": {"b": {"x": 1}, "y": [1, 2]}})
        );
        assert_eq!(b.modules().count(), 1);
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let loader = BundleLoader::new();
        let err = loader
            .assemble("t".into(), files(&[("data.json", "[1]")]))
            .unwrap_err();
        assert!(
            matches!(&err, PolicyError::Data { path, .. } if path == "data.json"),
            "{err}"
        );
        let err = loader
            .assemble(
                "t".into(),
                files(&[(".manifest", r#"{"rego_version": 2}"#)]),
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::Manifest(_)));
        let mut bad = files(&[]);
        bad.insert("p.rego".into(), vec![0xff, 0xfe]);
        assert!(matches!(
            loader.assemble("t".into(), bad),
            Err(PolicyError::Parse { .. })
        ));
    }

    #[test]
    fn a_configured_key_requires_a_signature() {
        let loader = BundleLoader::new()
            .verification_key(SignatureVerifier::hmac("HS256", b"secret").unwrap());
        let err = loader
            .assemble("t".into(), files(&[("p.rego", "package p")]))
            .unwrap_err();
        assert!(matches!(err, PolicyError::Signature(_)), "{err}");
    }
}
