//! [`IssuerKeys`]: one issuer's key set as a [`MaterialHolder`], so any source (a secrets
//! manager, a file you watch, a message bus) can push JWKS documents into the authenticator.

use std::sync::Arc;

use zt_rotate::{MaterialHolder, RotationStatus};

use super::Inner;
use crate::AuthError;
use crate::key_cache::IssuerState;
use crate::source::JwksDocument;

/// One issuer's cached key set, as ztkit's shared [`MaterialHolder`] (from
/// [`JwtAuthenticator::issuer_keys`](crate::JwtAuthenticator::issuer_keys)).
///
/// [`update`](MaterialHolder::update) takes a JWKS document: it is parsed and checked whole
/// (as a fetched one is), then its keys are published atomically; a bad document is refused,
/// counted and logged once, and the last good keys keep serving. Keys that leave the set
/// drop the verified tokens they signed from the token cache. The same keys pushed again
/// renew their freshness (the staleness limit counts from the last good document) without a
/// new [`RotationStatus::generation`].
///
/// A custom source of your own, for example a secrets manager, runs as a task that pushes
/// what it reads and reports what it cannot read:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), jwt_oidc::AuthError> {
/// use jwt_oidc::testing::{TestKey, jwks, now_unix};
/// use jwt_oidc::{Algorithm, AuthError, IssuerConfig, JwksDocument, JwtAuthenticator};
/// use jwt_oidc::{MaterialHolder, RequestContext};
///
/// /// Stands in for a secrets manager client.
/// fn read_secret(_name: &str) -> Result<String, String> {
/// #   Ok(jwks(&[&TestKey::generate(Algorithm::Es256, "from-vault")]))
/// }
///
/// let first = TestKey::generate(Algorithm::Es256, "k1");
/// let auth = JwtAuthenticator::builder()
///     .issuer(IssuerConfig::static_jwks("https://idp.example.com", jwks(&[&first])))
///     .audience("orders-api")
///     .build()?;
/// let keys = auth.issuer_keys("https://idp.example.com").expect("configured issuer");
///
/// // What the source's task does each time it polls the secret:
/// match read_secret("idp/jwks") {
///     Ok(json) => {
///         let doc = JwksDocument { body: json.into_bytes(), max_age: None };
///         if let Err(e) = keys.update(doc) {
///             eprintln!("refused: {e}"); // already counted and logged; old keys still serve
///         }
///     }
///     Err(why) => keys.source_failed(AuthError::Fetch { url: "vault:idp/jwks".into(), reason: why.into() }),
/// }
/// assert_eq!(keys.status().generation, 2);
///
/// // A garbage document is refused; the keys pushed before keep serving.
/// let bad = JwksDocument { body: b"not json".to_vec(), max_age: None };
/// assert!(keys.update(bad).is_err());
/// assert!(keys.status().last_error.is_some());
/// assert_eq!(auth.key_status("https://idp.example.com").unwrap().key_ids, ["from-vault"]);
/// # let _ = (now_unix(), RequestContext::new());
/// # Ok(()) }
/// ```
///
/// Run such a task under a [`zt_rotate::TaskHandle`] so that it stops when you drop it.
#[derive(Clone)]
pub struct IssuerKeys {
    pub(super) inner: Arc<Inner>,
    pub(super) index: usize,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.state().map(|s| &*s.issuer))
            .finish_non_exhaustive()
    }
}

impl IssuerKeys {
    fn state(&self) -> Option<&IssuerState> {
        self.inner.issuers.get(self.index)
    }

    /// The issuer whose keys these are.
    #[must_use]
    pub fn issuer(&self) -> &str {
        self.state().map_or("", |s| &s.issuer)
    }
}

impl MaterialHolder for IssuerKeys {
    type Material = JwksDocument;
    type Error = AuthError;

    fn update(&self, material: JwksDocument) -> Result<(), AuthError> {
        let inner = &*self.inner;
        let state = self.state().ok_or(AuthError::InvalidConfig {
            what: "issuer",
            reason: "no such issuer".into(),
        })?;
        state
            .apply(
                Ok(material),
                &inner.settings,
                &inner.config.allowed,
                inner.cache.as_ref(),
            )
            .map(drop)
    }

    fn source_failed(&self, error: AuthError) {
        if let Some(state) = self.state() {
            state.source_failed(error);
        }
    }

    fn status(&self) -> RotationStatus {
        self.state()
            .map(IssuerState::rotation_status)
            .unwrap_or_else(|| zt_rotate::StatusRecorder::<String>::new("JWKS").snapshot())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{TestKey, jwks, now_unix};
    use crate::{Algorithm, IssuerConfig, JwtAuthenticator, RequestContext};

    const ISS: &str = "https://idp.example.com";

    fn document(json: String) -> JwksDocument {
        JwksDocument {
            body: json.into_bytes(),
            max_age: None,
        }
    }

    #[tokio::test]
    async fn pushed_keys_verify_the_next_token_and_bad_ones_keep_the_last_good() {
        let old = TestKey::generate(Algorithm::Es256, "old");
        let new = TestKey::generate(Algorithm::Es256, "new");
        let auth = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks(ISS, jwks(&[&old])))
            .audience("api")
            .build()
            .unwrap();
        let keys = auth.issuer_keys(ISS).unwrap();
        assert!(auth.issuer_keys("https://other").is_none());
        assert_eq!(keys.issuer(), ISS);
        let claims = json!({"iss": ISS, "aud": "api", "exp": now_unix() + 300});
        let ctx = RequestContext::new();
        assert!(auth.validate(&new.token(&claims), &ctx).await.is_err());

        keys.update(document(jwks(&[&new]))).unwrap();
        assert!(auth.validate(&new.token(&claims), &ctx).await.is_ok());
        assert!(
            auth.validate(&old.token(&claims), &ctx).await.is_err(),
            "old key left"
        );
        let status = keys.status();
        assert_eq!((status.generation, status.failures), (2, 0));

        assert!(keys.update(document("{\"keys\":[]}".into())).is_err());
        keys.source_failed(AuthError::Fetch {
            url: "vault:jwks".into(),
            reason: "sealed".into(),
        });
        let status = keys.status();
        assert_eq!((status.generation, status.failures), (2, 2));
        assert!(
            status
                .last_error
                .is_some_and(|e| e.message.contains("sealed"))
        );
        assert!(auth.validate(&new.token(&claims), &ctx).await.is_ok());
        assert_eq!(auth.key_status(ISS).unwrap().rotation.generation, 2);

        // The same keys again: a success (the error clears), not a new generation.
        keys.update(document(jwks(&[&new]))).unwrap();
        let status = keys.status();
        assert_eq!(status.generation, 2);
        assert!(status.last_error.is_none());
    }
}
