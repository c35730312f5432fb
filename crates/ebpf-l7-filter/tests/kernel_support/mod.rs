//! A network namespace with a veth pair, an axum server inside it and the filter attached
//! to the namespace's end of the pair; everything is removed on drop, also after a failed
//! assertion.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use ebpf_l7_filter::{L7Filter, L7FilterBuilder, RuleSet};

pub const PORT: u16 = 8080;

/// Whether this process runs as root (the kernel tests need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace and its veth pair.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub server_ip: Ipv4Addr,
}

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 200 + 20;
        let name = format!("ztl7-{}-{n}", std::process::id());
        let host_if = format!("zl{id}h{n}");
        let ns_if = format!("zl{id}n{n}");
        let subnet = format!("10.{}.{}", 100 + id % 100, n % 250);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            server_ip: format!("{subnet}.2").parse().expect("ip"),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("netns");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((self.server_ip, PORT))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// What the server handled, in order (method and path).
pub type AccessLog = Arc<Mutex<Vec<String>>>;

enum Op {
    Filter(Box<dyn FnOnce(&mut L7Filter) + Send>),
    Stop,
}

/// The server and the filter, both living on a thread inside the namespace.
pub struct Site {
    pub netns: Netns,
    pub log: AccessLog,
    ops: mpsc::Sender<Op>,
    thread: Option<JoinHandle<()>>,
}

impl Site {
    /// Starts the server; attaches the filter with `rules` when given.
    pub fn start(rules: Option<RuleSet>) -> Site {
        Site::start_with(rules, |b| b)
    }

    /// [`Site::start`] with builder options.
    pub fn start_with(
        rules: Option<RuleSet>,
        options: impl FnOnce(L7FilterBuilder) -> L7FilterBuilder + Send + 'static,
    ) -> Site {
        let netns = Netns::new();
        let log: AccessLog = Arc::default();
        let (ops, rx) = mpsc::channel::<Op>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let ns_name = netns.name.clone();
        let ns_if = netns.ns_if.clone();
        let server_log = Arc::clone(&log);
        let enter = Netns {
            name: ns_name,
            host_if: String::new(),
            ns_if: String::new(),
            server_ip: netns.server_ip,
        };
        let thread = std::thread::spawn(move || {
            enter.enter();
            std::mem::forget(enter);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(("0.0.0.0", PORT)))
                .expect("bind");
            rt.spawn(serve(listener, server_log));
            let mut filter = match rules {
                Some(rules) => match options(L7Filter::builder())
                    .interface(&ns_if)
                    .ports([PORT])
                    .rules(rules)
                    .build()
                {
                    Ok(f) => Some(f),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                },
                None => None,
            };
            let _ = ready_tx.send(Ok(()));
            let _guard = rt.enter();
            while let Ok(op) = rx.recv() {
                match op {
                    Op::Filter(f) => {
                        if let Some(filter) = filter.as_mut() {
                            f(filter);
                        }
                    }
                    Op::Stop => break,
                }
            }
            drop(filter);
            rt.shutdown_background();
        });
        ready_rx
            .recv()
            .expect("site thread")
            .unwrap_or_else(|e| panic!("filter: {e}"));
        Site {
            netns,
            log,
            ops,
            thread: Some(thread),
        }
    }

    /// Runs `f` on the filter (on the namespace's thread) and returns its result.
    pub fn with_filter<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut L7Filter) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        self.ops
            .send(Op::Filter(Box::new(move |filter| {
                let _ = tx.send(f(filter));
            })))
            .expect("site thread");
        rx.recv().expect("filter op")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{PORT}{path}", self.netns.server_ip)
    }

    pub fn seen(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.ops.send(Op::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, log: AccessLog) {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let log = Arc::clone(&log);
        async move {
            if let Ok(mut l) = log.lock() {
                l.push(format!("{} {}", req.method(), req.uri()));
            }
            "ok"
        }
    });
    let _ = axum::serve(listener, app).await;
}

/// Sends one request on a new connection; `Ok(status line)` or the I/O error.
pub fn raw_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    // One write, so the request line travels in one segment.
    let request = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// An Ethernet + IPv4 + TCP frame (ACK|PSH) to `PORT` carrying `payload`, as a client's
/// segment reaches the server.
pub fn ipv4_segment(payload: &[u8], source_port: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(54 + payload.len());
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = u16::try_from(20 + 20 + payload.len()).expect("size");
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    p[16..18].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    p.extend_from_slice(&source_port.to_be_bytes());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The same over IPv6.
pub fn ipv6_segment(payload: &[u8], source_port: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(74 + payload.len());
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd]);
    let len = u16::try_from(20 + payload.len()).expect("size");
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[6, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&source_port.to_be_bytes());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}
