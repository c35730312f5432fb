//! Hot reload: new sets are compiled and tested before they replace the old one, broken sets
//! are refused, and decisions made during reloads each come from one whole set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use policy_rego::{
    BundleWriter, Manifest, PolicyEngine, PolicyError, PolicyInput, PolicyOptions, PolicyWatcher,
    WatchEvent,
};

/// How a version of the policy is broken, if it is.
#[derive(Clone, Copy, Debug)]
enum Broken {
    No,
    Syntax,
    FailingTest,
    MissingRule,
    BadData,
}

/// Version `n` of a policy whose decision names its version twice: once from the Rego source
/// and once from data.json. A decision mixing two versions would show two different names.
fn version(n: usize, broken: Broken) -> BundleWriter {
    let rev = format!("rev-{n}");
    let mut m = Manifest::default();
    m.revision = rev.clone();
    let policy = match broken {
        Broken::Syntax => format!("package http.authz\nversion := \"{rev}\"\ndecision := {{\n"),
        Broken::MissingRule => format!("package http.authz\nversion := \"{rev}\"\n"),
        _ => format!(
            "package http.authz\n\nversion := \"{rev}\"\n\n\
             decision := {{\"allow\": true, \"reasons\": [version, data.meta.version]}}\n"
        ),
    };
    let test = match broken {
        Broken::FailingTest => "package http.authz_test\ntest_fails if 1 == 2\n".to_owned(),
        _ => "package http.authz_test\nimport data.http.authz\n\
              test_version_matches_data if authz.version == data.meta.version\n"
            .to_owned(),
    };
    let data = match broken {
        Broken::BadData => "{\"version\": ".to_owned(),
        _ => format!("{{\"version\": \"{rev}\"}}"),
    };
    BundleWriter::new()
        .manifest(&m)
        .file("http/authz/policy.rego", policy)
        .file("http/authz/policy_test.rego", test)
        .file("meta/data.json", data)
}

fn options() -> PolicyOptions {
    PolicyOptions::new().decision_rule("data.http.authz.decision")
}

fn write_archive(path: &Path, w: BundleWriter) {
    write_archive_bytes(path, &w.to_tar_gz().unwrap());
}

fn write_archive_bytes(path: &Path, bytes: &[u8]) {
    // Write next to the target and rename, so readers never see half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn input() -> PolicyInput {
    PolicyInput::from_json_str(r#"{"attributes": {"request": {"http": {"method": "GET"}}}}"#)
        .unwrap()
}

#[test]
fn broken_sets_are_refused_and_the_last_good_one_keeps_deciding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_archive(&path, version(1, Broken::No));
    let engine = PolicyEngine::load(&path, options()).unwrap();
    assert_eq!(engine.revision(), "rev-1");

    let cases = [
        (Broken::Syntax, "parse"),
        (Broken::FailingTest, "tests"),
        (Broken::MissingRule, "compile"),
        (Broken::BadData, "data"),
    ];
    for (i, (broken, kind)) in cases.into_iter().enumerate() {
        write_archive(&path, version(10 + i, broken));
        let err = engine.reload_from_path(&path).unwrap_err();
        let ok = match kind {
            "parse" => matches!(err, PolicyError::Parse { .. }),
            "tests" => matches!(&err, PolicyError::TestsFailed { names, .. }
                if names == &["data.http.authz_test.test_fails".to_owned()]),
            "compile" => matches!(err, PolicyError::Compile { .. }),
            _ => matches!(err, PolicyError::Data { .. }),
        };
        assert!(ok, "{broken:?}: {err}");
        assert_eq!(engine.revision(), "rev-1", "{broken:?}");
        let d = engine.decide(&input());
        assert!(d.allow);
        assert_eq!(d.reasons, ["rev-1", "rev-1"]);
    }

    write_archive(&path, version(2, Broken::No));
    assert_eq!(engine.reload_from_path(&path).unwrap(), "rev-2");
    assert_eq!(engine.revision(), "rev-2");
    assert_eq!(engine.decide(&input()).reasons, ["rev-2", "rev-2"]);
    let stats = engine.reload_stats();
    assert_eq!((stats.loaded, stats.refused), (1, 4));
}

#[test]
fn hot_reload_under_load_never_mixes_sets() {
    const THREADS: usize = 4;
    const RELOADS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_archive(&path, version(0, Broken::No));
    let engine = PolicyEngine::load(&path, options()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (seen_tx, seen_rx) = mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let engine = engine.clone();
        let stop = stop.clone();
        let seen_tx = seen_tx.clone();
        workers.push(std::thread::spawn(move || {
            let input = input();
            let mut decisions = 0u64;
            let mut errors = Vec::new();
            let mut last = String::new();
            let mut revisions = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let d = engine.decide(&input);
                decisions += 1;
                let whole = d.allow
                    && d.reasons.len() == 2
                    && d.reasons[0] == d.revision
                    && d.reasons[1] == d.revision;
                if !whole {
                    errors.push(format!("{:?} {:?}", d.revision, d.reasons));
                }
                if d.revision != last {
                    last = d.revision.clone();
                    revisions.insert(last.clone());
                    seen_tx.send((t, last.clone())).unwrap();
                }
            }
            (decisions, errors, revisions)
        }));
    }
    drop(seen_tx);

    let wait_all_see = |rev: &str| {
        let mut who = BTreeSet::new();
        while who.len() < THREADS {
            let (t, r) = seen_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("deciders stopped reporting");
            if r == rev {
                who.insert(t);
            }
        }
    };
    wait_all_see("rev-0");

    let kinds = [
        Broken::Syntax,
        Broken::FailingTest,
        Broken::MissingRule,
        Broken::BadData,
    ];
    let mut valid = vec!["rev-0".to_owned()];
    for i in 1..=RELOADS {
        if i % 2 == 0 {
            write_archive(&path, version(i, Broken::No));
            let rev = engine.reload_from_path(&path).unwrap();
            assert_eq!(rev, format!("rev-{i}"));
            // Every decider must move to the new set before the next reload.
            wait_all_see(&rev);
            valid.push(rev);
        } else {
            let kind = kinds[(i / 2) % kinds.len()];
            write_archive(&path, version(i, kind));
            assert!(
                engine.reload_from_path(&path).is_err(),
                "{kind:?} was accepted"
            );
            assert_eq!(engine.revision(), valid.last().unwrap().as_str());
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for w in workers {
        let (decisions, errors, revisions) = w.join().unwrap();
        assert!(errors.is_empty(), "decisions mixing sets: {errors:?}");
        // Only valid revisions were ever in force, and each thread saw every one of them.
        assert_eq!(
            revisions,
            valid.iter().cloned().collect::<BTreeSet<_>>(),
            "revisions seen by one thread"
        );
        total += decisions;
    }
    assert!(total > (THREADS * (RELOADS / 2 + 1)) as u64);
    let stats = engine.reload_stats();
    assert_eq!((stats.loaded, stats.refused), (10, 10));
}

#[test]
fn the_watcher_waits_for_content_to_settle_and_skips_refused_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_archive(&path, version(1, Broken::No));
    let engine = PolicyEngine::load(&path, options()).unwrap();
    let watcher = PolicyWatcher::new(engine.clone(), &path);
    let events = watcher.subscribe();
    assert!(matches!(watcher.poll(), WatchEvent::Unchanged));

    // A file caught half written is not loaded: its content changes before the next poll.
    let full = version(2, Broken::No).to_tar_gz().unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    assert!(matches!(watcher.poll(), WatchEvent::Pending));
    std::fs::write(&path, &full).unwrap();
    assert!(matches!(watcher.poll(), WatchEvent::Pending));
    assert_eq!(engine.revision(), "rev-1");
    match watcher.poll() {
        WatchEvent::Loaded { revision } => assert_eq!(revision, "rev-2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.revision(), "rev-2");
    assert!(matches!(watcher.poll(), WatchEvent::Unchanged));

    // Broken content is refused once and not retried until it changes.
    write_archive(&path, version(3, Broken::FailingTest));
    assert!(matches!(watcher.poll(), WatchEvent::Pending));
    assert!(matches!(
        watcher.poll(),
        WatchEvent::Refused {
            error: PolicyError::TestsFailed { .. }
        }
    ));
    assert!(matches!(watcher.poll(), WatchEvent::Unchanged));
    assert_eq!(engine.revision(), "rev-2");

    let received: Vec<&'static str> = events
        .try_iter()
        .map(|e| match e {
            WatchEvent::Pending => "pending",
            WatchEvent::Loaded { .. } => "loaded",
            WatchEvent::Refused { .. } => "refused",
            _ => "other",
        })
        .collect();
    assert_eq!(
        received,
        ["pending", "pending", "loaded", "pending", "refused"]
    );
}

#[test]
fn the_watcher_reloads_directories_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("policy");
    version(1, Broken::No).write_dir(&bundle_dir).unwrap();
    let engine = PolicyEngine::load(&bundle_dir, options()).unwrap();
    let watcher = PolicyWatcher::new(engine.clone(), &bundle_dir);
    let events = watcher.subscribe();
    let handle = watcher.spawn(Duration::from_millis(5)).unwrap();

    version(2, Broken::No).write_dir(&bundle_dir).unwrap();
    let mut outcome = BTreeMap::new();
    while !outcome.contains_key("loaded") {
        match events
            .recv_timeout(Duration::from_secs(30))
            .expect("no reload event")
        {
            WatchEvent::Loaded { revision } => {
                outcome.insert("loaded", revision);
            }
            WatchEvent::Refused { error } => panic!("refused: {error}"),
            _ => {}
        }
    }
    assert_eq!(outcome["loaded"], "rev-2");
    assert_eq!(engine.revision(), "rev-2");
    handle.stop();
}

/// Version `n` with a 1 MiB file of incompressible bytes that the loader ignores, so that
/// reading and hashing the archive takes long enough for a writer to be caught in between.
fn large(n: usize) -> Vec<u8> {
    let mut x = n as u64 + 1;
    let pad: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    version(n, Broken::No)
        .file("pad.bin", pad)
        .to_tar_gz()
        .unwrap()
}

/// Writes `bytes` over the file in place, in two halves, then sets its length: readers can
/// see the new head over the old tail (as with `dd conv=notrunc`, or a writer that stalls).
fn overwrite_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(head).unwrap();
    f.write_all(tail).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
}

/// A writer rewrites the archive in place, non-atomically, alternating between two valid
/// revisions, while the background watcher reloads. Every set ever in force must be one of
/// the two whole revisions (a thread decides all along), and no good revision may be refused
/// for good (or taken for the one in force while the other was compiled): each round the
/// writer stops at the watcher's first reload attempt, on the revision before the one it
/// was writing at that moment (the one the watcher most likely fingerprinted), and that
/// revision must then be loaded, and then the other one too.
#[test]
fn the_watcher_compiles_exactly_what_it_fingerprinted_while_a_writer_rewrites_the_bundle() {
    const ROUNDS: usize = 20;
    // How long the writer leaves each revision whole, swept so that some rounds line the
    // watcher's reads up with the writes whatever the speed of the machine.
    const PAUSES: [Duration; 5] = [
        Duration::from_micros(250),
        Duration::from_micros(500),
        Duration::from_micros(1000),
        Duration::from_micros(1500),
        Duration::from_micros(2000),
    ];
    const WAIT: Duration = Duration::from_secs(10);
    let names = ["rev-1", "rev-2"];
    let revisions = [large(1), large(2)];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_archive_bytes(&path, &revisions[0]);
    let engine = PolicyEngine::load(&path, options()).unwrap();
    let watcher = PolicyWatcher::new(engine.clone(), &path);
    let events = watcher.subscribe();
    let handle = watcher.spawn(Duration::from_micros(100)).unwrap();

    let stop_deciding = Arc::new(AtomicBool::new(false));
    let decider = {
        let engine = engine.clone();
        let stop = stop_deciding.clone();
        std::thread::spawn(move || {
            let input = input();
            let mut bad = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let d = engine.decide(&input);
                let whole = d.allow
                    && names.contains(&d.revision.as_str())
                    && d.reasons == [d.revision.clone(), d.revision.clone()];
                if !whole {
                    bad.insert(format!("{:?} {} {:?}", d.revision, d.allow, d.reasons));
                }
            }
            bad
        })
    };

    let mut loaded = BTreeSet::new();
    let mut wait_loaded = |round: usize, name: &str| {
        let started = std::time::Instant::now();
        while engine.revision() != name {
            let left = WAIT.saturating_sub(started.elapsed());
            match events.recv_timeout(left) {
                Ok(WatchEvent::Loaded { revision }) => {
                    loaded.insert(revision);
                }
                Ok(_) => {}
                Err(_) => panic!(
                    "round {round}: {name} is on disk but never loaded; {} in force, {:?}",
                    engine.revision(),
                    engine.reload_stats()
                ),
            }
        }
    };
    for round in 0..ROUNDS {
        let attempts = watcher.subscribe();
        let pause = PAUSES[round % PAUSES.len()];
        let writer = {
            let (path, revisions) = (path.clone(), revisions.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                loop {
                    i = 1 - i;
                    overwrite_in_place(&path, &revisions[i]);
                    std::thread::sleep(pause);
                    let attempted = attempts.try_iter().any(|e| {
                        matches!(e, WatchEvent::Loaded { .. } | WatchEvent::Refused { .. })
                    });
                    if attempted {
                        overwrite_in_place(&path, &revisions[1 - i]);
                        return 1 - i;
                    }
                }
            })
        };
        let last = writer.join().unwrap();
        wait_loaded(round, names[last]);
        write_archive_bytes(&path, &revisions[1 - last]);
        wait_loaded(round, names[1 - last]);
    }
    handle.stop();
    stop_deciding.store(true, Ordering::Relaxed);
    let bad = decider.join().unwrap();
    assert!(bad.is_empty(), "decisions from a part-written set: {bad:?}");
    for event in events.try_iter() {
        if let WatchEvent::Loaded { revision } = event {
            loaded.insert(revision);
        }
    }
    assert!(
        loaded.iter().all(|r| names.contains(&r.as_str())),
        "{loaded:?}"
    );
}

/// The engine reports its rotation in zt-rotate's one status shape: a generation per set
/// swapped in, the last error with its time, failures counted; unreadable bundles and
/// refused sets are both errors the set in force outlives (issue 8 §1).
#[test]
fn the_engine_reports_rotation_in_the_shared_status_shape() {
    use policy_rego::MaterialHolder;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_archive(&path, version(1, Broken::No));
    let engine = PolicyEngine::load(&path, options()).unwrap();
    let watcher = PolicyWatcher::new(engine.clone(), &path);
    let status = engine.status();
    assert_eq!(status.generation, 1);
    assert!(status.loaded_at.is_some() && status.last_error.is_none());

    write_archive(&path, version(2, Broken::FailingTest));
    assert!(matches!(watcher.poll(), WatchEvent::Pending));
    assert!(matches!(watcher.poll(), WatchEvent::Refused { .. }));
    let status = engine.status();
    assert_eq!(status.generation, 1, "a refused set is no new generation");
    assert_eq!(status.failures, 1);
    let error = status.last_error.expect("the refusal is recorded");
    assert!(error.message.contains("test"), "{}", error.message);

    std::fs::remove_file(&path).unwrap();
    assert!(matches!(watcher.poll(), WatchEvent::Pending));
    assert!(matches!(
        watcher.poll(),
        WatchEvent::Unreadable {
            error: PolicyError::Io { .. }
        }
    ));
    assert_eq!(engine.status().failures, 2);
    assert_eq!(engine.revision(), "rev-1");

    write_archive(&path, version(3, Broken::No));
    assert!(matches!(watcher.poll(), WatchEvent::Pending));
    assert!(matches!(watcher.poll(), WatchEvent::Loaded { .. }));
    let status = engine.status();
    assert_eq!(status.generation, 2);
    assert!(status.last_error.is_none() && status.last_success.is_some());

    // The same bundle again from any source: taken as it is, no new generation.
    let same = options().loader().load_path(&path).unwrap();
    engine.update(same).unwrap();
    assert_eq!(engine.status().generation, 2);
}

/// The background watcher is zt-rotate's #[must_use] handle.
#[test]
fn the_watch_handle_is_the_shared_task_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_archive(&path, version(1, Broken::No));
    let engine = PolicyEngine::load(&path, options()).unwrap();
    let handle: policy_rego::WatchHandle = PolicyWatcher::new(engine, &path)
        .spawn(Duration::from_millis(5))
        .unwrap();
    assert!(handle.is_running());
    handle.stop();
}
