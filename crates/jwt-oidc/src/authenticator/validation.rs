//! Validation proper: the per-token steps (size, token cache, header, issuer, key,
//! signature, claims) and the per-request checks (time, certificate binding, scopes, custom).

use std::sync::Arc;
use std::time::SystemTime;

use crate::claims::{ShortText, Text};
use crate::error::untrusted;
use crate::jwks::VerifyingKey;
use crate::key_cache::unix_secs;
use crate::token::{self, RawClaims, StrList};
use crate::token_cache::Entry;
use crate::{AuthError, Claims};

use super::JwtAuthenticator;

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

/// Turns a bearer token into verified [`Claims`]: what a resource server's authentication
/// layer (zt-tower's `JwtAuthLayer`) needs from a validator. [`JwtAuthenticator`] is one;
/// `svid-client`'s JWT-SVID validator, whose key sets follow the SPIFFE Workload API, is
/// another. Implementations fail closed: a token that cannot be checked is an `Err`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), jwt_oidc::AuthError> {
/// use jwt_oidc::testing::{TestKey, jwks, now_unix};
/// use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator, RequestContext, ValidateToken};
///
/// async fn subject_of(v: &impl ValidateToken, token: &str) -> Option<String> {
///     let claims = v.validate_token(token, &RequestContext::new()).await.ok()?;
///     claims.subject().map(str::to_owned)
/// }
/// let key = TestKey::generate(Algorithm::Es256, "k1");
/// let auth = JwtAuthenticator::builder()
///     .issuer(IssuerConfig::static_jwks("https://idp", jwks(&[&key])))
///     .audience("api")
///     .build()?;
/// let token = key.token(&serde_json::json!({
///     "iss": "https://idp", "aud": "api", "sub": "alice", "exp": now_unix() + 60,
/// }));
/// assert_eq!(subject_of(&auth, &token).await.as_deref(), Some("alice"));
/// assert_eq!(subject_of(&auth, "not.a.token").await, None);
/// # Ok(()) }
/// ```
pub trait ValidateToken: Send + Sync + 'static {
    /// Validates `token` (without `Bearer `) for a request.
    ///
    /// # Errors
    /// Why the token is refused (map it to a response with [`AuthError::bearer_error`]).
    fn validate_token<'a>(
        &'a self,
        token: &'a str,
        ctx: &'a RequestContext,
    ) -> impl Future<Output = Result<Arc<Claims>, AuthError>> + Send + 'a;
}

impl ValidateToken for JwtAuthenticator {
    fn validate_token<'a>(
        &'a self,
        token: &'a str,
        ctx: &'a RequestContext,
    ) -> impl Future<Output = Result<Arc<Claims>, AuthError>> + Send + 'a {
        self.validate(token, ctx)
    }
}

pub(super) enum Step {
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

impl JwtAuthenticator {
    pub(super) fn validate_step(&self, token: &str, ctx: &RequestContext) -> Step {
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
        let raw = tri!(token::parse_claims(
            &payload_json,
            !cfg.required_claims.is_empty()
        ));
        let iss = if cfg.spiffe_issuers {
            // JWT-SVIDs: the keys are those of the `sub`'s trust domain; `iss` plays no part.
            let Some(sub) = raw.sub.as_deref() else {
                return AuthError::MissingClaim {
                    claim: "sub".into(),
                }
                .into();
            };
            tri!(spiffe_trust_domain(sub).ok_or(AuthError::InvalidClaim {
                claim: "sub",
                reason: "not a SPIFFE ID",
            }))
        } else {
            let Some(iss) = raw.iss.as_deref() else {
                return AuthError::UnknownIssuer { iss: "".into() }.into();
            };
            iss
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
        if cfg.spiffe_issuers {
            claims.issuer = Text::Owned(issuer.issuer.clone());
        }
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
            for required in &cfg.required_claims {
                if !raw.has_non_null(required) {
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

/// `spiffe://<trust domain>` of a SPIFFE ID (the prefix of `id`), or `None` when `id` is not
/// a valid SPIFFE ID: lowercase trust domain of `[a-z0-9._-]`, a path of non-empty segments
/// of `[A-Za-z0-9._-]` other than `.` and `..`, no query, fragment, port or user info.
pub(crate) fn spiffe_trust_domain(id: &str) -> Option<&str> {
    const SCHEME: &str = "spiffe://";
    let rest = id.strip_prefix(SCHEME)?;
    let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let domain_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
    if domain.is_empty() || !domain.chars().all(domain_ok) {
        return None;
    }
    if !path.is_empty() {
        let segment_ok = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
        for segment in path.get(1..)?.split('/') {
            if segment.is_empty()
                || segment == "."
                || segment == ".."
                || !segment.chars().all(segment_ok)
            {
                return None;
            }
        }
    }
    id.get(..SCHEME.len() + domain.len())
}

#[cfg(test)]
mod tests {
    use super::spiffe_trust_domain;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{TestKey, jwks, now_unix};
    use crate::{Algorithm, IssuerConfig, JwtAuthenticatorBuilder};

    const ISS: &str = "https://i";

    fn builder(key: &TestKey) -> JwtAuthenticatorBuilder {
        JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks(ISS, jwks(&[key])))
            .audience("api")
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"iss": ISS, "aud": "api", "sub": "s", "exp": now_unix() + 300});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    async fn validate(
        auth: &JwtAuthenticator,
        key: &TestKey,
        c: Value,
        ctx: RequestContext,
    ) -> Result<Arc<Claims>, AuthError> {
        auth.validate(&key.token(&c), &ctx).await
    }

    #[test]
    fn request_context_hashes_the_client_certificate() {
        let der = b"not really a certificate";
        let ctx = RequestContext::new().with_client_cert_der(der);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        assert_eq!(
            ctx.client_cert_sha256.as_ref().map(|d| &d[..]),
            Some(digest.as_ref())
        );
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_leeway() {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let auth = builder(&key)
            .leeway(Duration::from_secs(10))
            .build()
            .unwrap();
        let now = now_unix();
        let at = |c| validate(&auth, &key, claims(c), RequestContext::new());
        assert!(at(json!({"exp": now - 5})).await.is_ok());
        assert_eq!(
            at(json!({"exp": now - 20})).await.unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            at(json!({"nbf": now + 60})).await.unwrap_err(),
            AuthError::NotYetValid
        );
        assert_eq!(
            at(json!({"iat": now + 60})).await.unwrap_err(),
            AuthError::IssuedInFuture
        );
        assert!(at(json!({"nbf": now + 5, "iat": now + 5})).await.is_ok());
    }

    #[tokio::test]
    async fn request_checks_run_again_on_a_cache_hit() {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let auth = builder(&key).require_scope("read").build().unwrap();
        let thumb = [7u8; 32];
        let bound =
            claims(json!({"scope": "read", "cnf": {"x5t#S256": crate::testing::b64url(&thumb)}}));
        let mine = RequestContext::new().with_client_cert_sha256(thumb);
        assert!(validate(&auth, &key, bound.clone(), mine).await.is_ok());
        assert_eq!(auth.token_cache_len(), 1);
        let theirs = RequestContext::new().with_client_cert_sha256([8u8; 32]);
        assert_eq!(
            validate(&auth, &key, bound.clone(), theirs)
                .await
                .unwrap_err(),
            AuthError::CertificateMismatch
        );
        assert_eq!(
            validate(&auth, &key, bound, RequestContext::new())
                .await
                .unwrap_err(),
            AuthError::NoClientCertificate
        );
        let no_scope = claims(json!({"scope": "write"}));
        assert!(matches!(
            validate(&auth, &key, no_scope, RequestContext::new()).await,
            Err(AuthError::InsufficientScope { .. })
        ));
    }

    #[tokio::test]
    async fn claims_are_read_from_the_verified_payload() {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let auth = builder(&key)
            .custom_check(|c| match c.subject() {
                Some("blocked") => Err("blocked subject".to_owned()),
                _ => Ok(()),
            })
            .build()
            .unwrap();
        let c = validate(
            &auth,
            &key,
            claims(json!({"aud": ["x", "api"], "scp": ["a", "b"], "client_id": "c\u{e9}"})),
            RequestContext::new(),
        )
        .await
        .unwrap();
        assert_eq!(c.issuer(), ISS);
        assert_eq!(c.audiences().collect::<Vec<_>>(), ["x", "api"]);
        assert!(c.has_scope("b"));
        assert_eq!(c.client_id(), Some("c\u{e9}"));
        // The claims set was read once for validation; the whole value is built on first use.
        let reparsed: Value = serde_json::from_str(c.json()).unwrap();
        assert_eq!(c.raw(), &reparsed);
        assert_eq!(c.get("scp"), Some(&json!(["a", "b"])));
        assert!(matches!(
            validate(
                &auth,
                &key,
                claims(json!({"sub": "blocked"})),
                RequestContext::new()
            )
            .await,
            Err(AuthError::Rejected { .. })
        ));
        let no_exp = json!({"iss": ISS, "aud": "api"});
        assert!(matches!(
            validate(&auth, &key, no_exp, RequestContext::new()).await,
            Err(AuthError::MissingClaim { .. })
        ));
        assert_eq!(
            validate(
                &auth,
                &key,
                claims(json!({"aud": "other"})),
                RequestContext::new()
            )
            .await
            .unwrap_err(),
            AuthError::WrongAudience
        );
    }

    #[test]
    fn spiffe_ids_give_their_trust_domain_and_anything_else_none() {
        let cases = [
            ("spiffe://example.org/ns/web", Some("spiffe://example.org")),
            ("spiffe://example.org", Some("spiffe://example.org")),
            ("spiffe://a-b_c.9/x.y/Z", Some("spiffe://a-b_c.9")),
            ("spiffe://Example.org/web", None),
            ("spiffe://example.org/", None),
            ("spiffe://example.org//web", None),
            ("spiffe://example.org/../web", None),
            ("spiffe://example.org/web?x=1", None),
            ("spiffe://example.org:443/web", None),
            ("spiffe://user@example.org/web", None),
            ("spiffe:///web", None),
            ("https://example.org/web", None),
            ("", None),
        ];
        for (id, want) in cases {
            assert_eq!(spiffe_trust_domain(id), want, "{id}");
        }
    }
}
