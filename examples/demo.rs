//! ztkit's main demo, on embedded defaults: nothing to set up.
//!
//! ```sh
//! cargo run --example demo
//! cargo run --example demo -- --log-format json   # log lines as JSON objects
//! ```
//!
//! It generates a throw-away PKI into a temporary directory, starts an axum server and a
//! tonic server on loopback behind mutual TLS (certificates from files, hot reload on),
//! then plays clients through the cases and prints what each got:
//!
//! * a valid client certificate → 200 / OK
//! * no client certificate → handshake refused, and the client is told why: the TLS alert
//!   `CertificateRequired` (found by walking the client error's `source()` chain)
//! * a certificate from another CA → refused with `UnknownCA`
//! * an expired certificate → refused with `CertificateExpired`
//! * a certificate from the right CA whose SPIFFE ID is not allowed → 403 / PERMISSION_DENIED
//! * rotation of the server certificate mid-run → new handshakes see the new serial
//!
//! Then tokens, policy and audit (a JWT layer, a Rego policy, a hash-chained audit log),
//! and SPIFFE: a test Workload API started in-process (on a Unix socket in the temp dir)
//! hands out X.509-SVIDs; a tonic server on its SVID (`SvidSource` → `ServerTls` →
//! `TlsListener`) admits clients of its own trust domain:
//!
//! * a client with an SVID of the server's trust domain → OK, the server sees its SPIFFE ID
//! * a client with an SVID of another, not federated, trust domain → handshake refused
//! * the agent rotates the server's SVID → the next call sees the new serial
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::{Router, routing::get};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jwt_oidc::testing::{JwksServer, TestKey, b64url, jwks, now_unix};
use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator};
use mtls_verify::{IdentityAuthorizer, ServerTls, ServerTlsBuilder};
use policy_rego::{PolicyEngine, PolicyOptions};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use std::path::Path;
use svid_client::testing::{TestSvid, TestWorkloadApi};
use svid_client::{SvidSource, authorize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::ServiceBuilder;
use zt_audit::AuditLog;
use zt_tower::{
    AuditLayer, Decision, JwtAuthLayer, PolicyLayer, RequestIdentityExt, RequireIdentityLayer,
    TlsConnectInfo, TlsListener, TokenClaims, VerifiedPeer,
};
use ztkit_test_support::{TestCa, TestCert};
use ztkit_testproto::greeter_client::GreeterClient;
use ztkit_testproto::greeter_server::{Greeter, GreeterServer};
use ztkit_testproto::{HelloReply, HelloRequest};

const ALLOWED: &str = "spiffe://example.org/ns/default/sa/client";

struct Case {
    name: &'static str,
    expect: &'static str,
    http: String,
    grpc: String,
    ok: bool,
}

/// The demo's only flag: how its (few) log lines look.
#[derive(Debug, Parser)]
#[command(about = "ztkit's demo: mTLS, JWT and policy on loopback, nothing to set up")]
struct DemoArgs {
    #[command(flatten)]
    log: common::logging::LogArgs,
}

/// What a client-certificate case should get.
#[derive(Clone, Copy)]
enum Want {
    /// 200 / OK.
    Served,
    /// 403 / PERMISSION_DENIED from the identity layer.
    Forbidden,
    /// The handshake refused with this TLS alert (rustls' name for it).
    Refused(&'static str),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = DemoArgs::parse();
    common::logging::init(&args.log, "error");

    // 1. A throw-away PKI in a temp dir, as cert-manager would mount it.
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("ztkit demo root");
    let other_ca = TestCa::new("some other root");
    let server = server_cert(&ca);
    let (cert_path, key_path) = server.write_to(dir.path(), "server");
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem)?;

    let valid = ca.leaf("client").spiffe_id(ALLOWED).client_auth().issue();
    let intruder = ca
        .leaf("intruder")
        .spiffe_id("spiffe://example.org/ns/default/sa/intruder")
        .client_auth()
        .issue();
    let foreign = other_ca
        .leaf("foreign")
        .spiffe_id(ALLOWED)
        .client_auth()
        .issue();
    let expired = ca
        .leaf("expired")
        .spiffe_id(ALLOWED)
        .client_auth()
        .expired()
        .issue();

    println!("ztkit demo: PKI in {}", dir.path().display());

    // 2. The servers: certificate files reloaded every 200 ms; only ALLOWED may call.
    let tls = ServerTlsBuilder::from_files(&cert_path, &key_path, &ca_path)
        .reload_interval(Duration::from_millis(200))
        .build()?;
    let _reloader = tls.spawn_reloader();
    let authorizer = IdentityAuthorizer::spiffe_ids([ALLOWED])?;
    let http_addr = start_axum(tls.clone(), authorizer.clone()).await?;
    let grpc_addr = start_tonic(tls.clone(), authorizer).await?;
    println!("axum  on https://{http_addr}\ntonic on https://{grpc_addr}\n");

    // 3. The clients.
    let roots = Arc::new({
        let mut r = RootCertStore::empty();
        r.add(ca.cert_der.clone())?;
        r
    });
    let mut cases = Vec::new();
    // A refused handshake shows the TLS alert the server sent, the reason it refused: the
    // client sees it in the error's source chain (see `refusal`), for HTTP and for gRPC.
    for (name, expect, cert, want) in [
        (
            "valid client certificate",
            "200 / OK",
            Some(&valid),
            Want::Served,
        ),
        (
            "no client certificate",
            "CertificateRequired alert",
            None,
            Want::Refused("CertificateRequired"),
        ),
        (
            "certificate from another CA",
            "UnknownCA alert",
            Some(&foreign),
            Want::Refused("UnknownCA"),
        ),
        (
            "expired certificate",
            "CertificateExpired alert",
            Some(&expired),
            Want::Refused("CertificateExpired"),
        ),
        (
            "SPIFFE ID not authorized",
            "403 / PERMISSION_DENIED",
            Some(&intruder),
            Want::Forbidden,
        ),
    ] {
        let cfg = client_config(&roots, cert);
        let http = http_get(&cfg, http_addr, "/").await;
        let grpc = grpc_hello(&cfg, grpc_addr).await;
        let ok = match want {
            Want::Served => http.starts_with("200") && grpc.starts_with("OK"),
            Want::Forbidden => http.starts_with("403") && grpc.starts_with("PERMISSION_DENIED"),
            Want::Refused(alert) => {
                let refused_with = |got: &str| got == format!("refused: {alert} alert");
                // (A bare "transport error" or "connection closed" would fail here.)
                refused_with(&http) && refused_with(&grpc)
            }
        };
        cases.push(Case {
            name,
            expect,
            http,
            grpc,
            ok,
        });
    }

    // 4. Rotation: cert-manager writes a new server certificate; new handshakes see it.
    let valid_cfg = client_config(&roots, Some(&valid));
    let before = server_serial(&valid_cfg, http_addr).await;
    let generation = tls.status().generation;
    let rotated = server_cert(&ca);
    rotated.write_to(dir.path(), "server");
    wait_for_generation(&tls, generation).await;
    let after = server_serial(&valid_cfg, http_addr).await;
    let http = http_get(&valid_cfg, http_addr, "/").await;
    cases.push(Case {
        name: "server certificate rotated mid-run",
        expect: "new serial, 200",
        ok: after == rotated.serial_hex() && before != after && http.starts_with("200"),
        grpc: format!("serial {} -> {}", short(&before), short(&after)),
        http,
    });

    print_table(&cases);

    // 5. Tokens, policy and audit: AuditLayer → JwtAuthLayer → PolicyLayer in front of
    //    axum and tonic, keys served as a JWKS on loopback, decisions by a Rego policy.
    let audit_dir = dir.path().join("audit");
    let zt = start_zero_trust(tls.clone(), &audit_dir).await?;
    let t = &zt.tokens;
    let mine = mtls_verify::PeerIdentity::from_der(&valid.cert_der)?;
    let bound_to_me = t.bound(mine.fingerprint_sha256());
    let bound_to_other = t.bound(&[7u8; 32]);
    let mut token_cases = Vec::new();
    for (name, expect, method, path, token, want) in [
        (
            "valid token, scope orders:read",
            "200 allowed by policy",
            "GET",
            "/orders/42",
            Some(t.reader.as_str()),
            "200",
        ),
        (
            "no token",
            "401 bare Bearer challenge",
            "GET",
            "/orders/42",
            None,
            "401",
        ),
        (
            "expired token",
            "401 invalid_token",
            "GET",
            "/orders/42",
            Some(t.expired.as_str()),
            "401",
        ),
        (
            "token for another audience",
            "401 invalid_token",
            "GET",
            "/orders/42",
            Some(t.wrong_audience.as_str()),
            "401",
        ),
        (
            "valid token, DELETE without admin",
            "403 denied by policy",
            "DELETE",
            "/orders/42",
            Some(t.reader.as_str()),
            "403",
        ),
        (
            "admin token, DELETE",
            "200 allowed by policy",
            "DELETE",
            "/orders/42",
            Some(t.admin.as_str()),
            "200",
        ),
        (
            "token bound to this client cert",
            "200",
            "GET",
            "/orders/42",
            Some(bound_to_me.as_str()),
            "200",
        ),
        (
            "token bound to another cert",
            "401 invalid_token",
            "GET",
            "/orders/42",
            Some(bound_to_other.as_str()),
            "401",
        ),
    ] {
        let http = http_request(&valid_cfg, zt.http_addr, method, path, token).await;
        token_cases.push(Case {
            name,
            expect,
            ok: http.starts_with(want),
            http,
            grpc: String::new(),
        });
    }
    for (name, expect, token, want) in [
        (
            "gRPC SayHello, valid token",
            "OK",
            Some(t.greeter.as_str()),
            "OK",
        ),
        (
            "gRPC SayHello, no token",
            "UNAUTHENTICATED",
            None,
            "UNAUTHENTICATED",
        ),
        (
            "gRPC SayHello, token without scope",
            "PERMISSION_DENIED",
            Some(t.reader.as_str()),
            "PERMISSION_DENIED",
        ),
    ] {
        let grpc = grpc_hello_with(&valid_cfg, zt.grpc_addr, token).await;
        token_cases.push(Case {
            name,
            expect,
            ok: grpc.starts_with(want),
            http: String::new(),
            grpc,
        });
    }
    println!(
        "
tokens, policy and audit (client certificate: {ALLOWED})
"
    );
    print_table(&token_cases);

    // 6. The audit trail: one hash-chained record per request, denials included.
    let files = zt.audit.files()?;
    let report = zt_audit::verify_files(&files)?;
    println!(
        "
audit log {}: {} records in {} file(s), chain {}",
        audit_dir.display(),
        report.records,
        report.files,
        match &report.problem {
            None => "intact".to_owned(),
            Some(p) => format!("BROKEN at {p}"),
        }
    );
    let audit_ok = report.problem.is_none() && report.records >= token_cases.len() as u64;
    cases.push(Case {
        name: "audit chain verifies",
        expect: "intact",
        ok: audit_ok,
        http: String::new(),
        grpc: String::new(),
    });
    cases.extend(token_cases);

    // 7. SPIFFE: SVIDs from a Workload API (a test agent in-process), trust by trust domain.
    let spiffe = spiffe_cases(dir.path()).await?;
    println!("\nSPIFFE (test Workload API in-process; server admits trust domain {SPIFFE_TD})\n");
    print_table_with(&spiffe, "peer / certificate", "gRPC (tonic on SVIDs)");
    cases.extend(spiffe);

    let failed = cases.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        println!("\n{failed} case(s) did not behave as expected");
        std::process::exit(1);
    }
    println!("\nall {} cases behaved as expected", cases.len());
    Ok(())
}

const SPIFFE_TD: &str = "example.org";
const SPIFFE_SERVER: &str = "spiffe://example.org/greeter";
const SPIFFE_CLIENT: &str = "spiffe://example.org/client";
const FOREIGN_CLIENT: &str = "spiffe://other.example/client";
/// The alert the server sends a client whose chain is not from a trust domain it trusts.
const SPIFFE_FOREIGN_ALERT: &str = "CertificateUnknown";

/// An X.509-SVID for `id`, issued by `ca` (its trust domain's CA), for the test agent.
fn test_svid(ca: &TestCa, id: &str, hint: &str) -> (TestSvid, TestCert) {
    let cert = ca
        .leaf(hint)
        .spiffe_id(id)
        .valid_for(Duration::from_secs(3600))
        .issue();
    let svid = TestSvid::new(
        id,
        cert.chain_der.iter().map(|c| c.to_vec()).collect(),
        cert.key_der.clone(),
        vec![ca.cert_der.to_vec()],
    )
    .hint(hint);
    (svid, cert)
}

/// The SPIFFE part: two test agents (trust domains `example.org` and `other.example`, not
/// federated with each other from the server's side), a tonic server on its SVID admitting
/// `example.org`, and a call from each trust domain, then a rotation of the server's SVID.
async fn spiffe_cases(dir: &Path) -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let connect = |endpoint: String, hint: &str| {
        SvidSource::builder()
            .endpoint(endpoint)
            .svid_hint(hint)
            .connect()
    };
    // The agent of example.org: the server's and a client's SVIDs.
    let ca = TestCa::new("example.org SPIFFE CA");
    let agent = TestWorkloadApi::start(dir.join("spiffe-agent.sock"))?;
    let (client_svid, _) = test_svid(&ca, SPIFFE_CLIENT, "client");
    let (server_svid, _) = test_svid(&ca, SPIFFE_SERVER, "server");
    agent.set_svids(vec![server_svid, client_svid.clone()]);
    let server_source = connect(agent.endpoint(), "server").await?;
    let client_source = connect(agent.endpoint(), "client").await?;

    // The server: its SVID, rotated by the source; clients of its own trust domain only
    // (chains checked against that trust domain's bundle, then the SPIFFE ID's domain).
    let members = authorize::member_of(SPIFFE_TD)?;
    let server_tls = server_source.server_tls(|tls| tls.authorizer(members.clone()))?;
    let addr = start_tonic(server_tls.clone(), members).await?;

    // The agent of other.example: a client SVID from another CA. That client trusts the
    // server (it federates with example.org); the server does not federate back.
    let other_ca = TestCa::new("other.example SPIFFE CA");
    let other_agent = TestWorkloadApi::start(dir.join("spiffe-agent-other.sock"))?;
    other_agent.set_federated_bundle(SPIFFE_TD, vec![ca.cert_der.to_vec()]);
    other_agent.set_svids(vec![test_svid(&other_ca, FOREIGN_CLIENT, "client").0]);
    let foreign_source = connect(other_agent.endpoint(), "client").await?;

    let client_cfg = |source: &SvidSource, policy| {
        let tls = source.client_tls(|tls| {
            tls.trust_domain_policy(policy)
                .server_authorizer(authorize::exact(SPIFFE_SERVER).unwrap())
                .allow_any_hostname()
        })?;
        let mut cfg = (*tls.config()).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        // A full handshake per connection: a resumed TLS 1.3 session keeps the certificates
        // of the handshake it resumes, so it would hide the rotation this part shows.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok::<_, svid_client::Error>(Arc::new(cfg))
    };
    let member_cfg = client_cfg(&client_source, mtls_verify::TrustDomainPolicy::local_only())?;
    let foreign_cfg = client_cfg(
        &foreign_source,
        mtls_verify::TrustDomainPolicy::allow_list([SPIFFE_TD])?,
    )?;

    let mut cases = Vec::new();
    let grpc = grpc_hello(&member_cfg, addr).await;
    let seen = grpc
        .rsplit("you are ")
        .next()
        .unwrap_or_default()
        .to_owned();
    cases.push(Case {
        name: "SVID of the server's trust domain",
        expect: "OK, server sees its ID",
        ok: grpc.starts_with("OK") && seen == SPIFFE_CLIENT,
        http: format!("server saw {seen}"),
        grpc,
    });

    let grpc = grpc_hello(&foreign_cfg, addr).await;
    cases.push(Case {
        name: "SVID of another trust domain",
        expect: "refused at the handshake",
        ok: grpc == format!("refused: {SPIFFE_FOREIGN_ALERT} alert"),
        http: format!("client {FOREIGN_CLIENT}"),
        grpc,
    });

    // Rotation: the agent hands the server a new SVID; the source swaps it into the
    // server's TLS holder (its generation moves) and the next call sees the new serial.
    let before = server_serial(&member_cfg, addr).await;
    let generation = server_tls.status().generation;
    let (server_svid, rotated) = test_svid(&ca, SPIFFE_SERVER, "server");
    agent.set_svids(vec![server_svid, client_svid]);
    wait_for_generation(&server_tls, generation).await;
    let after = server_serial(&member_cfg, addr).await;
    let grpc = grpc_hello(&member_cfg, addr).await;
    cases.push(Case {
        name: "agent rotates the server's SVID",
        expect: "new serial, OK",
        ok: after == rotated.serial_hex() && before != after && grpc.starts_with("OK"),
        http: format!("serial {} -> {}", short(&before), short(&after)),
        grpc,
    });
    drop((
        server_source,
        client_source,
        foreign_source,
        agent,
        other_agent,
    ));
    Ok(cases)
}

/// The demo's Rego policy: readers may GET orders, only admins may DELETE, the Greeter
/// needs scope `greet`; each decision says why.
const POLICY: &str = r#"package demo.authz

default decision := {"allow": false, "reasons": ["no rule allows this request"]}

decision := {"allow": true, "reasons": [sprintf("%s may read orders", [input.token.sub])]} if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "orders"
    "orders:read" in split(input.token.scope, " ")
}

decision := {"allow": false, "reasons": ["only admins may delete orders"]} if {
    input.attributes.request.http.method == "DELETE"
    roles := object.get(input.token, "roles", [])
    not "admin" in roles
}

decision := {"allow": true, "reasons": ["admin may delete orders"]} if {
    input.attributes.request.http.method == "DELETE"
    "admin" in input.token.roles
}

decision := {"allow": true, "reasons": ["greeting allowed"]} if {
    input.grpc.service == "helloworld.Greeter"
    "greet" in split(input.token.scope, " ")
}
"#;

/// Tokens the demo's little identity provider hands out.
struct DemoTokens {
    key: TestKey,
    issuer: String,
    reader: String,
    admin: String,
    greeter: String,
    expired: String,
    wrong_audience: String,
}

impl DemoTokens {
    fn new(key: TestKey, issuer: String) -> Self {
        let mint = |aud: &str, exp_in: i64, extra: serde_json::Value| {
            let exp = (now_unix() as i64 + exp_in) as u64;
            let mut claims =
                json!({"iss": issuer, "aud": aud, "sub": "alice", "exp": exp, "iat": now_unix()});
            if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            key.token(&claims)
        };
        DemoTokens {
            reader: mint("orders", 300, json!({"scope": "orders:read"})),
            admin: mint(
                "orders",
                300,
                json!({"scope": "orders:read", "roles": ["admin"]}),
            ),
            greeter: mint("orders", 300, json!({"scope": "greet"})),
            expired: mint("orders", -3600, json!({"scope": "orders:read"})),
            wrong_audience: mint("billing", 300, json!({"scope": "orders:read"})),
            key,
            issuer,
        }
    }

    /// A reader token bound to a client certificate (RFC 8705 `cnf.x5t#S256`).
    fn bound(&self, thumbprint: &[u8; 32]) -> String {
        self.key.token(&json!({
            "iss": self.issuer, "aud": "orders", "sub": "alice", "exp": now_unix() + 300,
            "scope": "orders:read", "cnf": {"x5t#S256": b64url(thumbprint)},
        }))
    }
}

struct ZeroTrust {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    tokens: DemoTokens,
    audit: AuditLog,
    _jwks: JwksServer,
    _refresher: jwt_oidc::RefreshHandle,
}

async fn start_zero_trust(
    tls: ServerTls,
    audit_dir: &Path,
) -> Result<ZeroTrust, Box<dyn std::error::Error>> {
    // A signing key and its JWKS + OIDC discovery document, served on loopback.
    let key = TestKey::generate(Algorithm::Es256, "demo-1");
    let jwks_server = JwksServer::start(jwks(&[&key])).await?;
    let auth = JwtAuthenticator::builder()
        .issuer(IssuerConfig::discover(jwks_server.issuer()))
        .audience("orders")
        .allow_insecure_http() // loopback demo only
        .build()?;
    auth.ensure_keys().await?;
    let refresher = auth.spawn_refresher()?;

    let policy_dir = audit_dir.with_file_name("policy");
    std::fs::create_dir_all(&policy_dir)?;
    std::fs::write(policy_dir.join("authz.rego"), POLICY)?;
    let options = PolicyOptions::new().decision_rule("data.demo.authz.decision");
    let engine = PolicyEngine::load(&policy_dir, options)?;

    let audit = AuditLog::builder(audit_dir).open()?;
    let layers = ServiceBuilder::new()
        .layer(AuditLayer::new(audit.clone()))
        .layer(JwtAuthLayer::new(auth))
        .layer(PolicyLayer::new(engine));

    let app = Router::new()
        .route("/orders/{id}", get(orders_handler).delete(orders_handler))
        .layer(layers.clone());
    let listener = TlsListener::bind("127.0.0.1:0".parse()?, tls.clone()).await?;
    let http_addr = listener.local_addr();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsConnectInfo>(),
        )
        .await
        .unwrap();
    });

    let listener = TlsListener::bind("127.0.0.1:0".parse()?, tls).await?;
    let grpc_addr = listener.local_addr();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layers)
            .add_service(GreeterServer::new(DemoGreeter))
            .serve_with_incoming(listener.into_stream())
            .await
            .unwrap();
    });

    Ok(ZeroTrust {
        http_addr,
        grpc_addr,
        tokens: DemoTokens::new(key, jwks_server.issuer()),
        audit,
        _jwks: jwks_server,
        _refresher: refresher,
    })
}

async fn orders_handler(TokenClaims(claims): TokenClaims, Decision(decision): Decision) -> String {
    format!(
        "{} ({})",
        claims.subject().unwrap_or("?"),
        decision.reasons.join("; ")
    )
}

fn server_cert(ca: &TestCa) -> TestCert {
    ca.leaf("localhost")
        .dns("localhost")
        .ip(std::net::Ipv4Addr::LOCALHOST.into())
        .server_auth()
        .issue()
}

async fn start_axum(tls: ServerTls, authorizer: IdentityAuthorizer) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/",
            get(|VerifiedPeer(peer): VerifiedPeer| async move {
                format!(
                    "hello, {}",
                    peer.spiffe_id().map(|s| s.as_str()).unwrap_or("?")
                )
            }),
        )
        .layer(RequireIdentityLayer::new(authorizer));
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), tls).await?;
    let addr = listener.local_addr();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsConnectInfo>(),
        )
        .await
        .unwrap();
    });
    Ok(addr)
}

struct DemoGreeter;

#[tonic::async_trait]
impl Greeter for DemoGreeter {
    async fn say_hello(
        &self,
        req: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let who = req
            .peer_identity()
            .and_then(|p| p.spiffe_id().map(|s| s.to_string()))
            .unwrap_or_default();
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello {}, you are {who}", req.get_ref().name),
        }))
    }
}

async fn start_tonic(
    tls: ServerTls,
    authorizer: IdentityAuthorizer,
) -> std::io::Result<SocketAddr> {
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), tls).await?;
    let addr = listener.local_addr();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(RequireIdentityLayer::new(authorizer))
            .add_service(GreeterServer::new(DemoGreeter))
            .serve_with_incoming(listener.into_stream())
            .await
            .unwrap();
    });
    Ok(addr)
}

fn client_config(roots: &Arc<RootCertStore>, cert: Option<&TestCert>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone());
    let mut cfg = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain_der.clone(), c.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn tls_connect(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One HTTP/2 GET; "STATUS body" or "refused: why".
async fn http_get(cfg: &Arc<ClientConfig>, addr: SocketAddr, path: &str) -> String {
    http_request(cfg, addr, "GET", path, None).await
}

/// One HTTP/2 request, optionally with a bearer token; "STATUS body" or "refused: why".
async fn http_request(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> String {
    let seen = TransportError::default();
    let result = async {
        let tls = tls_connect(cfg, addr).await?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(Watched::new(tls, &seen)),
        )
        .await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await?;
        let status = res.status();
        let www = res
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let res_challenge = move |_: &http::StatusCode, _: &Bytes| {
            www.clone().map(|w| format!("({w})")).unwrap_or_default()
        };
        let body = res.into_body().collect().await?.to_bytes();
        let challenge = res_challenge(&status, &body);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(format!(
            "{} {}{challenge}",
            status.as_u16(),
            String::from_utf8_lossy(&body)
        ))
    };
    match tokio::time::timeout(Duration::from_secs(5), result).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => refusal(&*e, &seen),
        Err(_) => "refused: timed out".into(),
    }
}

/// One SayHello; "OK message", "STATUS_CODE message" or "refused: why".
async fn grpc_hello(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> String {
    grpc_hello_with(cfg, addr, None).await
}

async fn grpc_hello_with(cfg: &Arc<ClientConfig>, addr: SocketAddr, token: Option<&str>) -> String {
    let token = token.map(|t| format!("Bearer {t}"));
    let cfg = cfg.clone();
    let seen = TransportError::default();
    let watch = seen.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let cfg = cfg.clone();
        let watch = watch.clone();
        Box::pin(async move {
            let tls = tls_connect(&cfg, addr).await?;
            Ok(TokioIo::new(Watched::new(tls, &watch)))
        }) as Pin<Box<dyn Future<Output = std::io::Result<_>> + Send>>
    });
    let result = async {
        let channel = tonic::transport::Endpoint::from_static("https://localhost")
            .connect_with_connector(connector)
            .await
            .map_err(|e| refusal(&e, &seen))?;
        let mut client = GreeterClient::new(channel);
        let mut req = tonic::Request::new(HelloRequest {
            name: "demo".into(),
        });
        if let Some(t) = &token {
            req.metadata_mut().insert(
                "authorization",
                t.parse().map_err(|_| "bad token".to_owned())?,
            );
        }
        match client.say_hello(req).await {
            Ok(res) => Ok(format!("OK {}", res.into_inner().message)),
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                Ok(format!("PERMISSION_DENIED {}", status.message()))
            }
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                Ok(format!("UNAUTHENTICATED {}", status.message()))
            }
            // Anything else here is the connection failing: the handshake was refused (with
            // TLS 1.3 the client learns it at its first request). The status itself only
            // says "Unknown: transport error"; the server's alert is in its source chain.
            Err(status) => Err(refusal(&status, &seen)),
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), result).await {
        Ok(Ok(s)) | Ok(Err(s)) => s,
        Err(_) => "refused: timed out".into(),
    }
}

async fn server_serial(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> String {
    let tls = tls_connect(cfg, addr).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    mtls_verify::PeerIdentity::from_der(&leaf)
        .unwrap()
        .serial_hex()
        .to_owned()
}

async fn wait_for_generation(tls: &ServerTls, old: u64) {
    // The reloader bumps the generation when it swaps in new material; poll the value
    // (not a fixed sleep) with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tls.status().generation == old && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// "refused: why" for a connection that failed: the TLS alert the server sent
/// (`CertificateRequired`, `UnknownCA`, `CertificateExpired`…), which says why it refused.
///
/// tonic's `Status` ("Unknown: transport error") and hyper's errors wrap the I/O error that
/// carries the alert, so walk `Error::source()` down to the first `io::Error`. A request
/// that was still queued when the connection died gets only hyper's "connection closed"
/// (no source); the alert is then the one the transport itself saw (`seen`).
fn refusal(e: &(dyn std::error::Error + 'static), seen: &TransportError) -> String {
    let mut cur = Some(e);
    let mut innermost = e;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return format!("refused: {}", alert_reason(io));
        }
        innermost = err;
        cur = err.source();
    }
    match seen.get() {
        Some(reason) => format!("refused: {reason}"),
        None => {
            let text: String = innermost.to_string().chars().take(60).collect();
            format!("refused: {text}")
        }
    }
}

/// "CertificateRequired alert" for rustls' "received fatal alert: CertificateRequired",
/// else the error's text.
fn alert_reason(io: &std::io::Error) -> String {
    let text = io.to_string();
    match text.strip_prefix("received fatal alert: ") {
        Some(alert) => format!("{alert} alert"),
        None => text,
    }
}

/// The first I/O error a client connection's transport hit, shared with the code that
/// reports the outcome.
#[derive(Clone, Default)]
struct TransportError(Arc<std::sync::OnceLock<String>>);

impl TransportError {
    fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn record<T>(
        &self,
        result: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if let std::task::Poll::Ready(Err(e)) = &result {
            let _ = self.0.set(alert_reason(e));
        }
        result
    }
}

/// A client TLS stream that records its first I/O error in a [`TransportError`].
struct Watched<T> {
    io: T,
    seen: TransportError,
}

impl<T> Watched<T> {
    fn new(io: T, seen: &TransportError) -> Self {
        Watched {
            io,
            seen: seen.clone(),
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        self.seen.record(result)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.seen.record(result)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.seen.record(result)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_shutdown(cx);
        self.seen.record(result)
    }
}

fn short(s: &str) -> &str {
    &s[s.len().saturating_sub(8)..]
}

fn print_table(cases: &[Case]) {
    print_table_with(cases, "HTTP (axum)", "gRPC (tonic)");
}

/// The table with other headers for the third and fourth columns.
fn print_table_with(cases: &[Case], third: &str, fourth: &str) {
    let w = |s: &str, n: usize| {
        let s: String = s.chars().take(n).collect();
        format!("{s:<n$}")
    };
    println!(
        "{} | {} | {} | {} | ok",
        w("case", 34),
        w("expected", 26),
        w(third, 40),
        w(fourth, 40)
    );
    println!("{}", "-".repeat(34 + 26 + 40 + 40 + 14));
    for c in cases {
        println!(
            "{} | {} | {} | {} | {}",
            w(c.name, 34),
            w(c.expect, 26),
            w(&c.http.replace('\n', " "), 40),
            w(&c.grpc, 40),
            if c.ok { "yes" } else { "NO" }
        );
    }
}
