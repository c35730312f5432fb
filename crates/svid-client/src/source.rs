//! [`SvidSource`]: X.509-SVIDs from the SPIFFE Workload API, fed into mtls-verify's holders.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use futures_util::{Stream, StreamExt};
use mtls_verify::{
    ClientTls, ClientTlsBuilder, MaterialHolder, PeerIdentity, RotationStatus, ServerTls,
    ServerTlsBuilder, TlsMaterial, TrustDomainPolicy,
};
use spiffe::transport::Endpoint;
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tokio::time::Instant;
use zt_rotate::{StatusRecorder, TaskHandle};

use crate::Error;
use crate::bundle_endpoint::BundleEndpoint;
use mtls_verify::pem::SpiffeBundle;
use std::collections::BTreeMap;

/// How long [`SvidSourceBuilder::connect`] waits for the first X.509-SVID by default.
pub const DEFAULT_FIRST_SVID_TIMEOUT: Duration = Duration::from_secs(30);
/// First delay before reconnecting to the Workload API (doubled per failure, jittered).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);
/// The environment variable naming the Workload API address.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

type TlsHolder = Box<dyn MaterialHolder<Material = TlsMaterial, Error = mtls_verify::Error>>;
type ContextStream = Pin<Box<dyn Stream<Item = Result<X509Context, WorkloadApiError>> + Send>>;

// === SvidSourceBuilder ===

/// Configures and connects an [`SvidSource`].
#[derive(Clone, Debug)]
pub struct SvidSourceBuilder {
    address: Option<String>,
    hint: Option<String>,
    expiry_warning: Option<Duration>,
    first_svid_timeout: Duration,
    reconnect: (Duration, Duration),
}

impl Default for SvidSourceBuilder {
    fn default() -> Self {
        SvidSourceBuilder {
            address: None,
            hint: None,
            expiry_warning: None,
            first_svid_timeout: DEFAULT_FIRST_SVID_TIMEOUT,
            reconnect: (DEFAULT_RECONNECT_MIN, DEFAULT_RECONNECT_MAX),
        }
    }
}

impl SvidSourceBuilder {
    /// The Workload API address: `unix:/path/to/socket` or `tcp:IP:port`. Default: the
    /// value of `SPIFFE_ENDPOINT_SOCKET` when [`connect`](Self::connect) runs.
    pub fn endpoint(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Uses the SVID with this hint (an operator-chosen label, for workloads given several
    /// SVIDs) instead of the default one, the first of each update. An update without an
    /// SVID of that hint is refused.
    pub fn svid_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// When the current SVID has less than `window` left and no renewal came, a warning is
    /// logged and recorded in [`SvidSource::status`] ([`Error::NotRenewed`]), and again when
    /// it expires. Default: a quarter of the SVID's lifetime (SPIRE renews at half).
    pub fn expiry_warning(mut self, window: Duration) -> Self {
        self.expiry_warning = Some(window);
        self
    }

    /// How long `connect` waits for the first usable X.509-SVID, retrying (with backoff) an
    /// agent that is not there yet. Default [`DEFAULT_FIRST_SVID_TIMEOUT`].
    pub fn first_svid_timeout(mut self, timeout: Duration) -> Self {
        self.first_svid_timeout = timeout;
        self
    }

    /// Reconnection delays: the first, doubled per failed attempt up to `max`, each
    /// jittered down by up to half. Default [`DEFAULT_RECONNECT_MIN`] to
    /// [`DEFAULT_RECONNECT_MAX`].
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = (min.max(Duration::from_millis(1)), max.max(min));
        self
    }

    /// Connects, waits for the first usable X.509-SVID, then follows the Workload API stream
    /// in a background task (on the current tokio runtime) owned by the returned source.
    ///
    /// # Errors
    /// [`Error::NoEndpoint`] / [`Error::InvalidEndpoint`] at once for a missing or bad
    /// address. Otherwise it retries until the first-SVID timeout and then returns why it
    /// got nothing: [`Error::NoAgentSocket`], [`Error::AgentUnreachable`],
    /// [`Error::NoIdentity`], an [`Error::InvalidUpdate`] / [`Error::Tls`] for refused
    /// material, or [`Error::FirstSvidTimeout`] when the agent answered nothing at all.
    pub async fn connect(self) -> Result<SvidSource, Error> {
        let (address, endpoint) = resolve(self.address.clone())?;
        let hint = self.hint.as_deref();
        let (stream, first) = first_within(
            self.first_svid_timeout,
            self.reconnect,
            || Error::FirstSvidTimeout {
                endpoint: address.clone(),
                waited: self.first_svid_timeout,
            },
            async |last_error| first_svid(&endpoint, &address, hint, last_error).await,
        )
        .await?;
        let shared = Arc::new(Shared {
            address,
            hint: self.hint,
            expiry_warning: self.expiry_warning,
            current: Mutex::new(Current {
                published: first.pem.clone(),
                svid: first,
                holders: Vec::new(),
                reported: Expiry::Fresh,
                endpoint_bundles: BTreeMap::new(),
            }),
            status: StatusRecorder::loaded("X.509-SVID"),
        });
        let task = TaskHandle::from_tokio(tokio::spawn(follow(
            shared.clone(),
            endpoint,
            stream,
            self.reconnect,
        )));
        Ok(SvidSource { shared, task })
    }
}

/// The address given, else `SPIFFE_ENDPOINT_SOCKET`, and its parsed form.
pub(crate) fn resolve(address: Option<String>) -> Result<(String, Endpoint), Error> {
    let address = match address {
        Some(address) => address,
        None => std::env::var(ENDPOINT_ENV).map_err(|_| Error::NoEndpoint)?,
    };
    let endpoint = Endpoint::parse(&address).map_err(|e| Error::InvalidEndpoint {
        address: address.clone(),
        reason: error_chain(&e),
    })?;
    Ok((address, endpoint))
}

#[cfg(feature = "jwt")]
impl SvidSourceBuilder {
    /// The address (unresolved), the first-material timeout and the reconnection backoff,
    /// for the JWT source.
    pub(crate) fn settings(&self) -> (Option<String>, Duration, (Duration, Duration)) {
        (
            self.address.clone(),
            self.first_svid_timeout,
            self.reconnect,
        )
    }
}

// === SvidSource ===

/// X.509-SVIDs from the SPIFFE Workload API, rotating into mtls-verify's [`ServerTls`] and
/// [`ClientTls`] holders (through [`MaterialHolder`], as files feed them).
///
/// Dropping the source stops following the Workload API (its task is owned by a
/// `zt_rotate::TaskHandle`); holders built from it keep serving their last material.
///
/// ```no_run
/// use svid_client::SvidSource;
///
/// # async fn run() -> Result<(), svid_client::Error> {
/// let source = SvidSource::builder().connect().await?; // SPIFFE_ENDPOINT_SOCKET
/// let tls = source.server_tls(|builder| builder)?;      // rotates with every new SVID
/// let config = tls.config(); // an Arc<rustls::ServerConfig> for the acceptor
/// # let _ = config; Ok(()) }
/// ```
#[must_use = "dropping the source stops following the Workload API"]
pub struct SvidSource {
    shared: Arc<Shared>,
    task: TaskHandle,
}

impl fmt::Debug for SvidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidSource")
            .field("endpoint", &self.shared.address)
            .field("status", &self.status())
            .field("running", &self.task.is_running())
            .finish()
    }
}

/// The current SVID and how rotation goes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SvidStatus {
    /// The current X.509-SVID's leaf (its SPIFFE ID, serial, expiry…).
    pub identity: PeerIdentity,
    /// Generation, last success, last error (the shared `zt-rotate` shape).
    pub rotation: RotationStatus,
}

impl SvidSource {
    /// A builder (address from `SPIFFE_ENDPOINT_SOCKET`, [`DEFAULT_FIRST_SVID_TIMEOUT`]).
    pub fn builder() -> SvidSourceBuilder {
        SvidSourceBuilder::default()
    }

    /// A [`ServerTls`] serving the current SVID, kept up to date by this source. Its bundle
    /// set is the update's: the SVID's own trust domain's bundle and the federated ones. It
    /// is built with SPIFFE trust under the local-only [`TrustDomainPolicy`] (override it in
    /// `configure` with `trust_domain_policy`) and refuses new handshakes once its SVID
    /// expired without renewal. `configure` sets the rest (authorizer, ALPN…); CRLs set there
    /// are dropped by the first rotation (SVIDs are short-lived and carry none).
    ///
    /// # Errors
    /// [`Error::Tls`] when mtls-verify refuses the material or the configuration (for
    /// instance a policy that allows no bundle of the set).
    pub fn server_tls(
        &self,
        configure: impl FnOnce(ServerTlsBuilder) -> ServerTlsBuilder,
    ) -> Result<ServerTls, Error> {
        self.build_holder(|pem| {
            let mut builder = ServerTlsBuilder::from_pem(&pem.chain, &pem.key, &pem.ca)
                .trust_domain_policy(TrustDomainPolicy::local_only())
                .refuse_handshakes_after_expiry();
            for (td, bundle) in &pem.federated {
                builder = builder.federated_bundle(td, bundle);
            }
            configure(builder).build()
        })
    }

    /// A [`ClientTls`] presenting the current SVID, kept up to date by this source, with the
    /// same bundle set, policy and expiry behaviour as [`server_tls`](Self::server_tls): the
    /// server's chain is verified against the bundle of the server's own trust domain.
    /// `configure` sets the server check (for SPIFFE: `server_authorizer` with SPIFFE IDs
    /// and `allow_any_hostname`).
    ///
    /// # Errors
    /// [`Error::Tls`] when mtls-verify refuses the material or the configuration.
    pub fn client_tls(
        &self,
        configure: impl FnOnce(ClientTlsBuilder) -> ClientTlsBuilder,
    ) -> Result<ClientTls, Error> {
        self.build_holder(|pem| {
            let mut builder = ClientTlsBuilder::from_pem(&pem.chain, &pem.key, &pem.ca)
                .trust_domain_policy(TrustDomainPolicy::local_only())
                .refuse_handshakes_after_expiry();
            for (td, bundle) in &pem.federated {
                builder = builder.federated_bundle(td, bundle);
            }
            configure(builder).build()
        })
    }

    /// Builds a holder from the current SVID and registers it, under the lock, so that no
    /// update can fall between the two.
    fn build_holder<H>(
        &self,
        build: impl FnOnce(&Pem) -> Result<H, mtls_verify::Error>,
    ) -> Result<H, Error>
    where
        H: MaterialHolder<Material = TlsMaterial, Error = mtls_verify::Error> + Clone + 'static,
    {
        let mut current = self.shared.lock();
        let holder = build(&current.published)?;
        current.holders.push(Box::new(holder.clone()));
        Ok(holder)
    }

    /// Feeds any TLS holder built elsewhere: it gets the current SVID now and every rotation
    /// after.
    ///
    /// # Errors
    /// [`Error::Tls`] when the holder refuses the current material (it is not registered).
    pub fn feed<H>(&self, holder: H) -> Result<(), Error>
    where
        H: MaterialHolder<Material = TlsMaterial, Error = mtls_verify::Error> + 'static,
    {
        let mut current = self.shared.lock();
        holder.update(current.published.material())?;
        current.holders.push(Box::new(holder));
        Ok(())
    }

    /// Federates with `trust_domain` through its bundle endpoint (SPIFFE Federation): fetches
    /// its bundle now, gives it to every holder of this source as that trust domain's
    /// federated bundle (replacing one the Workload API sends), and keeps it fresh by the
    /// bundle's refresh hint in a task owned by the returned handle (the last good bundle
    /// stays when a fetch fails). Peers of `trust_domain` are accepted only where the
    /// holder's trust-domain policy allows it.
    ///
    /// # Errors
    /// The first fetch's error ([`Error::Federation`], [`Error::Tls`]), or a holder refusing
    /// the bundle; nothing is changed then.
    pub async fn federate_with(
        &self,
        trust_domain: &str,
        endpoint: BundleEndpoint,
    ) -> Result<TaskHandle, Error> {
        let td = trust_domain.trim_start_matches("spiffe://").to_owned();
        mtls_verify::SpiffeId::parse(&format!("spiffe://{td}"))?;
        let (first, _) = endpoint.fetch_first().await?;
        self.shared.apply_endpoint_bundle(&td, &first)?;
        let shared = Arc::downgrade(&self.shared);
        Ok(TaskHandle::from_tokio(tokio::spawn(
            crate::bundle_endpoint::follow(endpoint, first, move |bundle, _| {
                let Some(shared) = shared.upgrade() else {
                    return Ok(false);
                };
                shared.apply_endpoint_bundle(&td, bundle).map(|()| true)
            }),
        )))
    }

    /// The current SVID and the rotation status.
    pub fn status(&self) -> SvidStatus {
        SvidStatus {
            identity: self.shared.lock().svid.identity.clone(),
            rotation: self.shared.status.snapshot(),
        }
    }

    /// The Workload API address followed.
    pub fn endpoint(&self) -> &str {
        &self.shared.address
    }
}

// === Shared state and the task ===

struct Shared {
    address: String,
    hint: Option<String>,
    expiry_warning: Option<Duration>,
    current: Mutex<Current>,
    status: StatusRecorder<Error>,
}

struct Current {
    svid: Svid,
    /// What the holders were given: the SVID's material with the bundles fetched from
    /// bundle endpoints merged in.
    published: Pem,
    /// Trust domain → bundle (PEM) fetched from its bundle endpoint
    /// ([`SvidSource::federate_with`]); replaces the Workload API's bundle of that domain.
    endpoint_bundles: BTreeMap<String, Vec<u8>>,
    holders: Vec<TlsHolder>,
    /// Whether the current SVID was reported as not renewed in time / expired.
    reported: Expiry,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    Fresh,
    Warned,
    Expired,
}

/// One usable SVID: its leaf's identity and the material as PEM.
#[derive(Clone)]
struct Svid {
    identity: PeerIdentity,
    pem: Pem,
}

#[derive(Clone, PartialEq, Eq)]
struct Pem {
    chain: Vec<u8>,
    key: Vec<u8>,
    /// The bundle of the SVID's own (the local) trust domain.
    ca: Vec<u8>,
    /// The other trust domains' bundles of the update, by trust domain name (sorted).
    federated: Vec<(String, Vec<u8>)>,
}

impl Current {
    /// Pushes `pem` into every holder; all must take it.
    fn publish(&mut self, pem: Pem) -> Result<(), Error> {
        let mut refused = None;
        for holder in &self.holders {
            if let Err(e) = holder.update(pem.material()) {
                refused.get_or_insert(e);
            }
        }
        if let Some(e) = refused {
            return Err(Error::Tls(e));
        }
        self.published = pem;
        Ok(())
    }
}

impl Svid {
    /// The SVID's material with `endpoint` bundles replacing or adding federated ones (never
    /// the SVID's own trust domain's).
    fn with_endpoint_bundles(&self, endpoint: &BTreeMap<String, Vec<u8>>) -> Pem {
        if endpoint.is_empty() {
            return self.pem.clone();
        }
        let own = self
            .identity
            .spiffe_id()
            .map(|id| id.trust_domain().to_owned());
        let mut federated: BTreeMap<String, Vec<u8>> = self.pem.federated.iter().cloned().collect();
        for (td, bundle) in endpoint {
            if own.as_deref() != Some(td.as_str()) {
                federated.insert(td.clone(), bundle.clone());
            }
        }
        Pem {
            federated: federated.into_iter().collect(),
            ..self.pem.clone()
        }
    }
}

impl Pem {
    fn material(&self) -> TlsMaterial {
        let mut material = TlsMaterial::from_pem(&self.chain, &self.key, &self.ca);
        for (td, bundle) in &self.federated {
            material = material.federated_bundle(td, bundle);
        }
        material
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates an update and pushes it into every holder.
    fn apply(&self, context: &X509Context) -> Result<(), Error> {
        let result = self.try_apply(context);
        match &result {
            Ok(true) => {
                self.status.record_published();
            }
            Ok(false) => self.status.record_success(),
            Err(e) => {
                self.status.record_failure(e.clone());
            }
        }
        result.map(|_| ())
    }

    /// `Ok(true)` when new material was published, `Ok(false)` when it was the same.
    fn try_apply(&self, context: &X509Context) -> Result<bool, Error> {
        let svid = svid_from(context, self.hint.as_deref())?;
        let mut current = self.lock();
        let pem = svid.with_endpoint_bundles(&current.endpoint_bundles);
        if current.published == pem {
            return Ok(false);
        }
        current.publish(pem)?;
        if current.svid.identity != svid.identity {
            current.reported = Expiry::Fresh;
        }
        current.svid = svid;
        Ok(true)
    }

    /// Takes a bundle fetched from `trust_domain`'s bundle endpoint into the holders.
    fn apply_endpoint_bundle(
        &self,
        trust_domain: &str,
        bundle: &SpiffeBundle,
    ) -> Result<(), Error> {
        let pem = pem_blocks(
            "CERTIFICATE",
            bundle.x509_authorities.iter().map(|cert| cert.as_ref()),
        );
        let mut current = self.lock();
        current
            .endpoint_bundles
            .insert(trust_domain.to_owned(), pem);
        let merged = current
            .svid
            .with_endpoint_bundles(&current.endpoint_bundles);
        if merged == current.published {
            return Ok(());
        }
        let result = current.publish(merged);
        drop(current);
        match &result {
            Ok(()) => {
                self.status.record_published();
            }
            Err(e) => {
                self.status.record_failure(e.clone());
            }
        }
        result
    }

    /// When the current SVID is next worth looking at: the start of its warning window (no
    /// renewal yet), then its expiry; far ahead once both were reported.
    fn expiry_alarm(&self) -> Instant {
        let current = self.lock();
        let (warn_at, not_after) = self.warning_times(&current.svid.identity);
        let at = match current.reported {
            Expiry::Fresh => warn_at,
            Expiry::Warned => not_after,
            Expiry::Expired => return Instant::now() + Duration::from_secs(24 * 3600),
        };
        Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
    }

    fn warning_times(&self, identity: &PeerIdentity) -> (SystemTime, SystemTime) {
        let (not_before, not_after) = (identity.not_before(), identity.not_after());
        let window = self
            .expiry_warning
            .unwrap_or_else(|| not_after.duration_since(not_before).unwrap_or_default() / 4);
        (
            not_after.checked_sub(window).unwrap_or(not_before),
            not_after,
        )
    }

    /// Reports (once each) an SVID not renewed within its warning window, then expired.
    /// Holders built by the source stop presenting it once expired (their resolver checks
    /// notAfter at each handshake); the next SVID replaces it as soon as it arrives.
    fn check_expiry(&self) {
        let mut current = self.lock();
        let (warn_at, not_after) = self.warning_times(&current.svid.identity);
        let now = SystemTime::now();
        let due = if now >= not_after {
            Expiry::Expired
        } else if now >= warn_at {
            Expiry::Warned
        } else {
            Expiry::Fresh
        };
        if due > current.reported {
            current.reported = due;
            let identity = &current.svid.identity;
            self.status.record_failure(Error::NotRenewed {
                spiffe_id: identity
                    .spiffe_id()
                    .map_or_else(|| identity.subject().to_owned(), ToString::to_string),
                not_after,
                expired: due == Expiry::Expired,
            });
        }
    }

    fn failed(&self, error: Error) {
        let current = self.lock();
        for holder in &current.holders {
            holder.source_failed(mtls_verify::Error::Task(error.to_string()));
        }
        self.status.record_failure(error);
    }
}

/// Follows the stream; when it ends or fails, reconnects with capped, jittered backoff.
/// The holders keep serving the last SVID meanwhile.
async fn follow(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    stream: ContextStream,
    (min, max): (Duration, Duration),
) {
    let mut stream = Some(stream);
    let mut delay = min;
    loop {
        let alarm = shared.expiry_alarm();
        let event = tokio::select! {
            () = tokio::time::sleep_until(alarm) => {
                shared.check_expiry();
                continue;
            }
            event = next_event(&mut stream, &endpoint, &shared.address, delay) => event,
        };
        match event {
            Event::Item(Ok(context)) => {
                let _ = shared.apply(&context);
            }
            Event::Item(Err(e)) if ends_stream(&e) => {
                shared.failed(stream_error(&shared.address, e));
                stream = None;
            }
            Event::Item(Err(e)) => {
                shared
                    .status
                    .record_failure(Error::InvalidUpdate(error_chain(&e)));
            }
            Event::Ended => stream = None,
            Event::Reconnected(Ok(opened)) => {
                stream = Some(opened);
                delay = min;
            }
            Event::Reconnected(Err(e)) => {
                shared.failed(e);
                delay = (delay * 2).min(max);
            }
        }
    }
}

enum Event {
    Item(Result<X509Context, WorkloadApiError>),
    Ended,
    Reconnected(Result<ContextStream, Error>),
}

/// The next message of the stream, or (without a stream) a reconnection attempt after the
/// jittered delay. Cancel-safe where it matters: an expiry alarm interrupting a reconnection
/// only restarts its delay.
async fn next_event(
    stream: &mut Option<ContextStream>,
    endpoint: &Endpoint,
    address: &str,
    delay: Duration,
) -> Event {
    match stream {
        Some(stream) => match stream.next().await {
            Some(item) => Event::Item(item),
            None => Event::Ended,
        },
        None => {
            tokio::time::sleep(jittered(delay)).await;
            Event::Reconnected(open_stream(endpoint, address).await)
        }
    }
}

/// Runs `attempt` until it succeeds or `timeout` passes, with capped, jittered backoff
/// between attempts; then returns the last attempt's error, or `timed_out()` when the last
/// attempt cleared it (connected, nothing came).
pub(crate) async fn first_within<T>(
    timeout: Duration,
    (min, max): (Duration, Duration),
    timed_out: impl Fn() -> Error,
    mut attempt: impl AsyncFnMut(&mut Option<Error>) -> Result<T, Error>,
) -> Result<T, Error> {
    let deadline = Instant::now() + timeout;
    let mut delay = min;
    let mut last_error: Option<Error> = None;
    loop {
        match tokio::time::timeout_at(deadline, attempt(&mut last_error)).await {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(e)) => last_error = Some(e),
            Err(_elapsed) => return Err(last_error.unwrap_or_else(timed_out)),
        }
        if Instant::now() + delay >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(last_error.unwrap_or_else(timed_out));
        }
        tokio::time::sleep(jittered(delay)).await;
        delay = (delay * 2).min(max);
    }
}

/// One attempt at the first SVID: connect, open the stream, read until a usable SVID.
/// Once connected, `last_error` is cleared, so a timeout while waiting on a connected
/// stream reports [`Error::FirstSvidTimeout`] rather than an older failure.
async fn first_svid(
    endpoint: &Endpoint,
    address: &str,
    hint: Option<&str>,
    last_error: &mut Option<Error>,
) -> Result<(ContextStream, Svid), Error> {
    let mut stream = open_stream(endpoint, address).await?;
    *last_error = None;
    loop {
        match stream.next().await {
            Some(Ok(context)) => match svid_from(&context, hint) {
                Ok(svid) => return Ok((stream, svid)),
                Err(e) => *last_error = Some(e),
            },
            Some(Err(e)) if ends_stream(&e) => return Err(stream_error(address, e)),
            Some(Err(e)) => *last_error = Some(Error::InvalidUpdate(error_chain(&e))),
            None => {
                return Err(Error::WorkloadApi {
                    endpoint: address.to_owned(),
                    reason: "the stream ended before the first X.509-SVID".into(),
                });
            }
        }
    }
}

/// A Workload API client: no socket at the path and a refused connection told apart.
pub(crate) async fn client(endpoint: &Endpoint, address: &str) -> Result<WorkloadApiClient, Error> {
    if let Endpoint::Unix(path) = endpoint
        && !path.exists()
    {
        return Err(Error::NoAgentSocket { path: path.clone() });
    }
    WorkloadApiClient::connect(endpoint.clone())
        .await
        .map_err(|e| Error::AgentUnreachable {
            endpoint: address.to_owned(),
            reason: error_chain(&e),
        })
}

async fn open_stream(endpoint: &Endpoint, address: &str) -> Result<ContextStream, Error> {
    let stream = client(endpoint, address)
        .await?
        .stream_x509_contexts()
        .await
        .map_err(|e| stream_error(address, e))?;
    Ok(Box::pin(stream))
}

/// Errors after which the stream is over (a gRPC status), as opposed to one bad message.
pub(crate) fn ends_stream(e: &WorkloadApiError) -> bool {
    matches!(
        e,
        WorkloadApiError::Transport(_)
            | WorkloadApiError::NoIdentityIssued
            | WorkloadApiError::PermissionDenied(_)
    )
}

pub(crate) fn stream_error(address: &str, e: WorkloadApiError) -> Error {
    match e {
        WorkloadApiError::NoIdentityIssued => Error::NoIdentity {
            endpoint: address.to_owned(),
            reason: "no identity issued".into(),
        },
        WorkloadApiError::PermissionDenied(reason) => Error::NoIdentity {
            endpoint: address.to_owned(),
            reason,
        },
        other => Error::WorkloadApi {
            endpoint: address.to_owned(),
            reason: error_chain(&other),
        },
    }
}

/// The SVID (the default one, or the one with `hint`) and the bundle of its own trust
/// domain, as PEM for mtls-verify. An SVID outside its validity period is refused.
fn svid_from(context: &X509Context, hint: Option<&str>) -> Result<Svid, Error> {
    let svid = match hint {
        None => context
            .default_svid()
            .ok_or_else(|| Error::InvalidUpdate("no X.509-SVID in the update".into()))?,
        Some(hint) => context
            .svids()
            .iter()
            .find(|svid| svid.hint() == Some(hint))
            .ok_or_else(|| {
                Error::InvalidUpdate(format!("no X.509-SVID with hint {hint:?} in the update"))
            })?,
    };
    let trust_domain = svid.spiffe_id().trust_domain();
    let bundle = context.bundle_set().get(trust_domain).ok_or_else(|| {
        Error::InvalidUpdate(format!(
            "no bundle for the SVID's own trust domain {trust_domain}"
        ))
    })?;
    let mut federated: Vec<(String, Vec<u8>)> = context
        .bundle_set()
        .iter()
        .filter(|(td, bundle)| *td != trust_domain && !bundle.authorities().is_empty())
        .map(|(td, bundle)| {
            (
                td.to_string(),
                pem_blocks(
                    "CERTIFICATE",
                    bundle.authorities().iter().map(|cert| cert.as_bytes()),
                ),
            )
        })
        .collect();
    federated.sort();
    let identity = PeerIdentity::from_der(svid.leaf().as_bytes())?;
    let now = SystemTime::now();
    if identity.not_after() < now || identity.not_before() > now {
        return Err(Error::InvalidUpdate(format!(
            "the X.509-SVID of {} (serial {}) is outside its validity period",
            svid.spiffe_id(),
            identity.serial_hex()
        )));
    }
    let pem = Pem {
        chain: pem_blocks(
            "CERTIFICATE",
            svid.cert_chain().iter().map(|cert| cert.as_bytes()),
        ),
        key: pem_blocks("PRIVATE KEY", [svid.private_key().as_bytes()]),
        ca: pem_blocks(
            "CERTIFICATE",
            bundle.authorities().iter().map(|cert| cert.as_bytes()),
        ),
        federated,
    };
    Ok(Svid { identity, pem })
}

fn pem_blocks<'a>(label: &str, ders: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN ");
        out.push_str(label);
        out.push_str("-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END ");
        out.push_str(label);
        out.push_str("-----\n");
    }
    out.into_bytes()
}

/// The error and its sources, joined (tonic's transport errors say little at the top).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `delay` minus up to half of it, so that many workloads do not reconnect in step.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let fraction = f64::from(nanos % 1000) / 2000.0; // [0, 0.5)
    delay.mul_f64(1.0 - fraction)
}
