//! `ztkit cert …`

use std::path::{Path, PathBuf};

use clap::Subcommand;
use mtls_verify::{ChainVerifyOptions, IdentityAuthorizer, PeerIdentity, TrustDomainPolicy, pem};
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
        /// Verify with SPIFFE trust, as a server with a trust-domain policy: the `--ca`
        /// bundles are this (local) trust domain's, and the chain is verified against the
        /// bundle of its leaf's own trust domain.
        #[arg(long)]
        local_trust_domain: Option<String>,
        /// A federated trust domain's bundle, `TD=PATH` (PEM, DER or SPIFFE bundle JSON);
        /// may be repeated. Needs `--local-trust-domain`.
        #[arg(long = "federated-bundle", requires = "local_trust_domain")]
        federated_bundle: Vec<String>,
        /// Trust domains the policy allows (default: the local one only); may be repeated.
        #[arg(long = "allow-trust-domain", requires = "local_trust_domain")]
        allow_trust_domain: Vec<String>,
        /// The policy allows every trust domain with a bundle.
        #[arg(
            long,
            requires = "local_trust_domain",
            conflicts_with = "allow_trust_domain"
        )]
        any_trust_domain: bool,
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
            local_trust_domain,
            federated_bundle,
            allow_trust_domain,
            any_trust_domain,
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
            if let Some(local) = local_trust_domain {
                let usage = |e: mtls_verify::Error| Failure::Usage(e.to_string());
                let policy = if any_trust_domain {
                    TrustDomainPolicy::any_in_bundle_set()
                } else if allow_trust_domain.is_empty() {
                    TrustDomainPolicy::local_only()
                } else {
                    TrustDomainPolicy::allow_list(&allow_trust_domain).map_err(usage)?
                };
                options = options.spiffe_trust(&local, policy);
                for entry in &federated_bundle {
                    let Some((td, path)) = entry.split_once('=') else {
                        return Err(Failure::Usage(format!(
                            "--federated-bundle {entry:?}: expected TD=PATH"
                        )));
                    };
                    options = options.federated_bundle(td, read_ca_bundle(Path::new(path))?);
                }
            }
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

/// A CA bundle file: PEM, DER or SPIFFE bundle JSON.
fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let certs =
        pem::ca_bundle(&bytes).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: contains no certificate",
            path.display()
        )));
    }
    Ok(certs)
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
