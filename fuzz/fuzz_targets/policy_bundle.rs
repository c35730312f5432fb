//! Bundle loading from arbitrary bytes: as a `.tar.gz`, as a raw tar (gzipped here so the tar
//! parser is reached), or as a list of files (so Rego parsing, data merging, compilation, the
//! compiled-form scope check, the OPA-semantics check and the test replay are reached). Never
//! panics; whatever loads also compiles or fails with an error, and a compiled set decides
//! without panicking.
#![no_main]

use std::io::Write;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use policy_rego::{
    BundleLimits, BundleLoader, BundleWriter, PolicyInput, PolicyOptions, PolicySet,
    SignatureVerifier,
};

fn limits() -> BundleLimits {
    BundleLimits::default()
        .max_compressed_bytes(64 << 10)
        .max_uncompressed_bytes(256 << 10)
        .max_files(64)
}

fn compile_and_decide(bundle: policy_rego::Bundle) {
    let opts = PolicyOptions::new()
        .decision_rule("data.fuzz.allow")
        .allow_untested()
        .time_budget(Duration::from_millis(20))
        .test_time_budget(Duration::from_millis(20))
        .max_instructions(100_000);
    if let Ok(set) = PolicySet::compile(bundle, &opts) {
        let input = PolicyInput::from_json(serde_json::json!({"user": "alice", "n": 3}));
        let d = set.decide(&input);
        // A denial always says why.
        assert!(d.allow || !d.reasons.is_empty());
        let _ = set.run_tests();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(b) = BundleLoader::new().limits(limits()).load_tar_gz("fuzz", rest) {
                compile_and_decide(b);
            }
        }
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(rest);
            let archive = gz.finish().unwrap_or_default();
            if let Ok(b) = BundleLoader::new().limits(limits()).load_tar_gz("fuzz", &archive) {
                compile_and_decide(b);
            }
        }
        2 => {
            // Signature verification over a fuzzed archive (HMAC key).
            let v = SignatureVerifier::hmac("HS256", b"fuzz key").unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(rest);
            let archive = gz.finish().unwrap_or_default();
            let _ = BundleLoader::new()
                .limits(limits())
                .verification_key(v)
                .load_tar_gz("fuzz", &archive);
        }
        _ => {
            // Files separated by 0x00: "path\x01content". A policy module is always present
            // so the Rego parser and compiler see the fuzzed text.
            let mut w = BundleWriter::new();
            for (i, chunk) in rest.split(|b| *b == 0).take(8).enumerate() {
                let (path, content) = match chunk.iter().position(|b| *b == 1) {
                    Some(p) => (String::from_utf8_lossy(&chunk[..p]).into_owned(), &chunk[p + 1..]),
                    None => (format!("fuzz/p{i}.rego"), chunk),
                };
                if path.is_empty() || path.len() > 100 {
                    continue;
                }
                w = w.file(path, content);
            }
            if let Ok(archive) = w.to_tar_gz() {
                if let Ok(b) = BundleLoader::new().limits(limits()).load_tar_gz("fuzz", &archive) {
                    compile_and_decide(b);
                }
            }
        }
    }
});
