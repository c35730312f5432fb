//! The PEM/DER bundle loaders on arbitrary bytes: never panic, respect the size limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_verify::{MAX_CERTIFICATE_SIZE, pem};

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = pem::certificates(data) {
        assert!(certs.len() <= pem::MAX_CERTIFICATES_PER_FILE);
        assert!(certs.iter().all(|c| c.len() <= MAX_CERTIFICATE_SIZE));
    }
    let _ = pem::private_key(data);
    let _ = pem::crls(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = mtls_verify::SpiffeId::parse(s);
        let _ = mtls_verify::IdentityAuthorizer::dns_san_patterns([s]);
    }
});
