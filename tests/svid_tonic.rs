//! tonic on SVIDs, both sides from the test Workload API: the server is `SvidSource` →
//! `ServerTls` → `TlsListener` (the client's `PeerIdentity` in every request), the client
//! is `SvidSource` → `ClientTls` → `zt_tower::tls_channel` (the server's SPIFFE ID checked).
//! The rotation-under-load test (issue 9 §3) runs 60 s and is ignored by default (`cargo
//! xtask test` runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{SvidSource, authorize};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};
use zt_tower::{RequestIdentityExt, TlsListener, tls_channel};
use ztkit_test_support::TestCa;
use ztkit_testproto::greeter_client::GreeterClient;
use ztkit_testproto::greeter_server::{Greeter, GreeterServer};
use ztkit_testproto::{HelloReply, HelloRequest};

const GUARD: Duration = Duration::from_secs(20);
const SERVER_ID: &str = "spiffe://example.org/server";
const CLIENT_ID: &str = "spiffe://example.org/client";

/// Answers with the caller's SPIFFE ID and certificate serial, and records the serial.
#[derive(Default)]
struct WhoAmI {
    seen: Arc<Mutex<HashSet<String>>>,
}

#[tonic::async_trait]
impl Greeter for WhoAmI {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let peer = req
            .peer_identity()
            .ok_or_else(|| Status::unauthenticated("no peer"))?;
        let id = peer
            .spiffe_id()
            .map(ToString::to_string)
            .unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .insert(peer.serial_hex().to_owned());
        Ok(Response::new(HelloReply {
            message: format!("{id} {}", peer.serial_hex()),
        }))
    }
}

fn svid(ca: &TestCa, id: &str, hint: &str) -> (TestSvid, String) {
    svid_for(ca, id, hint, Duration::from_secs(3600))
}

fn svid_for(ca: &TestCa, id: &str, hint: &str, lifetime: Duration) -> (TestSvid, String) {
    let cert = ca.leaf(id).spiffe_id(id).valid_for(lifetime).issue();
    let serial = mtls_verify::PeerIdentity::from_der(&cert.cert_der)
        .unwrap()
        .serial_hex()
        .to_owned();
    let svid = TestSvid::new(
        id,
        cert.chain_der.iter().map(|c| c.to_vec()).collect(),
        cert.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )
    .hint(hint);
    (svid, serial)
}

async fn hello(channel: tonic::transport::Channel) -> String {
    let reply = GreeterClient::new(channel)
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .unwrap();
    reply.into_inner().message
}

#[tokio::test]
async fn tonic_server_and_client_on_svids_authorize_each_other_by_spiffe_id() {
    tokio::time::timeout(GUARD, async {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("example.org CA");
        let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
        let (server_svid, _) = svid(&ca, SERVER_ID, "server");
        let (client_svid, first_serial) = svid(&ca, CLIENT_ID, "client");
        agent.set_svids(vec![server_svid.clone(), client_svid]);

        let connect = |hint: &str| {
            SvidSource::builder()
                .endpoint(agent.endpoint())
                .svid_hint(hint)
                .connect()
        };
        let server_source = connect("server").await.unwrap();
        let client_source = connect("client").await.unwrap();

        // Server: SVID-mTLS, only the client's SPIFFE ID.
        let server_tls = server_source
            .server_tls(|tls| tls.authorizer(authorize::exact(CLIENT_ID).unwrap()))
            .unwrap();
        let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), server_tls)
            .await
            .unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().port());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GreeterServer::new(WhoAmI::default()))
                .serve_with_incoming(listener.into_stream()),
        );

        // Client: the current SVID, the server's SPIFFE ID checked.
        let client_tls = client_source
            .client_tls(|tls| {
                tls.server_authorizer(authorize::exact(SERVER_ID).unwrap())
                    .allow_any_hostname()
            })
            .unwrap();
        let endpoint = Endpoint::from_shared(url).unwrap();
        let channel = tls_channel(endpoint.clone(), client_tls.clone())
            .await
            .unwrap();
        assert_eq!(hello(channel).await, format!("{CLIENT_ID} {first_serial}"));

        // A client that expects another server refuses this one at the handshake.
        let expects_other = client_source
            .client_tls(|tls| {
                tls.server_authorizer(authorize::exact("spiffe://example.org/other").unwrap())
                    .allow_any_hostname()
            })
            .unwrap();
        assert!(tls_channel(endpoint.clone(), expects_other).await.is_err());

        // A rotated client SVID is presented from the next connection on.
        let (rotated, next_serial) = svid(&ca, CLIENT_ID, "client");
        agent.set_svids(vec![server_svid, rotated]);
        while client_source.status().identity.serial_hex() != next_serial {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let channel = tls_channel(endpoint, client_tls).await.unwrap();
        assert_eq!(hello(channel).await, format!("{CLIENT_ID} {next_serial}"));
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s load test"]
async fn svids_living_2s_rotate_for_60s_under_load_with_zero_failed_rpcs() {
    const RUN: Duration = Duration::from_secs(60);
    const LIFETIME: Duration = Duration::from_secs(2);
    const ROTATE_EVERY: Duration = Duration::from_millis(500);
    const NEW_CONNECTION_EVERY: Duration = Duration::from_millis(200);

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org CA");
    let agent = TestWorkloadApi::start(dir.path().join("agent.sock")).unwrap();
    let issue_both = || {
        let (server, _) = svid_for(&ca, SERVER_ID, "server", LIFETIME);
        let (client, serial) = svid_for(&ca, CLIENT_ID, "client", LIFETIME);
        (vec![server, client], serial)
    };
    let (svids, first) = issue_both();
    agent.set_svids(svids);
    let connect = |hint: &str| {
        SvidSource::builder()
            .endpoint(agent.endpoint())
            .svid_hint(hint)
            .connect()
    };
    let server_source = connect("server").await.unwrap();
    let client_source = connect("client").await.unwrap();
    let server_tls = server_source
        .server_tls(|tls| tls.authorizer(authorize::exact(CLIENT_ID).unwrap()))
        .unwrap();
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), server_tls)
        .await
        .unwrap();
    let endpoint = Endpoint::from_shared(format!(
        "https://127.0.0.1:{}",
        listener.local_addr().port()
    ))
    .unwrap();
    let greeter = WhoAmI::default();
    let seen = greeter.seen.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming(listener.into_stream()),
    );
    let client_tls = client_source
        .client_tls(|tls| {
            tls.server_authorizer(authorize::exact(SERVER_ID).unwrap())
                .allow_any_hostname()
        })
        .unwrap();

    // Two callers, each opening a new connection every 200 ms (the previous one is dropped
    // after its last call), so new handshakes keep picking up the rotated SVIDs.
    let deadline = Instant::now() + RUN;
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (endpoint, tls) = (endpoint.clone(), client_tls.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let channel = match tls_channel(endpoint.clone(), tls.clone()).await {
                        Ok(channel) => channel,
                        Err(e) => {
                            failed.push(format!("connect: {e:?}"));
                            continue;
                        }
                    };
                    let mut client = GreeterClient::new(channel);
                    let until = Instant::now() + NEW_CONNECTION_EVERY;
                    while Instant::now() < until {
                        match client.say_hello(HelloRequest { name: "x".into() }).await {
                            Ok(_) => ok += 1,
                            Err(status) => failed.push(format!("rpc: {status:?}")),
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    let mut issued = vec![first];
    while Instant::now() < deadline {
        tokio::time::sleep(ROTATE_EVERY).await;
        let (svids, serial) = issue_both();
        agent.set_svids(svids);
        issued.push(serial);
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for caller in callers {
        let (n, errors) = caller.await.unwrap();
        ok += n;
        failed.extend(errors);
    }
    assert!(
        failed.is_empty(),
        "{} failed RPCs: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let seen = seen.lock().unwrap().clone();
    let rotated_seen = issued.iter().filter(|s| seen.contains(*s)).count();
    eprintln!(
        "{ok} RPCs, 0 failed; {} client SVIDs issued, {rotated_seen} seen by the server",
        issued.len()
    );
    assert!(ok > 1000, "only {ok} RPCs");
    // Most rotated client certificates reached a handshake, including late ones.
    assert!(
        rotated_seen * 2 >= issued.len(),
        "{rotated_seen} of {}",
        issued.len()
    );
    assert!(issued[issued.len() - 10..].iter().any(|s| seen.contains(s)));
}
