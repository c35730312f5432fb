//! [`JwtAuthenticatorBuilder`]: strict defaults, named relaxations, and `build`, which checks
//! the configuration, loads static keys and starts the refresh tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use url::Url;

use crate::Algorithm;
use crate::http::{HttpFetcher, tls_config, webpki_roots};
use crate::jwks::Jwks;
use crate::key_cache::{IssuerState, KeyCacheSettings};
use crate::source::{HttpJwksSource, HttpMode};
use crate::token_cache::TokenCache;
use crate::{AuthError, Claims};

use super::header::media_type;
use super::issuer::IssuerKind;
use super::{Config, CustomCheck, Inner, IssuerConfig, JwtAuthenticator, NEXT_AUTHENTICATOR_ID};

/// Builds a [`JwtAuthenticator`]. Defaults are the strict choices; every relaxation is a
/// method named `allow_*` or `insecure_*`.
///
/// | setting | default |
/// |---|---|
/// | algorithms | RS256/384/512, PS256/384/512, ES256/384, EdDSA (keys decide) |
/// | audience | required: at least one [`audience`](Self::audience) |
/// | leeway | 60 s |
/// | max token size | 8 KiB |
/// | `kid` | required |
/// | `typ` | not checked ([`require_type`](Self::require_type) for `at+jwt`) |
/// | certificate binding | checked when present; [`require_certificate_binding`](Self::require_certificate_binding) |
/// | token cache | 4096 entries |
/// | JWKS TTL | `Cache-Control: max-age` clamped to 60 s ..= 24 h; 10 min without it |
/// | unknown-`kid` refresh cooldown | 30 s |
/// | max key staleness | 1 h after the last good fetch |
/// | HTTP | https only, 5 s timeout, 512 KiB limit, Mozilla roots, no redirects |
pub struct JwtAuthenticatorBuilder {
    issuers: Vec<IssuerConfig>,
    audiences: Vec<Box<str>>,
    any_audience: bool,
    allowed: Vec<Algorithm>,
    required_type: Option<String>,
    leeway: Duration,
    max_age: Option<Duration>,
    required_claims: Vec<Box<str>>,
    required_scopes: Vec<Box<str>>,
    custom: Option<Arc<CustomCheck>>,
    require_binding: bool,
    max_token_bytes: usize,
    roles_claim: Option<String>,
    accepted_crit: Vec<Box<str>>,
    allow_no_kid: bool,
    spiffe_issuers: bool,
    cache_capacity: usize,
    settings: KeyCacheSettings,
    http_timeout: Duration,
    max_response_bytes: usize,
    allow_http: bool,
    roots: Option<rustls::RootCertStore>,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for JwtAuthenticatorBuilder {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            any_audience: false,
            allowed: Algorithm::ALL.to_vec(),
            required_type: None,
            leeway: Duration::from_secs(60),
            max_age: None,
            required_claims: Vec::new(),
            required_scopes: Vec::new(),
            custom: None,
            require_binding: false,
            max_token_bytes: 8 * 1024,
            roles_claim: Some("roles".to_owned()),
            accepted_crit: Vec::new(),
            allow_no_kid: false,
            spiffe_issuers: false,
            cache_capacity: 4096,
            settings: KeyCacheSettings::default(),
            http_timeout: Duration::from_secs(5),
            max_response_bytes: 512 * 1024,
            allow_http: false,
            roots: None,
            extra_roots: Vec::new(),
        }
    }
}

impl std::fmt::Debug for JwtAuthenticatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticatorBuilder")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticatorBuilder {
    /// Trusts an issuer. Tokens are matched to issuers by their `iss`, exactly.
    #[must_use]
    pub fn issuer(mut self, issuer: IssuerConfig) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Accepts tokens whose `aud` contains `audience` (call again to accept several).
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into().into());
        self
    }

    /// Accepts any `aud`, or none. Only for tokens that are audience-restricted some other
    /// way; otherwise a token minted for another service works here.
    #[must_use]
    pub fn allow_any_audience(mut self) -> Self {
        self.any_audience = true;
        self
    }

    /// Restricts the algorithm allow-list (keys with other algorithms are ignored).
    #[must_use]
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.allowed = algorithms.into_iter().collect();
        self
    }

    /// Requires the header `typ` (compared case-insensitively, `application/` optional),
    /// for example `at+jwt` for RFC 9068 access tokens.
    #[must_use]
    pub fn require_type(mut self, typ: impl Into<String>) -> Self {
        self.required_type = Some(typ.into());
        self
    }

    /// Clock-skew allowance for `exp`, `nbf` and `iat` (default 60 s).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Refuses tokens whose `iat` is older than `max_age` (and tokens without `iat`).
    #[must_use]
    pub fn max_token_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Requires a top-level claim to be present and not `null`.
    #[must_use]
    pub fn require_claim(mut self, name: impl Into<String>) -> Self {
        self.required_claims.push(name.into().into());
        self
    }

    /// Requires a scope on every token (missing → [`AuthError::InsufficientScope`], 403).
    #[must_use]
    pub fn require_scope(mut self, scope: impl Into<String>) -> Self {
        self.required_scopes.push(scope.into().into());
        self
    }

    /// Adds a custom check, run on every validation after the built-in ones; an `Err`
    /// becomes [`AuthError::Rejected`].
    #[must_use]
    pub fn custom_check(
        mut self,
        check: impl Fn(&Claims) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.custom = Some(Arc::new(check));
        self
    }

    /// Refuses tokens that are not certificate-bound (`cnf.x5t#S256`, RFC 8705).
    #[must_use]
    pub fn require_certificate_binding(mut self) -> Self {
        self.require_binding = true;
        self
    }

    /// Largest token accepted, in bytes (default 8 KiB); longer ones are refused unparsed.
    #[must_use]
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Dot-separated path of the roles claim (default `roles`; Keycloak:
    /// `realm_access.roles`).
    #[must_use]
    pub fn roles_claim(mut self, path: impl Into<String>) -> Self {
        self.roles_claim = Some(path.into());
        self
    }

    /// Accepts a `crit` header extension your application handles itself.
    #[must_use]
    pub fn allow_critical_header(mut self, name: impl Into<String>) -> Self {
        self.accepted_crit.push(name.into().into());
        self
    }

    /// Validates JWT-SVIDs (SPIFFE): the keys that verify a token are those of the trust
    /// domain of its `sub`, which must be a SPIFFE ID; configure one issuer per trust
    /// domain, named `spiffe://<trust domain>`, with that trust domain's JWT bundle as its
    /// JWKS. `iss` is neither required nor used to choose keys, and
    /// [`Claims::issuer`](crate::Claims::issuer) is then the trust domain
    /// (`spiffe://<trust domain>`) whose key verified the token. Everything else (audience,
    /// `exp`, algorithms, `kid`) is checked as for any token.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), jwt_oidc::AuthError> {
    /// use jwt_oidc::testing::{TestKey, jwks, now_unix};
    /// use jwt_oidc::{Algorithm, AuthError, IssuerConfig, JwtAuthenticator, RequestContext};
    /// use serde_json::json;
    ///
    /// let (ours, theirs) = (TestKey::generate(Algorithm::Es256, "a"), TestKey::generate(Algorithm::Es256, "b"));
    /// let auth = JwtAuthenticator::builder()
    ///     .issuer(IssuerConfig::static_jwks("spiffe://example.org", jwks(&[&ours])))
    ///     .issuer(IssuerConfig::static_jwks("spiffe://other.org", jwks(&[&theirs])))
    ///     .issuers_are_spiffe_trust_domains()
    ///     .audience("orders")
    ///     .build()?;
    /// let ctx = RequestContext::new();
    /// let claims = json!({"sub": "spiffe://example.org/web", "aud": "orders", "exp": now_unix() + 60});
    /// let verified = auth.validate(&ours.token(&claims), &ctx).await?;
    /// assert_eq!(verified.issuer(), "spiffe://example.org");
    /// // Signed by the other trust domain's key: not a key of example.org.
    /// assert!(matches!(auth.validate(&theirs.token(&claims), &ctx).await, Err(AuthError::UnknownKey { .. })));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn issuers_are_spiffe_trust_domains(mut self) -> Self {
        self.spiffe_issuers = true;
        self
    }

    /// Accepts tokens without `kid` when the issuer publishes exactly one usable key.
    #[must_use]
    pub fn allow_missing_kid(mut self) -> Self {
        self.allow_no_kid = true;
        self
    }

    /// Size of the verified-token cache (default 4096; 0 disables it).
    #[must_use]
    pub fn token_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Bounds for the JWKS cache lifetime taken from `Cache-Control: max-age`
    /// (default 60 s ..= 24 h).
    #[must_use]
    pub fn jwks_ttl_bounds(mut self, floor: Duration, ceiling: Duration) -> Self {
        self.settings.ttl_floor = floor;
        self.settings.ttl_ceiling = ceiling;
        self
    }

    /// JWKS cache lifetime when the response has no `max-age` (default 10 min).
    #[must_use]
    pub fn jwks_default_ttl(mut self, ttl: Duration) -> Self {
        self.settings.default_ttl = ttl;
        self
    }

    /// Least time between two refreshes caused by unknown `kid`s (default 30 s).
    #[must_use]
    pub fn unknown_kid_cooldown(mut self, cooldown: Duration) -> Self {
        self.settings.unknown_kid_cooldown = cooldown;
        self
    }

    /// How long after the last successful fetch keys keep serving while the provider is
    /// unreachable (default 1 h); after that tokens are refused.
    #[must_use]
    pub fn max_key_staleness(mut self, staleness: Duration) -> Self {
        self.settings.max_staleness = staleness;
        self
    }

    /// Backoff between failed refreshes (default 1 s doubling to 60 s).
    #[must_use]
    pub fn refresh_retry(mut self, min: Duration, max: Duration) -> Self {
        self.settings.retry_min = min;
        self.settings.retry_max = max;
        self
    }

    /// Timeout for a whole discovery or JWKS fetch (default 5 s).
    #[must_use]
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// Largest discovery or JWKS response read (default 512 KiB); reading stops there.
    #[must_use]
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Allows `http://` issuer and JWKS URLs. For loopback tests only: keys fetched over
    /// plain HTTP can be replaced by anyone on the path.
    #[must_use]
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// Replaces the TLS trust anchors (default: the Mozilla roots from `webpki-roots`).
    #[must_use]
    pub fn tls_roots(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Adds a trust anchor (for example a private CA in front of Keycloak).
    #[must_use]
    pub fn add_tls_root(mut self, cert: CertificateDer<'static>) -> Self {
        self.extra_roots.push(cert);
        self
    }

    /// Builds the authenticator and starts a background refresher per remote issuer.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] for no issuer, no audience, an empty allow-list, a
    /// duplicate issuer, a URL that is not https (without
    /// [`allow_insecure_http`](Self::allow_insecure_http)), or remote issuers outside a Tokio
    /// runtime; [`AuthError::InvalidJwks`] for a static JWKS without usable keys.
    pub fn build(self) -> Result<JwtAuthenticator, AuthError> {
        let bad = |what, reason: &str| AuthError::InvalidConfig {
            what,
            reason: reason.into(),
        };
        if self.issuers.is_empty() {
            return Err(bad("issuers", "no issuer configured"));
        }
        if self.audiences.is_empty() && !self.any_audience {
            return Err(bad("audience", "no audience configured"));
        }
        if self.allowed.is_empty() {
            return Err(bad("algorithms", "the allow-list is empty"));
        }
        if self.settings.ttl_floor > self.settings.ttl_ceiling {
            return Err(bad("jwks_ttl_bounds", "floor is above ceiling"));
        }
        if self.settings.ttl_floor.is_zero() || self.settings.retry_min.is_zero() {
            return Err(bad("jwks_ttl_bounds", "floor and retry must be positive"));
        }
        let mut roots = self.roots.unwrap_or_else(webpki_roots);
        for cert in self.extra_roots {
            roots
                .add(cert)
                .map_err(|e| bad("add_tls_root", &e.to_string()))?;
        }
        let fetcher = HttpFetcher {
            tls: tls_config(roots)?,
            timeout: self.http_timeout,
            max_bytes: self.max_response_bytes,
            allow_http: self.allow_http,
        };
        let mut issuers = Vec::new();
        let mut by_issuer = HashMap::new();
        for cfg in self.issuers {
            if cfg.issuer.is_empty() {
                return Err(bad("issuer", "empty issuer"));
            }
            if by_issuer.contains_key(cfg.issuer.as_str()) {
                return Err(bad(
                    "issuer",
                    &format!("{} is configured twice", cfg.issuer),
                ));
            }
            let parse = |u: &str| {
                let url = Url::parse(u).map_err(|e| bad("issuer URL", &format!("{u}: {e}")))?;
                fetcher.check_url(&url)?;
                Ok::<_, AuthError>(url)
            };
            let state = match cfg.kind {
                IssuerKind::Discover => {
                    parse(&cfg.issuer)?;
                    let source = HttpJwksSource::new(
                        cfg.issuer.clone(),
                        HttpMode::Discover,
                        fetcher.clone(),
                    );
                    IssuerState::with_source(cfg.issuer.clone(), Arc::new(source))
                }
                IssuerKind::JwksUri(uri) => {
                    let url = parse(&uri)?;
                    let source = HttpJwksSource::new(
                        cfg.issuer.clone(),
                        HttpMode::Uri(url),
                        fetcher.clone(),
                    );
                    IssuerState::with_source(cfg.issuer.clone(), Arc::new(source))
                }
                IssuerKind::Static(json) => IssuerState::with_static(
                    cfg.issuer.clone(),
                    Jwks::parse_with(&json, &self.allowed)?,
                ),
                IssuerKind::Source(source) => IssuerState::with_source(cfg.issuer.clone(), source),
            };
            by_issuer.insert(cfg.issuer.into_boxed_str(), issuers.len());
            issuers.push(state);
        }
        let runtime = tokio::runtime::Handle::try_current();
        if issuers.iter().any(IssuerState::is_refreshable) && runtime.is_err() {
            return Err(bad(
                "runtime",
                "build() must run inside a Tokio runtime when keys are fetched",
            ));
        }
        let roles_path = self.roles_claim.filter(|p| !p.is_empty()).map(|p| {
            p.split('.')
                .map(Into::into)
                .collect::<Vec<Box<str>>>()
                .into()
        });
        let config = Config {
            audiences: self.audiences,
            any_audience: self.any_audience,
            allowed: self.allowed,
            required_type: self.required_type.as_deref().map(|t| media_type(t).into()),
            leeway: self.leeway.as_secs(),
            max_age: self.max_age.map(|d| d.as_secs()),
            required_claims: self.required_claims,
            required_scopes: self.required_scopes,
            custom: self.custom,
            require_binding: self.require_binding,
            max_token_bytes: self.max_token_bytes,
            roles_path,
            accepted_crit: self.accepted_crit,
            allow_no_kid: self.allow_no_kid,
            spiffe_issuers: self.spiffe_issuers,
        };
        let cache = (self.cache_capacity > 0).then(|| TokenCache::new(self.cache_capacity));
        let inner = Arc::new(Inner {
            id: NEXT_AUTHENTICATOR_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config,
            settings: self.settings,
            issuers,
            by_issuer,
            cache,
        });
        Ok(JwtAuthenticator { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestKey, jwks};

    fn refused(builder: JwtAuthenticatorBuilder) -> &'static str {
        match builder.build() {
            Err(AuthError::InvalidConfig { what, .. }) => what,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn build_refuses_incomplete_or_contradictory_settings() {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let good = || {
            JwtAuthenticator::builder()
                .issuer(IssuerConfig::static_jwks("https://i", jwks(&[&key])))
                .audience("api")
        };
        assert!(good().build().is_ok());
        assert_eq!(
            refused(JwtAuthenticator::builder().audience("api")),
            "issuers"
        );
        assert_eq!(
            refused(
                JwtAuthenticator::builder()
                    .issuer(IssuerConfig::static_jwks("https://i", jwks(&[&key])))
            ),
            "audience"
        );
        assert_eq!(refused(good().algorithms([])), "algorithms");
        let (s, m) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(refused(good().jwks_ttl_bounds(m, s)), "jwks_ttl_bounds");
        assert_eq!(
            refused(good().jwks_ttl_bounds(Duration::ZERO, m)),
            "jwks_ttl_bounds"
        );
        assert_eq!(
            refused(good().issuer(IssuerConfig::static_jwks("https://i", jwks(&[&key])))),
            "issuer"
        );
        assert_eq!(
            refused(good().issuer(IssuerConfig::static_jwks("", jwks(&[&key])))),
            "issuer"
        );
    }

    #[test]
    fn remote_keys_need_a_tokio_runtime() {
        let remote = JwtAuthenticator::builder()
            .issuer(IssuerConfig::jwks_uri("https://i", "https://i/keys"))
            .audience("api");
        assert_eq!(refused(remote), "runtime");
    }

    #[test]
    fn relaxations_reach_the_configuration() {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let auth = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks("https://i", jwks(&[&key])))
            .allow_any_audience()
            .require_type("application/AT+JWT")
            .allow_missing_kid()
            .token_cache_capacity(0)
            .build()
            .unwrap();
        let config = &auth.inner.config;
        assert!(config.any_audience && config.allow_no_kid);
        assert_eq!(config.required_type.as_deref(), Some("at+jwt"));
        assert!(auth.inner.cache.is_none());
        assert_eq!(auth.issuers().collect::<Vec<_>>(), ["https://i"]);
    }
}
