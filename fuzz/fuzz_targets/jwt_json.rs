//! Arbitrary bytes as a JOSE header or claims set: jwt-oidc's own JSON reader must agree with
//! serde_json on what is JSON and on every member the validator reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jwt_oidc::fuzzing::check_json_against_serde(data);
});
