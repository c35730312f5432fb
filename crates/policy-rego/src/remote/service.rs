//! [`Service`]: where bundles come from and logs go (OPA's `services[]`), and the HTTP(S)
//! client the bundle downloader and the log uploader share: rustls (aws-lc-rs), HTTP/1.1,
//! one connection per exchange, a deadline over the whole exchange, a streamed response
//! size limit, no redirects, and an optional bearer token.

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use url::Url;

use crate::error::PolicyError;

/// A service that bundles are downloaded from or logs uploaded to (OPA's `services[]`
/// entry): its base URL, credentials, TLS and timeout, shared by every
/// [`BundleDownloader`](crate::BundleDownloader) and [`LogUploader`](crate::LogUploader)
/// built on it.
///
/// ```
/// use std::time::Duration;
/// use policy_rego::Service;
///
/// let acme = Service::builder("https://bundles.example.com/v1")
///     .bearer_token("secret")
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(acme.url("authz/bundle.tar.gz")?.as_str(), "https://bundles.example.com/v1/authz/bundle.tar.gz");
/// assert!(Service::builder("http://bundles.example.com").build().is_err(), "https only by default");
/// # Ok::<(), policy_rego::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct Service {
    pub(crate) base: Url,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) bearer: Option<HeaderValue>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Service")
            .field("url", &self.base.as_str())
            .field("timeout", &self.timeout)
            .field("bearer", &self.bearer.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Service`]; see [`Service::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ServiceBuilder {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    bearer: Option<String>,
    timeout: Duration,
    allow_http: bool,
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl ServiceBuilder {
    /// Sends `Authorization: Bearer <token>` (OPA's `credentials.bearer.token`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// The TLS client configuration (roots to trust, a client certificate for mTLS;
    /// default: the Mozilla roots, no client certificate).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The deadline for one exchange: connect, TLS, request and the whole reply (default
    /// 10 s). A long poll adds the server's wait to it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Accepts a plain `http://` URL (tests, a server on the loopback or behind a mesh that
    /// encrypts). Off by default: bundles decide who gets in and decision logs carry request
    /// inputs; both can be read or replaced on the way in clear text.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// The service.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] for a URL that is not `https` (unless allowed), has no host or
    /// carries credentials, a bearer token that is not a valid header value, or a TLS
    /// configuration that cannot be built.
    pub fn build(self) -> Result<Service, PolicyError> {
        let base = service_url(&self.url, self.allow_http)?;
        let tls = match self.tls {
            Some(tls) => tls,
            None => default_tls()?,
        };
        let bearer = self.bearer.as_deref().map(bearer_header).transpose()?;
        Ok(Service {
            base,
            tls,
            bearer,
            timeout: self.timeout,
        })
    }
}

impl Service {
    /// A service at `url` (OPA's `services[].url`), `https` only, the Mozilla roots, no
    /// credentials, a 10 s timeout.
    pub fn builder(url: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            url: url.into(),
            tls: None,
            bearer: None,
            timeout: Duration::from_secs(10),
            allow_http: false,
        }
    }

    /// The URL of `resource` on this service, as OPA joins them (`<url>/<resource>`, one
    /// slash between).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] when the result is not a valid URL.
    pub fn url(&self, resource: &str) -> Result<Url, PolicyError> {
        let joined = format!(
            "{}/{}",
            self.base.as_str().trim_end_matches('/'),
            resource.trim_start_matches('/')
        );
        Url::parse(&joined).map_err(|e| PolicyError::Config(format!("resource {resource:?}: {e}")))
    }
}

/// What came back: any status, the headers, and a body within the limit.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: http::header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) fn remote_error(url: &Url, reason: impl Into<String>) -> PolicyError {
    PolicyError::Remote {
        url: url.as_str().to_owned(),
        reason: reason.into(),
    }
}

/// Parses and checks a service URL: `https` (or `http` when allowed), a host, no
/// credentials in it.
fn service_url(url: &str, allow_http: bool) -> Result<Url, PolicyError> {
    let parsed =
        Url::parse(url).map_err(|e| PolicyError::Config(format!("service URL {url:?}: {e}")))?;
    let refuse = |why: &str| PolicyError::Config(format!("service URL {parsed}: {why}"));
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(refuse("plain http is refused (see allow_insecure_http)")),
        _ => return Err(refuse("the scheme is not https")),
    }
    if parsed.host_str().is_none() {
        return Err(refuse("no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(
            "credentials in the URL are refused (see bearer_token)",
        ));
    }
    Ok(parsed)
}

/// A TLS client configuration trusting the Mozilla roots (webpki-roots), aws-lc-rs.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, PolicyError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PolicyError::Config(format!("TLS client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn bearer_header(token: &str) -> Result<HeaderValue, PolicyError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| PolicyError::Config("the bearer token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Service {
    /// Sends one request to `url` (one of [`Service::url`]) and reads the reply,
    /// all within `deadline`; the body is refused past `max_body` bytes.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Bytes,
        deadline: Duration,
        max_body: u64,
    ) -> Result<Reply, PolicyError> {
        let call = self.connect_and_send(method, url, headers, body, max_body);
        match tokio::time::timeout(deadline, call).await {
            Ok(reply) => reply,
            Err(_) => Err(remote_error(url, format!("no reply within {deadline:?}"))),
        }
    }

    async fn connect_and_send(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Bytes,
        max_body: u64,
    ) -> Result<Reply, PolicyError> {
        let host = url.host_str().ok_or_else(|| remote_error(url, "no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| remote_error(url, "no port"))?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| remote_error(url, format!("connect: {}", e.kind())))?;
        let _ = tcp.set_nodelay(true);
        let request = self.request(method, url, headers, body)?;
        if url.scheme() == "https" {
            let name = ServerName::try_from(bare_host.to_owned())
                .map_err(|_| remote_error(url, "the host is not a valid TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| remote_error(url, format!("TLS: {e}")))?;
            send(TokioIo::new(tls), url, request, max_body).await
        } else {
            send(TokioIo::new(tcp), url, request, max_body).await
        }
    }

    fn request(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, PolicyError> {
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, authority)
            .header(
                USER_AGENT,
                concat!("ztkit-policy-rego/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| remote_error(url, format!("request: {e}")))?;
        if let Some(token) = &self.bearer {
            request.headers_mut().insert(AUTHORIZATION, token.clone());
        }
        request.headers_mut().extend(headers);
        Ok(request)
    }
}

async fn send<I>(
    io: I,
    url: &Url,
    request: http::Request<Full<Bytes>>,
    max_body: u64,
) -> Result<Reply, PolicyError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| remote_error(url, format!("HTTP handshake: {e}")))?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let reply = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| remote_error(url, format!("HTTP: {e}")))?;
        let (parts, mut incoming) = response.into_parts();
        let too_large = || remote_error(url, format!("the reply is larger than {max_body} bytes"));
        if let Some(length) = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && length > max_body
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| remote_error(url, format!("reading the body: {e}")))?;
            if let Some(data) = frame.data_ref() {
                if (body.len() + data.len()) as u64 > max_body {
                    return Err(too_large());
                }
                body.extend_from_slice(data);
            }
        }
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    connection.abort();
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_are_https_without_credentials_unless_allowed() {
        assert!(service_url("https://bundles.example.com/v1", false).is_ok());
        for bad in [
            "http://bundles.example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(
                matches!(service_url(bad, false), Err(PolicyError::Config(_))),
                "{bad}"
            );
        }
        assert!(service_url("http://127.0.0.1:8181/", true).is_ok());
    }

    #[test]
    fn the_bearer_token_is_sensitive() {
        assert!(bearer_header("abc").unwrap().is_sensitive());
        assert!(bearer_header("a\nb").is_err());
    }
}
