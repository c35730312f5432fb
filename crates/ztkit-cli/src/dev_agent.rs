//! `ztkit dev-agent`: svid-client's test Workload API on a Unix socket, issuing X.509-SVIDs
//! from a CA it generates (rotated at half their lifetime) and JWT-SVIDs from its own keys,
//! so the examples can run with SPIFFE identities on a laptop.
//!
//! **Not for production**: it attests nothing (every caller on the socket gets every
//! identity), keeps its CA key in memory and forgets it on exit.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use svid_client::testing::{TestSvid, TestWorkloadApi};

use crate::Failure;

/// Serve a SPIFFE Workload API for local development (NOT for production: no attestation).
#[derive(Debug, Args)]
pub(crate) struct DevAgentArgs {
    /// The Unix socket to serve on (its directory must exist); clients use
    /// `SPIFFE_ENDPOINT_SOCKET=unix:PATH`.
    #[arg(long)]
    socket: PathBuf,
    /// The trust domain of the CA and of every identity.
    #[arg(long)]
    trust_domain: String,
    /// A SPIFFE ID (or a path such as `/web`) to issue SVIDs to; repeat for several (the
    /// first is the default SVID; each SVID's hint is its ID).
    #[arg(long = "id", required = true)]
    ids: Vec<String>,
    /// Lifetime of X.509-SVIDs in seconds (renewed at half).
    #[arg(long, default_value_t = 3600)]
    x509_ttl: u64,
    /// Lifetime of JWT-SVIDs in seconds.
    #[arg(long, default_value_t = 300)]
    jwt_ttl: u64,
}

pub(crate) fn run(args: DevAgentArgs) -> Result<(), Failure> {
    let usage = |e: &dyn std::fmt::Display| Failure::Usage(e.to_string());
    let trust_domain = args.trust_domain.trim_start_matches("spiffe://").to_owned();
    let ids: Vec<String> = args
        .ids
        .iter()
        .map(|id| match id.strip_prefix('/') {
            Some(path) => format!("spiffe://{trust_domain}/{path}"),
            None => id.clone(),
        })
        .collect();
    for id in &ids {
        let parsed = mtls_verify::SpiffeId::parse(id).map_err(|e| usage(&format!("{id}: {e}")))?;
        if parsed.trust_domain() != trust_domain {
            return Err(Failure::Usage(format!(
                "{id} is not in the trust domain {trust_domain}"
            )));
        }
    }
    let ca = DevCa::new(&trust_domain).map_err(|e| usage(&e))?;
    let ttl = Duration::from_secs(args.x509_ttl.max(2));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| usage(&format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let agent = TestWorkloadApi::start(&args.socket)
            .map_err(|e| usage(&format!("cannot serve on {}: {e}", args.socket.display())))?;
        agent.issue_jwt_svids(ids.clone(), Duration::from_secs(args.jwt_ttl.max(1)));
        tracing::warn!("dev-agent: a Workload API for development only, with no attestation");
        println!("SPIFFE_ENDPOINT_SOCKET={}", agent.endpoint());
        let _ = std::io::stdout().flush();
        loop {
            let svids = ids
                .iter()
                .map(|id| ca.svid(id, ttl))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| usage(&e))?;
            agent.set_svids(svids);
            tracing::info!(ids = ?ids, "issued X.509-SVIDs");
            tokio::time::sleep(ttl / 2).await;
        }
    })
}

/// A CA made at startup: ECDSA P-256, the trust domain's SPIFFE ID as its URI SAN.
struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl DevCa {
    fn new(trust_domain: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("ztkit dev-agent CA for {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let der = params.self_signed(&key)?.der().to_vec();
        Ok(DevCa { params, key, der })
    }

    /// An X.509-SVID for `id`, valid from a minute ago for `ttl`.
    fn svid(&self, id: &str, ttl: Duration) -> Result<TestSvid, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + ttl;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(TestSvid::new(
            id,
            vec![cert.der().to_vec()],
            key.serialize_der(),
            vec![self.der.clone()],
        )
        .hint(id))
    }
}
