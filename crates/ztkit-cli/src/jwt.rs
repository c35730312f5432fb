//! `ztkit jwt …`

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use jwt_oidc::{IssuerConfig, JwtAuthenticator, RequestContext};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum JwtCommand {
    /// Validate a JWT access token exactly as `JwtAuthLayer` would; print its claims (exit 0)
    /// or the reason it is refused (exit 1).
    Verify {
        /// The expected issuer (`iss`), exactly.
        #[arg(long)]
        issuer: String,
        /// The audience the token must be for.
        #[arg(long)]
        audience: String,
        /// Verify against this JWKS file instead of the issuer's OIDC discovery document.
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Require this `typ` header (e.g. `at+jwt`).
        #[arg(long)]
        require_type: Option<String>,
        /// Allow plain-http discovery/JWKS URLs (local testing only).
        #[arg(long)]
        insecure_http: bool,
        /// The token, or `-` to read it from standard input.
        token: String,
    },
}

pub(crate) fn run(cmd: JwtCommand) -> Result<(), Failure> {
    let JwtCommand::Verify {
        issuer,
        audience,
        jwks,
        require_type,
        insecure_http,
        token,
    } = cmd;
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut s)
            .map_err(|e| Failure::Usage(format!("cannot read the token from stdin: {e}")))?;
        s.trim().to_owned()
    } else {
        token
    };
    let source = match &jwks {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            IssuerConfig::static_jwks(issuer, bytes)
        }
        None => IssuerConfig::discover(issuer),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let mut builder = JwtAuthenticator::builder()
            .issuer(source)
            .audience(audience);
        if let Some(typ) = require_type {
            builder = builder.require_type(typ);
        }
        if insecure_http {
            builder = builder.allow_insecure_http();
        }
        let auth = builder
            .build()
            .map_err(|e| Failure::Usage(format!("invalid configuration: {e}")))?;
        let claims = auth
            .validate(&token, &RequestContext::new())
            .await
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let json = serde_json::to_string_pretty(claims.raw())
            .map_err(|e| Failure::Usage(format!("cannot encode claims: {e}")))?;
        println!("{json}");
        Ok(())
    })
}
