//! L7RulesLayer through real servers: axum over HTTP/1.1 (raw request lines, so the path
//! tricks reach the server as sent), tonic over HTTP/2; the audit records it leaves; live
//! rule swaps, by hand and from a watched file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::{Router, routing::any};
use ebpf_l7_filter::{MaterialHolder, RuleSet, RulesHolder};
use support::audit_lines;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use zt_audit::{AuditLog, Durability};
use zt_tower::{AuditLayer, L7RulesLayer};
use ztkit_testproto::greeter_client::GreeterClient;
use ztkit_testproto::greeter_server::{Greeter, GreeterServer};
use ztkit_testproto::{HelloReply, HelloRequest};

const RULES: &str = r#"
default: deny
rules:
  - { id: health, action: allow, methods: [GET], path: { exact: "/health" } }
  - { id: orders-read, action: allow, methods: [GET, HEAD], path: { prefix: "/api/orders" } }
  - { id: orders-write, action: audit, methods: [POST], path: { prefix: "/api/orders" } }
  - { id: admin, action: deny, path: { prefix: "/admin" } }
  - { id: public, action: allow, path: { prefix: "/" } }
"#;

struct Server {
    addr: SocketAddr,
    /// Requests the handler saw.
    served: Arc<AtomicUsize>,
    log: AuditLog,
    holder: Arc<RulesHolder>,
    _dir: tempfile::TempDir,
}

async fn axum_server(layer: L7RulesLayer) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::builder(dir.path())
        .durability(Durability::Always)
        .open()
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let holder = layer.holder().clone();
    let app = Router::new()
        .fallback(any(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }))
        .layer(
            ServiceBuilder::new()
                .layer(AuditLayer::new(log.clone()))
                .layer(layer),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        addr,
        served,
        log,
        holder,
        _dir: dir,
    }
}

/// Sends `raw` (one or more requests) and returns the status codes of the responses.
async fn send(addr: SocketAddr, raw: &str) -> Vec<u16> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&buf)
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| {
            buf[i + 9..i + 12]
                .iter()
                .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'))
        })
        .collect()
}

async fn status(addr: SocketAddr, method: &str, target: &str) -> u16 {
    let raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let codes = send(addr, &raw).await;
    assert_eq!(codes.len(), 1, "{method} {target}: {codes:?}");
    codes[0]
}

#[tokio::test]
async fn axum_allows_denies_and_refuses_path_tricks() {
    let server = axum_server(L7RulesLayer::new(RuleSet::from_yaml(RULES).unwrap())).await;
    let cases = [
        ("GET", "/health", 200),
        ("POST", "/health", 200), // not the health rule (GET only): the "/" prefix
        ("GET", "/api/orders", 200),
        ("HEAD", "/api/orders/7?x=1", 200),
        ("GET", "/api/orders-internal", 200), // not a segment boundary: falls to "/"
        ("POST", "/api/orders", 200),         // audit: allowed and recorded
        ("DELETE", "/api/orders/7", 200),     // "/" (any method)
        ("GET", "/admin", 403),
        ("GET", "/admin/users?x=1", 403),
        ("PROPFIND", "/admin", 403),
        // Path tricks: non-canonical, refused in strict mode whatever they would resolve to.
        ("GET", "//admin", 403),
        ("GET", "/x/../admin", 403),
        ("GET", "/./admin", 403),
        ("GET", "/%61dmin", 403),
        ("GET", "/api/%2e%2e/admin", 403),
        ("GET", "/a%2Fb", 403),
        ("GET", "http://shop/health", 403), // absolute-form
        ("OPTIONS", "*", 403),
    ];
    for (method, target, want) in cases {
        assert_eq!(
            status(server.addr, method, target).await,
            want,
            "{method} {target}"
        );
    }
    let long = format!("/{}", "a".repeat(128));
    assert_eq!(
        status(server.addr, "GET", &long).await,
        403,
        "129-byte path"
    );
    assert_eq!(
        status(server.addr, "GET", &long[..128]).await,
        200,
        "128-byte path"
    );

    // Denied requests never reached the handler.
    let allowed = cases.iter().filter(|c| c.2 == 200).count() + 1;
    assert_eq!(server.served.load(Ordering::SeqCst), allowed);

    // Every request has its record, with what the l7 rules decided.
    let records = audit_lines(&server.log);
    assert_eq!(records.len(), cases.len() + 2);
    let find = |resource: &str, action: &str| {
        records
            .iter()
            .find(|r| r["resource"] == resource && r["action"] == action)
            .unwrap_or_else(|| panic!("no record of {action} {resource}: {records:#?}"))
    };
    let admin = find("/admin", "GET");
    assert_eq!(admin["outcome"], "refused");
    assert_eq!(admin["decided_by"], "l7");
    assert_eq!(admin["l7_verdict"], "deny");
    assert_eq!(admin["l7_rule"], "admin");
    assert_eq!(admin["status"], 403);
    let write = find("/api/orders", "POST");
    assert_eq!(write["outcome"], "completed");
    assert_eq!(write["l7_verdict"], "audit");
    assert_eq!(write["l7_rule"], "orders-write");
    assert_eq!(write["decided_by"], "l7");
    let trick = find("/x/../admin", "GET");
    assert_eq!(trick["l7_reason"], "non_canonical");
    assert_eq!(trick["l7_rule"], serde_json::Value::Null);
}

#[tokio::test]
async fn pipelined_requests_are_each_decided() {
    // The kernel sees only the first request line of a segment; the layer sees them all.
    let server = axum_server(L7RulesLayer::new(RuleSet::from_yaml(RULES).unwrap())).await;
    let raw = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n\
               GET /admin HTTP/1.1\r\nHost: a\r\n\r\n\
               GET /api/orders/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(send(server.addr, raw).await, [200, 403, 200]);
    assert_eq!(server.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn live_rule_swap_under_load() {
    let server = axum_server(L7RulesLayer::new(RuleSet::from_yaml(RULES).unwrap())).await;
    let addr = server.addr;
    // A client loops on /api/orders/1 over keep-alive connections while the rule flips to
    // deny; every response is 200 or 403 (none fails otherwise), and once the swap has
    // returned, every request is refused.
    let swapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = swapped.clone();
    let client = tokio::spawn(async move {
        let (mut ok, mut after_swap) = (0, 0);
        while after_swap < 50 {
            let was_swapped = flag.load(Ordering::SeqCst);
            let code = status(addr, "GET", "/api/orders/1").await;
            match (was_swapped, code) {
                (false, 200) => ok += 1,
                (false, 403) => {}
                (true, 403) => after_swap += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        ok
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.served.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "the client made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let denied = RULES.replace(
        "{ id: orders-read, action: allow",
        "{ id: orders-read, action: deny",
    );
    server
        .holder
        .update(RuleSet::from_yaml(&denied).unwrap())
        .unwrap();
    swapped.store(true, Ordering::SeqCst);
    let ok = client.await.unwrap();
    assert!(ok >= 20, "{ok}");
    assert_eq!(server.holder.status().generation, 2);
}

#[tokio::test]
async fn rules_follow_a_watched_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, RULES).unwrap();
    let (holder, _watch) = RulesHolder::watch_file(&file, Duration::from_millis(50)).unwrap();
    let server = axum_server(L7RulesLayer::from_holder(holder.clone())).await;
    assert_eq!(status(server.addr, "GET", "/admin").await, 403);
    std::fs::write(
        &file,
        RULES.replace("{ id: admin, action: deny", "{ id: admin, action: allow"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.status().generation < 2 {
        assert!(Instant::now() < deadline, "the changed file was not taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status(server.addr, "GET", "/admin").await, 200);
}

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        req: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello {}", req.into_inner().name),
        }))
    }
}

#[tokio::test]
async fn tonic_by_service_and_method() {
    let allow = r#"
default: deny
rules:
  - { id: greeter, action: allow, methods: [POST], path: { exact: "/helloworld.Greeter/SayHello" } }
"#;
    let layer = L7RulesLayer::new(RuleSet::from_yaml(allow).unwrap());
    let holder = layer.holder().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(GreeterServer::new(Hello))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GreeterClient::new(channel);
    let hello = || tonic::Request::new(HelloRequest { name: "l7".into() });
    assert_eq!(
        client
            .say_hello(hello())
            .await
            .unwrap()
            .into_inner()
            .message,
        "hello l7"
    );

    // The same service, another rule set: a deny by service prefix.
    let deny = r#"
default: allow
rules:
  - { id: no-greeter, action: deny, path: { prefix: "/helloworld.Greeter" } }
"#;
    holder.update(RuleSet::from_yaml(deny).unwrap()).unwrap();
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("no-greeter"),
        "{}",
        status.message()
    );
}
