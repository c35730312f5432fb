//! The policy input for a request on an mTLS connection: the peer identity (and the token
//! claims) converted on every request, against the conversions cached once per connection and
//! once per verified token (what `PolicyLayer` does), side by side in one run.
//!
//!   cargo bench -p zt-tower --bench policy_input
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use http::Request;
use jwt_oidc::testing::{TestKey, jwks, now_unix};
use jwt_oidc::{Algorithm, Claims, IssuerConfig, JwtAuthenticator, RequestContext};
use mtls_verify::PeerIdentity;
use policy_rego::{InputDocument, InputOptions};
use zt_tower::{PolicyInputCache, TlsConnectInfo, policy_input};

fn bench(c: &mut Criterion) {
    let ca = ztkit_test_support::TestCa::new("Bench Root");
    let leaf = ca
        .leaf("frontend")
        .spiffe_id("spiffe://example.org/ns/web/sa/frontend")
        .dns("frontend.web.svc")
        .client_auth()
        .issue();
    let peer = Arc::new(PeerIdentity::from_der(&leaf.cert_der).unwrap());
    let addr = "10.0.0.7:51234".parse().unwrap();
    let options = InputOptions::default();
    let request = |info: TlsConnectInfo| {
        let mut req = Request::get("/api/v1/orders/42?expand=items")
            .header("accept", "application/json")
            .header("user-agent", "bench/1.0")
            .body(())
            .unwrap();
        req.extensions_mut().insert(info);
        req
    };
    // A Keycloak-style access token, verified with the token cache off so that each
    // validation yields fresh `Claims` (as a new token would).
    let key = TestKey::generate(Algorithm::Es256, "bench-key");
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(
            "https://idp.example.com/realms/main",
            jwks(&[&key]),
        ))
        .audience("orders-api")
        .token_cache_capacity(0)
        .build()
        .unwrap();
    let token = key.token(&serde_json::json!({
        "iss": "https://idp.example.com/realms/main", "aud": "orders-api",
        "sub": "f47ac10b-58cc-4372-a567-0e02b2c3d479", "exp": now_unix() + 3600,
        "iat": now_unix(), "scope": "orders:read orders:write profile", "azp": "orders-web",
        "realm_access": {"roles": ["user", "orders-admin"]},
    }));
    let verify = || -> Arc<Claims> {
        auth.validate(&token, &RequestContext::new())
            .now_or_never()
            .expect("warm keys: no waiting")
            .unwrap()
    };
    let with_claims = |mut req: Request<()>, claims: Arc<Claims>| {
        req.extensions_mut().insert(claims);
        req
    };

    let mut g = c.benchmark_group("policy_input");
    g.bench_function("identity_converted_per_request", |b| {
        b.iter_batched(
            || request(TlsConnectInfo::new(addr, Some(peer.clone()))),
            |req| black_box(policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    let connection = TlsConnectInfo::new(addr, Some(peer.clone()));
    let cache = PolicyInputCache::new();
    g.bench_function("identity_cached_per_connection", |b| {
        b.iter_batched(
            || request(connection.clone()),
            |req| black_box(cache.policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    // The token part alone, for claims already verified and parsed (a token-cache hit): the
    // conversion on every request (before) against the one kept with the claims (now).
    let claims = verify();
    let _ = claims.raw();
    g.bench_function("token_converted_per_request", |b| {
        b.iter(|| black_box(InputDocument::from(claims.raw().clone())))
    });
    // The token part through the cache (claims only: no identity, no connection).
    let bare = |claims: Arc<Claims>| with_claims(Request::get("/").body(()).unwrap(), claims);
    let _ = cache.policy_input(&bare(claims.clone()), &options);
    g.bench_function("token_converted_per_request_whole_input", |b| {
        b.iter_batched(
            || bare(claims.clone()),
            |req| black_box(policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("token_cached_per_verified_token_whole_input", |b| {
        b.iter_batched(
            || bare(claims.clone()),
            |req| black_box(cache.policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    // Whole input with identity and claims, both cached, as `PolicyLayer` builds it.
    g.bench_function("identity_and_token_cached", |b| {
        b.iter_batched(
            || with_claims(request(connection.clone()), claims.clone()),
            |req| black_box(cache.policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
