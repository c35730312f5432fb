//! OPA bundle signatures (`.signatures.json`).
//!
//! A signed bundle carries `.signatures.json` = `{"signatures": ["<JWT>"]}`. The JWT's payload
//! lists every other file of the bundle with its digest:
//!
//! ```json
//! {"files": [{"name": ".manifest", "hash": "<hex>", "algorithm": "SHA-256"}, ...],
//!  "keyid": "optional", "scope": "optional"}
//! ```
//!
//! Verification follows OPA's `bundle/verify.go`: exactly one JWT; its signature checked with
//! the configured key and algorithm; the payload's `scope` equal to the configured scope (both
//! default to empty); then every file of the bundle (except `.signatures.json`) must be listed
//! with a matching digest, and every listed file must be present. Structured files
//! (`data.json`, `data.yaml`, `.manifest`) are hashed in their canonical JSON form (see
//! [`canonical`](super::canonical)); all others byte for byte.
//!
//! No file is parsed before what can be checked without parsing has passed: the JWT, the file
//! list both ways and every byte-for-byte digest. A structured file whose bytes already hash
//! to the signed digest (canonical, as `opa build` writes it) is then accepted unparsed; only
//! one that is not is put in canonical form to be hashed (with a bounded parser of our own for
//! JSON, within serde-saphyr's budgets for YAML), and if it does not parse it cannot be what
//! was signed: a digest mismatch. The loader parses data and manifest only after all of this.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::canonical;
use crate::error::{PolicyError, Result};

/// The name of the signature file inside a bundle.
pub const SIGNATURES_FILE: &str = ".signatures.json";

/// The key that bundle signatures must verify with (OPA's `keys` + `signing` config).
///
/// Built from a PEM public key (RSA, EC or Ed25519) or an HMAC secret, with the JWT algorithm
/// the signer used. The verifier accepts exactly that one algorithm.
///
/// Several keys, chosen by key id as OPA's `keys` map and `signing.keyid` are, come from
/// [`also_trust`](Self::also_trust).
#[derive(Clone)]
pub struct SignatureVerifier {
    key: DecodingKey,
    algorithm: Algorithm,
    key_id: Option<String>,
    scope: String,
    /// Further keys, each with an id (see [`also_trust`](Self::also_trust)).
    others: Vec<SignatureVerifier>,
}

impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SignatureVerifier")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("scope", &self.scope)
            .field("others", &self.others)
            .finish_non_exhaustive()
    }
}

impl SignatureVerifier {
    /// A verifier for a PEM-encoded public key and a JWT algorithm name (`RS256`, `RS384`,
    /// `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] if the algorithm is unknown or is an HMAC algorithm, or the PEM
    /// does not hold a key of the algorithm's family.
    pub fn from_public_key_pem(algorithm: &str, pem: &[u8]) -> Result<Self> {
        let alg = parse_algorithm(algorithm)?;
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => {
                return Err(PolicyError::Config(format!(
                    "{algorithm} is not a public-key algorithm (for HMAC use SignatureVerifier::hmac)"
                )));
            }
        }
        .map_err(|e| PolicyError::Config(format!("bundle verification key: {e}")))?;
        Ok(Self {
            key,
            algorithm: alg,
            key_id: None,
            scope: String::new(),
            others: Vec::new(),
        })
    }

    /// A verifier for an HMAC shared secret (`HS256`, `HS384`, `HS512`).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] if the algorithm is not an HMAC algorithm or the secret is empty.
    pub fn hmac(algorithm: &str, secret: &[u8]) -> Result<Self> {
        let alg = parse_algorithm(algorithm)?;
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(PolicyError::Config(format!(
                "{algorithm} is not an HMAC algorithm"
            )));
        }
        if secret.is_empty() {
            return Err(PolicyError::Config("empty HMAC secret".into()));
        }
        Ok(Self {
            key: DecodingKey::from_secret(secret),
            algorithm: alg,
            key_id: None,
            scope: String::new(),
            others: Vec::new(),
        })
    }

    /// The key's id. When set, a payload naming a different `keyid` is refused; when unset,
    /// the payload's `keyid` is not checked (there is only one key).
    #[must_use]
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// The scope the signature must carry (OPA's `scope`; default empty, which requires the
    /// payload to carry no scope or an empty one).
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Trusts `other` too (OPA's `keys` with several entries). Every key of a set needs an
    /// id ([`key_id`](Self::key_id)); a bundle's signature names its key with the JWT header's
    /// `kid` or the payload's `keyid` (read before verification only to choose the key, as
    /// OPA does; the signature must then verify with that configured key and its configured
    /// algorithm), and one that names none is checked with this verifier's own key, the
    /// default (OPA's `signing.keyid`). The scope is this verifier's.
    ///
    /// ```
    /// use policy_rego::{BundleLoader, BundleSigner, BundleWriter, SignatureVerifier};
    ///
    /// let old = SignatureVerifier::hmac("HS256", b"2025 secret")?.key_id("2025");
    /// let new = SignatureVerifier::hmac("HS512", b"2026 secret")?.key_id("2026");
    /// let loader = BundleLoader::new().verification_key(new.also_trust(old)?);
    ///
    /// let signed_by = |id: &str, alg: &str, secret: &[u8]| {
    ///     BundleWriter::new()
    ///         .file("p.rego", "package p")
    ///         .sign(BundleSigner::hmac(alg, secret).unwrap().key_id(id))
    ///         .to_tar_gz()
    ///         .unwrap()
    /// };
    /// assert!(loader.load_tar_gz("b", &signed_by("2025", "HS256", b"2025 secret")).is_ok());
    /// assert!(loader.load_tar_gz("b", &signed_by("2026", "HS512", b"2026 secret")).is_ok());
    /// assert!(loader.load_tar_gz("b", &signed_by("2027", "HS256", b"2025 secret")).is_err());
    /// assert!(loader.load_tar_gz("b", &signed_by("2026", "HS256", b"2025 secret")).is_err());
    /// # Ok::<(), policy_rego::PolicyError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] when either key has no id, or the id is taken.
    pub fn also_trust(mut self, other: SignatureVerifier) -> Result<Self> {
        let mut added = vec![SignatureVerifier {
            others: Vec::new(),
            ..other.clone()
        }];
        added.extend(other.others);
        let no_id = || {
            PolicyError::Config("every key of a bundle verification key set needs a key id".into())
        };
        if self.key_id.is_none() {
            return Err(no_id());
        }
        for key in &added {
            let id = key.key_id.as_ref().ok_or_else(no_id)?;
            if self.key_for(id).is_some() {
                return Err(PolicyError::Config(format!(
                    "bundle verification key id {id:?} is configured twice"
                )));
            }
            self.others.push(key.clone());
        }
        Ok(self)
    }

    /// The configured key with this id.
    fn key_for(&self, id: &str) -> Option<&SignatureVerifier> {
        std::iter::once(self)
            .chain(&self.others)
            .find(|k| k.key_id.as_deref() == Some(id))
    }

    /// The key a token names: its header's `kid`, else its payload's `keyid` (unverified,
    /// only to choose), else the default. Only for key sets; one key keeps its own rules.
    fn choose_key(&self, token: &str) -> Result<&SignatureVerifier> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| PolicyError::Signature(format!("JWT header: {e}")))?;
        let named = match header.kid {
            Some(kid) => Some(kid),
            None => unverified_key_id(token),
        };
        match named {
            None => Ok(self),
            Some(id) => self.key_for(&id).ok_or_else(|| {
                PolicyError::Signature(format!(
                    "signed with key id {id:?}, which is not configured"
                ))
            }),
        }
    }

    /// Verifies `files` (bundle-relative path → content, including `.signatures.json`).
    pub(crate) fn verify(&self, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
        let sig_file = files.get(SIGNATURES_FILE).ok_or_else(|| {
            PolicyError::Signature(format!("{SIGNATURES_FILE} is missing from the bundle"))
        })?;
        let sigs: SignaturesFile = serde_json::from_slice(sig_file)
            .map_err(|e| PolicyError::Signature(format!("{SIGNATURES_FILE}: {e}")))?;
        let token = match sigs.signatures.as_slice() {
            [one] => one,
            [] => {
                return Err(PolicyError::Signature(format!(
                    "{SIGNATURES_FILE}: no JWT (expected exactly one)"
                )));
            }
            _ => {
                return Err(PolicyError::Signature(format!(
                    "{SIGNATURES_FILE}: several JWTs (expected exactly one)"
                )));
            }
        };

        let key = if self.others.is_empty() {
            self
        } else {
            self.choose_key(token)?
        };
        let mut validation = Validation::new(key.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let payload = jsonwebtoken::decode::<SignedPayload>(token, &key.key, &validation)
            .map_err(|e| PolicyError::Signature(format!("JWT does not verify: {e}")))?
            .claims;

        if let (Some(want), Some(got)) = (&key.key_id, &payload.keyid)
            && want != got
        {
            return Err(PolicyError::Signature(format!(
                "signed with key id {got:?}, expected {want:?}"
            )));
        }
        if payload.scope.as_deref().unwrap_or_default() != self.scope {
            return Err(PolicyError::Signature("scope mismatch".into()));
        }

        let mut listed: BTreeMap<String, SignedFile> = BTreeMap::new();
        for f in payload.files {
            let name = normalize_name(&f.name);
            if listed.insert(name.clone(), f).is_some() {
                return Err(PolicyError::Signature(format!(
                    "file {name} is listed twice in the signature"
                )));
            }
        }

        // Every check that needs no parsing comes first: the file list both ways, then the
        // digests of files hashed byte for byte. Only then are structured files hashed, and
        // one whose bytes already hash to the signed digest (a canonical file, as `opa build`
        // writes them) is accepted without being parsed at all.
        let mut structured = Vec::new();
        for (path, content) in files {
            if path == SIGNATURES_FILE {
                continue;
            }
            let entry = listed.remove(path).ok_or_else(|| {
                PolicyError::Signature(format!("file {path} is not included in the signature"))
            })?;
            let want = hex::decode(&entry.hash)
                .map_err(|_| PolicyError::Signature(format!("file {path}: digest is not hex")))?;
            let algorithm = digest_algorithm(path, &entry.algorithm)?;
            if is_structured(path) {
                structured.push((path, content, want, algorithm));
            } else if digest::digest(algorithm, content).as_ref() != want.as_slice() {
                return Err(digest_mismatch(path));
            }
        }
        if let Some(missing) = listed.keys().next() {
            return Err(PolicyError::Signature(format!(
                "file {missing} is listed in the signature but missing from the bundle"
            )));
        }
        for (path, content, want, algorithm) in structured {
            if digest::digest(algorithm, content).as_ref() == want.as_slice() {
                continue;
            }
            // Not canonical as it stands: hash its canonical form. Content that does not even
            // parse cannot be what was signed, so that too is a digest mismatch.
            let got = canonical_digest(path, content, algorithm).map_err(|detail| {
                PolicyError::Signature(format!("file {path}: digest mismatch ({detail})"))
            })?;
            if got != want {
                return Err(digest_mismatch(path));
            }
        }
        Ok(())
    }
}

/// The `keyid` of a JWT's payload, read without verifying it (to choose the key that will);
/// `None` when the payload is not base64url JSON with a string `keyid`.
fn unverified_key_id(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct KeyIdOnly {
        keyid: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<KeyIdOnly>(&bytes).ok()?.keyid
}

fn digest_mismatch(path: &str) -> PolicyError {
    PolicyError::Signature(format!("file {path}: digest mismatch"))
}

fn parse_algorithm(name: &str) -> Result<Algorithm> {
    Algorithm::from_str(name)
        .map_err(|_| PolicyError::Config(format!("unknown signing algorithm {name:?}")))
}

fn normalize_name(name: &str) -> String {
    name.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// Whether OPA hashes this file in canonical JSON form.
pub(crate) fn is_structured(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    matches!(
        base,
        "data.json" | "data.yaml" | ".manifest" | SIGNATURES_FILE
    )
}

/// The digest algorithm a signature names for a file.
fn digest_algorithm(path: &str, algorithm: &str) -> Result<&'static digest::Algorithm> {
    match algorithm {
        "SHA-256" => Ok(&digest::SHA256),
        "SHA-384" => Ok(&digest::SHA384),
        "SHA-512" => Ok(&digest::SHA512),
        "SHA-512-256" => Ok(&digest::SHA512_256),
        "" => Err(PolicyError::Signature(format!(
            "file {path}: no hashing algorithm given"
        ))),
        other => Err(PolicyError::Signature(format!(
            "file {path}: unsupported hashing algorithm {other:?}"
        ))),
    }
}

/// The digest of a structured file's canonical JSON form (see the module docs); the error
/// says why the content has none.
fn canonical_digest(
    path: &str,
    content: &[u8],
    algorithm: &'static digest::Algorithm,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(content.len());
    if path.ends_with(".yaml") {
        canonical::canonical_value(&super::yaml_document(content)?, &mut out);
    } else {
        canonical::canonical_json(content, &mut out).map_err(|e| format!("not valid JSON: {e}"))?;
    }
    Ok(digest::digest(algorithm, &out).as_ref().to_vec())
}

/// The digest OPA computes for a bundle file (see the module docs).
///
/// # Errors
///
/// [`PolicyError::Signature`] for an unsupported algorithm or a structured file that does not
/// parse.
pub(crate) fn file_digest(path: &str, content: &[u8], algorithm: &str) -> Result<Vec<u8>> {
    let algorithm = digest_algorithm(path, algorithm)?;
    if is_structured(path) {
        canonical_digest(path, content, algorithm)
            .map_err(|e| PolicyError::Signature(format!("file {path}: {e}")))
    } else {
        Ok(digest::digest(algorithm, content).as_ref().to_vec())
    }
}

#[derive(Deserialize)]
struct SignaturesFile {
    #[serde(default)]
    signatures: Vec<String>,
}

#[derive(Deserialize)]
struct SignedPayload {
    #[serde(default)]
    files: Vec<SignedFile>,
    #[serde(default)]
    keyid: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct SignedFile {
    name: String,
    hash: String,
    #[serde(default)]
    algorithm: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_files_hash_like_opa() {
        // OPA's own test (v1/bundle/verify_test.go, "bad_digest") reports the MD5 of the
        // manifest `{"revision": "quickbrownfaux"}` as a005c38a509dc2d5a7407b9494efb2ad, which
        // is the MD5 of its canonical form `{"revision":"quickbrownfaux"}`. Its SHA-256:
        let want = "507a2c38a1441db58d2cb87982c42aa91a4342ef422a6b542eddebeef6f0412f";
        let got =
            file_digest(".manifest", br#"{"revision": "quickbrownfaux"}"#, "SHA-256").unwrap();
        assert_eq!(hex::encode(got), want);
        // Unstructured files are hashed as they are.
        let raw = file_digest("x.rego", br#"{"revision": "quickbrownfaux"}"#, "SHA-256").unwrap();
        assert_ne!(hex::encode(raw), want);
        assert!(file_digest("x.rego", b"", "MD5").is_err());
        assert!(file_digest("x.rego", b"", "").is_err());
    }

    fn signed_with(kid: Option<&str>, secret: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let content = b"package p".to_vec();
        let payload = serde_json::json!({"files": [{
            "name": "p.rego",
            "hash": hex::encode(digest::digest(&digest::SHA256, &content)),
            "algorithm": "SHA-256",
        }]});
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        let jwt = jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap();
        BTreeMap::from([
            ("p.rego".to_owned(), content),
            (
                SIGNATURES_FILE.to_owned(),
                serde_json::to_vec(&serde_json::json!({"signatures": [jwt]})).unwrap(),
            ),
        ])
    }

    #[test]
    fn a_key_set_chooses_by_the_header_kid_and_defaults_to_its_own_key() {
        let key = |id: &str| {
            SignatureVerifier::hmac("HS256", format!("{id}-secret").as_bytes())
                .unwrap()
                .key_id(id)
        };
        let set = key("a")
            .also_trust(key("b"))
            .unwrap()
            .also_trust(key("c"))
            .unwrap();
        assert!(set.verify(&signed_with(Some("b"), b"b-secret")).is_ok());
        assert!(set.verify(&signed_with(Some("c"), b"c-secret")).is_ok());
        // No kid: the default key (the verifier's own).
        assert!(set.verify(&signed_with(None, b"a-secret")).is_ok());
        for (kid, secret, why) in [
            (Some("a"), &b"b-secret"[..], "does not verify"),
            (None, b"b-secret", "does not verify"),
            (Some("z"), b"z-secret", "not configured"),
        ] {
            let err = set.verify(&signed_with(kid, secret)).unwrap_err();
            assert!(err.to_string().contains(why), "{kid:?}: {err}");
        }
        // One key keeps its rules: a header kid does not choose anything.
        assert!(
            key("a")
                .verify(&signed_with(Some("other"), b"a-secret"))
                .is_ok()
        );

        let unnamed = SignatureVerifier::hmac("HS256", b"x").unwrap();
        assert!(key("a").also_trust(unnamed.clone()).is_err());
        assert!(unnamed.also_trust(key("a")).is_err());
        assert!(key("a").also_trust(key("a")).is_err(), "an id taken twice");
    }
}
