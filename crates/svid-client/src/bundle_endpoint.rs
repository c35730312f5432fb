//! Federation over the network, per the SPIFFE Federation specification: serve this trust
//! domain's bundle from a bundle endpoint, and fetch a foreign trust domain's bundle from
//! its endpoint, refreshed by its `spiffe_refresh_hint`.
//!
//! Fetched bundles are written (atomically, only when they changed) to a file that TLS
//! holders read with `federated_bundle_file(trust_domain, path)`: the file watcher of
//! `zt-rotate` then rotates them like every other file, so two deployments without SPIRE
//! federate with no path of their own into the verifier.
//!
//! - **Profiles.** `https_web`: the endpoint's certificate is checked against web PKI roots
//!   you give and the endpoint's host name. `https_spiffe`: the endpoint presents an SVID of
//!   the foreign trust domain with the SPIFFE ID you expect, verified against the foreign
//!   bundle itself (the one you bootstrapped with, then the last fetched one).
//! - **Limits.** One fetch may take at most [`FETCH_TIMEOUT`] and return at most
//!   [`MAX_BUNDLE_SIZE`] bytes; refresh hints are clamped to `[1 s, 1 h]` (5 min without one).
//! - **Failures.** A failed fetch or a bad document is logged (`warn`) and retried with
//!   capped backoff; the last good bundle (the file) stays in service. An empty bundle is
//!   not written (it would withdraw the trust domain on a publisher's mistake).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use mtls_verify::pem::SpiffeBundle;
use mtls_verify::rustls::pki_types::{CertificateDer, ServerName};
use mtls_verify::rustls::{self, ClientConfig, ServerConfig};
use mtls_verify::{IdentityAuthorizer, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zt_rotate::TaskHandle;

use crate::Error;

/// The largest bundle document accepted from an endpoint.
pub const MAX_BUNDLE_SIZE: usize = 1024 * 1024;
/// How long one fetch (connect, TLS, request, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The refresh interval when the bundle has no `spiffe_refresh_hint`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The largest request head the endpoint reads.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

// === Serving ===

/// Serializes X.509 authorities as a SPIFFE bundle (JSON): one JWK per CA with `use:
/// "x509-svid"`, its public key parameters (EC P-256/P-384 or RSA) and the certificate in
/// `x5c`, plus `spiffe_refresh_hint` and `spiffe_sequence`.
///
/// # Errors
/// [`Error::Federation`] for a certificate that does not parse or has a key of another kind.
pub fn spiffe_bundle_json(
    authorities: &[CertificateDer<'_>],
    refresh_hint: Duration,
    sequence: u64,
) -> Result<Vec<u8>, Error> {
    let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut keys = Vec::with_capacity(authorities.len());
    for (i, der) in authorities.iter().enumerate() {
        let fail = |why: &str| Error::Federation(format!("authority #{}: {why}", i + 1));
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| fail("not an X.509 certificate"))?;
        let spki = cert.public_key();
        let params = match spki.parsed().map_err(|_| fail("unreadable public key"))? {
            x509_parser::public_key::PublicKey::EC(point) => {
                let data = point.data();
                let curve_oid = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|oid| oid.to_id_string());
                let (crv, len) = match curve_oid.as_deref() {
                    Some("1.2.840.10045.3.1.7") => ("P-256", 32),
                    Some("1.3.132.0.34") => ("P-384", 48),
                    _ => return Err(fail("EC key on a curve other than P-256 or P-384")),
                };
                let (x, y) = match data.split_first() {
                    Some((4, xy)) if xy.len() == 2 * len => xy.split_at(len),
                    _ => return Err(fail("EC point is not uncompressed")),
                };
                format!(
                    r#""kty":"EC","crv":"{crv}","x":"{}","y":"{}""#,
                    b64url(x),
                    b64url(y)
                )
            }
            x509_parser::public_key::PublicKey::RSA(rsa) => {
                let trim = |b: &'_ [u8]| -> Vec<u8> {
                    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                    b.get(start..).unwrap_or_default().to_vec()
                };
                format!(
                    r#""kty":"RSA","n":"{}","e":"{}""#,
                    b64url(&trim(rsa.modulus)),
                    b64url(&trim(rsa.exponent))
                )
            }
            _ => return Err(fail("key neither EC nor RSA")),
        };
        keys.push(format!(
            r#"{{"use":"x509-svid",{params},"x5c":["{}"]}}"#,
            base64::engine::general_purpose::STANDARD.encode(der)
        ));
    }
    Ok(format!(
        r#"{{"keys":[{}],"spiffe_refresh_hint":{},"spiffe_sequence":{sequence}}}"#,
        keys.join(","),
        refresh_hint.as_secs().max(1)
    )
    .into_bytes())
}

/// A SPIFFE bundle endpoint: serves this trust domain's bundle (JSON) over HTTPS to any
/// `GET`, with the TLS configuration `tls` returns for each connection (a web PKI
/// certificate for `https_web`, this trust domain's SVID for `https_spiffe`; no client
/// certificate is requested by the endpoint's own config). Stops when dropped.
///
/// ```no_run
/// use std::sync::Arc;
/// use svid_client::bundle_endpoint::BundleEndpointServer;
///
/// # async fn run(tls: Arc<mtls_verify::rustls::ServerConfig>, bundle: Vec<u8>) -> Result<(), svid_client::Error> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await.map_err(|e| svid_client::Error::Federation(e.to_string()))?;
/// let endpoint = BundleEndpointServer::serve(listener, move || tls.clone(), bundle);
/// // endpoint.set_bundle(new_json) after a CA rotation
/// # let _ = endpoint; Ok(()) }
/// ```
#[must_use = "dropping the endpoint stops serving"]
pub struct BundleEndpointServer {
    addr: Option<SocketAddr>,
    bundle: Arc<Mutex<Arc<[u8]>>>,
    _task: TaskHandle,
}

impl std::fmt::Debug for BundleEndpointServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleEndpointServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl BundleEndpointServer {
    /// Serves `bundle` (a SPIFFE bundle document) on `listener`, on the current tokio
    /// runtime.
    pub fn serve(
        listener: TcpListener,
        tls: impl Fn() -> Arc<ServerConfig> + Send + Sync + 'static,
        bundle: Vec<u8>,
    ) -> Self {
        let addr = listener.local_addr().ok();
        let bundle: Arc<Mutex<Arc<[u8]>>> = Arc::new(Mutex::new(Arc::from(bundle)));
        let serving = bundle.clone();
        let tls = Arc::new(tls);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls());
                let body = serving
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(FETCH_TIMEOUT, answer(acceptor, tcp, body)).await;
                });
            }
        });
        BundleEndpointServer {
            addr,
            bundle,
            _task: TaskHandle::from_tokio(task),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Serves this document from the next request on (after a CA rotation).
    pub fn set_bundle(&self, bundle: Vec<u8>) {
        *self.bundle.lock().unwrap_or_else(PoisonError::into_inner) = Arc::from(bundle);
    }
}

/// One connection: TLS, a request head, one response, close.
async fn answer(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    body: Arc<[u8]>,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let response = if head.starts_with(b"GET ") {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    } else {
        b"HTTP/1.1 405 Method Not Allowed\r\nallow: GET\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_vec()
    };
    tls.write_all(&response).await?;
    tls.shutdown().await
}

// === Fetching ===

/// How the client authenticates a bundle endpoint (SPIFFE Federation, section 5).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EndpointProfile {
    /// `https_web`: the endpoint's certificate chains to these web PKI roots and names the
    /// endpoint's host.
    HttpsWeb {
        /// The roots (for the public web, a copy of a browser's; for tests, a private CA).
        roots: Vec<CertificateDer<'static>>,
    },
    /// `https_spiffe`: the endpoint presents an SVID with this SPIFFE ID, verified against
    /// the foreign trust domain's bundle (first `bootstrap`, then the last fetched one).
    HttpsSpiffe {
        /// The endpoint's SPIFFE ID (of the foreign trust domain).
        endpoint_id: SpiffeId,
        /// The foreign trust domain's bundle obtained out of band.
        bootstrap: Vec<CertificateDer<'static>>,
    },
}

/// A foreign trust domain's bundle endpoint.
#[derive(Clone, Debug)]
pub struct BundleEndpoint {
    host: String,
    port: u16,
    path: String,
    profile: EndpointProfile,
}

impl BundleEndpoint {
    /// An endpoint at `url` (`https://host[:port][/path]`) with its profile.
    ///
    /// # Errors
    /// [`Error::Federation`] for a URL that is not `https://` with a host.
    pub fn new(url: &str, profile: EndpointProfile) -> Result<Self, Error> {
        let bad = |why: &str| Error::Federation(format!("bundle endpoint URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad("invalid port"))?),
            None => (authority, 443),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(BundleEndpoint {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            profile,
        })
    }

    /// Fetches the bundle once (at most [`FETCH_TIMEOUT`], [`MAX_BUNDLE_SIZE`] bytes),
    /// authenticating the endpoint with `trusted` (the profile's roots or bundle).
    async fn fetch(
        &self,
        trusted: &[CertificateDer<'static>],
    ) -> Result<(SpiffeBundle, Vec<u8>), Error> {
        let fail = |why: String| Error::Federation(format!("{}: {why}", self.url()));
        let authorizer = match &self.profile {
            EndpointProfile::HttpsWeb { .. } => None,
            EndpointProfile::HttpsSpiffe { endpoint_id, .. } => Some(
                IdentityAuthorizer::spiffe_ids([endpoint_id.as_str()])
                    .map_err(|e| fail(e.to_string()))?,
            ),
        };
        let verifier = mtls_verify::server_certificate_verifier(trusted, authorizer)?;
        let config = ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let fetch = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(format!("connect: {e}")))?;
            let name = ServerName::try_from(self.host.clone())
                .map_err(|_| fail("invalid host name".into()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {}", tls_reason(&e))))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| fail(format!("HTTP: {e}")))?;
            let driver = tokio::spawn(conn);
            let request = http::Request::get(self.path.as_str())
                .header(http::header::HOST, self.host.as_str())
                .header(http::header::ACCEPT, "application/json")
                .body(Empty::<Bytes>::new())
                .map_err(|e| fail(format!("request: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| fail(format!("HTTP: {e}")))?;
            if !response.status().is_success() {
                driver.abort();
                return Err(fail(format!("HTTP status {}", response.status())));
            }
            let body = Limited::new(response.into_body(), MAX_BUNDLE_SIZE)
                .collect()
                .await
                .map_err(|e| fail(format!("body (limit {MAX_BUNDLE_SIZE} bytes): {e}")))?
                .to_bytes();
            driver.abort();
            Ok::<_, Error>(body.to_vec())
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        let bundle = mtls_verify::pem::spiffe_bundle(&body)?;
        if bundle.x509_authorities.is_empty() {
            return Err(fail("the bundle has no X.509 authorities".into()));
        }
        Ok((bundle, body))
    }

    /// The first fetch, trusting the profile's own roots or bootstrap bundle.
    pub(crate) async fn fetch_first(&self) -> Result<(SpiffeBundle, Vec<u8>), Error> {
        let trusted = match &self.profile {
            EndpointProfile::HttpsWeb { roots } => roots.clone(),
            EndpointProfile::HttpsSpiffe { bootstrap, .. } => bootstrap.clone(),
        };
        self.fetch(&trusted).await
    }

    /// What authenticates the endpoint once a bundle was fetched: the web roots, or (for
    /// `https_spiffe`) the last good bundle itself.
    fn trusted<'a>(&'a self, last: &'a [CertificateDer<'static>]) -> &'a [CertificateDer<'static>] {
        match &self.profile {
            EndpointProfile::HttpsWeb { roots } => roots,
            EndpointProfile::HttpsSpiffe { .. } => last,
        }
    }

    fn url(&self) -> String {
        format!("https://{}:{}{}", self.host, self.port, self.path)
    }
}

fn tls_reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => mtls_verify::human_reason(r),
        None => e.to_string(),
    }
}

/// Keeps a foreign trust domain's bundle file up to date from its bundle endpoint: fetches
/// at once and then by the bundle's `spiffe_refresh_hint` (clamped to `[1 s, 1 h]`), writes
/// the file atomically when the bundle changed, and keeps the last good file when a fetch
/// fails (retried with backoff from 1 s, capped at the refresh interval). The task stops
/// when the returned handle is dropped.
///
/// ```no_run
/// use svid_client::bundle_endpoint::{BundleEndpoint, EndpointProfile, spawn_bundle_refresher};
///
/// # async fn run(partner_ca: Vec<mtls_verify::rustls::pki_types::CertificateDer<'static>>) -> Result<(), Box<dyn std::error::Error>> {
/// let endpoint = BundleEndpoint::new(
///     "https://bundle.partner.org:8443",
///     EndpointProfile::HttpsSpiffe {
///         endpoint_id: "spiffe://partner.org/spire/server".parse()?,
///         bootstrap: partner_ca,
///     },
/// )?;
/// let first = svid_client::bundle_endpoint::fetch_to_file(&endpoint, "/var/run/partner.json").await?;
/// let _refresher = spawn_bundle_refresher(endpoint, "/var/run/partner.json", first);
/// // ServerTlsBuilder::…federated_bundle_file("partner.org", "/var/run/partner.json")
/// # Ok(()) }
/// ```
pub fn spawn_bundle_refresher(
    endpoint: BundleEndpoint,
    path: impl Into<PathBuf>,
    first: SpiffeBundle,
) -> TaskHandle {
    let path = path.into();
    TaskHandle::from_tokio(tokio::spawn(follow(
        endpoint,
        first,
        move |bundle, body| write_if_changed(&path, bundle, body).map(|()| true),
    )))
}

/// Refetches by the last bundle's refresh hint and hands each good bundle (and its
/// document) to `sink` until it returns `Ok(false)`; a failed fetch or a sink error is
/// logged and retried with backoff from 1 s (capped at the refresh interval) while the
/// last good bundle stays in service.
pub(crate) async fn follow(
    endpoint: BundleEndpoint,
    first: SpiffeBundle,
    mut sink: impl FnMut(&SpiffeBundle, &[u8]) -> Result<bool, Error>,
) {
    let mut last = first;
    let mut delay = refresh_interval(&last);
    let mut backoff = MIN_REFRESH;
    loop {
        tokio::time::sleep(delay).await;
        let fetched = endpoint
            .fetch(endpoint.trusted(&last.x509_authorities))
            .await;
        match fetched.and_then(|(bundle, body)| sink(&bundle, &body).map(|go_on| (bundle, go_on))) {
            Ok((_, false)) => return,
            Ok((bundle, true)) => {
                delay = refresh_interval(&bundle);
                last = bundle;
                backoff = MIN_REFRESH;
            }
            Err(e) => {
                tracing::warn!(error = %e, endpoint = %endpoint.url(), "bundle endpoint fetch failed; the last good bundle stays");
                delay = backoff.min(refresh_interval(&last));
                backoff = (backoff * 2).min(MAX_REFRESH);
            }
        }
    }
}

/// Fetches the bundle once with the profile's own trust (its roots, or its bootstrap
/// bundle) and writes it to `path`; the first step before [`spawn_bundle_refresher`].
///
/// # Errors
/// [`Error::Federation`] / [`Error::Tls`] when the endpoint cannot be reached or
/// authenticated, or its bundle is unusable; the file is then not written.
pub async fn fetch_to_file(
    endpoint: &BundleEndpoint,
    path: impl AsRef<Path>,
) -> Result<SpiffeBundle, Error> {
    let (bundle, body) = endpoint.fetch_first().await?;
    write_if_changed(path.as_ref(), &bundle, &body)?;
    Ok(bundle)
}

/// Writes the document atomically when the file does not already hold it.
fn write_if_changed(path: &Path, bundle: &SpiffeBundle, body: &[u8]) -> Result<(), Error> {
    if std::fs::read(path).ok().as_deref() != Some(body) {
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| Error::Federation(format!("{}: {e}", path.display()));
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        tracing::info!(file = %path.display(), sequence = ?bundle.sequence, "federated bundle updated from its endpoint");
    }
    Ok(())
}

fn refresh_interval(bundle: &SpiffeBundle) -> Duration {
    bundle
        .refresh_hint
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}
