//! The chain policy rustls lacks — weak RSA keys and SHA-1 signatures anywhere in the
//! presented chain — through `verify_client_chain` (the CLI's path) and real handshakes.
//!
//! rcgen cannot make RSA-1024 keys or SHA-1 signatures, so the weak certificates here are
//! built by hand: an RSA-1024 *public* key signed by a test CA (its private half is never
//! needed, the policy refuses before any signature check), and a SHA-256 signature whose
//! algorithm identifier is rewritten to SHA-1. Real ones made by `openssl` are in
//! `tests/openssl.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use mtls_verify::{ChainVerifyOptions, Error, IdentityAuthorizer, verify_client_chain};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
use support::{ClientOpts, TestServer, client_config, connect, server_builder};
use x509_parser::prelude::FromDer;
use ztkit_test_support::{KeyAlg, TestCa, TestPki};

/// An RSA public key of the given size (a fixed odd modulus with the top bit set).
struct RsaPublicKey(Vec<u8>);

impl RsaPublicKey {
    fn of_bits(bits: usize) -> Self {
        let n = bits / 8;
        let mut modulus = vec![0x00, 0xc3];
        modulus.extend(std::iter::repeat_n(0x5a, n - 2));
        modulus.push(0x01);
        let mut int = vec![0x02];
        der_len(&mut int, modulus.len());
        int.extend(modulus);
        let mut body = int;
        body.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut seq = vec![0x30];
        der_len(&mut seq, body.len());
        seq.extend(body);
        RsaPublicKey(seq)
    }
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
}

impl PublicKeyData for RsaPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// An rcgen issuer for a test CA: its subject (CN and O, read back from its certificate)
/// and its key.
fn issuer_of(ca: &TestCa) -> Issuer<'static, KeyPair> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&ca.cert_der).unwrap();
    let mut params = CertificateParams::default();
    for cn in cert.subject().iter_common_name() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn.as_str().unwrap());
    }
    for o in cert.subject().iter_organization() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o.as_str().unwrap());
    }
    params.key_identifier_method = rcgen::KeyIdMethod::Sha256;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Issuer::new(params, KeyPair::from_pem(&ca.key_pem()).unwrap())
}

/// A certificate for `key`, signed by `ca` (a leaf, or a CA when `is_ca`).
fn cert_for_key(
    ca: &TestCa,
    cn: &str,
    key: &impl PublicKeyData,
    is_ca: bool,
) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if is_ca {
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    params.signed_by(key, &issuer_of(ca)).unwrap().der().clone()
}

/// Rewrites every sha256WithRSAEncryption identifier into sha1WithRSAEncryption (same length).
fn claim_sha1(der: &[u8]) -> CertificateDer<'static> {
    const SHA256_RSA: [u8; 11] = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
    ];
    let mut out = der.to_vec();
    let mut hits = 0;
    for i in 0..out.len().saturating_sub(SHA256_RSA.len()) {
        if out[i..i + SHA256_RSA.len()] == SHA256_RSA {
            out[i + SHA256_RSA.len() - 1] = 0x05;
            hits += 1;
        }
    }
    assert_eq!(
        hits, 2,
        "expected the signature algorithm inside and outside the TBS"
    );
    CertificateDer::from(out)
}

fn options(pki: &TestPki) -> ChainVerifyOptions {
    ChainVerifyOptions::new(vec![pki.ca.cert_der.clone()])
}

#[test]
fn the_client_chain_verifies_like_the_server() {
    let pki = TestPki::new();
    let id = verify_client_chain(&pki.client.chain_der, &options(&pki)).unwrap();
    assert_eq!(id.serial_hex(), pki.client.serial_hex());

    let other = TestCa::new("other");
    let err = verify_client_chain(
        &other.leaf("x").client_auth().issue().chain_der,
        &options(&pki),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Verification(_)), "{err}");
    assert!(err.to_string().contains("trusted CA"), "{err}");

    let err = verify_client_chain(&pki.server.chain_der, &options(&pki)).unwrap_err();
    assert!(err.to_string().contains("extended key usage"), "{err}");

    let strict = options(&pki).authorizer(IdentityAuthorizer::trust_domain("other.org").unwrap());
    let err = verify_client_chain(&pki.client.chain_der, &strict).unwrap_err();
    assert!(matches!(err, Error::NotAuthorized(_)), "{err}");

    let revoked = options(&pki).crls(vec![pki.ca.crl(&[&pki.client]).der]);
    let err = verify_client_chain(&pki.client.chain_der, &revoked).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");

    let later = options(&pki)
        .at_time(std::time::SystemTime::now() + std::time::Duration::from_secs(365 * 86400));
    let err = verify_client_chain(&pki.client.chain_der, &later).unwrap_err();
    assert!(err.to_string().contains("expired at"), "{err}");

    assert!(matches!(
        verify_client_chain(&[], &options(&pki)),
        Err(Error::NoPeerCertificate)
    ));
    let empty = ChainVerifyOptions::new(vec![]);
    assert!(matches!(
        verify_client_chain(&pki.client.chain_der, &empty),
        Err(Error::EmptyCaBundle { .. })
    ));
}

#[test]
fn rsa_1024_leaf_is_refused() {
    let pki = TestPki::new();
    let weak = cert_for_key(&pki.ca, "weak", &RsaPublicKey::of_bits(1024), false);
    let err = verify_client_chain(&[weak], &options(&pki)).unwrap_err();
    assert!(matches!(err, Error::Certificate(_)), "{err}");
    assert!(err.to_string().contains("1024-bit RSA key"), "{err}");

    // The same construction at 2048 bits passes the chain checks.
    let ok = cert_for_key(&pki.ca, "ok", &RsaPublicKey::of_bits(2048), false);
    verify_client_chain(&[ok], &options(&pki)).unwrap();
}

#[test]
fn rsa_1024_intermediate_is_refused_even_if_not_needed_for_the_path() {
    let pki = TestPki::new();
    let weak_ca = cert_for_key(&pki.ca, "weak CA", &RsaPublicKey::of_bits(1024), true);
    let chain = vec![pki.client.cert_der.clone(), weak_ca];
    let err = verify_client_chain(&chain, &options(&pki)).unwrap_err();
    assert!(
        err.to_string().contains("intermediate certificate #1")
            && err.to_string().contains("1024-bit"),
        "{err}"
    );
}

#[test]
fn sha1_signed_leaf_and_intermediate_are_refused() {
    let rsa_root = TestCa::with_key_alg("rsa root", KeyAlg::Rsa2048);
    let options = ChainVerifyOptions::new(vec![rsa_root.cert_der.clone()]);
    let leaf = rsa_root.leaf("leaf").client_auth().issue();
    // Untouched, the RSA-signed leaf verifies.
    verify_client_chain(&leaf.chain_der, &options).unwrap();

    let sha1_leaf = claim_sha1(&leaf.cert_der);
    let err = verify_client_chain(&[sha1_leaf], &options).unwrap_err();
    assert!(matches!(err, Error::Certificate(_)), "{err}");
    assert!(err.to_string().contains("sha1WithRSAEncryption"), "{err}");

    // A SHA-1 intermediate that path building would not even use is refused too.
    let sha1_ca = claim_sha1(&rsa_root.intermediate("mid").cert_der);
    let err = verify_client_chain(&[leaf.cert_der.clone(), sha1_ca], &options).unwrap_err();
    assert!(
        err.to_string().contains("intermediate certificate #1")
            && err.to_string().contains("SHA-1"),
        "{err}"
    );
}

#[tokio::test]
async fn weak_intermediates_are_refused_in_a_real_handshake() {
    let pki = TestPki::new();
    let tls = server_builder(&pki.ca, &pki.server).build().unwrap();
    let mut srv = TestServer::start(tls).await;
    let rsa_root = TestCa::with_key_alg("rsa root", KeyAlg::Rsa2048);
    for (extra, want) in [
        (
            cert_for_key(&pki.ca, "weak CA", &RsaPublicKey::of_bits(1024), true),
            "1024-bit RSA key",
        ),
        (claim_sha1(&rsa_root.intermediate("mid").cert_der), "SHA-1"),
    ] {
        let chain = vec![pki.client.cert_der.clone(), extra];
        let config = client_config(
            &pki.ca,
            Some((&chain, pki.client.private_key())),
            &ClientOpts::default(),
        );
        let out = connect(srv.addr, config).await;
        assert!(!out.accepted(), "{out:?}");
        let reason = srv.next_event().await.refused_reason();
        assert!(reason.contains(want), "{reason}");
    }
    // The plain chain is fine.
    let config = client_config(
        &pki.ca,
        Some((&pki.client.chain_der, pki.client.private_key())),
        &ClientOpts::default(),
    );
    assert!(connect(srv.addr, config).await.accepted());
}

#[test]
fn a_verifier_obtained_from_the_server_applies_the_same_policy() {
    use rustls::pki_types::UnixTime;
    let pki = TestPki::new();
    let tls = server_builder(&pki.ca, &pki.server)
        .max_chain_depth(2)
        .build()
        .unwrap();
    let verifier = tls.client_verifier();
    assert!(verifier.client_auth_mandatory());
    verifier
        .verify_client_cert(&pki.client.cert_der, &[], UnixTime::now())
        .unwrap();
    let deep = pki
        .ca
        .intermediate("a")
        .intermediate("b")
        .leaf("c")
        .client_auth()
        .issue();
    let (ee, ints) = deep.chain_der.split_first().unwrap();
    let err = verifier
        .verify_client_cert(ee, ints, UnixTime::now())
        .unwrap_err();
    assert!(
        mtls_verify::human_reason(&err).contains("maximum depth of 2"),
        "{err}"
    );
}

/// A CRL from `ca` whose nextUpdate was yesterday.
fn expired_crl(ca: &TestCa) -> rcgen::CertificateRevocationList {
    let now = time::OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::days(2),
        next_update: now - time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from_slice(&[7]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer_of(ca))
    .unwrap()
}

#[test]
fn expired_crls_are_refused_unless_allowed() {
    let pki = TestPki::new();
    let crl = expired_crl(&pki.ca);
    let crl_pem = crl.pem().unwrap();
    let builder = || server_builder(&pki.ca, &pki.server).crl_pem(crl_pem.as_bytes());
    let err = builder().build().unwrap_err();
    assert!(matches!(err, Error::Crl { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    builder().allow_expired_crls().build().unwrap();

    let err = verify_client_chain(
        &pki.client.chain_der,
        &options(&pki).crls(vec![crl.der().clone()]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Crl { .. }), "{err}");
    let relaxed = options(&pki)
        .crls(vec![crl.der().clone()])
        .allow_expired_crls();
    verify_client_chain(&pki.client.chain_der, &relaxed).unwrap();
}

#[test]
fn a_crl_that_expires_while_serving_fails_closed() {
    let pki = TestPki::new();
    // Valid now (nextUpdate in a day); verify as of two days from now.
    let crl = pki.ca.crl(&[]);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2 * 86400);
    let strict = options(&pki).crls(vec![crl.der.clone()]).at_time(later);
    let err = verify_client_chain(&pki.client.chain_der, &strict).unwrap_err();
    assert!(err.to_string().contains("nextUpdate"), "{err}");
    let relaxed = options(&pki)
        .crls(vec![crl.der.clone()])
        .allow_expired_crls()
        .at_time(later);
    verify_client_chain(&pki.client.chain_der, &relaxed).unwrap();
}

/// What `openssl ca -gencrl` writes without `crlnumber` (a version 1 CRL) is refused with
/// what is wrong and how to fix it, not `BadDer`: when the server is built, through
/// `verify_client_chain`, and when the file is read (the CLI's path). The same check on a
/// CRL made by the real `openssl` CLI is in `tests/openssl.rs`.
#[test]
fn a_version_1_crl_is_refused_saying_why_and_how_to_fix_it() {
    let pki = TestPki::new();
    let v1 = pki.ca.crl_v1(&[&pki.client]);
    // A well-formed CRL otherwise: no version field, one revoked serial.
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&v1.der).unwrap();
    assert_eq!(parsed.version(), None);
    assert_eq!(parsed.iter_revoked_certificates().count(), 1);

    let says_why_and_how = |err: &Error| {
        let text = err.to_string();
        assert!(matches!(err, Error::Crl { .. }), "{text}");
        assert!(text.contains("version 1 CRL"), "{text}");
        assert!(text.contains("only version 2 CRLs are accepted"), "{text}");
        assert!(text.contains("crlnumber"), "{text}");
        assert!(!text.contains("BadDer"), "{text}");
    };
    let err = server_builder(&pki.ca, &pki.server)
        .crl_pem(v1.pem.as_bytes())
        .build()
        .unwrap_err();
    says_why_and_how(&err);

    let err = verify_client_chain(
        &pki.client.chain_der,
        &options(&pki).crls(vec![v1.der.clone()]),
    )
    .unwrap_err();
    says_why_and_how(&err);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-openssl.crl");
    std::fs::write(&path, &v1.pem).unwrap();
    let err = mtls_verify::pem::read_crls_file(&path).unwrap_err();
    says_why_and_how(&err);
    assert!(err.to_string().contains("from-openssl.crl"), "{err}");

    // A version 2 CRL from the same CA still loads, and garbage is still just unparsable.
    mtls_verify::pem::read_crls_file(&{
        let p = dir.path().join("v2.crl");
        std::fs::write(&p, pki.ca.crl(&[]).pem).unwrap();
        p
    })
    .unwrap();
    let mut broken = v1.der.to_vec();
    broken[4] = 0x04; // the tbsCertList's first element is no longer a SEQUENCE
    let err = verify_client_chain(
        &pki.client.chain_der,
        &options(&pki).crls(vec![broken.into()]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot parse"), "{err}");
}
