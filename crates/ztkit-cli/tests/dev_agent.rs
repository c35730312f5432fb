//! `ztkit dev-agent`: the test Workload API from the command line. `SvidSource` and
//! `JwtSvidSource` get the identities it was given, X.509-SVIDs from its own CA rotated at
//! half their lifetime, JWT-SVIDs that validate against its JWT bundles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use svid_client::{JwtSvidSource, SvidSource};

const GUARD: Duration = Duration::from_secs(20);

/// Kills the agent when the test ends, however it ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_serves_rotating_x509_svids_and_jwt_svids() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ztkit"))
        .args(["dev-agent", "--socket"])
        .arg(&socket)
        .args([
            "--trust-domain",
            "example.org",
            "--id",
            "/server",
            "--id",
            "spiffe://example.org/client",
            "--x509-ttl",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let agent = Agent(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("SPIFFE_ENDPOINT_SOCKET=")
        .unwrap()
        .to_owned();

    let source = tokio::time::timeout(
        GUARD,
        SvidSource::builder()
            .endpoint(endpoint.clone())
            .svid_hint("spiffe://example.org/client")
            .connect(),
    )
    .await
    .unwrap()
    .unwrap();
    let first = source.status().identity;
    assert_eq!(
        first.spiffe_id().map(ToString::to_string).as_deref(),
        Some("spiffe://example.org/client")
    );
    // Renewed at half of its 4 s lifetime.
    tokio::time::timeout(GUARD, async {
        while source.status().identity.serial_hex() == first.serial_hex() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a renewed X.509-SVID");

    let jwt = tokio::time::timeout(
        GUARD,
        JwtSvidSource::builder().endpoint(endpoint).connect_jwt(),
    )
    .await
    .unwrap()
    .unwrap();
    let svid = jwt.fetch_svid(["api"]).await.unwrap();
    assert_eq!(svid.spiffe_id(), "spiffe://example.org/server");
    let validator = jwt.validator(|v| v.audience("api")).unwrap();
    let claims = validator.validate(svid.token()).await.unwrap();
    assert_eq!(claims.subject(), Some("spiffe://example.org/server"));
    drop(agent);
}

#[test]
fn dev_agent_refuses_an_id_of_another_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ztkit"))
        .args(["dev-agent", "--socket"])
        .arg(dir.path().join("agent.sock"))
        .args([
            "--trust-domain",
            "example.org",
            "--id",
            "spiffe://other.org/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the trust domain"));
}
