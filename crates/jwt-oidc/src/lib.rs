//! Strict validation of JWT access tokens for resource servers: OIDC discovery, a JWKS cache
//! that survives provider outages for a bounded time, algorithm pinning by key, certificate-
//! bound tokens (RFC 8705) and a verified-token cache.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), jwt_oidc::AuthError> {
//! use jwt_oidc::testing::{TestKey, jwks, now_unix};
//! use jwt_oidc::{Algorithm, AuthError, IssuerConfig, JwtAuthenticator, RequestContext};
//! use serde_json::json;
//!
//! let key = TestKey::generate(Algorithm::Es256, "k1");
//! let auth = JwtAuthenticator::builder()
//!     // In production: IssuerConfig::discover("https://idp.example.com/realms/main")
//!     .issuer(IssuerConfig::static_jwks("https://idp.example.com", jwks(&[&key])))
//!     .audience("orders-api")
//!     .require_type("at+jwt")
//!     .build()?;
//!
//! let claims = json!({
//!     "iss": "https://idp.example.com", "aud": "orders-api", "sub": "alice",
//!     "exp": now_unix() + 300, "scope": "orders:read orders:write",
//! });
//! let ctx = RequestContext::new();
//! let verified = auth.validate(&key.token(&claims), &ctx).await?;
//! assert_eq!(verified.subject(), Some("alice"));
//! assert!(verified.has_scope("orders:write"));
//!
//! // Another audience is refused, and the client only learns `invalid_token`.
//! let other = json!({"iss": "https://idp.example.com", "aud": "billing", "exp": now_unix() + 300});
//! let err = auth.validate(&key.token(&other), &ctx).await.unwrap_err();
//! assert_eq!(err, AuthError::WrongAudience);
//! assert_eq!(err.bearer_error().as_str(), "invalid_token");
//! # Ok(()) }
//! ```
//!
//! # How validation works
//!
//! 1. Tokens longer than the limit (8 KiB) are refused unparsed.
//! 2. With the token cache on, the token is looked up (by a hash, then compared whole); a hit
//!    still runs the per-request checks (time, certificate binding, required scopes, custom
//!    check) and is dropped when its key leaves the JWKS or its `exp` passes.
//! 3. The header is parsed: `jwk`, `jku`, `x5u`, `x5c` are refused, `alg` must be an
//!    asymmetric algorithm in the allow-list, unknown `crit` entries are refused, `typ` is
//!    checked when required. A header byte-for-byte equal to the last valid one this thread
//!    saw for this authenticator reuses that verdict (issuers repeat their header).
//! 4. The unverified `iss` selects the issuer (exact string match) before any key is used.
//! 5. The key is looked up by `kid` in that issuer's cached JWKS; its algorithm (from the
//!    JWK's `alg`, else `kty`/`crv`) must equal the header's. An unknown `kid` triggers at most
//!    one refresh per cooldown, shared by concurrent requests.
//! 6. The signature is verified with the aws-lc-rs key parsed when the JWKS was loaded.
//! 7. Claims: `exp` required, `nbf`/`iat` with leeway, `aud` contains a configured audience,
//!    optional max age and required claims, `cnf.x5t#S256` against the client certificate.
//!
//! OIDC discovery reads two fields of the provider's metadata, `issuer` (which must equal the
//! configured issuer exactly) and `jwks_uri`, with a small serde struct of this crate's own:
//! a resource server needs nothing else from the document, and a full OpenID client library
//! would bring a second crypto stack and a second JWK model onto the request path.
//!
//! `jsonwebtoken` provides the JWK model the JWKS parser uses; the token itself is checked
//! by this crate with aws-lc-rs directly, because `jsonwebtoken::decode` rebuilds its key on
//! every call (for RSA that costs about 15 % of the verification). So the crypto-backend
//! feature of `jsonwebtoken` does not decide whether validation works here. Header and claims
//! are read by the crate's own strict RFC 8259 reader (one pass, borrowed strings, nesting
//! limited to 32), held to serde_json's verdicts by a differential fuzz target (`jwt_json`).

mod algorithm;
mod authenticator;
mod claims;
mod error;
mod http;
mod json;
mod jwks;
mod key_cache;
mod source;
mod token;
mod token_cache;

#[cfg(feature = "test-util")]
pub mod testing;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use algorithm::Algorithm;
pub use authenticator::{
    CustomCheck, IssuerConfig, IssuerKeys, JwtAuthenticator, JwtAuthenticatorBuilder,
    RefreshHandle, RequestContext, ValidateToken,
};
pub use claims::Claims;
pub use error::{AuthError, BearerError};
pub use jwks::{Jwks, MAX_JWKS_KEYS, SkippedKey, VerifyingKey};
pub use key_cache::KeySetStatus;
pub use source::{BoxFuture, JwksDocument, JwksSource};
pub use zt_rotate::{MaterialHolder, RotationStatus};
