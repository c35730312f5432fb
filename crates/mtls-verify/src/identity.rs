//! The identity of a verified peer, parsed once from its leaf certificate.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{Error, SpiffeId};

/// The largest certificate (DER bytes) this crate parses; larger ones are refused unread.
pub const MAX_CERTIFICATE_SIZE: usize = 64 * 1024;

/// What a peer's leaf certificate says about it: SPIFFE ID, SANs, subject, serial, validity
/// and the SHA-256 fingerprint of the DER (for certificate-bound tokens, RFC 8705).
///
/// Built by the verifier during the handshake (or by [`PeerIdentity::from_der`]); it does not
/// by itself mean the certificate was verified. Serializes to JSON as
/// `{"spiffe_id", "dns_sans", "ip_sans", "email_sans", "uri_sans", "subject_cn", "subject",
/// "issuer", "serial", "not_before", "not_after", "fingerprint_sha256"}` with times in
/// RFC 3339 UTC and the fingerprint in lower-case hex.
///
/// ```
/// use mtls_verify::PeerIdentity;
/// use ztkit_test_support::TestCa;
///
/// let ca = TestCa::new("root");
/// let leaf = ca.leaf("web").spiffe_id("spiffe://example.org/web").dns("web.local").issue();
/// let id = PeerIdentity::from_der(&leaf.cert_der)?;
/// assert_eq!(id.spiffe_id().map(|s| s.as_str()), Some("spiffe://example.org/web"));
/// assert_eq!(id.dns_sans(), ["web.local"]);
/// assert_eq!(id.serial_hex(), leaf.serial_hex());
/// # Ok::<(), mtls_verify::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    spiffe_id: Option<SpiffeId>,
    dns_sans: Vec<String>,
    ip_sans: Vec<IpAddr>,
    email_sans: Vec<String>,
    uri_sans: Vec<String>,
    subject_cn: Option<String>,
    subject: String,
    issuer: String,
    serial_hex: String,
    not_before: SystemTime,
    not_after: SystemTime,
    fingerprint: [u8; 32],
}

impl PeerIdentity {
    /// Parses a DER certificate.
    ///
    /// The SPIFFE ID is set only when the certificate has exactly one URI SAN and it is a
    /// valid SPIFFE ID (X509-SVID spec); two SPIFFE URIs or a malformed one leave it `None`.
    ///
    /// # Errors
    /// [`Error::Certificate`] if the bytes are over [`MAX_CERTIFICATE_SIZE`], are not exactly
    /// one X.509 certificate, or hold a malformed subject alternative name.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        if der.len() > MAX_CERTIFICATE_SIZE {
            return Err(Error::Certificate(format!(
                "certificate of {} bytes is over the {MAX_CERTIFICATE_SIZE}-byte limit",
                der.len()
            )));
        }
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::Certificate(format!("cannot parse X.509: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Certificate(
                "trailing bytes after the certificate".into(),
            ));
        }
        Self::from_parsed(&cert, der)
    }

    fn from_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> Result<Self, Error> {
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        let mut email_sans = Vec::new();
        let mut uri_sans = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::Certificate(format!("bad subjectAltName extension: {e}")))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) => dns_sans.push((*s).to_owned()),
                    GeneralName::RFC822Name(s) => email_sans.push((*s).to_owned()),
                    GeneralName::URI(s) => uri_sans.push((*s).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_sans.push(ip_from_bytes(bytes)?),
                    GeneralName::Invalid(tag, _) => {
                        return Err(Error::Certificate(format!(
                            "malformed subjectAltName entry (tag {})",
                            tag.0
                        )));
                    }
                    _ => {}
                }
            }
        }
        let spiffe_id = match uri_sans.as_slice() {
            [only] => SpiffeId::parse(only).ok(),
            _ => None,
        };
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let validity = cert.validity();
        Ok(PeerIdentity {
            spiffe_id,
            dns_sans,
            ip_sans,
            email_sans,
            uri_sans,
            subject_cn,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial_hex: serial_to_hex(cert.raw_serial()),
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            fingerprint: Sha256::digest(der).into(),
        })
    }

    /// The SPIFFE ID, if the leaf is a valid X509-SVID (exactly one URI SAN, a valid ID).
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.spiffe_id.as_ref()
    }

    /// DNS names from the subject alternative name extension, as written in the certificate.
    pub fn dns_sans(&self) -> &[String] {
        &self.dns_sans
    }

    /// IP addresses from the subject alternative name extension.
    pub fn ip_sans(&self) -> &[IpAddr] {
        &self.ip_sans
    }

    /// E-mail addresses (rfc822Name) from the subject alternative name extension.
    pub fn email_sans(&self) -> &[String] {
        &self.email_sans
    }

    /// All URIs from the subject alternative name extension (including a SPIFFE ID).
    pub fn uri_sans(&self) -> &[String] {
        &self.uri_sans
    }

    /// The first common name of the subject, if any.
    pub fn subject_cn(&self) -> Option<&str> {
        self.subject_cn.as_deref()
    }

    /// The subject distinguished name, e.g. `CN=frontend, O=example`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer distinguished name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The serial number in lower-case hex without separators or DER sign padding.
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// SHA-256 of the leaf's DER encoding (the `x5t#S256` of RFC 8705, before base64url).
    pub fn fingerprint_sha256(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    #[cfg(test)]
    pub(crate) fn set_fingerprint_for_test(&mut self, fp: [u8; 32]) {
        self.fingerprint = fp;
    }

    /// [`fingerprint_sha256`](Self::fingerprint_sha256) in lower-case hex.
    pub fn fingerprint_sha256_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }
}

impl serde::Serialize for PeerIdentity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("PeerIdentity", 12)?;
        s.serialize_field("spiffe_id", &self.spiffe_id)?;
        s.serialize_field("dns_sans", &self.dns_sans)?;
        s.serialize_field("ip_sans", &self.ip_sans)?;
        s.serialize_field("email_sans", &self.email_sans)?;
        s.serialize_field("uri_sans", &self.uri_sans)?;
        s.serialize_field("subject_cn", &self.subject_cn)?;
        s.serialize_field("subject", &self.subject)?;
        s.serialize_field("issuer", &self.issuer)?;
        s.serialize_field("serial", &self.serial_hex)?;
        s.serialize_field("not_before", &rfc3339(self.not_before))?;
        s.serialize_field("not_after", &rfc3339(self.not_after))?;
        s.serialize_field("fingerprint_sha256", &self.fingerprint_sha256_hex())?;
        s.end()
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, Error> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(Error::Certificate(format!(
        "IP address SAN of {} bytes (want 4 or 16)",
        bytes.len()
    )))
}

/// Lower-case hex of a DER INTEGER's content, without the leading zero bytes of sign padding.
pub(crate) fn serial_to_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = raw.get(first..).unwrap_or_default();
    if trimmed.is_empty() {
        return "00".to_owned();
    }
    hex::encode(trimmed)
}

pub(crate) fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(unix.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Formats a time as RFC 3339 in UTC, e.g. `2026-11-25T10:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{} seconds since 1970", odt.unix_timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztkit_test_support::TestCa;

    #[test]
    fn fields_and_json() {
        let ca = TestCa::new("Root X");
        let leaf = ca
            .leaf("frontend")
            .spiffe_id("spiffe://example.org/ns/web/sa/frontend")
            .dns("frontend.web.svc")
            .ip("10.1.2.3".parse().unwrap())
            .ip("::1".parse().unwrap())
            .email("ops@example.org")
            .issue();
        let id = PeerIdentity::from_der(&leaf.cert_der).unwrap();
        assert_eq!(
            id.spiffe_id().unwrap().as_str(),
            "spiffe://example.org/ns/web/sa/frontend"
        );
        assert_eq!(id.uri_sans(), ["spiffe://example.org/ns/web/sa/frontend"]);
        assert_eq!(id.dns_sans(), ["frontend.web.svc"]);
        assert_eq!(
            id.ip_sans(),
            [
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(id.email_sans(), ["ops@example.org"]);
        assert_eq!(id.subject_cn(), Some("frontend"));
        assert_eq!(id.subject(), "CN=frontend");
        assert!(id.issuer().contains("CN=Root X"), "{}", id.issuer());
        assert_eq!(id.serial_hex(), leaf.serial_hex());
        assert!(id.not_before() < SystemTime::now());
        assert!(id.not_after() > SystemTime::now());
        let fp: [u8; 32] = Sha256::digest(&leaf.cert_der).into();
        assert_eq!(id.fingerprint_sha256(), &fp);

        let json = serde_json::to_value(&id).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for k in [
            "spiffe_id",
            "dns_sans",
            "ip_sans",
            "email_sans",
            "uri_sans",
            "subject_cn",
            "subject",
            "issuer",
            "serial",
            "not_before",
            "not_after",
            "fingerprint_sha256",
        ] {
            assert!(keys.contains(&k), "missing {k} in {json}");
        }
        assert_eq!(json["ip_sans"][0], "10.1.2.3");
        assert_eq!(json["serial"], leaf.serial_hex());
        assert_eq!(json["fingerprint_sha256"], hex::encode(fp));
        let nb = json["not_after"].as_str().unwrap();
        assert!(nb.ends_with('Z') && nb.contains('T'), "{nb}");
        time::OffsetDateTime::parse(nb, &time::format_description::well_known::Rfc3339).unwrap();
    }

    #[test]
    fn two_spiffe_uris_give_no_spiffe_id() {
        let ca = TestCa::new("root");
        let leaf = ca
            .leaf("x")
            .spiffe_id("spiffe://example.org/a")
            .spiffe_id("spiffe://example.org/b")
            .issue();
        let id = PeerIdentity::from_der(&leaf.cert_der).unwrap();
        assert_eq!(id.spiffe_id(), None);
        assert_eq!(id.uri_sans().len(), 2);
    }

    #[test]
    fn spiffe_plus_other_uri_gives_no_spiffe_id() {
        let ca = TestCa::new("root");
        let leaf = ca
            .leaf("x")
            .spiffe_id("spiffe://example.org/a")
            .uri_san("https://example.org/")
            .issue();
        assert_eq!(
            PeerIdentity::from_der(&leaf.cert_der).unwrap().spiffe_id(),
            None
        );
    }

    #[test]
    fn malformed_spiffe_uri_gives_no_spiffe_id() {
        let ca = TestCa::new("root");
        for bad in [
            "spiffe://Example.org/a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org:443/a",
            "spiffe://example.org/a?q",
        ] {
            let leaf = ca.leaf("x").spiffe_id(bad).issue();
            let id = PeerIdentity::from_der(&leaf.cert_der).unwrap();
            assert_eq!(id.spiffe_id(), None, "{bad}");
            assert_eq!(id.uri_sans(), [bad]);
        }
    }

    #[test]
    fn rejects_garbage_trailing_bytes_and_oversize() {
        assert!(PeerIdentity::from_der(b"").is_err());
        assert!(PeerIdentity::from_der(b"\x30\x03\x02\x01\x01").is_err());
        let ca = TestCa::new("root");
        let leaf = ca.leaf("x").issue();
        let mut der = leaf.cert_der.to_vec();
        der.push(0);
        let err = PeerIdentity::from_der(&der).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let huge = vec![0x30; MAX_CERTIFICATE_SIZE + 1];
        let err = PeerIdentity::from_der(&huge).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn serial_hex_strips_sign_padding() {
        assert_eq!(serial_to_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_to_hex(&[0x01, 0x02]), "0102");
        assert_eq!(serial_to_hex(&[0x00]), "00");
        let ca = TestCa::new("root");
        let leaf = ca.leaf("x").serial(&[0x80, 0xab]).issue();
        let id = PeerIdentity::from_der(&leaf.cert_der).unwrap();
        assert_eq!(id.serial_hex(), "80ab");
    }
}
