//! Building (and signing) bundles: what `opa build` and `opa sign` do, for tests, demos and
//! tooling.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::signature::{SIGNATURES_FILE, file_digest};
use super::{MANIFEST_FILE, Manifest};
use crate::error::{PolicyError, Result};

/// Signs bundles the way `opa sign` does: a `.signatures.json` holding one JWT that lists
/// every file with its SHA-256 digest.
#[derive(Clone)]
pub struct BundleSigner {
    key: EncodingKey,
    algorithm: Algorithm,
    key_id: Option<String>,
    scope: Option<String>,
}

impl fmt::Debug for BundleSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleSigner")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl BundleSigner {
    /// A signer for a PKCS#8 PEM private key (RSA, EC or Ed25519) and a JWT algorithm name.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] for an unknown algorithm or a key that does not match it.
    pub fn from_private_key_pem(algorithm: &str, pem: &[u8]) -> Result<Self> {
        let alg = Algorithm::from_str(algorithm)
            .map_err(|_| PolicyError::Config(format!("unknown signing algorithm {algorithm:?}")))?;
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => {
                return Err(PolicyError::Config(format!(
                    "{algorithm} is not a public-key algorithm (for HMAC use BundleSigner::hmac)"
                )));
            }
        }
        .map_err(|e| PolicyError::Config(format!("bundle signing key: {e}")))?;
        Ok(Self {
            key,
            algorithm: alg,
            key_id: None,
            scope: None,
        })
    }

    /// A signer for an HMAC shared secret (`HS256`, `HS384`, `HS512`).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] for a non-HMAC algorithm.
    pub fn hmac(algorithm: &str, secret: &[u8]) -> Result<Self> {
        let alg = Algorithm::from_str(algorithm)
            .map_err(|_| PolicyError::Config(format!("unknown signing algorithm {algorithm:?}")))?;
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(PolicyError::Config(format!(
                "{algorithm} is not an HMAC algorithm"
            )));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret),
            algorithm: alg,
            key_id: None,
            scope: None,
        })
    }

    /// Puts `keyid` into the signed payload.
    #[must_use]
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Puts `scope` into the signed payload.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The `.signatures.json` content for `files` (bundle path → content; an existing
    /// `.signatures.json` among them is skipped).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Signature`] if a structured file does not parse, or signing fails.
    pub fn signatures_json(&self, files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct FileEntry<'a> {
            name: &'a str,
            hash: String,
            algorithm: &'static str,
        }
        #[derive(Serialize)]
        struct Payload<'a> {
            files: Vec<FileEntry<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            keyid: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            scope: Option<&'a str>,
        }
        let mut entries = Vec::new();
        for (name, content) in files {
            if name == SIGNATURES_FILE {
                continue;
            }
            let digest = file_digest(name, content, "SHA-256")?;
            entries.push(FileEntry {
                name,
                hash: hex::encode(digest),
                algorithm: "SHA-256",
            });
        }
        let payload = Payload {
            files: entries,
            keyid: self.key_id.as_deref(),
            scope: self.scope.as_deref(),
        };
        let header = Header::new(self.algorithm);
        let jwt = jsonwebtoken::encode(&header, &payload, &self.key)
            .map_err(|e| PolicyError::Signature(format!("signing failed: {e}")))?;
        serde_json::to_vec(&serde_json::json!({ "signatures": [jwt] }))
            .map_err(|e| PolicyError::Signature(format!("signing failed: {e}")))
    }
}

/// Assembles a bundle from files and writes it as a `.tar.gz` archive or a directory.
///
/// ```
/// use policy_rego::{BundleLoader, BundleWriter, Manifest};
///
/// let mut manifest = Manifest::default();
/// manifest.revision = "v7".into();
/// let archive = BundleWriter::new()
///     .manifest(&manifest)
///     .file("authz/policy.rego", "package authz\nallow if input.user == \"alice\"\n")
///     .file("authz/data.json", r#"{"admins": ["alice"]}"#)
///     .to_tar_gz()
///     .unwrap();
/// let bundle = BundleLoader::new().load_tar_gz("example", &archive).unwrap();
/// assert_eq!(bundle.revision(), "v7");
/// ```
#[derive(Debug, Clone, Default)]
pub struct BundleWriter {
    files: BTreeMap<String, Vec<u8>>,
    signer: Option<BundleSigner>,
}

impl BundleWriter {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file at a bundle-relative path.
    #[must_use]
    pub fn file(mut self, path: impl Into<String>, content: impl AsRef<[u8]>) -> Self {
        self.files.insert(path.into(), content.as_ref().to_vec());
        self
    }

    /// Adds a `.manifest` file.
    #[must_use]
    pub fn manifest(self, manifest: &Manifest) -> Self {
        let bytes = serde_json::to_vec(manifest).unwrap_or_default();
        self.file(MANIFEST_FILE, bytes)
    }

    /// Signs the bundle with `signer` when it is written (adds `.signatures.json`).
    #[must_use]
    pub fn sign(mut self, signer: BundleSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The files that will be written, including `.signatures.json` when signing.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Signature`] if signing fails.
    pub fn into_files(mut self) -> Result<BTreeMap<String, Vec<u8>>> {
        if let Some(signer) = self.signer.take() {
            let sig = signer.signatures_json(&self.files)?;
            self.files.insert(SIGNATURES_FILE.to_owned(), sig);
        }
        Ok(self.files)
    }

    /// The bundle as a gzip-compressed tar archive.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Signature`] if signing fails, [`PolicyError::Archive`] if writing fails.
    pub fn to_tar_gz(self) -> Result<Vec<u8>> {
        let files = self.into_files()?;
        let io_err = |e: std::io::Error| PolicyError::Archive(e.to_string());
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        for (path, content) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, path, content.as_slice())
                .map_err(io_err)?;
        }
        let gz = builder.into_inner().map_err(io_err)?;
        gz.finish().map_err(io_err)
    }

    /// Writes the bundle's files under `dir` (which is created if needed).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Io`] if a file cannot be written.
    pub fn write_dir(self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        for (path, content) in self.into_files()? {
            let target = dir.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| PolicyError::io(parent.display(), e))?;
            }
            let mut f =
                std::fs::File::create(&target).map_err(|e| PolicyError::io(target.display(), e))?;
            f.write_all(&content)
                .map_err(|e| PolicyError::io(target.display(), e))?;
        }
        Ok(())
    }
}
