//! One issuer's key cache: the published key set (an `ArcSwap` the hot path only loads), the
//! refresh procedure (serialised by an async mutex, so concurrent misses share one fetch),
//! the cooldown for unknown `kid`s, the staleness limit, and the background refresher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;
use zt_rotate::{RotationStatus, StatusRecorder};

use crate::jwks::{Jwks, SkippedKey, VerifyingKey};
use crate::source::{JwksDocument, JwksSource};
use crate::token_cache::TokenCache;
use crate::{Algorithm, AuthError};

/// Timing of the key cache; defaults in [`crate::JwtAuthenticatorBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct KeyCacheSettings {
    pub(crate) ttl_floor: Duration,
    pub(crate) ttl_ceiling: Duration,
    pub(crate) default_ttl: Duration,
    pub(crate) unknown_kid_cooldown: Duration,
    pub(crate) max_staleness: Duration,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
}

impl Default for KeyCacheSettings {
    fn default() -> Self {
        Self {
            ttl_floor: Duration::from_secs(60),
            ttl_ceiling: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(600),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_staleness: Duration::from_secs(3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// What the hot path reads.
#[derive(Default)]
pub(crate) struct KeySnapshot {
    pub(crate) generation: u64,
    pub(crate) by_kid: HashMap<Box<str>, Vec<Arc<VerifyingKey>>>,
    pub(crate) all: Vec<Arc<VerifyingKey>>,
    pub(crate) loaded: bool,
    /// After this instant (request time) the keys are too old to use; `None` = never.
    pub(crate) stale_after: Option<SystemTime>,
}

impl KeySnapshot {
    /// The keys with this `kid`: a linear scan for small sets (cheaper than hashing).
    pub(crate) fn keys_for(&self, kid: &str) -> Option<&[Arc<VerifyingKey>]> {
        if self.all.len() <= 8 {
            let start = self.all.iter().position(|k| k.kid() == Some(kid))?;
            let rest = self.all.get(start..)?;
            let len = rest.iter().take_while(|k| k.kid() == Some(kid)).count();
            if len == rest.iter().filter(|k| k.kid() == Some(kid)).count() {
                return rest.get(..len);
            }
        }
        self.by_kid.get(kid).map(Vec::as_slice)
    }

    fn new(generation: u64, keys: Vec<Arc<VerifyingKey>>, stale_after: Option<SystemTime>) -> Self {
        let mut by_kid: HashMap<Box<str>, Vec<Arc<VerifyingKey>>> = HashMap::new();
        for k in &keys {
            if let Some(kid) = k.kid() {
                by_kid.entry(kid.into()).or_default().push(Arc::clone(k));
            }
        }
        Self {
            generation,
            by_kid,
            all: keys,
            loaded: true,
            stale_after,
        }
    }
}

/// The state of one issuer's keys, for operators and tests.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeySetStatus {
    /// The issuer.
    pub issuer: String,
    /// Where the keys come from (URL, `static`, or the source's description).
    pub source: String,
    /// `kid`s of the keys in use (keys without `kid` appear as `""`).
    pub key_ids: Vec<String>,
    /// Bumped on every successful load.
    pub generation: u64,
    /// When the keys in use were fetched (`None`: never, or static).
    pub fetched_at: Option<SystemTime>,
    /// How long the last document may be cached, after clamping.
    pub ttl: Option<Duration>,
    /// Request times after this refuse tokens (fail closed); `None` for static keys.
    pub stale_after: Option<SystemTime>,
    /// Fetch attempts so far.
    pub fetches: u64,
    /// Failed fetch attempts so far (fetch errors and rejected documents).
    pub failures: u64,
    /// The last error, cleared by the next successful load.
    pub last_error: Option<AuthError>,
    /// Keys of the last good document that were skipped, with reasons.
    pub skipped: Vec<SkippedKey>,
    /// The status every ztkit material holder reports. Its `generation` counts key sets
    /// that changed what serves (a refetch of the same keys is a success, not a new
    /// generation), where [`KeySetStatus::generation`] counts every successful load.
    pub rotation: RotationStatus,
}

#[derive(Default)]
struct RefreshBook {
    last_attempt: Option<Instant>,
    /// Last refresh caused by an unknown `kid` (the cooldown counts from here, so a scheduled
    /// refresh just before a rotation does not delay the new key).
    last_miss_refresh: Option<Instant>,
    next_refresh: Option<Instant>,
    consecutive_failures: u32,
}

#[derive(Default)]
struct Counters {
    fetched_at: Option<SystemTime>,
    ttl: Option<Duration>,
    fetches: u64,
    failures: u64,
    last_error: Option<AuthError>,
    skipped: Vec<SkippedKey>,
}

pub(crate) struct IssuerState {
    pub(crate) issuer: Box<str>,
    pub(crate) snapshot: ArcSwap<KeySnapshot>,
    source: Option<Arc<dyn JwksSource>>,
    book: tokio::sync::Mutex<RefreshBook>,
    /// Also serialises publications (a refresh and a pushed document).
    counters: Mutex<Counters>,
    recorder: StatusRecorder<AuthError>,
    pub(crate) wake: Arc<Notify>,
}

impl IssuerState {
    pub(crate) fn with_source(issuer: String, source: Arc<dyn JwksSource>) -> Self {
        Self {
            issuer: issuer.into(),
            snapshot: ArcSwap::from_pointee(KeySnapshot::default()),
            source: Some(source),
            book: tokio::sync::Mutex::new(RefreshBook::default()),
            counters: Mutex::new(Counters::default()),
            recorder: StatusRecorder::new("JWKS"),
            wake: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn with_static(issuer: String, jwks: Jwks) -> Self {
        let skipped = jwks.skipped().to_vec();
        let keys = jwks.into_keys();
        Self {
            issuer: issuer.into(),
            snapshot: ArcSwap::from_pointee(KeySnapshot::new(1, keys, None)),
            source: None,
            book: tokio::sync::Mutex::new(RefreshBook::default()),
            counters: Mutex::new(Counters {
                skipped,
                ..Counters::default()
            }),
            recorder: StatusRecorder::loaded("JWKS"),
            wake: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn is_refreshable(&self) -> bool {
        self.source.is_some()
    }

    pub(crate) fn status(&self) -> KeySetStatus {
        let snap = self.snapshot.load();
        let c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        KeySetStatus {
            issuer: self.issuer.to_string(),
            source: self
                .source
                .as_ref()
                .map_or_else(|| "static".to_owned(), |s| s.describe()),
            key_ids: snap
                .all
                .iter()
                .map(|k| k.kid().unwrap_or_default().to_owned())
                .collect(),
            generation: snap.generation,
            fetched_at: c.fetched_at,
            ttl: c.ttl,
            stale_after: snap.stale_after,
            fetches: c.fetches,
            failures: c.failures,
            last_error: c.last_error.clone(),
            skipped: c.skipped.clone(),
            rotation: self.recorder.snapshot(),
        }
    }

    /// Refreshes after a miss (unknown `kid` or keys never loaded), unless another refresh
    /// happened since the miss was seen or the cooldown has not passed. Concurrent callers
    /// queue on the lock and find the work done.
    pub(crate) async fn refresh_after_miss(
        &self,
        seen_generation: u64,
        settings: &KeyCacheSettings,
        allowed: &[Algorithm],
        cache: Option<&TokenCache>,
    ) {
        if self.source.is_none() {
            return;
        }
        let mut book = self.book.lock().await;
        let snap = self.snapshot.load();
        if snap.generation != seen_generation {
            return;
        }
        if snap.loaded {
            if book
                .last_miss_refresh
                .is_some_and(|t| t.elapsed() < settings.unknown_kid_cooldown)
            {
                return;
            }
            book.last_miss_refresh = Some(Instant::now());
        } else if book
            .last_attempt
            .is_some_and(|t| t.elapsed() < settings.retry_min)
        {
            return;
        }
        drop(snap);
        let _ = self
            .refresh_locked(&mut book, settings, allowed, cache)
            .await;
    }

    /// Refreshes now, whatever the cooldown.
    pub(crate) async fn refresh_now(
        &self,
        settings: &KeyCacheSettings,
        allowed: &[Algorithm],
        cache: Option<&TokenCache>,
    ) -> Result<(), AuthError> {
        if self.source.is_none() {
            return Ok(());
        }
        let mut book = self.book.lock().await;
        self.refresh_locked(&mut book, settings, allowed, cache)
            .await
    }

    /// Loads keys unless some are loaded already.
    pub(crate) async fn ensure_loaded(
        &self,
        settings: &KeyCacheSettings,
        allowed: &[Algorithm],
        cache: Option<&TokenCache>,
    ) -> Result<(), AuthError> {
        if self.source.is_none() {
            return Ok(());
        }
        let mut book = self.book.lock().await;
        if self.snapshot.load().loaded {
            return Ok(());
        }
        self.refresh_locked(&mut book, settings, allowed, cache)
            .await
    }

    async fn refresh_locked(
        &self,
        book: &mut RefreshBook,
        settings: &KeyCacheSettings,
        allowed: &[Algorithm],
        cache: Option<&TokenCache>,
    ) -> Result<(), AuthError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        book.last_attempt = Some(Instant::now());
        let fetched = source.fetch().await;
        match self.apply(fetched, settings, allowed, cache) {
            Ok(ttl) => {
                book.next_refresh = Some(Instant::now() + ttl.mul_f64(0.8));
                book.consecutive_failures = 0;
                Ok(())
            }
            Err(e) => {
                book.consecutive_failures = book.consecutive_failures.saturating_add(1);
                let backoff = settings
                    .retry_min
                    .saturating_mul(1u32 << book.consecutive_failures.min(16).saturating_sub(1))
                    .min(settings.retry_max);
                book.next_refresh = Some(Instant::now() + backoff);
                tracing::debug!(issuer = %self.issuer, error = %e, retry_in = ?backoff, "JWKS refresh failed");
                Err(e)
            }
        }
    }

    /// Takes a document (fetched by the source or pushed through
    /// [`crate::IssuerKeys`]): parses and validates it whole, then publishes its keys; or
    /// records why there is none. The last good keys stay on any error. Returns the
    /// document's TTL after clamping.
    pub(crate) fn apply(
        &self,
        document: Result<JwksDocument, AuthError>,
        settings: &KeyCacheSettings,
        allowed: &[Algorithm],
        cache: Option<&TokenCache>,
    ) -> Result<Duration, AuthError> {
        let result = document
            .and_then(|doc| Jwks::parse_with(&doc.body, allowed).map(|jwks| (jwks, doc.max_age)));
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.fetches += 1;
        match result {
            Ok((jwks, max_age)) => {
                let ttl = max_age
                    .unwrap_or(settings.default_ttl)
                    .clamp(settings.ttl_floor, settings.ttl_ceiling);
                let skipped = jwks.skipped().to_vec();
                for s in &skipped {
                    tracing::debug!(issuer = %self.issuer, kid = ?s.kid, reason = s.reason, "JWKS key skipped");
                }
                let old = self.snapshot.load_full();
                let keys: Vec<Arc<VerifyingKey>> = jwks
                    .into_keys()
                    .into_iter()
                    .map(|new| {
                        old.all
                            .iter()
                            .find(|o| o.same_key_as(&new))
                            .map_or(new, Arc::clone)
                    })
                    .collect();
                let mut retired = 0usize;
                for o in &old.all {
                    if !keys.iter().any(|k| Arc::ptr_eq(k, o)) {
                        o.retire();
                        retired += 1;
                    }
                }
                let unchanged = old.loaded
                    && keys.len() == old.all.len()
                    && keys.iter().zip(&old.all).all(|(k, o)| Arc::ptr_eq(k, o));
                if unchanged {
                    self.recorder.record_success();
                } else {
                    self.recorder.record_published();
                }
                let now = SystemTime::now();
                let stale_after = now.checked_add(settings.max_staleness);
                self.snapshot.store(Arc::new(KeySnapshot::new(
                    old.generation + 1,
                    keys,
                    stale_after,
                )));
                if retired > 0
                    && let Some(cache) = cache
                {
                    cache.sweep(unix_secs(now));
                }
                counters.fetched_at = Some(now);
                counters.ttl = Some(ttl);
                counters.last_error = None;
                counters.skipped = skipped;
                tracing::debug!(issuer = %self.issuer, ttl = ?ttl, retired, "JWKS loaded");
                Ok(ttl)
            }
            Err(e) => {
                counters.failures += 1;
                counters.last_error = Some(e.clone());
                // Logged once per distinct error (a provider down for an hour is one line).
                self.recorder.record_failure(e.clone());
                Err(e)
            }
        }
    }

    /// A source could not produce a document at all (pushed from outside).
    pub(crate) fn source_failed(&self, error: AuthError) {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.failures += 1;
        counters.last_error = Some(error.clone());
        self.recorder.record_failure(error);
    }

    pub(crate) fn rotation_status(&self) -> RotationStatus {
        self.recorder.snapshot()
    }

    async fn next_refresh(&self) -> Instant {
        self.book
            .lock()
            .await
            .next_refresh
            .unwrap_or_else(Instant::now)
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the background refresher needs from the authenticator, held weakly.
pub(crate) trait RefreshHost: Send + Sync + 'static {
    fn issuer(&self, index: usize) -> Option<&IssuerState>;
    fn settings(&self) -> &KeyCacheSettings;
    fn allowed(&self) -> &[Algorithm];
    fn token_cache(&self) -> Option<&TokenCache>;
}

/// Refreshes issuer `index` shortly before its keys expire (and retries with capped
/// backoff after failures) until the authenticator is dropped.
pub(crate) async fn background_refresh<H: RefreshHost>(
    host: Weak<H>,
    index: usize,
    wake: Arc<Notify>,
) {
    loop {
        let due = {
            let Some(h) = host.upgrade() else { return };
            let Some(issuer) = h.issuer(index) else {
                return;
            };
            issuer.next_refresh().await
        };
        if Instant::now() < due {
            // Woken early by a forced refresh or by the deadline; either way re-check.
            let _ = tokio::time::timeout_at(due, wake.notified()).await;
            continue;
        }
        let Some(h) = host.upgrade() else { return };
        let Some(issuer) = h.issuer(index) else {
            return;
        };
        let mut book = issuer.book.lock().await;
        if book.next_refresh.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let _ = issuer
            .refresh_locked(&mut book, h.settings(), h.allowed(), h.token_cache())
            .await;
    }
}
