//! Where an issuer's keys come from: the [`JwksSource`] trait, and the HTTP source that does
//! OIDC discovery (with `openidconnect`) or fetches a configured `jwks_uri`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use openidconnect::core::CoreProviderMetadata;
use openidconnect::{AsyncHttpClient, DiscoveryError, HttpRequest, HttpResponse, IssuerUrl};
use url::Url;

use crate::AuthError;
use crate::http::{Fetched, HttpFetcher, max_age};

/// A boxed, `Send` future, as [`JwksSource::fetch`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A JWKS as fetched, before parsing.
#[derive(Clone, Debug)]
pub struct JwksDocument {
    /// The JSON document.
    pub body: Vec<u8>,
    /// How long the document may be cached (HTTP `Cache-Control: max-age`); the key cache
    /// clamps it to its floor and ceiling and uses its default when `None`.
    pub max_age: Option<Duration>,
}

/// A source of one issuer's JWKS. The key cache calls [`JwksSource::fetch`] to refresh
/// (on schedule, on an unknown `kid`, or when forced) and validates what it gets: a bad
/// document is logged and the last good keys stay in use.
///
/// Implement it to take keys from somewhere else (a file you reload, a secret store) or to
/// drive the cache in tests.
pub trait JwksSource: Send + Sync + 'static {
    /// Fetches the current document.
    fn fetch(&self) -> BoxFuture<'_, Result<JwksDocument, AuthError>>;

    /// A short description for logs (for example the URL).
    fn describe(&self) -> String {
        "custom JWKS source".to_owned()
    }
}

/// How an HTTP source finds its JWKS.
#[derive(Debug)]
pub(crate) enum HttpMode {
    /// OIDC discovery at `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discover,
    /// A configured JWKS URL.
    Uri(Url),
}

/// Fetches JWKS over HTTPS, after discovery when configured.
#[derive(Debug)]
pub(crate) struct HttpJwksSource {
    issuer: String,
    mode: HttpMode,
    /// The `jwks_uri` once known (from discovery or configuration).
    jwks_uri: Mutex<Option<Url>>,
    fetcher: HttpFetcher,
}

const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";

impl HttpJwksSource {
    pub(crate) fn new(issuer: String, mode: HttpMode, fetcher: HttpFetcher) -> Self {
        let known = match &mode {
            HttpMode::Uri(u) => Some(u.clone()),
            HttpMode::Discover => None,
        };
        Self {
            issuer,
            mode,
            jwks_uri: Mutex::new(known),
            fetcher,
        }
    }

    fn known_uri(&self) -> Option<Url> {
        self.jwks_uri
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    async fn discover(&self) -> Result<JwksDocument, AuthError> {
        let discovery_err = |reason: String| AuthError::Discovery {
            issuer: self.issuer.as_str().into(),
            reason: reason.into(),
        };
        let issuer_url =
            IssuerUrl::new(self.issuer.clone()).map_err(|e| discovery_err(e.to_string()))?;
        let client = DiscoveryClient {
            fetcher: &self.fetcher,
            responses: Mutex::new(Vec::new()),
        };
        let metadata = CoreProviderMetadata::discover_async(issuer_url, &client)
            .await
            .map_err(|e| match e {
                DiscoveryError::Request(inner) => inner,
                DiscoveryError::Validation(reason) => discovery_err(reason),
                DiscoveryError::Parse(e) => {
                    discovery_err(format!("document is invalid at {}", e.path()))
                }
                DiscoveryError::Response(status, _, reason) => {
                    discovery_err(format!("status {status}: {reason}"))
                }
                other => discovery_err(other.to_string()),
            })?;
        let jwks_uri = metadata.jwks_uri().url().clone();
        let fetched = client
            .take_response(&jwks_uri)
            .ok_or_else(|| discovery_err("the JWKS response was not captured".to_owned()))?;
        tracing::info!(issuer = %self.issuer, jwks_uri = %jwks_uri, "OIDC discovery done");
        if let Ok(mut guard) = self.jwks_uri.lock() {
            *guard = Some(jwks_uri);
        }
        Ok(document(fetched))
    }
}

fn document(fetched: Fetched) -> JwksDocument {
    JwksDocument {
        max_age: fetched.cache_control.as_deref().and_then(max_age),
        body: fetched.body,
    }
}

impl JwksSource for HttpJwksSource {
    fn fetch(&self) -> BoxFuture<'_, Result<JwksDocument, AuthError>> {
        Box::pin(async move {
            match (self.known_uri(), &self.mode) {
                (Some(uri), _) => Ok(document(self.fetcher.get(&uri, ACCEPT_JWKS).await?)),
                (None, HttpMode::Discover) => self.discover().await,
                (None, HttpMode::Uri(uri)) => {
                    Ok(document(self.fetcher.get(uri, ACCEPT_JWKS).await?))
                }
            }
        })
    }

    fn describe(&self) -> String {
        match self.known_uri() {
            Some(uri) => uri.to_string(),
            None => format!("discovery of {}", self.issuer),
        }
    }
}

/// The HTTP client handed to `openidconnect`: our fetcher, recording each response so the
/// JWKS fetched during discovery is used as is (with its `Cache-Control`) instead of being
/// fetched twice.
struct DiscoveryClient<'f> {
    fetcher: &'f HttpFetcher,
    responses: Mutex<Vec<(Url, Fetched)>>,
}

impl DiscoveryClient<'_> {
    fn take_response(&self, url: &Url) -> Option<Fetched> {
        let mut guard = self.responses.lock().ok()?;
        let i = guard.iter().position(|(u, _)| u == url)?;
        Some(guard.swap_remove(i).1)
    }
}

impl<'c> AsyncHttpClient<'c> for DiscoveryClient<'_> {
    type Error = AuthError;
    type Future = BoxFuture<'c, Result<HttpResponse, AuthError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let uri = request.uri().to_string();
            let url = Url::parse(&uri).map_err(|_| AuthError::Fetch {
                url: uri.as_str().into(),
                reason: "not a URL".into(),
            })?;
            let accept = if url.path().ends_with("openid-configuration") {
                "application/json"
            } else {
                ACCEPT_JWKS
            };
            let fetched = self.fetcher.get(&url, accept).await?;
            let mut response = http::Response::builder().status(http::StatusCode::OK);
            if let Some(ct) = &fetched.content_type {
                response = response.header(http::header::CONTENT_TYPE, ct.as_str());
            }
            let response = response
                .body(fetched.body.clone())
                .map_err(|e| AuthError::Fetch {
                    url: uri.as_str().into(),
                    reason: e.to_string().into(),
                })?;
            if let Ok(mut guard) = self.responses.lock() {
                guard.push((url, fetched));
            }
            Ok(response)
        })
    }
}
