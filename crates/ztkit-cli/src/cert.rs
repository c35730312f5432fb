//! `ztkit cert …`

use std::path::{Path, PathBuf};

use clap::Subcommand;
use mtls_verify::{ChainVerifyOptions, IdentityAuthorizer, PeerIdentity, pem};
use rustls_pki_types::CertificateDer;

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Print the identity of a certificate (PEM or DER; the first certificate of a bundle) as JSON.
    Inspect {
        /// The certificate file.
        file: PathBuf,
    },
    /// Verify a client certificate chain exactly as an mtls-verify server would, and print
    /// the identity JSON on success.
    Verify {
        /// CA bundle the chain must lead to (PEM or DER); may be repeated.
        #[arg(long = "ca", required = true)]
        ca: Vec<PathBuf>,
        /// CRL file (PEM or DER); may be repeated. With CRLs, unknown status is refused.
        #[arg(long = "crl")]
        crl: Vec<PathBuf>,
        /// Intermediate certificates (PEM bundle) to add after the leaf file's own chain.
        #[arg(long)]
        intermediates: Option<PathBuf>,
        /// Require exactly this SPIFFE ID.
        #[arg(long, conflicts_with = "trust_domain")]
        spiffe_id: Option<String>,
        /// Require a SPIFFE ID in this trust domain.
        #[arg(long)]
        trust_domain: Option<String>,
        /// The leaf certificate (a PEM bundle may carry its intermediates after it).
        leaf: PathBuf,
    },
}

pub(crate) fn run(cmd: CertCommand) -> Result<(), Failure> {
    match cmd {
        CertCommand::Inspect { file } => {
            let certs = read_certs(&file)?;
            let leaf = certs.first().ok_or_else(|| {
                Failure::Usage(format!("{}: contains no certificate", file.display()))
            })?;
            let identity = PeerIdentity::from_der(leaf)
                .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
            print_json(&identity)
        }
        CertCommand::Verify {
            ca,
            crl,
            intermediates,
            spiffe_id,
            trust_domain,
            leaf,
        } => {
            let mut roots = Vec::new();
            for path in &ca {
                roots.extend(read_certs(path)?);
            }
            let mut crls = Vec::new();
            for path in &crl {
                crls.extend(pem::read_crls_file(path).map_err(|e| Failure::Usage(e.to_string()))?);
            }
            let mut chain = read_certs(&leaf)?;
            if let Some(path) = &intermediates {
                chain.extend(read_certs(path)?);
            }
            let mut options = ChainVerifyOptions::new(roots).crls(crls);
            let authorizer = match (spiffe_id, trust_domain) {
                (Some(id), _) => Some(IdentityAuthorizer::spiffe_ids([id])),
                (None, Some(td)) => Some(IdentityAuthorizer::trust_domain(&td)),
                (None, None) => None,
            };
            if let Some(authorizer) = authorizer {
                options =
                    options.authorizer(authorizer.map_err(|e| Failure::Usage(e.to_string()))?);
            }
            let identity = mtls_verify::verify_client_chain(&chain, &options)
                .map_err(|e| Failure::Refused(e.to_string()))?;
            print_json(&identity)
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    pem::read_certificates_file(path).map_err(|e| Failure::Usage(e.to_string()))
}

fn print_json(identity: &PeerIdentity) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(identity)
        .map_err(|e| Failure::Usage(format!("cannot encode identity: {e}")))?;
    println!("{json}");
    Ok(())
}
