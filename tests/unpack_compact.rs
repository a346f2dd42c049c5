//! `unpack` of manifests built directly in compact form (as scan, import
//! and the decoder build them): hardlinks to every type, names the compact
//! builder does not check refused before anything is written, temporary
//! names that avoid the manifest's own.

mod common;

use common::is_root;
use ocix::manifest::compact::{Builder, Leaf, MetaIn};
use ocix::manifest::{Compact, Dev, Time};
use ocix::materialize::{UnpackError, UnpackOptions, unpack};
use ocix::store::Store;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

fn meta(mode: u32) -> MetaIn<'static> {
    MetaIn { mode, mtime: Time { sec: 1_600_000_000, nsec: 5 }, ..MetaIn::default() }
}

fn file<'a>(store: &Store, content: &[u8]) -> Leaf<'a> {
    let digest = (!content.is_empty()).then(|| store.put_bytes(content).unwrap());
    Leaf::File { size: content.len() as u64, digest, zeros: &[] }
}

/// `d/` holding a file, a symlink, a fifo and two devices; hardlinks to
/// each at the root and one more, to the file, in `z/`.
fn every_type_linked(store: &Store) -> Compact {
    let mut b = Builder::new();
    b.open_dir(b"", &meta(0o755)).unwrap();
    b.open_dir(b"d", &meta(0o750)).unwrap();
    b.push(b"b", &meta(0o660), Leaf::Block(Dev { major: 7, minor: 0 })).unwrap();
    b.push(b"c", &meta(0o666), Leaf::Char(Dev { major: 1, minor: 3 })).unwrap();
    b.push(b"f", &meta(0o640), file(store, b"content")).unwrap();
    b.push(b"p", &meta(0o600), Leaf::Fifo).unwrap();
    b.push(b"s", &meta(0o777), Leaf::Symlink(b"../nowhere")).unwrap();
    b.close_dir();
    let none = MetaIn::default();
    for (name, target) in [("l1", "d/f"), ("l2", "d/s"), ("l3", "d/p"), ("l4", "d/c"), ("l5", "d/b")] {
        b.push(name.as_bytes(), &none, Leaf::Hardlink(target.as_bytes())).unwrap();
    }
    b.open_dir(b"z", &meta(0o755)).unwrap();
    b.push(b"l6", &none, Leaf::Hardlink(b"d/f")).unwrap();
    b.close_dir();
    b.close_dir();
    b.finish()
}

fn ino(p: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.dev(), m.ino())
}

fn assert_linked(out: &Path) {
    for (a, b) in [("d/f", "l1"), ("d/f", "z/l6"), ("d/s", "l2"), ("d/p", "l3"), ("d/c", "l4"), ("d/b", "l5")] {
        assert_eq!(ino(&out.join(a)), ino(&out.join(b)), "{a} and {b} are not one inode");
    }
    assert_eq!(std::fs::read(out.join("z/l6")).unwrap(), b"content");
    assert_eq!(std::fs::read_link(out.join("l2")).unwrap(), Path::new("../nowhere"));
    assert!(std::fs::symlink_metadata(out.join("l3")).unwrap().file_type().is_fifo());
}

#[test]
fn hardlinks_to_every_type_from_a_compact_manifest() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = every_type_linked(&store);
    // rootless: devices are empty files, their hardlinks links to those
    let out = t.path().join("rootless");
    let r = unpack(&m, &store, &out, &UnpackOptions { rootless: true, ..Default::default() }).unwrap();
    assert_eq!(r.hardlinks, 6);
    assert_linked(&out);
    assert!(std::fs::symlink_metadata(out.join("l4")).unwrap().is_file());
    let lines = r.summary(usize::MAX).join("\n");
    assert!(lines.contains("char 1:3, hardlink to /d/c") && lines.contains("block 7:0, hardlink to /d/b"), "{lines}");
    // as root, with real devices where the kernel allows them
    if is_root() {
        let out = t.path().join("root");
        match unpack(&m, &store, &out, &UnpackOptions::default()) {
            Ok(r) => {
                assert_eq!(r.hardlinks, 6);
                assert_linked(&out);
                assert!(std::fs::symlink_metadata(out.join("l4")).unwrap().file_type().is_char_device());
                assert!(std::fs::symlink_metadata(out.join("l5")).unwrap().file_type().is_block_device());
                // the same tree again with update: nothing removed, nothing rewritten
                let r = unpack(&m, &store, &out, &UnpackOptions { update: true, ..Default::default() }).unwrap();
                assert_eq!((r.removed, r.files_written, r.hardlinks), (0, 0, 6));
            }
            Err(UnpackError::NoMknod(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Compacts the builder accepts (it checks neither names nor order) but a
/// manifest must not hold: refused before the destination is created.
#[test]
fn names_and_orders_the_builder_allows_are_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let none = MetaIn::default();
    type Case = (&'static str, Vec<(&'static [u8], &'static [u8])>);
    // (name, hardlink target or empty for a file), in the order appended
    let cases: Vec<Case> = vec![
        ("children out of order", vec![(b"b", b""), (b"a", b"")]),
        ("a name twice", vec![(b"a", b""), (b"a", b"")]),
        ("dotdot", vec![(b"..", b"")]),
        ("dot", vec![(b".", b"")]),
        ("slash", vec![(b"x/y", b"")]),
        ("NUL", vec![(b"x\0y", b"")]),
        ("empty", vec![(b"", b"")]),
        ("hardlink forward", vec![(b"a", b"b"), (b"b", b"")]),
        ("hardlink up", vec![(b"a", b""), (b"l", b"../a")]),
        ("hardlink to a hardlink", vec![(b"a", b""), (b"b", b"a"), (b"c", b"b")]),
    ];
    for (what, entries) in cases {
        let mut b = Builder::new();
        b.open_dir(b"", &meta(0o755)).unwrap();
        for (name, target) in entries {
            if target.is_empty() {
                b.push(name, &meta(0o644), file(&store, b"x")).unwrap();
            } else {
                b.push(name, &none, Leaf::Hardlink(target)).unwrap();
            }
        }
        b.close_dir();
        let m = b.finish();
        let dest = t.path().join("dest");
        let e = unpack(&m, &store, &dest, &UnpackOptions::default()).unwrap_err();
        assert!(matches!(e, UnpackError::Manifest(_)), "{what}: {e}");
        assert!(!dest.exists(), "{what}: destination created for an invalid manifest");
    }
    // a hardlink to a directory
    let mut b = Builder::new();
    b.open_dir(b"", &meta(0o755)).unwrap();
    b.open_dir(b"d", &meta(0o755)).unwrap();
    b.close_dir();
    b.push(b"l", &none, Leaf::Hardlink(b"d")).unwrap();
    let dest = t.path().join("dest");
    let e = unpack(&b.finish(), &store, &dest, &UnpackOptions::default()).unwrap_err();
    assert!(e.to_string().contains("must not name a directory"), "{e}");
    assert!(!dest.exists());
}

/// With update, files are written under temporary names: names of the
/// manifest that look like them are never taken for one, and the tree
/// ends exact.
#[test]
fn temporary_names_avoid_the_manifests_own() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let pid = std::process::id();
    let names: Vec<Vec<u8>> = (0..4).map(|n| format!(".ocix-tmp.{pid}.{n}").into_bytes()).collect();
    let build = |content: &[u8]| {
        let mut b = Builder::new();
        b.open_dir(b"", &meta(0o755)).unwrap();
        for n in &names {
            b.push(n, &meta(0o644), file(&store, &[content, n].concat())).unwrap();
        }
        b.push(b"z", &meta(0o644), file(&store, content)).unwrap();
        b.close_dir();
        b.finish()
    };
    let out = t.path().join("out");
    unpack(&build(b"old"), &store, &out, &UnpackOptions::default()).unwrap();
    let m = build(b"new");
    for threads in [1, 4] {
        let r = unpack(&m, &store, &out, &UnpackOptions { update: true, threads, ..Default::default() }).unwrap();
        if threads == 1 {
            assert_eq!(r.files_written, 5);
        }
        for n in &names {
            let want = [&b"new"[..], n].concat();
            assert_eq!(std::fs::read(out.join(std::str::from_utf8(n).unwrap())).unwrap(), want);
        }
        assert_eq!(std::fs::read(out.join("z")).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 5);
    }
}

/// A tree of more directories than unpack keeps open (its open-file limit
/// held at 1024 leaves no directory fd to keep): hardlinks whose directories
/// phase 3 must open itself, several levels deep, in and across directories;
/// directories set by name (leaves) and by a reopened fd (parents). Every
/// mode, time and link must come out as with fds to spare.
#[test]
fn hardlinks_and_directory_metadata_without_kept_directory_fds() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let dir_meta = |i: u32| MetaIn {
        mode: [0o755, 0o750, 0o700, 0o555][i as usize % 4],
        mtime: Time { sec: 1_500_000_000 + i64::from(i), nsec: i },
        ..MetaIn::default()
    };
    let none = MetaIn::default();
    let mut b = Builder::new();
    b.open_dir(b"", &dir_meta(0)).unwrap();
    let mut links = Vec::new();
    for a in 0..6u32 {
        b.open_dir(format!("a{a}").as_bytes(), &dir_meta(100 + a)).unwrap();
        for c in 0..8u32 {
            b.open_dir(format!("c{c}").as_bytes(), &dir_meta(a * 10 + c)).unwrap();
            b.push(b"f", &meta(0o644), file(&store, format!("{a}/{c}").as_bytes())).unwrap();
            // to the first name of the directory before (another parent
            // for c0), and to its own, as the one before
            let prev = if c == 0 { format!("a{}/c7/f", (a + 5) % 6) } else { format!("a{a}/c{}/f", c - 1) };
            if a > 0 || c > 0 {
                b.push(b"l", &none, Leaf::Hardlink(prev.as_bytes())).unwrap();
                links.push((format!("a{a}/c{c}/l"), prev));
            }
            b.push(b"m", &none, Leaf::Hardlink(format!("a{a}/c{c}/f").as_bytes())).unwrap();
            links.push((format!("a{a}/c{c}/m"), format!("a{a}/c{c}/f")));
            b.close_dir();
        }
        b.close_dir();
    }
    b.close_dir();
    let m = b.finish();
    let manifest = t.path().join("m.ocix");
    m.write_to(&mut std::fs::File::create(&manifest).unwrap()).unwrap();
    let out = t.path().join("out");
    let st = Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_ocix"))
        .args(["unpack", "-q", "--rootless"])
        .arg(&manifest)
        .arg("--store")
        .arg(t.path().join("store"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    for (link, first) in &links {
        assert_eq!(ino(&out.join(link)), ino(&out.join(first)), "{link} is not a link to {first}");
    }
    // a link made where the first name's content is (a0/c0/l has none)
    assert_eq!(std::fs::read(out.join("a3/c0/l")).unwrap(), b"2/7");
    let diff = common::ocix().args(["diff", "-q"]).arg(&out).arg(&manifest).output().unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    // the check diff makes, by hand for the directories: mode and time
    for a in 0..6u32 {
        for c in 0..8u32 {
            let md = std::fs::symlink_metadata(out.join(format!("a{a}/c{c}"))).unwrap();
            let want = dir_meta(a * 10 + c);
            assert_eq!(
                (md.mode() & 0o7777, md.mtime(), md.mtime_nsec()),
                (want.mode, want.mtime.sec, i64::from(want.mtime.nsec))
            );
        }
    }
}
