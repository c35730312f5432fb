//! JWT-SVIDs through the public API: the test Workload API issues them (ES256, its own
//! keys, rotated on demand), `JwtSvidSource` fetches them and validates incoming ones
//! offline (cached JWT bundles) and through the agent, and zt-tower's `JwtAuthLayer` takes
//! the offline validator, answering 401 to every refused token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use jwt_oidc::testing::{TestKey, now_unix};
use jwt_oidc::{Algorithm, AuthError};
use serde_json::json;
use svid_client::testing::TestWorkloadApi;
use svid_client::{Error, JwtSvidSource, JwtSvidValidator};
use tower::{ServiceBuilder, ServiceExt};
use zt_tower::{JwtAuthLayer, request_claims};

const GUARD: Duration = Duration::from_secs(20);
const WEB: &str = "spiffe://example.org/web";
const OTHER: &str = "spiffe://other.org/batch";
const AUDIENCE: &str = "spiffe://example.org/orders";

/// A refused token: what it is, the token, and the offline error expected.
type Case<'a> = (&'a str, &'a str, fn(&AuthError) -> bool);

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {GUARD:?}"))
}

/// A test agent issuing JWT-SVIDs to `WEB` (example.org) and `OTHER` (other.org), and a
/// source following it.
async fn agent_and_source(dir: &tempfile::TempDir) -> (TestWorkloadApi, JwtSvidSource) {
    let agent = TestWorkloadApi::start(dir.path().join("api.sock")).unwrap();
    agent.issue_jwt_svids([WEB, OTHER], Duration::from_secs(300));
    let source = connected(&agent).await;
    (agent, source)
}

async fn connected(agent: &TestWorkloadApi) -> JwtSvidSource {
    guarded(
        "connect",
        JwtSvidSource::builder()
            .endpoint(agent.endpoint())
            .connect_jwt(),
    )
    .await
    .unwrap()
}

/// A service behind `JwtAuthLayer` with the validator: answers with the principal.
async fn call(validator: &JwtSvidValidator, token: &str) -> (StatusCode, String) {
    let svc = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(validator.clone()))
        .service_fn(|req: Request<()>| async move {
            let principal = request_claims(req.extensions())
                .and_then(|c| c.subject().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(principal))
        });
    let req = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    if res.status() == StatusCode::UNAUTHORIZED {
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }
    (res.status(), res.into_body())
}

#[tokio::test]
async fn fetched_jwt_svids_validate_offline_through_the_agent_and_as_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, source) = agent_and_source(&dir).await;
    assert_eq!(
        source.trust_domains(),
        ["spiffe://example.org", "spiffe://other.org"]
    );

    let svid = guarded("fetch", source.fetch_svid([AUDIENCE]))
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id(), WEB);
    assert_eq!(svid.audience(), [AUDIENCE]);
    let lifetime = svid
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(lifetime <= Duration::from_secs(300), "{lifetime:?}");
    assert!(!format!("{svid:?}").contains(svid.token()));

    // Offline, against the streamed bundles.
    let validator = source.validator(|v| v.audience(AUDIENCE)).unwrap();
    let claims = validator.validate(svid.token()).await.unwrap();
    assert_eq!(claims.subject(), Some(WEB));
    assert_eq!(claims.issuer(), "spiffe://example.org");

    // Through the agent's ValidateJWTSVID.
    let checked = guarded(
        "validate",
        source.validate_with_agent(svid.token(), AUDIENCE),
    )
    .await
    .unwrap();
    assert_eq!(checked.spiffe_id(), WEB);

    // As a bearer token through zt-tower: the principal is the SPIFFE ID.
    assert_eq!(
        call(&validator, svid.token()).await,
        (StatusCode::OK, WEB.to_owned())
    );
    drop(agent);
}

#[tokio::test]
async fn refused_jwt_svids_fail_offline_through_the_agent_and_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, source) = agent_and_source(&dir).await;
    let validator = source.validator(|v| v.audience(AUDIENCE)).unwrap();
    let now = now_unix();
    let claims =
        |sub: &str, aud: &str, exp: u64| json!({"sub": sub, "aud": [aud], "exp": exp, "iat": now});

    let for_billing = guarded("fetch", source.fetch_svid(["billing"]))
        .await
        .unwrap();
    let expired = agent
        .sign_jwt("example.org", &claims(WEB, AUDIENCE, now - 5))
        .unwrap();
    let not_yet = agent
        .sign_jwt(
            "example.org",
            &json!({"sub": WEB, "aud": AUDIENCE, "exp": now + 300, "nbf": now + 120}),
        )
        .unwrap();
    let unknown_kid = TestKey::generate(Algorithm::Es256, "not-in-any-bundle").token(&claims(
        WEB,
        AUDIENCE,
        now + 60,
    ));
    // other.org's key signing an example.org identity: not a key of example.org.
    let other_domains_key = agent
        .sign_jwt("other.org", &claims(WEB, AUDIENCE, now + 60))
        .unwrap();
    let good = agent
        .sign_jwt("example.org", &claims(WEB, AUDIENCE, now + 60))
        .unwrap();
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let forged = jwt_oidc::testing::b64url(
            json!({"sub": "spiffe://example.org/admin", "aud": [AUDIENCE], "exp": now + 60})
                .to_string()
                .as_bytes(),
        );
        format!("{}.{}.{}", parts[0], forged, parts[2])
    };
    let not_spiffe = agent
        .sign_jwt("example.org", &claims("alice", AUDIENCE, now + 60))
        .unwrap();
    // An HMAC token (alg outside the allow-list).
    let hs256 = format!(
        "{}.{}.c2ln",
        jwt_oidc::testing::b64url(br#"{"alg":"HS256","kid":"k","typ":"JWT"}"#),
        jwt_oidc::testing::b64url(claims(WEB, AUDIENCE, now + 60).to_string().as_bytes())
    );

    assert_eq!(
        call(&validator, &good).await,
        (StatusCode::OK, WEB.to_owned())
    );
    let cases: [Case<'_>; 8] = [
        ("wrong audience", for_billing.token(), |e| {
            *e == AuthError::WrongAudience
        }),
        ("expired", &expired, |e| *e == AuthError::Expired),
        ("not yet valid", &not_yet, |e| *e == AuthError::NotYetValid),
        ("unknown kid", &unknown_kid, |e| {
            matches!(e, AuthError::UnknownKey { .. })
        }),
        ("other trust domain's key", &other_domains_key, |e| {
            matches!(e, AuthError::UnknownKey { .. })
        }),
        ("tampered", &tampered, |e| *e == AuthError::InvalidSignature),
        ("sub not a SPIFFE ID", &not_spiffe, |e| {
            matches!(e, AuthError::InvalidClaim { claim: "sub", .. })
        }),
        ("HS256", &hs256, |e| {
            matches!(e, AuthError::AlgorithmNotAllowed { .. })
        }),
    ];
    for (what, token, expected) in cases {
        let offline = validator.validate(token).await.unwrap_err();
        assert!(expected(&offline), "{what}: {offline:?}");
        let by_agent = guarded(what, source.validate_with_agent(token, AUDIENCE)).await;
        assert!(
            matches!(by_agent, Err(Error::InvalidJwtSvid(_))),
            "{what}: {by_agent:?}"
        );
        assert_eq!(
            call(&validator, token).await,
            (StatusCode::UNAUTHORIZED, String::new()),
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_rotated_jwt_key_reaches_the_validator_and_the_previous_one_retires() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, source) = agent_and_source(&dir).await;
    let validator = source.validator(|v| v.audience(AUDIENCE)).unwrap();
    let before = guarded("fetch", source.fetch_svid([AUDIENCE]))
        .await
        .unwrap();
    let generation = source.status().generation;

    let kid = agent.rotate_jwt_key("example.org");
    guarded("bundle update", async {
        while source.status().generation == generation {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let after = guarded("fetch", source.fetch_svid([AUDIENCE]))
        .await
        .unwrap();
    let claims = validator.validate(after.token()).await.unwrap();
    assert_eq!(claims.key_id(), Some(kid.as_str()));
    // The previous key stays in the bundle for one rotation: its tokens still validate.
    assert!(validator.validate(before.token()).await.is_ok());

    // A second rotation drops it.
    let generation = source.status().generation;
    agent.rotate_jwt_key("example.org");
    guarded("bundle update", async {
        while source.status().generation == generation {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(matches!(
        validator.validate(before.token()).await,
        Err(AuthError::UnknownKey { .. })
    ));
}

#[tokio::test]
async fn no_agent_is_the_startup_error_and_empty_audiences_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = JwtSvidSource::builder()
        .endpoint(format!("unix:{}", dir.path().join("none.sock").display()))
        .first_svid_timeout(Duration::from_millis(300))
        .connect_jwt()
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::NoAgentSocket { .. }),
        "{missing:?}"
    );

    // An agent with no JWT identities: connected, no bundles → the timeout error.
    let agent = TestWorkloadApi::start(dir.path().join("api.sock")).unwrap();
    let silent = JwtSvidSource::builder()
        .endpoint(agent.endpoint())
        .first_svid_timeout(Duration::from_millis(300))
        .connect_jwt()
        .await
        .unwrap_err();
    assert!(
        matches!(silent, Error::FirstBundlesTimeout { .. }),
        "{silent:?}"
    );

    agent.issue_jwt_svids([WEB], Duration::from_secs(60));
    let source = connected(&agent).await;
    let empty: [&str; 0] = [];
    assert!(source.fetch_svid(empty).await.is_err());
    // A validator without an audience is refused (jwt-oidc's build).
    assert!(matches!(source.validator(|v| v), Err(Error::Jwt(_))));
}

#[tokio::test]
async fn an_agent_restart_keeps_the_last_bundles_and_takes_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, source) = agent_and_source(&dir).await;
    let validator = source.validator(|v| v.audience(AUDIENCE)).unwrap();
    let before = guarded("fetch", source.fetch_svid([AUDIENCE]))
        .await
        .unwrap();

    // The agent goes away: the failure is recorded, tokens keep validating on the last
    // bundles.
    drop(agent);
    guarded("the failure to be seen", async {
        while source.status().last_error.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(validator.validate(before.token()).await.is_ok());

    // A new agent on the same socket, with new keys: the source reconnects and takes them.
    let agent = TestWorkloadApi::start(dir.path().join("api.sock")).unwrap();
    agent.issue_jwt_svids([WEB], Duration::from_secs(300));
    let after = guarded("fetch", source.fetch_svid([AUDIENCE]))
        .await
        .unwrap();
    guarded("the new bundles", async {
        while validator.validate(after.token()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The old agent's keys are gone with its bundle.
    assert!(matches!(
        validator.validate(before.token()).await,
        Err(AuthError::UnknownKey { .. })
    ));
}
