//! A TLS listener for axum and tonic that verifies the client and records who it is.
//!
//! [`TlsListener`] accepts TCP connections, runs each TLS handshake in its own task, takes
//! the *current* rustls config from [`ServerTls`] for every new handshake (hot reload),
//! and hands out [`TlsStream`]s that carry a [`TlsConnectInfo`] with the verified
//! [`PeerIdentity`](mtls_verify::PeerIdentity).
//!
//! * axum: `axum::serve(listener, app.into_make_service_with_connect_info::<TlsConnectInfo>())`
//! * tonic: `Server::builder().add_service(svc).serve_with_incoming(listener.into_stream())`
//!
//! ```no_run
//! # async fn run(tls: mtls_verify::ServerTls) -> std::io::Result<()> {
//! use axum::{Router, routing::get};
//! use zt_tower::{TlsConnectInfo, TlsListener, VerifiedPeer};
//!
//! let app = Router::new().route(
//!     "/",
//!     get(|VerifiedPeer(peer): VerifiedPeer| async move { peer.subject().to_owned() }),
//! );
//! let listener = TlsListener::bind("127.0.0.1:8443".parse().unwrap(), tls).await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<TlsConnectInfo>()).await
//! # }
//! ```
//!
//! # Floods of idle and slow connections
//!
//! Connections that open and then say nothing, or trickle their ClientHello, must not keep
//! valid clients out. The listener therefore:
//!
//! * accepts every connection at once — none is left waiting in the kernel's backlog;
//! * closes a connection whose first ClientHello byte has not arrived within
//!   [`first_byte_timeout`](TlsListenerOptions::first_byte_timeout) (default 3 s), and any
//!   handshake not complete within [`ServerTls::handshake_timeout`] (default 10 s);
//! * keeps connections awaiting their ClientHello (cheap: a socket and a small task) apart
//!   from handshakes past it (rustls state, a key exchange), with a cap on each
//!   ([`max_awaiting_client_hello`](TlsListenerOptions::max_awaiting_client_hello),
//!   default 8192; [`max_concurrent_handshakes`](TlsListenerOptions::max_concurrent_handshakes),
//!   default 1024), and caps both together per source address
//!   ([`max_handshakes_per_address`](TlsListenerOptions::max_handshakes_per_address),
//!   default 256) and per /24 (IPv4) or /64 (IPv6)
//!   ([`max_handshakes_per_subnet`](TlsListenerOptions::max_handshakes_per_subnet),
//!   default 1024);
//! * at a cap, admits the new connection and sheds the *oldest* pending handshake of that
//!   address, subnet or stage — within an address or subnet, one still awaiting its
//!   ClientHello first. Silent and slowloris connections thus displace each other, while a
//!   real client, which sends its ClientHello at once, moves on to the handshaking stage
//!   where they cannot reach it.
//!
//! Shedding is counted ([`TlsListener::stats`], also through an
//! [`AcceptorStatsHandle`] that outlives handing the listener to axum or tonic) and
//! logged as a summary every few seconds, not once per connection.
//!
//! With the `audit` feature, `TlsListenerOptions::audit_log` also writes every refused
//! handshake to a `zt_audit::AuditLog` as a `tls.handshake` record (peer address,
//! reason, the presented certificate's subject, serial and SHA-256 fingerprint when there
//! was one), rate-limited so that a flood cannot fill the disk: beyond the limit,
//! refusals are counted into one summary record a second. See `docs/mtls.md`.

mod pending;
mod refusal;
mod stats;

pub use stats::{AcceptorStats, AcceptorStatsHandle};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mtls_verify::{ServerTls, capture_refused_certificate};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::LazyConfigAcceptor;

use crate::TlsConnectInfo;
use pending::{Limits, Pending, Shed, Ticket};
use refusal::{LogLimit, Refusal, RefusalKind};
use stats::Counters;

/// Default cap on handshakes past their ClientHello.
const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default cap on connections awaiting their ClientHello.
const DEFAULT_MAX_AWAITING_CLIENT_HELLO: usize = 8192;
/// Default cap on handshakes in progress from one source address.
const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 256;
/// Default cap on handshakes in progress from one /24 (IPv4) or /64 (IPv6).
const DEFAULT_MAX_HANDSHAKES_PER_SUBNET: usize = 1024;
/// Default time a new connection may stay silent before its first ClientHello byte.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default listen backlog of [`TlsListener::bind`] (the kernel caps it at `somaxconn`,
/// whose Linux default is 4096 too).
const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Default audit rate limit: records a second, and the burst allowed above it.
#[cfg(feature = "audit")]
const DEFAULT_AUDIT_RATE: refusal::AuditRate = refusal::AuditRate {
    per_second: 10,
    burst: 50,
};
/// How often the accept loop flushes the audit summary.
const TICK: Duration = Duration::from_secs(1);
/// Accepts after which the accept loop yields to the connection tasks.
const YIELD_EVERY: u32 = 16;
/// Pending handshakes shed at once when `accept` runs out of file descriptors.
const FD_SHED_BATCH: usize = 4;
/// Ticks between two summaries of shedding and unlogged refusals (when there were any).
const REPORT_EVERY: u32 = 5;

/// Accepts TLS connections with client-certificate verification; see the module docs.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<TlsStream>,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// Options for [`TlsListener`]; every default is meant for production.
///
/// ```
/// use std::time::Duration;
/// use zt_tower::TlsListenerOptions;
///
/// let options = TlsListenerOptions::default()
///     .max_concurrent_handshakes(2048)
///     .max_awaiting_client_hello(16384)
///     .max_handshakes_per_address(32)
///     .max_handshakes_per_subnet(128)
///     .first_byte_timeout(Duration::from_secs(2));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct TlsListenerOptions {
    max_concurrent_handshakes: usize,
    max_awaiting_client_hello: usize,
    max_handshakes_per_address: usize,
    max_handshakes_per_subnet: usize,
    first_byte_timeout: Duration,
    listen_backlog: u32,
    tcp_nodelay: bool,
    #[cfg(feature = "audit")]
    audit: Option<zt_audit::AuditLog>,
    #[cfg(feature = "audit")]
    audit_rate: refusal::AuditRate,
}

impl Default for TlsListenerOptions {
    fn default() -> Self {
        TlsListenerOptions {
            max_concurrent_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_awaiting_client_hello: DEFAULT_MAX_AWAITING_CLIENT_HELLO,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            max_handshakes_per_subnet: DEFAULT_MAX_HANDSHAKES_PER_SUBNET,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            tcp_nodelay: true,
            #[cfg(feature = "audit")]
            audit: None,
            #[cfg(feature = "audit")]
            audit_rate: DEFAULT_AUDIT_RATE,
        }
    }
}

impl TlsListenerOptions {
    /// Handshakes in progress past their ClientHello — the ones holding TLS state and a
    /// key exchange — at once (default 1024, at least 1). When a ClientHello completes at
    /// the limit, the oldest of them is shed to make room.
    pub fn max_concurrent_handshakes(mut self, n: usize) -> Self {
        self.max_concurrent_handshakes = n.max(1);
        self
    }

    /// Accepted connections whose ClientHello is not complete yet — silent or trickling
    /// clients — at once (default 8192, at least 1). Each costs a socket and a small task
    /// (a few KiB) until its first byte is due ([`first_byte_timeout`](Self::first_byte_timeout))
    /// or its handshake times out. A new connection at the limit is accepted all the same,
    /// and the oldest of them is shed. The process also needs the file descriptors: when
    /// `accept` fails for want of one, the oldest pending handshake is shed as well.
    pub fn max_awaiting_client_hello(mut self, n: usize) -> Self {
        self.max_awaiting_client_hello = n.max(1);
        self
    }

    /// Handshakes in progress at once (awaiting their ClientHello or past it) from one
    /// source address (default 256, at least 1). A new connection from an address at the
    /// limit sheds that address's oldest pending handshake, one still awaiting its
    /// ClientHello if there is any. IPv4-mapped IPv6 addresses count as their IPv4
    /// address.
    pub fn max_handshakes_per_address(mut self, n: usize) -> Self {
        self.max_handshakes_per_address = n.max(1);
        self
    }

    /// Handshakes in progress at once from one /24 (IPv4) or /64 (IPv6) (default 1024, at
    /// least 1). A new connection from a subnet at the limit sheds that subnet's oldest
    /// pending handshake, one still awaiting its ClientHello if there is any.
    pub fn max_handshakes_per_subnet(mut self, n: usize) -> Self {
        self.max_handshakes_per_subnet = n.max(1);
        self
    }

    /// How long a new connection may stay silent before the first byte of its ClientHello
    /// (default 3 s; at least 1 ms). Separate from, and never longer than, the whole
    /// handshake's [`ServerTls::handshake_timeout`] (default 10 s), which still bounds
    /// a client that trickles its handshake.
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.first_byte_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The listen backlog used by [`TlsListener::bind`] and
    /// [`TlsListener::bind_with_options`] (default 4096; the kernel caps it at
    /// `net.core.somaxconn`). The listener accepts everything at once, so the backlog only
    /// holds a burst of new connections until the accept loop gets to them — but a
    /// connection attempt that finds it full is dropped, and the client retries only a
    /// second later.
    pub fn listen_backlog(mut self, n: u32) -> Self {
        self.listen_backlog = n.max(1);
        self
    }

    /// Sets `TCP_NODELAY` on accepted sockets (default on).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Writes each refused handshake to `log` as a `tls.handshake` record (feature
    /// `audit`; default: no audit records, only log lines and counters).
    ///
    /// A record has `decision: "deny"`, the `reason`, `resource` = the listener's address,
    /// `subject` = the presented certificate's subject (else `"anonymous"`), and the
    /// fields `peer` (the client's address), `refusal` (`"certificate"`, `"tls"`,
    /// `"timeout"`, `"shed"` or `"identity"`) and, when a certificate was presented,
    /// `cert_serial` and `cert_fingerprint_sha256`. Records are rate-limited (see
    /// [`audit_rate_limit`](Self::audit_rate_limit)); what the limit leaves out is
    /// counted in a summary record with the field `suppressed`. Connections that close
    /// before sending anything (TCP health checks) are not refusals and are not recorded.
    #[cfg(feature = "audit")]
    pub fn audit_log(mut self, log: zt_audit::AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// The audit rate limit (feature `audit`): a token bucket of `per_second` records a
    /// second with bursts of up to `burst` (default 10 a second, bursts of 50; each at
    /// least 1). Refusals beyond it are counted, and once a second the count is written
    /// as one summary record.
    #[cfg(feature = "audit")]
    pub fn audit_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.audit_rate = refusal::AuditRate {
            per_second: per_second.max(1),
            burst: burst.max(1),
        };
        self
    }
}

impl TlsListener {
    /// Binds `addr` (with a listen backlog of 4096, capped by the kernel's `somaxconn`)
    /// and starts accepting with default options.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: SocketAddr, tls: ServerTls) -> io::Result<Self> {
        Self::bind_with_options(addr, tls, TlsListenerOptions::default()).await
    }

    /// Binds `addr` with `SO_REUSEADDR` and the options' listen backlog, and starts
    /// accepting.
    ///
    /// # Errors
    /// The error of creating, binding or listening on the socket.
    pub async fn bind_with_options(
        addr: SocketAddr,
        tls: ServerTls,
        options: TlsListenerOptions,
    ) -> io::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let tcp = socket.listen(options.listen_backlog)?;
        Ok(Self::with_options(tcp, tls, options))
    }

    /// Starts accepting on an already bound listener with default options.
    ///
    /// # Panics
    /// Must be called inside a tokio runtime.
    pub fn new(tcp: TcpListener, tls: ServerTls) -> Self {
        Self::with_options(tcp, tls, TlsListenerOptions::default())
    }

    /// Starts accepting on an already bound listener.
    ///
    /// # Panics
    /// Must be called inside a tokio runtime.
    pub fn with_options(tcp: TcpListener, tls: ServerTls, options: TlsListenerOptions) -> Self {
        let local_addr = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(options.max_concurrent_handshakes);
        let counters = Arc::new(Counters::default());
        let limits = Limits {
            awaiting_hello: options.max_awaiting_client_hello,
            handshaking: options.max_concurrent_handshakes,
            per_address: options.max_handshakes_per_address,
            per_subnet: options.max_handshakes_per_subnet,
        };
        let shared = Arc::new(Shared {
            pending: Arc::new(Pending::new(limits, counters.clone())),
            #[cfg(feature = "audit")]
            audit: options.audit.clone().map(|log| {
                refusal::RefusalAudit::new(
                    log,
                    options.audit_rate,
                    local_addr.to_string(),
                    counters.clone(),
                )
            }),
            counters,
            tls,
            first_byte_timeout: options.first_byte_timeout,
            tcp_nodelay: options.tcp_nodelay,
            log_lines: LogLimit::new(),
        });
        let accept_task = tokio::spawn(accept_loop(tcp, shared.clone(), tx));
        TlsListener {
            local_addr,
            ready,
            shared,
            accept_task,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection whose handshake succeeded; `None` once the listener is shut.
    pub async fn accept(&mut self) -> Option<TlsStream> {
        self.ready.recv().await
    }

    /// What the listener has done so far: accepted, completed, shed, timed out, refused.
    pub fn stats(&self) -> AcceptorStats {
        self.shared.stats()
    }

    /// A handle on [`stats`](Self::stats) to keep after handing the listener to
    /// `axum::serve` or tonic.
    pub fn stats_handle(&self) -> AcceptorStatsHandle {
        AcceptorStatsHandle {
            shared: self.shared.clone(),
        }
    }

    /// The accepted connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> TlsIncoming {
        TlsIncoming { listener: self }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

// === impl Shared ===

/// What the accept loop and the connection tasks share.
#[derive(Debug)]
struct Shared {
    tls: ServerTls,
    pending: Arc<Pending>,
    counters: Arc<Counters>,
    first_byte_timeout: Duration,
    tcp_nodelay: bool,
    /// Rate limit of the per-connection log lines.
    log_lines: LogLimit,
    #[cfg(feature = "audit")]
    audit: Option<refusal::RefusalAudit>,
}

impl Shared {
    fn stats(&self) -> AcceptorStats {
        let (waiting, handshaking) = self.pending.counts();
        stats::snapshot(&self.counters, waiting, handshaking)
    }

    /// Counts a refusal and hands it to the audit log, if there is one. (Its log line was
    /// written where it happened; sheds and timeouts were counted there, by their kind.)
    fn refused(&self, refusal: Refusal) {
        if matches!(
            refusal.kind,
            RefusalKind::Tls | RefusalKind::Certificate | RefusalKind::Identity
        ) {
            Counters::bump(&self.counters.refused);
        }
        #[cfg(feature = "audit")]
        if let Some(audit) = &self.audit {
            audit.record(&refusal);
        }
    }

    /// Every [`TICK`]: writes the audit summary of suppressed refusals, if any.
    fn tick(&self) {
        #[cfg(feature = "audit")]
        if let Some(audit) = &self.audit {
            audit.flush();
        }
    }
}

// === the accept loop ===

async fn accept_loop(tcp: TcpListener, shared: Arc<Shared>, ready: mpsc::Sender<TlsStream>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = Report::new(&shared);
    let mut accept_error_backoff = Duration::from_millis(5);
    let mut accepted_in_a_row = 0;
    loop {
        // Not biased: under a flood `accept` is always ready, and the tick must still run.
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = tick.tick() => {
                shared.tick();
                report.tick(&shared);
                continue;
            }
        };
        let (socket, remote_addr) = match accepted {
            Ok(accepted) => {
                accept_error_backoff = Duration::from_millis(5);
                accepted
            }
            Err(err) => {
                Counters::bump(&shared.counters.accept_errors);
                if is_out_of_file_descriptors(&err) {
                    let shed = (0..FD_SHED_BATCH)
                        .take_while(|_| shared.pending.shed_oldest(Shed::FdLimit))
                        .count();
                    if shed > 0 {
                        // The shed tasks close their sockets when they next run; then retry.
                        tracing::debug!(error = %err, shed, "accept failed; shed the oldest pending handshakes");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                }
                // Nothing to shed, or another error: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(accept_error_backoff).await;
                accept_error_backoff = (accept_error_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        Counters::bump(&shared.counters.accepted);
        if shared.tcp_nodelay {
            let _ = socket.set_nodelay(true);
        }
        let (ticket, shed) = shared.pending.admit(remote_addr.ip());
        accepted_in_a_row += 1;
        tokio::spawn(serve_connection(
            shared.clone(),
            Accepted {
                socket,
                remote_addr,
                at: Instant::now(),
            },
            ticket,
            shed,
            ready.clone(),
        ));
        // Under a flood `accept` is always ready. Give way to the connection tasks now and
        // then, so each looks at its ClientHello soon after the accept (a connection whose
        // task has not run yet is only shed after those found waiting).
        if accepted_in_a_row >= YIELD_EVERY {
            accepted_in_a_row = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// EMFILE / ENFILE (the same numbers on Linux, the BSDs and macOS).
fn is_out_of_file_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24))
}

/// Every [`REPORT_EVERY`] ticks, logs what was shed and how many per-connection log lines
/// were left out, when there was any.
struct Report {
    ticks: u32,
    since: Instant,
    last: AcceptorStats,
}

impl Report {
    fn new(shared: &Shared) -> Self {
        Report {
            ticks: 0,
            since: Instant::now(),
            last: shared.stats(),
        }
    }

    fn tick(&mut self, shared: &Shared) {
        self.ticks += 1;
        if self.ticks < REPORT_EVERY {
            return;
        }
        self.ticks = 0;
        let now = shared.stats();
        let shed = now.shed() - self.last.shed();
        if shed > 0 {
            let limits = shared.pending.limits();
            tracing::warn!(
                shed,
                awaiting_client_hello_shed =
                    now.shed_awaiting_client_hello - self.last.shed_awaiting_client_hello,
                awaiting_client_hello_limit = limits.awaiting_hello,
                handshaking_shed = now.shed_handshaking - self.last.shed_handshaking,
                handshaking_limit = limits.handshaking,
                per_address_shed = now.shed_per_address - self.last.shed_per_address,
                per_address_limit = limits.per_address,
                per_subnet_shed = now.shed_per_subnet - self.last.shed_per_subnet,
                per_subnet_limit = limits.per_subnet,
                file_descriptors_shed = now.shed_fd_limit - self.last.shed_fd_limit,
                awaiting_client_hello = now.awaiting_client_hello,
                handshaking = now.handshaking,
                "shed {shed} pending TLS handshakes in the last {:?} to admit new connections",
                self.since.elapsed(),
            );
        }
        let unlogged = shared.log_lines.take_suppressed();
        if unlogged > 0 {
            tracing::warn!(
                unlogged,
                "{unlogged} refused or timed-out TLS handshakes in the last {:?} were not logged \
                 one by one (at most {} lines a second after a burst of {})",
                self.since.elapsed(),
                refusal::LOG_LINES_PER_SECOND,
                refusal::LOG_BURST,
            );
        }
        self.last = now;
        self.since = Instant::now();
    }
}

// === one connection ===

/// A connection just accepted.
struct Accepted {
    socket: TcpStream,
    remote_addr: SocketAddr,
    at: Instant,
}

/// Runs one connection's handshake until it completes, fails or is shed.
async fn serve_connection(
    shared: Arc<Shared>,
    accepted: Accepted,
    ticket: Ticket,
    mut shed: oneshot::Receiver<Shed>,
    ready: mpsc::Sender<TlsStream>,
) {
    let remote_addr = accepted.remote_addr;
    let outcome = tokio::select! {
        biased;
        Ok(why) = &mut shed => Outcome::Shed(why),
        outcome = handshake(&shared, accepted, &ticket) => outcome,
    };
    // Shed while finishing: it counts as shed, and is closed as such.
    let outcome = match (ticket.finish(), shed.try_recv()) {
        (false, Ok(why)) => Outcome::Shed(why),
        _ => outcome,
    };
    match outcome {
        Outcome::Ready(stream) => {
            Counters::bump(&shared.counters.completed);
            let _ = ready.send(stream).await;
        }
        Outcome::ClosedByClient => Counters::bump(&shared.counters.closed_by_client),
        Outcome::Refused(refusal) => shared.refused(refusal),
        Outcome::Shed(why) => {
            tracing::debug!(%remote_addr, reason = why.reason(), "pending TLS handshake shed");
            shared.refused(Refusal::new(RefusalKind::Shed, remote_addr, why.reason()));
        }
    }
}

/// How a connection's handshake ended. (Short-lived, and the stream moves straight on:
/// boxing it would only add an allocation.)
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Ready(TlsStream),
    ClosedByClient,
    Refused(Refusal),
    Shed(Shed),
}

/// The handshake: the first byte within the first-byte timeout, then the ClientHello, then
/// the rest, all within the handshake timeout counted from the accept.
async fn handshake(shared: &Shared, accepted: Accepted, ticket: &Ticket) -> Outcome {
    let Accepted {
        socket,
        remote_addr,
        at: started,
    } = accepted;
    let timeout = shared.tls.handshake_timeout();
    let deadline = started + timeout;

    // 1–2. The ClientHello. A real client has sent it by the time this task first runs;
    //      only if it has not is the connection marked as waiting (shed first).
    let mut hello = std::pin::pin!(client_hello(shared, socket, remote_addr, started, deadline));
    let hello = match poll_once(&mut hello).await {
        Some(hello) => hello,
        None => {
            ticket.waiting();
            hello.await
        }
    };
    let start = match hello {
        Ok(start) => start,
        Err(outcome) => return outcome,
    };
    ticket.hello_received();

    // 3. The rest, with the config current now. The verifier runs inside these polls;
    //    what it refuses is captured for the refusal's record.
    let local_addr = start.io.local_addr().ok();
    let mut accept = start.into_stream(shared.tls.config()).into_fallible();
    let mut refused_cert = None;
    let rest = std::future::poll_fn(|cx| {
        let (poll, refused) = capture_refused_certificate(|| Pin::new(&mut accept).poll(cx));
        if refused.is_some() {
            refused_cert = refused;
        }
        poll
    });
    let stream = match tokio::time::timeout_at(deadline, rest).await {
        Ok(Ok(stream)) => stream,
        Ok(Err((err, _))) if err.kind() == io::ErrorKind::UnexpectedEof => {
            return Outcome::ClosedByClient;
        }
        Ok(Err((err, socket))) => {
            if shared.log_lines.allow() {
                tracing::info!(%remote_addr, error = %err, "TLS handshake refused");
            }
            tokio::spawn(linger_close(socket));
            let refusal = match refused_cert {
                Some(cert) => Refusal::new(
                    RefusalKind::Certificate,
                    remote_addr,
                    cert.reason().to_owned(),
                )
                .with_certificate(Some(cert)),
                None => Refusal::new(RefusalKind::Tls, remote_addr, tls_reason(&err)),
            };
            return Outcome::Refused(refusal);
        }
        Err(_) => return timed_out(shared, remote_addr, timeout, "the handshake"),
    };

    // 4. Who it is (a resumed session is verified again here).
    let conn = stream.get_ref().1;
    let (identity, refused_cert) = capture_refused_certificate(|| shared.tls.peer_identity(conn));
    let identity = match identity {
        Ok(identity) => identity,
        Err(err) => {
            if shared.log_lines.allow() {
                tracing::warn!(%remote_addr, error = %err, "client identity refused after handshake");
            }
            return Outcome::Refused(
                Refusal::new(RefusalKind::Identity, remote_addr, err.to_string())
                    .with_certificate(refused_cert),
            );
        }
    };
    let info = TlsConnectInfo {
        remote_addr,
        local_addr,
        identity,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_name: conn.server_name().map(str::to_owned),
        resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
    };
    Outcome::Ready(TlsStream {
        inner: stream,
        info,
    })
}

/// Reads the ClientHello: its first byte within the first-byte timeout, all of it within
/// the handshake timeout.
async fn client_hello(
    shared: &Shared,
    socket: TcpStream,
    remote_addr: SocketAddr,
    started: Instant,
    deadline: Instant,
) -> Result<tokio_rustls::StartHandshake<TcpStream>, Outcome> {
    // 1. Anything at all. A connection that closes without a byte is not a TLS client
    //    (a TCP health check, a port scan): not a refusal.
    let first_byte_timeout = shared.first_byte_timeout.min(deadline - started);
    let mut probe = [0u8; 1];
    match tokio::time::timeout_at(started + first_byte_timeout, socket.peek(&mut probe)).await {
        Ok(Ok(0) | Err(_)) => return Err(Outcome::ClosedByClient),
        Ok(Ok(_)) => {}
        Err(_) => {
            Counters::bump(&shared.counters.first_byte_timeouts);
            if shared.log_lines.allow() {
                tracing::info!(%remote_addr, timeout = ?first_byte_timeout, "TLS handshake timed out before the first ClientHello byte");
            }
            return Err(Outcome::Refused(Refusal::new(
                RefusalKind::Timeout,
                remote_addr,
                format!("no ClientHello byte within {first_byte_timeout:?}"),
            )));
        }
    }

    // 2. The whole ClientHello.
    let mut hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), socket);
    match tokio::time::timeout_at(deadline, &mut hello).await {
        Ok(Ok(start)) => Ok(start),
        Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => Err(Outcome::ClosedByClient),
        Ok(Err(err)) => {
            if shared.log_lines.allow() {
                tracing::info!(%remote_addr, error = %err, "TLS handshake refused");
            }
            if let Some(socket) = hello.take_io() {
                tokio::spawn(linger_close(socket));
            }
            Err(Outcome::Refused(Refusal::new(
                RefusalKind::Tls,
                remote_addr,
                tls_reason(&err),
            )))
        }
        Err(_) => Err(timed_out(
            shared,
            remote_addr,
            deadline - started,
            "the ClientHello",
        )),
    }
}

/// Polls `fut` once: its output if it is ready, `None` if it would wait.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
    .await
}

fn timed_out(shared: &Shared, remote_addr: SocketAddr, timeout: Duration, what: &str) -> Outcome {
    Counters::bump(&shared.counters.handshake_timeouts);
    if shared.log_lines.allow() {
        tracing::info!(%remote_addr, ?timeout, "TLS handshake timed out");
    }
    Outcome::Refused(Refusal::new(
        RefusalKind::Timeout,
        remote_addr,
        format!("{what} was not complete within the {timeout:?} handshake timeout"),
    ))
}

/// The plain-language reason of a failed handshake.
fn tls_reason(err: &io::Error) -> String {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(e) => mtls_verify::human_reason(e),
        None => err.to_string(),
    }
}

/// Closes a refused connection so the client can read our alert.
///
/// In TLS 1.3 the client sends its certificate and its first request together; closing
/// the socket while that request is unread makes the kernel send a reset, and the client
/// may then report "connection reset" instead of the alert that says why. So: shut our
/// side (the alert is already written), read and discard what the client still sends,
/// for a short, bounded time, then close.
async fn linger_close(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LINGER: Duration = Duration::from_millis(500);
    const MAX_DRAIN: usize = 64 * 1024;
    let _ = socket.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// One accepted, verified TLS connection.
#[derive(Debug)]
pub struct TlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsStream {
    /// What the handshake established.
    pub fn connect_info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The underlying tokio-rustls stream.
    pub fn get_ref(&self) -> &tokio_rustls::server::TlsStream<TcpStream> {
        &self.inner
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// [`TlsListener`] as a `Stream` of connections (for tonic's `serve_with_incoming`).
#[derive(Debug)]
pub struct TlsIncoming {
    listener: TlsListener,
}

impl TlsIncoming {
    /// The listener's counters; see [`TlsListener::stats`].
    pub fn stats(&self) -> AcceptorStats {
        self.listener.stats()
    }
}

impl futures_util::Stream for TlsIncoming {
    type Item = Result<TlsStream, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.ready.poll_recv(cx).map(|next| next.map(Ok))
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for TlsStream {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = TlsConnectInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(stream) => {
                let info = stream.info.clone();
                (stream, info)
            }
            // The accept task only ends when the runtime shuts down; park instead of spinning.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(TlsConnectInfo::new(self.local_addr, None))
    }
}

#[cfg(feature = "axum")]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsConnectInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
