//! [`JwtAuthenticator`]: the validator. Its parts live in `authenticator/`: [`IssuerConfig`]
//! (`issuer`), the header checks and their per-thread memo (`header`), validation and
//! [`RequestContext`] (`validation`), and [`JwtAuthenticatorBuilder`] (`builder`).

mod builder;
mod header;
mod holder;
mod issuer;
mod validation;

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::untrusted;
use crate::key_cache::{
    IssuerState, KeyCacheSettings, KeySetStatus, RefreshHost, background_refresh,
};
use crate::token_cache::TokenCache;
use crate::{Algorithm, AuthError, Claims};

pub use builder::JwtAuthenticatorBuilder;
pub use holder::IssuerKeys;
pub use issuer::IssuerConfig;
use validation::Step;

/// Owns the background refresh of an authenticator's remote keys
/// ([`JwtAuthenticator::spawn_refresher`]): the task stops when the handle is dropped.
pub type RefreshHandle = zt_rotate::TaskHandle;
pub use validation::{CustomCheck, RequestContext, ValidateToken};

/// Source of [`Inner::id`].
static NEXT_AUTHENTICATOR_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) struct Config {
    audiences: Vec<Box<str>>,
    any_audience: bool,
    allowed: Vec<Algorithm>,
    required_type: Option<Box<str>>,
    leeway: u64,
    max_age: Option<u64>,
    required_claims: Vec<Box<str>>,
    required_scopes: Vec<Box<str>>,
    custom: Option<Arc<CustomCheck>>,
    require_binding: bool,
    max_token_bytes: usize,
    roles_path: Option<Arc<[Box<str>]>>,
    accepted_crit: Vec<Box<str>>,
    allow_no_kid: bool,
    /// Issuers are SPIFFE trust domains chosen by the `sub` (JWT-SVIDs), not by `iss`.
    spiffe_issuers: bool,
}

pub(crate) struct Inner {
    /// Unique per authenticator: keys the per-thread header memo.
    id: u64,
    config: Config,
    settings: KeyCacheSettings,
    issuers: Vec<IssuerState>,
    by_issuer: HashMap<Box<str>, usize>,
    cache: Option<TokenCache>,
}

impl RefreshHost for Inner {
    fn issuer(&self, index: usize) -> Option<&IssuerState> {
        self.issuers.get(index)
    }
    fn settings(&self) -> &KeyCacheSettings {
        &self.settings
    }
    fn allowed(&self) -> &[Algorithm] {
        &self.config.allowed
    }
    fn token_cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }
}

/// Validates JWT access tokens from one or more issuers.
///
/// Cheap to clone (an `Arc`). Build it with [`JwtAuthenticator::builder`]. Remote key sources
/// are fetched on first use and on an unknown `kid`; refreshing them before they expire is
/// the job of the task [`JwtAuthenticator::spawn_refresher`] starts, owned by the handle it
/// returns.
#[derive(Clone)]
pub struct JwtAuthenticator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field(
                "issuers",
                &self
                    .inner
                    .issuers
                    .iter()
                    .map(|i| &*i.issuer)
                    .collect::<Vec<_>>(),
            )
            .field("audiences", &self.inner.config.audiences)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// A builder with strict defaults.
    #[must_use]
    pub fn builder() -> JwtAuthenticatorBuilder {
        JwtAuthenticatorBuilder::default()
    }

    /// Validates `token` (the bearer token, without `Bearer `) for a request.
    ///
    /// Waits only when the token's `kid` is not in the issuer's cached keys: then the keys are
    /// refreshed at most once per cooldown, with concurrent misses sharing one fetch.
    ///
    /// # Errors
    /// An [`AuthError`] saying why the token is refused; map it to a response with
    /// [`AuthError::bearer_error`].
    pub async fn validate(
        &self,
        token: &str,
        ctx: &RequestContext,
    ) -> Result<Arc<Claims>, AuthError> {
        match self.validate_step(token, ctx) {
            Step::Done(result) => result,
            Step::NeedKeys {
                issuer, generation, ..
            } => {
                let inner = &*self.inner;
                if let Some(state) = inner.issuers.get(issuer) {
                    state
                        .refresh_after_miss(
                            generation,
                            &inner.settings,
                            &inner.config.allowed,
                            inner.cache.as_ref(),
                        )
                        .await;
                }
                match self.validate_step(token, ctx) {
                    Step::Done(result) => result,
                    Step::NeedKeys { err, .. } => Err(err),
                }
            }
        }
    }

    /// Loads the keys of every issuer that has none yet (for example at startup, to fail
    /// fast or to warm the cache).
    ///
    /// # Errors
    /// The first issuer's fetch or discovery error.
    pub async fn ensure_keys(&self) -> Result<(), AuthError> {
        let inner = &*self.inner;
        for issuer in &inner.issuers {
            issuer
                .ensure_loaded(&inner.settings, &inner.config.allowed, inner.cache.as_ref())
                .await?;
        }
        Ok(())
    }

    /// Refreshes one issuer's keys now, ignoring the cooldown. A failed refresh keeps the last
    /// good keys.
    ///
    /// # Errors
    /// [`AuthError::UnknownIssuer`] when `issuer` is not configured; the fetch or JWKS error.
    pub async fn refresh(&self, issuer: &str) -> Result<(), AuthError> {
        let inner = &*self.inner;
        let state = inner
            .by_issuer
            .get(issuer)
            .and_then(|i| inner.issuers.get(*i))
            .ok_or_else(|| AuthError::UnknownIssuer {
                iss: untrusted(issuer),
            })?;
        state
            .refresh_now(&inner.settings, &inner.config.allowed, inner.cache.as_ref())
            .await
    }

    /// The state of one issuer's keys.
    #[must_use]
    pub fn key_status(&self, issuer: &str) -> Option<KeySetStatus> {
        let inner = &*self.inner;
        inner
            .by_issuer
            .get(issuer)
            .and_then(|i| inner.issuers.get(*i))
            .map(IssuerState::status)
    }

    /// The configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.inner.issuers.iter().map(|i| &*i.issuer)
    }

    /// Starts refreshing every remote issuer's keys in the background, shortly before they
    /// expire (80 % of their TTL) and with capped backoff after a failure, on the current
    /// Tokio runtime. The task stops when the returned handle is dropped or stopped (or when
    /// every clone of the authenticator is gone). Without it keys are still fetched on first
    /// use and on an unknown `kid`, but not renewed, so they go stale after
    /// [`max_key_staleness`](JwtAuthenticatorBuilder::max_key_staleness) and tokens are then
    /// refused (fail closed). An authenticator with only static keys gets an inert handle.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), jwt_oidc::AuthError> {
    /// use jwt_oidc::{IssuerConfig, JwtAuthenticator};
    ///
    /// let auth = JwtAuthenticator::builder()
    ///     .issuer(IssuerConfig::discover("https://idp.example.com/realms/main"))
    ///     .audience("orders-api")
    ///     .build()?;
    /// let _refresher = auth.spawn_refresher()?; // keep it as long as `auth` serves
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] outside a Tokio runtime.
    pub fn spawn_refresher(&self) -> Result<RefreshHandle, AuthError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| AuthError::InvalidConfig {
                what: "runtime",
                reason: "spawn_refresher() must run inside a Tokio runtime".into(),
            })?;
        let refreshable: Vec<(usize, Arc<tokio::sync::Notify>)> = self
            .inner
            .issuers
            .iter()
            .enumerate()
            .filter(|(_, issuer)| issuer.is_refreshable())
            .map(|(i, issuer)| (i, Arc::clone(&issuer.wake)))
            .collect();
        if refreshable.is_empty() {
            return Ok(RefreshHandle::inert());
        }
        let host = Arc::downgrade(&self.inner);
        let task = runtime.spawn(async move {
            // Dropped with this task when the handle aborts it, aborting every issuer's loop.
            let mut loops = tokio::task::JoinSet::new();
            for (index, wake) in refreshable {
                loops.spawn(background_refresh(host.clone(), index, wake));
            }
            while loops.join_next().await.is_some() {}
        });
        Ok(RefreshHandle::from_tokio(task))
    }

    /// The key set of `issuer` as a [`MaterialHolder`](zt_rotate::MaterialHolder): a source
    /// of your own can push JWKS documents into it (see [`IssuerKeys`]).
    #[must_use]
    pub fn issuer_keys(&self, issuer: &str) -> Option<IssuerKeys> {
        let index = self.inner.by_issuer.get(issuer).copied()?;
        Some(IssuerKeys {
            inner: Arc::clone(&self.inner),
            index,
        })
    }

    /// Entries in the verified-token cache (0 when it is disabled).
    #[must_use]
    pub fn token_cache_len(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, TokenCache::len)
    }
}
