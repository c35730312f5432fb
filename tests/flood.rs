//! A flood of idle connections must not lock out valid clients (issue #7, section 3).
//!
//! The axum example runs with its defaults as a child process. 5,000 connections from
//! many loopback source addresses (client sockets bound to `127.x.y.z` before connecting)
//! are opened to it and held for 30 s; each one the server closes is opened again at
//! once. Meanwhile a valid mTLS client makes 50 requests, one after another, each on a new
//! connection with a full handshake (no resumption); each must be answered within 1 s.
//!
//! Two floods, one after the other (never together: they would share the two cores):
//!
//! * idle: connect and send nothing;
//! * slowloris: connect and send a real ClientHello one byte per second.
//!
//! The sources are 1,250 addresses in 25 /24s of `127.1.0.0/16`: 4 connections from each
//! address, 200 from each /24 — a distributed flood, under the per-address and per-subnet
//! caps, that only the global mechanisms can hold (accept at once, first-byte and
//! handshake timeouts, the cap on connections awaiting their ClientHello). Floods from
//! few sources, over those caps, are in `crates/zt-tower/tests/flood_limits.rs`.
//!
//! Measured on main before the fix: the handshake permits and the listen backlog filled,
//! further connection attempts hung in SYN retries, and the valid client waited for an
//! earlier idle connection's 10 s handshake timeout. The figures of each run are printed
//! (`cargo test --test flood -- --nocapture`).
//!
//! The test process raises its own soft `RLIMIT_NOFILE` (the example inherits it); it
//! needs no root, only a hard limit of at least [`NOFILE_NEEDED`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use support::{
    CLIENT_ID, ExampleServer, ServerFiles, client_cert, client_config, https_get, roots,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Connections in the flood.
const FLOOD: usize = 5_000;
/// How long the flood is held.
const HOLD: Duration = Duration::from_secs(30);
/// Valid requests made during the flood…
const ROUNDS: usize = 50;
/// …each of which must be answered within this.
const BUDGET: Duration = Duration::from_secs(1);
/// Time between the starts of two valid requests (50 × 0.5 s = 25 s of the 30 s hold).
const PACE: Duration = Duration::from_millis(500);
/// A valid request slower than this is given up on (only reached on a broken server).
const GIVE_UP: Duration = Duration::from_secs(20);
/// File descriptors the test process needs: the flood, the valid client, cargo's pipes.
const NOFILE_NEEDED: u64 = FLOOD as u64 + 1_024;

/// One flood at a time in this process.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn idle_flood_does_not_lock_out_valid_clients() {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(run_flood(Attack::Idle));
}

#[test]
fn slowloris_flood_does_not_lock_out_valid_clients() {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(run_flood(Attack::Slowloris));
}

/// The flood's runtime: two workers, like the CI machine's cores. (The valid client runs
/// on a thread of its own.)
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// Connect, send nothing.
    Idle,
    /// Connect, send a ClientHello one byte per second.
    Slowloris,
}

/// The source address of flood connection `i` (see the module docs).
fn source(i: usize) -> Ipv4Addr {
    let a = i % 1_250;
    Ipv4Addr::new(127, 1, (a / 50) as u8, 1 + (a % 50) as u8)
}

/// What the flood's clients saw.
#[derive(Default, Debug)]
struct FloodCounters {
    /// Connections established (first ones and renewals).
    connected: AtomicU64,
    /// Connections the server closed (each was then renewed).
    closed_by_server: AtomicU64,
    /// Connection attempts that failed (or hung until the end).
    connect_failed: AtomicU64,
    /// Open right now, and the most at once.
    open: AtomicI64,
    peak_open: AtomicI64,
    /// Flood slots whose first attempt has finished (connected or failed).
    started: AtomicU64,
}

impl FloodCounters {
    fn opened(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }
}

/// One flood connection, renewed each time the server closes it, until `until`.
async fn flood_slot(
    i: usize,
    server: SocketAddr,
    attack: Attack,
    hello: Arc<Vec<u8>>,
    counters: Arc<FloodCounters>,
    until: Instant,
) {
    let mut first = true;
    while Instant::now() < until {
        let connect = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source(i).into(), 0))?;
            socket.connect(server).await
        };
        let attempt = tokio::time::timeout_at(until, connect).await;
        if first {
            counters.started.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        let mut conn = match attempt {
            Err(_) => {
                // Still not connected when the flood ends: a connection the server never took.
                counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(_)) => {
                counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(Ok(conn)) => conn,
        };
        counters.opened();
        let closed = tokio::time::timeout_at(until, hold(&mut conn, attack, &hello))
            .await
            .is_ok();
        counters.open.fetch_sub(1, Ordering::Relaxed);
        if closed {
            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds `conn` open as the attack says; returns when the server closed it.
async fn hold(conn: &mut TcpStream, attack: Attack, hello: &[u8]) {
    let mut buf = [0u8; 512];
    match attack {
        Attack::Idle => loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an alert: the close follows
            }
        },
        Attack::Slowloris => {
            for byte in hello.iter().cycle() {
                if conn.write_all(std::slice::from_ref(byte)).await.is_err() {
                    return;
                }
                let next_byte = tokio::time::sleep(Duration::from_secs(1));
                tokio::pin!(next_byte);
                loop {
                    tokio::select! {
                        read = conn.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        },
                        () = &mut next_byte => break,
                    }
                }
            }
        }
    }
}

/// How long each phase of one valid request took.
#[derive(Debug, Clone, Copy)]
struct Phases {
    connect: Duration,
    handshake: Duration,
    request: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.connect + self.handshake + self.request
    }
}

/// One HTTP/1.1 GET on a new connection with a full handshake, timed phase by phase.
async fn timed_get(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<Phases, String> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let t1 = Instant::now();
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let t2 = Instant::now();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    if status != 200 || !body.contains(CLIENT_ID) {
        return Err(format!("answered {status}: {body}"));
    }
    Ok(Phases {
        connect: t1 - t0,
        handshake: t2 - t1,
        request: t2.elapsed(),
    })
}

/// What the valid client saw over its rounds.
struct ValidRounds {
    /// Each round's time, in order.
    timings: Vec<Duration>,
    /// The phases of each round that succeeded.
    phases: Vec<(usize, Phases)>,
    /// Why the others failed.
    failures: Vec<String>,
}

/// [`ROUNDS`] valid requests, one every [`PACE`].
async fn valid_client(cfg: Arc<rustls::ClientConfig>, addr: SocketAddr) -> ValidRounds {
    let mut rounds = ValidRounds {
        timings: Vec::with_capacity(ROUNDS),
        phases: Vec::with_capacity(ROUNDS),
        failures: Vec::new(),
    };
    for round in 0..ROUNDS {
        let begun = Instant::now();
        let answer = tokio::time::timeout(GIVE_UP, timed_get(&cfg, addr)).await;
        let took = begun.elapsed();
        rounds.timings.push(took);
        match answer {
            Ok(Ok(p)) => rounds.phases.push((round, p)),
            Ok(Err(e)) => rounds.failures.push(format!("round {round}: {e}")),
            Err(_) => rounds
                .failures
                .push(format!("round {round}: no answer within {GIVE_UP:?}")),
        }
        tokio::time::sleep(PACE.saturating_sub(took)).await;
    }
    rounds
}

/// The first flight of a real rustls client: a TLS record holding a ClientHello.
fn client_hello(cfg: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap())
        .expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    hello
}

/// Raises the soft open-files limit to what the flood needs (no root needed: up to the
/// hard limit). The example server, started afterwards, inherits it.
fn raise_nofile_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= NOFILE_NEEDED) {
        return;
    }
    let hard = limit.maximum;
    assert!(
        hard.is_none_or(|hard| hard >= NOFILE_NEEDED),
        "this test opens {FLOOD} sockets and needs an open-files hard limit of at least \
         {NOFILE_NEEDED}; it is {hard:?} (raise it with `ulimit -Hn`, as root)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard.map_or(NOFILE_NEEDED * 2, |h| h.min(NOFILE_NEEDED * 2))),
            maximum: hard,
        },
    )
    .expect("raise RLIMIT_NOFILE");
}

async fn run_flood(attack: Attack) {
    raise_nofile_limit();
    let files = ServerFiles::new();
    let valid = client_cert(&files.ca, CLIENT_ID);
    let roots = roots(&files.ca);
    let mut cfg = client_config(&roots, Some(&valid), &[b"http/1.1"]);
    // A full handshake every time: no session resumption.
    cfg.resumption = Resumption::disabled();
    let cfg = Arc::new(cfg);
    let hello = Arc::new(client_hello(cfg.clone()));
    let mut server = ExampleServer::start("axum_mtls", &files.server_args());

    // Before the flood: the valid client is served.
    let cfg_for_rounds = cfg.clone();
    let (status, body) = https_get(&cfg, server.addr, "/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let rss_before = server.proc_status_kib("VmRSS");

    let started = Instant::now();
    let until = started + HOLD;
    let counters = Arc::new(FloodCounters::default());
    let slots: Vec<_> = (0..FLOOD)
        .map(|i| {
            tokio::spawn(flood_slot(
                i,
                server.addr,
                attack,
                hello.clone(),
                counters.clone(),
                until,
            ))
        })
        .collect();
    // Let every slot make its first attempt (or 3 s pass: on main, attempts beyond the
    // backlog hang), then a little more for the flood to settle.
    while counters.started.load(Ordering::Relaxed) < FLOOD as u64
        && started.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled_after = started.elapsed();
    let open_at_start = counters.open.load(Ordering::Relaxed);

    // The valid client, 50 times in a row, on its own thread and event loop: it is another
    // machine than the flood's, and must not wait for the flood's tasks to be polled.
    let addr = server.addr;
    let valid = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("valid client's runtime");
        rt.block_on(valid_client(cfg_for_rounds, addr))
    });
    let ValidRounds {
        timings,
        phases,
        failures,
    } = tokio::task::spawn_blocking(move || valid.join().expect("valid client thread"))
        .await
        .unwrap();
    let valid_done_after = started.elapsed();
    let open_at_end = counters.open.load(Ordering::Relaxed);
    let rss_peak = server.proc_status_kib("VmHWM");
    for slot in slots {
        slot.await.unwrap();
    }
    let mut sorted = timings.clone();
    sorted.sort();
    let slow: Vec<String> = phases
        .iter()
        .filter(|(_, p)| p.total() > BUDGET)
        .map(|(i, p)| {
            format!(
                "round {i}: {:?} (connect {:?}, handshake {:?}, request {:?})",
                p.total(),
                p.connect,
                p.handshake,
                p.request
            )
        })
        .collect();
    let report = format!(
        "{attack:?} flood of {FLOOD} connections held {HOLD:?} (settled after {settled_after:?}): \
         {} connections established, {} closed by the server and renewed, {} attempts failed, \
         {open_at_start} open when the valid client started, {open_at_end} at its end, \
         peak {} open; valid client over {ROUNDS} requests: min {:?}, median {:?}, \
         90th percentile {:?}, max {:?}; server RSS {rss_before} KiB before, peak {rss_peak} KiB",
        counters.connected.load(Ordering::Relaxed),
        counters.closed_by_server.load(Ordering::Relaxed),
        counters.connect_failed.load(Ordering::Relaxed),
        counters.peak_open.load(Ordering::Relaxed),
        sorted[0],
        sorted[ROUNDS / 2],
        sorted[ROUNDS * 9 / 10],
        sorted[ROUNDS - 1],
    );
    eprintln!("{report}");
    let summaries: Vec<String> = server
        .stderr()
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_owned)
        .collect();
    eprintln!("the server's warnings:\n{}", summaries.join("\n"));

    assert!(
        failures.is_empty(),
        "valid requests failed during the flood: {failures:#?}\n{report}"
    );
    assert!(
        slow.is_empty(),
        "{} of {ROUNDS} valid requests took longer than {BUDGET:?} during the flood: \
         {slow:#?}\n{report}",
        slow.len()
    );
    assert!(
        valid_done_after < HOLD,
        "the valid client's requests went on after the flood ended ({valid_done_after:?}): {report}"
    );
    // The flood was real: all its connections were open at once (on main, 1,153 were:
    // the rest hung in the backlog), and the server closed and the flood renewed them.
    assert_eq!(
        counters.peak_open.load(Ordering::Relaxed),
        FLOOD as i64,
        "the flood never had its {FLOOD} connections open at once: {report}"
    );
    assert!(
        counters.closed_by_server.load(Ordering::Relaxed) >= FLOOD as u64,
        "the server closed fewer flood connections than there are: {report}"
    );
    assert!(server.is_running(), "the server died");
    let (status, _) = https_get(&cfg, server.addr, "/").await.unwrap();
    assert_eq!(status, 200);
}
