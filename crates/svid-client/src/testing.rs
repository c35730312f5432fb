//! A Workload API server for tests and local development (feature `testing`).
//!
//! **Faithful to the public protocol, not SPIRE, and not for production.** It serves the
//! `SpiffeWorkloadAPI` gRPC service of SPIFFE's `workload.proto` over a Unix socket, refuses
//! calls without the `workload.spiffe.io: true` metadata header (`InvalidArgument`, as the
//! Workload API specification requires and SPIRE answers), and streams X.509-SVID updates
//! that the test pushes ([`TestWorkloadApi::set_svids`]), so a test can rotate an SVID,
//! make the agent answer "no identity issued" ([`TestWorkloadApi::deny_identity`]) or cut
//! every open stream ([`TestWorkloadApi::close_streams`]). It issues nothing itself: the
//! certificates come from the test (for instance from `ztkit-test-support`).
//!
//! Implemented: `FetchX509SVID` and `FetchX509Bundles` (streams); `FetchJWTSVID`, which
//! either issues JWT-SVIDs itself ([`TestWorkloadApi::issue_jwt_svids`]: ES256 from a key per
//! trust domain that the server generates, `sub` the SPIFFE ID, the requested `aud`, `iat`,
//! `exp`, `kid`; keys rotated on demand with [`TestWorkloadApi::rotate_jwt_key`]) or returns
//! the tokens the test set with [`TestWorkloadApi::set_jwt_svids`]; `FetchJWTBundles` (a
//! stream of the issuing keys' JWKS and those set with
//! [`TestWorkloadApi::set_jwt_bundles`]); and `ValidateJWTSVID` (audience and token required;
//! checked against those bundles with jwt-oidc, as `svid_client::jwt`'s offline validator
//! does; a refused token is `InvalidArgument`, as SPIRE answers). Every call needs the
//! security header.
//!
//! ```no_run
//! use svid_client::testing::{TestSvid, TestWorkloadApi};
//! # async fn demo(chain_der: Vec<Vec<u8>>, key_der: Vec<u8>, ca_der: Vec<u8>) -> std::io::Result<()> {
//! let dir = std::env::temp_dir().join("agent");
//! let agent = TestWorkloadApi::start(dir.join("api.sock"))?;
//! agent.set_svids(vec![TestSvid::new("spiffe://example.org/web", chain_der, key_der, vec![ca_der])]);
//! println!("SPIFFE_ENDPOINT_SOCKET={}", agent.endpoint());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

mod jwt;
pub mod proto;

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    rust_2018_idioms
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/.SpiffeWorkloadAPI.rs"));
}

use generated::spiffe_workload_a_p_i_server::{
    SpiffeWorkloadAPI as SpiffeWorkloadApi, SpiffeWorkloadAPIServer as SpiffeWorkloadApiServer,
};
use proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtSvidRequest, JwtSvidResponse, ValidateJwtSvidRequest,
    ValidateJwtSvidResponse, X509BundlesRequest, X509BundlesResponse, X509SvidRequest,
    X509SvidResponse,
};

/// The metadata header every Workload API call must carry (`workload.spiffe.io: true`).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// One X.509-SVID as the server hands it out.
#[derive(Clone, Debug)]
pub struct TestSvid {
    spiffe_id: String,
    chain_der: Vec<Vec<u8>>,
    key_der: Vec<u8>,
    bundle_der: Vec<Vec<u8>>,
    hint: String,
}

impl TestSvid {
    /// An SVID: its SPIFFE ID, certificate chain (leaf first, DER), PKCS#8 private key (DER)
    /// and the CA certificates of its trust domain (DER).
    pub fn new(
        spiffe_id: impl Into<String>,
        chain_der: Vec<Vec<u8>>,
        key_der: Vec<u8>,
        bundle_der: Vec<Vec<u8>>,
    ) -> Self {
        TestSvid {
            spiffe_id: spiffe_id.into(),
            chain_der,
            key_der,
            bundle_der,
            hint: String::new(),
        }
    }

    /// Sets the SVID's hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }

    fn to_proto(&self) -> proto::X509Svid {
        proto::X509Svid {
            spiffe_id: self.spiffe_id.clone(),
            x509_svid: self.chain_der.concat(),
            x509_svid_key: self.key_der.clone(),
            bundle: self.bundle_der.concat(),
            hint: self.hint.clone(),
        }
    }
}

/// What the X.509 streams currently serve.
#[derive(Clone, Debug, Default)]
enum Identity {
    /// Nothing yet: streams stay open and silent (an agent still attesting).
    #[default]
    Pending,
    /// These SVIDs and federated bundles.
    Svids(X509SvidResponse),
    /// `PermissionDenied: no identity issued` (the workload matches no registration entry).
    Denied,
}

#[derive(Clone, Debug, Default)]
struct State {
    identity: Identity,
    /// The JWT-SVIDs `FetchJWTSVID` returns.
    jwt_svids: Vec<proto::JwtSvid>,
    /// Trust domain (`spiffe://td`) → JWKS; `None` until set (streams stay silent).
    jwt_bundles: Option<HashMap<String, Vec<u8>>>,
    /// The SPIFFE IDs `FetchJWTSVID` issues JWT-SVIDs to (when set, instead of `jwt_svids`).
    jwt_identities: Vec<String>,
    /// Lifetime of issued JWT-SVIDs.
    jwt_ttl: std::time::Duration,
    /// This server's JWT signing keys, per trust domain (served in the JWT bundles).
    jwt_keys: jwt::SigningKeys,
    /// Bumped by `close_streams`: streams opened before end with `Unavailable`.
    close_epoch: u64,
}

/// A running Workload API server on a Unix socket; stops when dropped.
#[derive(Debug)]
pub struct TestWorkloadApi {
    socket: PathBuf,
    state: Arc<watch::Sender<State>>,
    federated: std::sync::Mutex<HashMap<String, Vec<u8>>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestWorkloadApi {
    /// Binds `socket` (its directory must exist; a stale socket file is replaced) and serves
    /// on the current tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(socket: impl AsRef<Path>) -> std::io::Result<Self> {
        let socket = socket.as_ref().to_owned();
        if socket.exists() {
            std::fs::remove_file(&socket)?;
        }
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let state = Arc::new(watch::Sender::new(State::default()));
        let service = SpiffeWorkloadApiServer::with_interceptor(
            Service {
                state: state.clone(),
            },
            require_security_header,
        );
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "test Workload API server failed");
            }
        });
        Ok(TestWorkloadApi {
            socket,
            state,
            federated: std::sync::Mutex::default(),
            shutdown: Some(shutdown),
        })
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The address to give a client (`unix:/path/to/socket`), as in `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Serves these SVIDs (the default one first) from now on: every open `FetchX509SVID`
    /// stream receives them at once (a rotation), and new streams start with them.
    pub fn set_svids(&self, svids: Vec<TestSvid>) {
        let response = X509SvidResponse {
            svids: svids.iter().map(TestSvid::to_proto).collect(),
            crl: Vec::new(),
            federated_bundles: self.federated_bundles(),
        };
        self.state
            .send_modify(|state| state.identity = Identity::Svids(response));
    }

    /// Adds (or with an empty list removes) a federated trust domain's CA certificates. Open
    /// streams serving SVIDs receive the new bundle set at once (with the same SVIDs), as
    /// an agent sends a federation change; later [`set_svids`](Self::set_svids) carry it.
    pub fn set_federated_bundle(&self, trust_domain: &str, ca_der: Vec<Vec<u8>>) {
        let key = format!("spiffe://{}", trust_domain.trim_start_matches("spiffe://"));
        let bundles = {
            let mut federated = self
                .federated
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ca_der.is_empty() {
                federated.remove(&key);
            } else {
                federated.insert(key, ca_der.concat());
            }
            federated.clone()
        };
        self.state
            .send_if_modified(|state| match &mut state.identity {
                Identity::Svids(response) => {
                    response.federated_bundles = bundles;
                    true
                }
                Identity::Pending | Identity::Denied => false,
            });
    }

    /// Serves these JWT-SVIDs from `FetchJWTSVID`: `(SPIFFE ID, token, hint)` each, the
    /// default first. Tokens are returned as given.
    pub fn set_jwt_svids(&self, svids: Vec<(String, String, String)>) {
        let svids = svids
            .into_iter()
            .map(|(spiffe_id, svid, hint)| proto::JwtSvid {
                spiffe_id,
                svid,
                hint,
            })
            .collect();
        self.state.send_modify(|state| state.jwt_svids = svids);
    }

    /// Serves these JWT bundles (trust domain → JWKS document) from `FetchJWTBundles`;
    /// open streams receive them at once.
    pub fn set_jwt_bundles(&self, bundles: Vec<(String, Vec<u8>)>) {
        let bundles = bundles
            .into_iter()
            .map(|(td, jwks)| {
                (
                    format!("spiffe://{}", td.trim_start_matches("spiffe://")),
                    jwks,
                )
            })
            .collect();
        self.state
            .send_modify(|state| state.jwt_bundles = Some(bundles));
    }

    /// Issues JWT-SVIDs from now on: `FetchJWTSVID` signs a fresh token (ES256, `sub` the
    /// SPIFFE ID, `aud` the requested audience, `iat`, `exp` = now + `ttl`, `kid`) for each
    /// of `spiffe_ids` (the default first), with a key of the ID's trust domain that this
    /// server generates; `FetchJWTBundles` serves those keys (beside any bundles set with
    /// [`set_jwt_bundles`](Self::set_jwt_bundles)) and `ValidateJWTSVID` checks against them.
    pub fn issue_jwt_svids<I, S>(&self, spiffe_ids: I, ttl: std::time::Duration)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids: Vec<String> = spiffe_ids.into_iter().map(Into::into).collect();
        self.state.send_modify(|state| {
            for id in &ids {
                if let Some(td) = trust_domain_of(id) {
                    let td = format!("spiffe://{td}");
                    if !state.jwt_keys.contains_key(&td)
                        && let Ok(key) = jwt::SigningKey::generate()
                    {
                        state.jwt_keys.insert(td, vec![Arc::new(key)]);
                    }
                }
            }
            state.jwt_identities = ids;
            state.jwt_ttl = ttl;
        });
    }

    /// Rotates the JWT signing key of `trust_domain`: a new key signs from now on; the
    /// previous one stays in the bundle (tokens it signed stay valid until they expire)
    /// until the next rotation drops it. Open `FetchJWTBundles` streams receive the new
    /// bundle at once. Returns the new `kid`.
    pub fn rotate_jwt_key(&self, trust_domain: &str) -> String {
        let td = format!("spiffe://{}", trust_domain.trim_start_matches("spiffe://"));
        let mut kid = String::new();
        self.state.send_modify(|state| {
            if let Ok(key) = jwt::SigningKey::generate() {
                kid = key.kid().to_owned();
                let keys = state.jwt_keys.entry(td).or_default();
                keys.push(Arc::new(key));
                if keys.len() > 2 {
                    keys.remove(0);
                }
            }
        });
        kid
    }

    /// Signs `claims` as they are with the current JWT key of `trust_domain` (`None` before
    /// [`issue_jwt_svids`](Self::issue_jwt_svids) made one): for tests that need a token the
    /// agent would not issue (expired, another audience, …).
    pub fn sign_jwt(&self, trust_domain: &str, claims: &serde_json::Value) -> Option<String> {
        let td = format!("spiffe://{}", trust_domain.trim_start_matches("spiffe://"));
        let key = self.state.borrow().jwt_keys.get(&td)?.last()?.clone();
        key.sign(claims).ok()
    }

    /// From now on, X.509 calls fail with `PermissionDenied: no identity issued` (what SPIRE
    /// answers a workload that matches no registration entry); open streams end with it.
    pub fn deny_identity(&self) {
        self.state
            .send_modify(|state| state.identity = Identity::Denied);
    }

    /// Ends every open stream with `Unavailable` (an agent restarting); new calls are served.
    pub fn close_streams(&self) {
        self.state.send_modify(|state| state.close_epoch += 1);
    }

    /// How many streams are open (`FetchX509SVID` and `FetchX509Bundles`).
    pub fn open_streams(&self) -> usize {
        self.state.receiver_count()
    }

    fn federated_bundles(&self) -> HashMap<String, Vec<u8>> {
        self.federated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TestWorkloadApi {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.close_streams();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[allow(clippy::result_large_err)] // tonic's interceptor signature
fn require_security_header(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(request),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

struct Service {
    state: Arc<watch::Sender<State>>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream that sends `pick(state)` whenever it changes (and at once if there is something
/// to send), ends with `PermissionDenied` when the identity is denied and with `Unavailable`
/// when `close_streams` is called.
fn follow<T: Clone + PartialEq + Send + Sync + 'static>(
    state: &watch::Sender<State>,
    pick: fn(&State) -> Option<T>,
) -> ResponseStream<T> {
    let mut rx = state.subscribe();
    let epoch = rx.borrow().close_epoch;
    rx.mark_changed();
    let start: Option<(watch::Receiver<State>, Option<T>)> = Some((rx, None));
    Box::pin(futures_util::stream::unfold(
        start,
        move |following| async move {
            let (mut rx, mut last_sent) = following?;
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                let state = rx.borrow_and_update().clone();
                if state.close_epoch != epoch {
                    return Some((
                        Err(Status::unavailable("stream closed by the server")),
                        None,
                    ));
                }
                if matches!(state.identity, Identity::Denied) {
                    return Some((Err(Status::permission_denied("no identity issued")), None));
                }
                match pick(&state) {
                    Some(item) if last_sent.as_ref() != Some(&item) => {
                        last_sent = Some(item.clone());
                        return Some((Ok(item), Some((rx, last_sent))));
                    }
                    _ => {}
                }
            }
        },
    ))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = ResponseStream<X509SvidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509_svid(
        &self,
        _request: Request<X509SvidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Ok(Response::new(follow(&self.state, |state| {
            match &state.identity {
                Identity::Svids(response) => Some(response.clone()),
                Identity::Pending | Identity::Denied => None,
            }
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        _request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Ok(Response::new(follow(&self.state, |state| {
            let Identity::Svids(response) = &state.identity else {
                return None;
            };
            let mut bundles = response.federated_bundles.clone();
            for svid in &response.svids {
                if let Some(td) = trust_domain_of(&svid.spiffe_id) {
                    bundles.insert(format!("spiffe://{td}"), svid.bundle.clone());
                }
            }
            Some(X509BundlesResponse {
                crl: Vec::new(),
                bundles,
            })
        })))
    }

    async fn fetch_jwt_svid(
        &self,
        request: Request<JwtSvidRequest>,
    ) -> Result<Response<JwtSvidResponse>, Status> {
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let state = self.state.borrow().clone();
        if matches!(state.identity, Identity::Denied) {
            return Err(Status::permission_denied("no identity issued"));
        }
        let wanted = |id: &str| request.spiffe_id.is_empty() || id == request.spiffe_id;
        let svids: Vec<_> = if state.jwt_identities.is_empty() {
            state
                .jwt_svids
                .into_iter()
                .filter(|svid| wanted(&svid.spiffe_id))
                .collect()
        } else {
            let mut issued = Vec::new();
            for id in state.jwt_identities.iter().filter(|id| wanted(id)) {
                issued.push(proto::JwtSvid {
                    spiffe_id: id.clone(),
                    svid: jwt::issue(&state.jwt_keys, id, &request.audience, state.jwt_ttl)?,
                    hint: String::new(),
                });
            }
            issued
        };
        if svids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(Response::new(JwtSvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Ok(Response::new(follow(&self.state, |state| {
            jwt_bundles(state).map(|bundles| JwtBundlesResponse { bundles })
        })))
    }

    async fn validate_jwt_svid(
        &self,
        request: Request<ValidateJwtSvidRequest>,
    ) -> Result<Response<ValidateJwtSvidResponse>, Status> {
        let request = request.into_inner();
        let bundles = jwt_bundles(&self.state.borrow()).unwrap_or_default();
        let (spiffe_id, claims) = jwt::validate(&bundles, &request.audience, &request.svid).await?;
        Ok(Response::new(ValidateJwtSvidResponse {
            spiffe_id,
            claims: Some(claims),
        }))
    }
}

/// The JWT bundles served: those set by the test and this server's own signing keys.
fn jwt_bundles(state: &State) -> Option<HashMap<String, Vec<u8>>> {
    let mut bundles = state.jwt_bundles.clone();
    if !state.jwt_keys.is_empty() {
        bundles
            .get_or_insert_default()
            .extend(jwt::issued_bundles(&state.jwt_keys));
    }
    bundles
}

fn trust_domain_of(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}
