//! [`JwtAuthenticator`]: the validator. Its parts live in `authenticator/`: [`IssuerConfig`]
//! (`issuer`), the header checks and their per-thread memo (`header`), validation and
//! [`RequestContext`] (`validation`), and [`JwtAuthenticatorBuilder`] (`builder`).

mod builder;
mod header;
mod issuer;
mod validation;

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::untrusted;
use crate::key_cache::{IssuerState, KeyCacheSettings, KeySetStatus, RefreshHost};
use crate::token_cache::TokenCache;
use crate::{Algorithm, AuthError, Claims};

pub use builder::JwtAuthenticatorBuilder;
pub use issuer::IssuerConfig;
use validation::Step;
pub use validation::{CustomCheck, RequestContext};

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
}

pub(crate) struct Inner {
    /// Unique per authenticator: keys the per-thread header memo.
    id: u64,
    config: Config,
    settings: KeyCacheSettings,
    issuers: Vec<IssuerState>,
    by_issuer: HashMap<Box<str>, usize>,
    cache: Option<TokenCache>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
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
/// are refreshed by background tasks on the Tokio runtime `build` ran in; they stop when the
/// last clone is dropped.
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

    /// Entries in the verified-token cache (0 when it is disabled).
    #[must_use]
    pub fn token_cache_len(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, TokenCache::len)
    }
}
