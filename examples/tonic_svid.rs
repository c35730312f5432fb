//! A tonic server and client on SPIFFE X.509-SVIDs, authorizing each other by SPIFFE ID.
//!
//! ```sh
//! # With an agent (SPIRE, or `ztkit`'s test agent): both ends use this workload's SVID.
//! SPIFFE_ENDPOINT_SOCKET=unix:/run/spire/agent.sock cargo run --example tonic_svid
//! # Without one: a test Workload API is started in-process (not for production), serving
//! # spiffe://example.org/server and spiffe://example.org/client from a throw-away CA.
//! cargo run --example tonic_svid
//! ```
//!
//! The server (`SvidSource::server_tls` → `TlsListener`) accepts only the client's SPIFFE
//! ID and reads it from every request; the client (`SvidSource::client_tls` →
//! `zt_tower::tls_channel`) accepts only the server's. A client expecting another server ID
//! is refused at the handshake. Prints one line per call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{SvidSource, authorize};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};
use zt_tower::{RequestIdentityExt, TlsListener, tls_channel};
use ztkit_test_support::TestCa;
use ztkit_testproto::greeter_client::GreeterClient;
use ztkit_testproto::greeter_server::{Greeter, GreeterServer};
use ztkit_testproto::{HelloReply, HelloRequest};

const SERVER_ID: &str = "spiffe://example.org/server";
const CLIENT_ID: &str = "spiffe://example.org/client";

struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let who = req
            .peer_identity()
            .and_then(|p| p.spiffe_id().map(ToString::to_string))
            .unwrap_or_else(|| "unknown".into());
        Ok(Response::new(HelloReply {
            message: format!("Hello {} (you are {who})", req.get_ref().name),
        }))
    }
}

/// A test agent in `dir` serving the server's and the client's SVIDs (hints `server`,
/// `client`).
fn in_process_agent(dir: &std::path::Path) -> std::io::Result<TestWorkloadApi> {
    let ca = TestCa::new("example.org demo CA");
    let agent = TestWorkloadApi::start(dir.join("agent.sock"))?;
    let svid = |id: &str, hint: &str| {
        let cert = ca
            .leaf(id)
            .spiffe_id(id)
            .valid_for(Duration::from_secs(3600))
            .issue();
        TestSvid::new(
            id,
            cert.chain_der.iter().map(|c| c.to_vec()).collect(),
            cert.key_der.clone(),
            vec![ca.cert_der.to_vec()],
        )
        .hint(hint)
    };
    agent.set_svids(vec![svid(SERVER_ID, "server"), svid(CLIENT_ID, "client")]);
    Ok(agent)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (agent, address, hints) = match std::env::var(svid_client::ENDPOINT_ENV) {
        Ok(address) => (None, address, None),
        Err(_) => {
            let agent = in_process_agent(dir.path())?;
            let address = agent.endpoint();
            eprintln!(
                "no {}: started a test Workload API at {address}",
                svid_client::ENDPOINT_ENV
            );
            (Some(agent), address, Some(("server", "client")))
        }
    };
    let connect = |hint: Option<&str>| {
        let builder = SvidSource::builder().endpoint(address.clone());
        match hint {
            Some(hint) => builder.svid_hint(hint),
            None => builder,
        }
        .connect()
    };
    let server_source = connect(hints.map(|h| h.0)).await?;
    let client_source = connect(hints.map(|h| h.1)).await?;
    let id_of = |source: &SvidSource| {
        source
            .status()
            .identity
            .spiffe_id()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    let (server_id, client_id) = (id_of(&server_source), id_of(&client_source));

    // Server: SVID-mTLS; only the client's SPIFFE ID.
    let server_tls =
        server_source.server_tls(|tls| tls.authorizer(authorize::exact(&client_id).unwrap()))?;
    let listener = TlsListener::bind("127.0.0.1:0".parse()?, server_tls).await?;
    let endpoint = Endpoint::from_shared(format!("https://{}", listener.local_addr()))?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(MyGreeter))
            .serve_with_incoming(listener.into_stream()),
    );
    println!("server {server_id} listening on {}", endpoint.uri());

    // Client: the current SVID; only the server's SPIFFE ID.
    let client_tls = client_source.client_tls(|tls| {
        tls.server_authorizer(authorize::exact(&server_id).unwrap())
            .allow_any_hostname()
    })?;
    let mut client = GreeterClient::new(tls_channel(endpoint.clone(), client_tls).await?);
    let reply = client
        .say_hello(HelloRequest {
            name: client_id.clone(),
        })
        .await?;
    println!("OK {}", reply.into_inner().message);

    // A client that expects another server refuses this one.
    let wrong = client_source.client_tls(|tls| {
        tls.server_authorizer(authorize::exact("spiffe://example.org/someone-else").unwrap())
            .allow_any_hostname()
    })?;
    match tls_channel(endpoint, wrong).await {
        Ok(_) => println!("UNEXPECTED: a client expecting another server ID connected"),
        Err(e) => println!("refused as expected: {e}"),
    }
    drop(agent);
    Ok(())
}
