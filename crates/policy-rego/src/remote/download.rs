//! [`BundleDownloader`]: a policy bundle polled from a bundle server, as OPA's bundle plugin
//! does, and activated through the engine's [`MaterialHolder`] seam.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Bytes;
use zt_rotate::{MaterialHolder, RotationStatus, StatusRecorder, TaskHandle};

use super::service::{Service, remote_error};
use super::{Delays, jittered};
use crate::engine::PolicyEngine;
use crate::error::{PolicyError, Result};

/// The media type a bundle server answers with when it supports long polling (OPA's
/// `application/vnd.openpolicyagent.bundles`).
pub const LONG_POLLING_MEDIA_TYPE: &str = "application/vnd.openpolicyagent.bundles";

/// Builds a [`BundleDownloader`]; see [`BundleDownloader::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct BundleDownloaderBuilder {
    service: Service,
    resource: String,
    name: Option<String>,
    delays: Delays,
    long_polling: Option<Duration>,
    max_bytes: Option<u64>,
}

impl BundleDownloaderBuilder {
    /// The bundle's name in logs, decision logs and status (OPA's key under `bundles`;
    /// default: the resource).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Waits a random time between `min` and `max` between polls (OPA's
    /// `polling.min_delay_seconds` / `max_delay_seconds`; default 60 s and 120 s). Failed
    /// downloads are retried sooner, with a backoff capped at `max`.
    pub fn polling(mut self, min: Duration, max: Duration) -> Self {
        self.delays = Delays::new(min, max);
        self
    }

    /// Asks the server to hold each request up to `wait` until the bundle changes (OPA's
    /// `polling.long_polling_timeout_seconds`, sent as `Prefer: wait=N`). Used only while the
    /// server answers with [`LONG_POLLING_MEDIA_TYPE`]; other servers are polled as usual.
    pub fn long_polling(mut self, wait: Duration) -> Self {
        self.long_polling = Some(wait);
        self
    }

    /// The largest bundle accepted, in bytes (OPA's `size_limit_bytes`; default: the
    /// engine's [`BundleLimits`](crate::BundleLimits) compressed size, 16 MiB).
    pub fn size_limit_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// The downloader, activating what it fetches in `engine`.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] when the service URL and the resource do not make a URL.
    pub fn build(self, engine: PolicyEngine) -> Result<BundleDownloader> {
        let url = self.service.url(&self.resource)?;
        let name = self.name.unwrap_or_else(|| self.resource.clone());
        let max_bytes = self.max_bytes.unwrap_or_else(|| {
            engine
                .options()
                .loader()
                .configured_limits()
                .compressed_bytes_limit()
        });
        Ok(BundleDownloader {
            shared: Arc::new(Shared {
                service: self.service,
                url,
                engine,
                status: StatusRecorder::new("remote policy bundle"),
                name,
                delays: self.delays,
                long_polling: self.long_polling,
                max_bytes,
                state: Mutex::new(State::default()),
                poll: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

/// What one poll of the bundle server did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DownloadOutcome {
    /// The server answered `304 Not Modified` to `If-None-Match`: nothing new.
    NotModified,
    /// A new bundle was downloaded, verified, compiled, its tests passed, and it now decides.
    Activated {
        /// Its revision (from its manifest).
        revision: String,
    },
    /// A bundle was downloaded with the content already in force (a server without ETags).
    Unchanged,
    /// A bundle was downloaded and refused (bad archive, signature, compile error, failing
    /// tests); the set in force keeps deciding and this content is not downloaded again
    /// until its ETag changes.
    Refused {
        /// Why.
        error: PolicyError,
    },
}

/// How one remote bundle is doing, for health endpoints and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BundleStatus {
    /// The bundle's name.
    pub name: String,
    /// Where it is downloaded from.
    pub url: String,
    /// The revision (from the manifest) this downloader last activated; empty before.
    pub revision: String,
    /// The ETag of the last bundle downloaded (activated or refused).
    pub etag: Option<String>,
    /// When the server was last asked.
    pub last_request: Option<SystemTime>,
    /// When the server last answered with a bundle or `304 Not Modified`.
    pub last_successful_download: Option<SystemTime>,
    /// When a downloaded bundle was last activated.
    pub last_activation: Option<SystemTime>,
    /// Requests sent.
    pub requests: u64,
    /// `200` answers (bundles downloaded).
    pub downloads: u64,
    /// `304` answers.
    pub not_modified: u64,
    /// Whether the server answered the last request as a long-polling server.
    pub long_polling: bool,
    /// zt-rotate's shape: `generation` counts activations by this downloader, `last_error`
    /// (with its time) is the last failed download or refused bundle, cleared by the next
    /// success.
    pub rotation: RotationStatus,
}

#[derive(Debug, Default)]
struct State {
    etag: Option<String>,
    revision: String,
    long_polling: bool,
    last_request: Option<SystemTime>,
    last_download: Option<SystemTime>,
    last_activation: Option<SystemTime>,
    requests: u64,
    downloads: u64,
    not_modified: u64,
}

struct Shared {
    engine: PolicyEngine,
    service: Service,
    url: url::Url,
    name: String,
    delays: Delays,
    long_polling: Option<Duration>,
    max_bytes: u64,
    state: Mutex<State>,
    status: StatusRecorder<PolicyError>,
    /// One exchange at a time, so ETag and outcome always belong together.
    poll: tokio::sync::Mutex<()>,
}

/// Polls a bundle server for one bundle and activates what it downloads in a
/// [`PolicyEngine`], the way OPA's bundle plugin does (feature `remote`).
///
/// - **Polling.** A `GET` of the URL every `min..max` (random, so a fleet does not poll in
///   step), with `If-None-Match: <ETag of the last bundle downloaded>`; `304 Not Modified`
///   means nothing new. Failed downloads are retried with a backoff capped at `max`.
/// - **Long polling** (optional): `Prefer: wait=N` and `Accept` naming
///   [`LONG_POLLING_MEDIA_TYPE`]; while the server answers with that media type the next
///   request follows at once.
/// - **Limits.** A deadline per exchange, a size limit on the body (streamed, refused past
///   it), then the engine's [`BundleLimits`](crate::BundleLimits) while reading the archive.
/// - **Verification and activation.** The bytes go through the engine's loader (so a
///   configured [`SignatureVerifier`](crate::SignatureVerifier) verifies `.signatures.json`
///   first, and refuses an unsigned bundle), then [`MaterialHolder::update`]: compiled, its
///   `test_*` rules run, swapped in only when they all pass. A refused bundle is recorded and
///   the set in force keeps deciding; its ETag is remembered, so it is not downloaded and
///   compiled again until it changes.
/// - **Status.** [`status`](Self::status) per bundle (revision, ETag, last download and
///   activation, last error and when); the engine's own
///   [`status`](MaterialHolder::status) records the same refusals and failures.
///
/// ```no_run
/// use std::time::Duration;
/// use policy_rego::{BundleDownloader, PolicyEngine, PolicyOptions, Service, SignatureVerifier};
///
/// # async fn run(public_pem: &[u8]) -> Result<(), policy_rego::PolicyError> {
/// let options = PolicyOptions::new()
///     .verification_key(SignatureVerifier::from_public_key_pem("ES256", public_pem)?);
/// let engine = PolicyEngine::load("/etc/ztkit/bootstrap-bundle", options)?;
/// let service = Service::builder("https://bundles.example.com/v1").build()?;
/// let downloader = BundleDownloader::builder(&service, "authz/bundle.tar.gz")
///     .name("authz")
///     .polling(Duration::from_secs(60), Duration::from_secs(120))
///     .long_polling(Duration::from_secs(300))
///     .build(engine.clone())?;
/// // The first download before serving, then in the background until `task` is dropped.
/// downloader.poll_once().await?;
/// let task = downloader.spawn();
/// # drop(task);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BundleDownloader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BundleDownloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleDownloader")
            .field("name", &self.shared.name)
            .field("url", &self.shared.url.as_str())
            .finish_non_exhaustive()
    }
}

impl BundleDownloader {
    /// A downloader for the bundle at `resource` on `service` (OPA's `bundles.<name>.service`
    /// and `resource`), with OPA's default delays (60–120 s) and no long polling.
    pub fn builder(service: &Service, resource: impl Into<String>) -> BundleDownloaderBuilder {
        BundleDownloaderBuilder {
            service: service.clone(),
            resource: resource.into(),
            name: None,
            delays: Delays::new(Duration::from_secs(60), Duration::from_secs(120)),
            long_polling: None,
            max_bytes: None,
        }
    }

    /// Asks the server once and acts on the answer (see [`DownloadOutcome`]).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Remote`] when the server could not be reached, took too long, sent
    /// more than the size limit or answered with another status than 200 or 304; recorded
    /// in the status (and as a source failure in the engine), the set in force keeps
    /// deciding.
    pub async fn poll_once(&self) -> Result<DownloadOutcome> {
        self.poll_timed().await.map(|(outcome, _)| outcome)
    }

    /// Polls in a tokio task until the handle is dropped or stopped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(&self) -> TaskHandle {
        let this = self.clone();
        TaskHandle::from_tokio(tokio::spawn(async move { this.run().await }))
    }

    /// How this bundle is doing.
    pub fn status(&self) -> BundleStatus {
        let shared = &self.shared;
        let state = shared.state();
        BundleStatus {
            name: shared.name.clone(),
            url: shared.url.as_str().to_owned(),
            revision: state.revision.clone(),
            etag: state.etag.clone(),
            last_request: state.last_request,
            last_successful_download: state.last_download,
            last_activation: state.last_activation,
            requests: state.requests,
            downloads: state.downloads,
            not_modified: state.not_modified,
            long_polling: state.long_polling,
            rotation: shared.status.snapshot(),
        }
    }

    async fn run(self) {
        let mut failures = 0u32;
        loop {
            let delay = match self.poll_timed().await {
                Ok((outcome, took)) => {
                    failures = 0;
                    let long_polled =
                        self.shared.long_polling.is_some() && self.shared.state().long_polling;
                    // A long-polling server answers when something changed or its wait ran
                    // out: ask again at once. One that answers early without news (or lies
                    // about long polling) is polled at the usual pace instead of in a loop.
                    let answered_news = matches!(outcome, DownloadOutcome::Activated { .. });
                    if long_polled && (answered_news || took >= Duration::from_secs(1)) {
                        Duration::ZERO
                    } else {
                        self.shared.delays.next()
                    }
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    self.shared.delays.retry(failures)
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    async fn poll_timed(&self) -> Result<(DownloadOutcome, Duration)> {
        let shared = &self.shared;
        let _one_at_a_time = shared.poll.lock().await;
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        let etag = shared.state().etag.clone();
        if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
            headers.insert(IF_NONE_MATCH, etag);
        }
        let mut deadline = shared.service.timeout;
        if let Some(wait) = shared.long_polling {
            headers.insert(
                ACCEPT,
                HeaderValue::from_static(
                    "application/vnd.openpolicyagent.bundles, application/gzip;q=0.9",
                ),
            );
            if let Ok(prefer) = HeaderValue::from_str(&format!("wait={}", wait.as_secs().max(1))) {
                headers.insert("prefer", prefer);
            }
            deadline += wait;
        } else {
            headers.insert(ACCEPT, HeaderValue::from_static("application/gzip"));
        }
        {
            let mut state = shared.state();
            state.requests += 1;
            state.last_request = Some(SystemTime::now());
        }
        let url = &shared.url;
        let reply = shared
            .service
            .exchange(
                Method::GET,
                url,
                headers,
                Bytes::new(),
                deadline,
                shared.max_bytes,
            )
            .await;
        let outcome = match reply {
            Ok(reply) if reply.status == StatusCode::NOT_MODIFIED => {
                let mut state = shared.state();
                state.not_modified += 1;
                state.last_download = Some(SystemTime::now());
                state.long_polling = is_long_polling(reply.header(CONTENT_TYPE));
                drop(state);
                shared.status.record_success();
                Ok(DownloadOutcome::NotModified)
            }
            Ok(reply) if reply.status == StatusCode::OK => {
                {
                    let mut state = shared.state();
                    state.downloads += 1;
                    state.last_download = Some(SystemTime::now());
                    state.etag = reply.header(ETAG).map(str::to_owned);
                    state.long_polling = is_long_polling(reply.header(CONTENT_TYPE));
                }
                Ok(self.activate(reply.body).await)
            }
            Ok(reply) => Err(remote_error(url, format!("status {}", reply.status))),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(outcome) => Ok((outcome, started.elapsed())),
            Err(error) => {
                shared.status.record_failure(error.clone());
                shared.engine.source_failed(error.clone());
                Err(error)
            }
        }
    }

    /// Loads, verifies, compiles and tests `bytes` off the async threads, then swaps them in.
    async fn activate(&self, bytes: Vec<u8>) -> DownloadOutcome {
        let shared = Arc::clone(&self.shared);
        let job = tokio::task::spawn_blocking(move || {
            let engine = &shared.engine;
            let before = engine.status().generation;
            let result = match engine.options().loader().load_tar_gz(&shared.name, &bytes) {
                Ok(bundle) => engine.update(bundle),
                Err(error) => {
                    engine.refuse(&shared.name, error.clone());
                    Err(error)
                }
            };
            (
                result,
                before != engine.status().generation,
                engine.revision(),
            )
        });
        let (result, changed, revision) = match job.await {
            Ok(done) => done,
            Err(e) => (
                Err(PolicyError::Remote {
                    url: self.shared.url.as_str().to_owned(),
                    reason: format!("activation did not finish: {e}"),
                }),
                false,
                String::new(),
            ),
        };
        let shared = &self.shared;
        match result {
            Ok(()) if changed => {
                shared.status.record_published();
                let mut state = shared.state();
                state.revision = revision.clone();
                state.last_activation = Some(SystemTime::now());
                DownloadOutcome::Activated { revision }
            }
            Ok(()) => {
                shared.status.record_success();
                DownloadOutcome::Unchanged
            }
            Err(error) => {
                shared.status.record_failure(error.clone());
                DownloadOutcome::Refused { error }
            }
        }
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn is_long_polling(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(LONG_POLLING_MEDIA_TYPE))
    })
}

/// Jitter for everything that waits here.
impl Delays {
    /// The wait before the next regular poll or upload.
    pub(crate) fn next(&self) -> Duration {
        jittered(self.min, self.max)
    }

    /// The wait before retry number `n` (1, 2, …): 100 ms doubling, capped at `max`, the
    /// upper half of it at random.
    pub(crate) fn retry(&self, n: u32) -> Duration {
        let cap = Duration::from_millis(100)
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        jittered(cap / 2, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_polling_media_type_is_recognised_with_parameters() {
        assert!(is_long_polling(Some(
            "application/vnd.openpolicyagent.bundles"
        )));
        assert!(is_long_polling(Some(
            "Application/Vnd.OpenPolicyAgent.Bundles; charset=x"
        )));
        assert!(!is_long_polling(Some("application/gzip")));
        assert!(!is_long_polling(None));
    }

    #[test]
    fn retries_back_off_up_to_the_maximum() {
        let d = Delays::new(Duration::from_secs(1), Duration::from_secs(2));
        assert!(d.retry(1) <= Duration::from_millis(100));
        assert!(d.retry(1) >= Duration::from_millis(50));
        assert!(d.retry(40) <= Duration::from_secs(2));
        assert!(d.retry(40) >= Duration::from_secs(1));
        for _ in 0..100 {
            let n = d.next();
            assert!(
                n >= Duration::from_secs(1) && n <= Duration::from_secs(2),
                "{n:?}"
            );
        }
    }
}
