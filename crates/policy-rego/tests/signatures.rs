//! OPA bundle signatures: `.signatures.json` verified with a configured key; anything
//! missing, extra, altered or signed with another key or scope is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use policy_rego::{
    BundleLoader, BundleSigner, BundleWriter, Manifest, PolicyError, SIGNATURES_FILE,
    SignatureVerifier,
};

struct Keys {
    private_pem: String,
    public_pem: String,
}

fn ec_keys() -> Keys {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    Keys {
        private_pem: kp.serialize_pem(),
        public_pem: kp.public_key_pem(),
    }
}

fn manifest() -> Manifest {
    let mut m = Manifest::default();
    m.revision = "signed-1".into();
    m.roots = Some(vec!["app".into()]);
    m
}

fn writer() -> BundleWriter {
    BundleWriter::new()
        .manifest(&manifest())
        .file(
            "app/authz/policy.rego",
            "package app.authz\n\nallow if input.ok\n",
        )
        .file(
            "app/data.json",
            r#"{"users": ["alice"], "limits": {"rate": 1.50}}"#,
        )
}

fn signed_files(keys: &Keys) -> BTreeMap<String, Vec<u8>> {
    writer()
        .sign(BundleSigner::from_private_key_pem("ES256", keys.private_pem.as_bytes()).unwrap())
        .into_files()
        .unwrap()
}

fn to_tar_gz(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    files
        .iter()
        .fold(BundleWriter::new(), |w, (p, c)| w.file(p.clone(), c))
        .to_tar_gz()
        .unwrap()
}

fn loader(keys: &Keys) -> BundleLoader {
    BundleLoader::new().verification_key(
        SignatureVerifier::from_public_key_pem("ES256", keys.public_pem.as_bytes()).unwrap(),
    )
}

fn signature_error(keys: &Keys, files: &BTreeMap<String, Vec<u8>>) -> String {
    match loader(keys).load_tar_gz("b", &to_tar_gz(files)) {
        Err(PolicyError::Signature(msg)) => msg,
        other => panic!("expected a signature error, got {other:?}"),
    }
}

#[test]
fn a_correctly_signed_bundle_loads() {
    let keys = ec_keys();
    let files = signed_files(&keys);
    let bundle = loader(&keys).load_tar_gz("b", &to_tar_gz(&files)).unwrap();
    assert!(bundle.is_signed());
    assert_eq!(bundle.revision(), "signed-1");
}

#[test]
fn a_signed_directory_loads() {
    let keys = ec_keys();
    let dir = tempfile::tempdir().unwrap();
    writer()
        .sign(BundleSigner::from_private_key_pem("ES256", keys.private_pem.as_bytes()).unwrap())
        .write_dir(dir.path())
        .unwrap();
    assert!(dir.path().join(SIGNATURES_FILE).exists());
    loader(&keys).load_dir(dir.path()).unwrap();
}

#[test]
fn an_unsigned_bundle_is_refused_when_a_key_is_configured() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.remove(SIGNATURES_FILE);
    assert!(signature_error(&keys, &files).contains("missing"));
    // Without a key the same bundle loads.
    BundleLoader::new()
        .load_tar_gz("b", &to_tar_gz(&files))
        .unwrap();
}

#[test]
fn an_altered_file_is_refused() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.insert(
        "app/authz/policy.rego".into(),
        b"package app.authz\n\nallow := true\n".to_vec(),
    );
    let msg = signature_error(&keys, &files);
    assert!(
        msg.contains("app/authz/policy.rego") && msg.contains("digest mismatch"),
        "{msg}"
    );
}

#[test]
fn an_altered_data_value_is_refused() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.insert(
        "app/data.json".into(),
        br#"{"users": ["alice", "mallory"], "limits": {"rate": 1.50}}"#.to_vec(),
    );
    assert!(signature_error(&keys, &files).contains("app/data.json"));
}

#[test]
fn reformatting_json_keeps_the_signature_valid() {
    // OPA hashes structured files in canonical form: whitespace and key order do not matter,
    // number literals do.
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.insert(
        "app/data.json".into(),
        b"{\n  \"limits\": { \"rate\": 1.50 },\n  \"users\": [ \"alice\" ]\n}\n".to_vec(),
    );
    loader(&keys).load_tar_gz("b", &to_tar_gz(&files)).unwrap();
    files.insert(
        "app/data.json".into(),
        br#"{"users": ["alice"], "limits": {"rate": 1.5}}"#.to_vec(),
    );
    assert!(signature_error(&keys, &files).contains("digest mismatch"));
}

#[test]
fn an_extra_file_is_refused() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.insert("app/extra.rego".into(), b"package app\nx := 1\n".to_vec());
    let msg = signature_error(&keys, &files);
    assert!(
        msg.contains("app/extra.rego") && msg.contains("not included"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_is_refused() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.remove("app/data.json");
    let msg = signature_error(&keys, &files);
    assert!(
        msg.contains("app/data.json") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn a_signature_from_another_key_is_refused() {
    let keys = ec_keys();
    let other = ec_keys();
    let files = signed_files(&other);
    assert!(signature_error(&keys, &files).contains("does not verify"));
}

#[test]
fn a_tampered_jwt_is_refused() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    let sig: serde_json::Value = serde_json::from_slice(&files[SIGNATURES_FILE]).unwrap();
    let jwt = sig["signatures"][0].as_str().unwrap().to_owned();
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    // Swap in a payload that lists an extra file, keeping the old signature.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    payload["files"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "x.rego", "hash": "00", "algorithm": "SHA-256"}));
    parts[1] = b64.encode(serde_json::to_vec(&payload).unwrap());
    let forged = serde_json::json!({"signatures": [parts.join(".")]});
    files.insert(SIGNATURES_FILE.into(), serde_json::to_vec(&forged).unwrap());
    assert!(signature_error(&keys, &files).contains("does not verify"));

    let two = serde_json::json!({"signatures": [jwt.clone(), jwt]});
    files.insert(SIGNATURES_FILE.into(), serde_json::to_vec(&two).unwrap());
    assert!(signature_error(&keys, &files).contains("exactly one"));
}

#[test]
fn scope_and_key_id_must_match() {
    let keys = ec_keys();
    let signer = BundleSigner::from_private_key_pem("ES256", keys.private_pem.as_bytes())
        .unwrap()
        .key_id("k1")
        .scope("write");
    let files = writer().sign(signer).into_files().unwrap();
    let archive = to_tar_gz(&files);
    let verifier =
        || SignatureVerifier::from_public_key_pem("ES256", keys.public_pem.as_bytes()).unwrap();

    // Default (empty) scope does not accept a scoped signature.
    let err = BundleLoader::new()
        .verification_key(verifier())
        .load_tar_gz("b", &archive)
        .unwrap_err();
    assert!(err.to_string().contains("scope"), "{err}");

    BundleLoader::new()
        .verification_key(verifier().scope("write").key_id("k1"))
        .load_tar_gz("b", &archive)
        .unwrap();

    let err = BundleLoader::new()
        .verification_key(verifier().scope("write").key_id("k2"))
        .load_tar_gz("b", &archive)
        .unwrap_err();
    assert!(err.to_string().contains("key id"), "{err}");
}

#[test]
fn rsa_and_hmac_signatures_verify() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let files = writer()
        .sign(BundleSigner::from_private_key_pem("RS256", kp.serialize_pem().as_bytes()).unwrap())
        .into_files()
        .unwrap();
    BundleLoader::new()
        .verification_key(
            SignatureVerifier::from_public_key_pem("RS256", kp.public_key_pem().as_bytes())
                .unwrap(),
        )
        .load_tar_gz("b", &to_tar_gz(&files))
        .unwrap();

    let files = writer()
        .sign(BundleSigner::hmac("HS256", b"shared secret").unwrap())
        .into_files()
        .unwrap();
    let archive = to_tar_gz(&files);
    BundleLoader::new()
        .verification_key(SignatureVerifier::hmac("HS256", b"shared secret").unwrap())
        .load_tar_gz("b", &archive)
        .unwrap();
    assert!(
        BundleLoader::new()
            .verification_key(SignatureVerifier::hmac("HS256", b"other secret").unwrap())
            .load_tar_gz("b", &archive)
            .is_err()
    );
    // An RS256 verifier does not accept an HS256 token (no algorithm confusion).
    assert!(
        BundleLoader::new()
            .verification_key(
                SignatureVerifier::from_public_key_pem("RS256", kp.public_key_pem().as_bytes())
                    .unwrap()
            )
            .load_tar_gz("b", &archive)
            .is_err()
    );
}

#[test]
fn verifier_configuration_errors_are_reported() {
    assert!(SignatureVerifier::from_public_key_pem("ES999", b"").is_err());
    assert!(SignatureVerifier::from_public_key_pem("HS256", b"x").is_err());
    assert!(SignatureVerifier::from_public_key_pem("ES256", b"not a pem").is_err());
    assert!(SignatureVerifier::hmac("ES256", b"x").is_err());
    assert!(SignatureVerifier::hmac("HS256", b"").is_err());
    // Debug output never shows key material.
    let keys = ec_keys();
    let v = SignatureVerifier::from_public_key_pem("ES256", keys.public_pem.as_bytes()).unwrap();
    assert!(!format!("{v:?}").contains("BEGIN"));
}

/// A data file that does not parse and does not match its digest is refused for its digest:
/// it is never read as data (issue 8 §2).
#[test]
fn a_malformed_data_file_with_a_wrong_digest_is_a_digest_mismatch() {
    let keys = ec_keys();
    let mut files = signed_files(&keys);
    files.insert("app/data.json".into(), b"{\"users\": [\"mallory\"".to_vec());
    let msg = signature_error(&keys, &files);
    assert!(msg.contains("app/data.json: digest mismatch"), "{msg}");
}

/// Data that would be costly or hostile to parse (nested far beyond any parser's depth limit,
/// or a YAML alias bomb) is not parsed while anything that needs no parsing fails: the error
/// is about the file whose bytes are wrong, not about the data (which sorts first and, before
/// this ordering, was parsed first).
#[test]
fn hostile_data_is_not_parsed_when_verification_fails_without_it() {
    let keys = ec_keys();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut bomb = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    for (data_path, hostile) in [("app/data.json", deep), ("app/extra/data.yaml", bomb)] {
        // Signed with a small, valid file at that path.
        let signed = || {
            writer()
                .file(data_path, "{\"ok\": true}")
                .sign(
                    BundleSigner::from_private_key_pem("ES256", keys.private_pem.as_bytes())
                        .unwrap(),
                )
                .into_files()
                .unwrap()
        };
        // A rego file altered: its bytes do not match.
        let mut files = signed();
        files.insert(data_path.into(), hostile.clone().into_bytes());
        files.insert(
            "app/authz/policy.rego".into(),
            b"package app.authz\n\nallow := true\n".to_vec(),
        );
        let msg = signature_error(&keys, &files);
        assert_eq!(
            msg, "file app/authz/policy.rego: digest mismatch",
            "{data_path}"
        );

        // A file the signature does not list (sorting after the data file).
        let mut files = signed();
        files.insert(data_path.into(), hostile.clone().into_bytes());
        files.insert("app/zz.rego".into(), b"package app.zz\n".to_vec());
        let msg = signature_error(&keys, &files);
        assert_eq!(
            msg, "file app/zz.rego is not included in the signature",
            "{data_path}"
        );

        // A listed file missing.
        let mut files = signed();
        files.insert(data_path.into(), hostile.clone().into_bytes());
        files.remove(".manifest");
        let msg = signature_error(&keys, &files);
        assert!(
            msg.contains(".manifest is listed in the signature but missing"),
            "{msg}"
        );

        // Signed with another key: nothing is read past the JWT.
        let mut files = signed_files(&ec_keys());
        files.insert(data_path.into(), hostile.clone().into_bytes());
        let msg = signature_error(&keys, &files);
        assert!(msg.starts_with("JWT does not verify"), "{msg}");

        // Only the hostile file wrong: it is refused as a digest mismatch, within bounds.
        let mut files = signed();
        files.insert(data_path.into(), hostile.into_bytes());
        let msg = signature_error(&keys, &files);
        assert!(
            msg.starts_with(&format!("file {data_path}: digest mismatch")),
            "{msg}"
        );
    }
}

/// A canonical data file (as `opa build` and `BundleWriter` write JSON) is accepted on its
/// bytes' digest; a reformatted one is still accepted through its canonical form.
#[test]
fn canonical_and_reformatted_data_both_verify() {
    let keys = ec_keys();
    let signer =
        || BundleSigner::from_private_key_pem("ES256", keys.private_pem.as_bytes()).unwrap();
    for data in [
        r#"{"a":[1,2],"b":"x"}"#,
        "{ \"b\": \"x\",\n  \"a\": [1, 2] }",
    ] {
        let files = BundleWriter::new()
            .file("data.json", data)
            .sign(signer())
            .into_files()
            .unwrap();
        let bundle = loader(&keys).load_tar_gz("b", &to_tar_gz(&files)).unwrap();
        assert_eq!(
            bundle.data_json(),
            serde_json::json!({"a": [1, 2], "b": "x"})
        );
    }
}
