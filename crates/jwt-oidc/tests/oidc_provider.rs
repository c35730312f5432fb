//! Against a real OpenID provider: `oidc-provider` (npm) on loopback, started from
//! `tests/oidc-provider/server.mjs`. Tokens come from its token endpoint (client credentials
//! with a resource indicator, RFC 9068 `at+jwt` access tokens).
//!
//! Needs node and `npm ci` in `tests/oidc-provider`; `cargo xtask test` does both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use jwt_oidc::{AuthError, IssuerConfig, JwtAuthenticator, RequestContext};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const GUARD: Duration = Duration::from_secs(60);
const CLIENT: (&str, &str) = ("ztkit-test-client", "ztkit-test-secret");

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

struct Provider {
    child: Child,
    issuer: String,
    port: u16,
}

impl Provider {
    /// Starts the provider and waits for its "listening on" line (no sleeping).
    /// Starts the provider; one failed start (node silent or gone) is logged with its stderr
    /// and retried, a second one fails the test. The provider is test infrastructure.
    async fn start(keystore: &Path, port: u16, generate: &str) -> Provider {
        match Self::try_start(keystore, port, generate).await {
            Ok(provider) => provider,
            Err(first) => {
                eprintln!("oidc-provider start failed, retrying once: {first}");
                Self::try_start(keystore, port, generate)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }

    async fn try_start(keystore: &Path, port: u16, generate: &str) -> Result<Provider, String> {
        let dir = fixture_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "run `npm ci` in {} first (cargo xtask test does)",
            dir.display()
        );
        let stderr_path = keystore.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create the provider's stderr log");
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg(format!("--keystore={}", keystore.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--generate={generate}"))
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for this test");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(GUARD, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(issuer) = line.strip_prefix("listening on ") {
                    return Some(issuer.to_owned());
                }
            }
            None
        })
        .await;
        let Ok(Some(issuer)) = listening else {
            let status = child.try_wait();
            return Err(format!(
                "oidc-provider did not print `listening on` ({}; exit status {status:?}); its stderr:\n{}",
                if listening.is_err() {
                    "timed out"
                } else {
                    "its output ended"
                },
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ));
        };
        // Keep draining stdout so node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Ok(Provider {
            child,
            issuer,
            port,
        })
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
        self.child.wait().await.unwrap();
    }

    /// An access token from the token endpoint for `resource`.
    async fn token(&self, resource: &str) -> String {
        let form = format!("grant_type=client_credentials&resource={resource}&scope=api%3Aread");
        let basic = base64_simd::STANDARD.encode_to_string(format!("{}:{}", CLIENT.0, CLIENT.1));
        let (status, body) = http(
            self.port,
            http::Request::post("/token")
                .header("host", format!("127.0.0.1:{}", self.port))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", format!("Basic {basic}"))
                .body(Full::new(Bytes::from(form)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn set_jwks_mode(&self, mode: &str) {
        let (status, _) = http(
            self.port,
            http::Request::get(format!("/__test/jwks-mode?set={mode}"))
                .header("host", format!("127.0.0.1:{}", self.port))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
    }
}

async fn http(port: u16, request: http::Request<Full<Bytes>>) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

fn authenticator(issuer: &str, audience: &str) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .issuer(IssuerConfig::discover(issuer))
        .audience(audience)
        .require_type("at+jwt")
        .allow_insecure_http()
        .unknown_kid_cooldown(Duration::ZERO)
        .max_key_staleness(Duration::from_secs(300))
        .build()
        .unwrap()
}

#[tokio::test]
#[ignore = "needs node: run by cargo xtask test"]
async fn access_tokens_from_oidc_provider_validate() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(&dir.path().join("keys.json"), 0, "rs:RS256,es:ES256").await;
    for (resource, alg) in [
        ("urn:ztkit:api", jwt_oidc::Algorithm::Rs256),
        ("urn:ztkit:api-es", jwt_oidc::Algorithm::Es256),
    ] {
        let auth = authenticator(&provider.issuer, resource);
        let token = provider.token(resource).await;
        let claims = auth.validate(&token, &RequestContext::new()).await.unwrap();
        assert_eq!(claims.issuer(), provider.issuer);
        assert_eq!(claims.algorithm(), alg);
        assert!(claims.has_scope("api:read"));
        assert_eq!(claims.client_id(), Some(CLIENT.0));
        // The other resource's audience is refused.
        let other = if resource == "urn:ztkit:api" {
            "urn:ztkit:api-es"
        } else {
            "urn:ztkit:api"
        };
        let wrong = provider.token(other).await;
        assert_eq!(
            auth.validate(&wrong, &RequestContext::new())
                .await
                .unwrap_err(),
            AuthError::WrongAudience
        );
    }
    provider.stop().await;
}

#[tokio::test]
#[ignore = "needs node: run by cargo xtask test"]
async fn key_rotation_at_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = dir.path().join("keys.json");
    let provider = Provider::start(&keystore, 0, "old:RS256").await;
    let (issuer, port) = (provider.issuer.clone(), provider.port);
    let auth = authenticator(&issuer, "urn:ztkit:api");
    let old_token = provider.token("urn:ztkit:api").await;
    assert_eq!(
        auth.validate(&old_token, &RequestContext::new())
            .await
            .unwrap()
            .key_id(),
        Some("old")
    );
    let before = auth.key_status(&issuer).unwrap();
    provider.stop().await;

    // Same issuer (port), key set now new + old, new one signing.
    let provider = Provider::start(&keystore, port, "new:RS256").await;
    let new_token = provider.token("urn:ztkit:api").await;
    let claims = auth
        .validate(&new_token, &RequestContext::new())
        .await
        .unwrap();
    assert_eq!(claims.key_id(), Some("new"));
    let after = auth.key_status(&issuer).unwrap();
    assert_eq!(
        after.fetches,
        before.fetches + 1,
        "accepted after exactly one refresh"
    );
    assert!(
        auth.validate(&old_token, &RequestContext::new())
            .await
            .is_ok(),
        "old key still published"
    );
    provider.stop().await;
}

#[tokio::test]
#[ignore = "needs node: run by cargo xtask test"]
async fn provider_stopped_cached_keys_until_the_staleness_limit() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(&dir.path().join("keys.json"), 0, "rs:RS256").await;
    let issuer = provider.issuer.clone();
    let auth = authenticator(&issuer, "urn:ztkit:api");
    let token = provider.token("urn:ztkit:api").await;
    assert!(auth.validate(&token, &RequestContext::new()).await.is_ok());
    provider.stop().await;
    assert!(matches!(
        auth.refresh(&issuer).await,
        Err(AuthError::Fetch { .. })
    ));
    let now = SystemTime::now();
    let within = RequestContext::new().at(now + Duration::from_secs(200));
    assert!(auth.validate(&token, &within).await.is_ok());
    let beyond = RequestContext::new().at(now + Duration::from_secs(400));
    assert!(matches!(
        auth.validate(&token, &beyond).await,
        Err(AuthError::KeysUnavailable {
            reason: "stale",
            ..
        })
    ));
}

#[tokio::test]
#[ignore = "needs node: run by cargo xtask test"]
async fn garbage_or_huge_jwks_keeps_the_last_good_keys() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start(&dir.path().join("keys.json"), 0, "rs:RS256").await;
    let issuer = provider.issuer.clone();
    let auth = authenticator(&issuer, "urn:ztkit:api");
    let token = provider.token("urn:ztkit:api").await;
    assert!(auth.validate(&token, &RequestContext::new()).await.is_ok());
    for (mode, expected) in [("garbage", "invalid JWKS"), ("huge", "larger than")] {
        provider.set_jwks_mode(mode).await;
        let err = auth.refresh(&issuer).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{mode}: {err}");
        assert!(auth.key_status(&issuer).unwrap().last_error.is_some());
        assert!(
            auth.validate(&token, &RequestContext::new()).await.is_ok(),
            "{mode}"
        );
    }
    provider.set_jwks_mode("normal").await;
    auth.refresh(&issuer).await.unwrap();
    provider.stop().await;
}
