//! A TLS listener for axum and tonic that verifies the client and records who it is.
//!
//! [`TlsListener`] accepts TCP connections, runs each TLS handshake in its own task under
//! the configured handshake timeout (so garbage bytes and half-open handshakes cannot hold
//! the accept loop), takes the *current* rustls config from [`ServerTls`] for every new
//! handshake (hot reload), and hands out [`TlsStream`]s that carry a [`TlsConnectInfo`]
//! with the verified [`PeerIdentity`](mtls_verify::PeerIdentity).
//!
//! * axum: `axum::serve(listener, app.into_make_service_with_connect_info::<TlsConnectInfo>())`
//! * tonic: `Server::builder().add_service(svc).serve_with_incoming(listener.into_stream())`
//!
//! ```no_run
//! # async fn run(tls: mtls_verify::ServerTls) -> std::io::Result<()> {
//! use axum::{Router, routing::get};
//! use zt_tower::{TlsConnectInfo, TlsListener, VerifiedPeer};
//!
//! let app = Router::new().route(
//!     "/",
//!     get(|VerifiedPeer(peer): VerifiedPeer| async move { peer.subject().to_owned() }),
//! );
//! let listener = TlsListener::bind("127.0.0.1:8443".parse().unwrap(), tls).await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<TlsConnectInfo>()).await
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mtls_verify::ServerTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::TlsConnectInfo;

/// Upper bound on handshakes in progress at once, so a flood of slow clients is bounded
/// in memory (each waits for a permit before its handshake starts).
const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// Accepts TLS connections with client-certificate verification; see the module docs.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<TlsStream>,
    accept_task: JoinHandle<()>,
}

/// Options for [`TlsListener`].
#[derive(Debug, Clone)]
pub struct TlsListenerOptions {
    max_concurrent_handshakes: usize,
    tcp_nodelay: bool,
}

impl Default for TlsListenerOptions {
    fn default() -> Self {
        TlsListenerOptions {
            max_concurrent_handshakes: DEFAULT_MAX_HANDSHAKES,
            tcp_nodelay: true,
        }
    }
}

impl TlsListenerOptions {
    /// Handshakes allowed in progress at once (default 1024); later connections wait.
    pub fn max_concurrent_handshakes(mut self, n: usize) -> Self {
        self.max_concurrent_handshakes = n.max(1);
        self
    }

    /// Sets `TCP_NODELAY` on accepted sockets (default on).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }
}

impl TlsListener {
    /// Binds `addr` and starts accepting.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: SocketAddr, tls: ServerTls) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, tls))
    }

    /// Starts accepting on an already bound listener with default options.
    ///
    /// # Panics
    /// Must be called inside a tokio runtime.
    pub fn new(tcp: TcpListener, tls: ServerTls) -> Self {
        Self::with_options(tcp, tls, TlsListenerOptions::default())
    }

    /// Starts accepting on an already bound listener.
    ///
    /// # Panics
    /// Must be called inside a tokio runtime.
    pub fn with_options(tcp: TcpListener, tls: ServerTls, options: TlsListenerOptions) -> Self {
        let local_addr = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(options.max_concurrent_handshakes);
        let accept_task = tokio::spawn(accept_loop(tcp, tls, options, tx));
        TlsListener {
            local_addr,
            ready,
            accept_task,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection whose handshake succeeded; `None` once the listener is shut.
    pub async fn accept(&mut self) -> Option<TlsStream> {
        self.ready.recv().await
    }

    /// The accepted connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> TlsIncoming {
        TlsIncoming { listener: self }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: ServerTls,
    options: TlsListenerOptions,
    ready: mpsc::Sender<TlsStream>,
) {
    let permits = Arc::new(Semaphore::new(options.max_concurrent_handshakes));
    let mut accept_error_backoff = Duration::from_millis(5);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (socket, remote_addr) = match tcp.accept().await {
            Ok(accepted) => {
                accept_error_backoff = Duration::from_millis(5);
                accepted
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(accept_error_backoff).await;
                accept_error_backoff = (accept_error_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        if options.tcp_nodelay {
            let _ = socket.set_nodelay(true);
        }
        let tls = tls.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let stream = handshake(socket, remote_addr, &tls).await;
            drop(permit);
            if let Some(stream) = stream {
                let _ = ready.send(stream).await;
            }
        });
    }
}

async fn handshake(
    socket: TcpStream,
    remote_addr: SocketAddr,
    tls: &ServerTls,
) -> Option<TlsStream> {
    let local_addr = socket.local_addr().ok();
    let acceptor = TlsAcceptor::from(tls.config());
    let accept = acceptor.accept(socket).into_fallible();
    let stream = match tokio::time::timeout(tls.handshake_timeout(), accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err((err, socket))) => {
            tracing::info!(%remote_addr, error = %err, "TLS handshake refused");
            tokio::spawn(linger_close(socket));
            return None;
        }
        Err(_) => {
            tracing::info!(%remote_addr, timeout = ?tls.handshake_timeout(), "TLS handshake timed out");
            return None;
        }
    };
    let conn = stream.get_ref().1;
    let identity = match tls.peer_identity(conn) {
        Ok(identity) => identity,
        Err(err) => {
            tracing::warn!(%remote_addr, error = %err, "client identity refused after handshake");
            return None;
        }
    };
    let info = TlsConnectInfo {
        remote_addr,
        local_addr,
        identity,
        #[cfg(feature = "policy")]
        identity_input: Arc::default(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_name: conn.server_name().map(str::to_owned),
        resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
    };
    Some(TlsStream {
        inner: stream,
        info,
    })
}

/// Closes a refused connection so the client can read our alert.
///
/// In TLS 1.3 the client sends its certificate and its first request together; closing
/// the socket while that request is unread makes the kernel send a reset, and the client
/// may then report "connection reset" instead of the alert that says why. So: shut our
/// side (the alert is already written), read and discard what the client still sends,
/// for a short, bounded time, then close.
async fn linger_close(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LINGER: Duration = Duration::from_millis(500);
    const MAX_DRAIN: usize = 64 * 1024;
    let _ = socket.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// One accepted, verified TLS connection.
#[derive(Debug)]
pub struct TlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsStream {
    /// What the handshake established.
    pub fn connect_info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The underlying tokio-rustls stream.
    pub fn get_ref(&self) -> &tokio_rustls::server::TlsStream<TcpStream> {
        &self.inner
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// [`TlsListener`] as a `Stream` of connections (for tonic's `serve_with_incoming`).
#[derive(Debug)]
pub struct TlsIncoming {
    listener: TlsListener,
}

impl futures_util::Stream for TlsIncoming {
    type Item = Result<TlsStream, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.ready.poll_recv(cx).map(|next| next.map(Ok))
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for TlsStream {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = TlsConnectInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(stream) => {
                let info = stream.info.clone();
                (stream, info)
            }
            // The accept task only ends when the runtime shuts down; park instead of spinning.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(TlsConnectInfo::new(self.local_addr, None))
    }
}

#[cfg(feature = "axum")]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsConnectInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
