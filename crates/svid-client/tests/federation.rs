//! Federation and fail-closed expiry through `SvidSource`, against the test Workload API
//! server, with real TLS handshakes (tokio-rustls) on loopback and the refusal reasons read
//! from the captured logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mtls_verify::rustls::pki_types::ServerName;
use mtls_verify::rustls::{self, ClientConfig};
use mtls_verify::{ClientTlsBuilder, IdentityAuthorizer, ServerTls, TrustDomainPolicy};
use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{Error, SvidSource, authorize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use ztkit_test_support::{TestCa, TestCert, capture_warnings};

const GUARD: Duration = Duration::from_secs(20);
const A: &str = "a.example";
const B: &str = "b.example";
const SERVER_ID: &str = "spiffe://a.example/server";

fn issue(ca: &TestCa, id: &str) -> TestCert {
    ca.leaf(id).spiffe_id(id).issue()
}

fn svid_of(ca: &TestCa, cert: &TestCert, id: &str) -> TestSvid {
    TestSvid::new(
        id,
        cert.chain_der.iter().map(|c| c.to_vec()).collect(),
        cert.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )
}

/// Runs `test` on a current-thread runtime with warnings captured: the source's task and the
/// test server run on this thread, so their log lines are in the capture.
fn with_logs(test: impl Future<Output = ()>) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    capture_warnings(|| rt.block_on(async { tokio::time::timeout(GUARD, test).await.unwrap() }))
}

async fn wait_until(check: impl Fn() -> bool) {
    while !check() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connect(agent: &TestWorkloadApi) -> Result<SvidSource, Error> {
    SvidSource::builder()
        .endpoint(agent.endpoint())
        .first_svid_timeout(GUARD)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
}

/// One full handshake of `client` against the current config of `server`: `Ok(())` when
/// both sides finished it, else the server's error.
async fn handshake(server: &ServerTls, client: Arc<ClientConfig>) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.config());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"k").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("workload").unwrap();
    if let Ok(mut tls) = TlsConnector::from(client).connect(name, tcp).await {
        let _ = tls.read_exact(&mut [0u8; 1]).await;
    }
    accept.await.unwrap()
}

/// A client presenting `cert`, trusting `server_ca` for the server (expected to be
/// `SERVER_ID`), full handshakes only.
fn client_presenting(cert: &TestCert, server_ca: &TestCa) -> Arc<ClientConfig> {
    let tls = ClientTlsBuilder::from_pem(
        cert.chain_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        server_ca.cert_pem.as_bytes(),
    )
    .server_authorizer(authorize::exact(SERVER_ID).unwrap())
    .allow_any_hostname()
    .build()
    .unwrap();
    let mut config = (*tls.config()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

#[test]
fn a_client_of_b_is_accepted_only_with_bs_bundle_and_an_authorizer_allowing_b_and_refused_once_the_bundle_is_removed_live()
 {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (
        TestCa::new("CA of a.example"),
        TestCa::new("CA of b.example"),
    );
    let server_cert = issue(&ca_a, SERVER_ID);
    let logs = with_logs(async {
        let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
        agent.set_federated_bundle(B, vec![ca_b.cert_der.to_vec()]);
        agent.set_svids(vec![svid_of(&ca_a, &server_cert, SERVER_ID)]);
        let source = connect(&agent).await.unwrap();
        let a_or_b = || {
            IdentityAuthorizer::any_of(vec![
                authorize::member_of(A).unwrap(),
                authorize::member_of(B).unwrap(),
            ])
        };
        let federated = source
            .server_tls(|tls| {
                tls.trust_domain_policy(TrustDomainPolicy::allow_list([A, B]).unwrap())
                    .authorizer(a_or_b())
            })
            .unwrap();
        let a_only = source
            .server_tls(|tls| {
                tls.trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
                    .authorizer(authorize::member_of(A).unwrap())
            })
            .unwrap();
        // The default policy of a source's holders: the local trust domain only.
        let local = source.server_tls(|tls| tls.authorizer(a_or_b())).unwrap();
        let client = client_presenting(&issue(&ca_b, "spiffe://b.example/client"), &ca_a);

        assert_eq!(handshake(&federated, client.clone()).await, Ok(()));
        let refused = handshake(&a_only, client.clone()).await.unwrap_err();
        assert!(
            refused.contains("not in trust domain a.example"),
            "{refused}"
        );
        let refused = handshake(&local, client.clone()).await.unwrap_err();
        assert!(
            refused.contains("excluded by the trust-domain policy"),
            "{refused}"
        );

        // The agent drops B's bundle: the next handshake from B is refused.
        let generation = source.status().rotation.generation;
        agent.set_federated_bundle(B, Vec::new());
        wait_until(|| source.status().rotation.generation > generation).await;
        let refused = handshake(&federated, client.clone()).await.unwrap_err();
        assert!(refused.contains("no bundle for it"), "{refused}");
        // B's bundle back: accepted again.
        agent.set_federated_bundle(B, vec![ca_b.cert_der.to_vec()]);
        let generation = source.status().rotation.generation;
        wait_until(|| source.status().rotation.generation > generation).await;
        assert_eq!(handshake(&federated, client.clone()).await, Ok(()));
    });
    assert!(
        logs.contains("client not authorized") && logs.contains("not in trust domain a.example"),
        "{logs}"
    );
    assert!(
        logs.contains("trust domain b.example is not trusted: excluded by the trust-domain policy (local trust domain only)"),
        "{logs}"
    );
    assert!(
        logs.contains("trust domain b.example is not trusted: no bundle for it in the bundle set"),
        "{logs}"
    );
}

#[test]
fn wrong_id_untrusted_ca_and_two_uri_sans_are_refused_with_the_reason_logged() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = TestCa::new("CA of a.example");
    let server_cert = issue(&ca_a, SERVER_ID);
    let presenting = |cert: &TestCert| client_presenting(cert, &ca_a);
    let wrong_id = issue(&ca_a, "spiffe://a.example/intruder");
    let untrusted = issue(&TestCa::new("stranger"), "spiffe://a.example/client");
    let two_uris = ca_a
        .leaf("two")
        .spiffe_id("spiffe://a.example/client")
        .uri_san("spiffe://a.example/other")
        .issue();
    let logs = with_logs(async {
        let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
        agent.set_svids(vec![svid_of(&ca_a, &server_cert, SERVER_ID)]);
        let source = connect(&agent).await.unwrap();
        let server = source
            .server_tls(|tls| {
                tls.authorizer(authorize::exact("spiffe://a.example/client").unwrap())
            })
            .unwrap();
        let right = issue(&ca_a, "spiffe://a.example/client");
        assert_eq!(handshake(&server, presenting(&right)).await, Ok(()));
        for (cert, reason) in [
            (&wrong_id, "is not in the allowed list"),
            (&untrusted, "UnknownIssuer"),
            (&two_uris, "not an X509-SVID: 2 URI SANs"),
        ] {
            let refused = handshake(&server, presenting(cert)).await.unwrap_err();
            assert!(refused.contains(reason), "{refused}");
        }
    });
    assert!(
        logs.contains("SPIFFE ID spiffe://a.example/intruder is not in the allowed list"),
        "{logs}"
    );
    assert!(
        logs.contains(&untrusted.serial_hex()) && logs.contains("unknown issuer"),
        "{logs}"
    );
    assert!(logs.contains("not an X509-SVID: 2 URI SANs"), "{logs}");
}

#[test]
fn an_svid_that_expires_without_renewal_refuses_new_handshakes_on_our_side() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = TestCa::new("CA of a.example");
    let short = ca_a
        .leaf("server")
        .spiffe_id(SERVER_ID)
        .valid_for(Duration::from_secs(3))
        .issue();
    // A strict peer: after the expiry it would refuse the certificate itself (an alert from
    // the client), but the server must fail first, resolving no certificate to present.
    let client = client_presenting(&issue(&ca_a, "spiffe://a.example/client"), &ca_a);
    let not_after = mtls_verify::PeerIdentity::from_der(&short.cert_der)
        .unwrap()
        .not_after();
    let logs = with_logs(async {
        let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
        agent.set_svids(vec![svid_of(&ca_a, &short, SERVER_ID)]);
        let source = connect(&agent).await.unwrap();
        let server = source.server_tls(|tls| tls).unwrap();
        assert_eq!(handshake(&server, client.clone()).await, Ok(()));
        // No renewal comes; the source reports the expiry when it happens.
        wait_until(|| {
            matches!(
                source.status().rotation.last_error,
                Some(ref e) if e.message.contains("expired at")
            ) && SystemTime::now() > not_after
        })
        .await;
        let refused = handshake(&server, client.clone()).await.unwrap_err();
        assert!(refused.contains("no server certificate"), "{refused}");
    });
    assert!(logs.contains("was not renewed"), "{logs}");
    assert!(
        logs.contains("our certificate expired and was not renewed: new handshakes are refused"),
        "{logs}"
    );
}
