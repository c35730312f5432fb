//! `ztkit spiffe bundle-endpoint` as a real process: fetched with svid-client's bundle
//! endpoint client (profile `https_web`), and serving a changed bundle file with the next
//! sequence number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use svid_client::bundle_endpoint::{BundleEndpoint, EndpointProfile, fetch_to_file};
use ztkit_test_support::TestCa;

/// The endpoint process, killed when the test ends (also on failure).
struct Endpoint(Child);

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_bundle_endpoint_serves_the_bundle_file_and_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let web_root = TestCa::new("web root");
    let web = web_root
        .leaf("localhost")
        .dns("localhost")
        .server_auth()
        .issue();
    let (cert, key) = web.write_to(dir.path(), "endpoint");
    let (ca1, ca2) = (TestCa::new("td CA 1"), TestCa::new("td CA 2"));
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &ca1.cert_pem).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ztkit"))
        .args([
            "spiffe",
            "bundle-endpoint",
            "--listen",
            "127.0.0.1:0",
            "--refresh-hint",
            "7",
        ])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--bundle")
        .arg(&bundle)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _endpoint = Endpoint(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_owned();
    let port = addr.rsplit(':').next().unwrap();

    let endpoint = BundleEndpoint::new(
        &format!("https://localhost:{port}"),
        EndpointProfile::HttpsWeb {
            roots: vec![web_root.cert_der.clone()],
        },
    )
    .unwrap();
    let out = dir.path().join("fetched.json");
    let first = fetch_to_file(&endpoint, &out).await.unwrap();
    assert_eq!(first.x509_authorities, std::slice::from_ref(&ca1.cert_der));
    assert_eq!(first.refresh_hint, Some(Duration::from_secs(7)));
    assert_eq!(first.sequence, Some(1));

    // The trust domain adds a CA: served with the next sequence number.
    std::fs::write(&bundle, format!("{}{}", ca1.cert_pem, ca2.cert_pem)).unwrap();
    let start = Instant::now();
    let next = loop {
        let bundle = fetch_to_file(&endpoint, &out).await.unwrap();
        if bundle.x509_authorities.len() == 2 {
            break bundle;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the change was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(next.x509_authorities[1], ca2.cert_der);
    assert_eq!(next.sequence, Some(2));
}
