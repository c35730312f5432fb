//! JwtAuthLayer and RequireClaimsLayer in front of an axum router, driven through tower.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::{Router, body::Body, routing::get};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use jwt_oidc::testing::{TestKey, jwks, now_unix};
use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator};
use mtls_verify::PeerIdentity;
use serde_json::json;
use tower::ServiceExt;
use zt_tower::{JwtAuthLayer, RequireClaimsLayer, TlsConnectInfo, TokenClaims};
use ztkit_test_support::TestCa;

const ISS: &str = "https://idp.example";

fn authenticator(key: &TestKey) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[key])))
        .audience("orders")
        .build()
        .unwrap()
}

fn app(layer: JwtAuthLayer) -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|claims: Option<TokenClaims>| async move {
                claims
                    .and_then(|TokenClaims(c)| c.subject().map(str::to_owned))
                    .unwrap_or_else(|| "anonymous".into())
            }),
        )
        .route(
            "/orders",
            get(|TokenClaims(c): TokenClaims| async move { c.subject().unwrap_or("").to_owned() })
                .layer(RequireClaimsLayer::scopes(["orders:read"])),
        )
        .layer(layer)
}

fn token(key: &TestKey, extra: serde_json::Value) -> String {
    let mut claims = json!({"iss": ISS, "aud": "orders", "sub": "alice", "exp": now_unix() + 300});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    key.token(&claims)
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get_with(path: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn valid_token_reaches_the_handler_with_claims() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let app = app(JwtAuthLayer::new(authenticator(&key)));
    let t = token(&key, json!({"scope": "orders:read"}));
    let (status, _, body) = call(&app, get_with("/whoami", Some(&t))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    let (status, _, body) = call(&app, get_with("/orders", Some(&t))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
}

#[tokio::test]
async fn invalid_tokens_get_401_invalid_token_and_a_missing_one_a_bare_challenge() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let stranger = TestKey::generate(Algorithm::Es256, "k1");
    let app = app(JwtAuthLayer::new(authenticator(&key)));
    // RFC 6750 §3.1: a request without any authentication information gets no error code.
    let (status, headers, body) = call(&app, get_with("/whoami", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(body.is_empty(), "no detail for the client: {body}");

    let expired = token(&key, json!({"exp": now_unix() - 3600}));
    let forged = token(&stranger, json!({}));
    for t in [
        Some("not-a-jwt"),
        Some(expired.as_str()),
        Some(forged.as_str()),
    ] {
        let (status, headers, body) = call(&app, get_with("/whoami", t)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{t:?}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert!(body.is_empty(), "no detail for the client: {body}");
    }
    // Another scheme is not a bearer token.
    let req = Request::get("/whoami")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let app = app(JwtAuthLayer::new(authenticator(&key)));
    let t = token(&key, json!({"scope": "orders:write"}));
    let (status, headers, _) = call(&app, get_with("/orders", Some(&t))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
}

#[tokio::test]
async fn grpc_requests_get_grpc_statuses() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let app = app(JwtAuthLayer::new(authenticator(&key)));
    let grpc = |path: &str, t: Option<&str>| {
        let mut req = Request::post(path).header("content-type", "application/grpc");
        if let Some(t) = t {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Body::empty()).unwrap()
    };
    let (status, headers, _) = call(&app, grpc("/whoami", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "16");

    let t = token(&key, json!({"scope": "other"}));
    let req = grpc("/orders", Some(&t));
    // The route is GET-only; use GET with the gRPC content type to reach the scope guard.
    let (mut parts, body) = req.into_parts();
    parts.method = http::Method::GET;
    let (status, headers, _) = call(&app, Request::from_parts(parts, body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "7");
}

#[tokio::test]
async fn anonymous_mode_passes_no_token_but_never_a_bad_one() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let app = app(JwtAuthLayer::new(authenticator(&key)).allow_anonymous());
    let (status, _, body) = call(&app, get_with("/whoami", None)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
    let (status, _, _) = call(&app, get_with("/whoami", Some("garbage.token.here"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A guarded route still needs claims.
    let (status, _, _) = call(&app, get_with("/orders", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn certificate_bound_token_must_match_the_connection_certificate() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let app = app(JwtAuthLayer::new(authenticator(&key)));
    let ca = TestCa::new("root");
    let mine = ca.leaf("me").client_auth().issue();
    let theirs = ca.leaf("them").client_auth().issue();
    let id = |der: &[u8]| Arc::new(PeerIdentity::from_der(der).unwrap());
    let thumb =
        base64_simd::URL_SAFE_NO_PAD.encode_to_string(id(&mine.cert_der).fingerprint_sha256());
    let bound = token(&key, json!({"cnf": {"x5t#S256": thumb}}));

    let on_conn = |peer: Option<Arc<PeerIdentity>>| {
        let mut req = get_with("/whoami", Some(&bound));
        req.extensions_mut()
            .insert(TlsConnectInfo::new("127.0.0.1:1".parse().unwrap(), peer));
        req
    };
    let (status, _, body) = call(&app, on_conn(Some(id(&mine.cert_der)))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
    let (status, _, _) = call(&app, on_conn(Some(id(&theirs.cert_der)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&app, on_conn(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
