//! An axum server behind mutual TLS.
//!
//! ```sh
//! cargo run --example axum_mtls -- --cert server.crt --key server.key --client-ca ca.pem \
//!     --listen 127.0.0.1:8443 --allow-trust-domain example.org
//! ```
//!
//! Every request's client identity was verified in the handshake; `RequireIdentityLayer`
//! then allows only the configured SPIFFE IDs / trust domain (403 otherwise). Certificate,
//! key, CA and CRL files are reloaded when they change. Prints `listening on ADDR` once ready.
//!
//! `--allow-unauthenticated` turns it into a plain TLS server for comparison: clients may
//! come without a certificate and `RequireIdentityLayer` is left out (the load run's
//! baseline, `scripts/load-mtls.sh`).
//!
//! With `--jwt-issuer URL --jwt-audience AUD` every request also needs a valid bearer
//! token (`JwtAuthLayer`, checked after the identity; 401 with `WWW-Authenticate: Bearer`
//! otherwise), and with `--jwt-require-scope S` that scope (403). `/` then names the
//! token's subject too.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`) as text, coloured only on a terminal, or
//! with `--log-format json` as one JSON object per line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use axum::{Json, Router, routing::get};
use clap::Parser;
use zt_tower::{
    JwtAuthLayer, RequireIdentityLayer, TlsConnectInfo, TlsListener, TokenClaims, VerifiedPeer,
};

#[derive(Debug, Parser)]
#[command(about = "axum behind mTLS with ztkit")]
struct Args {
    #[command(flatten)]
    tls: common::TlsArgs,
    #[command(flatten)]
    jwt: common::JwtArgs,
    #[command(flatten)]
    log: common::logging::LogArgs,
}

async fn hello(peer: Option<VerifiedPeer>, token: Option<TokenClaims>) -> String {
    // Without --allow-unauthenticated every connection has a verified peer (the acceptor
    // refuses the rest, and RequireIdentityLayer checks it again).
    let who = match peer {
        Some(VerifiedPeer(peer)) => peer
            .spiffe_id()
            .map(|id| id.to_string())
            .or_else(|| peer.subject_cn().map(str::to_owned))
            .unwrap_or_else(|| peer.subject().to_owned()),
        None => "anonymous".to_owned(),
    };
    match token
        .as_ref()
        .and_then(|TokenClaims(claims)| claims.subject())
    {
        Some(subject) => format!("hello, {who} (token subject {subject})\n"),
        None => format!("hello, {who}\n"),
    }
}

async fn identity(VerifiedPeer(peer): VerifiedPeer) -> Json<mtls_verify::PeerIdentity> {
    Json((*peer).clone())
}

#[tokio::main]
async fn main() {
    common::exit_on_error(run().await);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    common::logging::init(&args.log, "info");
    // Validate everything before listening: a bad file is a typed error naming it.
    let tls = args.tls.server_tls()?;
    let authorizer = args.tls.request_authorizer()?;
    let (jwt, _refresher) = match args.jwt.authenticator().await? {
        Some((auth, refresher)) => (Some(auth), Some(refresher)),
        None => (None, None),
    };
    let _reloader = tls.spawn_reloader();

    let mut app = Router::new()
        .route("/", get(hello))
        .route("/identity", get(identity));
    // Layers added later run first: identity, then the token, then its scopes.
    if let Some(scopes) = args.jwt.scope_layer() {
        app = app.layer(scopes);
    }
    if let Some(auth) = jwt {
        app = app.layer(JwtAuthLayer::new(auth));
    }
    if !args.tls.allow_unauthenticated {
        app = app.layer(RequireIdentityLayer::new(authorizer));
    }

    let listener = TlsListener::bind(args.tls.listen, tls).await?;
    println!("listening on {}", listener.local_addr());
    std::io::stdout().flush()?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<TlsConnectInfo>(),
    )
    .await?;
    Ok(())
}
