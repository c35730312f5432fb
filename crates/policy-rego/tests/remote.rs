//! Policy for a fleet: bundles downloaded from a real static server (nginx, with its own
//! ETags and `If-None-Match` handling) and replaced under load, signed bundles, long polling,
//! and decision logs (and audit lines) uploaded to a receiver that checks every batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use policy_rego::{
    BundleDownloader, BundleSigner, BundleWriter, DecisionLogConfig, DownloadOutcome, LogUploader,
    Manifest, MaterialHolder, PolicyEngine, PolicyError, PolicyInput, PolicyOptions, PolicySet,
    Service, SignatureVerifier,
};

const ALLOW_ALICE: &str =
    "package http.authz\n\ndefault allow := false\n\nallow if input.user == \"alice\"\n";
const TEST_ALICE: &str =
    "package http.authz\n\ntest_alice if allow with input as {\"user\": \"alice\"}\n";
const TEST_BOB_FAILS: &str =
    "package http.authz\n\ntest_bob if allow with input as {\"user\": \"bob\"}\n";

fn writer(revision: &str, test: &str) -> BundleWriter {
    let mut manifest = Manifest::default();
    manifest.revision = revision.into();
    BundleWriter::new()
        .manifest(&manifest)
        .file("http/authz/policy.rego", ALLOW_ALICE)
        .file("http/authz/policy_test.rego", test)
        .file(
            "http/authz/data.json",
            format!(r#"{{"revision": "{revision}"}}"#),
        )
}

fn bundle(revision: &str) -> Vec<u8> {
    writer(revision, TEST_ALICE).to_tar_gz().unwrap()
}

fn engine_with(options: PolicyOptions, archive: &[u8]) -> PolicyEngine {
    let set = PolicySet::compile(
        options.loader().load_tar_gz("bootstrap", archive).unwrap(),
        &options,
    )
    .unwrap();
    PolicyEngine::with_set(set, options)
}

/// Waits for `condition`, checking every few milliseconds, failing after 20 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const BUNDLE: &str = "bundles/authz.tar.gz";

fn local(port: u16) -> Service {
    Service::builder(format!("http://127.0.0.1:{port}"))
        .allow_insecure_http()
        .build()
        .unwrap()
}

// === nginx ===

/// nginx as an unprivileged-config foreground process on a free loopback port, serving
/// `www/` with its native ETags (`"<mtime hex>-<size hex>"`) and `If-None-Match` handling.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn start() -> Nginx {
        Nginx::start_with(None)
    }

    /// With `tls`, nginx serves HTTPS with that certificate and key.
    fn start_with(tls: Option<&ztkit_test_support::TestCert>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["www/bundles", "tmp", "logs"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = root.display();
        let listen = match tls {
            Some(cert) => {
                let (crt, key) = cert.write_to(root, "server");
                format!(
                    "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                    crt.display(),
                    key.display()
                )
            }
            None => format!("listen 127.0.0.1:{port};"),
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  log_format fleet escape=none '$status $request_method $uri inm=$http_if_none_match';\n\
             access_log {p}/logs/access.log fleet;\n  client_body_temp_path {p}/tmp/body;\n\
             proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fastcgi;\n\
             uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n\
             types {{ application/gzip gz; }}\n\
             server {{ {listen} root {p}/www; }}\n}}\n"
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .arg("-e")
            .arg(root.join("logs/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (Debian package nginx; cargo xtask test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        Nginx { child, dir, port }
    }

    fn service(&self) -> Service {
        local(self.port)
    }

    /// Replaces the bundle file atomically (write, set mtime, rename), with a modification
    /// time of its own so each version has its own ETag even within one second.
    fn publish(&self, archive: &[u8], version: u64) {
        let www = self.dir.path().join("www/bundles");
        let tmp = www.join(".authz.tar.gz.new");
        std::fs::write(&tmp, archive).unwrap();
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + version);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&tmp, www.join("authz.tar.gz")).unwrap();
    }

    /// The access log's lines for the bundle, as `(status, If-None-Match sent)`.
    fn requests(&self) -> Vec<(u16, String)> {
        let log =
            std::fs::read_to_string(self.dir.path().join("logs/access.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("/bundles/authz.tar.gz"))
            .map(|l| {
                let status = l.split(' ').next().unwrap().parse().unwrap();
                let inm = l.split("inm=").nth(1).unwrap_or_default().to_owned();
                (status, inm)
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx"]
async fn bundles_from_nginx_are_polled_with_etags_and_replaced_under_load() {
    let nginx = Nginx::start();
    let engine = engine_with(PolicyOptions::new(), &bundle("bootstrap"));
    nginx.publish(&bundle("r1"), 1);

    let downloader = BundleDownloader::builder(&nginx.service(), BUNDLE)
        .name("authz")
        .polling(Duration::from_millis(20), Duration::from_millis(60))
        .build(engine.clone())
        .unwrap();

    // First poll: 200 and activation; second: 304 for the ETag it sent.
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Activated { revision } if revision == "r1"
    ));
    assert_eq!(engine.revision(), "r1");
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::NotModified
    ));
    let status = downloader.status();
    let etag = status.etag.clone().expect("nginx sends an ETag");
    assert_eq!(
        nginx.requests(),
        [(200, String::new()), (304, etag.clone())],
        "the second request carried If-None-Match and nginx answered 304"
    );
    assert_eq!(
        (
            status.revision.as_str(),
            status.downloads,
            status.not_modified
        ),
        ("r1", 1, 1)
    );
    assert!(status.last_activation.is_some() && status.last_successful_download.is_some());

    // Decisions under load while the bundle is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let decided = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (engine, stop, decided) = (engine.clone(), stop.clone(), decided.clone());
            std::thread::spawn(move || {
                let input = PolicyInput::from_json(serde_json::json!({"user": "alice"}));
                let mut revisions = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let decision = engine.decide(&input);
                    assert!(decision.allow, "{:?}", decision.reasons);
                    revisions.insert(decision.revision);
                    decided.fetch_add(1, Ordering::Relaxed);
                }
                revisions
            })
        })
        .collect();

    let task = downloader.spawn();
    nginx.publish(&bundle("r2"), 2);
    eventually("r2 to activate", || downloader.status().revision == "r2").await;
    assert_eq!(engine.revision(), "r2");

    // A bundle whose own tests fail is refused; r2 keeps deciding.
    nginx.publish(&writer("r3-broken", TEST_BOB_FAILS).to_tar_gz().unwrap(), 3);
    eventually("the broken bundle to be refused", || {
        downloader
            .status()
            .rotation
            .last_error
            .is_some_and(|e| e.message.contains("policy tests failed"))
    })
    .await;
    assert_eq!(engine.revision(), "r2");
    let refused = downloader.status();
    assert!(refused.rotation.last_error.as_ref().unwrap().at >= refused.last_activation.unwrap());
    assert_eq!(
        engine.status().last_error.unwrap().message,
        refused.rotation.last_error.as_ref().unwrap().message,
        "the engine's own status records the refusal too"
    );
    // The refused content is not downloaded again: its ETag is sent and answered with 304.
    let downloads = refused.downloads;
    eventually("two more 304s", || {
        downloader.status().not_modified >= refused.not_modified + 2
    })
    .await;
    assert_eq!(downloader.status().downloads, downloads);

    // Fixed: r4 activates.
    nginx.publish(&bundle("r4"), 4);
    eventually("r4 to activate", || downloader.status().revision == "r4").await;
    assert_eq!(engine.revision(), "r4");
    drop(task);

    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for thread in load {
        seen.extend(thread.join().unwrap());
    }
    assert!(decided.load(Ordering::Relaxed) > 0);
    assert!(
        seen.iter()
            .all(|r| ["r1", "r2", "r4"].contains(&r.as_str())),
        "every decision came from a good set: {seen:?}"
    );

    let status = downloader.status();
    let log = nginx.requests();
    let not_modified = log.iter().filter(|(s, _)| *s == 304).count() as u64;
    let ok = log.iter().filter(|(s, _)| *s == 200).count() as u64;
    // The task was aborted at some point: a request nginx logged may not have been counted.
    assert!(
        not_modified >= status.not_modified && status.not_modified >= 3,
        "{log:?}"
    );
    assert!(
        ok >= status.downloads && status.downloads == 4,
        "r1, r2, r3, r4: {log:?}"
    );
    assert!(
        log.iter()
            .filter(|(s, _)| *s == 304)
            .all(|(_, inm)| inm.starts_with('"')),
        "every 304 answered an If-None-Match"
    );
    println!(
        "nginx: {} requests, {ok} bundles sent, {not_modified} not modified; {} decisions",
        log.len(),
        decided.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx"]
async fn bundles_download_over_https_and_an_untrusted_server_is_refused() {
    let ca = ztkit_test_support::TestCa::new("bundle CA");
    let cert = ca
        .leaf("bundles")
        .ip("127.0.0.1".parse().unwrap())
        .server_auth()
        .issue();
    let nginx = Nginx::start_with(Some(&cert));
    nginx.publish(&bundle("tls-1"), 1);
    let engine = engine_with(PolicyOptions::new(), &bundle("bootstrap"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = format!("https://127.0.0.1:{}", nginx.port);
    let trusted = Service::builder(&https)
        .tls_config(Arc::new(tls))
        .build()
        .unwrap();
    let downloader = BundleDownloader::builder(&trusted, BUNDLE)
        .build(engine.clone())
        .unwrap();
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Activated { revision } if revision == "tls-1"
    ));
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::NotModified
    ));

    // The default roots (Mozilla's) do not know this CA: fail closed.
    let default_roots = Service::builder(&https).build().unwrap();
    let err = BundleDownloader::builder(&default_roots, BUNDLE)
        .build(engine.clone())
        .unwrap()
        .poll_once()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert_eq!(engine.revision(), "tls-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx"]
async fn signed_bundles_from_nginx_are_verified_before_activation() {
    let nginx = Nginx::start();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signer =
        || BundleSigner::from_private_key_pem("ES256", key.serialize_pem().as_bytes()).unwrap();
    // A key set (OPA's `keys` + `signing.keyid`): `key` is the default, `previous` is chosen
    // by the signature's key id.
    let previous = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let keys = SignatureVerifier::from_public_key_pem("ES256", key.public_key_pem().as_bytes())
        .unwrap()
        .key_id("current")
        .also_trust(
            SignatureVerifier::from_public_key_pem("ES256", previous.public_key_pem().as_bytes())
                .unwrap()
                .key_id("previous"),
        )
        .unwrap();
    let options = PolicyOptions::new().verification_key(keys);
    let signed = |rev: &str| writer(rev, TEST_ALICE).sign(signer()).to_tar_gz().unwrap();
    let engine = engine_with(options, &signed("s0"));
    let downloader = BundleDownloader::builder(&nginx.service(), BUNDLE)
        .build(engine.clone())
        .unwrap();

    nginx.publish(&signed("s1"), 1);
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Activated { revision } if revision == "s1"
    ));

    // Tampered: a signed bundle whose policy was changed after signing.
    let mut files = writer("s2", TEST_ALICE)
        .sign(signer())
        .into_files()
        .unwrap();
    files.insert(
        "http/authz/policy.rego".into(),
        b"package http.authz\n\nallow := true\n".to_vec(),
    );
    let tampered = files
        .iter()
        .fold(BundleWriter::new(), |w, (p, c)| w.file(p.clone(), c))
        .to_tar_gz()
        .unwrap();
    nginx.publish(&tampered, 2);
    let outcome = downloader.poll_once().await.unwrap();
    assert!(
        matches!(&outcome, DownloadOutcome::Refused { error: PolicyError::Signature(m) } if m.contains("digest mismatch")),
        "{outcome:?}"
    );

    // Unsigned, while signing is configured.
    nginx.publish(&bundle("s3-unsigned"), 3);
    let outcome = downloader.poll_once().await.unwrap();
    assert!(
        matches!(&outcome, DownloadOutcome::Refused { error: PolicyError::Signature(m) } if m.contains("missing")),
        "{outcome:?}"
    );
    // Signed with another key.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let foreign = writer("s4", TEST_ALICE)
        .sign(
            BundleSigner::from_private_key_pem("ES256", other.serialize_pem().as_bytes()).unwrap(),
        )
        .to_tar_gz()
        .unwrap();
    nginx.publish(&foreign, 4);
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Refused {
            error: PolicyError::Signature(_)
        }
    ));
    assert_eq!(engine.revision(), "s1", "the last good set keeps deciding");
    let bob = PolicyInput::from_json(serde_json::json!({"user": "bob"}));
    assert!(
        !engine.decide(&bob).allow,
        "the tampered allow-all never served"
    );

    // Signed with the previous key, naming it.
    let by_previous = writer("s4-previous", TEST_ALICE)
        .sign(
            BundleSigner::from_private_key_pem("ES256", previous.serialize_pem().as_bytes())
                .unwrap()
                .key_id("previous"),
        )
        .to_tar_gz()
        .unwrap();
    nginx.publish(&by_previous, 40);
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Activated { revision } if revision == "s4-previous"
    ));

    nginx.publish(&signed("s5"), 5);
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Activated { revision } if revision == "s5"
    ));
    let status = downloader.status();
    assert_eq!(
        (status.rotation.generation, status.rotation.failures),
        (3, 3)
    );
    assert!(status.rotation.last_error.is_none());
}

// === a scripted HTTP peer (bundle server with long polling, log receiver) ===

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
    answered: u16,
}

type Handler = dyn Fn(&Seen) -> http::Response<Full<Bytes>> + Send + Sync;

struct Peer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Peer {
    async fn start(
        handler: impl Fn(&Seen) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Peer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (handler, log) = (handler.clone(), log.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let mut seen = Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    body,
                                    answered: 0,
                                };
                                let response = handler(&seen);
                                seen.answered = response.status().as_u16();
                                log.lock().unwrap().push(seen);
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Peer {
            addr,
            seen,
            _task: task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The accepted uploads, each gunzipped and parsed as a JSON array.
    fn accepted_batches(&self) -> Vec<Vec<serde_json::Value>> {
        self.seen()
            .iter()
            .filter(|s| s.answered == 200)
            .map(batch_of)
            .collect()
    }
}

fn batch_of(seen: &Seen) -> Vec<serde_json::Value> {
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["content-encoding"], "gzip");
    assert_eq!(seen.headers["content-type"], "application/json");
    let value: serde_json::Value =
        serde_json::from_reader(flate2::read::GzDecoder::new(seen.body.as_slice())).unwrap();
    value.as_array().expect("a JSON array of events").clone()
}

fn gunzipped_len(seen: &Seen) -> usize {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(seen.body.as_slice()),
        &mut out,
    )
    .unwrap();
    out.len()
}

fn respond(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> http::Response<Full<Bytes>> {
    let mut builder = http::Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn long_polling_is_asked_for_and_followed_only_while_the_server_supports_it() {
    let archive = bundle("lp1");
    let peer = Peer::start(move |seen| {
        if seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"lp1\"")
        {
            respond(
                304,
                &[("content-type", "application/vnd.openpolicyagent.bundles")],
                Vec::new(),
            )
        } else {
            respond(
                200,
                &[
                    ("content-type", "application/vnd.openpolicyagent.bundles"),
                    ("etag", "\"lp1\""),
                ],
                archive.clone(),
            )
        }
    })
    .await;
    let engine = engine_with(PolicyOptions::new(), &bundle("bootstrap"));
    let downloader = BundleDownloader::builder(&local(peer.addr.port()), "b.tar.gz")
        .long_polling(Duration::from_secs(30))
        .build(engine.clone())
        .unwrap();
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::Activated { .. }
    ));
    assert!(matches!(
        downloader.poll_once().await.unwrap(),
        DownloadOutcome::NotModified
    ));
    let seen = peer.seen();
    for request in &seen {
        assert_eq!(request.headers["prefer"], "wait=30");
        assert!(
            request.headers["accept"]
                .to_str()
                .unwrap()
                .starts_with("application/vnd.openpolicyagent.bundles")
        );
    }
    assert_eq!(seen[1].headers["if-none-match"], "\"lp1\"");
    assert!(downloader.status().long_polling);
    assert_eq!(engine.revision(), "lp1");
}

#[tokio::test]
async fn a_long_polling_server_is_asked_again_at_once_after_a_new_bundle() {
    let archive = bundle("lp2");
    let peer = Peer::start(move |seen| {
        let vnd = ("content-type", "application/vnd.openpolicyagent.bundles");
        if seen.headers.get("if-none-match").is_some() {
            respond(304, &[vnd], Vec::new())
        } else {
            respond(200, &[vnd, ("etag", "\"lp2\"")], archive.clone())
        }
    })
    .await;
    let engine = engine_with(PolicyOptions::new(), &bundle("bootstrap"));
    let downloader = BundleDownloader::builder(&local(peer.addr.port()), "b.tar.gz")
        // Polling alone would ask again in an hour.
        .polling(Duration::from_secs(3600), Duration::from_secs(3600))
        .long_polling(Duration::from_secs(30))
        .build(engine.clone())
        .unwrap();
    let _task = downloader.spawn();
    eventually("the request after the new bundle", || {
        peer.seen().len() >= 2
    })
    .await;
    assert_eq!(engine.revision(), "lp2");
    assert_eq!(peer.seen()[1].headers["if-none-match"], "\"lp2\"");
}

#[tokio::test]
async fn download_failures_are_recorded_and_the_last_good_set_keeps_deciding() {
    let peer = Peer::start(|_| respond(503, &[], b"busy".to_vec())).await;
    let engine = engine_with(PolicyOptions::new(), &bundle("good"));
    let downloader = BundleDownloader::builder(&local(peer.addr.port()), "b.tar.gz")
        .build(engine.clone())
        .unwrap();
    let err = downloader.poll_once().await.unwrap_err();
    assert!(
        matches!(&err, PolicyError::Remote { reason, .. } if reason.contains("503")),
        "{err}"
    );
    let status = downloader.status();
    assert_eq!(status.rotation.failures, 1);
    assert!(status.rotation.last_error.unwrap().message.contains("503"));
    assert!(
        engine.status().last_error.is_some(),
        "recorded as a source failure"
    );
    assert_eq!(engine.revision(), "good");

    // Too large: refused while streaming, whatever the server says its length is.
    let big = Peer::start(|_| respond(200, &[], vec![0u8; 4096])).await;
    let small = BundleDownloader::builder(&local(big.addr.port()), "b.tar.gz")
        .size_limit_bytes(1000)
        .build(engine.clone())
        .unwrap();
    let err = small.poll_once().await.unwrap_err();
    assert!(err.to_string().contains("larger than 1000 bytes"), "{err}");

    // Plain http needs the opt-out.
    assert!(matches!(
        Service::builder(format!("http://{}", peer.addr)).build(),
        Err(PolicyError::Config(_))
    ));
}

// === decision logs ===

fn logging_engine(uploader: &LogUploader) -> PolicyEngine {
    let options = PolicyOptions::new();
    let set = PolicySet::compile(
        options
            .loader()
            .load_tar_gz("authz", &bundle("logged-1"))
            .unwrap(),
        &options,
    )
    .unwrap();
    PolicyEngine::builder(options)
        .decision_log(DecisionLogConfig::new(uploader.clone()).label("app", "orders"))
        .build(set)
}

fn ok() -> http::Response<Full<Bytes>> {
    respond(200, &[], Vec::new())
}

#[tokio::test]
async fn decisions_are_uploaded_as_gzipped_json_arrays_batched_by_time() {
    let peer = Peer::start(|_| ok()).await;
    let uploader = LogUploader::builder(&local(peer.addr.port()))
        .reporting(Duration::from_millis(50), Duration::from_millis(100))
        .build()
        .unwrap();
    let engine = logging_engine(&uploader);
    let ids: Vec<String> = ["alice", "bob", "alice"]
        .iter()
        .map(|user| {
            engine
                .decide(&PolicyInput::from_json(serde_json::json!({"user": user})))
                .decision_id
        })
        .collect();
    assert!(
        peer.seen().is_empty(),
        "nothing is sent on the request path"
    );
    let _task = uploader.spawn();
    eventually("one upload", || uploader.status().uploaded_batches > 0).await;

    let batches = peer.accepted_batches();
    assert_eq!(
        batches.len(),
        1,
        "the three decisions were waiting: one batch"
    );
    let events = &batches[0];
    assert_eq!(
        events
            .iter()
            .map(|e| e["decision_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids
    );
    for (event, user) in events.iter().zip(["alice", "bob", "alice"]) {
        assert_eq!(event["path"], "http/authz/allow");
        assert_eq!(event["input"]["user"], user);
        assert_eq!(event["result"], user == "alice");
        assert_eq!(event["labels"]["app"], "orders");
        assert_eq!(event["revision"], "logged-1");
        assert_eq!(event["bundles"]["authz"]["revision"], "logged-1");
        assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(event["metrics"]["timer_rego_query_eval_ns"].is_u64());
    }
    let status = uploader.status();
    assert_eq!(
        (
            status.uploaded_events,
            status.uploaded_batches,
            status.buffered_events
        ),
        (3, 1, 0)
    );
    assert!(status.last_upload.is_some());
}

#[tokio::test]
async fn a_full_batch_is_uploaded_at_once_without_waiting_for_the_timer() {
    let peer = Peer::start(|_| ok()).await;
    let uploader = LogUploader::builder(&local(peer.addr.port()))
        // The timer alone would wait an hour.
        .reporting(Duration::from_secs(3600), Duration::from_secs(3600))
        .batch_size_limit_bytes(1200)
        .build()
        .unwrap();
    let engine = logging_engine(&uploader);
    let alice = PolicyInput::from_json(serde_json::json!({"user": "alice"}));
    for _ in 0..12 {
        engine.decide(&alice);
    }
    let _task = uploader.spawn();
    // The full batches go now; what is left (at most a batch) waits for the timer.
    eventually("the full batches", || {
        let s = uploader.status();
        let largest = peer.accepted_batches().iter().map(Vec::len).max();
        s.uploaded_events >= 8 && largest.is_some_and(|n| s.buffered_events <= n)
    })
    .await;
    let seen = peer.seen();
    assert!(seen.len() >= 2, "several batches");
    let largest = seen.iter().map(|r| batch_of(r).len()).max().unwrap();
    for request in &seen {
        assert!(
            gunzipped_len(request) <= 1200,
            "each batch within the size limit"
        );
        assert_eq!(batch_of(request).len(), largest, "only full batches");
    }
    // A batch is known to be full when the next event does not fit: the last one waits.
    let left = uploader.status().buffered_events;
    assert!(left > 0 && left <= largest, "{left} left");
}

#[tokio::test]
async fn a_failed_upload_is_retried_with_the_same_batch() {
    let answers = Arc::new(Mutex::new(VecDeque::from([500u16, 500])));
    let script = answers.clone();
    let peer = Peer::start(move |_| {
        let status = script.lock().unwrap().pop_front().unwrap_or(200);
        respond(status, &[], Vec::new())
    })
    .await;
    let uploader = LogUploader::builder(&local(peer.addr.port()))
        .reporting(Duration::from_millis(20), Duration::from_millis(40))
        .build()
        .unwrap();
    let engine = logging_engine(&uploader);
    let alice = PolicyInput::from_json(serde_json::json!({"user": "alice"}));
    let ids = [
        engine.decide(&alice).decision_id,
        engine.decide(&alice).decision_id,
    ];

    // By hand first: the failure keeps the batch and says why.
    let err = uploader.flush().await.unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    let status = uploader.status();
    assert_eq!(
        (
            status.failed_attempts,
            status.buffered_events,
            status.uploaded_events
        ),
        (1, 2, 0)
    );
    assert!(status.last_error.unwrap().message.contains("500"));

    let _task = uploader.spawn();
    eventually("the retry to be accepted", || {
        uploader.status().uploaded_events == 2
    })
    .await;
    let seen = peer.seen();
    assert_eq!(
        seen.iter().map(|s| s.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    for request in &seen {
        let sent: Vec<_> = batch_of(request)
            .iter()
            .map(|e| e["decision_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(sent, ids, "every attempt carried the same batch");
    }
    let status = uploader.status();
    assert_eq!((status.failed_attempts, status.buffered_events), (2, 0));
    assert!(status.last_error.is_none());
}

#[tokio::test]
async fn a_full_buffer_drops_events_and_counts_them() {
    let peer = Peer::start(|_| ok()).await;
    let uploader = LogUploader::builder(&local(peer.addr.port()))
        .buffer_size_limit_bytes(2000)
        .build()
        .unwrap();
    let engine = logging_engine(&uploader);
    let alice = PolicyInput::from_json(serde_json::json!({"user": "alice"}));
    for _ in 0..20 {
        assert!(
            engine.decide(&alice).allow,
            "dropping a log record never denies"
        );
    }
    let status = uploader.status();
    assert!(status.buffered_events > 0 && status.buffered_bytes <= 2000);
    assert_eq!(status.dropped_events, 20 - status.buffered_events as u64);
    assert!(status.dropped_events > 0);

    let kept = status.buffered_events;
    assert_eq!(uploader.flush().await.unwrap(), kept);
    assert_eq!(
        peer.accepted_batches().iter().map(Vec::len).sum::<usize>(),
        kept
    );
    // Room again.
    engine.decide(&alice);
    assert_eq!(uploader.status().buffered_events, 1);
}

#[tokio::test]
async fn audit_lines_ship_with_their_chain_positions_and_verify_at_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let audit = zt_audit::AuditLog::builder(dir.path()).open().unwrap();
    for i in 0..5 {
        audit
            .append(
                zt_audit::Record::new("http")
                    .subject(format!("user-{i}"))
                    .decision("allow"),
            )
            .unwrap();
    }
    audit.sync().unwrap();
    let peer = Peer::start(|_| ok()).await;
    let uploader = LogUploader::builder(&local(peer.addr.port()))
        .resource("audit")
        .build()
        .unwrap();
    let files = audit.files().unwrap();
    for file in &files {
        for line in std::fs::read(file)
            .unwrap()
            .split_inclusive(|b| *b == b'\n')
        {
            assert!(uploader.push_audit_line(line).unwrap());
        }
    }
    assert_eq!(uploader.flush().await.unwrap(), 5);
    assert_eq!(peer.seen()[0].path, "/audit");

    // The central store: the lines, rebuilt from the events, verify as a chain.
    let events: Vec<_> = peer.accepted_batches().into_iter().flatten().collect();
    let mut rebuilt = Vec::new();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1);
        let line = event["line"].as_str().unwrap();
        let fields: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (&fields["hash"], &fields["prev_hash"]),
            (&event["hash"], &event["prev_hash"])
        );
        rebuilt.extend_from_slice(line.as_bytes());
        rebuilt.push(b'\n');
    }
    let report = zt_audit::Verifier::new().verify_bytes("shipped", &rebuilt);
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.records, 5);
}
