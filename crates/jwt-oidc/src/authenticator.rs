//! [`JwtAuthenticator`]: the validator, its builder, and [`RequestContext`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use url::Url;

use crate::claims::{ShortText, Text};
use crate::error::untrusted;
use crate::http::{HttpFetcher, tls_config, webpki_roots};
use crate::jwks::{Jwks, VerifyingKey};
use crate::key_cache::{
    IssuerState, KeyCacheSettings, KeySetStatus, RefreshHost, background_refresh, unix_secs,
};
use crate::source::{HttpJwksSource, HttpMode, JwksSource};
use crate::token::{self, RawClaims, StrList};
use crate::token_cache::{Entry, TokenCache};
use crate::{Algorithm, AuthError, Claims};

/// Source of [`Inner::id`].
static NEXT_AUTHENTICATOR_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a header that passed every check decided.
#[derive(Clone)]
struct CheckedHeader {
    alg: Algorithm,
    kid: Option<ShortText>,
}

/// The last valid header a thread saw, and for which authenticator (the checks depend on its
/// configuration).
struct HeaderMemo {
    authenticator: u64,
    segment: Vec<u8>,
    header: CheckedHeader,
}

thread_local! {
    static LAST_HEADER: std::cell::RefCell<Option<HeaderMemo>> = const { std::cell::RefCell::new(None) };
}

/// A custom check run on every validation (cache hits included) after the built-in ones.
pub type CustomCheck = dyn Fn(&Claims) -> Result<(), String> + Send + Sync;

/// What the validator needs to know about the request besides the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestContext {
    /// SHA-256 of the DER client certificate of the mTLS connection the token came on, if
    /// any; checked against `cnf.x5t#S256` (RFC 8705).
    pub client_cert_sha256: Option<[u8; 32]>,
    /// The request time: drives `exp`/`nbf`/`iat` checks and key staleness.
    pub now: SystemTime,
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestContext {
    /// A context for a request arriving now, without a client certificate.
    #[must_use]
    pub fn new() -> Self {
        Self {
            client_cert_sha256: None,
            now: SystemTime::now(),
        }
    }

    /// Sets the client certificate thumbprint (SHA-256 of the DER certificate).
    #[must_use]
    pub fn with_client_cert_sha256(mut self, thumbprint: [u8; 32]) -> Self {
        self.client_cert_sha256 = Some(thumbprint);
        self
    }

    /// Sets the client certificate from its DER bytes (hashes it).
    #[must_use]
    pub fn with_client_cert_der(self, der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut t = [0u8; 32];
        t.copy_from_slice(d.as_ref());
        self.with_client_cert_sha256(t)
    }

    /// Sets the request time.
    #[must_use]
    pub fn at(mut self, now: SystemTime) -> Self {
        self.now = now;
        self
    }
}

enum IssuerKind {
    Discover,
    JwksUri(String),
    Static(Vec<u8>),
    Source(Arc<dyn JwksSource>),
}

/// One trusted issuer and where its keys come from.
pub struct IssuerConfig {
    issuer: String,
    kind: IssuerKind,
}

impl std::fmt::Debug for IssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            IssuerKind::Discover => "discover".to_owned(),
            IssuerKind::JwksUri(u) => format!("jwks_uri {u}"),
            IssuerKind::Static(_) => "static".to_owned(),
            IssuerKind::Source(s) => s.describe(),
        };
        f.debug_struct("IssuerConfig")
            .field("issuer", &self.issuer)
            .field("keys", &kind)
            .finish()
    }
}

impl IssuerConfig {
    /// Keys found by OIDC discovery: `{issuer}/.well-known/openid-configuration` is fetched,
    /// its `issuer` must equal `issuer` exactly, and its `jwks_uri` is used from then on.
    pub fn discover(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            kind: IssuerKind::Discover,
        }
    }

    /// Keys from a configured JWKS URL, without discovery.
    pub fn jwks_uri(issuer: impl Into<String>, jwks_uri: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            kind: IssuerKind::JwksUri(jwks_uri.into()),
        }
    }

    /// Keys from a JWKS document given once (a file, a test); never refreshed, never stale.
    pub fn static_jwks(issuer: impl Into<String>, jwks_json: impl Into<Vec<u8>>) -> Self {
        Self {
            issuer: issuer.into(),
            kind: IssuerKind::Static(jwks_json.into()),
        }
    }

    /// Keys from your own [`JwksSource`], cached and refreshed like HTTP ones.
    pub fn with_source(issuer: impl Into<String>, source: Arc<dyn JwksSource>) -> Self {
        Self {
            issuer: issuer.into(),
            kind: IssuerKind::Source(source),
        }
    }

    /// The issuer (`iss`) this configures.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

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

enum Step {
    Done(Result<Arc<Claims>, AuthError>),
    /// Keys missing for `issuer`: refresh (subject to the cooldown) and retry once.
    NeedKeys {
        issuer: usize,
        generation: u64,
        err: AuthError,
    },
}

impl From<AuthError> for Step {
    fn from(e: AuthError) -> Self {
        Step::Done(Err(e))
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Step::Done(Err(e)),
        }
    };
}

/// Normalises a media type for `typ` comparison (RFC 7515 §4.1.9, RFC 9068 §4).
/// `typ` equals the (normalised) `expected`, ignoring ASCII case and an `application/`
/// prefix, without allocating.
fn same_media_type(typ: &str, expected: &str) -> bool {
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") && !typ[12..].contains('/') => {
            &typ[12..]
        }
        _ => typ,
    };
    bare.eq_ignore_ascii_case(expected)
}

fn media_type(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') => rest.to_owned(),
        _ => t,
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

    /// The header's verdict, from this thread's memo when the header is a byte-for-byte
    /// repeat of the last valid one (issuers put the same `alg`/`kid`/`typ` header on every
    /// token, so this skips a decode and a parse per request).
    fn checked_header(&self, segment: &[u8]) -> Result<CheckedHeader, AuthError> {
        let id = self.inner.id;
        let hit = LAST_HEADER.with_borrow(|memo| match memo {
            Some(m) if m.authenticator == id && *m.segment == *segment => Some(m.header.clone()),
            _ => None,
        });
        if let Some(header) = hit {
            return Ok(header);
        }
        let header = self.check_header(segment)?;
        LAST_HEADER.with_borrow_mut(|memo| match memo {
            Some(m) => {
                m.authenticator = id;
                m.segment.clear();
                m.segment.extend_from_slice(segment);
                m.header = header.clone();
            }
            None => {
                *memo = Some(HeaderMemo {
                    authenticator: id,
                    segment: segment.to_vec(),
                    header: header.clone(),
                });
            }
        });
        Ok(header)
    }

    /// Decodes the header and runs every header check: no key references, an allowed `alg`,
    /// only understood `crit` names, no unencoded payload, the required `typ`.
    fn check_header(&self, segment: &[u8]) -> Result<CheckedHeader, AuthError> {
        let cfg = &self.inner.config;
        let mut header_buf = [0u8; 240];
        let header_vec;
        let header_json: &[u8] = if segment.len() <= 320 {
            token::b64_decode_into(segment, &mut header_buf, "header is not base64url")?
        } else {
            header_vec = token::b64_decode(segment, "header is not base64url")?;
            &header_vec
        };
        let header = token::parse_header(header_json)?;
        if let Some(name) = header.key_reference {
            return Err(AuthError::ForbiddenHeader(name));
        }
        let Some(alg_name) = header.alg.as_deref() else {
            return Err(AuthError::Malformed("header has no alg"));
        };
        let alg = match Algorithm::from_name(alg_name) {
            Some(a) if cfg.allowed.contains(&a) => a,
            _ => {
                return Err(AuthError::AlgorithmNotAllowed {
                    alg: untrusted(alg_name),
                });
            }
        };
        if let Some(crit) = &header.crit {
            if crit.is_empty() {
                return Err(AuthError::Malformed("crit is empty"));
            }
            for name in crit {
                if !cfg.accepted_crit.iter().any(|c| **c == **name) {
                    return Err(AuthError::UnknownCritical {
                        name: untrusted(name),
                    });
                }
            }
        }
        if header.b64 == Some(false) {
            return Err(AuthError::Malformed(
                "unencoded payloads (b64: false) are not supported",
            ));
        }
        if let Some(expected) = &cfg.required_type
            && !header
                .typ
                .as_deref()
                .is_some_and(|t| same_media_type(t, expected))
        {
            return Err(AuthError::WrongType {
                expected: expected.clone(),
            });
        }
        Ok(CheckedHeader {
            alg,
            kid: header.kid.as_deref().map(ShortText::new),
        })
    }

    fn validate_step(&self, token: &str, ctx: &RequestContext) -> Step {
        let inner = &*self.inner;
        let cfg = &inner.config;
        if token.len() > cfg.max_token_bytes {
            return AuthError::TokenTooLarge {
                len: token.len(),
                limit: cfg.max_token_bytes,
            }
            .into();
        }
        let now = unix_secs(ctx.now);
        let hash = inner.cache.as_ref().map(|c| c.hash(token));
        if let (Some(cache), Some(h)) = (&inner.cache, hash)
            && let Some(hit) = cache.with_hit(token, h, |e| self.check_hit(e, ctx, now))
            && let Some(result) = hit
        {
            return Step::Done(result);
        }

        let seg = tri!(token::split(token));
        let header = tri!(self.checked_header(seg.header));
        let alg = header.alg;

        // Claims, unverified: only to pick the issuer (exact match) before any key is used.
        let payload_bytes = tri!(token::b64_decode(seg.payload, "payload is not base64url"));
        let payload_json = tri!(
            String::from_utf8(payload_bytes)
                .map_err(|_| AuthError::Malformed("claims set is not UTF-8"))
        );
        let raw = tri!(token::parse_claims(&payload_json));
        let Some(iss) = raw.iss.as_deref() else {
            return AuthError::UnknownIssuer { iss: "".into() }.into();
        };
        let found = if inner.issuers.len() <= 8 {
            inner.issuers.iter().position(|i| *i.issuer == *iss)
        } else {
            inner.by_issuer.get(iss).copied()
        };
        let Some(issuer_index) = found else {
            return AuthError::UnknownIssuer {
                iss: untrusted(iss),
            }
            .into();
        };
        let Some(issuer) = inner.issuers.get(issuer_index) else {
            return AuthError::UnknownIssuer {
                iss: untrusted(iss),
            }
            .into();
        };

        // Key: from the issuer's set only, by kid, bound to one algorithm.
        let snap = issuer.snapshot.load();
        if !snap.loaded {
            return Step::NeedKeys {
                issuer: issuer_index,
                generation: snap.generation,
                err: AuthError::KeysUnavailable {
                    issuer: issuer.issuer.clone(),
                    reason: "never loaded",
                },
            };
        }
        if snap.stale_after.is_some_and(|t| ctx.now > t) {
            return AuthError::KeysUnavailable {
                issuer: issuer.issuer.clone(),
                reason: "stale",
            }
            .into();
        }
        let key: &Arc<VerifyingKey> = match header.kid.as_ref().map(ShortText::get) {
            Some(kid) => match snap.keys_for(kid) {
                Some(keys) => match keys.iter().find(|k| k.algorithm() == alg) {
                    Some(k) => k,
                    None => {
                        return AuthError::AlgorithmMismatch {
                            header: alg.as_str().into(),
                            key: keys.first().map_or(alg, |k| k.algorithm()),
                        }
                        .into();
                    }
                },
                None => {
                    return Step::NeedKeys {
                        issuer: issuer_index,
                        generation: snap.generation,
                        err: AuthError::UnknownKey {
                            kid: untrusted(kid),
                            issuer: issuer.issuer.clone(),
                        },
                    };
                }
            },
            None if cfg.allow_no_kid && snap.all.len() == 1 => match snap.all.first() {
                Some(k) if k.algorithm() == alg => k,
                Some(k) => {
                    return AuthError::AlgorithmMismatch {
                        header: alg.as_str().into(),
                        key: k.algorithm(),
                    }
                    .into();
                }
                None => return AuthError::MissingKeyId.into(),
            },
            None => return AuthError::MissingKeyId.into(),
        };

        // Signature, with the key parsed once at JWKS load.
        // 512 bytes covers RSA up to 4096 bits and every EC/EdDSA signature; larger RSA
        // signatures are decoded onto the heap.
        let mut sig_buf = [0u8; 512];
        let sig_vec;
        let sig: &[u8] = if seg.signature.len() <= 680 {
            tri!(token::b64_decode_into(
                seg.signature,
                &mut sig_buf,
                "signature is not base64url"
            ))
        } else if seg.signature.len() <= 1368 {
            sig_vec = tri!(token::b64_decode(
                seg.signature,
                "signature is not base64url"
            ));
            &sig_vec
        } else {
            return AuthError::Malformed("signature is longer than any supported key's").into();
        };
        tri!(key.verify(seg.signing_input, sig));

        // Claims.
        let mut claims = tri!(self.build_claims(&raw, &payload_json, key));
        drop(raw);
        claims.payload = payload_json;
        tri!(self.check_request(&claims, ctx, now));
        let claims = Arc::new(claims);
        if let (Some(cache), Some(hash)) = (&inner.cache, hash)
            && now < claims.expires_at
        {
            cache.insert(
                Entry {
                    hash,
                    token: token.into(),
                    claims: Arc::clone(&claims),
                    key: Arc::clone(key),
                    issuer: issuer_index,
                },
                now,
            );
        }
        Step::Done(Ok(claims))
    }

    /// A cache hit is only used while the token is unexpired, its key still published and
    /// fresh; the per-request checks run again. `None` means: treat as a miss.
    fn check_hit(
        &self,
        e: &Entry,
        ctx: &RequestContext,
        now: u64,
    ) -> Option<Result<Arc<Claims>, AuthError>> {
        if now >= e.claims.expires_at || e.key.is_retired() {
            return None;
        }
        let issuer = self.inner.issuers.get(e.issuer)?;
        if issuer
            .snapshot
            .load()
            .stale_after
            .is_some_and(|t| ctx.now > t)
        {
            return Some(Err(AuthError::KeysUnavailable {
                issuer: issuer.issuer.clone(),
                reason: "stale",
            }));
        }
        Some(
            self.check_request(&e.claims, ctx, now)
                .map(|()| Arc::clone(&e.claims)),
        )
    }

    fn build_claims(
        &self,
        raw: &RawClaims<'_>,
        payload_json: &str,
        key: &VerifyingKey,
    ) -> Result<Claims, AuthError> {
        let cfg = &self.inner.config;
        let text = |value: &str| Text::new(payload_json, value);
        let exp = raw
            .exp
            .ok_or_else(|| AuthError::MissingClaim {
                claim: "exp".into(),
            })?
            .0;
        if !cfg.any_audience {
            match &raw.aud {
                None => {
                    return Err(AuthError::MissingClaim {
                        claim: "aud".into(),
                    });
                }
                Some(aud) => {
                    if !aud.iter().any(|a| cfg.audiences.iter().any(|c| **c == *a)) {
                        return Err(AuthError::WrongAudience);
                    }
                }
            }
        }
        let (audience, more_audiences) = match &raw.aud {
            None => (None, Box::default()),
            Some(StrList::One(a)) => (Some(text(a)), Box::default()),
            Some(StrList::Many(list)) => {
                let mut all = list.iter().map(|a| text(a));
                (all.next(), all.collect())
            }
        };
        if !cfg.required_claims.is_empty() {
            let names = token::claim_names(payload_json)?;
            for required in &cfg.required_claims {
                if !names.iter().any(|n| **n == **required) {
                    return Err(AuthError::MissingClaim {
                        claim: required.clone(),
                    });
                }
            }
        }
        let cert_thumbprint = match &raw.cnf {
            None => None,
            Some(cnf) => match &cnf.x5t_s256 {
                Some(t) => {
                    let invalid = || AuthError::InvalidClaim {
                        claim: "cnf",
                        reason: "x5t#S256 is not a base64url SHA-256 thumbprint",
                    };
                    let mut out = [0u8; 32];
                    let decoded = crate::token::b64_decode_into(t.as_bytes(), &mut out, "")
                        .map_err(|_| invalid())?;
                    if decoded.len() != 32 {
                        return Err(invalid());
                    }
                    Some(out)
                }
                None if cnf.other_methods => return Err(AuthError::UnsupportedConfirmation),
                None => None,
            },
        };
        let scope = match (&raw.scope, &raw.scp) {
            (Some(s), _) => Some(text(s)),
            (None, Some(StrList::One(s))) => Some(text(s)),
            (None, Some(scp)) => Some(Text::Owned(scp.iter().collect::<Vec<_>>().join(" ").into())),
            (None, None) => None,
        };
        let issuer = raw
            .iss
            .as_deref()
            .map(text)
            .unwrap_or(Text::Owned("".into()));
        Ok(Claims {
            issuer,
            subject: raw.sub.as_deref().map(text),
            audience,
            more_audiences,
            expires_at: exp,
            issued_at: raw.iat.map(|d| d.0),
            not_before: raw.nbf.map(|d| d.0),
            scope,
            client_id: raw.client_id.as_deref().map(text),
            cert_thumbprint,
            key_id: key.kid().map(ShortText::new),
            algorithm: key.algorithm(),
            payload: String::new(),
            roles_path: cfg.roles_path.clone(),
            raw: std::sync::OnceLock::new(),
            roles: std::sync::OnceLock::new(),
            derived: std::sync::OnceLock::new(),
        })
    }

    /// The checks that depend on the request: time, certificate binding, scopes, custom.
    fn check_request(&self, c: &Claims, ctx: &RequestContext, now: u64) -> Result<(), AuthError> {
        let cfg = &self.inner.config;
        if c.expires_at.saturating_add(cfg.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if c.not_before
            .is_some_and(|nbf| nbf > now.saturating_add(cfg.leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        if c.issued_at
            .is_some_and(|iat| iat > now.saturating_add(cfg.leeway))
        {
            return Err(AuthError::IssuedInFuture);
        }
        if let Some(max_age) = cfg.max_age {
            let iat = c.issued_at.ok_or_else(|| AuthError::MissingClaim {
                claim: "iat".into(),
            })?;
            if now > iat.saturating_add(max_age).saturating_add(cfg.leeway) {
                return Err(AuthError::TooOld);
            }
        }
        match (&c.cert_thumbprint, &ctx.client_cert_sha256) {
            (Some(bound), Some(presented)) if bound == presented => {}
            (Some(_), Some(_)) => return Err(AuthError::CertificateMismatch),
            (Some(_), None) => return Err(AuthError::NoClientCertificate),
            (None, _) if cfg.require_binding => return Err(AuthError::CertificateBindingRequired),
            (None, _) => {}
        }
        for scope in &cfg.required_scopes {
            if !c.has_scope(scope) {
                return Err(AuthError::InsufficientScope {
                    scope: scope.clone(),
                });
            }
        }
        if let Some(check) = &cfg.custom {
            check(c).map_err(|reason| AuthError::Rejected {
                reason: reason.into(),
            })?;
        }
        Ok(())
    }
}

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
        };
        let cache = (self.cache_capacity > 0).then(|| TokenCache::new(self.cache_capacity));
        let inner = Arc::new(Inner {
            id: NEXT_AUTHENTICATOR_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config,
            settings: self.settings,
            issuers,
            by_issuer,
            cache,
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        if let Ok(rt) = &runtime {
            let weak = Arc::downgrade(&inner);
            let handles: Vec<_> = inner
                .issuers
                .iter()
                .enumerate()
                .filter(|(_, issuer)| issuer.is_refreshable())
                .map(|(i, issuer)| {
                    rt.spawn(background_refresh(
                        weak.clone(),
                        i,
                        Arc::clone(&issuer.wake),
                    ))
                })
                .collect();
            if let Ok(mut tasks) = inner.tasks.lock() {
                tasks.extend(handles);
            }
        }
        Ok(JwtAuthenticator { inner })
    }
}
