//! Loading bundles: layout, data mapping, manifest roots, and the limits and refusals that
//! protect against hostile archives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use policy_rego::{
    BundleLimits, BundleLoader, BundleWriter, Manifest, PolicyError, PolicyOptions, PolicySet,
};

const POLICY: &str = "package app.authz\n\nallow if input.user in data.app.users\n";

fn manifest(revision: &str, roots: Option<&[&str]>) -> Manifest {
    let mut m = Manifest::default();
    m.revision = revision.into();
    m.roots = roots.map(|r| r.iter().map(|s| (*s).to_owned()).collect());
    m
}

/// A raw tar.gz whose entries are written byte for byte (so tests can build what
/// `tar::Builder` refuses to: `..` paths, links, duplicates).
/// (path, type, content, link target)
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], Option<&'a [u8]>);

fn raw_tar_gz(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (path, kind, content, link) in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..path.len()].copy_from_slice(path);
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link);
            }
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(content);
        let pad = (512 - content.len() % 512) % 512;
        tar.extend(std::iter::repeat_n(0u8, pad));
    }
    tar.extend(std::iter::repeat_n(0u8, 1024));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn tar_gz_bundle_maps_data_files_to_their_directories() {
    let archive = BundleWriter::new()
        .manifest(&manifest("r7", Some(&["app", "shared"])))
        .file("app/authz/policy.rego", POLICY)
        .file("app/data.json", r#"{"users": ["alice"]}"#)
        .file("shared/limits/data.yaml", "max: 5\nnames: [a, b]\n")
        .file("app/README.md", "ignored")
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    assert_eq!(bundle.revision(), "r7");
    assert_eq!(
        bundle.data_json(),
        serde_json::json!({"app": {"users": ["alice"]}, "shared": {"limits": {"max": 5, "names": ["a", "b"]}}})
    );
    assert_eq!(bundle.modules().count(), 1);
    let set = PolicySet::compile(
        bundle,
        &PolicyOptions::new().decision_rule("data.app.authz.allow"),
    )
    .unwrap();
    let alice = policy_rego::PolicyInput::from_json_str(r#"{"user": "alice"}"#).unwrap();
    let bob = policy_rego::PolicyInput::from_json_str(r#"{"user": "bob"}"#).unwrap();
    assert!(set.decide(&alice).allow);
    assert!(!set.decide(&bob).allow);
    assert_eq!(set.revision(), "r7");
}

#[test]
fn opa_build_style_absolute_paths_are_accepted() {
    let archive = raw_tar_gz(&[
        (
            b"/.manifest",
            tar::EntryType::Regular,
            br#"{"revision": "abs"}"#,
            None,
        ),
        (
            b"/app/authz/p.rego",
            tar::EntryType::Regular,
            POLICY.as_bytes(),
            None,
        ),
        (
            b"./app/data.json",
            tar::EntryType::Regular,
            br#"{"users": []}"#,
            None,
        ),
    ]);
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    assert_eq!(bundle.revision(), "abs");
    assert_eq!(bundle.modules().next().unwrap().0, "app/authz/p.rego");
}

#[test]
fn directory_bundle_loads_the_same_as_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    BundleWriter::new()
        .manifest(&manifest("d1", None))
        .file("app/authz/policy.rego", POLICY)
        .file("app/data.json", r#"{"users": ["alice"]}"#)
        .write_dir(dir.path())
        .unwrap();
    // Hidden directories (e.g. .git) are skipped.
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/x.rego"), "not rego").unwrap();
    let bundle = BundleLoader::new().load_path(dir.path()).unwrap();
    assert_eq!(bundle.revision(), "d1");
    assert_eq!(
        bundle.data_json(),
        serde_json::json!({"app": {"users": ["alice"]}})
    );
    assert_eq!(bundle.modules().count(), 1);
}

#[test]
fn archive_file_on_disk_is_detected_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    let archive = BundleWriter::new()
        .file("app/authz/p.rego", POLICY)
        .to_tar_gz()
        .unwrap();
    std::fs::write(&path, archive).unwrap();
    let bundle = BundleLoader::new().load_path(&path).unwrap();
    assert_eq!(bundle.modules().count(), 1);
}

#[test]
fn packages_and_data_outside_the_roots_are_refused() {
    let archive = BundleWriter::new()
        .manifest(&manifest("r", Some(&["app/authz"])))
        .file("other/p.rego", "package other\nx := 1\n")
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    let err = PolicySet::compile(bundle, &PolicyOptions::new().decision_rule("data.other.x"))
        .unwrap_err();
    assert!(matches!(err, PolicyError::Manifest(_)), "{err}");

    let archive = BundleWriter::new()
        .manifest(&manifest("r", Some(&["app/authz"])))
        .file("app/data.json", r#"{"authz": {"ok": 1}, "stray": 2}"#)
        .to_tar_gz()
        .unwrap();
    let err = BundleLoader::new().load_tar_gz("b", &archive).unwrap_err();
    assert!(err.to_string().contains("/app/stray"), "{err}");
}

#[test]
fn conflicting_data_files_are_refused() {
    let archive = BundleWriter::new()
        .file("data.json", r#"{"a": {"b": 1}}"#)
        .file("a/data.json", r#"{"b": 2}"#)
        .to_tar_gz()
        .unwrap();
    let err = BundleLoader::new().load_tar_gz("b", &archive).unwrap_err();
    assert!(matches!(err, PolicyError::Data { .. }), "{err}");
}

#[test]
fn malformed_inputs_are_refused_with_the_file_named() {
    let cases: [(&str, &str, &[u8]); 4] = [
        ("bad data", "x/data.json", b"{not json"),
        ("non-object data", "data.json", b"[1, 2]"),
        ("bad manifest", ".manifest", b"{\"revision\": 5}"),
        ("bad yaml", "data.yaml", b"a: [1"),
    ];
    for (what, path, content) in cases {
        let archive = BundleWriter::new().file(path, content).to_tar_gz().unwrap();
        let err = BundleLoader::new().load_tar_gz("b", &archive).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(path) || matches!(err, PolicyError::Manifest(_)),
            "{what}: {msg}"
        );
    }
    let err = BundleLoader::new()
        .load_tar_gz("b", b"plain text")
        .unwrap_err();
    assert!(matches!(err, PolicyError::Archive(_)), "{err}");
}

#[test]
fn rego_syntax_errors_name_the_module() {
    let archive = BundleWriter::new()
        .file("app/broken.rego", "package app\nallow if {\n")
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    let err = PolicySet::compile(bundle, &PolicyOptions::new()).unwrap_err();
    match err {
        PolicyError::Parse { path, .. } => assert_eq!(path, "app/broken.rego"),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn v0_syntax_is_refused_unless_the_manifest_says_rego_version_0() {
    let v0 = "package app.authz\nallow { input.user == \"alice\" }\n";
    let archive = BundleWriter::new().file("p.rego", v0).to_tar_gz().unwrap();
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    let opts = PolicyOptions::new().decision_rule("data.app.authz.allow");
    assert!(matches!(
        PolicySet::compile(bundle, &opts).unwrap_err(),
        PolicyError::Parse { .. }
    ));

    let mut m = manifest("v0", None);
    m.rego_version = Some(0);
    let archive = BundleWriter::new()
        .manifest(&m)
        .file("p.rego", v0)
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    let set = PolicySet::compile(bundle, &opts).unwrap();
    let alice = policy_rego::PolicyInput::from_json_str(r#"{"user": "alice"}"#).unwrap();
    assert!(set.decide(&alice).allow);
}

#[test]
fn missing_decision_rule_is_refused() {
    let archive = BundleWriter::new()
        .file("p.rego", POLICY)
        .to_tar_gz()
        .unwrap();
    let bundle = BundleLoader::new().load_tar_gz("b", &archive).unwrap();
    let err = PolicySet::compile(
        bundle,
        &PolicyOptions::new().decision_rule("data.app.authz.nope"),
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

// === hostile archives ===

fn refused(archive: &[u8], limits: BundleLimits) -> PolicyError {
    BundleLoader::new()
        .limits(limits)
        .load_tar_gz("hostile", archive)
        .unwrap_err()
}

#[test]
fn path_traversal_is_refused() {
    for path in [
        &b"../evil.rego"[..],
        b"a/../../evil.rego",
        b"a/..",
        b"a\\..\\b.rego",
    ] {
        let archive = raw_tar_gz(&[(path, tar::EntryType::Regular, b"x", None)]);
        let err = refused(&archive, BundleLimits::default());
        assert!(
            matches!(err, PolicyError::UnsafeEntry { .. }),
            "{path:?}: {err}"
        );
    }
}

#[test]
fn links_and_special_files_are_refused() {
    let cases: [(tar::EntryType, &str); 4] = [
        (tar::EntryType::Symlink, "symbolic link"),
        (tar::EntryType::Link, "hard link"),
        (tar::EntryType::Char, "not a regular file"),
        (tar::EntryType::Fifo, "not a regular file"),
    ];
    for (kind, reason) in cases {
        let archive = raw_tar_gz(&[(b"data.json", kind, b"", Some(b"/etc/passwd"))]);
        match refused(&archive, BundleLimits::default()) {
            PolicyError::UnsafeEntry { reason: r, .. } => assert_eq!(r, reason),
            other => panic!("{kind:?}: {other}"),
        }
    }
}

#[test]
fn duplicate_paths_are_refused() {
    let archive = raw_tar_gz(&[
        (b"p.rego", tar::EntryType::Regular, b"package a\n", None),
        (b"./p.rego", tar::EntryType::Regular, b"package b\n", None),
    ]);
    assert!(matches!(
        refused(&archive, BundleLimits::default()),
        PolicyError::UnsafeEntry {
            reason: "duplicate path",
            ..
        }
    ));
}

#[test]
fn size_and_count_limits_hold() {
    let big = vec![b'a'; 200_000];
    let archive = BundleWriter::new().file("x.txt", &big).to_tar_gz().unwrap();
    // Compressed it is tiny; uncompressed it is over 100 kB.
    assert!(archive.len() < 10_000);
    let err = refused(
        &archive,
        BundleLimits::default().max_uncompressed_bytes(100_000),
    );
    assert!(matches!(err, PolicyError::Limit(_)), "{err}");
    let err = refused(&archive, BundleLimits::default().max_compressed_bytes(100));
    assert!(matches!(err, PolicyError::Limit(_)), "{err}");

    let mut w = BundleWriter::new();
    for i in 0..20 {
        w = w.file(format!("f{i}.txt"), "x");
    }
    let archive = w.to_tar_gz().unwrap();
    let err = refused(&archive, BundleLimits::default().max_files(10));
    assert!(matches!(err, PolicyError::Limit(_)), "{err}");
    // The same archive within the limits loads.
    BundleLoader::new()
        .limits(BundleLimits::default().max_files(20))
        .load_tar_gz("ok", &archive)
        .unwrap();
}

#[test]
fn a_gzip_bomb_stops_at_the_limit() {
    // 64 MiB of zeros compresses to ~64 kB; with a 1 MiB limit loading stops early.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_path("bomb.txt").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    gz.write_all(h.as_bytes()).unwrap();
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let archive = gz.finish().unwrap();
    let err = refused(
        &archive,
        BundleLimits::default().max_uncompressed_bytes(1 << 20),
    );
    assert!(matches!(err, PolicyError::Limit(_)), "{err}");
}

#[test]
fn truncated_archives_are_refused() {
    let archive = BundleWriter::new()
        .file("p.rego", POLICY.repeat(50))
        .to_tar_gz()
        .unwrap();
    let half = &archive[..archive.len() / 2];
    let err = BundleLoader::new().load_tar_gz("half", half).unwrap_err();
    assert!(matches!(err, PolicyError::Archive(_)), "{err}");
}

#[cfg(unix)]
#[test]
fn symlinks_in_directories_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("p.rego"), POLICY).unwrap();
    std::os::unix::fs::symlink(outside.path().join("p.rego"), dir.path().join("p.rego")).unwrap();
    let err = BundleLoader::new().load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::UnsafeEntry {
                reason: "symbolic link",
                ..
            }
        ),
        "{err}"
    );

    let loader =
        BundleLoader::new().limits(BundleLimits::default().allow_symlinks_in_directories());
    assert_eq!(loader.load_dir(dir.path()).unwrap().modules().count(), 1);

    // Links to directories are never followed.
    std::fs::remove_file(dir.path().join("p.rego")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
    assert!(loader.load_dir(dir.path()).is_err());
}
