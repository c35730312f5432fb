//! `ztkit spiffe bundle-endpoint`: serve this trust domain's bundle from a SPIFFE bundle
//! endpoint (SPIFFE Federation), so another deployment can federate without SPIRE.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use mtls_verify::rustls::ServerConfig;
use mtls_verify::rustls::pki_types::CertificateDer;
use svid_client::bundle_endpoint::{BundleEndpointServer, spiffe_bundle_json};

use crate::Failure;

/// How often the bundle file is read again.
const BUNDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub(crate) enum SpiffeCommand {
    /// Serve the trust domain's bundle (SPIFFE bundle JSON) over HTTPS to any GET: the
    /// `https_web` profile with a web PKI certificate, `https_spiffe` with an SVID of the
    /// trust domain. Prints `listening on ADDR`, then serves until killed.
    BundleEndpoint {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// The endpoint's certificate chain (PEM), leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// The endpoint's private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The trust domain's CA certificates: PEM, DER or a SPIFFE bundle (JSON). Read
        /// again every second; a change is served with the next `spiffe_sequence`.
        #[arg(long)]
        bundle: PathBuf,
        /// The `spiffe_refresh_hint` announced to fetchers, in seconds.
        #[arg(long, default_value_t = 300)]
        refresh_hint: u64,
    },
}

pub(crate) fn run(cmd: SpiffeCommand) -> Result<(), Failure> {
    let SpiffeCommand::BundleEndpoint {
        listen,
        cert,
        key,
        bundle,
        refresh_hint,
    } = cmd;
    let usage = |e: &dyn std::fmt::Display| Failure::Usage(e.to_string());
    let chain = mtls_verify::pem::read_certificates_file(&cert).map_err(|e| usage(&e))?;
    let key = mtls_verify::pem::read_private_key_file(&key).map_err(|e| usage(&e))?;
    let tls = ServerConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| usage(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| usage(&format!("{}: {e}", cert.display())))?;
    let tls = Arc::new(tls);
    let hint = Duration::from_secs(refresh_hint);
    let (mut served, document) = read_bundle(&bundle, hint, 1)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| usage(&format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| usage(&format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| usage(&e))?;
        let endpoint = BundleEndpointServer::serve(listener, move || tls.clone(), document);
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
        let mut sequence = 1;
        loop {
            tokio::time::sleep(BUNDLE_POLL).await;
            match std::fs::read(&bundle) {
                Ok(bytes) if bytes == served => {}
                Ok(_) => match read_bundle(&bundle, hint, sequence + 1) {
                    Ok((bytes, document)) => {
                        sequence += 1;
                        served = bytes;
                        endpoint.set_bundle(document);
                        tracing::info!(sequence, "serving a new bundle");
                    }
                    Err(Failure::Usage(e) | Failure::Refused(e)) => {
                        tracing::warn!(error = %e, "bundle file refused; the last good bundle is served");
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, file = %bundle.display(), "cannot read the bundle file; the last good bundle is served");
                }
            }
        }
    })
}

/// The bundle file's bytes and the SPIFFE bundle document made of its CA certificates.
fn read_bundle(path: &Path, hint: Duration, sequence: u64) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::Usage(format!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| fail(&e))?;
    let cas: Vec<CertificateDer<'static>> =
        mtls_verify::pem::ca_bundle(&bytes).map_err(|e| fail(&e))?;
    if cas.is_empty() {
        return Err(fail(&"holds no CA certificate"));
    }
    let document = spiffe_bundle_json(&cas, hint, sequence).map_err(|e| fail(&e))?;
    Ok((bytes, document))
}
