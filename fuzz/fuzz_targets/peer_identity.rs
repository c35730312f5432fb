//! `PeerIdentity::from_der` and the verifier's chain checks on arbitrary bytes: never panic,
//! and anything that parses serializes and has a consistent fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_verify::rustls::pki_types::CertificateDer;
use mtls_verify::{ChainVerifyOptions, PeerIdentity, verify_client_chain};

/// A fixed root (certificate only; its key was thrown away) so verification runs past the
/// trust-store setup into the chain policy, the X.509 parse and webpki.
const ROOT: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBlzCCAT6gAwIBAgIUOtcnTPUgASJfYbZDMHmmmA+T0gowCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPenRraXQgZnV6eiByb290MCAXDTI2MTEyNTEwNTMzMFoYDzIx\n\
MjYxMTAxMTA1MzMwWjAaMRgwFgYDVQQDDA96dGtpdCBmdXp6IHJvb3QwWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAAR1VnVN8Pr04/ASc/wa7dKam4Tm7vWe5qM1+o7d\n\
hBzYQyWR2xQaiErc3YJmqk0mw5hUUPjaQBXh00D7rUpamUvvo2AwXjAdBgNVHQ4E\n\
FgQUaWhH7bMNIUBbKMIZJM2FoRxV7VkwHwYDVR0jBBgwFoAUaWhH7bMNIUBbKMIZ\n\
JM2FoRxV7VkwDwYDVR0TAQH/BAUwAwEB/zALBgNVHQ8EBAMCAQYwCgYIKoZIzj0E\n\
AwIDRwAwRAIgZNw2G4im/ohY/DhkJHTud5HMS9UQ0qWBIfKy7GZgHHICIF4s9Pp0\n\
SzhcIrJAOMsDqC7FvJIenYLLZK6reyIPuYvN\n\
-----END CERTIFICATE-----\n\
";

fn options() -> &'static ChainVerifyOptions {
    static OPTIONS: std::sync::OnceLock<ChainVerifyOptions> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let root = mtls_verify::pem::certificates(ROOT.as_bytes()).expect("fuzz root");
        ChainVerifyOptions::new(root)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = PeerIdentity::from_der(data) {
        assert_eq!(id.fingerprint_sha256_hex().len(), 64);
        if let Some(spiffe) = id.spiffe_id() {
            assert_eq!(id.uri_sans(), [spiffe.as_str()]);
        }
        let _ = serde_json::to_string(&id);
    }
    // The full verification path (policy, parse, webpki) must also reject garbage cleanly.
    let _ = verify_client_chain(&[CertificateDer::from(data)], options());
});
