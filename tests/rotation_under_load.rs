//! Rotation under load (issue #2, section 6): the server certificate and key and the client
//! CA bundle are replaced ten times while clients keep calling, over fresh connections
//! (resumed and full handshakes) and over kept-alive HTTP/1.1 and HTTP/2 connections.
//! Zero requests may fail, and after each rotation a new handshake sees the new serial.
//!
//! The server runs in-process (`ServerTlsBuilder::from_files` + `TlsListener` + axum)
//! with a 100 ms reload interval, on files laid out as a Kubernetes secret volume:
//!
//! ```text
//! mnt/tls.crt -> ..data/tls.crt     mnt/..data -> ..<timestamp>.<n>/
//! mnt/tls.key -> ..data/tls.key     mnt/..<timestamp>.<n>/{tls.crt,tls.key,ca.crt}
//! mnt/ca.crt  -> ..data/ca.crt
//! ```
//!
//! Odd rotations swap `..data` the way kubelet's atomic writer does (all three files change
//! at once); even rotations write each file to a temp name and rename it over the old one
//! (the files change one after another, so the reloader may see a new certificate with the
//! old key: it must refuse that state and keep serving, never fail a request).
//!
//! ## Why "zero failed requests" is a fair expectation for the CA rotation
//!
//! The client CA moves from `old` to `new` the way a real rollover does:
//!
//! 1. rotations 1–3: the bundle is `[old]`, clients present certificates from `old`;
//! 2. rotation 4: the bundle becomes `[old, new]`; only once the server has *loaded* it do
//!    clients switch to certificates from `new` (a client that switched earlier would be
//!    refused, correctly — that is an operator error, not a server failure);
//! 3. rotation 7: the bundle becomes `[new]`, after every fresh-connection client has been
//!    on a `new` certificate for several requests. Switching configs also drops the
//!    clients' session caches, so no session from an `old` certificate is resumed.
//!
//! The kept-alive connections were established with `old` certificates and are never
//! re-handshaked: they must keep working through all ten rotations, including after `old`
//! left the bundle, because established connections are not dropped by a reload.
//! Probes outside the counted load check that the bundle really changed: a `new`
//! certificate is refused before rotation 4 and accepted after it, an `old` one is refused
//! after rotation 7.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Router, routing::get};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mtls_verify::{ServerTls, ServerTlsBuilder};
use rustls::ClientConfig;
use rustls::client::Resumption;
use support::{CLIENT_ID, GUARD, client_cert, client_config, https_get, server_cert, tls_connect};
use tokio::sync::{Notify, watch};
use zt_tower::{TlsConnectInfo, TlsListener, VerifiedPeer};
use ztkit_test_support::{SecretVolume, TestCa, TestCert};

const ROTATIONS: usize = 10;
/// Successful requests each worker must make after a rotation before the next one.
const REQUESTS_PER_ROUND: u64 = 5;

// === the mounted material ===

/// What the server reads.
struct Material {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

impl Material {
    fn new(server: &TestCert, cas: &[&TestCa]) -> Self {
        Material {
            cert_pem: server.chain_pem.clone(),
            key_pem: server.key_pem.clone(),
            ca_pem: cas.iter().map(|ca| ca.cert_pem.as_str()).collect(),
        }
    }

    fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("ca.crt", &self.ca_pem),
            ("tls.key", &self.key_pem),
            ("tls.crt", &self.cert_pem),
        ]
    }
}

/// Each file written to a temp name in the current data directory and renamed over the
/// old one, one after another: the CA bundle, then the key, then the certificate. The
/// reloader reads certificate, key, CA in that order, so a snapshot holding the new
/// certificate also holds the new key and CA: once the new serial is served, the whole
/// new set is.
fn rename_files(mount: &SecretVolume, material: &Material) {
    let data_dir = mount.data_dir();
    for (file, contents) in material.files() {
        let tmp = data_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, data_dir.join(file)).unwrap();
    }
}

// === the server ===

/// Starts the server; `resumed` counts requests that arrived on resumed sessions.
async fn start_server(tls: ServerTls, resumed: Arc<AtomicU64>) -> SocketAddr {
    let app = Router::new().route(
        "/",
        get(
            move |VerifiedPeer(peer): VerifiedPeer,
                  ConnectInfo(info): ConnectInfo<TlsConnectInfo>| {
                if info.resumed() {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                async move {
                    peer.spiffe_id()
                        .map(|id| id.to_string())
                        .unwrap_or_default()
                }
            },
        ),
    );
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsConnectInfo>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Waits until the server serves `serial` in a generation after `old_generation`. The
/// reloader has no event to wait on, so its status is polled (the deadline only guards).
async fn wait_for_serial(tls: &ServerTls, old_generation: u64, serial: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let status = tls.status();
        if status.generation > old_generation && status.serial == serial {
            return status.generation;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never loaded serial {serial}: still {} in generation {}, last error {:?}",
            status.serial,
            status.generation,
            status.last_error
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === the clients ===

/// The client identity all fresh-connection workers use at a given time.
#[derive(Clone)]
struct Identity {
    /// HTTP/1.1, session resumption on (rustls's default).
    resuming: Arc<ClientConfig>,
    /// HTTP/2, every handshake a full one.
    full: Arc<ClientConfig>,
}

impl Identity {
    fn new(server_ca: &TestCa, cert: &TestCert) -> Self {
        let roots = support::roots(server_ca);
        let resuming = client_config(&roots, Some(cert), &[b"http/1.1"]);
        let mut full = client_config(&roots, Some(cert), &[b"h2"]);
        full.resumption = Resumption::disabled();
        Identity {
            resuming: Arc::new(resuming),
            full: Arc::new(full),
        }
    }
}

/// Successful requests per worker, failures with their reasons, and a wake-up per request.
#[derive(Default)]
struct Load {
    ok: [AtomicU64; 4],
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    progress: Notify,
}

const WORKERS: [&str; 4] = [
    "fresh h1 (resumed)",
    "fresh h2 (full)",
    "kept-alive h1",
    "kept-alive h2",
];

impl Load {
    fn record(&self, worker: usize, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok[worker].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut errors) = self.errors.lock()
                    && errors.len() < 20
                {
                    errors.push(format!("{}: {e}", WORKERS[worker]));
                }
            }
        }
        self.progress.notify_waiters();
    }

    fn counts(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.ok[i].load(Ordering::Relaxed))
    }

    /// Waits until every worker made `n` more successful requests than in `since`.
    async fn wait_progress(&self, since: [u64; 4], n: u64) {
        let wait = async {
            loop {
                let notified = self.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                assert_eq!(
                    self.failed.load(Ordering::Relaxed),
                    0,
                    "requests failed: {:?}",
                    self.errors.lock().map(|e| e.clone()).unwrap_or_default()
                );
                let now = self.counts();
                if now.iter().zip(since).all(|(now, then)| *now >= then + n) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(GUARD, wait).await.is_err() {
            panic!(
                "the workers stalled: {:?} since {since:?}; errors: {:?}",
                self.counts(),
                self.errors.lock().map(|e| e.clone()).unwrap_or_default()
            );
        }
    }
}

fn check_body(status: u16, body: &str) -> Result<(), String> {
    if status == 200 && body == CLIENT_ID {
        Ok(())
    } else {
        Err(format!("{status} {body:?}"))
    }
}

/// One GET on a new connection per iteration, with whatever identity is current.
async fn fresh_worker(
    worker: usize,
    addr: SocketAddr,
    identity: watch::Receiver<Identity>,
    stop: watch::Receiver<bool>,
    load: Arc<Load>,
) {
    while !*stop.borrow() {
        let current = identity.borrow().clone();
        let result = if worker == 0 {
            https_get(&current.resuming, addr, "/")
                .await
                .and_then(|(status, body)| check_body(status, &body))
        } else {
            h2_get_fresh(&current.full, addr).await
        };
        load.record(worker, result);
    }
}

async fn h2_get_fresh(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> Result<(), String> {
    let tls = tls_connect(cfg, addr)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    h2_request(&mut sender).await
}

async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
    let req = http::Request::get("https://localhost/")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("h2 request: {}", support::error_chain(&e)))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("h2 body: {e}"))?
        .to_bytes();
    check_body(status, &String::from_utf8_lossy(&body))
}

async fn h1_request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| format!("h1 ready: {e}"))?;
    let req = http::Request::get("/")
        .header(http::header::HOST, "localhost")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("h1 request: {}", support::error_chain(&e)))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("h1 body: {e}"))?
        .to_bytes();
    check_body(status, &String::from_utf8_lossy(&body))
}

/// One connection, established once, used for every request until the test ends. A
/// connection the server drops is a failure (and the worker stops: it must not reconnect).
async fn kept_alive_worker(
    worker: usize,
    addr: SocketAddr,
    identity: Identity,
    stop: watch::Receiver<bool>,
    load: Arc<Load>,
) {
    let h2 = worker == 3;
    let cfg = if h2 {
        identity.full
    } else {
        // Its own config without resumption, so that requests on resumed sessions all come
        // from the fresh-connection worker.
        let mut cfg = (*identity.resuming).clone();
        cfg.resumption = Resumption::disabled();
        Arc::new(cfg)
    };
    let tls = match tls_connect(&cfg, addr).await {
        Ok(tls) => tls,
        Err(e) => return load.record(worker, Err(format!("handshake: {e}"))),
    };
    if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        while !*stop.borrow() {
            let result = h2_request(&mut sender).await;
            let failed = result.is_err();
            load.record(worker, result);
            if failed {
                return;
            }
        }
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        while !*stop.borrow() {
            let result = h1_request(&mut sender).await;
            let failed = result.is_err();
            load.record(worker, result);
            if failed {
                return;
            }
        }
    }
}

/// The serial of the server certificate seen in a new, full handshake.
async fn serial_seen(identity: &Identity, addr: SocketAddr) -> String {
    let tls = tls_connect(&identity.full, addr).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    mtls_verify::PeerIdentity::from_der(&leaf)
        .unwrap()
        .serial_hex()
        .to_owned()
}

/// A probe outside the counted load: does a GET with `identity` succeed?
async fn accepted(identity: &Identity, addr: SocketAddr) -> bool {
    https_get(&identity.full, addr, "/")
        .await
        .is_ok_and(|(s, _)| s == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rotations_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let server_ca = TestCa::new("server CA");
    let old_ca = TestCa::new("client CA (old)");
    let new_ca = TestCa::new("client CA (new)");
    let old_identity = Identity::new(&server_ca, &client_cert(&old_ca, CLIENT_ID));
    let new_identity = Identity::new(&server_ca, &client_cert(&new_ca, CLIENT_ID));

    let first = server_cert(&server_ca);
    let mut mount = SecretVolume::new(&mnt, &Material::new(&first, &[&old_ca]).files());
    let tls = ServerTlsBuilder::from_files(
        mount.path("tls.crt"),
        mount.path("tls.key"),
        mount.path("ca.crt"),
    )
    .reload_interval(Duration::from_millis(100))
    .build()
    .unwrap();
    let _reloader = tls.spawn_reloader();
    let resumed = Arc::new(AtomicU64::new(0));
    let addr = start_server(tls.clone(), resumed.clone()).await;
    assert_eq!(serial_seen(&old_identity, addr).await, first.serial_hex());
    assert!(
        !accepted(&new_identity, addr).await,
        "the new client CA is trusted before the rollover"
    );

    let load = Arc::new(Load::default());
    let (identity_tx, identity_rx) = watch::channel(old_identity.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for worker in 0..2 {
        workers.push(tokio::spawn(fresh_worker(
            worker,
            addr,
            identity_rx.clone(),
            stop_rx.clone(),
            load.clone(),
        )));
    }
    for worker in 2..4 {
        workers.push(tokio::spawn(kept_alive_worker(
            worker,
            addr,
            old_identity.clone(),
            stop_rx.clone(),
            load.clone(),
        )));
    }
    load.wait_progress([0; 4], REQUESTS_PER_ROUND).await;

    for rotation in 1..=ROTATIONS {
        let before = load.counts();
        let generation = tls.status().generation;
        let server = server_cert(&server_ca);
        let bundle: &[&TestCa] = match rotation {
            1..=3 => &[&old_ca],
            4..=6 => &[&old_ca, &new_ca],
            _ => &[&new_ca],
        };
        let material = Material::new(&server, bundle);
        if rotation % 2 == 1 {
            mount.swap(&material.files());
        } else {
            rename_files(&mount, &material);
        }
        wait_for_serial(&tls, generation, &server.serial_hex()).await;

        let current = identity_rx.borrow().clone();
        assert_eq!(
            serial_seen(&current, addr).await,
            server.serial_hex(),
            "rotation {rotation}: a new handshake does not see the new server certificate"
        );
        if rotation == 4 {
            // The server trusts both CAs now: switch the clients to the new one.
            assert!(accepted(&new_identity, addr).await, "new CA not trusted");
            identity_tx.send(new_identity.clone()).unwrap();
        }
        if rotation == 7 {
            assert!(
                !accepted(&old_identity, addr).await,
                "the old client CA is still trusted after it left the bundle"
            );
        }
        // The load went on across this rotation, on every kind of connection.
        load.wait_progress(before, REQUESTS_PER_ROUND).await;
    }

    stop_tx.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let counts = load.counts();
    let status = tls.status();
    let resumed = resumed.load(Ordering::Relaxed);
    eprintln!(
        "requests per worker {:?}: {counts:?} ({resumed} on resumed sessions); failed {}; \
         server generation {}, rejected intermediate updates {}",
        WORKERS,
        load.failed.load(Ordering::Relaxed),
        status.generation,
        status.rejected_updates
    );
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "failed requests: {:?}",
        load.errors.lock().unwrap()
    );
    assert!(status.generation > ROTATIONS as u64, "{status:?}");
    assert!(resumed > 0, "no request came over a resumed session");
}
