//! The acceptor's defences against floods of idle and slow connections, each on its own
//! and at a small scale (issue #7, section 3): the first-byte timeout, the caps per
//! address, per subnet and per stage, shedding the oldest, and the counters that show it.
//! The 5,000-connection flood against the example server is `tests/flood.rs` at the top.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mtls_verify::ServerTlsBuilder;
use rustls::pki_types::ServerName;
use support::wait_for_stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use zt_tower::{AcceptorStatsHandle, TlsListener, TlsListenerOptions};
use ztkit_test_support::TestPki;

/// Guard against hangs only.
const GUARD: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    stats: AcceptorStatsHandle,
    client: Arc<rustls::ClientConfig>,
    _serve: JoinHandle<()>,
}

/// An in-process listener whose connections answer `ping` with `pong`.
async fn serve(options: TlsListenerOptions, handshake_timeout: Duration) -> Server {
    let pki = TestPki::new();
    let tls = ServerTlsBuilder::from_pem(
        pki.server.chain_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        pki.ca.cert_pem.as_bytes(),
    )
    .handshake_timeout(handshake_timeout)
    .build()
    .unwrap();
    let mut listener = TlsListener::bind_with_options("127.0.0.1:0".parse().unwrap(), tls, options)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats_handle();
    let serve = tokio::spawn(async move {
        while let Some(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
                    let _ = stream.write_all(b"pong").await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der.clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pki.client.chain_der.clone(), pki.client.private_key())
        .unwrap();
    client.resumption = rustls::client::Resumption::disabled();
    Server {
        addr,
        stats,
        client: Arc::new(client),
        _serve: serve,
    }
}

/// A full handshake and one request/response on a new connection; how long it took.
async fn ping(server: &Server) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let tcp = TcpStream::connect(server.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut tls = TlsConnector::from(server.client.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if &buf == b"pong" {
            Ok(())
        } else {
            Err(format!("answered {buf:?}"))
        }
    };
    tokio::time::timeout(GUARD, exchange)
        .await
        .map_err(|_| "no answer".to_owned())??;
    Ok(started.elapsed())
}

/// The first flight of a real client: a TLS record holding a ClientHello.
fn client_hello(server: &Server) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        server.client.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// Reads until the server closes the connection; when that was.
async fn wait_closed(mut conn: TcpStream) -> Instant {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(GUARD, async {
        while let Ok(n) = conn.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .expect("the server never closed the connection");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_close_at_the_first_byte_timeout_trickling_ones_at_the_handshake_timeout()
 {
    const FIRST_BYTE: Duration = Duration::from_millis(300);
    const HANDSHAKE: Duration = Duration::from_millis(1500);
    let server = serve(
        TlsListenerOptions::default().first_byte_timeout(FIRST_BYTE),
        HANDSHAKE,
    )
    .await;

    // A health check: connect and close. Not a refusal.
    drop(TcpStream::connect(server.addr).await.unwrap());
    wait_for_stats(&server.stats, GUARD, |s| s.closed_by_client == 1).await;

    // Taken before connecting: the server's timers cannot start earlier.
    let opened = Instant::now();
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    // A handshake record header announcing 16 KiB, then a byte: past the first-byte
    // timeout, never complete.
    trickle
        .write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01])
        .await
        .unwrap();
    let (silent_closed, trickle_closed) = tokio::join!(wait_closed(silent), wait_closed(trickle));
    let (silent_lived, trickle_lived) = (silent_closed - opened, trickle_closed - opened);
    assert!(
        silent_lived >= FIRST_BYTE && silent_lived < HANDSHAKE,
        "the silent connection lived {silent_lived:?}; the first-byte timeout is {FIRST_BYTE:?}"
    );
    assert!(
        trickle_lived >= HANDSHAKE,
        "the trickling connection lived {trickle_lived:?}, less than the {HANDSHAKE:?} handshake timeout"
    );
    let stats = wait_for_stats(&server.stats, GUARD, |s| s.handshake_timeouts == 1).await;
    assert_eq!(stats.first_byte_timeouts, 1, "{stats:#?}");
    assert_eq!(stats.refused, 0, "{stats:#?}");
    assert_eq!(stats.accepted, 3, "{stats:#?}");
    ping(&server).await.unwrap();
}

/// Flood connection `i`: 10 subnets of 30 connections (over the per-subnet cap of 16),
/// 6 addresses of 5 in each (over the per-address cap of 4), 300 in all (over the cap of
/// 64 awaiting their ClientHello).
fn flood_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 4, (i / 30) as u8, 1 + (i % 6) as u8)
}

/// Holds an idle connection from `source`, renewed whenever the server closes it.
async fn idle_slot(source: Ipv4Addr, server: SocketAddr, until: Instant) {
    while Instant::now() < until {
        let connect = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source.into(), 0))?;
            socket.connect(server).await
        };
        let Ok(Ok(mut conn)) = tokio::time::timeout_at(until, connect).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout_at(until, conn.read(&mut buf)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_every_cap_sheds_the_oldest_and_valid_clients_get_through() {
    const AWAITING: usize = 64;
    let server = serve(
        TlsListenerOptions::default()
            .max_awaiting_client_hello(AWAITING)
            .max_handshakes_per_address(4)
            .max_handshakes_per_subnet(16),
        Duration::from_secs(10),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(4);
    let flood: Vec<_> = (0..300)
        .map(|i| tokio::spawn(idle_slot(flood_source(i), server.addr, until)))
        .collect();
    wait_for_stats(&server.stats, GUARD, |s| s.accepted >= 300).await;

    let mut timings = Vec::new();
    for _ in 0..20 {
        let stats = server.stats.get();
        assert!(
            stats.awaiting_client_hello <= AWAITING as u64,
            "more connections awaiting their ClientHello than the cap: {stats:#?}"
        );
        timings.push(ping(&server).await.unwrap());
    }
    let slowest = timings.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "a valid client waited {slowest:?} during the flood: {timings:?}"
    );
    for slot in flood {
        slot.await.unwrap();
    }
    let stats = server.stats.get();
    eprintln!("valid client: {timings:?}\n{stats:#?}");
    assert!(stats.shed_per_address > 0, "{stats:#?}");
    assert!(stats.shed_per_subnet > 0, "{stats:#?}");
    assert!(stats.shed_awaiting_client_hello > 0, "{stats:#?}");
    assert_eq!(stats.handshakes_completed, 20, "{stats:#?}");

    // Every accepted connection is accounted for once the flood is gone.
    let stats = wait_for_stats(&server.stats, GUARD, |s| {
        s.awaiting_client_hello == 0 && s.handshaking == 0
    })
    .await;
    assert_eq!(
        stats.accepted,
        stats.handshakes_completed
            + stats.shed()
            + stats.first_byte_timeouts
            + stats.handshake_timeouts
            + stats.refused
            + stats.closed_by_client,
        "{stats:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_past_the_client_hello_are_capped() {
    let server = serve(
        TlsListenerOptions::default().max_concurrent_handshakes(4),
        Duration::from_secs(10),
    )
    .await;
    let hello = client_hello(&server);
    // Twelve clients send a ClientHello, then nothing: the server answers and waits.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(&hello).await.unwrap();
        stalled.push(conn);
    }
    let stats = wait_for_stats(&server.stats, GUARD, |s| s.shed_handshaking == 8).await;
    assert_eq!(stats.handshaking, 4, "{stats:#?}");
    assert_eq!(stats.awaiting_client_hello, 0, "{stats:#?}");
    // The oldest eight were closed, the newest four are waiting.
    for conn in stalled.drain(..8) {
        wait_closed(conn).await;
    }
    // A valid client's handshake sheds one more stalled one and completes.
    ping(&server).await.unwrap();
    let stats = server.stats.get();
    assert_eq!(stats.shed_handshaking, 9, "{stats:#?}");
    assert_eq!(stats.handshakes_completed, 1, "{stats:#?}");
}
