//! Attacks on the validator: each is refused with a typed error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jwt_oidc::testing::{TestKey, b64url, jwks, now_unix, sign_parts};
use jwt_oidc::{Algorithm, AuthError, IssuerConfig, JwtAuthenticator, RequestContext};
use serde_json::{Value, json};

const ISS: &str = "https://idp.example.com";
const AUD: &str = "api";

struct Fixture {
    rsa: TestKey,
    ec: TestKey,
    attacker: TestKey,
    auth: JwtAuthenticator,
}

fn fixture() -> Fixture {
    let rsa = TestKey::generate(Algorithm::Rs256, "rsa1");
    let ec = TestKey::generate(Algorithm::Es256, "ec1");
    let attacker = TestKey::generate(Algorithm::Es256, "ec1");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&rsa, &ec])))
        .audience(AUD)
        .build()
        .unwrap();
    Fixture {
        rsa,
        ec,
        attacker,
        auth,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now_unix() + 600})
}

fn seg(v: &Value) -> String {
    b64url(v.to_string().as_bytes())
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

async fn refused(f: &Fixture, token: &str) -> AuthError {
    let result = f.auth.validate(token, &RequestContext::new()).await;
    let err = result.expect_err("attack token was accepted");
    assert_eq!(err.bearer_error().http_status(), 401, "{err}");
    err
}

#[tokio::test]
async fn the_fixture_accepts_honest_tokens() {
    let f = fixture();
    for key in [&f.rsa, &f.ec] {
        assert!(
            f.auth
                .validate(&key.token(&claims()), &RequestContext::new())
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = fixture();
    for alg in ["none", "None", "NONE", ""] {
        let token = format!("{}.{}.", seg(&header(alg, "ec1")), seg(&claims()));
        assert!(matches!(refused(&f, &token).await, AuthError::Malformed(_)));
        let token = format!("{}.{}.AAAA", seg(&header(alg, "ec1")), seg(&claims()));
        assert!(matches!(
            refused(&f, &token).await,
            AuthError::AlgorithmNotAllowed { .. }
        ));
    }
    let no_alg = format!("{}.{}.AAAA", seg(&json!({"kid": "ec1"})), seg(&claims()));
    assert!(matches!(
        refused(&f, &no_alg).await,
        AuthError::Malformed(_)
    ));
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let f = fixture();
    let public = f.rsa.public_jwk();
    let mut candidates = vec![
        public.to_string().into_bytes(),
        public["n"].as_str().unwrap().as_bytes().to_vec(),
    ];
    candidates.push(jwks(&[&f.rsa]).into_bytes());
    for secret in candidates {
        for alg in ["HS256", "HS384", "HS512"] {
            let input = format!("{}.{}", seg(&header(alg, "rsa1")), seg(&claims()));
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
            let mac = aws_lc_rs::hmac::sign(&key, input.as_bytes());
            let token = format!("{input}.{}", b64url(mac.as_ref()));
            assert!(matches!(
                refused(&f, &token).await,
                AuthError::AlgorithmNotAllowed { .. }
            ));
        }
    }
}

#[tokio::test]
async fn header_alg_must_match_the_key() {
    let f = fixture();
    // RSA key signs PS256/RS384 but the key is pinned to RS256.
    for alg in [Algorithm::Ps256, Algorithm::Rs384] {
        let other = TestKey::generate(alg, "rsa1");
        let token = other.token_with_header(&header(alg.as_str(), "rsa1"), &claims());
        assert!(matches!(
            refused(&f, &token).await,
            AuthError::AlgorithmMismatch { .. }
        ));
    }
    let es384 = TestKey::generate(Algorithm::Es384, "ec1");
    let token = es384.token_with_header(&header("ES384", "ec1"), &claims());
    assert!(matches!(
        refused(&f, &token).await,
        AuthError::AlgorithmMismatch { .. }
    ));
}

#[tokio::test]
async fn missing_or_hostile_kids_are_refused() {
    let f = fixture();
    let no_kid = f.ec.token_with_header(&json!({"alg": "ES256"}), &claims());
    assert_eq!(refused(&f, &no_kid).await, AuthError::MissingKeyId);
    for kid in [
        "missing",
        "../../../../etc/passwd",
        "' OR '1'='1",
        "ec1\u{0}",
        "ec1 ",
        "EC1",
        "\n\r\t",
        &"x".repeat(2000),
    ] {
        let token = f.ec.token_with_header(&header("ES256", kid), &claims());
        let err = refused(&f, &token).await;
        match &err {
            AuthError::UnknownKey { kid: shown, .. } => assert!(shown.chars().count() <= 65),
            AuthError::TokenTooLarge { .. } => {}
            other => panic!("{kid:?}: {other}"),
        }
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

#[tokio::test]
async fn embedded_keys_and_key_urls_are_refused() {
    let f = fixture();
    let attacker_jwk = f.attacker.public_jwk();
    let headers = [
        (
            "jwk",
            json!({"alg": "ES256", "kid": "ec1", "jwk": attacker_jwk}),
        ),
        ("jwk", json!({"alg": "ES256", "jwk": attacker_jwk})),
        (
            "jku",
            json!({"alg": "ES256", "kid": "ec1", "jku": "https://evil.example/jwks"}),
        ),
        (
            "x5u",
            json!({"alg": "ES256", "kid": "ec1", "x5u": "https://evil.example/cert.pem"}),
        ),
        (
            "x5c",
            json!({"alg": "ES256", "kid": "ec1", "x5c": ["MIIB"]}),
        ),
    ];
    for (name, h) in headers {
        let token = f.attacker.token_with_header(&h, &claims());
        assert_eq!(refused(&f, &token).await, AuthError::ForbiddenHeader(name));
    }
    // Without those headers the attacker's key, using a real kid, simply fails.
    let token = f
        .attacker
        .token_with_header(&header("ES256", "ec1"), &claims());
    assert_eq!(refused(&f, &token).await, AuthError::InvalidSignature);
}

#[tokio::test]
async fn broken_signatures_are_refused() {
    let f = fixture();
    let input = format!("{}.{}", seg(&header("ES256", "ec1")), seg(&claims()));
    // CVE-2022-21449: r = s = 0.
    let zero = format!("{input}.{}", b64url(&[0u8; 64]));
    assert_eq!(refused(&f, &zero).await, AuthError::InvalidSignature);
    let good = sign_parts(&f.ec, &seg(&header("ES256", "ec1")), &seg(&claims()));
    let sig = good.rsplit('.').next().unwrap();
    let truncated = format!("{input}.{}", &sig[..sig.len() / 2 / 4 * 4]);
    assert_eq!(refused(&f, &truncated).await, AuthError::InvalidSignature);
    let odd = format!("{input}.{}", &sig[..sig.len() - 1]);
    let err = refused(&f, &odd).await;
    assert!(
        matches!(err, AuthError::Malformed(_) | AuthError::InvalidSignature),
        "{err}"
    );
    assert!(matches!(
        refused(&f, &format!("{input}.")).await,
        AuthError::Malformed(_)
    ));
    let huge = format!("{input}.{}", "A".repeat(4000));
    assert!(matches!(refused(&f, &huge).await, AuthError::Malformed(_)));
    // A valid signature over other claims.
    let other =
        f.ec.token(&json!({"iss": ISS, "aud": AUD, "sub": "mallory", "exp": now_unix() + 600}));
    let spliced = format!("{input}.{}", other.rsplit('.').next().unwrap());
    assert_eq!(refused(&f, &spliced).await, AuthError::InvalidSignature);
}

#[tokio::test]
async fn bad_time_issuer_audience_and_exp_are_refused() {
    let f = fixture();
    type Expect = fn(&AuthError) -> bool;
    let cases: Vec<(Value, Expect)> = vec![
        (json!({"exp": now_unix() - 3600}), |e| {
            *e == AuthError::Expired
        }),
        (json!({"nbf": now_unix() + 3600}), |e| {
            *e == AuthError::NotYetValid
        }),
        (json!({"iss": format!("{ISS}/")}), |e| {
            matches!(e, AuthError::UnknownIssuer { .. })
        }),
        (json!({"iss": format!("{ISS}.evil.com")}), |e| {
            matches!(e, AuthError::UnknownIssuer { .. })
        }),
        (json!({"iss": format!("x{ISS}")}), |e| {
            matches!(e, AuthError::UnknownIssuer { .. })
        }),
        (json!({"iss": "HTTPS://IDP.EXAMPLE.COM"}), |e| {
            matches!(e, AuthError::UnknownIssuer { .. })
        }),
        (json!({"iss": [ISS]}), |e| {
            matches!(e, AuthError::Malformed(_))
        }),
        (json!({"aud": "other"}), |e| *e == AuthError::WrongAudience),
        (json!({"aud": ["other", "api2"]}), |e| {
            *e == AuthError::WrongAudience
        }),
        (json!({"aud": "API"}), |e| *e == AuthError::WrongAudience),
        (json!({"aud": null}), |e| {
            matches!(e, AuthError::MissingClaim { .. })
        }),
        (json!({"exp": null}), |e| {
            matches!(e, AuthError::MissingClaim { .. })
        }),
        (json!({"exp": "9999999999"}), |e| {
            matches!(e, AuthError::Malformed(_))
        }),
        (json!({"exp": -1}), |e| matches!(e, AuthError::Malformed(_))),
    ];
    for (patch, expected) in cases {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let err = refused(&f, &f.ec.token(&c)).await;
        assert!(expected(&err), "{patch}: {err}");
    }
}

#[tokio::test]
async fn unknown_crit_and_unencoded_payloads_are_refused() {
    let f = fixture();
    let crit = json!({"alg": "ES256", "kid": "ec1", "crit": ["exp"], "exp": 1});
    assert!(matches!(
        refused(&f, &f.ec.token_with_header(&crit, &claims())).await,
        AuthError::UnknownCritical { .. }
    ));
    let empty = json!({"alg": "ES256", "kid": "ec1", "crit": []});
    assert!(matches!(
        refused(&f, &f.ec.token_with_header(&empty, &claims())).await,
        AuthError::Malformed(_)
    ));
    let b64 = json!({"alg": "ES256", "kid": "ec1", "b64": false, "crit": ["b64"]});
    assert!(
        refused(&f, &f.ec.token_with_header(&b64, &claims()))
            .await
            .to_string()
            .contains("b64")
    );
    // An application that handles an extension may accept it.
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&f.ec])))
        .audience(AUD)
        .allow_critical_header("urn:example:ext")
        .build()
        .unwrap();
    let ok =
        json!({"alg": "ES256", "kid": "ec1", "crit": ["urn:example:ext"], "urn:example:ext": 1});
    assert!(
        auth.validate(
            &f.ec.token_with_header(&ok, &claims()),
            &RequestContext::new()
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn required_typ_is_enforced() {
    let f = fixture();
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&f.ec])))
        .audience(AUD)
        .require_type("at+jwt")
        .build()
        .unwrap();
    for typ in [Some("JWT"), Some("at+jwt+x"), Some("application/jwt"), None] {
        let mut h = json!({"alg": "ES256", "kid": "ec1"});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        let err = auth
            .validate(
                &f.ec.token_with_header(&h, &claims()),
                &RequestContext::new(),
            )
            .await;
        assert!(matches!(err, Err(AuthError::WrongType { .. })), "{typ:?}");
    }
    let ok = json!({"alg": "ES256", "kid": "ec1", "typ": "Application/AT+JWT"});
    assert!(
        auth.validate(
            &f.ec.token_with_header(&ok, &claims()),
            &RequestContext::new()
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn oversized_and_malformed_encodings_are_refused() {
    let f = fixture();
    let big = format!(
        "{}.{}.AAAA",
        seg(&header("ES256", "ec1")),
        "A".repeat(1 << 20)
    );
    assert!(
        matches!(refused(&f, &big).await, AuthError::TokenTooLarge { len, .. } if len > 1 << 20)
    );
    let h = seg(&header("ES256", "ec1"));
    let p = seg(&claims());
    for bad in [
        format!("{h}.{p}+/.AAAA"),
        format!("{h}=.{p}.AAAA"),
        format!("{h}.{p}.AA=="),
        format!("{h}.{p}.AA AA"),
        format!("{h}.{p}.AAAA.AAAA"),
        format!("{h}.{p}"),
        format!("eyJ.{p}.AAAA"),
        "..".to_owned(),
        String::new(),
        "Bearer abc".to_owned(),
        format!("{h}.{p}.ÄÄÄ"),
    ] {
        assert!(
            matches!(refused(&f, &bad).await, AuthError::Malformed(_)),
            "{bad}"
        );
    }
    // Non-UTF-8 header and payload bytes, properly encoded and signed.
    let non_utf8 = b"{\"alg\":\"ES256\",\"kid\":\"ec1\",\"x\":\"\xff\xfe\"}";
    let t = sign_parts(&f.ec, &b64url(non_utf8), &p);
    assert!(matches!(refused(&f, &t).await, AuthError::Malformed(_)));
    let t = sign_parts(&f.ec, &h, &b64url(b"{\"iss\":\"\xc3\x28\"}"));
    assert!(matches!(refused(&f, &t).await, AuthError::Malformed(_)));
    // Arrays and scalars are not claims sets, even if signed.
    for body in [
        "[1,2,3]",
        "\"x\"",
        "null",
        "{\"iss\": \"a\", \"iss\": \"b\"}",
    ] {
        let t = sign_parts(&f.ec, &h, &b64url(body.as_bytes()));
        assert!(
            matches!(refused(&f, &t).await, AuthError::Malformed(_)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let f = fixture();
    let h = seg(&header("ES256", "ec1"));
    let depth = 1000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // Signed by the real key, nested in an unknown claim.
    let body = format!(
        "{{\"iss\":\"{ISS}\",\"aud\":\"{AUD}\",\"exp\":{},\"deep\":{nested}}}",
        now_unix() + 600
    );
    let t = sign_parts(&f.ec, &h, &b64url(body.as_bytes()));
    assert!(matches!(refused(&f, &t).await, AuthError::Malformed(_)));
    // Nested in a registered claim, and in the header.
    let t = sign_parts(
        &f.ec,
        &h,
        &b64url(format!("{{\"aud\":{nested}}}").as_bytes()),
    );
    assert!(matches!(refused(&f, &t).await, AuthError::Malformed(_)));
    let deep_header = format!("{{\"alg\":\"ES256\",\"kid\":\"ec1\",\"x\":{nested}}}");
    let t = sign_parts(&f.ec, &b64url(deep_header.as_bytes()), &seg(&claims()));
    let err = refused(&f, &t).await;
    assert!(
        matches!(
            err,
            AuthError::Malformed(_) | AuthError::TokenTooLarge { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn cert_bound_token_over_another_connection_is_refused() {
    let f = fixture();
    let mine = RequestContext::new().with_client_cert_der(b"alice's certificate");
    let thumb = b64url(&mine.client_cert_sha256.unwrap());
    let mut c = claims();
    c["cnf"] = json!({"x5t#S256": thumb});
    let token = f.ec.token(&c);
    assert!(f.auth.validate(&token, &mine).await.is_ok());
    let theirs = RequestContext::new().with_client_cert_der(b"mallory's certificate");
    assert_eq!(
        f.auth.validate(&token, &theirs).await.unwrap_err(),
        AuthError::CertificateMismatch
    );
    c["cnf"] = json!({"x5t#S256": "not-a-thumbprint"});
    let bad = f.ec.token(&c);
    assert!(matches!(
        f.auth.validate(&bad, &mine).await,
        Err(AuthError::InvalidClaim { .. })
    ));
}
