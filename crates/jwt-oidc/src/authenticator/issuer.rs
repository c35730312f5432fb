//! [`IssuerConfig`]: which issuers are trusted and where each one's keys come from.

use std::sync::Arc;

use crate::source::JwksSource;

pub(super) enum IssuerKind {
    Discover,
    JwksUri(String),
    Static(Vec<u8>),
    Source(Arc<dyn JwksSource>),
}

/// One trusted issuer and where its keys come from.
pub struct IssuerConfig {
    pub(super) issuer: String,
    pub(super) kind: IssuerKind,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_constructor_keeps_the_issuer_and_says_where_keys_come_from() {
        let cases = [
            (IssuerConfig::discover("https://a"), "discover"),
            (
                IssuerConfig::jwks_uri("https://a", "https://a/keys"),
                "jwks_uri https://a/keys",
            ),
            (
                IssuerConfig::static_jwks("https://a", "{\"keys\":[]}"),
                "static",
            ),
        ];
        for (config, keys) in cases {
            assert_eq!(config.issuer(), "https://a");
            let shown = format!("{config:?}");
            assert!(shown.contains(&format!("keys: {keys:?}")), "{shown}");
        }
    }

    #[test]
    fn debug_never_shows_a_static_jwks() {
        let config = IssuerConfig::static_jwks("https://a", "{\"keys\":[{\"n\":\"SECRETISH\"}]}");
        assert!(!format!("{config:?}").contains("SECRETISH"));
    }
}
