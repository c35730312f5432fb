//! Hot reload from files: Kubernetes `..data` symlink swaps, in-place writes, bad material,
//! CRL updates and session resumption across rotations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mtls_verify::{Error, ServerTls, ServerTlsBuilder};
use rustls::HandshakeKind;
use support::{
    TestServer, ca_with_server_and_client, client_with, connect, connect_keep, echo,
    server_builder, wait_for,
};
use ztkit_test_support::{TestCa, TestCert, TestCrl};

/// One generation of material: a CA, a server certificate and a client certificate from it.
struct Round {
    ca: TestCa,
    server: TestCert,
    client: TestCert,
}

impl Round {
    fn new(i: usize) -> Round {
        let (ca, server, client) = ca_with_server_and_client(&format!("round {i} CA"));
        Round { ca, server, client }
    }

    fn files(&self) -> [(&'static str, String); 3] {
        [
            ("tls.crt", self.server.chain_pem.clone()),
            ("tls.key", self.server.key_pem.clone()),
            ("ca.crt", self.ca.cert_pem.clone()),
        ]
    }
}

/// A directory laid out the way the kubelet projects a Secret: `..<timestamp>/` holds the
/// files, `..data` points at it, and each visible file is a symlink through `..data`.
struct KubeDir {
    root: PathBuf,
    n: usize,
}

impl KubeDir {
    fn new(root: &Path, files: &[(&str, String)]) -> KubeDir {
        let mut dir = KubeDir {
            root: root.to_owned(),
            n: 0,
        };
        let first = dir.write_generation(files);
        symlink(&first, root.join("..data")).unwrap();
        for (name, _) in files {
            symlink(Path::new("..data").join(name), root.join(name)).unwrap();
        }
        dir
    }

    fn write_generation(&mut self, files: &[(&str, String)]) -> PathBuf {
        self.n += 1;
        let name = PathBuf::from(format!(
            "..2026_11_25_10_00_{:02}.{}",
            self.n,
            self.n * 7919
        ));
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
        name
    }

    /// Atomically repoints `..data` (new symlink + rename over the old one), as the kubelet does.
    fn swap(&mut self, files: &[(&str, String)]) {
        let old = std::fs::read_link(self.root.join("..data")).unwrap();
        let new = self.write_generation(files);
        let tmp = self.root.join("..data_tmp");
        symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        std::fs::remove_dir_all(self.root.join(old)).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

async fn wait_generation(tls: &ServerTls, generation: u64) {
    wait_for(&format!("generation {generation}"), || {
        tls.status().generation >= generation
    })
    .await;
    assert_eq!(tls.status().generation, generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_symlink_swap_rotates_ten_times_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut round = Round::new(0);
    let mut kube = KubeDir::new(dir.path(), &round.files());
    // Default reload interval (1 s): new handshakes must see new material within 2 s.
    let tls = ServerTlsBuilder::from_files(
        kube.path("tls.crt"),
        kube.path("tls.key"),
        kube.path("ca.crt"),
    )
    .build()
    .unwrap();
    let _reloader = tls.spawn_reloader();
    let mut srv = TestServer::start(tls.clone()).await;

    let (out, mut kept) = connect_keep(srv.addr, client_with(&round.ca, &round.client)).await;
    assert_eq!(
        out.server_serial.as_deref(),
        Some(round.server.serial_hex().as_str())
    );
    let _ = srv.next_event().await;
    let mut kept = kept.take().unwrap();
    let mut slowest = Duration::ZERO;

    for i in 1..=10 {
        let next = Round::new(i);
        let started = Instant::now();
        kube.swap(&next.files());
        wait_generation(&tls, 1 + i as u64).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(tls.status().serial, next.server.serial_hex());

        // New handshakes see the new server certificate and trust the new CA only.
        let out = connect(srv.addr, client_with(&next.ca, &next.client)).await;
        assert!(out.accepted(), "round {i}: {out:?}");
        assert_eq!(
            out.server_serial.as_deref(),
            Some(next.server.serial_hex().as_str())
        );
        let _ = srv.next_event().await;
        let old = connect(srv.addr, client_with(&round.ca, &round.client)).await;
        assert!(!old.accepted(), "round {i}: old CA still trusted: {old:?}");
        let _ = srv.next_event().await;

        // The connection opened before the first rotation is unaffected.
        echo(&mut kept, &format!("still here after rotation {i}")).await;
        round = next;
    }
    assert_eq!(tls.status().rejected_updates, 0);
    assert!(
        slowest < Duration::from_secs(2),
        "slowest rotation took {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_writes_rotate_ten_times() {
    let dir = tempfile::tempdir().unwrap();
    let round = Round::new(0);
    let paths: Vec<PathBuf> = ["tls.crt", "tls.key", "ca.crt"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for ((_, content), path) in round.files().iter().zip(&paths) {
        std::fs::write(path, content).unwrap();
    }
    let tls = ServerTlsBuilder::from_files(&paths[0], &paths[1], &paths[2])
        .reload_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let reloader = tls.spawn_reloader();
    assert!(reloader.is_running());
    let mut srv = TestServer::start(tls.clone()).await;

    for i in 1..=10 {
        let next = Round::new(i);
        // Truncate and rewrite each file in place, as an editor or `cp` does.
        for ((_, content), path) in next.files().iter().zip(&paths) {
            std::fs::write(path, content).unwrap();
        }
        wait_generation(&tls, 1 + i as u64).await;
        let out = connect(srv.addr, client_with(&next.ca, &next.client)).await;
        assert!(out.accepted(), "round {i}: {out:?}");
        assert_eq!(
            out.server_serial.as_deref(),
            Some(next.server.serial_hex().as_str())
        );
        let _ = srv.next_event().await;
    }
    assert_eq!(tls.status().rejected_updates, 0);
    reloader.stop();
}

fn write_round(dir: &Path, round: &Round) -> [PathBuf; 3] {
    let mut out = Vec::new();
    for (name, content) in round.files() {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        out.push(p);
    }
    out.try_into().unwrap()
}

#[test]
fn bad_material_at_build_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let round = Round::new(0);
    let [crt, key, ca] = write_round(dir.path(), &round);
    let build = |crt: &Path, key: &Path, ca: &Path| {
        ServerTlsBuilder::from_files(crt, key, ca)
            .build()
            .unwrap_err()
    };

    let bad = dir.path().join("bad.crt");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nMIIB!!notbase64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = build(&bad, &key, &ca);
    assert!(
        matches!(err, Error::Pem { ref path, .. } if path == &bad),
        "{err}"
    );
    assert!(err.to_string().contains("bad.crt"), "{err}");

    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &round.client.key_pem).unwrap();
    let err = build(&crt, &other_key, &ca);
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("other.key") && err.to_string().contains("tls.crt"),
        "{err}"
    );

    let expired = round.ca.leaf("localhost").server_auth().expired().issue();
    let (exp_crt, exp_key) = expired.write_to(dir.path(), "expired");
    let err = build(&exp_crt, &exp_key, &ca);
    assert!(matches!(err, Error::CertificateExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired.crt"), "{err}");

    let empty = dir.path().join("empty-ca.crt");
    std::fs::write(&empty, "").unwrap();
    let err = build(&crt, &key, &empty);
    assert!(matches!(err, Error::EmptyCaBundle { .. }), "{err}");
    assert!(err.to_string().contains("empty-ca.crt"), "{err}");

    let missing = dir.path().join("missing.key");
    let err = build(&crt, &missing, &ca);
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("missing.key"),
        "{err}"
    );

    let nokey = dir.path().join("nokey.key");
    std::fs::write(&nokey, &round.server.cert_pem).unwrap();
    let err = build(&crt, &nokey, &ca);
    assert!(
        matches!(err, Error::NoPrivateKey { .. }) && err.to_string().contains("nokey.key"),
        "{err}"
    );

    let bad_crl = dir.path().join("bad.crl");
    std::fs::write(
        &bad_crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let err = ServerTlsBuilder::from_files(&crt, &key, &ca)
        .crl_file(&bad_crl)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Crl { .. }) && err.to_string().contains("bad.crl"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_material_at_reload_is_ignored_and_the_last_good_set_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let good = Round::new(0);
    let [crt, key, ca] = write_round(dir.path(), &good);
    let tls = ServerTlsBuilder::from_files(&crt, &key, &ca)
        .reload_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut srv = TestServer::start(tls.clone()).await;
    let expired = good.ca.leaf("localhost").server_auth().expired().issue();
    let other = Round::new(1);

    type Case = (&'static str, Vec<(PathBuf, String)>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (
            "malformed PEM",
            vec![(
                crt.clone(),
                "-----BEGIN CERTIFICATE-----\nnot base64 at all\n".into(),
            )],
            |e| matches!(e, Error::Pem { path, .. } if path.ends_with("tls.crt")),
        ),
        (
            "mismatched key",
            vec![(key.clone(), other.server.key_pem.clone())],
            |e| matches!(e, Error::KeyMismatch { .. }),
        ),
        (
            "expired certificate",
            vec![
                (crt.clone(), expired.chain_pem.clone()),
                (key.clone(), expired.key_pem.clone()),
            ],
            |e| matches!(e, Error::CertificateExpired { path, .. } if path.ends_with("tls.crt")),
        ),
        (
            "empty CA bundle",
            vec![(ca.clone(), "# no certificates here\n".into())],
            |e| matches!(e, Error::EmptyCaBundle { path } if path.ends_with("ca.crt")),
        ),
    ];

    for (n, (name, writes, expect)) in cases.into_iter().enumerate() {
        for (path, content) in &writes {
            std::fs::write(path, content).unwrap();
        }
        // Explicit reload: the error comes back, typed.
        let err = tls.reload_now().await.unwrap_err();
        assert!(expect(&err), "{name}: {err}");
        let status = tls.status();
        assert_eq!(status.generation, 1, "{name}");
        assert_eq!(status.rejected_updates, n as u64 + 1, "{name}");
        assert!(status.last_error.is_some(), "{name}");
        // The last good material still serves new handshakes.
        let out = connect(srv.addr, client_with(&good.ca, &good.client)).await;
        assert!(out.accepted(), "{name}: {out:?}");
        assert_eq!(
            out.server_serial.as_deref(),
            Some(good.server.serial_hex().as_str())
        );
        let _ = srv.next_event().await;
        write_round(dir.path(), &good);
    }

    // The background reloader rejects bad material too (once), and takes good material after.
    let reloader = tls.spawn_reloader();
    let before = tls.status().rejected_updates;
    std::fs::write(&key, &other.server.key_pem).unwrap();
    wait_for("rejection by the reloader", || {
        tls.status().rejected_updates > before
    })
    .await;
    let status = tls.status();
    assert_eq!(status.generation, 1);
    assert!(
        status
            .last_error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("tls.key"),
        "{:?}",
        status.last_error
    );
    write_round(dir.path(), &other);
    wait_generation(&tls, 2).await;
    assert!(tls.status().last_error.is_none());
    assert_eq!(tls.status().serial, other.server.serial_hex());
    drop(reloader);
}

/// A rotation caught by clock skew: the new certificate's notBefore is 3 s ahead, and a CRL
/// revoking one client is written in the same `..data` swap. The CRL is in force from the
/// first poll that reads the set, while the old certificate keeps serving; the new certificate
/// serves from the first poll after its notBefore, without any further file change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_ahead_of_the_clock_neither_sticks_nor_holds_back_its_crl() {
    const INTERVAL: Duration = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let round = Round::new(0);
    let other = round
        .ca
        .leaf("other")
        .spiffe_id("spiffe://example.org/other")
        .client_auth()
        .issue();
    let files = |server: &TestCert, crl: &TestCrl| {
        [
            ("tls.crt", server.chain_pem.clone()),
            ("tls.key", server.key_pem.clone()),
            ("ca.crt", round.ca.cert_pem.clone()),
            ("ca.crl", crl.pem.clone()),
        ]
    };
    let mut kube = KubeDir::new(dir.path(), &files(&round.server, &round.ca.crl(&[])));
    let tls = ServerTlsBuilder::from_files(
        kube.path("tls.crt"),
        kube.path("tls.key"),
        kube.path("ca.crt"),
    )
    .crl_file(kube.path("ca.crl"))
    .reload_interval(INTERVAL)
    .build()
    .unwrap();
    let _reloader = tls.spawn_reloader();
    let mut srv = TestServer::start(tls.clone()).await;
    // Fresh client configurations throughout: full handshakes, no session resumed.
    let revoked = || client_with(&round.ca, &round.client);
    let kept = || client_with(&round.ca, &other);
    assert!(connect(srv.addr, revoked()).await.accepted());
    let _ = srv.next_event().await;

    // notBefore 3 s ahead, on a whole second (X.509 keeps no fractions).
    let ahead = (SystemTime::now() + Duration::from_secs(3))
        .duration_since(UNIX_EPOCH)
        .unwrap();
    let not_before = UNIX_EPOCH + Duration::from_secs(ahead.as_secs() + 1);
    let next = round
        .ca
        .leaf("localhost")
        .dns("localhost")
        .server_auth()
        .valid_from(not_before)
        .issue();
    kube.swap(&files(&next, &round.ca.crl(&[&round.client])));

    // The first poll that reads the set refuses the certificate (once) and applies the CRL.
    wait_generation(&tls, 2).await;
    let status = tls.status();
    assert!(
        status.loaded_at < not_before,
        "the CRL waited for the certificate"
    );
    assert_eq!(status.serial, round.server.serial_hex());
    assert_eq!(status.rejected_updates, 1);
    assert!(
        matches!(
            status.last_error,
            Some(Error::CertificateNotYetValid { ref path, .. }) if path.ends_with("tls.crt")
        ),
        "{:?}",
        status.last_error
    );
    let out = connect(srv.addr, revoked()).await;
    assert!(!out.accepted(), "revoked client accepted: {out:?}");
    assert!(srv.next_event().await.refused_reason().contains("revoked"));
    let out = connect(srv.addr, kept()).await;
    assert!(out.accepted(), "{out:?}");
    let _ = srv.next_event().await;
    if tls.status().generation == 2 {
        // Still before notBefore: the old certificate served this handshake.
        assert_eq!(
            out.server_serial.as_deref(),
            Some(round.server.serial_hex().as_str())
        );
    }

    // The refusal was clock-dependent: the same files are taken once notBefore has passed.
    wait_generation(&tls, 3).await;
    let status = tls.status();
    assert_eq!(status.serial, next.serial_hex());
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    assert_eq!(status.rejected_updates, 1, "re-checks are not new refusals");
    let late = status
        .loaded_at
        .duration_since(not_before)
        .expect("the new certificate served before its notBefore");
    // The first poll after notBefore takes it; the margin is for a busy machine.
    assert!(late < INTERVAL + Duration::from_secs(1), "{late:?} late");
    let out = connect(srv.addr, kept()).await;
    assert!(out.accepted(), "{out:?}");
    assert_eq!(
        out.server_serial.as_deref(),
        Some(next.serial_hex().as_str())
    );
    let _ = srv.next_event().await;
    assert!(!connect(srv.addr, revoked()).await.accepted());
    assert!(srv.next_event().await.refused_reason().contains("revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_sessions_are_reverified_against_the_current_crl() {
    let dir = tempfile::tempdir().unwrap();
    let round = Round::new(0);
    let [crt, key, ca] = write_round(dir.path(), &round);
    let crl = dir.path().join("ca.crl");
    std::fs::write(&crl, round.ca.crl(&[]).pem).unwrap();
    let tls = ServerTlsBuilder::from_files(&crt, &key, &ca)
        .crl_file(&crl)
        .build()
        .unwrap();
    let mut srv = TestServer::start(tls.clone()).await;
    let config = client_with(&round.ca, &round.client);

    assert!(connect(srv.addr, config.clone()).await.accepted());
    assert_eq!(srv.next_event().await.kind, Some(HandshakeKind::Full));

    // Rotating other material keeps tickets valid: the session resumes.
    let new_server = round
        .ca
        .leaf("localhost")
        .dns("localhost")
        .server_auth()
        .issue();
    new_server.write_to(dir.path(), "tls");
    tls.reload_now().await.unwrap();
    assert_eq!(tls.status().generation, 2);
    let out = connect(srv.addr, config.clone()).await;
    assert!(out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert_eq!(ev.kind, Some(HandshakeKind::Resumed));
    assert!(matches!(ev.identity, Some(Ok(Some(_)))), "{ev:?}");

    // Revoke the client; a resumption attempt with the old ticket must not yield an identity.
    std::fs::write(&crl, round.ca.crl(&[&round.client]).pem).unwrap();
    tls.reload_now().await.unwrap();
    assert_eq!(tls.status().generation, 3);
    let out = connect(srv.addr, config).await;
    assert!(!out.accepted(), "{out:?}");
    let ev = srv.next_event().await;
    assert_eq!(ev.kind, Some(HandshakeKind::Resumed));
    let err = ev.identity.unwrap().unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");

    // A fresh full handshake is refused by the verifier itself.
    let out = connect(srv.addr, client_with(&round.ca, &round.client)).await;
    assert!(!out.accepted());
    assert!(srv.next_event().await.refused_reason().contains("revoked"));
}

#[test]
fn expiry_is_reported_ahead_of_time() {
    let ca = TestCa::new("root");
    let soon = ca
        .leaf("localhost")
        .server_auth()
        .valid_for(Duration::from_secs(3 * 24 * 3600))
        .issue();
    let build = |window: Option<Duration>| {
        let b = server_builder(&ca, &soon);
        match window {
            Some(w) => b.expiry_warning(w),
            None => b,
        }
        .build()
        .unwrap()
    };
    let status = build(None).status();
    assert!(status.expiring_soon);
    assert!(status.expires_in <= Duration::from_secs(3 * 24 * 3600));
    assert!(status.expires_in > Duration::from_secs(2 * 24 * 3600));
    assert_eq!(status.serial, soon.serial_hex());
    assert!(
        !build(Some(Duration::from_secs(24 * 3600)))
            .status()
            .expiring_soon
    );
}

#[test]
fn material_given_as_bytes_has_an_inert_reloader() {
    let round = Round::new(0);
    let tls = server_builder(&round.ca, &round.server).build().unwrap();
    assert!(!tls.spawn_reloader().is_running());
}
