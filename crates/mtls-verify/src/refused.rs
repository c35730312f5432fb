//! The client certificate of a refused handshake, for the acceptor's audit record.
//!
//! When the verifier refuses a chain, rustls turns the refusal into an alert and an error
//! (`UnknownIssuer`, `Expired`, …) that no longer carries the certificate, and the
//! connection is gone. An acceptor that wants to record *what* was presented wraps the
//! poll of its handshake future in [`capture_refused_certificate`]: rustls calls the
//! verifier synchronously inside that poll, on the same thread, and the verifier leaves a
//! [`RefusedCertificate`] there for it. Outside a capture the verifier does no extra work.

use std::cell::Cell;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::PeerIdentity;
use crate::der;
use crate::identity::{MAX_CERTIFICATE_SIZE, serial_to_hex};

/// The leaf certificate a client presented in a handshake the verifier refused, and why.
///
/// Obtained with [`capture_refused_certificate`]. The certificate was *not* verified:
/// the subject and serial are what the client claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedCertificate {
    subject: Option<String>,
    serial_hex: Option<String>,
    fingerprint: [u8; 32],
    reason: String,
}

impl RefusedCertificate {
    /// The subject distinguished name (`CN=…, O=…`), `None` if the certificate does not
    /// parse.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The serial number in lower-case hex, `None` if the certificate does not parse.
    pub fn serial_hex(&self) -> Option<&str> {
        self.serial_hex.as_deref()
    }

    /// SHA-256 of the DER certificate.
    pub fn fingerprint_sha256(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// [`fingerprint_sha256`](Self::fingerprint_sha256) in lower-case hex.
    pub fn fingerprint_sha256_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// Why the verifier refused it, in plain words (as in its log line).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn describe(end_entity: &[u8], identity: Option<&PeerIdentity>, reason: String) -> Self {
        let (subject, serial_hex) = match identity {
            Some(id) => (
                Some(id.subject().to_owned()),
                Some(id.serial_hex().to_owned()),
            ),
            None => match X509Certificate::from_der(end_entity) {
                Ok((_, cert)) if end_entity.len() <= MAX_CERTIFICATE_SIZE => (
                    Some(cert.subject().to_string()),
                    Some(serial_to_hex(cert.raw_serial())),
                ),
                _ => (
                    None,
                    der::summarize(end_entity).map(|s| serial_to_hex(s.serial)),
                ),
            },
        };
        RefusedCertificate {
            subject,
            serial_hex,
            fingerprint: Sha256::digest(end_entity).into(),
            reason,
        }
    }
}

thread_local! {
    /// `Some` while a capture runs on this thread: the refusal seen so far, if any.
    static CAPTURE: Cell<Option<Option<RefusedCertificate>>> = const { Cell::new(None) };
}

/// Runs `f` and returns, with its result, the last client certificate the verifier refused
/// while `f` ran on this thread.
///
/// Meant for an acceptor: wrap each poll of the handshake future, keep a `Some` result,
/// and put it into the refusal's log line or audit record. Captures nest (an inner one
/// does not take an outer one's certificate). Resumed sessions re-verified by
/// [`ServerTls::peer_identity`](crate::ServerTls::peer_identity) are captured the same way.
///
/// ```
/// use mtls_verify::{ChainVerifyOptions, capture_refused_certificate, verify_client_chain};
/// use ztkit_test_support::TestCa;
///
/// let (trusted, other) = (TestCa::new("trusted"), TestCa::new("other"));
/// let leaf = other.leaf("mallory").client_auth().issue();
/// let options = ChainVerifyOptions::new(vec![trusted.cert_der.clone()]);
/// let (result, refused) = capture_refused_certificate(|| verify_client_chain(&leaf.chain_der, &options));
/// assert!(result.is_err());
/// let refused = refused.expect("the verifier saw the certificate");
/// assert_eq!(refused.serial_hex(), Some(leaf.serial_hex().as_str()));
/// assert!(refused.subject().unwrap().contains("mallory"));
/// assert!(refused.reason().contains("unknown issuer"), "{}", refused.reason());
/// ```
pub fn capture_refused_certificate<R>(f: impl FnOnce() -> R) -> (R, Option<RefusedCertificate>) {
    /// Puts the outer capture back when `f` panics.
    struct Restore(Option<Option<Option<RefusedCertificate>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(outer) = self.0.take() {
                CAPTURE.with(|c| c.set(outer));
            }
        }
    }
    let mut restore = Restore(Some(CAPTURE.with(|c| c.replace(Some(None)))));
    let out = f();
    let outer = restore.0.take().flatten();
    let found = CAPTURE.with(|c| c.replace(outer)).flatten();
    (out, found)
}

/// Called by the verifier on every refusal of a presented chain; a no-op outside a capture.
pub(crate) fn note(
    end_entity: &CertificateDer<'_>,
    identity: Option<&PeerIdentity>,
    reason: impl FnOnce() -> String,
) {
    CAPTURE.with(|c| {
        if let Some(slot) = c.take() {
            drop(slot);
            c.set(Some(Some(RefusedCertificate::describe(
                end_entity,
                identity,
                reason(),
            ))));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztkit_test_support::TestCa;

    #[test]
    fn nothing_is_noted_outside_a_capture() {
        let ca = TestCa::new("root");
        let leaf = ca.leaf("x").issue();
        note(&leaf.cert_der, None, || unreachable!("no capture, no work"));
        let ((), found) = capture_refused_certificate(|| ());
        assert_eq!(found, None);
    }

    #[test]
    fn captures_nest_and_unparseable_certificates_keep_their_fingerprint() {
        let ca = TestCa::new("root");
        let leaf = ca.leaf("inner").issue();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x07]);
        let ((), outer) = capture_refused_certificate(|| {
            note(&garbage, None, || "garbage".into());
            let ((), inner) = capture_refused_certificate(|| {
                note(&leaf.cert_der, None, || "inner".into());
            });
            let inner = inner.unwrap();
            assert_eq!(inner.serial_hex(), Some(leaf.serial_hex().as_str()));
            assert_eq!(inner.reason(), "inner");
        });
        let outer = outer.unwrap();
        assert_eq!(outer.subject(), None);
        assert_eq!(outer.serial_hex(), None);
        assert_eq!(outer.reason(), "garbage");
        assert_eq!(
            outer.fingerprint_sha256_hex(),
            hex::encode(Sha256::digest(&garbage))
        );
        // Restored: nothing left active.
        CAPTURE.with(|c| assert!(c.take().is_none()));
    }
}
