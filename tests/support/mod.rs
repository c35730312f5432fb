//! Shared helpers for the root package's integration tests: the example server binaries as
//! child processes, a PKI written to files, and small rustls/hyper clients.
// Each test file uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ztkit_test_support::{TestCa, TestCert};

/// The SPIFFE ID the servers allow.
pub const CLIENT_ID: &str = "spiffe://example.org/ns/default/sa/client";
/// A SPIFFE ID from the right CA that the servers do not allow.
pub const INTRUDER_ID: &str = "spiffe://example.org/ns/default/sa/intruder";

/// Guard against hangs only; nothing waits for it to pass.
pub const GUARD: Duration = Duration::from_secs(60);

// === the example binaries ===

/// The compiled example `name`, next to this test binary:
/// `target/<profile>/deps/<test>-<hash>` → `target/<profile>/examples/<name>`.
///
/// `cargo test` builds the examples with the tests, but `cargo test --test X` does not; when
/// the binary is missing, or older than a file in `examples/`, the examples are built once
/// with the same cargo, profile and target dir.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("examples").join(name);
    if !needs_build(&bin) {
        return bin;
    }
    let built = BUILT.get_or_init(|| build_examples(profile_dir));
    match built {
        Ok(()) if bin.exists() => bin,
        Ok(()) => panic!(
            "example binary {} is missing after building it; run `cargo build --examples`",
            bin.display()
        ),
        Err(why) => panic!(
            "example binary {} is missing or stale and could not be built ({why}); run \
             `cargo build --examples` (with the same profile and target dir) first",
            bin.display()
        ),
    }
}

/// Whether `bin` is missing or older than a source file under `examples/`.
fn needs_build(bin: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs = vec![examples];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|changed| changed > built)
            {
                return true;
            }
        }
    }
    false
}

fn build_examples(profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").ok_or("CARGO is not set (not run by cargo test)")?;
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or("no profile directory")?;
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "axum_mtls",
        "--example",
        "tonic_mtls",
        "--example",
        "demo",
    ])
    .arg("--manifest-path")
    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
    .arg("--target-dir")
    .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --examples exited with {status}"))
    }
}

/// An example server running as a child process; killed when dropped.
pub struct ExampleServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: Arc<Log>,
}

/// Text a child printed, with a condition variable signalled at each new line.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

impl ExampleServer {
    /// Starts `example` with `args` plus `--listen 127.0.0.1:0` and waits for its
    /// `listening on ADDR` line.
    pub fn start<S: AsRef<OsStr>>(example: &str, args: &[S]) -> Self {
        Self::start_with_env(example, args, &[])
    }

    /// [`start`](Self::start) with environment changes applied after the defaults
    /// (`RUST_LOG=info`, `NO_COLOR=1`): `Some` sets a variable, `None` removes it.
    pub fn start_with_env<S: AsRef<OsStr>>(
        example: &str,
        args: &[S],
        env: &[(&str, Option<&str>)],
    ) -> Self {
        let mut command = Command::new(example_bin(example));
        command
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {example}: {e}"));
        let stderr = Arc::new(Log::default());
        let stderr_done = drain_into(child.stderr.take().expect("stderr piped"), stderr.clone());
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().parse().expect("listen address"));
                    break;
                }
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ExampleServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        match rx.recv_timeout(GUARD) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let _ = server.child.kill();
                let status = server.child.wait();
                let _ = stderr_done.join();
                panic!(
                    "example {example} ({}) did not print `listening on` (exit: {status:?}); \
                     stderr:\n{}",
                    example_bin(example).display(),
                    server.stderr()
                );
            }
        }
        server
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .text
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until the server has logged `count` lines containing all of `words`; panics
    /// with the log after the guard timeout.
    pub fn wait_for_log_lines(&self, words: &[&str], count: usize) {
        let matching = |text: &String| {
            text.lines()
                .filter(|l| words.iter().all(|w| l.contains(w)))
                .count()
        };
        let text = self.stderr.text.lock().expect("log lock");
        let (text, timeout) = self
            .stderr
            .grew
            .wait_timeout_while(text, GUARD, |t| matching(t) < count)
            .expect("log lock");
        assert!(
            !timeout.timed_out(),
            "the server logged {} of {count} lines with {words:?}:\n{}",
            matching(&text),
            *text
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A `VmXxx:` value (KiB) from `/proc/<pid>/status`, e.g. `VmHWM` (peak RSS).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain_into<R: Read + Send + 'static>(from: R, into: Arc<Log>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(from);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Ok(mut s) = into.text.lock() {
                s.push_str(&line);
                s.push('\n');
            }
            into.grew.notify_all();
        }
    })
}

/// How a run of an example that should not start ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// Runs `example` with `args` expecting it to exit by itself (it is killed, and the test
/// fails, if it prints `listening on` instead).
pub fn run_to_exit<S: AsRef<OsStr>>(example: &str, args: &[S]) -> Exited {
    let mut child = Command::new(example_bin(example))
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {example}: {e}"));
    let stderr = Arc::new(Mutex::new(String::new()));
    let stderr_done = {
        let stderr = stderr.clone();
        let from = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(from).read_to_string(&mut text);
            if let Ok(mut s) = stderr.lock() {
                *s = text;
            }
        })
    };
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Ends at EOF (the process exited) or when the server says it listens.
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("listening on") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let stdout = match rx.recv_timeout(GUARD) {
        Ok(seen) => seen,
        Err(_) => {
            let _ = child.kill();
            panic!("example {example} neither exited nor listened");
        }
    };
    if stdout.contains("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        panic!("example {example} started listening although its input is bad:\n{stdout}");
    }
    let status = child.wait().expect("wait for example");
    let _ = stderr_done.join();
    let stderr = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    Exited {
        status,
        stdout,
        stderr,
    }
}

// === certificates ===

/// A server certificate for `localhost` / 127.0.0.1 issued by `ca`.
pub fn server_cert(ca: &TestCa) -> TestCert {
    ca.leaf("localhost")
        .dns("localhost")
        .ip(std::net::Ipv4Addr::LOCALHOST.into())
        .server_auth()
        .issue()
}

/// A client certificate with `spiffe_id` issued by `ca`.
pub fn client_cert(ca: &TestCa, spiffe_id: &str) -> TestCert {
    ca.leaf("client").spiffe_id(spiffe_id).client_auth().issue()
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}

/// One root CA serving both as the server's issuer and the client CA, with a server
/// certificate, written to a temp dir.
pub struct ServerFiles {
    /// The temp dir (deleted on drop).
    pub dir: tempfile::TempDir,
    /// The root CA.
    pub ca: TestCa,
    /// `ca.pem`: the root, which clients use to verify the server and the server uses as
    /// its client CA bundle.
    pub ca_pem: PathBuf,
    /// The server chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl ServerFiles {
    /// Generates and writes the set.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("ztkit peers test root");
        let ca_pem = write_file(dir.path(), "ca.pem", &ca.cert_pem);
        let (cert, key) = server_cert(&ca).write_to(dir.path(), "server");
        ServerFiles {
            dir,
            ca,
            ca_pem,
            cert,
            key,
        }
    }

    /// The flags for an example server using these files.
    pub fn server_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--cert".into(),
            self.cert.clone().into(),
            "--key".into(),
            self.key.clone().into(),
            "--client-ca".into(),
            self.ca_pem.clone().into(),
        ]
    }

    /// Writes `cert` as `name.crt` / `name.key` into the dir.
    pub fn write_client(&self, cert: &TestCert, name: &str) -> (PathBuf, PathBuf) {
        cert.write_to(self.dir.path(), name)
    }
}

impl Default for ServerFiles {
    fn default() -> Self {
        Self::new()
    }
}

// === in-process clients ===

/// A root store holding `ca`.
pub fn roots(ca: &TestCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).expect("add root");
    Arc::new(roots)
}

/// A TLS 1.3 client config trusting `roots`, presenting `cert` (if any), offering `alpn`.
pub fn client_config(
    roots: &Arc<RootCertStore>,
    cert: Option<&TestCert>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(mtls_verify::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots.clone());
    let mut cfg = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain_der.clone(), c.private_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// Connects and completes the TLS handshake as `localhost`.
pub async fn tls_connect(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("localhost").expect("server name"), tcp)
        .await
}

/// One HTTP/1.1 GET on a new connection: `(status, body)` or why there was no response.
pub async fn https_get(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    https_get_with_headers(cfg, addr, path, &[])
        .await
        .map(|answer| (answer.status, answer.body))
}

/// An HTTP response as the tests look at it.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// One HTTP/1.1 GET with extra request `headers` on a new connection, or why there was no
/// response.
pub async fn https_get_with_headers(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, String> {
    let attempt = async {
        let tls = tls_connect(cfg, addr)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http1 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, "localhost");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {}", error_chain(&e)))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(HttpAnswer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    match tokio::time::timeout(GUARD, attempt).await {
        Ok(result) => result,
        Err(_) => Err("no answer before the guard timeout".into()),
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cur = next.source();
    }
    text
}
