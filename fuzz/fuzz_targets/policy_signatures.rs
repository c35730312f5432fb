//! `.signatures.json` from arbitrary bytes, verified by a key set (several keys chosen by the
//! JWT header's `kid` or the unverified payload's `keyid`, as bundles from a bundle server are):
//! JSON parsing, JWT header decoding, the unverified key-id read, key choice and verification.
//! Never panics, and never accepts: the fuzzer does not know the keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_rego::{BundleLoader, BundleWriter, SignatureVerifier};

fuzz_target!(|data: &[u8]| {
    let key = |alg: &str, id: &str| {
        SignatureVerifier::hmac(alg, format!("{id} fuzz secret").as_bytes())
            .unwrap()
            .key_id(id)
    };
    let keys = key("HS256", "a")
        .also_trust(key("HS512", "b"))
        .unwrap()
        .scope("write");
    let Ok(archive) = BundleWriter::new()
        .file("p.rego", "package p\n")
        .file(".manifest", r#"{"revision": "r"}"#)
        .file(".signatures.json", data)
        .to_tar_gz()
    else {
        return;
    };
    let loaded = BundleLoader::new()
        .verification_key(keys)
        .load_tar_gz("fuzz", &archive);
    assert!(loaded.is_err(), "accepted a signature made without the keys");
});
