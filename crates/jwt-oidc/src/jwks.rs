//! JWKS parsing: every usable signing key becomes a [`VerifyingKey`] holding an aws-lc-rs
//! [`ParsedPublicKey`], parsed once; unusable keys are skipped with a reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_lc_rs::signature::{ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};

use crate::error::untrusted;
use crate::{Algorithm, AuthError};

/// Most keys a JWKS may list; a longer document is refused as a whole.
pub const MAX_JWKS_KEYS: usize = 256;

/// A public key from a JWKS, ready to verify signatures: its algorithm is fixed by the key
/// (the JWK's `alg`, else its `kty`/`crv`), never by a token.
pub struct VerifyingKey {
    kid: Option<Box<str>>,
    alg: Algorithm,
    key: ParsedPublicKey,
    /// Canonical key material (RSA `n‖e`, EC point, Ed25519 `x`) to recognise the same key
    /// across refreshes.
    material: Box<[u8]>,
    retired: AtomicBool,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("retired", &self.is_retired())
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The key's `kid`, if the JWK had one.
    #[must_use]
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The only algorithm this key verifies.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Verifies `signature` over `message` with the parsed key.
    ///
    /// # Errors
    /// [`AuthError::InvalidSignature`] when the signature does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
        // RSA and ECDSA: hash here and hand aws-lc the digest. The same check as `verify_sig`,
        // without its per-call digest-context setup (`EVP_DigestVerifyInit`).
        let digest = match self.alg {
            Algorithm::Rs256 | Algorithm::Ps256 | Algorithm::Es256 => {
                Some(&aws_lc_rs::digest::SHA256)
            }
            Algorithm::Rs384 | Algorithm::Ps384 | Algorithm::Es384 => {
                Some(&aws_lc_rs::digest::SHA384)
            }
            Algorithm::Rs512 | Algorithm::Ps512 => Some(&aws_lc_rs::digest::SHA512),
            Algorithm::EdDsa => None,
        };
        match digest {
            Some(d) => self
                .key
                .verify_digest_sig(&aws_lc_rs::digest::digest(d, message), signature),
            None => self.key.verify_sig(message, signature),
        }
        .map_err(|_| AuthError::InvalidSignature)
    }

    /// True once the key has left its issuer's key set.
    #[must_use]
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub(crate) fn same_key_as(&self, other: &VerifyingKey) -> bool {
        self.kid == other.kid && self.alg == other.alg && self.material == other.material
    }
}

/// A key that was in the document but cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, if readable.
    pub kid: Option<Box<str>>,
    /// Why it was skipped.
    pub reason: &'static str,
}

/// A parsed JWKS: the usable signing keys and the skipped ones.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Vec<Arc<VerifyingKey>>,
    skipped: Vec<SkippedKey>,
}

impl Jwks {
    /// Parses a JWKS document (RFC 7517), accepting every algorithm in [`Algorithm::ALL`].
    ///
    /// # Errors
    /// [`AuthError::InvalidJwks`] when the document is not a JSON object with a `keys` array,
    /// lists more than [`MAX_JWKS_KEYS`] keys, or has no usable key. Individual unusable keys
    /// (unknown `kty`, encryption keys, `use: enc`, weak RSA, bad points) are skipped instead.
    pub fn parse(json: &[u8]) -> Result<Self, AuthError> {
        Self::parse_with(json, &Algorithm::ALL)
    }

    /// Like [`Jwks::parse`], keeping only keys whose algorithm is in `allowed`.
    ///
    /// # Errors
    /// As [`Jwks::parse`].
    pub fn parse_with(json: &[u8], allowed: &[Algorithm]) -> Result<Self, AuthError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| AuthError::InvalidJwks {
            reason: format!(
                "not a JSON object with a keys array ({})",
                e.classify_name()
            )
            .into(),
        })?;
        if doc.keys.len() > MAX_JWKS_KEYS {
            return Err(AuthError::InvalidJwks {
                reason: format!("{} keys, more than {MAX_JWKS_KEYS}", doc.keys.len()).into(),
            });
        }
        let mut out = Jwks::default();
        for value in doc.keys {
            let kid = value.get("kid").and_then(|k| k.as_str()).map(untrusted);
            match parse_key(value, allowed) {
                Ok(key) => {
                    if out
                        .keys
                        .iter()
                        .any(|k| k.kid == key.kid && k.alg == key.alg)
                    {
                        out.skipped.push(SkippedKey {
                            kid,
                            reason: "duplicate kid and alg",
                        });
                    } else {
                        out.keys.push(Arc::new(key));
                    }
                }
                Err(reason) => out.skipped.push(SkippedKey { kid, reason }),
            }
        }
        if out.keys.is_empty() {
            return Err(AuthError::InvalidJwks {
                reason: format!("no usable signing key ({} skipped)", out.skipped.len()).into(),
            });
        }
        Ok(out)
    }

    /// The usable keys.
    #[must_use]
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }

    /// The keys that were skipped, with reasons.
    #[must_use]
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    pub(crate) fn into_keys(self) -> Vec<Arc<VerifyingKey>> {
        self.keys
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Result<Algorithm, &'static str> {
    Ok(match alg {
        KeyAlgorithm::RS256 => Algorithm::Rs256,
        KeyAlgorithm::RS384 => Algorithm::Rs384,
        KeyAlgorithm::RS512 => Algorithm::Rs512,
        KeyAlgorithm::PS256 => Algorithm::Ps256,
        KeyAlgorithm::PS384 => Algorithm::Ps384,
        KeyAlgorithm::PS512 => Algorithm::Ps512,
        KeyAlgorithm::ES256 => Algorithm::Es256,
        KeyAlgorithm::ES384 => Algorithm::Es384,
        KeyAlgorithm::EdDSA => Algorithm::EdDsa,
        KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512 => {
            return Err("symmetric (HMAC) algorithm");
        }
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => {
            return Err("encryption algorithm");
        }
        _ => return Err("unsupported algorithm"),
    })
}

/// Decodes base64url, tolerating `=` padding some providers add.
fn b64(field: &str) -> Result<Vec<u8>, &'static str> {
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(field.trim_end_matches('='))
        .map_err(|_| "key parameter is not base64url")
}

fn parse_key(
    value: serde_json::Value,
    allowed: &[Algorithm],
) -> Result<VerifyingKey, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "unrecognised JWK")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        // SPIFFE bundles mark JWT-SVID signing keys `use: jwt-svid` (and X.509 CA keys
        // `x509-svid`, which stay refused).
        Some(PublicKeyUse::Other(other)) if other == "jwt-svid" => {}
        Some(_) => return Err("use is not sig"),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not allow verify");
    }
    let alg = match jwk.common.key_algorithm {
        Some(alg) => key_algorithm(alg)?,
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::Rs256,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Algorithm::Es256,
                EllipticCurve::P384 => Algorithm::Es384,
                _ => return Err("unsupported curve"),
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDsa
            }
            AlgorithmParameters::OctetKey(_) => return Err("symmetric key"),
            _ => return Err("unsupported key type"),
        },
    };
    if !allowed.contains(&alg) {
        return Err("algorithm not in the allow-list");
    }
    let (key, material) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let params = alg.rsa_parameters().ok_or("RSA key with a non-RSA alg")?;
            let n = b64(&p.n)?;
            let e = b64(&p.e)?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < 256 {
                return Err("RSA modulus shorter than 2048 bits");
            }
            let key = RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(params)
                .map_err(|_| "invalid RSA key")?;
            let mut material = n;
            material.extend_from_slice(&e);
            (key, material)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let len = match (alg, &p.curve) {
                (Algorithm::Es256, EllipticCurve::P256) => 32,
                (Algorithm::Es384, EllipticCurve::P384) => 48,
                _ => return Err("EC key curve does not match its alg"),
            };
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = ParsedPublicKey::new(alg.verification_algorithm(), &point)
                .map_err(|_| "EC point is not on the curve")?;
            (key, point)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if alg != Algorithm::EdDsa || p.curve != EllipticCurve::Ed25519 {
                return Err("OKP key is not Ed25519");
            }
            let x = b64(&p.x)?;
            if x.len() != 32 {
                return Err("Ed25519 key has the wrong length");
            }
            let key = ParsedPublicKey::new(alg.verification_algorithm(), &x)
                .map_err(|_| "invalid Ed25519 key")?;
            (key, x)
        }
        _ => return Err("unsupported key type"),
    };
    if alg.is_rsa() != matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return Err("key type does not match its alg");
    }
    Ok(VerifyingKey {
        kid: jwk.common.key_id.map(String::into_boxed_str),
        alg,
        key,
        material: material.into_boxed_slice(),
        retired: AtomicBool::new(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_sets_are_refused_as_a_whole() {
        for doc in [
            &b"garbage"[..],
            b"{}",
            b"{\"keys\":{}}",
            b"{\"keys\":[]}",
            b"[]",
        ] {
            assert!(matches!(
                Jwks::parse(doc),
                Err(AuthError::InvalidJwks { .. })
            ));
        }
    }

    #[test]
    fn unusable_keys_are_skipped_with_reasons() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB","kid":"enc1"},
            {"kty":"XYZ","kid":"weird"}
        ]}"#;
        let err = Jwks::parse(doc).unwrap_err();
        assert!(err.to_string().contains("3 skipped"), "{err}");
    }
}
