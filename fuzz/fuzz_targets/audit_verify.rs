//! Arbitrary bytes read as an audit log file: verification never panics, and its
//! report is consistent with the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_audit::{Verifier, VerifyFailure};

fuzz_target!(|data: &[u8]| {
    let newlines = data.iter().filter(|&&c| c == b'\n').count() as u64;
    for verifier in [Verifier::new(), Verifier::new().allow_partial_start()] {
        let report = verifier.verify_bytes("fuzz.jsonl", data);
        assert_eq!(report.files, 1);
        match &report.problem {
            None => {
                assert_eq!(report.records, newlines);
                assert!(data.is_empty() || data.ends_with(b"\n"));
                assert_eq!(report.last_seq.is_some(), newlines > 0);
            }
            Some(p) => {
                assert_eq!(p.line, report.records + 1);
                assert!(p.line <= newlines + 1);
                if p.reason == VerifyFailure::MissingNewline {
                    assert!(!data.ends_with(b"\n"));
                }
                let _ = p.to_string();
            }
        }
    }
});
