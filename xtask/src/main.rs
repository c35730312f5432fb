//! `cargo xtask`: tasks that need tools outside cargo.
//!
//! * `cargo xtask test` — the whole test suite. Installs what the tests need (Debian
//!   packages, npm packages) when it can, names what is missing when it cannot, then runs
//!   every test: the plain ones, the doc tests, and the `#[ignore]`d ones that need outside
//!   tools. Tests whose names start with `root_` need root; when not root they are
//!   reported as not run, with the reason.
//! * `cargo xtask deps` — only the install step.
//! * `cargo xtask fuzz-smoke [SECONDS]` — builds every fuzz target and runs each briefly.
//! * `cargo xtask bench-smoke` — runs every criterion bench once in test mode.
//! * `cargo xtask ebpf-build` — rebuilds `crates/ebpf-l7-filter/bpf/l7_filter.o` from its C
//!   source with Debian's clang against libbpf-dev's headers.
//! * `cargo xtask ebpf-check` — fails when the committed object is not what `ebpf-build`
//!   produces from the committed source (run by `cargo xtask test`). clang's output is
//!   byte-for-byte deterministic for the same clang version, source and flags; the build
//!   maps the crate directory to `.` in the debug info (`-fdebug-prefix-map`), so the
//!   checkout's location does not matter.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages and the command each provides, needed by `#[ignore]`d tests.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("go", "golang-go"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("node", "nodejs"),
    ("npm", "npm"),
    // policy-rego's remote bundles: a real static server with ETags (tests/remote.rs).
    ("nginx", "nginx"),
    // The eBPF classifier: clang builds it, bpftool is handy to inspect it, ip/tc set up
    // the network namespaces of its tests (libbpf-dev's headers: see `ebpf_build`).
    ("clang", "clang"),
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
];

/// The classifier's C source and committed object, relative to the workspace root.
const EBPF_CRATE: &str = "crates/ebpf-l7-filter";
const EBPF_SOURCE: &str = "bpf/l7_filter.c";
const EBPF_OBJECT: &str = "bpf/l7_filter.o";
/// A header from Debian's libbpf-dev that the program includes.
const LIBBPF_HEADER: &str = "/usr/include/bpf/bpf_helpers.h";

/// Python packages the gRPC peer tests need (a real gRPC client: grpcio; grpcio-tools to
/// generate the Workload API stubs for svid-client's interop test).
const PIP_REQUIREMENTS: &str = "tests/peers/requirements.txt";

/// Directories with a `package-lock.json` whose packages tests start (`npm ci`).
const NPM_PROJECTS: &[&str] = &["crates/jwt-oidc/tests/oidc-provider", "tests/peers/opa"];

/// Real OPA for the policy differential tests: no `opa` binary can be downloaded here, but this
/// PyPI wheel ships OPA v1.20.2 (unmodified `opa/v1/rego`) as a Go c-shared library, which
/// `tests/peers/opa/eval.js` loads. Only the library is used (the wheel's Python part wants
/// Python 3.14), so pip downloads it for that platform and we check its digest.
const OPA_WHEEL: &str = "opa_golib_python_bindings-0.4.4-py3-none-manylinux_2_34_x86_64.whl";
const OPA_WHEEL_SHA256: &str = "d411c901e14b8c7c3023e23e4a944f4cf429c1d31baf80e959e57d11efbfd24a";
const OPA_PEER_DIR: &str = "tests/peers/opa/vendor";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("deps") => deps(),
        Some("fuzz-smoke") => fuzz_smoke(args.get(1).map(String::as_str).unwrap_or("10")),
        Some("bench-smoke") => bench_smoke(),
        Some("ebpf-build") => ebpf_build(&root_dir().join(EBPF_CRATE).join(EBPF_OBJECT)),
        Some("ebpf-check") => ebpf_check(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [-- cargo test args] | deps | fuzz-smoke [SECONDS] | bench-smoke | ebpf-build | ebpf-check>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root_dir());
    }
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn deps() -> Result<(), String> {
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !Path::new(LIBBPF_HEADER).exists() {
        missing.push("libbpf-dev");
    }
    if !missing.is_empty() {
        if is_root() && have("apt-get") {
            eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        } else {
            return Err(format!(
                "these Debian packages are needed by the tests and cannot be installed here \
                 (not root or no apt-get): {}\n  install them with: sudo apt-get install {}",
                missing.join(" "),
                missing.join(" ")
            ));
        }
    }
    let have_grpc = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_grpc && root_dir().join(PIP_REQUIREMENTS).exists() {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            PIP_REQUIREMENTS,
        ]))
        .map_err(|e| format!("pip install -r {PIP_REQUIREMENTS}: {e}"))?;
    }
    install_opa_library()?;
    for project in NPM_PROJECTS {
        let dir = root_dir().join(project);
        if dir.join("package-lock.json").exists() {
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir))
            .map_err(|e| format!("npm ci in {project}: {e}"))?;
        }
    }
    Ok(())
}

/// Downloads the OPA wheel (see [`OPA_WHEEL`]), checks its SHA-256 and extracts the library.
fn install_opa_library() -> Result<(), String> {
    let vendor = root_dir().join(OPA_PEER_DIR);
    if vendor.join("opa_bindings/libopabridge.so").exists() {
        return Ok(());
    }
    let wheel = vendor.join(OPA_WHEEL);
    if !wheel.exists() {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "opa-golib-python-bindings==0.4.4",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.14",
                "--platform",
                "manylinux_2_34_x86_64",
                "-d",
            ])
            .arg(&vendor))
        .map_err(|e| format!("pip download of the OPA wheel: {e}"))?;
    }
    let out = Command::new("sha256sum")
        .arg(&wheel)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let digest = String::from_utf8_lossy(&out.stdout);
    if digest.split_whitespace().next() != Some(OPA_WHEEL_SHA256) {
        return Err(format!(
            "{}: SHA-256 {} is not the pinned {OPA_WHEEL_SHA256}",
            wheel.display(),
            digest.trim()
        ));
    }
    run(Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('opa_bindings/libopabridge.so', sys.argv[2])",
        ])
        .arg(&wheel)
        .arg(&vendor))
    .map_err(|e| format!("extracting the OPA library: {e}"))
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(extra: &[String]) -> Result<(), String> {
    deps()?;
    ebpf_check()?;
    let extra: Vec<&String> = extra.iter().filter(|a| a.as_str() != "--").collect();
    // 1. Everything that runs on a Rust-only machine.
    run(cargo()
        .args(["test", "--workspace", "--all-targets"])
        .arg("--")
        .args(&extra))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    // 2. The tests that need outside tools (and root, when we are root).
    let mut ignored = cargo();
    ignored
        .args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--",
            "--ignored",
        ])
        .args(&extra)
        .env("ZTKIT_XTASK", "1");
    if !is_root() {
        ignored.args(["--skip", "root_"]);
        report_root_tests()?;
    }
    run(&mut ignored)?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// Lists the `root_*` tests that will not run, so "not run" is visible, not silent.
fn report_root_tests() -> Result<(), String> {
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--",
            "--list",
            "--ignored",
        ])
        .current_dir(root_dir())
        .output()
        .map_err(|e| format!("cannot list tests: {e}"))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let root_tests: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|name| {
            name.rsplit("::")
                .next()
                .is_some_and(|n| n.starts_with("root_"))
        })
        .collect();
    if !root_tests.is_empty() {
        eprintln!(
            "xtask: NOT RUN (they need root, and this user is not root): {}",
            root_tests.join(", ")
        );
    }
    Ok(())
}

fn fuzz_smoke(seconds: &str) -> Result<(), String> {
    let fuzz_dir = root_dir().join("fuzz");
    let out = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .map_err(|e| format!("cargo fuzz list: {e} (install with: cargo install cargo-fuzz)"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo +nightly fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for target in String::from_utf8_lossy(&out.stdout).lines() {
        // New inputs go to the (ignored) corpus; committed seeds in fuzz/seeds/<target> give
        // a short run a head start.
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", target]).arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        run(cmd
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(&fuzz_dir))?;
    }
    Ok(())
}

fn bench_smoke() -> Result<(), String> {
    run(cargo().args(["bench", "--workspace", "--", "--test"]))
}

/// Compiles the classifier into `out` (see the module docs for why it is reproducible).
fn ebpf_build(out: &Path) -> Result<(), String> {
    if !have("clang") || !Path::new(LIBBPF_HEADER).exists() {
        return Err(format!(
            "building the eBPF program needs clang and libbpf-dev ({LIBBPF_HEADER}): \
             apt-get install clang libbpf-dev (or cargo xtask deps as root)"
        ));
    }
    let dir = root_dir().join(EBPF_CRATE);
    let arch = env::consts::ARCH;
    run(Command::new("clang")
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-fdebug-prefix-map={}=.", dir.display()))
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .args(["-c", EBPF_SOURCE, "-o"])
        .arg(out)
        .current_dir(&dir))
}

/// Rebuilds the classifier into a temporary file and compares it with the committed one.
fn ebpf_check() -> Result<(), String> {
    let committed = root_dir().join(EBPF_CRATE).join(EBPF_OBJECT);
    let fresh = env::temp_dir().join(format!("l7_filter-{}.o", std::process::id()));
    ebpf_build(&fresh)?;
    let same = std::fs::read(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?
        == std::fs::read(&committed).map_err(|e| format!("{}: {e}", committed.display()))?;
    let _ = std::fs::remove_file(&fresh);
    if same {
        eprintln!("xtask: {EBPF_CRATE}/{EBPF_OBJECT} is up to date with {EBPF_SOURCE}");
        Ok(())
    } else {
        Err(format!(
            "{EBPF_CRATE}/{EBPF_OBJECT} is stale: it is not what {EBPF_SOURCE} compiles to; \
             run `cargo xtask ebpf-build` and commit the object"
        ))
    }
}
