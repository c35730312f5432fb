//! A small HTTPS GET client for discovery documents and JWKS: rustls (aws-lc-rs), HTTP/1.1,
//! one connection per fetch, a timeout over the whole exchange, a streamed size limit, and no
//! redirects. It is only ever given URLs from configuration or from the configured issuer's
//! discovery document.

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use url::Url;

use crate::AuthError;

/// A fetched response: status 200 only; body within the limit.
#[derive(Clone, Debug)]
pub(crate) struct Fetched {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: Option<String>,
    pub(crate) cache_control: Option<String>,
}

/// HTTP settings shared by every issuer of an authenticator.
#[derive(Clone)]
pub(crate) struct HttpFetcher {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) allow_http: bool,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("timeout", &self.timeout)
            .field("max_bytes", &self.max_bytes)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

fn fetch_err(url: &Url, reason: impl Into<Box<str>>) -> AuthError {
    AuthError::Fetch {
        url: url.as_str().into(),
        reason: reason.into(),
    }
}

pub(crate) fn tls_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, AuthError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::InvalidConfig {
            what: "TLS client",
            reason: e.to_string().into(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub(crate) fn webpki_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

impl HttpFetcher {
    /// Checks that `url` may be fetched at all: https, or http only when allowed.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), AuthError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(fetch_err(
                    url,
                    "plain http is refused (see allow_insecure_http)",
                ));
            }
            _ => return Err(fetch_err(url, "scheme is not https")),
        }
        if url.host_str().is_none() {
            return Err(fetch_err(url, "no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fetch_err(url, "credentials in the URL are refused"));
        }
        Ok(())
    }

    /// GETs `url`, with the whole exchange bounded by the timeout.
    pub(crate) async fn get(&self, url: &Url, accept: &'static str) -> Result<Fetched, AuthError> {
        self.check_url(url)?;
        match tokio::time::timeout(self.timeout, self.get_inner(url, accept)).await {
            Ok(result) => result,
            Err(_) => Err(fetch_err(
                url,
                format!("timed out after {:?}", self.timeout),
            )),
        }
    }

    async fn get_inner(&self, url: &Url, accept: &'static str) -> Result<Fetched, AuthError> {
        let host = url.host_str().ok_or_else(|| fetch_err(url, "no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| fetch_err(url, "no port"))?;
        // IPv6 literals come bracketed from `host_str`.
        let connect_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((connect_host, port))
            .await
            .map_err(|e| fetch_err(url, format!("connect: {}", e.kind())))?;
        let _ = tcp.set_nodelay(true);
        if url.scheme() == "https" {
            let name = ServerName::try_from(connect_host.to_owned())
                .map_err(|_| fetch_err(url, "host is not a valid TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| fetch_err(url, format!("TLS: {e}")))?;
            self.exchange(TokioIo::new(tls), url, accept).await
        } else {
            self.exchange(TokioIo::new(tcp), url, accept).await
        }
    }

    async fn exchange<I>(
        &self,
        io: I,
        url: &Url,
        accept: &'static str,
    ) -> Result<Fetched, AuthError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(io)
        .await
        .map_err(|e| fetch_err(url, format!("HTTP handshake: {e}")))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let result = self.request(&mut sender, url, accept).await;
        driver.abort();
        result
    }

    async fn request(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<
            http_body_util::Empty<hyper::body::Bytes>,
        >,
        url: &Url,
        accept: &'static str,
    ) -> Result<Fetched, AuthError> {
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let request = http::Request::get(path)
            .header(HOST, authority)
            .header(ACCEPT, accept)
            .header(
                USER_AGENT,
                concat!("ztkit-jwt-oidc/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::new())
            .map_err(|e| fetch_err(url, format!("request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fetch_err(url, format!("HTTP: {e}")))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(fetch_err(
                url,
                format!("status {status}: redirects are not followed"),
            ));
        }
        if status != http::StatusCode::OK {
            return Err(fetch_err(url, format!("status {status}")));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE);
        let cache_control = header(CACHE_CONTROL);
        if let Some(len) = header(CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
            && len > self.max_bytes as u64
        {
            return Err(fetch_err(
                url,
                format!("response larger than {} bytes", self.max_bytes),
            ));
        }
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fetch_err(url, format!("reading body: {e}")))?;
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > self.max_bytes {
                    return Err(fetch_err(
                        url,
                        format!("response larger than {} bytes", self.max_bytes),
                    ));
                }
                out.extend_from_slice(data);
            }
        }
        Ok(Fetched {
            body: out,
            content_type,
            cache_control,
        })
    }
}

/// `max-age` from a `Cache-Control` value; `no-store`/`no-cache` count as 0.
pub(crate) fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim();
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store, max-age=300"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=-1"), None);
    }

    #[tokio::test]
    async fn plain_http_and_other_schemes_are_refused_by_default() {
        let f = HttpFetcher {
            tls: tls_config(webpki_roots()).unwrap(),
            timeout: Duration::from_secs(1),
            max_bytes: 10,
            allow_http: false,
        };
        for u in [
            "http://127.0.0.1:1/jwks",
            "file:///etc/passwd",
            "https://u:p@example.com/",
        ] {
            let err = f
                .get(&Url::parse(u).unwrap(), "application/json")
                .await
                .unwrap_err();
            assert!(matches!(err, AuthError::Fetch { .. }), "{u}: {err}");
        }
    }
}
