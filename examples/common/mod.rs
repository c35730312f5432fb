//! Flags shared by the example servers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mtls_verify::{IdentityAuthorizer, ServerTls, ServerTlsBuilder};

pub(crate) mod logging;

/// TLS and listener flags (each also readable from the environment).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// Server certificate chain (PEM), leaf first.
    #[arg(long, env = "ZTKIT_TLS_CERT")]
    pub(crate) cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, env = "ZTKIT_TLS_KEY")]
    pub(crate) key: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long, env = "ZTKIT_CLIENT_CA")]
    pub(crate) client_ca: PathBuf,
    /// CRL file(s) (PEM or DER); may be repeated.
    #[arg(long, env = "ZTKIT_CRL", value_delimiter = ',')]
    pub(crate) crl: Vec<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "ZTKIT_LISTEN", default_value = "127.0.0.1:8443")]
    pub(crate) listen: SocketAddr,
    /// SPIFFE IDs allowed to call (RequireIdentityLayer); may be repeated.
    #[arg(long, env = "ZTKIT_ALLOW_SPIFFE_ID", value_delimiter = ',')]
    pub(crate) allow_spiffe_id: Vec<String>,
    /// Trust domain allowed to call (RequireIdentityLayer).
    #[arg(long, env = "ZTKIT_ALLOW_TRUST_DOMAIN")]
    pub(crate) allow_trust_domain: Option<String>,
    /// Accept TLS 1.2 as well (off: TLS 1.3 only).
    #[arg(long)]
    pub allow_tls12: bool,
    /// Let clients connect without a certificate (a presented one is still verified).
    /// `axum_mtls` then also leaves out `RequireIdentityLayer`: the TLS-only baseline of
    /// the load run (`scripts/load-mtls.sh`). Off by default.
    #[arg(long)]
    pub(crate) allow_unauthenticated: bool,
    /// How often the cert/key/CA/CRL files are checked for changes, in milliseconds.
    #[arg(long, env = "ZTKIT_RELOAD_MS", default_value_t = 1000)]
    pub(crate) reload_ms: u64,
    /// How long a client may take to complete the TLS handshake, in milliseconds.
    #[arg(long, env = "ZTKIT_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub(crate) handshake_timeout_ms: u64,
}

impl TlsArgs {
    /// Builds and validates the server TLS material; typed error naming the file on failure.
    pub(crate) fn server_tls(&self) -> Result<ServerTls, mtls_verify::Error> {
        let mut builder = ServerTlsBuilder::from_files(&self.cert, &self.key, &self.client_ca)
            .reload_interval(Duration::from_millis(self.reload_ms))
            .handshake_timeout(Duration::from_millis(self.handshake_timeout_ms));
        for crl in &self.crl {
            builder = builder.crl_file(crl);
        }
        if self.allow_tls12 {
            builder = builder.allow_tls12();
        }
        if self.allow_unauthenticated {
            builder = builder.allow_unauthenticated();
        }
        builder.build()
    }

    /// Who may call, checked per request by `RequireIdentityLayer`.
    pub(crate) fn request_authorizer(&self) -> Result<IdentityAuthorizer, mtls_verify::Error> {
        let mut allowed = Vec::new();
        if !self.allow_spiffe_id.is_empty() {
            allowed.push(IdentityAuthorizer::spiffe_ids(&self.allow_spiffe_id)?);
        }
        if let Some(td) = &self.allow_trust_domain {
            allowed.push(IdentityAuthorizer::trust_domain(td)?);
        }
        Ok(match allowed.len() {
            0 => IdentityAuthorizer::any(),
            1 => allowed.remove(0),
            _ => IdentityAuthorizer::any_of(allowed),
        })
    }
}

/// Optional bearer-token (JWT access token) flags. Without `--jwt-issuer` no token is
/// asked for.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct JwtArgs {
    /// Issuer URL whose access tokens are accepted (its keys are found by OpenID discovery).
    /// When set, every request needs a valid `Authorization: Bearer` token.
    #[arg(long, env = "ZTKIT_JWT_ISSUER", requires = "jwt_audience")]
    pub(crate) jwt_issuer: Option<String>,
    /// Audience (`aud`) the tokens must be issued for, e.g. the resource indicator.
    #[arg(long, env = "ZTKIT_JWT_AUDIENCE", requires = "jwt_issuer")]
    pub(crate) jwt_audience: Option<String>,
    /// Scope the token must grant (RequireClaimsLayer::scopes); may be repeated.
    #[arg(long, requires = "jwt_issuer")]
    pub(crate) jwt_require_scope: Vec<String>,
    /// Allow a plain-http issuer and JWKS URL. For loopback tests only: keys fetched over
    /// http can be replaced by anyone on the path.
    #[arg(long, requires = "jwt_issuer")]
    pub(crate) jwt_insecure_http: bool,
}

impl JwtArgs {
    /// The token authenticator, `None` without `--jwt-issuer`. Fetches the issuer's keys
    /// once, so an unreachable or wrong issuer fails at start-up with an error naming it, and
    /// starts refreshing them: keep the returned handle while serving.
    pub(crate) async fn authenticator(
        &self,
    ) -> Result<Option<(jwt_oidc::JwtAuthenticator, jwt_oidc::RefreshHandle)>, jwt_oidc::AuthError>
    {
        let Some(issuer) = &self.jwt_issuer else {
            return Ok(None);
        };
        let mut builder = jwt_oidc::JwtAuthenticator::builder()
            .issuer(jwt_oidc::IssuerConfig::discover(issuer.as_str()));
        if let Some(audience) = &self.jwt_audience {
            builder = builder.audience(audience.as_str());
        }
        if self.jwt_insecure_http {
            builder = builder.allow_insecure_http();
        }
        let auth = builder.build()?;
        auth.ensure_keys().await?;
        let refresher = auth.spawn_refresher()?;
        Ok(Some((auth, refresher)))
    }

    /// `RequireClaimsLayer::scopes` for `--jwt-require-scope`, `None` when no scope is required.
    pub(crate) fn scope_layer(&self) -> Option<zt_tower::RequireClaimsLayer> {
        (!self.jwt_require_scope.is_empty())
            .then(|| zt_tower::RequireClaimsLayer::scopes(self.jwt_require_scope.iter().cloned()))
    }
}

/// Prints an error that ended the server readably (`error: …`, the `Display` text, which
/// names the file or URL that failed; a JSON line with `--log-format json`) to stderr and
/// exits 1.
pub(crate) fn exit_on_error(result: Result<(), Box<dyn std::error::Error>>) {
    if let Err(e) = result {
        logging::print_fatal(&e);
        std::process::exit(1);
    }
}
