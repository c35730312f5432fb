//! Interop: the test Workload API answers a second client written against the proto, in
//! Python with grpcio (stubs generated at test time by grpcio-tools): FetchX509SVID and
//! FetchJWTSVID (whose token the offline validator accepts), and a call without the
//! `workload.spiffe.io` header refused with `INVALID_ARGUMENT`. Needs python3 with grpcio and
//! grpcio-tools (tests/peers/requirements.txt; `cargo xtask test` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use svid_client::JwtSvidSource;
use svid_client::testing::{TestSvid, TestWorkloadApi};
use ztkit_test_support::TestCa;

const WEB: &str = "spiffe://example.org/web";
const AUDIENCE: &str = "spiffe://example.org/orders";

fn python(args: &[&str], pythonpath: &Path) -> String {
    let out = Command::new("python3")
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-tools: run by cargo xtask test"]
async fn python_grpcio_client_against_the_test_workload_api() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path();
    // Stubs generated from the proto now, with grpcio-tools.
    python(
        &[
            "-m",
            "grpc_tools.protoc",
            &format!("-I{}", peers.display()),
            &format!("--python_out={}", stubs.display()),
            &format!("--grpc_python_out={}", stubs.display()),
            "workload.proto",
        ],
        stubs,
    );

    let ca = TestCa::new("example.org CA");
    let cert = ca.leaf(WEB).spiffe_id(WEB).issue();
    let agent = TestWorkloadApi::start(stubs.join("agent.sock")).unwrap();
    agent.set_svids(vec![TestSvid::new(
        WEB,
        cert.chain_der.iter().map(|c| c.to_vec()).collect(),
        cert.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )]);
    agent.issue_jwt_svids([WEB], Duration::from_secs(300));
    let jwt = tokio::time::timeout(
        Duration::from_secs(20),
        JwtSvidSource::builder()
            .endpoint(agent.endpoint())
            .connect_jwt(),
    )
    .await
    .unwrap()
    .unwrap();

    let script = peers.join("workload_client.py");
    let socket = agent.socket().to_owned();
    let (script, socket, stubs_dir) = (
        script.display().to_string(),
        socket.display().to_string(),
        stubs.to_owned(),
    );
    let out =
        tokio::task::spawn_blocking(move || python(&[&script, &socket, AUDIENCE], &stubs_dir))
            .await
            .unwrap();
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0],
        ["X509", WEB, &cert.cert_der.len().to_string()],
        "{out}"
    );
    assert_eq!(lines[1][..2], ["JWT", WEB], "{out}");
    let validator = jwt.validator(|v| v.audience(AUDIENCE)).unwrap();
    let claims = validator.validate(lines[1][2]).await.unwrap();
    assert_eq!(claims.subject(), Some(WEB));
    assert_eq!(lines[2], ["NOHEADER", "INVALID_ARGUMENT"], "{out}");
}
