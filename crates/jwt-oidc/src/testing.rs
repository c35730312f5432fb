//! Throw-away signing keys, token minting and a loopback JWKS / discovery server, for tests,
//! demos and benches (feature `test-util`). Nothing here is for production: keys live in
//! memory, the server speaks plain HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::Algorithm;

/// base64url without padding.
#[must_use]
pub fn b64url(bytes: &[u8]) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(bytes)
}

/// Seconds since the Unix epoch, now.
#[must_use]
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ed(Ed25519KeyPair),
}

/// A freshly generated signing key with its public JWK.
pub struct TestKey {
    kid: String,
    alg: Algorithm,
    signer: Signer,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl TestKey {
    /// Generates a key for `alg` (RSA keys are 2048-bit).
    ///
    /// # Panics
    /// If key generation fails (it does not with aws-lc-rs).
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let signer = match alg {
            Algorithm::Es256 => Signer::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key"),
            ),
            Algorithm::Es384 => Signer::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).expect("P-384 key"),
            ),
            Algorithm::EdDsa => Signer::Ed(Ed25519KeyPair::generate().expect("Ed25519 key")),
            rsa => {
                let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
                let enc: &'static dyn sig::RsaEncoding = match rsa {
                    Algorithm::Rs384 => &sig::RSA_PKCS1_SHA384,
                    Algorithm::Rs512 => &sig::RSA_PKCS1_SHA512,
                    Algorithm::Ps256 => &sig::RSA_PSS_SHA256,
                    Algorithm::Ps384 => &sig::RSA_PSS_SHA384,
                    Algorithm::Ps512 => &sig::RSA_PSS_SHA512,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                Signer::Rsa(key, enc)
            }
        };
        Self {
            kid: kid.to_owned(),
            alg,
            signer,
        }
    }

    /// Generates an ES256/ES384/EdDSA key and returns it with its PKCS#8 DER encoding (for
    /// other JWT libraries, such as `jsonwebtoken`'s `EncodingKey::from_ec_der`).
    ///
    /// # Panics
    /// For RSA algorithms, or if key generation fails.
    #[must_use]
    #[allow(clippy::expect_used, clippy::panic)]
    pub fn generate_with_pkcs8(alg: Algorithm, kid: &str) -> (Self, Vec<u8>) {
        let rng = SystemRandom::new();
        let (signer, der) = match alg {
            Algorithm::Es256 | Algorithm::Es384 => {
                let a = if alg == Algorithm::Es256 {
                    &sig::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &sig::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let doc = EcdsaKeyPair::generate_pkcs8(a, &rng).expect("EC key");
                let der = doc.as_ref().to_vec();
                (
                    Signer::Ec(EcdsaKeyPair::from_pkcs8(a, &der).expect("EC key")),
                    der,
                )
            }
            Algorithm::EdDsa => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
                let der = doc.as_ref().to_vec();
                (
                    Signer::Ed(Ed25519KeyPair::from_pkcs8(&der).expect("Ed25519 key")),
                    der,
                )
            }
            _ => panic!("generate_with_pkcs8 supports ES256, ES384 and EdDSA"),
        };
        (
            Self {
                kid: kid.to_owned(),
                alg,
                signer,
            },
            der,
        )
    }

    /// The key's `kid`.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    #[must_use]
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.signer {
            Signer::Ec(k) => {
                let point = k.public_key().as_ref();
                let n = (point.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "crv": crv, "x": b64url(&point[1..=n]), "y": b64url(&point[1 + n..])})
            }
            Signer::Rsa(k, _) => {
                let public = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()),
                    "e": b64url(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Signer::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.public_key().as_ref())})
            }
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg.as_str());
        jwk["use"] = json!("sig");
        jwk
    }

    /// Signs `message` (for a JWS: the `header.payload` text).
    ///
    /// # Panics
    /// If signing fails (it does not with aws-lc-rs).
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ec(k) => k.sign(&rng, message).expect("ECDSA sign").as_ref().to_vec(),
            Signer::Rsa(k, enc) => {
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(*enc, &rng, message, &mut out).expect("RSA sign");
                out
            }
            Signer::Ed(k) => k.sign(message).as_ref().to_vec(),
        }
    }

    /// A compact JWS with header `{"alg", "typ": "at+jwt", "kid"}` over `claims`.
    #[must_use]
    pub fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg.as_str(), "typ": "at+jwt", "kid": self.kid});
        self.token_with_header(&header, claims)
    }

    /// A compact JWS with exactly this header (signed with this key whatever it says).
    #[must_use]
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        sign_parts(
            self,
            &b64url(header.to_string().as_bytes()),
            &b64url(claims.to_string().as_bytes()),
        )
    }
}

/// Signs already-encoded header and payload segments.
#[must_use]
pub fn sign_parts(key: &TestKey, header_b64: &str, payload_b64: &str) -> String {
    let input = format!("{header_b64}.{payload_b64}");
    let signature = b64url(&key.sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// A JWKS document with the public keys of `keys`.
#[must_use]
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()}).to_string()
}

struct Reply {
    status: u16,
    body: Bytes,
    content_type: String,
    cache_control: Option<String>,
}

struct ServerState {
    jwks: Mutex<Reply>,
    discovery_issuer: Mutex<Option<String>>,
    jwks_hits: tokio::sync::watch::Sender<u64>,
    discovery_hits: tokio::sync::watch::Sender<u64>,
    gate: tokio::sync::watch::Sender<bool>,
    base: String,
}

/// A loopback HTTP server with an OIDC discovery document at
/// `/.well-known/openid-configuration` (issuer = its base URL) and a JWKS at `/jwks` that tests
/// can replace, break, count and hold.
pub struct JwksServer {
    state: Arc<ServerState>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for JwksServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    /// Starts serving `jwks_json` on 127.0.0.1 with an OS-chosen port.
    ///
    /// # Errors
    /// If binding the loopback socket fails.
    pub async fn start(jwks_json: impl Into<Vec<u8>>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            jwks: Mutex::new(Reply {
                status: 200,
                body: Bytes::from(jwks_json.into()),
                content_type: "application/json".to_owned(),
                cache_control: None,
            }),
            discovery_issuer: Mutex::new(None),
            jwks_hits: tokio::sync::watch::channel(0).0,
            discovery_hits: tokio::sync::watch::channel(0).0,
            gate: tokio::sync::watch::channel(true).0,
            base: format!("http://{addr}"),
        });
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, &req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { state, addr, task })
    }

    /// The issuer URL (`http://127.0.0.1:PORT`), also the discovery base.
    #[must_use]
    pub fn issuer(&self) -> String {
        self.state.base.clone()
    }

    /// The JWKS URL.
    #[must_use]
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.base)
    }

    /// Serves `body` as the JWKS from now on (status 200, `application/json`).
    pub fn set_jwks(&self, body: impl Into<Vec<u8>>) {
        self.set_response(200, body);
    }

    /// Serves `status` with `body` at `/jwks` from now on.
    pub fn set_response(&self, status: u16, body: impl Into<Vec<u8>>) {
        if let Ok(mut r) = self.state.jwks.lock() {
            r.status = status;
            r.body = Bytes::from(body.into());
        }
    }

    /// Sets the `Cache-Control` header of JWKS responses.
    pub fn set_cache_control(&self, value: Option<&str>) {
        if let Ok(mut r) = self.state.jwks.lock() {
            r.cache_control = value.map(str::to_owned);
        }
    }

    /// Makes the discovery document claim another `issuer`.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        if let Ok(mut i) = self.state.discovery_issuer.lock() {
            *i = Some(issuer.to_owned());
        }
    }

    /// JWKS requests served so far.
    #[must_use]
    pub fn jwks_hits(&self) -> u64 {
        *self.state.jwks_hits.borrow()
    }

    /// Discovery requests served so far.
    #[must_use]
    pub fn discovery_hits(&self) -> u64 {
        *self.state.discovery_hits.borrow()
    }

    /// Waits until at least `n` JWKS requests have arrived (wrap it in a timeout).
    pub async fn wait_for_jwks_hits(&self, n: u64) {
        let mut rx = self.state.jwks_hits.subscribe();
        let _ = rx.wait_for(|hits| *hits >= n).await;
    }

    /// Holds JWKS responses until [`JwksServer::release`] (requests are counted on arrival).
    pub fn hold(&self) {
        self.state.gate.send_replace(false);
    }

    /// Lets held and future JWKS responses go.
    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }
}

async fn handle(
    state: &ServerState,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path();
    let mut builder = hyper::Response::builder();
    let (status, body) = if path == "/.well-known/openid-configuration" {
        state.discovery_hits.send_modify(|n| *n += 1);
        let issuer = state
            .discovery_issuer
            .lock()
            .ok()
            .and_then(|i| i.clone())
            .unwrap_or_else(|| state.base.clone());
        builder = builder.header("content-type", "application/json");
        let doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{}/auth", state.base),
            "token_endpoint": format!("{}/token", state.base),
            "jwks_uri": format!("{}/jwks", state.base),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        });
        (200, Bytes::from(doc.to_string()))
    } else if path == "/jwks" {
        state.jwks_hits.send_modify(|n| *n += 1);
        let mut gate = state.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        match state.jwks.lock() {
            Ok(r) => {
                builder = builder.header("content-type", r.content_type.as_str());
                if let Some(cc) = &r.cache_control {
                    builder = builder.header("cache-control", cc.as_str());
                }
                (r.status, r.body.clone())
            }
            Err(_) => (500, Bytes::new()),
        }
    } else {
        (404, Bytes::new())
    };
    builder
        .status(status)
        .body(Full::new(body))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}
