//! The JWKS cache against a loopback JWKS / discovery server: discovery, Cache-Control,
//! background refresh, one shared fetch per unknown-kid burst, cooldown, outages (fail closed
//! after the staleness limit), bad documents, and the HTTP limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use jwt_oidc::testing::{JwksServer, TestKey, jwks, now_unix};
use jwt_oidc::{Algorithm, AuthError, IssuerConfig, JwtAuthenticator, RequestContext};
use serde_json::{Value, json};

const AUD: &str = "api";
const GUARD: Duration = Duration::from_secs(20);

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "aud": AUD, "sub": "svc", "exp": now_unix() + 7 * 24 * 3600})
}

fn discover(server: &JwksServer) -> jwt_oidc::JwtAuthenticatorBuilder {
    JwtAuthenticator::builder()
        .issuer(IssuerConfig::discover(server.issuer()))
        .audience(AUD)
        .allow_insecure_http()
}

async fn ok(auth: &JwtAuthenticator, token: &str) -> bool {
    auth.validate(token, &RequestContext::new()).await.is_ok()
}

#[tokio::test]
async fn discovery_finds_the_jwks_and_fetches_it_once() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let auth = discover(&server).build().unwrap();
    assert!(ok(&auth, &key.token(&claims(&server.issuer()))).await);
    assert_eq!(server.discovery_hits(), 1);
    assert_eq!(server.jwks_hits(), 1);
    let status = auth.key_status(&server.issuer()).unwrap();
    assert_eq!(status.source, server.jwks_uri());
    assert_eq!(status.key_ids, ["k1"]);
}

#[tokio::test]
async fn discovery_with_another_issuer_is_refused() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    for claimed in [
        format!("{}/", server.issuer()),
        "https://evil.example".to_owned(),
    ] {
        server.set_discovery_issuer(&claimed);
        let auth = discover(&server).build().unwrap();
        let err = auth.ensure_keys().await.unwrap_err();
        assert!(matches!(err, AuthError::Discovery { .. }), "{err}");
        let refused = auth
            .validate(
                &key.token(&claims(&server.issuer())),
                &RequestContext::new(),
            )
            .await;
        assert!(
            matches!(refused, Err(AuthError::KeysUnavailable { .. })),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn plain_http_needs_the_named_opt_in() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let strict = JwtAuthenticator::builder()
        .issuer(IssuerConfig::jwks_uri(
            "https://idp.example",
            server.jwks_uri(),
        ))
        .audience(AUD)
        .build();
    assert!(matches!(strict, Err(AuthError::Fetch { .. })));
}

#[tokio::test]
async fn cache_control_max_age_is_clamped_to_floor_and_ceiling() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let auth = discover(&server)
        .jwks_ttl_bounds(Duration::from_secs(60), Duration::from_secs(3600))
        .jwks_default_ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    let iss = server.issuer();
    for (header, expected) in [
        (Some("public, max-age=300"), 300),
        (Some("max-age=5"), 60),
        (Some("max-age=86400"), 3600),
        (Some("no-store"), 60),
        (None, 600),
    ] {
        server.set_cache_control(header);
        auth.refresh(&iss).await.unwrap();
        let ttl = auth.key_status(&iss).unwrap().ttl.unwrap();
        assert_eq!(ttl, Duration::from_secs(expected), "{header:?}");
    }
}

/// A JWKS server whose keys may be cached for one second, and an authenticator using it.
async fn one_second_keys(key: &TestKey) -> (JwksServer, JwtAuthenticator) {
    let server = JwksServer::start(jwks(&[key])).await.unwrap();
    server.set_cache_control(Some("max-age=1"));
    let auth = discover(&server)
        .jwks_ttl_bounds(Duration::from_secs(1), Duration::from_secs(60))
        .build()
        .unwrap();
    (server, auth)
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background_before_they_expire() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let (server, auth) = one_second_keys(&key).await;
    let _refresher = auth.spawn_refresher().unwrap();
    // No validation triggers these: only the background refresher does.
    tokio::time::timeout(GUARD, server.wait_for_jwks_hits(3))
        .await
        .expect("no background refresh");
    let status = auth.key_status(&server.issuer()).unwrap();
    assert!(status.generation >= 2, "{status:?}");
}

/// The refresher is owned by its handle: dropping the handle stops it although the
/// authenticator (and its clones) live on.
#[tokio::test]
async fn the_refresher_stops_when_its_handle_is_dropped() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let (server, auth) = one_second_keys(&key).await;
    let clone = auth.clone();
    auth.ensure_keys().await.unwrap();
    let refresher = auth.spawn_refresher().unwrap();
    assert!(refresher.is_running());
    tokio::time::timeout(GUARD, server.wait_for_jwks_hits(3))
        .await
        .expect("no background refresh");
    drop(refresher);
    // Settle: a fetch already in flight when the handle dropped may still land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = server.jwks_hits();
    // With the handle alive a refresh was due every 0.8 s; wait out three of them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server.jwks_hits(),
        hits,
        "refreshed after its handle was dropped"
    );
    assert!(clone.key_status(&server.issuer()).is_some());

    // Static keys need no refresher: the handle owns nothing.
    let fixed = JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks("https://fixed", jwks(&[&key])))
        .audience(AUD)
        .build()
        .unwrap();
    assert!(!fixed.spawn_refresher().unwrap().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_one_fetch_and_respect_the_cooldown() {
    let k1 = TestKey::generate(Algorithm::Es256, "k1");
    let k2 = TestKey::generate(Algorithm::Es256, "k2");
    let server = JwksServer::start(jwks(&[&k1])).await.unwrap();
    let auth = discover(&server).build().unwrap();
    auth.ensure_keys().await.unwrap();
    assert_eq!(server.jwks_hits(), 1);
    let iss = server.issuer();

    // The provider rotates in k2; 64 requests with k2 tokens arrive at once.
    server.set_jwks(jwks(&[&k1, &k2]));
    server.hold();
    let token = k2.token(&claims(&iss));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (auth, token) = (auth.clone(), token.clone());
            tokio::spawn(async move { auth.validate(&token, &RequestContext::new()).await })
        })
        .collect();
    tokio::time::timeout(GUARD, server.wait_for_jwks_hits(2))
        .await
        .unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    server.release();
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(
        server.jwks_hits(),
        2,
        "concurrent misses must share one fetch"
    );

    // Within the cooldown another unknown kid does not fetch again.
    let k3 = TestKey::generate(Algorithm::Es256, "k3");
    let err = auth
        .validate(&k3.token(&claims(&iss)), &RequestContext::new())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey { .. }), "{err}");
    assert_eq!(server.jwks_hits(), 2);
}

#[tokio::test]
async fn unknown_kid_refreshes_again_after_the_cooldown() {
    let k1 = TestKey::generate(Algorithm::Es256, "k1");
    let k2 = TestKey::generate(Algorithm::Es256, "k2");
    let server = JwksServer::start(jwks(&[&k1])).await.unwrap();
    let auth = discover(&server)
        .unknown_kid_cooldown(Duration::ZERO)
        .build()
        .unwrap();
    auth.ensure_keys().await.unwrap();
    let iss = server.issuer();
    let t2 = k2.token(&claims(&iss));
    assert!(!ok(&auth, &t2).await);
    assert_eq!(server.jwks_hits(), 2);
    server.set_jwks(jwks(&[&k1, &k2]));
    assert!(ok(&auth, &t2).await);
    assert_eq!(server.jwks_hits(), 3);
}

#[tokio::test]
async fn provider_down_serves_cached_keys_until_the_staleness_limit() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let iss = server.issuer();
    let auth = discover(&server)
        .max_key_staleness(Duration::from_secs(120))
        .http_timeout(Duration::from_secs(2))
        .token_cache_capacity(0)
        .build()
        .unwrap();
    auth.ensure_keys().await.unwrap();
    let token = key.token(&claims(&iss));
    drop(server);
    let err = auth.refresh(&iss).await.unwrap_err();
    assert!(matches!(err, AuthError::Fetch { .. }), "{err}");
    let now = SystemTime::now();
    assert!(
        auth.validate(&token, &RequestContext::new().at(now))
            .await
            .is_ok()
    );
    assert!(
        auth.validate(
            &token,
            &RequestContext::new().at(now + Duration::from_secs(100))
        )
        .await
        .is_ok()
    );
    let late = RequestContext::new().at(now + Duration::from_secs(130));
    assert_eq!(
        auth.validate(&token, &late).await.unwrap_err(),
        AuthError::KeysUnavailable {
            issuer: iss.clone().into(),
            reason: "stale"
        }
    );
    let status = auth.key_status(&iss).unwrap();
    assert!(status.failures >= 1 && status.last_error.is_some());
}

#[tokio::test]
async fn stale_keys_refuse_cached_tokens_too() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let iss = server.issuer();
    let auth = discover(&server)
        .max_key_staleness(Duration::from_secs(120))
        .build()
        .unwrap();
    let token = key.token(&claims(&iss));
    assert!(ok(&auth, &token).await);
    assert_eq!(auth.token_cache_len(), 1);
    let late = RequestContext::new().at(SystemTime::now() + Duration::from_secs(130));
    assert!(matches!(
        auth.validate(&token, &late).await,
        Err(AuthError::KeysUnavailable { .. })
    ));
}

#[tokio::test]
async fn bad_documents_keep_the_last_good_keys() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let iss = server.issuer();
    let auth = discover(&server).token_cache_capacity(0).build().unwrap();
    let token = key.token(&claims(&iss));
    assert!(ok(&auth, &token).await);

    let mut huge = b"{\"keys\":[".to_vec();
    huge.resize(10 * 1024 * 1024, b' ');
    huge.extend_from_slice(b"]}");
    let bad: Vec<(u16, Vec<u8>, &str)> = vec![
        (200, b"garbage".to_vec(), "invalid JWKS"),
        (200, b"{\"keys\": []}".to_vec(), "no usable signing key"),
        (
            200,
            b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"AAAA\"}]}".to_vec(),
            "no usable",
        ),
        (200, huge, "larger than"),
        (500, b"oops".to_vec(), "status 500"),
        (302, Vec::new(), "redirects are not followed"),
    ];
    for (status, body, expected) in bad {
        server.set_response(status, body);
        let err = auth.refresh(&iss).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{status}: {err}");
        let state = auth.key_status(&iss).unwrap();
        assert!(state.last_error.is_some());
        assert_eq!(state.key_ids, ["k1"]);
        assert!(ok(&auth, &token).await, "last good keys must keep serving");
    }
    server.set_jwks(jwks(&[&key]));
    auth.refresh(&iss).await.unwrap();
    assert!(auth.key_status(&iss).unwrap().last_error.is_none());
}

#[tokio::test]
async fn slow_providers_time_out() {
    let key = TestKey::generate(Algorithm::Es256, "k1");
    let server = JwksServer::start(jwks(&[&key])).await.unwrap();
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::jwks_uri(server.issuer(), server.jwks_uri()))
        .audience(AUD)
        .allow_insecure_http()
        .http_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    server.hold();
    let err = tokio::time::timeout(GUARD, auth.ensure_keys())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    server.release();
}

#[tokio::test]
async fn rotation_keeps_old_keys_while_published() {
    let old = TestKey::generate(Algorithm::Rs256, "old");
    let new = TestKey::generate(Algorithm::Rs256, "new");
    let server = JwksServer::start(jwks(&[&old])).await.unwrap();
    let iss = server.issuer();
    let auth = discover(&server)
        .unknown_kid_cooldown(Duration::ZERO)
        .build()
        .unwrap();
    let t_old = old.token(&claims(&iss));
    let t_new = new.token(&claims(&iss));
    assert!(ok(&auth, &t_old).await);
    server.set_jwks(jwks(&[&new, &old]));
    assert!(
        ok(&auth, &t_new).await,
        "new key accepted after one refresh"
    );
    assert!(ok(&auth, &t_old).await, "old key still published");
    server.set_jwks(jwks(&[&new]));
    auth.refresh(&iss).await.unwrap();
    assert!(!ok(&auth, &t_old).await, "old key withdrawn");
    assert!(ok(&auth, &t_new).await);
}
