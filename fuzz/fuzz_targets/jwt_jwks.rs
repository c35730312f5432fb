//! Arbitrary bytes as a JWKS document.
#![no_main]

use jwt_oidc::Jwks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Jwks::parse(data) {
        Ok(jwks) => {
            assert!(!jwks.keys().is_empty());
            for key in jwks.keys() {
                // Verifying garbage must fail cleanly, never panic.
                let _ = key.verify(b"message", data);
                let _ = (key.kid(), key.algorithm());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
