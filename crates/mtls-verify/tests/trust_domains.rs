//! SPIFFE trust with federated trust domains, through real TLS handshakes: the bundle is
//! chosen by the peer's trust domain, the trust-domain policy and the authorizer both have
//! to agree, and every refusal is logged with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use std::path::Path;

use base64::Engine as _;
use mtls_verify::{
    ChainVerifyOptions, ClientTlsBuilder, Error, IdentityAuthorizer, MaterialHolder, ServerTls,
    ServerTlsBuilder, TrustDomainPolicy, verify_client_chain,
};
use support::{TestServer, client_with, connect, connect_named, wait_for};
use ztkit_test_support::{TestCa, TestCert, capture_warnings};

const A: &str = "a.example";
const B: &str = "b.example";

/// The local trust domain A (its CA, the server's SVID) and a federated trust domain B.
struct Domains {
    ca_a: TestCa,
    ca_b: TestCa,
    server: TestCert,
    client_a: TestCert,
    client_b: TestCert,
}

fn domains() -> Domains {
    let ca_a = TestCa::new("CA of a.example");
    let ca_b = TestCa::new("CA of b.example");
    let server = ca_a
        .leaf("server")
        .spiffe_id("spiffe://a.example/server")
        .dns("localhost")
        .server_auth()
        .issue();
    let client_a = svid(&ca_a, "spiffe://a.example/client");
    let client_b = svid(&ca_b, "spiffe://b.example/client");
    Domains {
        ca_a,
        ca_b,
        server,
        client_a,
        client_b,
    }
}

fn svid(ca: &TestCa, id: &str) -> TestCert {
    ca.leaf(id).spiffe_id(id).client_auth().issue()
}

impl Domains {
    fn server(&self) -> ServerTlsBuilder {
        ServerTlsBuilder::from_pem(
            self.server.chain_pem.as_bytes(),
            self.server.key_pem.as_bytes(),
            self.ca_a.cert_pem.as_bytes(),
        )
    }
}

/// A SPIFFE bundle (JSON) holding `cas` as `x509-svid` keys, plus a `jwt-svid` key that must
/// be skipped.
fn spiffe_bundle_json(cas: &[&TestCa]) -> String {
    let keys: Vec<String> = cas
        .iter()
        .map(|ca| {
            let der = base64::engine::general_purpose::STANDARD.encode(&ca.cert_der);
            format!(r#"{{"use":"x509-svid","kty":"EC","crv":"P-256","x5c":["{der}"]}}"#)
        })
        .chain([
            r#"{"use":"jwt-svid","kty":"EC","kid":"k1","crv":"P-256","x":"AA","y":"AA"}"#
                .to_owned(),
        ])
        .collect();
    format!(
        r#"{{"keys":[{}],"spiffe_sequence":1,"spiffe_refresh_hint":300}}"#,
        keys.join(",")
    )
}

/// Runs `f` on a current-thread runtime with warnings captured (the server's tasks run on
/// this thread, so its refusal lines are in the capture).
fn with_logs(f: impl std::future::Future<Output = ()>) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    capture_warnings(|| rt.block_on(f))
}

/// Connects `client` to a fresh server on `tls`: whether it was accepted, and the server's
/// refusal reason.
async fn attempt(tls: &ServerTls, ca_a: &TestCa, client: &TestCert) -> (bool, String) {
    let mut server = TestServer::start(tls.clone()).await;
    let out = connect(server.addr, client_with(ca_a, client)).await;
    let event = server.next_event().await;
    (out.accepted(), event.refused_reason())
}

#[test]
fn a_client_of_a_federated_trust_domain_needs_its_bundle_and_the_authorizer_to_allow_it() {
    let d = domains();
    let both = || {
        IdentityAuthorizer::any_of(vec![
            IdentityAuthorizer::trust_domain(A).unwrap(),
            IdentityAuthorizer::trust_domain(B).unwrap(),
        ])
    };
    let logs = async {
        // B's bundle present, the policy and the authorizer allow B: accepted.
        let federated = d
            .server()
            .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
            .trust_domain_policy(TrustDomainPolicy::allow_list([A, B]).unwrap())
            .authorizer(both())
            .build()
            .unwrap();
        assert!(attempt(&federated, &d.ca_a, &d.client_b).await.0);
        assert!(attempt(&federated, &d.ca_a, &d.client_a).await.0);

        // B's bundle present, the authorizer allows A only: refused by the authorizer.
        let a_only = d
            .server()
            .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
            .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
            .authorizer(IdentityAuthorizer::trust_domain(A).unwrap())
            .build()
            .unwrap();
        let (accepted, reason) = attempt(&a_only, &d.ca_a, &d.client_b).await;
        assert!(!accepted);
        assert!(reason.contains("not in trust domain a.example"), "{reason}");

        // The authorizer allows B but the bundle set has no bundle of B.
        let no_bundle = d
            .server()
            .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
            .authorizer(both())
            .build()
            .unwrap();
        let (accepted, reason) = attempt(&no_bundle, &d.ca_a, &d.client_b).await;
        assert!(!accepted);
        assert!(
            reason.contains("trust domain b.example is not trusted: no bundle"),
            "{reason}"
        );
        assert!(attempt(&no_bundle, &d.ca_a, &d.client_a).await.0);

        // B's bundle present, but the default policy (local only) excludes it.
        let local_only = d
            .server()
            .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
            .trust_domain_policy(TrustDomainPolicy::default())
            .authorizer(both())
            .build()
            .unwrap();
        let (accepted, reason) = attempt(&local_only, &d.ca_a, &d.client_b).await;
        assert!(!accepted);
        assert!(
            reason.contains("excluded by the trust-domain policy"),
            "{reason}"
        );
    }
    .await_logs();
    assert!(
        logs.contains("client not authorized") && logs.contains("not in trust domain a.example"),
        "{logs}"
    );
    assert!(
        logs.contains("client certificate refused")
            && logs.contains("trust domain b.example is not trusted: no bundle for it"),
        "{logs}"
    );
    assert!(
        logs.contains("excluded by the trust-domain policy (local trust domain only)"),
        "{logs}"
    );
}

/// `with_logs` reads better at the end of a test body.
trait AwaitLogs {
    fn await_logs(self) -> String;
}

impl<F: std::future::Future<Output = ()>> AwaitLogs for F {
    fn await_logs(self) -> String {
        with_logs(self)
    }
}

#[test]
fn a_ca_of_one_trust_domain_cannot_sign_identities_of_another() {
    let d = domains();
    // B's CA issues a certificate claiming an identity of A (and one of a third domain).
    let forged_a = svid(&d.ca_b, "spiffe://a.example/admin");
    let wrong_ca = svid(&TestCa::new("stranger"), "spiffe://b.example/x");
    let two_uris = d
        .ca_b
        .leaf("two")
        .spiffe_id("spiffe://b.example/one")
        .uri_san("spiffe://b.example/two")
        .client_auth()
        .issue();
    let tls = d
        .server()
        .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
        .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
        .build()
        .unwrap();
    let logs = async {
        let (accepted, reason) = attempt(&tls, &d.ca_a, &forged_a).await;
        assert!(!accepted);
        assert!(reason.contains("unknown issuer"), "{reason}");
        let (accepted, reason) = attempt(&tls, &d.ca_a, &wrong_ca).await;
        assert!(!accepted);
        assert!(reason.contains("unknown issuer"), "{reason}");
        let (accepted, reason) = attempt(&tls, &d.ca_a, &two_uris).await;
        assert!(!accepted);
        assert!(reason.contains("not an X509-SVID: 2 URI SANs"), "{reason}");
        // The genuine ones still pass.
        assert!(attempt(&tls, &d.ca_a, &d.client_b).await.0);
        assert!(attempt(&tls, &d.ca_a, &d.client_a).await.0);
    }
    .await_logs();
    assert!(
        logs.contains(&forged_a.serial_hex()) && logs.contains("unknown issuer"),
        "{logs}"
    );
    assert!(logs.contains("not an X509-SVID: 2 URI SANs"), "{logs}");
}

#[test]
fn a_policy_that_allows_no_bundle_of_the_set_is_an_error_at_build() {
    let d = domains();
    let err = d
        .server()
        .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
        .trust_domain_policy(TrustDomainPolicy::allow_list(["c.example"]).unwrap())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(
        err.to_string().contains("allows none of the trust domains"),
        "{err}"
    );
    let err = ClientTlsBuilder::from_pem(
        d.client_a.chain_pem.as_bytes(),
        d.client_a.key_pem.as_bytes(),
        d.ca_a.cert_pem.as_bytes(),
    )
    .trust_domain_policy(TrustDomainPolicy::allow_list([B]).unwrap())
    .build()
    .unwrap_err();
    assert!(
        err.to_string().contains("allows none of the trust domains"),
        "{err}"
    );

    // SPIFFE trust needs our own certificate to name the local trust domain.
    let plain = d.ca_a.leaf("plain").dns("localhost").server_auth().issue();
    let err = ServerTlsBuilder::from_pem(
        plain.chain_pem.as_bytes(),
        plain.key_pem.as_bytes(),
        d.ca_a.cert_pem.as_bytes(),
    )
    .trust_domain_policy(TrustDomainPolicy::local_only())
    .build()
    .unwrap_err();
    assert!(err.to_string().contains("X509-SVID"), "{err}");
}

#[test]
fn an_update_without_the_federated_bundle_refuses_that_trust_domain_from_the_next_handshake() {
    let d = domains();
    let tls = d
        .server()
        .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
        .trust_domain_policy(TrustDomainPolicy::allow_list([B]).unwrap())
        .build()
        .unwrap();
    with_logs(async {
        assert!(attempt(&tls, &d.ca_a, &d.client_b).await.0);
        // B removed: even though the policy then allows no bundle at all, the update is
        // taken (refusing it would keep trusting B).
        tls.update(mtls_verify::TlsMaterial::from_pem(
            d.server.chain_pem.as_bytes(),
            d.server.key_pem.as_bytes(),
            d.ca_a.cert_pem.as_bytes(),
        ))
        .unwrap();
        let (accepted, reason) = attempt(&tls, &d.ca_a, &d.client_b).await;
        assert!(!accepted);
        assert!(reason.contains("no bundle for it"), "{reason}");
    });
}

#[test]
fn a_client_verifies_a_server_of_a_federated_trust_domain_by_that_domains_bundle() {
    let d = domains();
    // A server in B that accepts clients of A.
    let server_b = d
        .ca_b
        .leaf("server-b")
        .spiffe_id("spiffe://b.example/api")
        .dns("localhost")
        .server_auth()
        .issue();
    let tls_b = ServerTlsBuilder::from_pem(
        server_b.chain_pem.as_bytes(),
        server_b.key_pem.as_bytes(),
        d.ca_b.cert_pem.as_bytes(),
    )
    .federated_bundle(A, d.ca_a.cert_pem.as_bytes())
    .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
    .build()
    .unwrap();
    let client = |policy: TrustDomainPolicy| {
        ClientTlsBuilder::from_pem(
            d.client_a.chain_pem.as_bytes(),
            d.client_a.key_pem.as_bytes(),
            d.ca_a.cert_pem.as_bytes(),
        )
        .federated_bundle(B, d.ca_b.cert_pem.as_bytes())
        .trust_domain_policy(policy)
        .server_authorizer(IdentityAuthorizer::spiffe_ids(["spiffe://b.example/api"]).unwrap())
        .allow_any_hostname()
        .build()
        .unwrap()
    };
    let logs = with_logs(async {
        let server = TestServer::start(tls_b.clone()).await;
        let federated = client(TrustDomainPolicy::allow_list([A, B]).unwrap());
        let out = connect_named(server.addr, federated.config(), "anything")
            .await
            .0;
        assert!(out.accepted(), "{out:?}");
        let local = client(TrustDomainPolicy::local_only());
        let out = connect_named(server.addr, local.config(), "anything")
            .await
            .0;
        assert!(!out.accepted(), "{out:?}");
    });
    assert!(
        logs.contains("server certificate refused")
            && logs.contains("excluded by the trust-domain policy"),
        "{logs}"
    );
}

#[test]
fn static_bundle_files_per_trust_domain_rotate_through_the_file_watcher() {
    let d = domains();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    };
    let (chain, key) = d.server.write_to(dir.path(), "server");
    // The local bundle as a SPIFFE bundle (JSON), B's as PEM.
    let local = write("a.json", &spiffe_bundle_json(&[&d.ca_a]));
    let b = write("b.pem", &d.ca_b.cert_pem);
    let tls = ServerTlsBuilder::from_files(&chain, &key, &local)
        .federated_bundle_file(B, &b)
        .trust_domain_policy(TrustDomainPolicy::any_in_bundle_set())
        .reload_interval(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let _reloader = tls.spawn_reloader();
    with_logs(async {
        assert!(attempt(&tls, &d.ca_a, &d.client_a).await.0);
        assert!(attempt(&tls, &d.ca_a, &d.client_b).await.0);
        // B's bundle file now holds an empty SPIFFE bundle: B has no bundle any more.
        let generation = tls.status().generation;
        write_empty_bundle(&b);
        wait_for("the emptied bundle to be taken", || {
            tls.status().generation > generation
        })
        .await;
        let (accepted, reason) = attempt(&tls, &d.ca_a, &d.client_b).await;
        assert!(!accepted);
        assert!(reason.contains("no bundle for it"), "{reason}");
        assert!(attempt(&tls, &d.ca_a, &d.client_a).await.0);
    });
}

fn write_empty_bundle(path: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, r#"{"keys":[],"spiffe_sequence":2}"#).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn verify_client_chain_checks_with_spiffe_trust_as_the_server_does() {
    let d = domains();
    let options = |policy: TrustDomainPolicy| {
        ChainVerifyOptions::new(vec![d.ca_a.cert_der.clone()])
            .spiffe_trust(A, policy)
            .federated_bundle(B, vec![d.ca_b.cert_der.clone()])
    };
    let any = options(TrustDomainPolicy::any_in_bundle_set());
    let peer = verify_client_chain(&d.client_b.chain_der, &any).unwrap();
    assert_eq!(peer.spiffe_id().unwrap().trust_domain(), B);
    verify_client_chain(&d.client_a.chain_der, &any).unwrap();
    let forged = svid(&d.ca_b, "spiffe://a.example/admin");
    let err = verify_client_chain(&forged.chain_der, &any).unwrap_err();
    assert!(err.to_string().contains("unknown issuer"), "{err}");
    let local = options(TrustDomainPolicy::local_only());
    let err = verify_client_chain(&d.client_b.chain_der, &local).unwrap_err();
    assert!(matches!(err, Error::UntrustedTrustDomain { .. }), "{err}");
    // Without SPIFFE trust, the same CA list is one bundle: B's CA is not in it.
    let classic = ChainVerifyOptions::new(vec![d.ca_a.cert_der.clone()]);
    assert!(verify_client_chain(&d.client_b.chain_der, &classic).is_err());
    let none = options(TrustDomainPolicy::allow_list(["c.example"]).unwrap());
    let err = verify_client_chain(&d.client_a.chain_der, &none).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}
