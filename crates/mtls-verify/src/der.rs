//! A tiny, allocation-free DER walker that reads just what the chain policy needs from a
//! certificate (serial, signature algorithm, public key size) without a full X.509 parse.
//! Every step is bounded by the input length; malformed input yields `None`.

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;

/// 1.2.840.113549.1.1.1 rsaEncryption
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.113549.1.1.10 RSASSA-PSS (as a key or signature algorithm)
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
/// 1.3.14.3.2.26 SHA-1 (inside RSASSA-PSS parameters)
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];

/// Signature algorithms that use SHA-1 or weaker hashes.
const WEAK_SIGNATURE_ALGS: &[(&[u8], &str)] = &[
    // 1.2.840.113549.1.1.5 sha1WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        "sha1WithRSAEncryption",
    ),
    // 1.2.840.113549.1.1.4 md5WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        "md5WithRSAEncryption",
    ),
    // 1.2.840.113549.1.1.2 md2WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x02],
        "md2WithRSAEncryption",
    ),
    // 1.3.14.3.2.29 sha1WithRSASignature (OIW)
    (&[0x2b, 0x0e, 0x03, 0x02, 0x1d], "sha1WithRSASignature"),
    // 1.2.840.10045.4.1 ecdsa-with-SHA1
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
        "ecdsa-with-SHA1",
    ),
    // 1.2.840.10040.4.3 dsa-with-sha1
    (&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03], "dsa-with-sha1"),
];

/// The parts of a certificate the chain policy looks at.
#[derive(Debug)]
pub(crate) struct CertSummary<'a> {
    /// Content octets of the serial number INTEGER.
    pub(crate) serial: &'a [u8],
    /// Content octets of the outer signatureAlgorithm OID.
    pub(crate) sig_alg: &'a [u8],
    /// What follows the OID inside the signatureAlgorithm SEQUENCE (the parameters).
    pub(crate) sig_params: &'a [u8],
    /// The issuer Name, whole TLV.
    pub(crate) issuer: &'a [u8],
    /// The subject Name, whole TLV.
    pub(crate) subject: &'a [u8],
    /// Bits in the RSA modulus, when the subject key is RSA (rsaEncryption or RSASSA-PSS).
    pub(crate) rsa_bits: Option<usize>,
}

impl CertSummary<'_> {
    /// The name of a weak (SHA-1, MD5, MD2) signature algorithm, if this certificate uses one.
    pub(crate) fn weak_signature(&self) -> Option<&'static str> {
        if let Some((_, name)) = WEAK_SIGNATURE_ALGS.iter().find(|(o, _)| *o == self.sig_alg) {
            return Some(name);
        }
        if self.sig_alg == OID_RSASSA_PSS {
            // RSASSA-PSS parameters default to SHA-1 when the hash is absent.
            let params = self.sig_params;
            let absent = params.is_empty() || params == [0x05, 0x00] || params == [0x30, 0x00];
            let has_sha1 = params.windows(OID_SHA1.len()).any(|w| w == OID_SHA1);
            if absent || has_sha1 {
                return Some("RSASSA-PSS with SHA-1");
            }
        }
        None
    }
}

/// Reads one DER TLV: returns (tag, content, rest). Only single-byte tags and definite
/// lengths of up to four bytes are accepted.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = tlv(input)?;
    (tag == want).then_some((content, rest))
}

/// Walks a certificate's DER far enough to fill a [`CertSummary`].
pub(crate) fn summarize(cert: &[u8]) -> Option<CertSummary<'_>> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (tbs, after_tbs) = expect(certificate, SEQUENCE)?;
    let (sig_alg_seq, _) = expect(after_tbs, SEQUENCE)?;
    let (sig_alg, sig_params) = expect(sig_alg_seq, OID)?;

    // tbsCertificate: [0] version OPTIONAL, serial, signature, issuer, validity, subject, spki
    let mut rest = tbs;
    if rest.first() == Some(&CONTEXT_0) {
        rest = tlv(rest)?.2;
    }
    let (serial, rest) = expect(rest, INTEGER)?;
    let (_, _, rest) = tlv(rest)?; // signature
    let (_, _, after_issuer) = tlv(rest)?;
    let issuer = rest.get(..rest.len() - after_issuer.len())?;
    let (_, _, rest) = tlv(after_issuer)?; // validity
    let (_, _, after_subject) = tlv(rest)?;
    let subject = rest.get(..rest.len() - after_subject.len())?;
    let rest = after_subject;
    let (spki, _) = expect(rest, SEQUENCE)?;
    let (key_alg_seq, spki_rest) = expect(spki, SEQUENCE)?;
    let (key_alg, _) = expect(key_alg_seq, OID)?;
    let rsa_bits = if key_alg == OID_RSA_ENCRYPTION || key_alg == OID_RSASSA_PSS {
        let (bits, _) = expect(spki_rest, BIT_STRING)?;
        let (&unused, key) = bits.split_first()?;
        if unused != 0 {
            return None;
        }
        let (rsa_key, _) = expect(key, SEQUENCE)?;
        let (modulus, _) = expect(rsa_key, INTEGER)?;
        Some(integer_bits(modulus))
    } else {
        None
    };
    Some(CertSummary {
        serial,
        issuer,
        subject,
        sig_alg,
        sig_params,
        rsa_bits,
    })
}

/// Significant bits of a non-negative DER INTEGER's content octets.
fn integer_bits(content: &[u8]) -> usize {
    let first = content
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(content.len());
    match content.get(first..) {
        Some([top, rest @ ..]) => rest.len() * 8 + (8 - top.leading_zeros() as usize),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztkit_test_support::{KeyAlg, TestCa};

    #[test]
    fn summarizes_ecdsa_and_rsa() {
        let ca = TestCa::new("root");
        let ec = ca.leaf("ec").serial(&[0x42, 0x01]).issue();
        let s = summarize(&ec.cert_der).unwrap();
        assert_eq!(s.serial, [0x42, 0x01]);
        assert_eq!(s.rsa_bits, None);
        // ecdsa-with-SHA256
        assert_eq!(s.sig_alg, [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(s.weak_signature(), None);
        assert_ne!(s.issuer, s.subject);
        let root = summarize(&ca.cert_der).unwrap();
        assert_eq!(root.issuer, root.subject);
        assert_eq!(root.issuer, s.issuer);

        let rsa = ca.leaf("rsa").key_alg(KeyAlg::Rsa2048).issue();
        assert_eq!(summarize(&rsa.cert_der).unwrap().rsa_bits, Some(2048));
        let rsa = ca.leaf("rsa").key_alg(KeyAlg::Rsa3072).issue();
        assert_eq!(summarize(&rsa.cert_der).unwrap().rsa_bits, Some(3072));
    }

    #[test]
    fn integer_bits_counts_significant_bits() {
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01, 0x00]), 9);
        assert_eq!(integer_bits(&[0x7f]), 7);
        assert_eq!(integer_bits(&[0x00]), 0);
        assert_eq!(integer_bits(&[]), 0);
    }

    #[test]
    fn weak_signatures_are_named() {
        let mk = |alg: &'static [u8], params: &'static [u8]| CertSummary {
            serial: &[1],
            issuer: &[],
            subject: &[],
            sig_alg: alg,
            sig_params: params,
            rsa_bits: None,
        };
        assert_eq!(
            mk(WEAK_SIGNATURE_ALGS[0].0, &[0x05, 0x00]).weak_signature(),
            Some("sha1WithRSAEncryption")
        );
        assert!(mk(OID_RSASSA_PSS, &[]).weak_signature().is_some());
        assert!(mk(OID_RSASSA_PSS, &[0x30, 0x00]).weak_signature().is_some());
        // PSS with SHA-256 parameters (hashAlgorithm [0] { sha256 }).
        let pss256: &[u8] = &[
            0x30, 0x0f, 0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, 0x01,
        ];
        assert_eq!(mk(OID_RSASSA_PSS, pss256).weak_signature(), None);
    }

    #[test]
    fn garbage_is_none() {
        assert!(summarize(b"").is_none());
        assert!(summarize(b"\x30\x84\xff\xff\xff\xff").is_none());
        assert!(summarize(b"\x30\x80\x00\x00").is_none());
        assert!(summarize(b"\x1f\x01\x00").is_none());
        assert!(summarize(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }
}
