//! Validating key material before it is used: our certificate and key, CA bundles, CRLs.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use x509_parser::prelude::FromDer;

use crate::identity::{rfc3339, system_time};
use crate::pem::{certificates_at, crls_at, private_key_at};
use crate::{Error, PeerIdentity};

/// Our own certificate chain and key, checked.
#[derive(Clone)]
pub(crate) struct LoadedIdentity {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) leaf: PeerIdentity,
}

/// Parses and checks our certificate chain and private key: both parse, the key matches the
/// leaf's public key, and the leaf is currently valid. The validity period is checked last,
/// so a refusal for it means nothing else is wrong (the reloader checks such material again
/// as time passes).
pub(crate) fn load_identity(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedIdentity, Error> {
    let chain = certificates_at(cert_pem, cert_path)?;
    let Some(leaf_der) = chain.first() else {
        return Err(Error::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let leaf = PeerIdentity::from_der(leaf_der).map_err(|e| Error::Pem {
        path: cert_path.to_owned(),
        reason: e.to_string(),
    })?;
    let key_der = private_key_at(key_pem, key_path)?;
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| Error::InvalidPrivateKey {
            path: key_path.to_owned(),
            reason: "malformed or of an unsupported algorithm".into(),
        })?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(Error::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            return Err(Error::InvalidPrivateKey {
                path: key_path.to_owned(),
                reason: "cannot derive its public key to compare with the certificate".into(),
            });
        }
        Err(e) => {
            return Err(Error::Pem {
                path: cert_path.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    let now = SystemTime::now();
    if leaf.not_after() < now {
        return Err(Error::CertificateExpired {
            path: cert_path.to_owned(),
            not_after: rfc3339(leaf.not_after()),
        });
    }
    if leaf.not_before() > now {
        return Err(Error::CertificateNotYetValid {
            path: cert_path.to_owned(),
            not_before: rfc3339(leaf.not_before()),
        });
    }
    Ok(LoadedIdentity {
        certified: Arc::new(certified),
        leaf,
    })
}

/// Builds a root store from a CA bundle; every certificate must be usable.
pub(crate) fn root_store(
    certs: &[CertificateDer<'_>],
    path: &Path,
) -> Result<Arc<RootCertStore>, Error> {
    if certs.is_empty() {
        return Err(Error::EmptyCaBundle {
            path: path.to_owned(),
        });
    }
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store
            .add(cert.clone().into_owned())
            .map_err(|e| Error::InvalidCaCertificate {
                path: path.to_owned(),
                reason: format!("certificate #{}: {e}", i + 1),
            })?;
    }
    Ok(Arc::new(store))
}

/// Parses a CA bundle into a root store: PEM, DER, or a SPIFFE bundle (JSON).
pub(crate) fn load_roots(bytes: &[u8], path: &Path) -> Result<Arc<RootCertStore>, Error> {
    root_store(&ca_certificates_at(bytes, path)?, path)
}

/// The CA certificates of a bundle: PEM or DER, or a SPIFFE bundle (a JWKS document, told
/// apart by its first non-blank byte `{`).
pub(crate) fn ca_certificates_at(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        crate::pem::spiffe_bundle_at(bytes, path).map(|bundle| bundle.x509_authorities)
    } else {
        certificates_at(bytes, path)
    }
}

/// How the reason of an [`Error::Crl`] for a CRL past its nextUpdate begins (the reloader
/// checks such a refusal again as time passes).
pub(crate) const CRL_EXPIRED: &str = "expired (nextUpdate";

/// The reason of an [`Error::Crl`] for a version 1 CRL: what is wrong and how to fix it.
pub(crate) const CRL_V1: &str = "is a version 1 CRL, and only version 2 CRLs are accepted \
     (RFC 5280 requires version 2 with the CRL number extension); with `openssl ca -gencrl`, \
     set `crlnumber = <file holding a number, e.g. 01>` in the CA section of the openssl \
     config and generate the CRL again";

/// Parses one CRL as webpki will use it. A CRL webpki refuses is checked for the usual
/// cause, a version 1 CRL (what `openssl ca -gencrl` writes without `crlnumber`), so the
/// error says that and how to fix it rather than only `BadDer`.
pub(crate) fn parse_crl<'a>(
    crl: &'a CertificateRevocationListDer<'_>,
    path: &Path,
) -> Result<x509_parser::revocation_list::CertificateRevocationList<'a>, Error> {
    let fail = |reason: String| Error::Crl {
        path: path.to_owned(),
        reason,
    };
    let parsed = x509_parser::revocation_list::CertificateRevocationList::from_der(crl);
    if let Err(webpki_err) = webpki::OwnedCertRevocationList::from_der(crl) {
        return Err(fail(match &parsed {
            Ok((_, p)) if is_version_1(p) => CRL_V1.to_owned(),
            _ => format!("cannot parse: {webpki_err}"),
        }));
    }
    parsed
        .map(|(_, p)| p)
        .map_err(|e| fail(format!("cannot parse: {e}")))
}

/// A CRL without a version field, or with version 1 (encoded 0), is version 1.
fn is_version_1(crl: &x509_parser::revocation_list::CertificateRevocationList<'_>) -> bool {
    crl.version()
        .is_none_or(|v| v == x509_parser::x509::X509Version::V1)
}

/// Checks one CRL: it parses for webpki and, unless allowed, is not past its nextUpdate.
pub(crate) fn check_crl(
    crl: &CertificateRevocationListDer<'_>,
    path: &Path,
    allow_expired: bool,
) -> Result<(), Error> {
    let fail = |reason: String| Error::Crl {
        path: path.to_owned(),
        reason,
    };
    let parsed = parse_crl(crl, path)?;
    if !allow_expired && let Some(next) = parsed.next_update() {
        let next = system_time(next.timestamp());
        if next < SystemTime::now() {
            return Err(fail(format!(
                "{CRL_EXPIRED} {}); publish a fresh CRL or use allow_expired_crls()",
                rfc3339(next)
            )));
        }
    }
    Ok(())
}

/// Parses and checks a CRL file's contents.
pub(crate) fn load_crls(
    pem: &[u8],
    path: &Path,
    allow_expired: bool,
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let crls = crls_at(pem, path)?;
    if crls.is_empty() {
        return Err(Error::Crl {
            path: path.to_owned(),
            reason: "contains no CRL".into(),
        });
    }
    for crl in &crls {
        check_crl(crl, path, allow_expired)?;
    }
    Ok(crls)
}

// === IdentityResolver ===

/// Presents our certificate in handshakes (both sides). With `refuse_after_expiry`, a
/// certificate past its notAfter is no longer presented: a server then refuses new
/// handshakes (no certificate to send), a client sends none (and the server refuses it).
/// Fail closed when the source that should have renewed it did not.
#[derive(Debug)]
pub(crate) struct IdentityResolver {
    certified: Arc<CertifiedKey>,
    not_after: SystemTime,
    serial: String,
    refuse_after_expiry: bool,
    /// Unix seconds of the last warning (at most one a minute).
    last_warning: std::sync::atomic::AtomicU64,
}

impl IdentityResolver {
    pub(crate) fn new(identity: &LoadedIdentity, refuse_after_expiry: bool) -> Self {
        IdentityResolver {
            certified: identity.certified.clone(),
            not_after: identity.leaf.not_after(),
            serial: identity.leaf.serial_hex().to_owned(),
            refuse_after_expiry,
            last_warning: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        if !self.refuse_after_expiry {
            return Some(self.certified.clone());
        }
        let now = SystemTime::now();
        if now <= self.not_after {
            return Some(self.certified.clone());
        }
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_warning.load(std::sync::atomic::Ordering::Relaxed);
        if secs >= last.saturating_add(60)
            && self
                .last_warning
                .compare_exchange(
                    last,
                    secs,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                serial = %self.serial,
                not_after = %rfc3339(self.not_after),
                "our certificate expired and was not renewed: new handshakes are refused"
            );
        }
        None
    }
}

impl rustls::server::ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
