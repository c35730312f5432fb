//! A tonic gRPC server (helloworld.Greeter) behind mutual TLS.
//!
//! ```sh
//! cargo run --example tonic_mtls -- --cert server.crt --key server.key --client-ca ca.pem \
//!     --listen 127.0.0.1:50051 --allow-spiffe-id spiffe://example.org/ns/default/sa/client
//! ```
//!
//! Unauthorized identities get `PERMISSION_DENIED` from `RequireIdentityLayer`; the handler
//! reads the verified identity with `RequestIdentityExt`. Prints `listening on ADDR`.
//!
//! With `--jwt-issuer URL --jwt-audience AUD` every call also needs a valid bearer token in
//! the `authorization` metadata (`JwtAuthLayer`, checked after the identity;
//! `UNAUTHENTICATED` otherwise), and with `--jwt-require-scope S` that scope
//! (`PERMISSION_DENIED`). The reply then names the token's subject too.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`) as text, coloured only on a terminal, or
//! with `--log-format json` as one JSON object per line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use clap::Parser;
use tonic::{Request, Response, Status};
use tower::util::option_layer;
use zt_tower::{
    JwtAuthLayer, RequestClaimsExt, RequestIdentityExt, RequireIdentityLayer, TlsListener,
};
use ztkit_testproto::greeter_server::{Greeter, GreeterServer};
use ztkit_testproto::{HelloReply, HelloRequest};

#[derive(Debug, Parser)]
#[command(about = "tonic behind mTLS with ztkit")]
struct Args {
    #[command(flatten)]
    tls: common::TlsArgs,
    #[command(flatten)]
    jwt: common::JwtArgs,
    #[command(flatten)]
    log: common::logging::LogArgs,
}

#[derive(Debug, Default)]
struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let who = req
            .peer_identity()
            .and_then(|p| p.spiffe_id().map(|id| id.to_string()))
            .unwrap_or_else(|| "unknown".into());
        let message = match req.claims().and_then(|claims| claims.subject()) {
            Some(subject) => format!(
                "Hello {} (you are {who}, token subject {subject})",
                req.get_ref().name
            ),
            None => format!("Hello {} (you are {who})", req.get_ref().name),
        };
        Ok(Response::new(HelloReply { message }))
    }
}

#[tokio::main]
async fn main() {
    common::exit_on_error(run().await);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    common::logging::init(&args.log, "info");
    let tls = args.tls.server_tls()?;
    let authorizer = args.tls.request_authorizer()?;
    let (jwt, _refresher) = match args.jwt.authenticator().await? {
        Some((auth, refresher)) => (Some(auth), Some(refresher)),
        None => (None, None),
    };
    let _reloader = tls.spawn_reloader();

    let listener = TlsListener::bind(args.tls.listen, tls).await?;
    println!("listening on {}", listener.local_addr());
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        // Identity first, then the token, then its scopes.
        .layer(RequireIdentityLayer::new(authorizer))
        .layer(option_layer(jwt.map(JwtAuthLayer::new)))
        .layer(option_layer(args.jwt.scope_layer()))
        .add_service(GreeterServer::new(MyGreeter))
        .serve_with_incoming(listener.into_stream())
        .await?;
    Ok(())
}
