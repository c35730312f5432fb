//! JWT-SVIDs (feature `jwt`): fetch one for an audience, and validate incoming ones.
//!
//! [`JwtSvidSource`] (from [`SvidSourceBuilder::connect_jwt`]) connects to the Workload API, waits for the first JWT bundle set
//! (`FetchJWTBundles`), then follows that stream in a background task, reconnecting with
//! capped, jittered backoff. It fetches JWT-SVIDs (`FetchJWTSVID`,
//! [`JwtSvidSource::fetch_svid`]), validates tokens through the agent (`ValidateJWTSVID`,
//! [`JwtSvidSource::validate_with_agent`]), and builds offline validators
//! ([`JwtSvidSource::validator`]) that check tokens against the cached bundles.
//!
//! ## Offline validation: jwt-oidc with one issuer per trust domain
//!
//! A [`JwtSvidValidator`] is a `jwt_oidc::JwtAuthenticator` whose issuers are the trust
//! domains of the bundle set (`spiffe://<td>`, each with its JWT bundle as JWKS), selected by
//! the trust domain of the token's `sub` rather than by `iss`
//! ([`JwtAuthenticatorBuilder::issuers_are_spiffe_trust_domains`]). So the checks are
//! jwt-oidc's, not a second implementation: the key is looked up by `kid` in the bundle of
//! the `sub`'s trust domain only (a key of another trust domain never verifies), its
//! algorithm is fixed by the key and must be in the allow-list (JWT-SVID's: RS, PS, ES;
//! never `none`, HMAC or EdDSA), an audience is required, `exp` is required and `exp`/`nbf`
//! are checked with no leeway by default. Each new bundle set rebuilds the validator's
//! authenticator and swaps it in atomically; a bundle set that cannot be used is refused and
//! the last good one keeps validating. The validator implements jwt-oidc's
//! [`ValidateToken`], so zt-tower's `JwtAuthLayer::new(validator)` accepts JWT-SVIDs as
//! bearer tokens: the verified `Claims` go into the request, with the SPIFFE ID as
//! `subject()` and the trust domain as `issuer()`.
//!
//! Which trust domains are trusted is the agent's decision (its bundle set: the local trust
//! domain and the federated ones). The bundles are kept while the agent is unreachable: JWT
//! bundles carry no expiry, and tokens are short-lived.
//!
//! ```no_run
//! use svid_client::JwtSvidSource;
//!
//! # async fn run() -> Result<(), svid_client::Error> {
//! let jwt = JwtSvidSource::builder().connect_jwt().await?; // SPIFFE_ENDPOINT_SOCKET
//! // Client side: a token for the service we call.
//! let svid = jwt.fetch_svid(["spiffe://example.org/orders"]).await?;
//! let header = format!("Bearer {}", svid.token());
//! // Server side: validate incoming tokens offline (for zt-tower: JwtAuthLayer::new(validator)).
//! let validator = jwt.validator(|v| v.audience("spiffe://example.org/orders"))?;
//! let claims = validator.validate(svid.token()).await?;
//! assert_eq!(claims.subject(), Some(svid.spiffe_id()));
//! # let _ = header; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt};
use jwt_oidc::{
    Algorithm, AuthError, Claims, IssuerConfig, JwtAuthenticator, JwtAuthenticatorBuilder,
    RequestContext, ValidateToken,
};
use spiffe::transport::Endpoint;
use spiffe::{JwtBundleSet, WorkloadApiError};
use zt_rotate::{RotationStatus, StatusRecorder, TaskHandle};

use crate::source::{
    client, ends_stream, error_chain, first_within, jittered, resolve, stream_error,
};
use crate::{Error, SvidSourceBuilder};

/// The signature algorithms the JWT-SVID specification allows, the default allow-list of a
/// [`JwtSvidValidator`].
pub const JWT_SVID_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::Rs256,
    Algorithm::Rs384,
    Algorithm::Rs512,
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::Ps256,
    Algorithm::Ps384,
    Algorithm::Ps512,
];

type BundleStream = Pin<Box<dyn Stream<Item = Result<JwtBundleSet, WorkloadApiError>> + Send>>;
/// Trust domain (`spiffe://td`) → its JWT bundle as a JWKS document.
type Bundles = BTreeMap<String, Vec<u8>>;
type Configure = dyn Fn(JwtAuthenticatorBuilder) -> JwtAuthenticatorBuilder + Send + Sync;

// === JwtSvid ===

/// A JWT-SVID fetched from (or validated by) the Workload API. `Debug` never shows the token.
#[derive(Clone)]
pub struct JwtSvid {
    token: String,
    spiffe_id: String,
    audience: Vec<String>,
    expires_at: SystemTime,
    hint: Option<String>,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("audience", &self.audience)
            .field("expires_at", &self.expires_at)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl JwtSvid {
    fn from_spiffe(svid: &spiffe::JwtSvid) -> Self {
        let expiry = svid.expiry();
        let expires_at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(expiry.unix_timestamp()).unwrap_or(0));
        JwtSvid {
            token: svid.token().to_owned(),
            spiffe_id: svid.spiffe_id().to_string(),
            audience: svid.audience().to_vec(),
            expires_at,
            hint: svid.hint().map(str::to_owned),
        }
    }

    /// The token, for an `Authorization: Bearer` header.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SPIFFE ID (`sub`).
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The audiences (`aud`).
    pub fn audience(&self) -> &[String] {
        &self.audience
    }

    /// The expiry (`exp`).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The Workload API's hint for this SVID, if it gave one.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

// === SvidSourceBuilder::connect_jwt ===

impl SvidSourceBuilder {
    /// Connects a [`JwtSvidSource`] with the same settings (address, backoff; the
    /// first-SVID timeout bounds the wait for the first JWT bundle set; the SVID hint is not
    /// used), waits for the first JWT bundles, then follows the `FetchJWTBundles` stream in a
    /// background task owned by the returned source.
    ///
    /// # Errors
    /// As [`connect`](SvidSourceBuilder::connect), with [`Error::FirstBundlesTimeout`] when
    /// the agent sent no JWT bundles in time.
    pub async fn connect_jwt(self) -> Result<JwtSvidSource, Error> {
        let (address, first_bundles_timeout, reconnect) = self.settings();
        let (address, endpoint) = resolve(address)?;
        let (stream, first) = first_within(
            first_bundles_timeout,
            reconnect,
            || Error::FirstBundlesTimeout {
                endpoint: address.clone(),
                waited: first_bundles_timeout,
            },
            async |last_error| first_bundles(&endpoint, &address, last_error).await,
        )
        .await?;
        let shared = Arc::new(Shared {
            address,
            endpoint: endpoint.clone(),
            current: Mutex::new(Current {
                bundles: first,
                validators: Vec::new(),
            }),
            status: StatusRecorder::loaded("JWT bundles"),
        });
        let task = TaskHandle::from_tokio(tokio::spawn(follow(shared.clone(), stream, reconnect)));
        Ok(JwtSvidSource { shared, task })
    }
}

// === JwtSvidSource ===

/// JWT-SVIDs and JWT bundles from the SPIFFE Workload API; see the [module docs](self).
///
/// Dropping the source stops following the bundles; validators built from it keep the last
/// bundle set.
#[must_use = "dropping the source stops following the Workload API"]
pub struct JwtSvidSource {
    shared: Arc<Shared>,
    task: TaskHandle,
}

impl fmt::Debug for JwtSvidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvidSource")
            .field("endpoint", &self.shared.address)
            .field("trust_domains", &self.trust_domains())
            .field("running", &self.task.is_running())
            .finish()
    }
}

impl JwtSvidSource {
    /// A builder (address from `SPIFFE_ENDPOINT_SOCKET`); finish it with
    /// [`connect_jwt`](SvidSourceBuilder::connect_jwt).
    pub fn builder() -> SvidSourceBuilder {
        SvidSourceBuilder::default()
    }

    /// Fetches a JWT-SVID for `audience` (the default SVID of this workload).
    ///
    /// # Errors
    /// [`Error::InvalidUpdate`] for an empty audience; the Workload API's refusal
    /// ([`Error::NoIdentity`], [`Error::WorkloadApi`]) or [`Error::AgentUnreachable`].
    pub async fn fetch_svid<I>(&self, audience: I) -> Result<JwtSvid, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        fetch_jwt_svid(&self.shared.endpoint, &self.shared.address, audience).await
    }

    /// Validates `token` for `audience` through the agent (`ValidateJWTSVID`): the agent
    /// checks it against its own bundles; the answer is parsed, not re-verified here.
    ///
    /// # Errors
    /// [`Error::InvalidJwtSvid`] when the agent refuses the token (`InvalidArgument`) or
    /// its answer does not parse; otherwise [`Error::AgentUnreachable`] /
    /// [`Error::WorkloadApi`] / [`Error::NoIdentity`].
    pub async fn validate_with_agent(&self, token: &str, audience: &str) -> Result<JwtSvid, Error> {
        let client = client(&self.shared.endpoint, &self.shared.address).await?;
        client
            .validate_jwt_token(audience, token)
            .await
            .map(|svid| JwtSvid::from_spiffe(&svid))
            .map_err(|e| {
                // The agent refuses a token with InvalidArgument (so does SPIRE); a response
                // that does not parse is a refusal too. Anything else is the transport's.
                let refused = e.is_invalid_argument()
                    || !matches!(
                        e,
                        WorkloadApiError::Transport(_)
                            | WorkloadApiError::NoIdentityIssued
                            | WorkloadApiError::PermissionDenied(_)
                    );
                if refused {
                    Error::InvalidJwtSvid(error_chain(&e))
                } else {
                    stream_error(&self.shared.address, e)
                }
            })
    }

    /// An offline validator over the current JWT bundles, kept up to date with every new
    /// bundle set. `configure` sets the rest on a jwt-oidc builder that starts with
    /// [`JWT_SVID_ALGORITHMS`] and no leeway: at least an `audience`; optionally
    /// `leeway`, `algorithms` (a subset), `require_claim`, `custom_check`, … Issuers and
    /// issuer selection are set by the validator (one per trust domain, by `sub`).
    ///
    /// # Errors
    /// [`Error::Jwt`] when jwt-oidc refuses the configuration (no audience, …) or the
    /// current bundles.
    pub fn validator(
        &self,
        configure: impl Fn(JwtAuthenticatorBuilder) -> JwtAuthenticatorBuilder + Send + Sync + 'static,
    ) -> Result<JwtSvidValidator, Error> {
        let configure: Box<Configure> = Box::new(configure);
        let mut current = self.shared.lock();
        let auth = authenticator(&current.bundles, &*configure)?;
        let state = Arc::new(ValidatorState {
            current: ArcSwap::from_pointee(auth),
            configure,
        });
        current.validators.push(Arc::downgrade(&state));
        Ok(JwtSvidValidator { state })
    }

    /// The trust domains (`spiffe://td`) whose JWT bundles are held now.
    pub fn trust_domains(&self) -> Vec<String> {
        self.shared.lock().bundles.keys().cloned().collect()
    }

    /// Generation, last success, last error of the bundle stream.
    pub fn status(&self) -> RotationStatus {
        self.shared.status.snapshot()
    }
}

// === JwtSvidValidator ===

/// Validates JWT-SVIDs offline against the JWT bundles of a [`JwtSvidSource`] (see the
/// [module docs](self)). Cheap to clone; implements [`ValidateToken`] for zt-tower's
/// `JwtAuthLayer`.
#[derive(Clone)]
pub struct JwtSvidValidator {
    state: Arc<ValidatorState>,
}

struct ValidatorState {
    current: ArcSwap<JwtAuthenticator>,
    configure: Box<Configure>,
}

impl fmt::Debug for JwtSvidValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvidValidator")
            .field("authenticator", &*self.state.current.load())
            .finish()
    }
}

impl JwtSvidValidator {
    /// Validates `token` now; the SPIFFE ID is the claims' `subject()`.
    ///
    /// # Errors
    /// Why the token is refused.
    pub async fn validate(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        self.validate_token(token, &RequestContext::new()).await
    }
}

impl ValidateToken for JwtSvidValidator {
    fn validate_token<'a>(
        &'a self,
        token: &'a str,
        ctx: &'a RequestContext,
    ) -> impl Future<Output = Result<Arc<Claims>, AuthError>> + Send + 'a {
        let auth = self.state.current.load_full();
        async move { auth.validate(token, ctx).await }
    }
}

/// A jwt-oidc authenticator with one static issuer per trust domain, chosen by `sub`.
pub(crate) fn authenticator(
    bundles: &Bundles,
    configure: &Configure,
) -> Result<JwtAuthenticator, AuthError> {
    let mut builder = configure(
        JwtAuthenticator::builder()
            .algorithms(JWT_SVID_ALGORITHMS)
            .leeway(Duration::ZERO),
    );
    for (trust_domain, jwks) in bundles {
        builder = builder.issuer(IssuerConfig::static_jwks(trust_domain, jwks.clone()));
    }
    builder.issuers_are_spiffe_trust_domains().build()
}

// === Shared state and the task ===

struct Shared {
    address: String,
    endpoint: Endpoint,
    current: Mutex<Current>,
    status: StatusRecorder<Error>,
}

struct Current {
    bundles: Bundles,
    validators: Vec<Weak<ValidatorState>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rebuilds every live validator from a new bundle set; all or nothing.
    fn apply(&self, set: &JwtBundleSet) {
        let bundles = bundles_of(set);
        let mut current = self.lock();
        if current.bundles == bundles {
            self.status.record_success();
            return;
        }
        current.validators.retain(|v| v.strong_count() > 0);
        let mut built = Vec::new();
        for state in current.validators.iter().filter_map(Weak::upgrade) {
            match authenticator(&bundles, &*state.configure) {
                Ok(auth) => built.push((state, auth)),
                Err(e) => {
                    tracing::warn!(error = %e, "refused JWT bundle set; the last good one stays");
                    self.status.record_failure(Error::Jwt(e));
                    return;
                }
            }
        }
        for (state, auth) in built {
            state.current.store(Arc::new(auth));
        }
        current.bundles = bundles;
        self.status.record_published();
    }
}

/// Each trust domain's JWT bundle as a JWKS document (trust domains without keys left out).
fn bundles_of(set: &JwtBundleSet) -> Bundles {
    set.iter()
        .filter_map(|(trust_domain, bundle)| {
            let keys: Vec<&[u8]> = bundle.jwt_authorities().map(|a| a.jwk_json()).collect();
            if keys.is_empty() {
                return None;
            }
            let mut jwks = b"{\"keys\":[".to_vec();
            jwks.extend_from_slice(&keys.join(&b","[..]));
            jwks.extend_from_slice(b"]}");
            Some((format!("spiffe://{trust_domain}"), jwks))
        })
        .collect()
}

async fn follow(shared: Arc<Shared>, stream: BundleStream, (min, max): (Duration, Duration)) {
    let mut stream = Some(stream);
    let mut delay = min;
    loop {
        match &mut stream {
            Some(open) => match open.next().await {
                Some(Ok(set)) => shared.apply(&set),
                Some(Err(e)) if ends_stream(&e) => {
                    shared
                        .status
                        .record_failure(stream_error(&shared.address, e));
                    stream = None;
                }
                Some(Err(e)) => {
                    shared
                        .status
                        .record_failure(Error::InvalidUpdate(error_chain(&e)));
                }
                None => stream = None,
            },
            None => {
                tokio::time::sleep(jittered(delay)).await;
                match open_bundles(&shared.endpoint, &shared.address).await {
                    Ok(opened) => {
                        stream = Some(opened);
                        delay = min;
                    }
                    Err(e) => {
                        shared.status.record_failure(e);
                        delay = (delay * 2).min(max);
                    }
                }
            }
        }
    }
}

async fn first_bundles(
    endpoint: &Endpoint,
    address: &str,
    last_error: &mut Option<Error>,
) -> Result<(BundleStream, Bundles), Error> {
    let mut stream = open_bundles(endpoint, address).await?;
    *last_error = None;
    loop {
        match stream.next().await {
            Some(Ok(set)) => {
                let bundles = bundles_of(&set);
                if bundles.is_empty() {
                    *last_error = Some(Error::InvalidUpdate("no JWT bundle with keys".into()));
                } else {
                    return Ok((stream, bundles));
                }
            }
            Some(Err(e)) if ends_stream(&e) => return Err(stream_error(address, e)),
            Some(Err(e)) => *last_error = Some(Error::InvalidUpdate(error_chain(&e))),
            None => {
                return Err(Error::WorkloadApi {
                    endpoint: address.to_owned(),
                    reason: "the stream ended before the first JWT bundles".into(),
                });
            }
        }
    }
}

async fn open_bundles(endpoint: &Endpoint, address: &str) -> Result<BundleStream, Error> {
    let stream = client(endpoint, address)
        .await?
        .stream_jwt_bundles()
        .await
        .map_err(|e| stream_error(address, e))?;
    Ok(Box::pin(stream))
}

/// `FetchJWTSVID` for `audience`: the default SVID.
pub(crate) async fn fetch_jwt_svid<I>(
    endpoint: &Endpoint,
    address: &str,
    audience: I,
) -> Result<JwtSvid, Error>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let audience: Vec<String> = audience
        .into_iter()
        .map(|a| a.as_ref().to_owned())
        .collect();
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Error::InvalidUpdate(
            "a JWT-SVID needs at least one non-empty audience".into(),
        ));
    }
    client(endpoint, address)
        .await?
        .fetch_jwt_svid(&audience, None)
        .await
        .map(|svid| JwtSvid::from_spiffe(&svid))
        .map_err(|e| stream_error(address, e))
}

impl crate::SvidSource {
    /// Fetches a JWT-SVID for `audience` from the same Workload API (`FetchJWTSVID`), for
    /// a workload that also serves X.509-SVIDs; see [`JwtSvidSource`] to validate them.
    ///
    /// # Errors
    /// As [`JwtSvidSource::fetch_svid`].
    pub async fn fetch_jwt_svid<I>(&self, audience: I) -> Result<JwtSvid, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let (address, endpoint) = resolve(Some(self.endpoint().to_owned()))?;
        fetch_jwt_svid(&endpoint, &address, audience).await
    }
}
