//! `SvidSource` through its public API, against the test Workload API server on a Unix
//! socket, with real TLS handshakes (tokio-rustls) on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use mtls_verify::rustls::pki_types::ServerName;
use mtls_verify::{ClientTls, ClientTlsBuilder, ServerTls};
use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{Error, SvidSource, authorize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use ztkit_test_support::{TestCa, TestCert};

/// Guard for anything awaited: a hang fails the test instead of blocking CI.
const GUARD: Duration = Duration::from_secs(20);

const SERVER_ID: &str = "spiffe://example.org/server";
const CLIENT_ID: &str = "spiffe://example.org/client";

fn issue(ca: &TestCa, id: &str) -> TestCert {
    ca.leaf(id).spiffe_id(id).issue()
}

fn svid(ca: &TestCa, cert: &TestCert, id: &str) -> TestSvid {
    TestSvid::new(
        id,
        cert.chain_der.iter().map(|c| c.to_vec()).collect(),
        cert.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )
}

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {GUARD:?}"))
}

/// Waits (bounded) until `check` holds, yielding to the runtime between looks.
async fn wait_until(what: &str, check: impl Fn() -> bool) {
    guarded(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// What one handshake gave: the server's leaf as the client saw it, the client's leaf as
/// the server saw it, or the server's refusal.
#[derive(Debug)]
struct Handshake {
    server_saw: Result<Vec<u8>, String>,
    client_saw_server: Option<Vec<u8>>,
}

/// One TLS connection on loopback: the server with the current config of `server`, the
/// client with the current config of `client`; both sides finish (one byte exchanged).
async fn handshake(server: &ServerTls, client: &ClientTls) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.config());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                tls.write_all(b"k").await.unwrap();
                tls.flush().await.unwrap();
                Ok(leaf)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    // Full handshakes only: a resumed session would show the certificate of the session's
    // first handshake, not the one the server serves now.
    let mut config = (*client.config()).clone();
    config.resumption = mtls_verify::rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("workload").unwrap();
    let client_saw_server = match connector.connect(name, tcp).await {
        Ok(mut tls) => {
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            // TLS 1.3: a refused client certificate shows up at the first read.
            let mut byte = [0u8; 1];
            match tls.read_exact(&mut byte).await {
                Ok(_) => Some(leaf),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    let server_saw = guarded("the server side", accept).await.unwrap();
    Handshake {
        server_saw,
        client_saw_server,
    }
}

fn spiffe_client(ca: &TestCa, cert: &TestCert) -> ClientTls {
    ClientTlsBuilder::from_pem(
        cert.chain_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        ca.cert_pem.as_bytes(),
    )
    .server_authorizer(authorize::exact(SERVER_ID).unwrap())
    .allow_any_hostname()
    .build()
    .unwrap()
}

async fn connect(agent: &TestWorkloadApi, timeout: Duration) -> Result<SvidSource, Error> {
    connect_to(agent.endpoint(), timeout).await
}

async fn connect_to(address: String, timeout: Duration) -> Result<SvidSource, Error> {
    guarded(
        "connect",
        SvidSource::builder()
            .endpoint(address)
            .first_svid_timeout(timeout)
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fed_by_the_workload_api_accepts_its_trust_domain_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let server_cert = issue(&ca, SERVER_ID);
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_svids(vec![svid(&ca, &server_cert, SERVER_ID)]);

    let source = connect(&agent, GUARD).await.unwrap();
    let status = source.status();
    assert_eq!(status.identity.spiffe_id().unwrap().as_str(), SERVER_ID);
    assert_eq!(status.rotation.generation, 1);
    let server = source
        .server_tls(|tls| tls.authorizer(authorize::member_of("example.org").unwrap()))
        .unwrap();

    // A client of the same trust domain: accepted, and it sees the SVID as the server's
    // certificate.
    let client_cert = issue(&ca, CLIENT_ID);
    let out = handshake(&server, &spiffe_client(&ca, &client_cert)).await;
    assert_eq!(out.server_saw, Ok(client_cert.cert_der.to_vec()), "{out:?}");
    assert_eq!(out.client_saw_server, Some(server_cert.cert_der.to_vec()));

    // Another trust domain (its own CA, which the server's bundle does not hold): refused.
    let other_ca = TestCa::new("other.org");
    let other_cert = issue(&other_ca, "spiffe://other.org/client");
    let other = ClientTlsBuilder::from_pem(
        other_cert.chain_pem.as_bytes(),
        other_cert.key_pem.as_bytes(),
        ca.cert_pem.as_bytes(),
    )
    .server_authorizer(authorize::exact(SERVER_ID).unwrap())
    .allow_any_hostname()
    .build()
    .unwrap();
    let out = handshake(&server, &other).await;
    assert!(out.server_saw.is_err(), "{out:?}");
    assert_eq!(out.client_saw_server, None);

    // The same CA but an ID outside the trust domain the authorizer allows: refused.
    let foreign_id = issue(&ca, "spiffe://other.org/client");
    let out = handshake(&server, &spiffe_client(&ca, &foreign_id)).await;
    assert!(out.server_saw.is_err(), "{out:?}");
}

/// A server workload and a client workload, each with its own agent and source.
struct Workloads {
    ca: TestCa,
    server_agent: TestWorkloadApi,
    client_agent: TestWorkloadApi,
    server_source: Option<SvidSource>,
    client_source: SvidSource,
    server: ServerTls,
    client: ClientTls,
}

impl Workloads {
    /// Both agents serve fresh SVIDs; once both sources report `generation`, a handshake
    /// uses the new certificates on both sides. Returns the server's new certificate.
    async fn rotate(&self, generation: u64) -> TestCert {
        let (server_cert, client_cert) = (issue(&self.ca, SERVER_ID), issue(&self.ca, CLIENT_ID));
        self.server_agent
            .set_svids(vec![svid(&self.ca, &server_cert, SERVER_ID)]);
        self.client_agent
            .set_svids(vec![svid(&self.ca, &client_cert, CLIENT_ID)]);
        let server_source = self.server_source.as_ref().unwrap();
        wait_until("both rotations", || {
            server_source.status().rotation.generation == generation
                && self.client_source.status().rotation.generation == generation
        })
        .await;
        assert_eq!(self.server.status().generation, generation);
        assert_eq!(self.client.status().generation, generation);
        let out = handshake(&self.server, &self.client).await;
        assert_eq!(out.server_saw, Ok(client_cert.cert_der.to_vec()), "{out:?}");
        assert_eq!(out.client_saw_server, Some(server_cert.cert_der.to_vec()));
        server_cert
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_on_svids_and_a_rotation_serves_the_next_handshake_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let (server_v1, client_v1) = (issue(&ca, SERVER_ID), issue(&ca, CLIENT_ID));
    let server_agent = TestWorkloadApi::start(dir.path().join("server.sock")).unwrap();
    let client_agent = TestWorkloadApi::start(dir.path().join("client.sock")).unwrap();
    server_agent.set_svids(vec![svid(&ca, &server_v1, SERVER_ID)]);
    client_agent.set_svids(vec![svid(&ca, &client_v1, CLIENT_ID)]);

    let server_source = connect(&server_agent, GUARD).await.unwrap();
    let client_source = connect(&client_agent, GUARD).await.unwrap();
    let server = server_source
        .server_tls(|tls| tls.authorizer(authorize::exact(CLIENT_ID).unwrap()))
        .unwrap();
    let client = client_source
        .client_tls(|tls| {
            tls.server_authorizer(authorize::exact(SERVER_ID).unwrap())
                .allow_any_hostname()
        })
        .unwrap();
    let out = handshake(&server, &client).await;
    assert_eq!(out.server_saw, Ok(client_v1.cert_der.to_vec()), "{out:?}");
    assert_eq!(out.client_saw_server, Some(server_v1.cert_der.to_vec()));
    let mut workloads = Workloads {
        ca,
        server_agent,
        client_agent,
        server_source: Some(server_source),
        client_source,
        server,
        client,
    };

    // The agents rotate both SVIDs; the next handshake uses the new ones.
    workloads.rotate(2).await;

    // The agents cut their streams (a restart): the sources reconnect, get the same SVIDs
    // again (no new generation), then take the next ones.
    workloads.server_agent.close_streams();
    workloads.client_agent.close_streams();
    wait_until("the reconnections", || {
        workloads.server_agent.open_streams() == 1 && workloads.client_agent.open_streams() == 1
    })
    .await;
    assert_eq!(workloads.client_source.status().rotation.generation, 2);
    let server_v3 = workloads.rotate(3).await;

    // Dropping a source stops following: its holder keeps serving the last SVID.
    drop(workloads.server_source.take());
    let server_v4 = issue(&workloads.ca, SERVER_ID);
    workloads
        .server_agent
        .set_svids(vec![svid(&workloads.ca, &server_v4, SERVER_ID)]);
    wait_until("the stream to close", || {
        workloads.server_agent.open_streams() == 0
    })
    .await;
    let out = handshake(&workloads.server, &workloads.client).await;
    assert_eq!(out.client_saw_server, Some(server_v3.cert_der.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_updates_leave_the_last_svid_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let (server_v1, server_v2) = (issue(&ca, SERVER_ID), issue(&ca, SERVER_ID));
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_svids(vec![svid(&ca, &server_v1, SERVER_ID)]);
    let source = connect(&agent, GUARD).await.unwrap();
    let server = source.server_tls(|tls| tls).unwrap();
    let v1_serial = mtls_verify::PeerIdentity::from_der(&server_v1.cert_der)
        .unwrap()
        .serial_hex()
        .to_owned();

    // An SVID whose key is another certificate's: mtls-verify refuses it.
    agent.set_svids(vec![TestSvid::new(
        SERVER_ID,
        server_v2.chain_der.iter().map(|c| c.to_vec()).collect(),
        server_v1.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )]);
    wait_until("the first refusal", || {
        source.status().rotation.failures == 1
    })
    .await;
    let status = source.status();
    assert!(
        matches!(
            status.rotation.last_error.as_ref(),
            Some(e) if e.message.contains("key")
        ),
        "{status:?}"
    );
    // An SVID with no bundle for its own trust domain: refused before any holder sees it.
    agent.set_svids(vec![TestSvid::new(
        SERVER_ID,
        server_v2.chain_der.iter().map(|c| c.to_vec()).collect(),
        server_v2.key_der.clone(),
        Vec::new(),
    )]);
    wait_until("the second refusal", || {
        source.status().rotation.failures == 2
    })
    .await;

    let status = source.status();
    assert_eq!(status.rotation.generation, 1);
    assert_eq!(status.identity.serial_hex(), v1_serial);
    assert_eq!(server.status().generation, 1);
    let client = spiffe_client(&ca, &issue(&ca, CLIENT_ID));
    let out = handshake(&server, &client).await;
    assert_eq!(out.client_saw_server, Some(server_v1.cert_der.to_vec()));
}

/// Each way of getting no first SVID gets its own error, after the first-SVID timeout.
#[tokio::test]
async fn startup_failures_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let pending = TestWorkloadApi::start(dir.path().join("pending.sock")).unwrap();
    let denied = TestWorkloadApi::start(dir.path().join("denied.sock")).unwrap();
    denied.deny_identity();
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap()); // the file stays
    let missing = dir.path().join("absent.sock");
    let timeout = Duration::from_millis(300);

    type Expect = fn(&Error) -> bool;
    let cases: [(String, Expect, &str); 4] = [
        (
            pending.endpoint(),
            |e| matches!(e, Error::FirstSvidTimeout { waited, .. } if *waited == Duration::from_millis(300)),
            "no X.509-SVID",
        ),
        (
            format!("unix:{}", missing.display()),
            |e| matches!(e, Error::NoAgentSocket { path } if path.ends_with("absent.sock")),
            "absent.sock",
        ),
        (
            format!("unix:{}", dead.display()),
            |e| matches!(e, Error::AgentUnreachable { .. }),
            "cannot reach",
        ),
        (
            denied.endpoint(),
            |e| matches!(e, Error::NoIdentity { .. }),
            "no identity issued",
        ),
    ];
    for (address, expected, text) in cases {
        let err = connect_to(address.clone(), timeout).await.unwrap_err();
        assert!(expected(&err), "{address}: {err:?}");
        assert!(err.to_string().contains(text), "{address}: {err}");
    }
}

#[tokio::test]
async fn bad_addresses_fail_at_once() {
    let err = SvidSource::builder()
        .endpoint("http://127.0.0.1:1")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
}

/// A bare gRPC channel to the test server (no `workload.spiffe.io` header added).
async fn raw_channel(agent: &TestWorkloadApi) -> tonic::transport::Channel {
    let path = agent.socket().to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// A raw call to `/SpiffeWorkloadAPI/{method}`, with or without the security header.
async fn raw_call<Req, Resp>(
    channel: &tonic::transport::Channel,
    method: &'static str,
    message: Req,
    with_header: bool,
) -> Result<tonic::codec::Streaming<Resp>, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    if with_header {
        request.metadata_mut().insert(
            svid_client::testing::SECURITY_HEADER,
            "true".parse().unwrap(),
        );
    }
    let path: http::uri::PathAndQuery = format!("/SpiffeWorkloadAPI/{method}").parse().unwrap();
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    guarded(method, grpc.server_streaming(request, path, codec))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_test_server_requires_the_security_header_and_serves_the_proto_routes() {
    use svid_client::testing::proto::{X509SvidRequest, X509SvidResponse};

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let cert = issue(&ca, SERVER_ID);
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_svids(vec![svid(&ca, &cert, SERVER_ID)]);
    let channel = raw_channel(&agent).await;

    let refused =
        raw_call::<_, X509SvidResponse>(&channel, "FetchX509SVID", X509SvidRequest {}, false)
            .await
            .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "security header missing from request");

    let mut stream =
        raw_call::<_, X509SvidResponse>(&channel, "FetchX509SVID", X509SvidRequest {}, true)
            .await
            .unwrap();
    let first = guarded("the first message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, SERVER_ID);
    assert_eq!(first.svids[0].x509_svid, cert.cert_der.to_vec());
    assert_eq!(first.svids[0].bundle, ca.cert_der.to_vec());
}

#[tokio::test]
async fn the_test_server_hands_out_jwt_svids_and_streams_jwt_bundles() {
    use svid_client::testing::proto::{
        JwtBundlesRequest, JwtBundlesResponse, JwtSvidRequest, JwtSvidResponse,
    };

    let dir = tempfile::tempdir().unwrap();
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    let channel = raw_channel(&agent).await;
    agent.set_jwt_svids(vec![
        (SERVER_ID.into(), "token-a".into(), "a".into()),
        (CLIENT_ID.into(), "token-b".into(), "b".into()),
    ]);
    let fetch = |audience: Vec<String>, spiffe_id: &str| {
        let request = JwtSvidRequest {
            audience,
            spiffe_id: spiffe_id.to_owned(),
        };
        let channel = channel.clone();
        async move {
            let mut stream =
                raw_call::<_, JwtSvidResponse>(&channel, "FetchJWTSVID", request, true).await?;
            Ok::<_, tonic::Status>(stream.message().await?.unwrap())
        }
    };
    let err = fetch(Vec::new(), "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let all = fetch(vec!["api".into()], "").await.unwrap();
    assert_eq!(all.svids.len(), 2);
    assert_eq!(all.svids[0].svid, "token-a");
    let one = fetch(vec!["api".into()], CLIENT_ID).await.unwrap();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(
        (one.svids[0].svid.as_str(), one.svids[0].hint.as_str()),
        ("token-b", "b")
    );
    let none = fetch(vec!["api".into()], "spiffe://example.org/nobody")
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::PermissionDenied);

    // JWT bundles: nothing until set, then each change is pushed on the open stream.
    let mut bundles =
        raw_call::<_, JwtBundlesResponse>(&channel, "FetchJWTBundles", JwtBundlesRequest {}, true)
            .await
            .unwrap();
    for jwks in [&br#"{"keys":[]}"#[..], &br#"{"keys":[1]}"#[..]] {
        agent.set_jwt_bundles(vec![("example.org".into(), jwks.to_vec())]);
        let pushed = guarded("the bundles", bundles.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pushed.bundles["spiffe://example.org"], jwks.to_vec());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_svid_with_the_configured_hint_is_used_and_fed_into_a_holder_built_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let (default_cert, internal_cert) = (issue(&ca, CLIENT_ID), issue(&ca, SERVER_ID));
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_svids(vec![
        svid(&ca, &default_cert, CLIENT_ID).hint("external"),
        svid(&ca, &internal_cert, SERVER_ID).hint("internal"),
    ]);
    let source = guarded(
        "connect",
        SvidSource::builder()
            .endpoint(agent.endpoint())
            .svid_hint("internal")
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(
        source.status().identity.spiffe_id().unwrap().as_str(),
        SERVER_ID
    );

    // A server built from other material (say, files at startup), then fed by the source.
    let other_ca = TestCa::new("bootstrap");
    let bootstrap = other_ca.leaf("bootstrap").dns("localhost").issue();
    let server = mtls_verify::ServerTlsBuilder::from_pem(
        bootstrap.chain_pem.as_bytes(),
        bootstrap.key_pem.as_bytes(),
        other_ca.cert_pem.as_bytes(),
    )
    .build()
    .unwrap();
    source.feed(server.clone()).unwrap();
    let client = spiffe_client(&ca, &issue(&ca, CLIENT_ID));
    let out = handshake(&server, &client).await;
    assert_eq!(
        out.client_saw_server,
        Some(internal_cert.cert_der.to_vec()),
        "{out:?}"
    );

    // Updates without an SVID of that hint are refused.
    agent.set_svids(vec![svid(&ca, &default_cert, CLIENT_ID).hint("external")]);
    wait_until("the refusal", || source.status().rotation.failures == 1).await;
    assert_eq!(server.status().generation, 2);
}

#[tokio::test]
async fn the_spiffe_crates_own_client_reads_svids_and_bundles_from_the_test_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let federated_ca = TestCa::new("partner.org");
    let cert = issue(&ca, SERVER_ID);
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_federated_bundle("partner.org", vec![federated_ca.cert_der.to_vec()]);
    agent.set_svids(vec![svid(&ca, &cert, SERVER_ID).hint("main")]);

    let client = guarded(
        "connect",
        spiffe::WorkloadApiClient::connect_to(agent.endpoint()),
    )
    .await
    .unwrap();
    let context = guarded("FetchX509SVID", client.fetch_x509_context())
        .await
        .unwrap();
    let default = context.default_svid().unwrap();
    assert_eq!(default.spiffe_id().to_string(), SERVER_ID);
    assert_eq!(default.hint(), Some("main"));
    assert_eq!(default.leaf().as_bytes(), cert.cert_der.as_ref());
    let partner = spiffe::TrustDomain::new("partner.org").unwrap();
    assert_eq!(
        context.bundle_set().get(&partner).unwrap().authorities()[0].as_bytes(),
        federated_ca.cert_der.as_ref()
    );

    let bundles = guarded("FetchX509Bundles", client.fetch_x509_bundles())
        .await
        .unwrap();
    let local = spiffe::TrustDomain::new("example.org").unwrap();
    assert_eq!(
        bundles.get(&local).unwrap().authorities()[0].as_bytes(),
        ca.cert_der.as_ref()
    );
    assert!(bundles.get(&partner).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_is_survived_on_the_last_svid_and_the_next_one_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let ca = TestCa::new("example.org");
    let (server_v1, server_v2) = (issue(&ca, SERVER_ID), issue(&ca, SERVER_ID));
    let agent = TestWorkloadApi::start(&socket).unwrap();
    agent.set_svids(vec![svid(&ca, &server_v1, SERVER_ID)]);
    let source = connect(&agent, GUARD).await.unwrap();
    let server = source.server_tls(|tls| tls).unwrap();
    let client = spiffe_client(&ca, &issue(&ca, CLIENT_ID));

    // The agent goes away (its socket too): handshakes go on with the last SVID, and the
    // failure shows in the source's and the holder's status.
    drop(agent);
    wait_until("the failure to be seen", || {
        source.status().rotation.last_error.is_some()
    })
    .await;
    wait_until("the holder to hear of it", || {
        mtls_verify::MaterialHolder::status(&server)
            .last_error
            .is_some()
    })
    .await;
    let out = handshake(&server, &client).await;
    assert_eq!(
        out.client_saw_server,
        Some(server_v1.cert_der.to_vec()),
        "{out:?}"
    );

    // A new agent on the same socket: the source reconnects and takes its SVID.
    let agent = TestWorkloadApi::start(&socket).unwrap();
    agent.set_svids(vec![svid(&ca, &server_v2, SERVER_ID)]);
    wait_until("the next SVID", || source.status().rotation.generation == 2).await;
    assert!(source.status().rotation.last_error.is_none());
    let out = handshake(&server, &client).await;
    assert_eq!(
        out.client_saw_server,
        Some(server_v2.cert_der.to_vec()),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_not_renewed_in_time_is_reported_before_and_at_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let short = ca
        .leaf(SERVER_ID)
        .spiffe_id(SERVER_ID)
        .valid_for(Duration::from_secs(2))
        .issue();
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    agent.set_svids(vec![svid(&ca, &short, SERVER_ID)]);
    let source = guarded(
        "connect",
        SvidSource::builder()
            .endpoint(agent.endpoint())
            .expiry_warning(Duration::from_secs(1))
            .connect(),
    )
    .await
    .unwrap();
    assert!(source.status().rotation.last_error.is_none());

    let message = || {
        source
            .status()
            .rotation
            .last_error
            .map(|e| e.message)
            .unwrap_or_default()
    };
    wait_until("the warning", || message().contains("expires at")).await;
    assert!(message().contains(SERVER_ID), "{}", message());
    wait_until("the expiry", || message().contains("expired at")).await;
    assert_eq!(source.status().rotation.failures, 2);

    // The next SVID clears it.
    agent.set_svids(vec![svid(&ca, &issue(&ca, SERVER_ID), SERVER_ID)]);
    wait_until("the renewal", || source.status().rotation.generation == 2).await;
    assert!(source.status().rotation.last_error.is_none());
}
