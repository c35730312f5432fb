//! Where an issuer's keys come from: the [`JwksSource`] trait, and the HTTP source that does
//! OIDC discovery (with a small typed reader of its own) or fetches a configured `jwks_uri`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

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
const ACCEPT_JSON: &str = "application/json";
const MIME_JWK_SET: &str = "application/jwk-set+json";

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

    /// OIDC discovery: reads `issuer` and `jwks_uri` from
    /// `{issuer}/.well-known/openid-configuration`, requires the document's `issuer` to equal
    /// the configured one exactly (string comparison, as OpenID Connect Discovery 1.0 §4.3
    /// requires), then fetches the JWKS it names.
    async fn discover(&self) -> Result<JwksDocument, AuthError> {
        let discovery_err = |reason: String| AuthError::Discovery {
            issuer: self.issuer.as_str().into(),
            reason: reason.into(),
        };
        let url = discovery_url(&self.issuer).map_err(discovery_err)?;
        let fetched = self.fetcher.get(&url, ACCEPT_JSON).await?;
        check_content_type(&fetched, &[ACCEPT_JSON]).map_err(discovery_err)?;
        let metadata = ProviderMetadata::parse(&fetched.body).map_err(discovery_err)?;
        if metadata.issuer != self.issuer {
            return Err(discovery_err(format!(
                "unexpected issuer `{}` in the discovery document (expected `{}`)",
                metadata.issuer, self.issuer
            )));
        }
        let jwks_uri = Url::parse(&metadata.jwks_uri)
            .map_err(|e| discovery_err(format!("jwks_uri is not a URL: {e}")))?;
        let fetched = self.fetcher.get(&jwks_uri, ACCEPT_JWKS).await?;
        check_content_type(&fetched, &[ACCEPT_JSON, MIME_JWK_SET]).map_err(discovery_err)?;
        tracing::info!(issuer = %self.issuer, jwks_uri = %jwks_uri, "OIDC discovery done");
        if let Ok(mut guard) = self.jwks_uri.lock() {
            *guard = Some(jwks_uri);
        }
        Ok(document(fetched))
    }
}

/// The two fields of an OpenID Provider Metadata document (OpenID Connect Discovery 1.0 §3)
/// a resource server needs; the others are not read.
#[derive(Debug, serde::Deserialize)]
struct ProviderMetadata {
    issuer: String,
    jwks_uri: String,
}

impl ProviderMetadata {
    fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| {
            // Only where it failed: the message may quote the document.
            format!(
                "document is invalid ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })
    }
}

/// `{issuer}/.well-known/openid-configuration`, with one `/` between the two.
fn discovery_url(issuer: &str) -> Result<Url, String> {
    const SUFFIX: &str = ".well-known/openid-configuration";
    let joined = if issuer.ends_with('/') {
        format!("{issuer}{SUFFIX}")
    } else {
        format!("{issuer}/{SUFFIX}")
    };
    Url::parse(&joined).map_err(|e| format!("issuer is not a URL: {e}"))
}

/// A `Content-Type`, when present, must have one of these essences (type/subtype, compared
/// case-insensitively, parameters ignored).
fn check_content_type(fetched: &Fetched, expected: &[&str]) -> Result<(), String> {
    let Some(ct) = fetched.content_type.as_deref() else {
        return Ok(());
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if expected.iter().any(|e| essence.eq_ignore_ascii_case(e)) {
        Ok(())
    } else {
        Err(format!(
            "unexpected Content-Type `{ct}` (expected {})",
            expected.join(" or ")
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(content_type: Option<&str>) -> Fetched {
        Fetched {
            body: Vec::new(),
            content_type: content_type.map(str::to_owned),
            cache_control: None,
        }
    }

    #[test]
    fn discovery_url_has_one_slash_before_the_well_known_path() {
        for issuer in [
            "https://idp.example/realms/a",
            "https://idp.example/realms/a/",
        ] {
            let url = discovery_url(issuer).unwrap();
            assert_eq!(
                url.as_str(),
                "https://idp.example/realms/a/.well-known/openid-configuration"
            );
        }
        assert!(discovery_url("not a url").is_err());
    }

    #[test]
    fn metadata_needs_issuer_and_jwks_uri_and_ignores_the_rest() {
        let doc = br#"{"issuer":"https://i","jwks_uri":"https://i/k","token_endpoint":"x","claims_supported":[1]}"#;
        let m = ProviderMetadata::parse(doc).unwrap();
        assert_eq!(
            (m.issuer.as_str(), m.jwks_uri.as_str()),
            ("https://i", "https://i/k")
        );
        for bad in [
            &br#"{"issuer":"https://i"}"#[..],
            br#"{"jwks_uri":"https://i/k"}"#,
            br#"{"issuer":1,"jwks_uri":"https://i/k"}"#,
            br#"[]"#,
            b"",
        ] {
            let err = ProviderMetadata::parse(bad).unwrap_err();
            assert!(err.starts_with("document is invalid"), "{err}");
        }
    }

    #[test]
    fn content_type_essence_is_compared_without_case_or_parameters() {
        let json = [ACCEPT_JSON];
        assert!(check_content_type(&fetched(None), &json).is_ok());
        assert!(
            check_content_type(&fetched(Some("Application/JSON; charset=utf-8")), &json).is_ok()
        );
        assert!(check_content_type(&fetched(Some("text/html")), &json).is_err());
        assert!(check_content_type(&fetched(Some("application/json-seq")), &json).is_err());
        let jwks = [ACCEPT_JSON, MIME_JWK_SET];
        assert!(check_content_type(&fetched(Some("application/jwk-set+json")), &jwks).is_ok());
    }
}
