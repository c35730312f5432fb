//! Throw-away PKI for ztkit's tests, examples and benches.
//!
//! Everything here is generated in memory with rcgen; nothing is meant for production.
//! A [`TestCa`] issues intermediates, leaves and CRLs; a [`TestCert`] carries the leaf,
//! its private key and the chain above it in PEM and DER, ready to be written to files.
//!
//! ```
//! use ztkit_test_support::{KeyAlg, TestCa};
//!
//! let ca = TestCa::new("Example Root CA");
//! let client = ca
//!     .leaf("frontend")
//!     .spiffe_id("spiffe://example.org/ns/web/sa/frontend")
//!     .client_auth()
//!     .issue();
//! assert!(client.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! let rsa = ca.leaf("legacy").key_alg(KeyAlg::Rsa2048).issue();
//! assert!(rsa.key_pem.contains("PRIVATE KEY"));
//! ```

// Test fixtures: a failure to generate a certificate is a broken test setup, so panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub use logs::capture_warnings;
pub use secret_volume::SecretVolume;

mod logs;
mod secret_volume;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The key algorithm of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256 (the default).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072-bit, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
}

impl KeyAlg {
    fn generate(self) -> KeyPair {
        let generated = match self {
            KeyAlg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlg::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlg::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyAlg::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlg::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
        };
        generated.expect("key generation")
    }
}

fn next_serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut bytes = Vec::with_capacity(16);
    // A leading 0x01 keeps the DER INTEGER positive and of fixed length.
    bytes.push(0x01);
    bytes.extend_from_slice(&nanos.to_be_bytes());
    bytes.extend_from_slice(&n.to_be_bytes());
    SerialNumber::from_slice(&bytes)
}

fn offset(from_now: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::seconds(from_now)
}

const DAY: i64 = 86_400;

/// A certificate authority (root or intermediate) that can issue certificates and CRLs.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The intermediates between this CA and its root, PEM, this CA first (empty for a root).
    chain_pem: String,
    chain_der: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("subject", &self.params.distinguished_name)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A self-signed ECDSA P-256 root CA valid from yesterday for ten years.
    pub fn new(common_name: &str) -> Self {
        Self::with_key_alg(common_name, KeyAlg::EcdsaP256)
    }

    /// A self-signed root CA with the given key algorithm.
    pub fn with_key_alg(common_name: &str, alg: KeyAlg) -> Self {
        let params = Self::ca_params(common_name, None);
        let key = alg.generate();
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key,
            chain_pem: String::new(),
            chain_der: Vec::new(),
        }
    }

    fn ca_params(common_name: &str, path_len: Option<u8>) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "ztkit tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(next_serial());
        params.not_before = offset(-DAY);
        params.not_after = offset(3650 * DAY);
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// An intermediate CA signed by this one (ECDSA P-256).
    pub fn intermediate(&self, common_name: &str) -> TestCa {
        let params = Self::ca_params(common_name, None);
        let key = KeyAlg::EcdsaP256.generate();
        let cert = params
            .signed_by(&key, &self.issuer())
            .expect("sign intermediate");
        let mut chain_der = vec![cert.der().clone()];
        chain_der.extend(self.chain_der.iter().cloned());
        TestCa {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key,
            chain_der,
        }
    }

    /// Starts a leaf certificate issued by this CA. The default is an ECDSA P-256 key,
    /// valid from yesterday for 30 days, with both clientAuth and serverAuth EKUs.
    pub fn leaf(&self, common_name: &str) -> LeafBuilder<'_> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(next_serial());
        params.not_before = offset(-DAY);
        params.not_after = offset(30 * DAY);
        params.use_authority_key_identifier_extension = true;
        LeafBuilder {
            ca: self,
            params,
            alg: KeyAlg::EcdsaP256,
            ekus: Vec::new(),
        }
    }

    /// A CRL signed by this CA that revokes `revoked`, valid from an hour ago for a day.
    pub fn crl(&self, revoked: &[&TestCert]) -> TestCrl {
        let params = CertificateRevocationListParams {
            this_update: offset(-3600),
            next_update: offset(DAY),
            crl_number: next_serial(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&c.serial),
                    revocation_time: offset(-60),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()).expect("sign CRL");
        TestCrl {
            pem: crl.pem().expect("CRL PEM"),
            der: crl.der().clone(),
        }
    }

    /// A version 1 CRL signed by this CA that revokes `revoked`: no version field and no
    /// extensions, as `openssl ca -gencrl` writes when its config sets no `crlnumber`.
    /// Valid from an hour ago for a day; signed correctly. rcgen only writes version 2, so
    /// this one is encoded here by hand.
    ///
    /// # Panics
    /// If this CA's key is not ECDSA P-256 (the default).
    pub fn crl_v1(&self, revoked: &[&TestCert]) -> TestCrl {
        assert!(
            self.key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256,
            "crl_v1 signs with ECDSA P-256 only"
        );
        // AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters.
        let alg = der::tlv(
            0x30,
            &der::tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        );
        let mut tbs = alg.clone();
        tbs.extend(der::cert_subject(&self.cert_der));
        tbs.extend(der::utc_time(offset(-3600)));
        tbs.extend(der::utc_time(offset(DAY)));
        if !revoked.is_empty() {
            let mut entries = Vec::new();
            for cert in revoked {
                let mut entry = der::tlv(0x02, &cert.serial);
                entry.extend(der::utc_time(offset(-60)));
                entries.extend(der::tlv(0x30, &entry));
            }
            tbs.extend(der::tlv(0x30, &entries));
        }
        let tbs = der::tlv(0x30, &tbs);
        let signature = rcgen::SigningKey::sign(&self.key, &tbs).expect("sign CRL");
        let mut bits = vec![0u8]; // no unused bits
        bits.extend(signature);
        let mut crl = tbs;
        crl.extend(alg);
        crl.extend(der::tlv(0x03, &bits));
        let der = der::tlv(0x30, &crl);
        TestCrl {
            pem: der::pem("X509 CRL", &der),
            der: CertificateRevocationListDer::from(der),
        }
    }

    /// The intermediates from this CA up to (not including) the root, PEM.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The CA's private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// A CRL in both encodings.
#[derive(Debug, Clone)]
pub struct TestCrl {
    /// PEM (`X509 CRL`).
    pub pem: String,
    /// DER.
    pub der: CertificateRevocationListDer<'static>,
}

/// Builder for a leaf certificate; finish with [`LeafBuilder::issue`].
pub struct LeafBuilder<'a> {
    ca: &'a TestCa,
    params: CertificateParams,
    alg: KeyAlg,
    ekus: Vec<ExtendedKeyUsagePurpose>,
}

impl LeafBuilder<'_> {
    /// Adds a URI SAN holding a SPIFFE ID (not checked here, so tests can issue bad ones).
    pub fn spiffe_id(self, id: &str) -> Self {
        self.uri_san(id)
    }

    /// Adds a URI SAN.
    pub fn uri_san(mut self, uri: &str) -> Self {
        self.params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("IA5 URI")));
        self
    }

    /// Adds a DNS SAN.
    pub fn dns(mut self, name: &str) -> Self {
        self.params
            .subject_alt_names
            .push(SanType::DnsName(name.try_into().expect("IA5 DNS name")));
        self
    }

    /// Adds an IP SAN.
    pub fn ip(mut self, ip: std::net::IpAddr) -> Self {
        self.params.subject_alt_names.push(SanType::IpAddress(ip));
        self
    }

    /// Adds an email SAN.
    pub fn email(mut self, email: &str) -> Self {
        self.params
            .subject_alt_names
            .push(SanType::Rfc822Name(email.try_into().expect("IA5 email")));
        self
    }

    /// Adds the clientAuth EKU (leaves with no EKU call get both clientAuth and serverAuth).
    pub fn client_auth(mut self) -> Self {
        self.ekus.push(ExtendedKeyUsagePurpose::ClientAuth);
        self
    }

    /// Adds the serverAuth EKU.
    pub fn server_auth(mut self) -> Self {
        self.ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
        self
    }

    /// Sets the key algorithm.
    pub fn key_alg(mut self, alg: KeyAlg) -> Self {
        self.alg = alg;
        self
    }

    /// Makes the certificate expire `lifetime` from now (valid since a minute ago).
    pub fn valid_for(mut self, lifetime: Duration) -> Self {
        self.params.not_before = offset(-60);
        self.params.not_after = offset(lifetime.as_secs() as i64);
        self
    }

    /// Makes the certificate expired: valid from 30 days ago until yesterday.
    pub fn expired(mut self) -> Self {
        self.params.not_before = offset(-30 * DAY);
        self.params.not_after = offset(-DAY);
        self
    }

    /// Makes the certificate valid from `not_before` (X.509 keeps whole seconds: pass a
    /// whole second to know the exact value) for 30 days.
    pub fn valid_from(mut self, not_before: SystemTime) -> Self {
        let since_epoch = not_before
            .duration_since(UNIX_EPOCH)
            .expect("not_before after 1970");
        let not_before = OffsetDateTime::UNIX_EPOCH + since_epoch;
        self.params.not_before = not_before;
        self.params.not_after = not_before + time::Duration::seconds(30 * DAY);
        self
    }

    /// Makes the certificate valid only from tomorrow.
    pub fn not_yet_valid(mut self) -> Self {
        self.params.not_before = offset(DAY);
        self.params.not_after = offset(30 * DAY);
        self
    }

    /// Marks the leaf as a CA (`CA:TRUE`), which verifiers must refuse as an end entity.
    pub fn ca_true(mut self) -> Self {
        self.params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        self.params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        self
    }

    /// Sets the serial number (big-endian bytes).
    pub fn serial(mut self, serial: &[u8]) -> Self {
        self.params.serial_number = Some(SerialNumber::from_slice(serial));
        self
    }

    /// Adds an arbitrary extension (OID arcs, DER content), for oversized-certificate tests.
    pub fn custom_extension(mut self, oid: &[u64], content: Vec<u8>) -> Self {
        self.params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(oid, content));
        self
    }

    /// Signs the certificate.
    pub fn issue(mut self) -> TestCert {
        if self.ekus.is_empty() {
            self.ekus = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
        }
        self.params.extended_key_usages = self.ekus;
        let key = self.alg.generate();
        let cert = self
            .params
            .signed_by(&key, &self.ca.issuer())
            .expect("sign leaf");
        let serial = self
            .params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes())
            .unwrap_or_default();
        let mut chain_der = vec![cert.der().clone()];
        chain_der.extend(self.ca.chain_der.iter().cloned());
        TestCert {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.ca.chain_pem),
            cert_der: cert.der().clone(),
            chain_der,
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            serial,
        }
    }
}

/// An issued leaf certificate with its key.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// The leaf followed by the issuing intermediates (not the root), PEM.
    pub chain_pem: String,
    /// The leaf, DER.
    pub cert_der: CertificateDer<'static>,
    /// The leaf followed by the issuing intermediates, DER.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The serial number, big-endian bytes.
    pub serial: Vec<u8>,
}

impl TestCert {
    /// The private key as a rustls `PrivateKeyDer`.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// The serial as lower-case hex without separators.
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes `name.crt` (the chain) and `name.key` into `dir`; returns their paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.chain_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A ready-made set for server tests: one root, a server certificate for `localhost`
/// and a client certificate with a SPIFFE ID.
#[derive(Debug)]
pub struct TestPki {
    /// The root CA.
    pub ca: TestCa,
    /// Server leaf: DNS `localhost`, IP 127.0.0.1, serverAuth.
    pub server: TestCert,
    /// Client leaf: `spiffe://example.org/ns/default/sa/client`, clientAuth.
    pub client: TestCert,
}

impl TestPki {
    /// Generates the set.
    pub fn new() -> Self {
        let ca = TestCa::new("ztkit test root");
        let server = ca
            .leaf("localhost")
            .dns("localhost")
            .ip(std::net::Ipv4Addr::LOCALHOST.into())
            .server_auth()
            .issue();
        let client = ca
            .leaf("client")
            .spiffe_id("spiffe://example.org/ns/default/sa/client")
            .client_auth()
            .issue();
        TestPki { ca, server, client }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_of_intermediates_has_leaf_first() {
        let root = TestCa::new("root");
        let mid = root.intermediate("mid");
        let leaf = mid.leaf("leaf").issue();
        assert_eq!(leaf.chain_der.len(), 2);
        assert_eq!(leaf.chain_der[1], mid.cert_der);
        assert_eq!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    }

    #[test]
    fn serials_are_unique() {
        let ca = TestCa::new("root");
        let a = ca.leaf("a").issue();
        let b = ca.leaf("b").issue();
        assert_ne!(a.serial, b.serial);
    }

    #[test]
    fn crl_is_pem() {
        let ca = TestCa::new("root");
        let a = ca.leaf("a").issue();
        let crl = ca.crl(&[&a]);
        assert!(crl.pem.contains("BEGIN X509 CRL"));
    }
}

/// Just enough DER to write a version 1 CRL by hand ([`TestCa::crl_v1`]).
mod der {
    use time::OffsetDateTime;

    /// Tag, definite length, contents.
    pub(crate) fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(contents);
        out
    }

    /// Splits one TLV off the front of `input`: (whole TLV, contents, rest).
    fn next(input: &[u8]) -> (&[u8], &[u8], &[u8]) {
        let first = input[1];
        let (len, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        };
        (
            &input[..header + len],
            &input[header..header + len],
            &input[header + len..],
        )
    }

    /// The subject Name of a certificate, as its DER bytes.
    pub(crate) fn cert_subject(cert: &[u8]) -> Vec<u8> {
        let (_, certificate, _) = next(cert);
        let (_, tbs, _) = next(certificate);
        let (_, _, rest) = next(tbs); // [0] version
        let (_, _, rest) = next(rest); // serialNumber
        let (_, _, rest) = next(rest); // signature
        let (_, _, rest) = next(rest); // issuer
        let (_, _, rest) = next(rest); // validity
        let (subject, _, _) = next(rest);
        subject.to_vec()
    }

    /// UTCTime `YYMMDDHHMMSSZ`.
    pub(crate) fn utc_time(t: OffsetDateTime) -> Vec<u8> {
        let text = format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            t.year() % 100,
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        tlv(0x17, text.as_bytes())
    }

    /// PEM with the given label, 64 columns.
    pub(crate) fn pem(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
