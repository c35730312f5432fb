//! Two deployments federating over the network, without SPIRE on either side: each serves
//! its trust domain's bundle from a bundle endpoint (`https_web` for A, `https_spiffe` for
//! B), fetches the other's into a file, and its TLS holders take the file through the file
//! watcher. Real TLS handshakes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mtls_verify::rustls::pki_types::ServerName;
use mtls_verify::rustls::{self, ClientConfig, ServerConfig};
use mtls_verify::{ClientTls, ClientTlsBuilder, ServerTls, ServerTlsBuilder, TrustDomainPolicy};
use svid_client::bundle_endpoint::{
    BundleEndpoint, BundleEndpointServer, EndpointProfile, fetch_to_file, spawn_bundle_refresher,
    spiffe_bundle_json,
};
use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{SvidSource, authorize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ztkit_test_support::{TestCa, TestCert};

const GUARD: Duration = Duration::from_secs(20);
const A_SERVER: &str = "spiffe://a.example/api";

fn svid(ca: &TestCa, id: &str) -> TestCert {
    ca.leaf(id).spiffe_id(id).issue()
}

/// A SPIFFE bundle document holding `ca`.
fn bundle_of(ca: &TestCa, refresh_hint_secs: u64, sequence: u64) -> Vec<u8> {
    spiffe_bundle_json(
        std::slice::from_ref(&ca.cert_der),
        Duration::from_secs(refresh_hint_secs),
        sequence,
    )
    .unwrap()
}

/// B's bundle endpoint on localhost (`https_spiffe`, bootstrapped with B's CA).
fn b_endpoint_at(port: u16, path: &str, ca_b: &TestCa) -> BundleEndpoint {
    BundleEndpoint::new(
        &format!("https://localhost:{port}{path}"),
        EndpointProfile::HttpsSpiffe {
            endpoint_id: "spiffe://b.example/bundle-endpoint".parse().unwrap(),
            bootstrap: vec![ca_b.cert_der.clone()],
        },
    )
    .unwrap()
}

/// An `https_web` endpoint on localhost whose certificate chains to `web_root`.
fn web_endpoint_at(port: u16, web_root: &TestCa) -> BundleEndpoint {
    BundleEndpoint::new(
        &format!("https://localhost:{port}"),
        EndpointProfile::HttpsWeb {
            roots: vec![web_root.cert_der.clone()],
        },
    )
    .unwrap()
}

/// A web PKI server certificate for `host`.
fn web_cert(web_root: &TestCa, host: &str) -> TestCert {
    web_root.leaf(host).dns(host).server_auth().issue()
}

/// An endpoint's TLS config: `cert`, no client authentication.
fn endpoint_tls(cert: &TestCert) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain_der.clone(), cert.private_key())
        .unwrap();
    Arc::new(config)
}

async fn serve(cert: &TestCert, bundle: Vec<u8>) -> (BundleEndpointServer, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = endpoint_tls(cert);
    (
        BundleEndpointServer::serve(listener, move || tls.clone(), bundle),
        port,
    )
}

/// One full handshake; `Ok(())` when the server accepted the client.
async fn handshake(server: &ServerTls, client: &ClientTls) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.config());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"k").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())
    });
    let mut config: ClientConfig = (*client.config()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("a-workload").unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        let _ = tls.read_exact(&mut [0u8; 1]).await;
    }
    accept.await.unwrap()
}

fn client_of_b(cert: &TestCert, ca_b: &TestCa, a_bundle: &Path) -> ClientTls {
    ClientTlsBuilder::from_pem(
        cert.chain_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        ca_b.cert_pem.as_bytes(),
    )
    .federated_bundle_file("a.example", a_bundle)
    .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
    .server_authorizer(authorize::exact(A_SERVER).unwrap())
    .allow_any_hostname()
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trust_domains_federate_through_their_bundle_endpoints_and_follow_a_ca_rotation() {
    tokio::time::timeout(GUARD, federate()).await.unwrap();
}

async fn federate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (
        TestCa::new("CA of a.example"),
        TestCa::new("CA of b.example"),
    );
    // A's endpoint: https_web, a web PKI certificate for localhost.
    let web_root = TestCa::new("web root");
    let web_cert = web_cert(&web_root, "localhost");
    let a_json = bundle_of(&ca_a, 1, 1);
    let (_a_endpoint, a_port) = serve(&web_cert, a_json).await;
    // B's endpoint: https_spiffe, an SVID of B.
    let b_endpoint_svid = svid(&ca_b, "spiffe://b.example/bundle-endpoint");
    let b_json = bundle_of(&ca_b, 1, 1);
    let (b_endpoint, b_port) = serve(&b_endpoint_svid, b_json).await;

    // A fetches B's bundle (https_spiffe, bootstrapped with B's CA)…
    let b_at_a = dir.path().join("b-at-a.json");
    let from_b = b_endpoint_at(b_port, "/bundle", &ca_b);
    let first = fetch_to_file(&from_b, &b_at_a).await.unwrap();
    assert_eq!(first.x509_authorities, std::slice::from_ref(&ca_b.cert_der));
    assert_eq!(first.refresh_hint, Some(Duration::from_secs(1)));
    let _refresh_b = spawn_bundle_refresher(from_b, &b_at_a, first);
    // …and B fetches A's (https_web).
    let a_at_b = dir.path().join("a-at-b.json");
    let from_a = web_endpoint_at(a_port, &web_root);
    fetch_to_file(&from_a, &a_at_b).await.unwrap();

    // A's workload accepts B's clients through the fetched bundle, B's client verifies A's
    // server through the one it fetched.
    let a_svid = svid(&ca_a, A_SERVER);
    let a_server = ServerTlsBuilder::from_pem(
        a_svid.chain_pem.as_bytes(),
        a_svid.key_pem.as_bytes(),
        ca_a.cert_pem.as_bytes(),
    )
    .federated_bundle_file("b.example", &b_at_a)
    .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
    .authorizer(authorize::member_of("b.example").unwrap())
    .reload_interval(Duration::from_millis(50))
    .build()
    .unwrap();
    let _watch = a_server.spawn_reloader();
    let b_client = client_of_b(&svid(&ca_b, "spiffe://b.example/web"), &ca_b, &a_at_b);
    assert_eq!(handshake(&a_server, &b_client).await, Ok(()));

    // B adds a CA; a client issued by it is refused until A's refresher brings it in.
    let ca_b2 = TestCa::new("second CA of b.example");
    let b2_client = client_of_b(&svid(&ca_b2, "spiffe://b.example/new"), &ca_b, &a_at_b);
    assert!(handshake(&a_server, &b2_client).await.is_err());
    let generation = a_server.status().generation;
    b_endpoint.set_bundle(
        spiffe_bundle_json(
            &[ca_b.cert_der.clone(), ca_b2.cert_der.clone()],
            Duration::from_secs(1),
            2,
        )
        .unwrap(),
    );
    while a_server.status().generation == generation {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handshake(&a_server, &b2_client).await, Ok(()));

    // B's endpoint goes away: fetches fail, the last good bundle stays in service.
    drop(b_endpoint);
    let err = fetch_to_file(
        &b_endpoint_at(b_port, "/bundle", &ca_b),
        dir.path().join("unused.json"),
    )
    .await
    .unwrap_err();
    // Refused at connect, or reset while the aborted endpoint task lets go of its socket.
    assert!(
        matches!(err, svid_client::Error::Federation(ref m) if m.contains(&format!(":{b_port}/bundle"))),
        "{err}"
    );
    assert_eq!(handshake(&a_server, &b2_client).await, Ok(()));
}

#[tokio::test]
async fn an_endpoint_with_the_wrong_identity_or_an_oversized_bundle_is_refused_and_nothing_is_written()
 {
    let dir = tempfile::tempdir().unwrap();
    let ca_b = TestCa::new("CA of b.example");
    let impostor = svid(&ca_b, "spiffe://b.example/not-the-endpoint");
    let json = bundle_of(&ca_b, 60, 1);
    let (_endpoint, port) = serve(&impostor, json).await;
    let out = dir.path().join("b.json");
    let endpoint = |port: u16| b_endpoint_at(port, "", &ca_b);
    let err = fetch_to_file(&endpoint(port), &out).await.unwrap_err();
    assert!(err.to_string().contains("not in the allowed list"), "{err}");
    assert!(!out.exists());

    let genuine = svid(&ca_b, "spiffe://b.example/bundle-endpoint");
    let huge = vec![b' '; svid_client::bundle_endpoint::MAX_BUNDLE_SIZE + 1];
    let (_big, port) = serve(&genuine, huge).await;
    let err = fetch_to_file(&endpoint(port), &out).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    assert!(!out.exists());

    // The web profile checks the host name.
    let web_root = TestCa::new("web root");
    let other_host = web_cert(&web_root, "other.example");
    let json = bundle_of(&ca_b, 60, 1);
    let (_web, port) = serve(&other_host, json).await;
    let web = web_endpoint_at(port, &web_root);
    let err = fetch_to_file(&web, &out).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_source_federates_through_a_bundle_endpoint_and_follows_its_rotation() {
    tokio::time::timeout(GUARD, source_federates())
        .await
        .unwrap();
}

async fn source_federates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (
        TestCa::new("CA of a.example"),
        TestCa::new("CA of b.example"),
    );
    let a_svid = svid(&ca_a, A_SERVER);
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_svids(vec![TestSvid::new(
        A_SERVER,
        a_svid.chain_der.iter().map(|c| c.to_vec()).collect(),
        a_svid.key_der.clone(),
        vec![ca_a.cert_der.to_vec()],
    )]);
    let source = SvidSource::builder()
        .endpoint(agent.endpoint())
        .connect()
        .await
        .unwrap();
    let a_server = source
        .server_tls(|tls| {
            tls.trust_domain_policy(
                TrustDomainPolicy::allow_list(["a.example", "b.example"]).unwrap(),
            )
            .authorizer(authorize::member_of("b.example").unwrap())
        })
        .unwrap();
    // B's clients verify A's server with A's CA given to them.
    let a_pem = dir.path().join("a.pem");
    std::fs::write(&a_pem, &ca_a.cert_pem).unwrap();
    let b_client = client_of_b(&svid(&ca_b, "spiffe://b.example/web"), &ca_b, &a_pem);
    assert!(handshake(&a_server, &b_client).await.is_err());

    let b_endpoint_svid = svid(&ca_b, "spiffe://b.example/bundle-endpoint");
    let b_json = bundle_of(&ca_b, 1, 1);
    let (b_endpoint, b_port) = serve(&b_endpoint_svid, b_json).await;
    let endpoint = b_endpoint_at(b_port, "", &ca_b);
    let _federation = source.federate_with("b.example", endpoint).await.unwrap();
    assert_eq!(handshake(&a_server, &b_client).await, Ok(()));

    // B rotates to a new CA only: the old one's clients are refused after the refresh.
    let ca_b2 = TestCa::new("second CA of b.example");
    let b2_client = client_of_b(&svid(&ca_b2, "spiffe://b.example/new"), &ca_b, &a_pem);
    let generation = a_server.status().generation;
    b_endpoint.set_bundle(bundle_of(&ca_b2, 1, 2));
    while a_server.status().generation == generation {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handshake(&a_server, &b2_client).await, Ok(()));
    assert!(handshake(&a_server, &b_client).await.is_err());
}
