//! Real TLS peers against the example servers (issue #2, section 6).
//!
//! Three independent TLS stacks talk to `examples/axum_mtls` run as a child process:
//! `openssl s_client` (OpenSSL), `curl` (libcurl on OpenSSL) and a Go `crypto/tls` client
//! (`tests/peers/go_tls_client.go`, standard library only). For each of them:
//!
//! * a valid client certificate is accepted: 200, and the body names the SPIFFE ID;
//! * a certificate from the right CA whose SPIFFE ID is not allowed: 403;
//! * no certificate, another CA, expired, serverAuth-only EKU, a CA:TRUE leaf and a revoked
//!   certificate (the server runs with `--crl`) are refused in the handshake, and the client
//!   sees the TLS alert that says why;
//! * a TLS 1.2-only client is refused by default, and accepted by a server started with
//!   `--allow-tls12` (where bad certificates are still refused).
//!
//! A Python `grpcio` client (`tests/peers/grpc_client.py`) calls `examples/tonic_mtls`:
//! OK for the allowed SPIFFE ID, PERMISSION_DENIED for another, UNAVAILABLE without a valid
//! certificate.
//!
//! In TLS 1.3 the client finishes its side of the handshake before the server has checked
//! the client certificate, so a refusal shows up as an alert *after* the handshake: the tests
//! look for the alert and for the absence of an HTTP response, never at an exit code alone.
//!
//! The tests need the tools, so they are `#[ignore]`d; `cargo xtask test` installs the Debian
//! packages `openssl curl golang-go` and the PyPI package `grpcio`
//! (`tests/peers/requirements.txt`) and runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use support::{CLIENT_ID, ExampleServer, INTRUDER_ID, ServerFiles, client_cert, write_file};
use ztkit_test_support::TestCa;

// === the cases ===

/// Why the server refuses a handshake, as each peer names the TLS alert it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alert {
    CertificateRequired,
    UnknownCa,
    CertificateExpired,
    CertificateRevoked,
    /// The certificate's EKU does not allow client authentication.
    UnsupportedCertificate,
    /// Refused by a check without an alert of its own (mtls-verify's extra checks, or
    /// webpki's "CA used as end entity").
    CertificateUnknown,
    ProtocolVersion,
}

impl Alert {
    /// How OpenSSL (s_client, curl) prints it.
    fn openssl(self) -> &'static str {
        match self {
            Alert::CertificateRequired => "alert certificate required",
            Alert::UnknownCa => "alert unknown ca",
            Alert::CertificateExpired => "alert certificate expired",
            Alert::CertificateRevoked => "alert certificate revoked",
            Alert::UnsupportedCertificate => "alert unsupported certificate",
            Alert::CertificateUnknown => "alert certificate unknown",
            Alert::ProtocolVersion => "alert protocol version",
        }
    }

    /// How Go's crypto/tls prints it (`remote error: tls: …`).
    fn go(self) -> &'static str {
        match self {
            Alert::CertificateRequired => "tls: certificate required",
            Alert::UnknownCa => "tls: unknown certificate authority",
            Alert::CertificateExpired => "tls: expired certificate",
            Alert::CertificateRevoked => "tls: revoked certificate",
            Alert::UnsupportedCertificate => "tls: unsupported certificate",
            Alert::CertificateUnknown => "tls: unknown certificate",
            Alert::ProtocolVersion => "tls: protocol version not supported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 200 and the body names the allowed SPIFFE ID.
    Ok,
    /// The handshake succeeded, the identity layer answered 403.
    Forbidden,
    /// The handshake was refused with this alert.
    Refused(Alert),
}

/// One client certificate (or none) and what the server must do with it.
struct Case {
    name: &'static str,
    /// `(chain, key)` files.
    cert: Option<(PathBuf, PathBuf)>,
    expect: Expect,
}

/// The PKI, the CRL and every client case, written to a temp dir.
struct Fixture {
    files: ServerFiles,
    crl: PathBuf,
    cases: Vec<Case>,
}

impl Fixture {
    fn new() -> Self {
        let files = ServerFiles::new();
        let ca = &files.ca;
        let other_ca = TestCa::new("some other root");
        let valid = client_cert(ca, CLIENT_ID);
        let intruder = client_cert(ca, INTRUDER_ID);
        let foreign = client_cert(&other_ca, CLIENT_ID);
        let expired = ca
            .leaf("expired")
            .spiffe_id(CLIENT_ID)
            .client_auth()
            .expired()
            .issue();
        let server_auth_only = ca
            .leaf("server-auth-only")
            .spiffe_id(CLIENT_ID)
            .server_auth()
            .issue();
        let ca_leaf = ca
            .leaf("ca-true")
            .spiffe_id(CLIENT_ID)
            .client_auth()
            .ca_true()
            .issue();
        let revoked = client_cert(ca, CLIENT_ID);
        let crl = write_file(files.dir.path(), "crl.pem", ca.crl(&[&revoked]).pem);

        let mut cases = Vec::new();
        let mut add = |name: &'static str, cert: Option<&ztkit_test_support::TestCert>, expect| {
            let cert = cert.map(|c| files.write_client(c, name));
            cases.push(Case { name, cert, expect });
        };
        add("valid", Some(&valid), Expect::Ok);
        add("spiffe-id-not-allowed", Some(&intruder), Expect::Forbidden);
        add(
            "no-certificate",
            None,
            Expect::Refused(Alert::CertificateRequired),
        );
        add(
            "other-ca",
            Some(&foreign),
            Expect::Refused(Alert::UnknownCa),
        );
        add(
            "expired",
            Some(&expired),
            Expect::Refused(Alert::CertificateExpired),
        );
        add(
            "server-auth-only-eku",
            Some(&server_auth_only),
            Expect::Refused(Alert::UnsupportedCertificate),
        );
        add(
            "ca-true-leaf",
            Some(&ca_leaf),
            Expect::Refused(Alert::CertificateUnknown),
        );
        add(
            "revoked",
            Some(&revoked),
            Expect::Refused(Alert::CertificateRevoked),
        );
        Fixture { files, crl, cases }
    }

    fn case(&self, name: &str) -> &Case {
        self.cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case {name}"))
    }

    /// The strict server: TLS 1.3 only, CRL, only CLIENT_ID allowed.
    fn start(&self, example: &str, extra: &[&str]) -> ExampleServer {
        let mut args = self.files.server_args();
        args.extend([
            OsString::from("--crl"),
            self.crl.clone().into(),
            "--allow-spiffe-id".into(),
            CLIENT_ID.into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        ExampleServer::start(example, &args)
    }
}

/// What a peer reported for one run.
#[derive(Debug)]
enum Outcome {
    /// An HTTP response: status and body.
    Http(u16, String),
    /// No HTTP response; the peer's own words (which should name the alert).
    Refused(String),
}

/// How a peer words TLS alerts.
struct Peer {
    name: &'static str,
    /// The words this peer uses for an alert.
    alert_text: fn(Alert) -> &'static str,
    /// What every alert message of this peer contains (to tell "another alert" from "none").
    any_alert: &'static str,
    /// Whether a refusal must show the alert. In TLS 1.3 the client sends its request right
    /// behind its Finished; when the server closes with that request unread, the kernel sends
    /// a reset, and a peer that was writing may report the reset instead of the alert. Such
    /// runs are retried (see [`run_case`]). curl also words some alerts its own way (an
    /// expired client certificate becomes "SSL certificate verification failed"), so for
    /// curl a refusal without an alert name is enough, but a wrong alert name still fails.
    alert_required: bool,
}

enum Verdict {
    Pass,
    Fail(String),
    /// Refused, but the peer saw a reset instead of the alert.
    NoAlert(String),
}

/// Checks one outcome against the expectation.
fn verdict(peer: &Peer, expect: Expect, outcome: &Outcome) -> Verdict {
    let pass = match (expect, outcome) {
        (Expect::Ok, Outcome::Http(200, body)) => body.contains(CLIENT_ID),
        (Expect::Forbidden, Outcome::Http(403, body)) => !body.contains(CLIENT_ID),
        (Expect::Refused(alert), Outcome::Refused(words)) => {
            if words.contains((peer.alert_text)(alert)) {
                true
            } else if words.contains(peer.any_alert) {
                false // another alert
            } else if peer.alert_required {
                return Verdict::NoAlert(words.clone());
            } else {
                true
            }
        }
        _ => false,
    };
    if pass {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("expected {expect:?}, got {outcome:?}"))
    }
}

/// Runs one case with `attempt`, again (up to 10 times) only while the peer saw a reset
/// instead of the alert; `None` when it behaved as expected.
fn run_case(
    peer: &Peer,
    name: &str,
    expect: Expect,
    mut attempt: impl FnMut() -> Outcome,
) -> Option<String> {
    let mut resets = Vec::new();
    for _ in 0..10 {
        match verdict(peer, expect, &attempt()) {
            Verdict::Pass => return None,
            Verdict::Fail(why) => return Some(format!("{name}: {why}")),
            Verdict::NoAlert(words) => {
                eprintln!(
                    "{}: {name}: reset instead of the alert, again: {words}",
                    peer.name
                );
                resets.push(words);
            }
        }
    }
    Some(format!(
        "{name}: expected {expect:?}, but {} never saw the alert: {resets:?}",
        peer.name
    ))
}

fn assert_no_mismatch(peer: &str, server: &ExampleServer, mismatches: &[String]) {
    assert!(
        mismatches.is_empty(),
        "{peer}: {} case(s) did not behave as expected:\n  {}\nserver log:\n{}",
        mismatches.len(),
        mismatches.join("\n  "),
        server.stderr()
    );
}

/// Runs `cmd` (under coreutils `timeout`, a guard against hangs) with `stdin`.
fn run_tool(program: impl AsRef<std::ffi::OsStr>, args: &[OsString], stdin: &[u8]) -> Output {
    let program = program.as_ref();
    let mut child = Command::new("timeout")
        .arg(support::GUARD.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.to_string_lossy()));
    let mut input = child.stdin.take().expect("stdin piped");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait for tool");
    assert_ne!(
        out.status.code(),
        Some(124),
        "{} hung until the guard timeout",
        program.to_string_lossy()
    );
    out
}

fn require_tool(program: &str, version_arg: &str, package: &str) {
    let found = Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{program}` is needed by this test: apt-get install {package} (cargo xtask test does)"
    );
}

// === openssl s_client ===

const S_CLIENT: Peer = Peer {
    name: "openssl s_client",
    alert_text: Alert::openssl,
    any_alert: "alert",
    alert_required: true,
};

fn s_client(
    addr: SocketAddr,
    ca: &Path,
    cert: Option<&(PathBuf, PathBuf)>,
    tls12: bool,
) -> Outcome {
    let mut args: Vec<OsString> = vec![
        "s_client".into(),
        "-connect".into(),
        addr.to_string().into(),
        "-servername".into(),
        "localhost".into(),
        "-verify_hostname".into(),
        "localhost".into(),
        "-CAfile".into(),
        ca.into(),
        "-verify_return_error".into(),
        "-alpn".into(),
        "http/1.1".into(),
        // Keep reading after stdin ends, until the server closes.
        "-ign_eof".into(),
    ];
    if let Some((crt, key)) = cert {
        args.extend(["-cert".into(), crt.into(), "-key".into(), key.into()]);
    }
    if tls12 {
        args.push("-tls1_2".into());
    }
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let out = run_tool("openssl", &args, request);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The response, if any, follows the session summary on stdout.
    match stdout.find("HTTP/1.1 ") {
        Some(at) => {
            let response = &stdout[at..];
            let status = response
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            Outcome::Http(status, body)
        }
        // The alert is on stderr; stdout only has the session summary.
        None => Outcome::Refused(stderr.trim().to_owned()),
    }
}

#[test]
#[ignore = "needs openssl: run by cargo xtask test"]
fn openssl_s_client_against_axum_example() {
    require_tool("openssl", "version", "openssl");
    let fx = Fixture::new();
    let server = fx.start("axum_mtls", &[]);
    let mut mismatches = Vec::new();
    for case in &fx.cases {
        mismatches.extend(run_case(&S_CLIENT, case.name, case.expect, || {
            s_client(server.addr, &fx.files.ca_pem, case.cert.as_ref(), false)
        }));
    }
    // TLS 1.2 only: refused by the TLS 1.3-only default, with a valid certificate.
    let valid = fx.case("valid");
    mismatches.extend(run_case(
        &S_CLIENT,
        "tls12-only-client",
        Expect::Refused(Alert::ProtocolVersion),
        || s_client(server.addr, &fx.files.ca_pem, valid.cert.as_ref(), true),
    ));
    assert_no_mismatch("openssl s_client", &server, &mismatches);
}

#[test]
#[ignore = "needs openssl: run by cargo xtask test"]
fn openssl_s_client_tls12_accepted_with_allow_tls12() {
    require_tool("openssl", "version", "openssl");
    let fx = Fixture::new();
    let server = fx.start("axum_mtls", &["--allow-tls12"]);
    let mut mismatches = Vec::new();
    // With TLS 1.2 the certificate is checked inside the handshake: same verdicts.
    for case in &fx.cases {
        mismatches.extend(run_case(&S_CLIENT, case.name, case.expect, || {
            s_client(server.addr, &fx.files.ca_pem, case.cert.as_ref(), true)
        }));
    }
    assert_no_mismatch("openssl s_client -tls1_2", &server, &mismatches);
}

// === curl ===

const CURL: Peer = Peer {
    name: "curl",
    alert_text: Alert::openssl,
    any_alert: "alert",
    alert_required: false,
};

fn curl(addr: SocketAddr, ca: &Path, cert: Option<&(PathBuf, PathBuf)>, tls12: bool) -> Outcome {
    let url = format!("https://localhost:{}/", addr.port());
    let mut args: Vec<OsString> = vec![
        "--silent".into(),
        "--show-error".into(),
        "--resolve".into(),
        format!("localhost:{}:{}", addr.port(), addr.ip()).into(),
        "--cacert".into(),
        ca.into(),
        "--output".into(),
        "-".into(),
        "--write-out".into(),
        "\n%{http_code}".into(),
    ];
    if let Some((crt, key)) = cert {
        args.extend(["--cert".into(), crt.into(), "--key".into(), key.into()]);
    }
    if tls12 {
        args.extend(["--tls-max".into(), "1.2".into()]);
    }
    args.push(url.into());
    let out = run_tool("curl", &args, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if out.status.success() && code != 0 {
        Outcome::Http(code, body.to_owned())
    } else {
        Outcome::Refused(format!(
            "exit {:?}, http_code {code}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
#[ignore = "needs curl: run by cargo xtask test"]
fn curl_against_axum_example() {
    require_tool("curl", "--version", "curl");
    let fx = Fixture::new();
    let server = fx.start("axum_mtls", &[]);
    let mut mismatches = Vec::new();
    for case in &fx.cases {
        mismatches.extend(run_case(&CURL, case.name, case.expect, || {
            curl(server.addr, &fx.files.ca_pem, case.cert.as_ref(), false)
        }));
    }
    let valid = fx.case("valid");
    mismatches.extend(run_case(
        &CURL,
        "tls12-only-client",
        Expect::Refused(Alert::ProtocolVersion),
        || curl(server.addr, &fx.files.ca_pem, valid.cert.as_ref(), true),
    ));
    assert_no_mismatch("curl", &server, &mismatches);
}

#[test]
#[ignore = "needs curl: run by cargo xtask test"]
fn curl_tls12_accepted_with_allow_tls12() {
    require_tool("curl", "--version", "curl");
    let fx = Fixture::new();
    let server = fx.start("axum_mtls", &["--allow-tls12"]);
    let mut mismatches = Vec::new();
    for case in &fx.cases {
        mismatches.extend(run_case(&CURL, case.name, case.expect, || {
            curl(server.addr, &fx.files.ca_pem, case.cert.as_ref(), true)
        }));
    }
    assert_no_mismatch("curl --tls-max 1.2", &server, &mismatches);
}

// === Go crypto/tls ===

const GO: Peer = Peer {
    name: "go crypto/tls",
    alert_text: Alert::go,
    any_alert: "remote error",
    alert_required: true,
};

/// Builds `tests/peers/go_tls_client.go` once per test run (standard library only, GOPATH
/// mode, caches under cargo's temp dir so a read-only HOME does not matter).
fn go_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        require_tool("go", "version", "golang-go");
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-peer");
        std::fs::create_dir_all(&work).expect("create go work dir");
        let bin = work.join("go_tls_client");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/go_tls_client.go");
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&source)
            .env("GO111MODULE", "off")
            .env("GOPATH", work.join("gopath"))
            .env("GOCACHE", work.join("gocache"))
            .env("GOFLAGS", "")
            .current_dir(&work)
            .output()
            .expect("run go build");
        assert!(
            out.status.success(),
            "go build {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

fn go(addr: SocketAddr, ca: &Path, cert: Option<&(PathBuf, PathBuf)>, tls12: bool) -> Outcome {
    let mut args: Vec<OsString> = vec![
        "-addr".into(),
        addr.to_string().into(),
        "-ca".into(),
        ca.into(),
    ];
    if let Some((crt, key)) = cert {
        args.extend(["-cert".into(), crt.into(), "-key".into(), key.into()]);
    }
    if tls12 {
        args.push("-tls12only".into());
    }
    let out = run_tool(go_client(), &args, b"");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // STATUS <code> <proto> <tls version> <body>
    if let Some(rest) = stdout.strip_prefix("STATUS ") {
        let mut parts = rest.splitn(4, ' ');
        let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let _proto = parts.next();
        let version = parts.next().unwrap_or_default();
        let body = parts.next().unwrap_or_default();
        let want = if tls12 { "TLS1.2" } else { "TLS1.3" };
        if version != want {
            return Outcome::Refused(format!("negotiated {version}, not {want}: {stdout}"));
        }
        Outcome::Http(code, body.to_owned())
    } else {
        assert_eq!(
            out.status.code(),
            Some(1),
            "the Go client failed to run: {stdout}"
        );
        Outcome::Refused(stdout)
    }
}

#[test]
#[ignore = "needs go: run by cargo xtask test"]
fn go_crypto_tls_against_axum_example() {
    let fx = Fixture::new();
    let server = fx.start("axum_mtls", &[]);
    let mut mismatches = Vec::new();
    for case in &fx.cases {
        mismatches.extend(run_case(&GO, case.name, case.expect, || {
            go(server.addr, &fx.files.ca_pem, case.cert.as_ref(), false)
        }));
    }
    let valid = fx.case("valid");
    mismatches.extend(run_case(
        &GO,
        "tls12-only-client",
        Expect::Refused(Alert::ProtocolVersion),
        || go(server.addr, &fx.files.ca_pem, valid.cert.as_ref(), true),
    ));
    assert_no_mismatch("go crypto/tls", &server, &mismatches);
}

#[test]
#[ignore = "needs go: run by cargo xtask test"]
fn go_crypto_tls12_accepted_with_allow_tls12() {
    let fx = Fixture::new();
    let server = fx.start("axum_mtls", &["--allow-tls12"]);
    let mut mismatches = Vec::new();
    for case in &fx.cases {
        mismatches.extend(run_case(&GO, case.name, case.expect, || {
            go(server.addr, &fx.files.ca_pem, case.cert.as_ref(), true)
        }));
    }
    assert_no_mismatch("go crypto/tls -tls12only", &server, &mismatches);
}

// === Python grpcio against the tonic example ===

fn grpc_python(addr: SocketAddr, ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpc_client.py");
    let mut args: Vec<OsString> = vec![
        script.into(),
        "--addr".into(),
        addr.to_string().into(),
        "--ca".into(),
        ca.into(),
        "--timeout".into(),
        "20".into(),
    ];
    if let Some((crt, key)) = cert {
        args.extend(["--cert".into(), crt.into(), "--key".into(), key.into()]);
    }
    let out = run_tool("python3", &args, b"");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !stdout.starts_with("SETUP-ERROR") && !stdout.is_empty(),
        "the Python gRPC client failed to run: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
#[ignore = "needs python3 with grpcio: run by cargo xtask test"]
fn python_grpcio_against_tonic_example() {
    let fx = Fixture::new();
    let server = fx.start("tonic_mtls", &[]);
    let mut mismatches = Vec::new();
    for (name, want) in [
        ("valid", "OK "),
        ("spiffe-id-not-allowed", "CODE PERMISSION_DENIED"),
        ("no-certificate", "CODE UNAVAILABLE"),
        ("other-ca", "CODE UNAVAILABLE"),
        ("revoked", "CODE UNAVAILABLE"),
    ] {
        let case = fx.case(name);
        let got = grpc_python(server.addr, &fx.files.ca_pem, case.cert.as_ref());
        let ok = got.starts_with(want) && (name != "valid" || got.contains(CLIENT_ID));
        if !ok {
            mismatches.push(format!("{name}: expected {want}…, got {got}"));
        }
    }
    assert_no_mismatch("python grpcio", &server, &mismatches);
}
