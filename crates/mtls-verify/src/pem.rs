//! Loading certificates, private keys and CRLs from PEM (or DER) files and bytes, with
//! size limits and errors that name the file.
//!
//! ```
//! use ztkit_test_support::TestCa;
//!
//! let ca = TestCa::new("root");
//! let leaf = ca.intermediate("mid").leaf("web").issue();
//! let chain = mtls_verify::pem::certificates(leaf.chain_pem.as_bytes())?;
//! assert_eq!(chain.len(), 2);
//! assert!(mtls_verify::pem::certificates(b"-----BEGIN CERTIFICATE-----\nnot base64!\n").is_err());
//! # Ok::<(), mtls_verify::Error>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::Error;
use crate::error::MEMORY;
use crate::identity::MAX_CERTIFICATE_SIZE;

/// The largest file read as key material (CA bundles and CRLs included).
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;
/// The most certificates accepted from one bundle.
pub const MAX_CERTIFICATES_PER_FILE: usize = 4096;

/// Parses every certificate in a PEM bundle (other sections are skipped), or a single DER
/// certificate. An input without certificates gives an empty list.
///
/// # Errors
/// [`Error::Pem`] for malformed PEM, a certificate over 64 KiB, or more than
/// [`MAX_CERTIFICATES_PER_FILE`] certificates.
pub fn certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    certificates_at(bytes, Path::new(MEMORY))
}

/// Parses a CA bundle: PEM, DER, or a SPIFFE bundle (JSON, told apart by its first
/// non-blank byte `{`; its X.509 authorities). An input without certificates gives an empty
/// list.
///
/// ```
/// use ztkit_test_support::TestCa;
///
/// let ca = TestCa::new("root");
/// assert_eq!(mtls_verify::pem::ca_bundle(ca.cert_pem.as_bytes())?, [ca.cert_der.clone()]);
/// assert!(mtls_verify::pem::ca_bundle(br#"{"keys": []}"#)?.is_empty());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
///
/// # Errors
/// [`Error::Pem`] or [`Error::SpiffeBundle`] for malformed input.
pub fn ca_bundle(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    crate::material::ca_certificates_at(bytes, Path::new(MEMORY))
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in PEM, or a DER PKCS#8 key.
///
/// # Errors
/// [`Error::NoPrivateKey`] if there is none, [`Error::Pem`] if the PEM is malformed.
pub fn private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    private_key_at(bytes, Path::new(MEMORY))
}

/// Parses every CRL in a PEM bundle (other sections are skipped), or a single DER CRL.
///
/// # Errors
/// [`Error::Pem`] for malformed PEM.
pub fn crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    crls_at(bytes, Path::new(MEMORY))
}

/// Reads a certificate bundle file; see [`certificates`].
///
/// # Errors
/// [`Error::Io`], [`Error::FileTooLarge`], [`Error::Pem`], and [`Error::NoCertificate`] if the
/// file holds no certificate.
pub fn read_certificates_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = certificates_at(&read_file(path)?, path)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a private key file; see [`private_key`].
///
/// # Errors
/// [`Error::Io`], [`Error::FileTooLarge`], [`Error::Pem`], [`Error::NoPrivateKey`].
pub fn read_private_key_file(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    private_key_at(&read_file(path)?, path)
}

/// Reads a CRL file; see [`crls`]. Each CRL must parse as a version 2 CRL (the only
/// version webpki accepts), so that an unusable file is named here rather than later; its
/// dates are not checked.
///
/// # Errors
/// [`Error::Io`], [`Error::FileTooLarge`], [`Error::Pem`], and [`Error::Crl`] if the file
/// holds no CRL or a CRL that cannot be used (malformed, or version 1: the error says how
/// to make `openssl ca -gencrl` write version 2).
pub fn read_crls_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let crls = crls_at(&read_file(path)?, path)?;
    if crls.is_empty() {
        return Err(Error::Crl {
            path: path.to_owned(),
            reason: "contains no CRL".into(),
        });
    }
    for crl in &crls {
        crate::material::parse_crl(crl, path)?;
    }
    Ok(crls)
}

/// Reads a whole file of at most [`MAX_FILE_SIZE`] bytes.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    let io = |e: std::io::Error| Error::Io {
        path: path.to_owned(),
        source: Arc::new(e),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    let size = buf.len() as u64;
    if size > MAX_FILE_SIZE {
        return Err(Error::FileTooLarge {
            path: path.to_owned(),
            size,
            limit: MAX_FILE_SIZE,
        });
    }
    Ok(buf)
}

fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30) && !bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// A reason that never echoes file content (key files are secret).
fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 in a section".into(),
        pem::Error::SectionTooLarge => "a section is too large".into(),
        pem::Error::NoItemsFound => "no items found".into(),
        _ => "malformed PEM".into(),
    }
}

pub(crate) fn certificates_at(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem_err = |reason: String| Error::Pem {
        path: path.to_owned(),
        reason,
    };
    if looks_like_der(bytes) {
        if bytes.len() > MAX_CERTIFICATE_SIZE {
            return Err(pem_err(format!(
                "DER certificate of {} bytes is over the {MAX_CERTIFICATE_SIZE}-byte limit",
                bytes.len()
            )));
        }
        return Ok(vec![CertificateDer::from(bytes.to_vec())]);
    }
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        let cert = item.map_err(|e| pem_err(pem_reason(&e)))?;
        if cert.len() > MAX_CERTIFICATE_SIZE {
            return Err(pem_err(format!(
                "certificate #{} is {} bytes, over the {MAX_CERTIFICATE_SIZE}-byte limit",
                out.len() + 1,
                cert.len()
            )));
        }
        if out.len() == MAX_CERTIFICATES_PER_FILE {
            return Err(pem_err(format!(
                "more than {MAX_CERTIFICATES_PER_FILE} certificates"
            )));
        }
        out.push(cert);
    }
    Ok(out)
}

pub(crate) fn private_key_at(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    if looks_like_der(bytes) {
        return Ok(PrivateKeyDer::Pkcs8(bytes.to_vec().into()));
    }
    for item in pem::SliceIter::<KeySection>::new(bytes) {
        let KeySection(kind, der) = item.map_err(|e| Error::Pem {
            path: path.to_owned(),
            reason: pem_reason(&e),
        })?;
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
            _ => continue,
        };
        return Ok(key);
    }
    Err(Error::NoPrivateKey {
        path: path.to_owned(),
    })
}

/// Any PEM section, so private keys of all three encodings can be found in one pass.
struct KeySection(SectionKind, Vec<u8>);

impl PemObject for KeySection {
    fn from_pem(kind: SectionKind, der: Vec<u8>) -> Option<Self> {
        Some(KeySection(kind, der))
    }
}

pub(crate) fn crls_at(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    if looks_like_der(bytes) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    CertificateRevocationListDer::pem_slice_iter(bytes)
        .map(|item| {
            item.map_err(|e| Error::Pem {
                path: path.to_owned(),
                reason: pem_reason(&e),
            })
        })
        .collect()
}

/// A SPIFFE bundle (JSON) as the SPIFFE Trust Domain and Bundle specification writes it:
/// what bundle endpoints serve and `spire-server bundle show -format spiffe` prints.
#[non_exhaustive]
#[derive(Clone, Debug, Default)]
pub struct SpiffeBundle {
    /// The X.509 authorities: the `x5c` certificate of every key with `use: "x509-svid"`.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// `spiffe_refresh_hint`: how often the publisher suggests fetching it again.
    pub refresh_hint: Option<std::time::Duration>,
    /// `spiffe_sequence`: the publisher's version number of the bundle.
    pub sequence: Option<u64>,
}

#[derive(serde::Deserialize)]
struct SpiffeBundleJson {
    keys: Vec<SpiffeBundleKey>,
    spiffe_refresh_hint: Option<u64>,
    spiffe_sequence: Option<u64>,
}

#[derive(serde::Deserialize)]
struct SpiffeBundleKey {
    #[serde(rename = "use")]
    key_use: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

/// Parses a SPIFFE bundle (JSON): a JWKS whose X.509 authorities are keys with
/// `use: "x509-svid"` and exactly one `x5c` entry (standard base64 DER). Keys of other uses
/// (`jwt-svid`) are skipped; a bundle without X.509 authorities is not an error (it is an
/// empty bundle).
///
/// ```
/// let bundle = mtls_verify::pem::spiffe_bundle(
///     br#"{"keys": [], "spiffe_refresh_hint": 300, "spiffe_sequence": 7}"#,
/// )?;
/// assert!(bundle.x509_authorities.is_empty());
/// assert_eq!(bundle.refresh_hint, Some(std::time::Duration::from_secs(300)));
/// assert!(mtls_verify::pem::spiffe_bundle(b"not json").is_err());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
///
/// # Errors
/// [`Error::SpiffeBundle`] for a document that is not a JWKS, or an `x509-svid` key without
/// exactly one valid `x5c` certificate.
pub fn spiffe_bundle(bytes: &[u8]) -> Result<SpiffeBundle, Error> {
    spiffe_bundle_at(bytes, Path::new(MEMORY))
}

pub(crate) fn spiffe_bundle_at(bytes: &[u8], path: &Path) -> Result<SpiffeBundle, Error> {
    use base64::Engine as _;
    let fail = |reason: String| Error::SpiffeBundle {
        path: path.to_owned(),
        reason,
    };
    let doc: SpiffeBundleJson =
        serde_json::from_slice(bytes).map_err(|e| fail(format!("not a JWKS document: {e}")))?;
    let mut x509_authorities = Vec::new();
    for (i, key) in doc.keys.iter().enumerate() {
        if key.key_use.as_deref() != Some("x509-svid") {
            continue;
        }
        let [x5c] = key.x5c.as_slice() else {
            return Err(fail(format!(
                "key #{} (use x509-svid) has {} x5c entries, exactly one is required",
                i + 1,
                key.x5c.len()
            )));
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(x5c)
            .map_err(|_| fail(format!("key #{}: x5c is not base64", i + 1)))?;
        if der.len() > MAX_CERTIFICATE_SIZE {
            return Err(fail(format!("key #{}: certificate over 64 KiB", i + 1)));
        }
        if x509_authorities.len() == MAX_CERTIFICATES_PER_FILE {
            return Err(fail("too many x509-svid keys".into()));
        }
        x509_authorities.push(CertificateDer::from(der));
    }
    Ok(SpiffeBundle {
        x509_authorities,
        refresh_hint: doc.spiffe_refresh_hint.map(std::time::Duration::from_secs),
        sequence: doc.spiffe_sequence,
    })
}

/// Where a piece of material came from: a file, or bytes given in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    File(PathBuf),
    Memory(Arc<[u8]>),
}

impl Source {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Source::File(p) => p,
            Source::Memory(_) => Path::new(MEMORY),
        }
    }

    pub(crate) fn read(&self) -> Result<Arc<[u8]>, Error> {
        match self {
            Source::File(p) => read_file(p).map(Arc::from),
            Source::Memory(b) => Ok(b.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztkit_test_support::TestCa;

    #[test]
    fn bundles_keys_and_crls() {
        let ca = TestCa::new("root");
        let leaf = ca.leaf("x").issue();
        let bundle = format!("{}{}", leaf.cert_pem, ca.cert_pem);
        assert_eq!(certificates(bundle.as_bytes()).unwrap().len(), 2);
        assert_eq!(certificates(&leaf.cert_der).unwrap()[0], leaf.cert_der);
        assert!(certificates(b"").unwrap().is_empty());
        assert!(matches!(
            private_key(leaf.key_pem.as_bytes()).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        // A key after a certificate in the same file is found.
        let combined = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        assert!(private_key(combined.as_bytes()).is_ok());
        assert!(matches!(
            private_key(leaf.cert_pem.as_bytes()),
            Err(Error::NoPrivateKey { .. })
        ));
        let crl = ca.crl(&[&leaf]);
        assert_eq!(crls(crl.pem.as_bytes()).unwrap().len(), 1);
        assert_eq!(crls(&crl.der).unwrap()[0], crl.der);
    }

    #[test]
    fn malformed_pem_is_an_error_without_echo() {
        let bad = b"-----BEGIN PRIVATE KEY-----\nTOP SECRET $$$\n-----END PRIVATE KEY-----\n";
        let err = private_key(bad).unwrap_err();
        assert!(matches!(err, Error::Pem { .. }), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        let err = certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err();
        assert!(err.to_string().contains("END"), "{err}");
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_certificates_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = read_certificates_file(&empty).unwrap_err();
        assert!(
            matches!(err, Error::NoCertificate { .. }) && err.to_string().contains("empty.pem")
        );
        let err = read_crls_file(&empty).unwrap_err();
        assert!(matches!(err, Error::Crl { .. }) && err.to_string().contains("empty.pem"));
    }

    #[test]
    fn oversized_certificates_are_refused() {
        let big = vec![0x30u8; MAX_CERTIFICATE_SIZE + 1];
        assert!(certificates(&big).is_err());
    }
}
