//! Shared helpers for the integration tests: a tiny TLS server on loopback that reports
//! what happened to each connection, and rustls clients.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtls_verify::{Error, PeerIdentity, ServerTls, ServerTlsBuilder, TlsMaterial};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, NamedGroup, ProtocolVersion, RootCertStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use ztkit_test_support::{TestCa, TestCert};

/// Generous guard for anything awaited in tests.
/// A CA with a `localhost` server certificate and a client certificate for
/// `spiffe://example.org/client`.
pub fn ca_with_server_and_client(ca_name: &str) -> (TestCa, TestCert, TestCert) {
    let ca = TestCa::new(ca_name);
    let server = ca.leaf("localhost").dns("localhost").server_auth().issue();
    let client = ca
        .leaf("client")
        .spiffe_id("spiffe://example.org/client")
        .client_auth()
        .issue();
    (ca, server, client)
}

/// A server builder serving `server`'s chain and key, trusting client certificates of `client_ca`.
pub fn server_builder(client_ca: &TestCa, server: &TestCert) -> ServerTlsBuilder {
    ServerTlsBuilder::from_pem(
        server.chain_pem.as_bytes(),
        server.key_pem.as_bytes(),
        client_ca.cert_pem.as_bytes(),
    )
}

/// The same material as [`server_builder`], to push through `MaterialHolder::update`.
pub fn tls_material(client_ca: &TestCa, server: &TestCert) -> TlsMaterial {
    TlsMaterial::from_pem(
        server.chain_pem.as_bytes(),
        server.key_pem.as_bytes(),
        client_ca.cert_pem.as_bytes(),
    )
}

pub const GUARD: Duration = Duration::from_secs(20);

/// What the server saw on one connection.
#[derive(Debug)]
pub struct ServerEvent {
    /// `Err(reason)` when the handshake failed.
    pub handshake: Result<(), String>,
    pub kind: Option<HandshakeKind>,
    pub version: Option<ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    pub kx: Option<NamedGroup>,
    /// The result of `ServerTls::peer_identity` (only after a successful handshake).
    pub identity: Option<Result<Option<Arc<PeerIdentity>>, Error>>,
}

impl ServerEvent {
    pub fn refused_reason(&self) -> String {
        match (&self.handshake, &self.identity) {
            (Err(r), _) => r.clone(),
            (Ok(()), Some(Err(e))) => e.to_string(),
            _ => String::new(),
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<ServerEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Accepts connections, each with the *current* config of `tls`. After a handshake it
    /// writes `ok <server serial> <peer spiffe id or cn or ->\n` and then echoes lines; on a
    /// `peer_identity` error it writes `err <reason>\n` and closes.
    pub async fn start(tls: ServerTls) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move { serve_one(sock, tls, tx).await });
            }
        });
        TestServer { addr, events, task }
    }

    pub async fn next_event(&mut self) -> ServerEvent {
        tokio::time::timeout(GUARD, self.events.recv())
            .await
            .expect("server event in time")
            .expect("server running")
    }
}

async fn serve_one(sock: TcpStream, tls: ServerTls, tx: mpsc::UnboundedSender<ServerEvent>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let accepted = tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(sock)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx.send(ServerEvent::failed(io_reason(&e)));
            return;
        }
        Err(_) => {
            let _ = tx.send(ServerEvent::failed("handshake timeout".into()));
            return;
        }
    };
    let (_, conn) = stream.get_ref();
    let identity = tls.peer_identity(conn);
    let server_serial = tls.status().serial;
    let line = match &identity {
        Ok(Some(id)) => format!(
            "ok {server_serial} {}\n",
            id.spiffe_id()
                .map(|s| s.to_string())
                .or_else(|| id.subject_cn().map(str::to_owned))
                .unwrap_or_else(|| "-".into())
        ),
        Ok(None) => format!("ok {server_serial} -\n"),
        Err(e) => format!("err {e}\n"),
    };
    let event = ServerEvent {
        handshake: Ok(()),
        kind: conn.handshake_kind(),
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        kx: conn.negotiated_key_exchange_group().map(|g| g.name()),
        identity: Some(identity.clone()),
    };
    let _ = tx.send(event);
    let mut stream = stream;
    if stream.write_all(line.as_bytes()).await.is_err() || identity.is_err() {
        let _ = stream.shutdown().await;
        return;
    }
    let _ = stream.flush().await;
    let mut reader = BufReader::new(stream);
    let mut buf = String::new();
    loop {
        buf.clear();
        match reader.read_line(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if reader.get_mut().write_all(buf.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl ServerEvent {
    fn failed(reason: String) -> Self {
        ServerEvent {
            handshake: Err(reason),
            kind: None,
            version: None,
            alpn: None,
            kx: None,
            identity: None,
        }
    }
}

/// The human reason inside an I/O error from tokio-rustls.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => mtls_verify::human_reason(r),
        None => e.to_string(),
    }
}

pub static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// Options for a test client.
#[derive(Clone)]
pub struct ClientOpts {
    pub versions: &'static [&'static rustls::SupportedProtocolVersion],
    pub kx: Option<Vec<NamedGroup>>,
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            versions: TLS13_ONLY,
            kx: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// A rustls client config trusting `server_ca`, presenting `client` if given.
pub fn client_config(
    server_ca: &TestCa,
    client: Option<(&[CertificateDer<'static>], PrivateKeyDer<'static>)>,
    opts: &ClientOpts,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.cert_der.clone()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(groups) = &opts.kx {
        provider.kx_groups = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
            .iter()
            .copied()
            .filter(|g| groups.contains(&g.name()))
            .collect();
    }
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(opts.versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        // No consistency check of our own here, so tests can send certificates that rustls
        // itself could not parse (e.g. 1 MiB ones).
        Some((chain, key)) => {
            let key = provider.key_provider.load_private_key(key).unwrap();
            let certified = rustls::sign::CertifiedKey::new(chain.to_vec(), key);
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.clone();
    Arc::new(config)
}

/// A client config presenting `cert` (its full chain), trusting `server_ca`.
pub fn client_with(server_ca: &TestCa, cert: &TestCert) -> Arc<ClientConfig> {
    client_config(
        server_ca,
        Some((&cert.chain_der, cert.private_key())),
        &ClientOpts::default(),
    )
}

/// What a client saw.
#[derive(Debug)]
pub struct ClientOutcome {
    /// The server's first line (`ok …` / `err …`), or the error that prevented reading it.
    pub line: Result<String, String>,
    /// Serial of the certificate the server presented.
    pub server_serial: Option<String>,
    pub kx: Option<NamedGroup>,
    pub version: Option<ProtocolVersion>,
}

impl ClientOutcome {
    pub fn accepted(&self) -> bool {
        matches!(&self.line, Ok(l) if l.starts_with("ok "))
    }
}

/// Connects, completes the handshake, reads the server's first line.
pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> ClientOutcome {
    connect_keep(addr, config).await.0
}

/// Like [`connect`], also returning the open stream when the server accepted.
pub async fn connect_keep(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (
    ClientOutcome,
    Option<BufReader<tokio_rustls::client::TlsStream<TcpStream>>>,
) {
    connect_named(addr, config, "localhost").await
}

/// Like [`connect_keep`], with the server name to verify.
pub async fn connect_named(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> (
    ClientOutcome,
    Option<BufReader<tokio_rustls::client::TlsStream<TcpStream>>>,
) {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let stream = match connector.connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => {
                return (
                    ClientOutcome {
                        line: Err(io_reason(&e)),
                        server_serial: None,
                        kx: None,
                        version: None,
                    },
                    None,
                );
            }
        };
        let (_, conn) = stream.get_ref();
        let server_serial = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| PeerIdentity::from_der(c).unwrap().serial_hex().to_owned());
        let kx = conn.negotiated_key_exchange_group().map(|g| g.name());
        let version = conn.protocol_version();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let line = match reader.read_line(&mut line).await {
            Ok(0) => Err("connection closed".to_owned()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(io_reason(&e)),
        };
        let keep = matches!(&line, Ok(l) if l.starts_with("ok ")).then_some(reader);
        (
            ClientOutcome {
                line,
                server_serial,
                kx,
                version,
            },
            keep,
        )
    };
    tokio::time::timeout(GUARD, fut)
        .await
        .expect("client finished in time")
}

/// Sends a line on an open connection and expects it echoed.
pub async fn echo(stream: &mut BufReader<tokio_rustls::client::TlsStream<TcpStream>>, msg: &str) {
    tokio::time::timeout(GUARD, async {
        stream
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        assert_eq!(line.trim_end(), msg);
    })
    .await
    .expect("echo in time");
}

/// Polls `cond` until it holds (every 10 ms, at most [`GUARD`]).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < GUARD, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
