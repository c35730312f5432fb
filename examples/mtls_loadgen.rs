//! A closed-loop HTTP/1.1 load generator over TLS that can present a client certificate.
//!
//! `wrk` has no option for a TLS client certificate, and OpenSSL's config file cannot add
//! one (OpenSSL 3.0 refuses `Certificate`/`PrivateKey` in the system-wide `system_default`
//! section). The mTLS load run (`scripts/load-mtls.sh`, `docs/benchmarks.md`) therefore
//! drives both servers with wrk through a small LD_PRELOAD shim *and* with this tool, an
//! independent client shaped like `wrk -tT -cC -dD` that needs no tricks. It also holds
//! thousands of idle connections for the memory measurement, which wrk cannot do.
//!
//! ```sh
//! # throw-away CA, server and client certificates
//! cargo run --release --example mtls_loadgen -- --gen-pki /tmp/pki
//! # C keep-alive connections over T threads for D seconds after a warm-up
//! cargo run --release --example mtls_loadgen -- --ca /tmp/pki/ca.pem \
//!     --cert /tmp/pki/client.crt --key /tmp/pki/client.key -t 2 -c 50 -d 10
//! # open N connections, one request on each, keep them idle; with --server-pid,
//! # report the server's VmRSS before and after (KiB per connection)
//! cargo run --release --example mtls_loadgen -- --ca /tmp/pki/ca.pem \
//!     --cert /tmp/pki/client.crt --key /tmp/pki/client.key --idle 10000 --server-pid PID
//! ```
//!
//! Each connection sends a request, reads the whole response and sends the next one (like
//! wrk). All connections are open before the clock starts; requests completed during the
//! warm-up are not counted. Results end with one machine-readable line starting `RESULT`
//! (load) or `MEMORY` (idle). Any failed request makes the exit status non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
#[command(about = "closed-loop HTTPS load generator with optional TLS client certificate")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    addr: SocketAddr,
    /// Name the server certificate must match (also sent as SNI and Host).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Path to request.
    #[arg(long, default_value = "/")]
    path: String,
    /// CA bundle (PEM) the server certificate must chain to.
    #[arg(long, required_unless_present = "gen_pki")]
    ca: Option<PathBuf>,
    /// Client certificate chain (PEM); without it no certificate is presented.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Keep-alive connections, spread over the threads.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Threads, each with its own single-threaded runtime (as wrk's `-t`).
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Measured duration, seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before the measured window, seconds (requests run but are not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Label printed in the RESULT line.
    #[arg(long, default_value = "load")]
    label: String,
    /// Idle mode: open this many connections, one request on each, then hold them.
    #[arg(long)]
    idle: Option<usize>,
    /// Idle mode: TLS handshakes in flight at once while opening connections.
    #[arg(long, default_value_t = 64)]
    idle_concurrency: usize,
    /// The server's process id. Load mode: report its CPU time (user + system) per
    /// request over the measured window. Idle mode: report its VmRSS before and after
    /// opening the connections.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Idle mode: keep the connections open this many seconds after reporting.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Write a throw-away CA, server (localhost) and client (SPIFFE ID) certificate and
    /// key into this directory and exit: ca.pem, server.crt/key, client.crt/key.
    #[arg(long)]
    gen_pki: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(dir) = &args.gen_pki {
        return gen_pki(dir);
    }
    let client = Arc::new(client_config(&args)?);
    let target = Target {
        addr: args.addr,
        server_name: ServerName::try_from(args.server_name.clone())?,
        host: args.server_name.clone(),
        path: args.path.clone(),
        connector: TlsConnector::from(client),
    };
    let ok = match args.idle {
        Some(n) => run_idle(&args, Arc::new(target), n)?,
        None => run_load(&args, Arc::new(target))?,
    };
    if ok {
        Ok(())
    } else {
        Err("some requests failed".into())
    }
}

fn gen_pki(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let pki = ztkit_test_support::TestPki::new();
    std::fs::write(dir.join("ca.pem"), &pki.ca.cert_pem)?;
    pki.server.write_to(dir, "server");
    pki.client.write_to(dir, "client");
    println!(
        "wrote ca.pem, server.crt/key (localhost) and client.crt/key \
         (spiffe://example.org/ns/default/sa/client) to {}",
        dir.display()
    );
    Ok(())
}

fn client_config(args: &Args) -> Result<ClientConfig, Box<dyn std::error::Error>> {
    let ca = args.ca.as_ref().ok_or("--ca is required")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let builder = ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: String,
    path: String,
    connector: TlsConnector,
}

/// One open keep-alive connection.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    cipher: String,
}

impl Target {
    async fn connect(&self) -> Result<Conn, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| {
            if e.raw_os_error() == Some(24) {
                format!("connect: {e} (raise the limit: ulimit -n)")
            } else {
                format!("connect: {e}")
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let cipher = tls
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Conn { sender, cipher })
    }

    /// One GET on `conn`, whole body read; `Err` unless the status is 200.
    async fn get(&self, conn: &mut Conn) -> Result<(), String> {
        let req = http::Request::get(self.path.as_str())
            .header(http::header::HOST, self.host.as_str())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        conn.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let res = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = res.status();
        res.into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        if status == http::StatusCode::OK {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

// === load mode ===

#[derive(Default)]
struct ThreadResult {
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
    cipher: String,
}

fn run_load(args: &Args, target: Arc<Target>) -> Result<bool, Box<dyn std::error::Error>> {
    let threads = args.threads.max(1).min(args.connections.max(1));
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let mut handles = Vec::new();
    let mut starts = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for i in 0..threads {
        // Connections spread as evenly as possible over the threads.
        let conns = args.connections / threads + usize::from(i < args.connections % threads);
        let (start_tx, start_rx) = std::sync::mpsc::channel::<Instant>();
        starts.push(start_tx);
        let target = target.clone();
        let ready_tx = ready_tx.clone();
        handles.push(std::thread::spawn(move || {
            load_thread(target, conns, warmup, duration, ready_tx, start_rx)
        }));
    }
    drop(ready_tx);
    // Every connection is open (handshakes done) before the clock starts.
    for _ in 0..threads {
        ready_rx.recv()??;
    }
    let t0 = Instant::now();
    for start in starts {
        start.send(t0)?;
    }
    // The server's CPU time over the measured window (the clients stop sending at its end).
    let server_cpu = match args.server_pid {
        Some(pid) => {
            std::thread::sleep((t0 + warmup).saturating_duration_since(Instant::now()));
            let from = cpu_time_us(pid)?;
            std::thread::sleep((t0 + warmup + duration).saturating_duration_since(Instant::now()));
            Some(cpu_time_us(pid)?.saturating_sub(from))
        }
        None => None,
    };
    let mut total = ThreadResult::default();
    for handle in handles {
        let r = handle.join().map_err(|_| "load thread panicked")?;
        total.requests += r.requests;
        total.errors += r.errors;
        total.latencies_us.extend(r.latencies_us);
        total.first_error = total.first_error.or(r.first_error);
        if total.cipher.is_empty() {
            total.cipher = r.cipher;
        }
    }
    total.latencies_us.sort_unstable();
    let rps = total.requests as f64 / duration.as_secs_f64();
    let pct = |p: f64| percentile(&total.latencies_us, p);
    println!(
        "{} connections, {} threads, {:.1} s warm-up + {:.1} s measured, {}{}",
        args.connections,
        threads,
        warmup.as_secs_f64(),
        duration.as_secs_f64(),
        if args.cert.is_some() {
            "client certificate"
        } else {
            "no client certificate"
        },
        if total.cipher.is_empty() {
            String::new()
        } else {
            format!(", {}", total.cipher)
        }
    );
    println!(
        "  latency p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        total.latencies_us.last().copied().unwrap_or(0)
    );
    println!(
        "  {} requests, {} errors, {:.0} requests/s",
        total.requests, total.errors, rps
    );
    if let Some(err) = &total.first_error {
        println!("  first error: {err}");
    }
    let cpu_per_req = server_cpu
        .filter(|_| total.requests > 0)
        .map(|cpu| cpu as f64 / total.requests as f64);
    if let (Some(cpu), Some(per_req)) = (server_cpu, cpu_per_req) {
        println!(
            "  server CPU {:.2} s ({:.0} % of one core): {per_req:.2} us per request",
            cpu as f64 / 1e6,
            100.0 * cpu as f64 / 1e6 / duration.as_secs_f64()
        );
    }
    println!(
        "RESULT label={} connections={} threads={} duration_s={:.1} requests={} errors={} \
         rps={:.0} p50_us={} p90_us={} p99_us={} max_us={} server_cpu_us_per_req={}",
        args.label,
        args.connections,
        threads,
        duration.as_secs_f64(),
        total.requests,
        total.errors,
        rps,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        total.latencies_us.last().copied().unwrap_or(0),
        cpu_per_req.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
    );
    Ok(total.errors == 0 && total.requests > 0)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn load_thread(
    target: Arc<Target>,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    start: std::sync::mpsc::Receiver<Instant>,
) -> ThreadResult {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime: {e}")));
            return ThreadResult::default();
        }
    };
    let opened = rt.block_on(async {
        let mut open = Vec::with_capacity(conns);
        for _ in 0..conns {
            open.push(target.connect().await?);
        }
        Ok::<_, String>(open)
    });
    let opened = match opened {
        Ok(opened) => {
            let _ = ready.send(Ok(()));
            opened
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return ThreadResult::default();
        }
    };
    let Ok(t0) = start.recv() else {
        return ThreadResult::default();
    };
    let measure_from = t0 + warmup;
    let end = measure_from + duration;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for conn in opened {
            let target = target.clone();
            tasks.spawn(async move { connection_loop(&target, conn, measure_from, end).await });
        }
        let mut total = ThreadResult::default();
        while let Some(done) = tasks.join_next().await {
            let Ok(r) = done else {
                total.errors += 1;
                continue;
            };
            total.requests += r.requests;
            total.errors += r.errors;
            total.latencies_us.extend(r.latencies_us);
            total.first_error = total.first_error.or(r.first_error);
            if total.cipher.is_empty() {
                total.cipher = r.cipher;
            }
        }
        total
    })
}

/// Requests back to back on one connection until `end`; reconnects after an error, and
/// gives up when a fresh connection fails before its first answer.
async fn connection_loop(
    target: &Target,
    mut conn: Conn,
    measure_from: Instant,
    end: Instant,
) -> ThreadResult {
    let mut result = ThreadResult {
        cipher: conn.cipher.clone(),
        ..ThreadResult::default()
    };
    let mut answered = false;
    loop {
        let sent = Instant::now();
        if sent >= end {
            return result;
        }
        let outcome = target.get(&mut conn).await;
        let done = Instant::now();
        let counted = done >= measure_from && done < end;
        answered |= outcome.is_ok();
        match outcome {
            Ok(()) if counted => {
                result.requests += 1;
                let us = done.duration_since(sent).as_micros();
                result
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(()) => {}
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(e);
                if !answered {
                    return result;
                }
                answered = false;
                match target.connect().await {
                    Ok(fresh) => conn = fresh,
                    Err(e) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(e);
                        return result;
                    }
                }
            }
        }
    }
}

// === idle mode ===

fn run_idle(
    args: &Args,
    target: Arc<Target>,
    n: usize,
) -> Result<bool, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        if let Some(pid) = args.server_pid {
            // One connection first, so the server's lazily built state is not counted.
            let mut warm = target.connect().await?;
            target.get(&mut warm).await?;
            drop(warm);
            let before = vm_rss_kib(pid)?;
            println!("server pid {pid}: VmRSS {before} KiB before");
            let started = Instant::now();
            let conns = open_idle(&target, n, args.idle_concurrency).await?;
            let opened_in = started.elapsed();
            let after = vm_rss_kib(pid)?;
            let per_conn = (after.saturating_sub(before)) as f64 / n as f64;
            println!(
                "{n} connections open, one request served on each, in {:.1} s",
                opened_in.as_secs_f64()
            );
            println!(
                "server pid {pid}: VmRSS {after} KiB with them idle: {per_conn:.1} KiB per connection"
            );
            // The connections are still being served: one more request on each.
            let conns = request_on_each(&target, conns, args.idle_concurrency).await?;
            println!("all {} connections still answer", conns.len());
            println!(
                "MEMORY connections={n} rss_before_kib={before} rss_after_kib={after} \
                 per_conn_kib={per_conn:.1}"
            );
            hold(args.hold).await;
            drop(conns);
        } else {
            let conns = open_idle(&target, n, args.idle_concurrency).await?;
            println!("{n} connections open, one request served on each");
            hold(args.hold).await;
            drop(conns);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(true)
}

async fn hold(secs: u64) {
    if secs > 0 {
        println!("holding them for {secs} s");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

async fn open_idle(
    target: &Arc<Target>,
    n: usize,
    concurrency: usize,
) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let mut launched = 0;
    while conns.len() < n {
        while launched < n && tasks.len() < concurrency.max(1) {
            let target = target.clone();
            tasks.spawn(async move {
                let mut conn = target.connect().await?;
                target.get(&mut conn).await?;
                Ok::<_, String>(conn)
            });
            launched += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(conn))) => conns.push(conn),
            Some(Ok(Err(e))) => return Err(format!("after {} connections: {e}", conns.len())),
            Some(Err(e)) => return Err(format!("connection task: {e}")),
            None => break,
        }
    }
    Ok(conns)
}

async fn request_on_each(
    target: &Arc<Target>,
    conns: Vec<Conn>,
    concurrency: usize,
) -> Result<Vec<Conn>, String> {
    let mut out = Vec::with_capacity(conns.len());
    let mut pending = conns.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < concurrency.max(1) {
            let Some(mut conn) = pending.next() else {
                break;
            };
            let target = target.clone();
            tasks.spawn(async move {
                target.get(&mut conn).await?;
                Ok::<_, String>(conn)
            });
        }
        match tasks.join_next().await {
            Some(Ok(Ok(conn))) => out.push(conn),
            Some(Ok(Err(e))) => return Err(format!("idle connection: {e}")),
            Some(Err(e)) => return Err(format!("connection task: {e}")),
            None => return Ok(out),
        }
    }
}

/// User + system CPU time of `pid` in microseconds, from /proc/PID/stat (clock ticks,
/// assumed 100 per second as on every Linux this runs on).
fn cpu_time_us(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) * 10_000),
        _ => Err(format!("/proc/{pid}/stat: no utime/stime")),
    }
}

/// Resident set size of `pid` in KiB, from /proc/PID/status.
fn vm_rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no VmRSS line"))
}
