//! The file driver end to end: settling, snapshot fidelity, last good kept, transient
//! refusals retried, inotify wake-ups on a Kubernetes-style symlink swap, stop on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/holder.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{TextError, TextHolder, text_of, wait_until};
use zt_rotate::{FileWatcher, MaterialHolder, watch_files};
use ztkit_test_support::SecretVolume;

#[test]
fn a_half_written_file_never_reaches_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("material");
    std::fs::write(&file, "v1").unwrap();
    // A directory reader of our own records every read, so the test knows what the
    // watcher has seen without timing it.
    let reads: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = reads.clone();
    let watcher = FileWatcher::new()
        .dir_with(dir.path(), move |dir| {
            let bytes = std::fs::read(dir.join("material"))?;
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&bytes).into_owned());
            Ok(vec![(PathBuf::from("material"), bytes)])
        })
        .poll_interval(Duration::from_millis(20))
        // A long settle window gives the test ample time between the two reads.
        .settle(Duration::from_millis(1500))
        .without_inotify();
    let holder = TextHolder::new();
    let _handle = watch_files(watcher, &holder, text_of(&file)).unwrap();
    wait_until("v1 taken", || holder.status().generation == 1);

    std::fs::write(&file, "v2 partial").unwrap();
    wait_until("the partial file read", || {
        reads.lock().unwrap().iter().any(|r| r == "v2 partial")
    });
    std::fs::write(&file, "v2 complete").unwrap();
    wait_until("v2 taken", || holder.status().generation == 2);
    assert_eq!(holder.updates(), ["v1", "v2 complete"]);
    assert_eq!(holder.status().failures, 0);
}

#[test]
fn refused_material_is_counted_once_and_the_last_good_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("material");
    std::fs::write(&file, "v1").unwrap();
    let mut watcher = FileWatcher::new()
        .file(&file)
        .poll_interval(Duration::from_millis(5))
        .settle(Duration::from_millis(5));
    watcher.mark_current().unwrap();
    let holder = TextHolder::new();
    holder.update("v1".into()).unwrap();
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reads.clone();
    let mut load = text_of(&file);
    let _handle = watch_files(watcher, &holder, move |s| {
        counter.fetch_add(1, Ordering::SeqCst);
        load(s)
    })
    .unwrap();

    std::fs::write(&file, "bad v2").unwrap();
    wait_until("v2 refused", || holder.status().failures == 1);
    let status = holder.status();
    assert_eq!(status.generation, 1);
    assert_eq!(status.last_error.unwrap().message, "refused: bad v2");
    assert_eq!(holder.current().as_deref(), Some("v1"));
    // Not loaded again while the files stay as they are: a new write is the next load.
    std::fs::write(&file, "v3").unwrap();
    wait_until("v3 taken", || holder.status().generation == 2);
    assert_eq!(holder.updates(), ["v1", "bad v2", "v3"]);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    assert!(holder.status().last_error.is_none());

    // A file that cannot be read is a source failure, counted once, with the last good kept.
    std::fs::remove_file(&file).unwrap();
    wait_until("unreadable reported", || holder.status().failures == 2);
    let error = holder.status.last_error().unwrap();
    assert!(
        matches!(&error, TextError::Source(m) if m.contains("material")),
        "{error:?}"
    );
    assert_eq!(holder.current().as_deref(), Some("v3"));
}

#[test]
fn a_transient_refusal_is_retried_without_a_file_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("material");
    std::fs::write(&file, "v1").unwrap();
    let watcher = FileWatcher::new()
        .file(&file)
        // Polls every hour: only the retry can take the same bytes again.
        .poll_interval(Duration::from_secs(3600))
        .settle(Duration::from_millis(10))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .without_inotify();
    let holder = TextHolder::new();
    std::fs::write(&file, "later v2").unwrap();
    let _handle = watch_files(watcher, &holder, text_of(&file)).unwrap();

    wait_until("v2 refused", || holder.status().failures == 1);
    assert!(matches!(
        holder.status.last_error(),
        Some(TextError::NotYetValid(_))
    ));
    wait_until("retries", || holder.updates().len() >= 4);
    assert_eq!(holder.status().failures, 1, "retries are not new failures");

    holder.valid_later.store(true, Ordering::SeqCst);
    wait_until("v2 taken", || holder.status().generation == 1);
    assert_eq!(holder.current().as_deref(), Some("later v2"));
    assert!(holder.updates().iter().all(|u| u == "later v2"));
    let status = holder.status();
    assert!(status.last_error.is_none());
    assert_eq!(status.failures, 1);
}

#[cfg(target_os = "linux")]
#[test]
fn inotify_sees_a_kubernetes_symlink_swap_long_before_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    let mut kube = SecretVolume::new(dir.path(), &[("tls.crt", "v1")]);
    let file = dir.path().join("tls.crt");
    let watcher = FileWatcher::new()
        .file(&file)
        // One poll at start, the next in an hour: only inotify explains a faster update.
        .poll_interval(Duration::from_secs(3600))
        .settle(Duration::from_millis(20));
    let holder = TextHolder::new();
    let _handle = watch_files(watcher, &holder, text_of(&file)).unwrap();
    wait_until("v1 taken", || holder.status().generation == 1);

    for i in 2..=4 {
        kube.swap(&[("tls.crt", &format!("v{i}"))]);
        wait_until("swap seen", || holder.status().generation == i);
        assert_eq!(holder.current(), Some(format!("v{i}")));
    }
    // In-place writes into the directory `..data` resolves to are seen too.
    std::fs::write(kube.data_dir().join("tls.crt"), "v5").unwrap();
    wait_until("in-place write seen", || holder.status().generation == 5);
    assert_eq!(holder.updates(), ["v1", "v2", "v3", "v4", "v5"]);
}

#[test]
fn the_loader_gets_exactly_the_bytes_judged_settled_while_a_writer_rewrites_them() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let write = |n: usize| {
        // Two files that belong together, each written in place (not atomically).
        std::fs::write(bundle.join("a"), format!("{n}")).unwrap();
        std::fs::write(bundle.join("b"), format!("{n}")).unwrap();
    };
    write(0);
    // Every read the watcher makes, in order.
    let reads: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = reads.clone();
    let watcher = FileWatcher::new()
        .dir_with(&bundle, move |dir| {
            let a = std::fs::read(dir.join("a"))?;
            let b = std::fs::read(dir.join("b"))?;
            log.lock().unwrap().push((
                String::from_utf8_lossy(&a).into_owned(),
                String::from_utf8_lossy(&b).into_owned(),
            ));
            Ok(vec![(PathBuf::from("a"), a), (PathBuf::from("b"), b)])
        })
        .poll_interval(Duration::from_millis(1))
        .settle(Duration::from_millis(1))
        .without_inotify();
    let holder = TextHolder::new();
    let root = bundle.clone();
    let _handle = watch_files(watcher, &holder, move |snapshot| {
        let text = |name: &str| {
            String::from_utf8_lossy(snapshot.get(root.join(name)).unwrap()).into_owned()
        };
        // Reading the files again here would race the writer; the snapshot cannot.
        Ok(format!("{} {}", text("a"), text("b")))
    })
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let bundle = bundle.clone();
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::SeqCst) {
                std::fs::write(bundle.join("a"), format!("{n}")).unwrap();
                std::fs::write(bundle.join("b"), format!("{n}")).unwrap();
                n += 1;
            }
        })
    };
    wait_until("ten updates under the writer", || {
        holder.updates().len() >= 10
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Each material the holder was given is a pair the watcher read twice in a row.
    let reads = reads.lock().unwrap().clone();
    for update in holder.updates() {
        let settled = reads
            .windows(2)
            .any(|w| w[0] == w[1] && format!("{} {}", w[0].0, w[0].1) == update);
        assert!(settled, "{update:?} was not read twice in a row");
    }
}

#[test]
fn dropping_the_handle_stops_and_joins_the_thread_and_detach_runs_until_the_holder_goes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("material");
    std::fs::write(&file, "v1").unwrap();
    let watcher = || {
        FileWatcher::new()
            .file(&file)
            .poll_interval(Duration::from_millis(5))
    };
    let holder = TextHolder::new();

    let handle = watch_files(watcher(), &holder, text_of(&file)).unwrap();
    assert!(handle.is_running());
    wait_until("v1 taken", || holder.status().generation == 1);
    // The thread holds the only weak reference.
    assert_eq!(Arc::weak_count(&holder), 1);
    drop(handle);
    assert_eq!(
        Arc::weak_count(&holder),
        0,
        "drop returned before the thread ended"
    );

    let handle = watch_files(watcher(), &holder, text_of(&file)).unwrap();
    handle.stop();
    assert_eq!(Arc::weak_count(&holder), 0);

    // Detached, the thread runs until the holder is dropped: the loader it owns (and the
    // sender inside) is dropped when the thread ends.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut load = text_of(&file);
    watch_files(watcher(), &holder, move |s| {
        let _keep = &tx;
        load(s)
    })
    .unwrap()
    .detach();
    std::fs::write(&file, "v2").unwrap();
    wait_until("v2 taken by the detached thread", || {
        holder.status().generation == 2
    });
    assert_eq!(Arc::weak_count(&holder), 1);
    drop(holder);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_storm_of_unrelated_events_wakes_at_most_one_read_per_settle_window() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tls.crt");
    std::fs::write(&file, "v1").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reads.clone();
    let settle = Duration::from_millis(100);
    let watcher = FileWatcher::new()
        .file(&file)
        // Counts the watcher's reads (every poll reads every target).
        .dir_with(empty.path(), move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        })
        .poll_interval(Duration::from_secs(3600))
        .settle(settle);
    let holder = TextHolder::new();
    let _handle = watch_files(watcher, &holder, text_of(&file)).unwrap();
    wait_until("v1 taken", || holder.status().generation == 1);

    let before = reads.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(600) {
        std::fs::write(dir.path().join(format!("unrelated-{}", n % 50)), "x").unwrap();
        n += 1;
    }
    // Then a real change, which must still be seen (by inotify: the next poll is an hour off).
    std::fs::write(&file, "v2").unwrap();
    wait_until("v2 taken", || holder.status().generation == 2);
    let woken = reads.load(Ordering::SeqCst) - before;
    let bound = started.elapsed().as_millis() / settle.as_millis() + 3;
    assert!(n > 100, "only {n} events");
    assert!(
        woken as u128 <= bound,
        "{woken} reads for {n} events (bound {bound})"
    );
}
