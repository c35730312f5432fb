//! A tonic [`Channel`] over mutual TLS from an mtls-verify [`ClientTls`] holder (feature
//! `tonic`): the client side of [`TlsListener`](crate::TlsListener).
//!
//! Every connection the channel opens (the first, and each reconnection) takes the holder's
//! *current* config, so a rotated client certificate — a new file, or a new SVID pushed by
//! `svid-client` — is presented from the next connection on, and the server is checked with
//! the holder's verifier and authorizer (for SPIFFE: the server's SPIFFE ID). A server that
//! fails the check never sees a request: the handshake is refused.
//!
//! ```no_run
//! use mtls_verify::{ClientTlsBuilder, IdentityAuthorizer};
//! use tonic::transport::Endpoint;
//!
//! # async fn run(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ClientTlsBuilder::from_pem(chain, key, ca)
//!     .server_authorizer(IdentityAuthorizer::spiffe_ids(["spiffe://example.org/api"])?)
//!     .allow_any_hostname()
//!     .build()?;
//! let channel = zt_tower::tls_channel(Endpoint::from_static("https://127.0.0.1:50051"), tls).await?;
//! // GreeterClient::new(channel) …
//! # let _ = channel; Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use mtls_verify::ClientTls;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tower_service::Service;

/// Connects `endpoint` (an `https://host:port` URI) over mutual TLS with `tls`; see the
/// [module docs](self).
///
/// # Errors
/// The first connection failed: TCP, or the TLS handshake (the server's certificate or
/// identity refused by `tls`, or ours by the server).
pub async fn tls_channel(
    endpoint: Endpoint,
    tls: ClientTls,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(TlsChannelConnector { tls })
        .await
}

/// Like [`tls_channel`], connecting on the first request instead of now.
pub fn tls_channel_lazy(endpoint: Endpoint, tls: ClientTls) -> Channel {
    endpoint.connect_with_connector_lazy(TlsChannelConnector { tls })
}

/// The connector behind [`tls_channel`]: TCP to the URI's host and port, then TLS with the
/// holder's current config and the host as server name.
#[derive(Clone, Debug)]
pub struct TlsChannelConnector {
    tls: ClientTls,
}

impl TlsChannelConnector {
    /// A connector with `tls`.
    pub fn new(tls: ClientTls) -> Self {
        TlsChannelConnector { tls }
    }
}

type ConnectFuture = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl Service<Uri> for TlsChannelConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The current material, taken at each dial.
        let config = self.tls.config();
        Box::pin(async move {
            let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
            let host = uri
                .host()
                .ok_or_else(|| invalid("the endpoint URI has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|_| invalid("the endpoint host is not a DNS name or IP address"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
