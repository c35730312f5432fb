//! Validation through the public API: claims, algorithm pinning, certificate binding, the
//! token cache, several issuers, and every way of building an authenticator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jwt_oidc::testing::{JwksServer, TestKey, b64url, jwks, now_unix};
use jwt_oidc::{
    Algorithm, AuthError, BoxFuture, IssuerConfig, JwksDocument, JwksSource, JwtAuthenticator,
    RequestContext,
};
use serde_json::{Value, json};

const ISS: &str = "https://idp.example.com/realms/main";
const AUD: &str = "orders-api";

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now_unix() + 600, "iat": now_unix(),
           "scope": "orders:read orders:write", "client_id": "web"})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn auth_for(keys: &[&TestKey]) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(keys)))
        .audience(AUD)
        .build()
        .unwrap()
}

async fn check(auth: &JwtAuthenticator, token: &str) -> Result<Arc<jwt_oidc::Claims>, AuthError> {
    auth.validate(token, &RequestContext::new()).await
}

/// A JWKS source in memory that tests can change and count.
#[derive(Default)]
struct MemorySource {
    doc: Mutex<Vec<u8>>,
    fetches: Mutex<u64>,
}

impl JwksSource for MemorySource {
    fn fetch(&self) -> BoxFuture<'_, Result<JwksDocument, AuthError>> {
        *self.fetches.lock().unwrap() += 1;
        let body = self.doc.lock().unwrap().clone();
        Box::pin(async move {
            Ok(JwksDocument {
                body,
                max_age: None,
            })
        })
    }
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_verify_and_expose_claims() {
    for alg in Algorithm::ALL {
        let key = TestKey::generate(alg, &format!("k-{alg}"));
        let auth = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
            .audience(AUD)
            .require_type("application/at+jwt")
            .roles_claim("realm_access.roles")
            .build()
            .unwrap();
        let token = key.token(&with(
            claims(),
            json!({"realm_access": {"roles": ["admin", "ops"]}}),
        ));
        let c = check(&auth, &token)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(c.issuer(), ISS);
        assert_eq!(c.subject(), Some("alice"));
        assert_eq!(c.audiences().collect::<Vec<_>>(), [AUD]);
        assert_eq!(
            c.scopes().collect::<Vec<_>>(),
            ["orders:read", "orders:write"]
        );
        assert_eq!(c.roles().len(), 2);
        assert!(c.has_role("ops") && !c.has_role("root"));
        assert_eq!(c.client_id(), Some("web"));
        assert_eq!(c.algorithm(), alg);
        assert_eq!(c.key_id(), Some(key.kid()));
        assert_eq!(c.raw()["realm_access"]["roles"][0], "admin");
        assert!(c.expires_at() > SystemTime::now());
    }
}

#[tokio::test]
async fn scp_arrays_and_strings_become_scopes() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = auth_for(&[&key]);
    let okta = key.token(&with(claims(), json!({"scope": null, "scp": ["a", "b"]})));
    assert!(check(&auth, &okta).await.unwrap().has_scope("b"));
    let azure = key.token(&with(claims(), json!({"scope": null, "scp": "x y"})));
    assert_eq!(
        check(&auth, &azure)
            .await
            .unwrap()
            .scopes()
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
}

#[tokio::test]
async fn time_claims_use_the_leeway_and_max_age() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience(AUD)
        .leeway(Duration::from_secs(30))
        .max_token_age(Duration::from_secs(3600))
        .token_cache_capacity(0)
        .build()
        .unwrap();
    let now = now_unix();
    let ok_in_leeway = key.token(&with(claims(), json!({"exp": now - 10})));
    assert!(check(&auth, &ok_in_leeway).await.is_ok());
    let expired = key.token(&with(claims(), json!({"exp": now - 31})));
    assert_eq!(
        check(&auth, &expired).await.unwrap_err(),
        AuthError::Expired
    );
    let nbf = key.token(&with(claims(), json!({"nbf": now + 31})));
    assert_eq!(
        check(&auth, &nbf).await.unwrap_err(),
        AuthError::NotYetValid
    );
    let iat_future = key.token(&with(claims(), json!({"iat": now + 31})));
    assert_eq!(
        check(&auth, &iat_future).await.unwrap_err(),
        AuthError::IssuedInFuture
    );
    let old = key.token(&with(claims(), json!({"iat": now - 3600 - 31})));
    assert_eq!(check(&auth, &old).await.unwrap_err(), AuthError::TooOld);
    let no_iat = key.token(&with(claims(), json!({"iat": null})));
    assert!(matches!(
        check(&auth, &no_iat).await,
        Err(AuthError::MissingClaim { .. })
    ));
}

#[tokio::test]
async fn required_claims_scopes_and_custom_checks() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience(AUD)
        .require_claim("jti")
        .require_scope("orders:read")
        .custom_check(|c| {
            if c.subject() == Some("mallory") {
                Err("banned".into())
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let good = key.token(&with(claims(), json!({"jti": "1"})));
    assert!(check(&auth, &good).await.is_ok());
    let no_jti = key.token(&claims());
    assert_eq!(
        check(&auth, &no_jti).await.unwrap_err(),
        AuthError::MissingClaim {
            claim: "jti".into()
        }
    );
    let null_jti = key.token(&with(claims(), json!({"jti": null})));
    assert!(check(&auth, &null_jti).await.is_err());
    let no_scope = key.token(&with(
        claims(),
        json!({"jti": "1", "scope": "orders:write"}),
    ));
    let err = check(&auth, &no_scope).await.unwrap_err();
    assert_eq!(err.bearer_error().as_str(), "insufficient_scope");
    let banned = key.token(&with(claims(), json!({"jti": "1", "sub": "mallory"})));
    assert!(matches!(
        check(&auth, &banned).await,
        Err(AuthError::Rejected { .. })
    ));
}

#[tokio::test]
async fn certificate_bound_tokens_need_the_same_certificate() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = auth_for(&[&key]);
    let cert = b"client certificate DER";
    let ctx = RequestContext::new().with_client_cert_der(cert);
    let thumb = ctx.client_cert_sha256.unwrap();
    let bound = key.token(&with(
        claims(),
        json!({"cnf": {"x5t#S256": b64url(&thumb)}}),
    ));
    let c = auth.validate(&bound, &ctx).await.unwrap();
    assert_eq!(c.certificate_thumbprint(), Some(&thumb));
    // Same token (now cached), another certificate: refused on the cache hit too.
    let other = RequestContext::new().with_client_cert_der(b"another certificate");
    assert_eq!(
        auth.validate(&bound, &other).await.unwrap_err(),
        AuthError::CertificateMismatch
    );
    assert_eq!(
        auth.validate(&bound, &RequestContext::new())
            .await
            .unwrap_err(),
        AuthError::NoClientCertificate
    );
    let dpop = key.token(&with(claims(), json!({"cnf": {"jkt": "abc"}})));
    assert_eq!(
        check(&auth, &dpop).await.unwrap_err(),
        AuthError::UnsupportedConfirmation
    );

    let strict = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience(AUD)
        .require_certificate_binding()
        .build()
        .unwrap();
    assert_eq!(
        strict
            .validate(&key.token(&claims()), &ctx)
            .await
            .unwrap_err(),
        AuthError::CertificateBindingRequired
    );
    assert!(strict.validate(&bound, &ctx).await.is_ok());
}

#[tokio::test]
async fn cache_hits_still_check_time() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = auth_for(&[&key]);
    let token = key.token(&claims());
    assert!(check(&auth, &token).await.is_ok());
    assert_eq!(auth.token_cache_len(), 1);
    assert!(check(&auth, &token).await.is_ok());
    let later = RequestContext::new().at(SystemTime::now() + Duration::from_secs(700));
    assert_eq!(
        auth.validate(&token, &later).await.unwrap_err(),
        AuthError::Expired
    );
}

#[tokio::test]
async fn cached_tokens_are_dropped_when_their_key_leaves_the_jwks() {
    let k1 = TestKey::generate(Algorithm::Es256, "k1");
    let k2 = TestKey::generate(Algorithm::Es256, "k2");
    let source = Arc::new(MemorySource::default());
    *source.doc.lock().unwrap() = jwks(&[&k1, &k2]).into_bytes();
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::with_source(ISS, source.clone()))
        .audience(AUD)
        .build()
        .unwrap();
    auth.ensure_keys().await.unwrap();
    let t1 = k1.token(&claims());
    let t2 = k2.token(&claims());
    assert!(check(&auth, &t1).await.is_ok());
    assert!(check(&auth, &t2).await.is_ok());
    assert_eq!(auth.token_cache_len(), 2);
    // Same keys again: nothing retired, cache entries survive.
    auth.refresh(ISS).await.unwrap();
    assert_eq!(auth.token_cache_len(), 2);
    *source.doc.lock().unwrap() = jwks(&[&k2]).into_bytes();
    auth.refresh(ISS).await.unwrap();
    assert_eq!(auth.token_cache_len(), 1);
    assert!(matches!(
        check(&auth, &t1).await,
        Err(AuthError::UnknownKey { .. })
    ));
    assert!(check(&auth, &t2).await.is_ok());
}

#[tokio::test]
async fn tokens_pick_their_issuer_by_exact_iss() {
    let a = TestKey::generate(Algorithm::Es256, "a1");
    let b = TestKey::generate(Algorithm::Rs256, "b1");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks("https://a.example", jwks(&[&a])))
        .issuer(IssuerConfig::static_jwks("https://b.example", jwks(&[&b])))
        .audience(AUD)
        .build()
        .unwrap();
    let for_a = with(claims(), json!({"iss": "https://a.example"}));
    let for_b = with(claims(), json!({"iss": "https://b.example"}));
    assert_eq!(
        check(&auth, &a.token(&for_a)).await.unwrap().issuer(),
        "https://a.example"
    );
    assert_eq!(
        check(&auth, &b.token(&for_b)).await.unwrap().issuer(),
        "https://b.example"
    );
    // Tenant A's key cannot sign for tenant B.
    assert!(matches!(
        check(&auth, &a.token(&for_b)).await,
        Err(AuthError::UnknownKey { .. })
    ));
    let unknown = with(claims(), json!({"iss": "https://c.example"}));
    assert!(matches!(
        check(&auth, &a.token(&unknown)).await,
        Err(AuthError::UnknownIssuer { .. })
    ));
    let missing = with(claims(), json!({"iss": null}));
    assert!(matches!(
        check(&auth, &a.token(&missing)).await,
        Err(AuthError::UnknownIssuer { .. })
    ));
}

#[tokio::test]
async fn unusable_jwks_keys_are_skipped_and_usable_ones_kept() {
    let key = TestKey::generate(Algorithm::Es256, "good");
    let mut set: Value = serde_json::from_str(&jwks(&[&key])).unwrap();
    let keys = set["keys"].as_array_mut().unwrap();
    keys.push(json!({"kty": "XYZ", "kid": "weird"}));
    keys.push(json!({"kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"}));
    let mut enc = key.public_jwk();
    enc["kid"] = json!("ec-enc");
    enc["use"] = json!("enc");
    keys.push(enc);
    keys.push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}));
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, set.to_string()))
        .audience(AUD)
        .build()
        .unwrap();
    assert!(check(&auth, &key.token(&claims())).await.is_ok());
    let status = auth.key_status(ISS).unwrap();
    assert_eq!(status.key_ids, ["good"]);
    assert_eq!(status.skipped.len(), 4);
}

#[tokio::test]
async fn builder_refuses_unsafe_or_incomplete_configurations() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let no_aud = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .build();
    assert!(matches!(no_aud, Err(AuthError::InvalidConfig { .. })));
    let http = JwtAuthenticator::builder()
        .issuer(IssuerConfig::discover("http://idp.example.com"))
        .audience(AUD)
        .build();
    assert!(matches!(http, Err(AuthError::Fetch { .. })), "{http:?}");
    let dup = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience(AUD)
        .build();
    assert!(matches!(dup, Err(AuthError::InvalidConfig { .. })));
    let garbage = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, "not json"))
        .audience(AUD)
        .build();
    assert!(matches!(garbage, Err(AuthError::InvalidJwks { .. })));
    // ES256 key, but only RS256 allowed: the key is unusable.
    let narrow = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .algorithms([Algorithm::Rs256])
        .audience(AUD)
        .build();
    assert!(matches!(narrow, Err(AuthError::InvalidJwks { .. })));
}

/// Tokens minted by `jsonwebtoken` (the crate whose crypto backend must be selected by
/// exactly one feature) verify through every way of configuring keys: static JWKS, custom
/// source, `jwks_uri`, and OIDC discovery.
#[tokio::test]
async fn jsonwebtoken_minted_tokens_verify_through_every_entry_point() {
    let (es, es_der) = TestKey::generate_with_pkcs8(Algorithm::Es256, "es");
    let (ed, ed_der) = TestKey::generate_with_pkcs8(Algorithm::EdDsa, "ed");
    let set = jwks(&[&es, &ed]);
    let server = JwksServer::start(set.clone()).await.unwrap();
    let iss = server.issuer();
    let body = with(claims(), json!({"iss": iss}));
    let mint = |alg, kid: &str, key: jsonwebtoken::EncodingKey| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &body, &key).unwrap()
    };
    let tokens = [
        mint(
            jsonwebtoken::Algorithm::ES256,
            "es",
            jsonwebtoken::EncodingKey::from_ec_der(&es_der),
        ),
        mint(
            jsonwebtoken::Algorithm::EdDSA,
            "ed",
            jsonwebtoken::EncodingKey::from_ed_der(&ed_der),
        ),
    ];
    let source = Arc::new(MemorySource::default());
    *source.doc.lock().unwrap() = set.clone().into_bytes();
    let configs = [
        IssuerConfig::static_jwks(iss.clone(), set.clone()),
        IssuerConfig::with_source(iss.clone(), source),
        IssuerConfig::jwks_uri(iss.clone(), server.jwks_uri()),
        IssuerConfig::discover(iss.clone()),
    ];
    for config in configs {
        let name = format!("{config:?}");
        let auth = JwtAuthenticator::builder()
            .issuer(config)
            .audience(AUD)
            .allow_insecure_http()
            .build()
            .unwrap();
        for token in &tokens {
            let c = check(&auth, token)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.issuer(), iss);
        }
    }
    // jsonwebtoken's own verification agrees (its backend is selected and working).
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[AUD]);
    let dk = jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(ed.public_jwk()).unwrap())
        .unwrap();
    assert!(jsonwebtoken::decode::<Value>(&tokens[1], &dk, &v).is_ok());
}

/// Tower layers and spawned tasks need `Send` futures and a `Send + Sync` authenticator.
#[test]
fn futures_are_send_and_the_authenticator_is_shareable() {
    fn send<T: Send>(_: &T) {}
    fn shareable<T: Send + Sync + Clone + 'static>(_: &T) {}
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let auth = auth_for(&[&key]);
    shareable(&auth);
    let ctx = RequestContext::new();
    let token = key.token(&claims());
    let validate = auth.validate(&token, &ctx);
    send(&validate);
    let refresh = auth.refresh(ISS);
    send(&refresh);
    let ensure = auth.ensure_keys();
    send(&ensure);
    drop((validate, refresh, ensure));
}

/// Header verdicts are memoized per thread; the memo must be per authenticator (their header
/// rules differ) and must never let a different header through.
#[tokio::test(flavor = "current_thread")]
async fn header_verdicts_follow_each_authenticators_rules() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let lenient = auth_for(&[&key]);
    let strict = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
        .audience(AUD)
        .require_type("at+jwt")
        .build()
        .unwrap();
    let plain = key.token_with_header(
        &json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}),
        &claims(),
    );
    let with_jku = key.token_with_header(
        &json!({"alg": "ES256", "kid": "k1", "typ": "JWT", "jku": "https://evil.example/jwks"}),
        &claims(),
    );
    for _ in 0..3 {
        assert!(check(&lenient, &plain).await.is_ok());
        assert!(matches!(
            check(&strict, &plain).await,
            Err(AuthError::WrongType { .. })
        ));
        assert!(check(&lenient, &plain).await.is_ok());
        assert!(matches!(
            check(&lenient, &with_jku).await,
            Err(AuthError::ForbiddenHeader("jku"))
        ));
    }
    // A repeated header is still bound to the key it names: another key's signature fails.
    let other = TestKey::generate(Algorithm::Es256, "k1");
    let forged = other.token_with_header(
        &json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}),
        &claims(),
    );
    assert!(check(&lenient, &plain).await.is_ok());
    assert!(matches!(
        check(&lenient, &forged).await,
        Err(AuthError::InvalidSignature)
    ));
}

/// Every algorithm refuses a flipped bit in the signature or the payload, and a signature by
/// another key of the same kind (RSA and ECDSA hash in `jwt-oidc`, EdDSA in aws-lc).
#[tokio::test]
async fn tampered_tokens_of_every_algorithm_are_refused() {
    for alg in Algorithm::ALL {
        let key = TestKey::generate(alg, "k");
        let auth = auth_for(&[&key]);
        let token = key.token(&claims());
        assert!(check(&auth, &token).await.is_ok(), "{alg}");
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let mut sig = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(signature)
            .unwrap();
        let middle = sig.len() / 2;
        sig[middle] ^= 0x01;
        let bad_sig = format!("{signing_input}.{}", b64url(&sig));
        assert!(
            matches!(
                check(&auth, &bad_sig).await,
                Err(AuthError::InvalidSignature)
            ),
            "{alg}: flipped signature bit"
        );
        let (header, _) = signing_input.split_once('.').unwrap();
        let other_payload = b64url(
            with(claims(), json!({"sub": "mallory"}))
                .to_string()
                .as_bytes(),
        );
        let swapped = format!("{header}.{other_payload}.{signature}");
        assert!(
            matches!(
                check(&auth, &swapped).await,
                Err(AuthError::InvalidSignature)
            ),
            "{alg}: payload swapped under the signature"
        );
        let impostor = TestKey::generate(alg, "k");
        assert!(
            matches!(
                check(&auth, &impostor.token(&claims())).await,
                Err(AuthError::InvalidSignature)
            ),
            "{alg}: another key's signature"
        );
    }
}

/// Deterministic generator of claims-set texts: valid registered claims, then extra members
/// of every JSON shape (escapes, surrogate pairs, `-0`, integers past `u64`, exponents,
/// nesting, whitespace) under a few names, so duplicates and an escaped `roles` happen too.
struct ClaimsText {
    state: u64,
}

impl ClaimsText {
    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn space(&mut self) -> &'static str {
        self.pick(&["", "", "", " ", "\n\t "])
    }

    fn value(&mut self, depth: u32) -> String {
        let scalar = |g: &mut Self| {
            g.pick(&[
                "null",
                "true",
                "false",
                "0",
                "-0",
                "42",
                "-17",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "1.5",
                "1e5",
                "1E+2",
                "-1.25e-3",
                "0.1",
                "123456789.123456789e-5",
                "1e300",
                r#""plain""#,
                r#""caf\u00e9 \"q\" \\ \/ \n""#,
                r#""\ud83d\ude00""#,
                "\"é ü\"",
                r#""admin""#,
                r#""a b  c""#,
                r#""""#,
            ])
            .to_owned()
        };
        match self.next() % if depth >= 4 { 1 } else { 4 } {
            0 => scalar(self),
            1 => {
                let n = self.next() % 4;
                let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let n = self.next() % 4;
                let members: Vec<String> = (0..n)
                    .map(|_| {
                        let name = self.pick(&["roles", "r\\u006fles", "k", "k", "v\\n"]);
                        let (s1, s2) = (self.space(), self.space());
                        format!("\"{name}\"{s1}:{s2}{}", self.value(depth + 1))
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    fn claims_set(&mut self) -> String {
        let exp = now_unix() + 600;
        let mut members = vec![
            format!("\"iss\":\"{ISS}\""),
            format!(
                "\"aud\":{}",
                self.pick(&[r#""orders-api""#, r#"["x","orders-api"]"#])
            ),
            format!("\"exp\":{exp}"),
        ];
        // A registered claim appears at most once (a duplicate one refuses the token).
        match self.next() % 3 {
            0 => members.push(r#""sub":"alice""#.to_owned()),
            1 => members.push(r#""sub":null"#.to_owned()),
            _ => {}
        }
        for extra in [
            r#""scope":"orders:read""#,
            r#""scp":["a","b"]"#,
            r#""client_id":"w\u00e9b""#,
            &format!("\"iat\":{}", now_unix()),
            &format!("\"nbf\":{}.5", now_unix() - 10),
        ] {
            if self.next().is_multiple_of(3) {
                members.push(extra.to_owned());
            }
        }
        for _ in 0..self.next() % 8 {
            let name = self.pick(&[
                "jti",
                "jti",
                "x",
                "realm_access",
                "roles",
                "r\\u006fles",
                "\\u00e9",
            ]);
            let value = if name == "realm_access" && self.next().is_multiple_of(2) {
                format!("{{\"roles\":{}}}", self.value(2))
            } else {
                self.value(1)
            };
            members.push(format!("\"{name}\":{value}"));
        }
        // Shuffle, keeping the generated pieces intact.
        for i in (1..members.len()).rev() {
            members.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
        let s = self.space();
        format!("{s}{{{s}{}{s}}}{s}", members.join(&format!("{s},{s}")))
    }
}

/// `Claims::raw` is built on first use, from the verified text, by the crate's own reader:
/// for a few hundred generated claims sets it must be exactly what serde_json reads from
/// `Claims::json()` (what it was when it was built eagerly, and before that by serde_json
/// itself); roles, `get`, the registered accessors and required-claim verdicts follow from it.
#[tokio::test]
async fn raw_is_serde_jsons_value_of_the_verified_claims_set() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let build = |require_jti: bool| {
        let b = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&key])))
            .audience(AUD)
            .roles_claim("realm_access.roles")
            .token_cache_capacity(0);
        if require_jti {
            b.require_claim("jti")
        } else {
            b
        }
        .build()
        .unwrap()
    };
    let (plain, needs_jti) = (build(false), build(true));
    let header = b64url(br#"{"alg":"ES256","kid":"k1"}"#);
    let mut generator = ClaimsText {
        state: 0x9e37_79b9_7f4a_7c15,
    };
    let (mut compared, mut missing_jti) = (0, 0);
    for _ in 0..400 {
        let text = generator.claims_set();
        let token = jwt_oidc::testing::sign_parts(&key, &header, &b64url(text.as_bytes()));
        let expected: Value = serde_json::from_str(&text).unwrap();
        let claims = check(&plain, &token)
            .await
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(claims.json(), text);
        // Read the value twice: built once, then the same.
        // Exactly equal: the generated numbers are ones both float parsers round alike.
        assert_eq!(claims.raw(), &expected, "{text}");
        assert!(std::ptr::eq(claims.raw(), claims.raw()));
        for name in ["jti", "x", "roles", "\u{e9}", "realm_access", "sub"] {
            assert_eq!(
                claims.get(name).is_some(),
                expected.get(name).is_some(),
                "{name}: {text}"
            );
        }
        assert_eq!(claims.raw()["iss"], claims.issuer());
        assert_eq!(claims.raw()["exp"], claims.expires_at_unix());
        assert_eq!(claims.raw()["sub"].as_str(), claims.subject());
        assert_eq!(claims.raw()["client_id"].as_str(), claims.client_id());
        let expected_roles: Vec<&str> = match &expected["realm_access"]["roles"] {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => s.split(' ').filter(|r| !r.is_empty()).collect(),
            _ => Vec::new(),
        };
        let roles: Vec<&str> = claims.roles().iter().map(AsRef::as_ref).collect();
        assert_eq!(roles, expected_roles, "{text}");
        // Required claims: present with a non-null value, the last of duplicates counting.
        let jti_present = expected.get("jti").is_some_and(|v| !v.is_null());
        match check(&needs_jti, &token).await {
            Ok(c) => {
                assert!(jti_present, "{text}");
                assert_eq!(c.raw(), &expected);
            }
            Err(e) => {
                assert!(!jti_present, "{e}: {text}");
                assert_eq!(
                    e,
                    AuthError::MissingClaim {
                        claim: "jti".into()
                    }
                );
                missing_jti += 1;
            }
        }
        compared += 1;
    }
    assert_eq!(compared, 400);
    // Both required-claim verdicts were exercised.
    assert!(missing_jti > 20 && missing_jti < 380, "{missing_jti}");
}
