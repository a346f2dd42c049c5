//! `ocix unpack` against hostile manifests, stores and destinations: each
//! case gets a clear error naming the path (or a documented safe outcome),
//! and a sentinel directory outside the destination stays untouched.

mod common;

use common::{dir as tree, lgetxattr, manifest, unpack};
use ocix::manifest::{BLOCK, Digest, Entry, File, Kind, Manifest};
use ocix::materialize::{UnpackError, UnpackOptions};
use ocix::store::Store;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

struct Fixture {
    _t: tempfile::TempDir,
    base: PathBuf,
    store: Store,
    sentinel: PathBuf,
    dest: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        common::chmod(t.path(), 0o755);
        let base = t.path().to_path_buf();
        let store = Store::create(&base.join("store")).unwrap();
        let sentinel = base.join("sentinel");
        std::fs::create_dir(&sentinel).unwrap();
        common::chmod(&sentinel, 0o777);
        Fixture { dest: base.join("dest"), _t: t, base, store, sentinel }
    }

    /// Nothing was created, changed or removed outside the destination.
    fn assert_sentinel_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.sentinel).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "sentinel outside DEST was written: {names:?}");
    }

    /// A regular file entry whose content is stored as a blob.
    fn file(&self, content: &[u8]) -> Entry {
        let digest = (!content.is_empty()).then(|| self.store.put_bytes(content).unwrap());
        Entry::new(Kind::File(File { size: content.len() as u64, digest, zeros: zero_runs(content) }))
    }

    /// Overwrites the blob named `d` with other bytes (a damaged store).
    fn damage_blob(&self, d: &Digest, bytes: &[u8]) {
        let p = self.store.blob_path(d);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).unwrap();
    }

    fn unpack(&self, m: &Manifest, update: bool) -> Result<ocix::materialize::UnpackReport, UnpackError> {
        unpack(m, &self.store, &self.dest, &UnpackOptions { update, ..Default::default() })
    }
}

fn zero_runs(c: &[u8]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, b) in c.chunks_exact(BLOCK as usize).enumerate() {
        if b.iter().all(|&x| x == 0) {
            match runs.last_mut() {
                Some((s, n)) if *s + *n == i as u64 => *n += 1,
                _ => runs.push((i as u64, 1)),
            }
        }
    }
    runs
}

fn digest_of(e: &Entry) -> Digest {
    match &e.kind {
        Kind::File(f) => f.digest.unwrap(),
        _ => panic!("not a file"),
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            out.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn destination_that_is_a_symlink_is_refused() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink(&fx.sentinel, &fx.dest).unwrap();
    let m = manifest(vec![(b"f", fx.file(b"x"))]);
    let e = fx.unpack(&m, false).unwrap_err();
    assert!(matches!(e, UnpackError::DestSymlink(_)), "{e}");
    assert!(e.to_string().contains(fx.dest.to_str().unwrap()), "{e}");
    // with a trailing slash (which would make the kernel follow it), and with --update
    let slash = PathBuf::from(format!("{}/", fx.dest.display()));
    let e = unpack(&m, &fx.store, &slash, &UnpackOptions { update: true, ..Default::default() }).unwrap_err();
    assert!(matches!(e, UnpackError::DestSymlink(_)), "{e}");
    fx.assert_sentinel_untouched();
}

#[test]
fn destination_that_is_a_file_or_not_empty_is_refused() {
    let fx = Fixture::new();
    let m = manifest(vec![(b"f", fx.file(b"x"))]);
    std::fs::write(&fx.dest, b"").unwrap();
    assert!(matches!(fx.unpack(&m, false).unwrap_err(), UnpackError::DestNotDir(_)));
    std::fs::remove_file(&fx.dest).unwrap();
    std::fs::create_dir(&fx.dest).unwrap();
    std::fs::write(fx.dest.join("keep"), b"mine").unwrap();
    assert!(matches!(fx.unpack(&m, false).unwrap_err(), UnpackError::DestNotEmpty(_)));
    assert_eq!(std::fs::read(fx.dest.join("keep")).unwrap(), b"mine");
    assert!(!fx.dest.join("f").exists());
}

#[test]
fn existing_symlinks_in_destination_are_replaced_never_followed() {
    let fx = Fixture::new();
    std::fs::create_dir(&fx.dest).unwrap();
    let s = &fx.sentinel;
    // a directory replaced by a symlink, files replaced by symlinks, a
    // symlink where a hardlink goes, one inside a kept directory
    std::os::unix::fs::symlink(s, fx.dest.join("etc")).unwrap();
    std::os::unix::fs::symlink(s.join("f"), fx.dest.join("f")).unwrap();
    std::os::unix::fs::symlink(s.join("h"), fx.dest.join("hl")).unwrap();
    std::fs::create_dir(fx.dest.join("d")).unwrap();
    std::os::unix::fs::symlink(s, fx.dest.join("d/x")).unwrap();
    std::os::unix::fs::symlink(s, fx.dest.join("d/sub")).unwrap();
    let m = manifest(vec![
        (b"d", tree(vec![(b"sub", tree(vec![(b"y", fx.file(b"y"))])), (b"x", fx.file(b"x"))])),
        (b"etc", tree(vec![(b"passwd", fx.file(b"root:x:0:0::/root:/bin/sh\n"))])),
        (b"f", fx.file(b"f")),
        (b"hl", Entry::new(Kind::Hardlink(b"f".to_vec()))),
        // a symlink pointing outside is created as data, never followed
        (b"out", Entry::new(Kind::Symlink(s.as_os_str().as_encoded_bytes().to_vec()))),
    ]);
    fx.unpack(&m, true).unwrap();
    fx.assert_sentinel_untouched();
    assert!(std::fs::symlink_metadata(fx.dest.join("etc")).unwrap().is_dir());
    assert_eq!(std::fs::read(fx.dest.join("etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    assert!(std::fs::symlink_metadata(fx.dest.join("d/sub")).unwrap().is_dir());
    assert!(std::fs::symlink_metadata(fx.dest.join("f")).unwrap().is_file());
    assert!(std::fs::symlink_metadata(fx.dest.join("out")).unwrap().file_type().is_symlink());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(fx.dest.join("hl")).unwrap().ino(),
        std::fs::metadata(fx.dest.join("f")).unwrap().ino()
    );
    // a second update with the outside symlink in place changes nothing outside
    fx.unpack(&m, true).unwrap();
    fx.assert_sentinel_untouched();
}

#[test]
fn escaping_names_and_hardlinks_are_rejected_before_anything_is_written() {
    let fx = Fixture::new();
    let bad: Vec<(&str, Manifest)> = vec![
        ("dotdot name", manifest(vec![(b"..", fx.file(b"x"))])),
        ("slash in name", manifest(vec![(b"a/b", fx.file(b"x"))])),
        ("empty name", manifest(vec![(b"", fx.file(b"x"))])),
        // a symlink, then an entry "beneath" it: only expressible as a name with /
        (
            "entry beneath a symlink",
            manifest(vec![
                (b"a", Entry::new(Kind::Symlink(fx.sentinel.as_os_str().as_encoded_bytes().to_vec()))),
                (b"a/x", fx.file(b"x")),
            ]),
        ),
        (
            "hardlink up",
            manifest(vec![(b"f", fx.file(b"x")), (b"l", Entry::new(Kind::Hardlink(b"../sentinel/x".to_vec())))]),
        ),
        (
            "hardlink absolute",
            manifest(vec![(b"f", fx.file(b"x")), (b"l", Entry::new(Kind::Hardlink(b"/etc/passwd".to_vec())))]),
        ),
        ("hardlink to dir", manifest(vec![(b"d", tree(vec![])), (b"l", Entry::new(Kind::Hardlink(b"d".to_vec())))])),
        (
            "hardlink through a symlink",
            manifest(vec![
                (b"a", Entry::new(Kind::Symlink(b"/etc".to_vec()))),
                (b"l", Entry::new(Kind::Hardlink(b"a/passwd".to_vec()))),
            ]),
        ),
        ("hardlink forward", manifest(vec![(b"a", Entry::new(Kind::Hardlink(b"z".to_vec()))), (b"z", fx.file(b"x"))])),
        ("hardlink to itself", manifest(vec![(b"a", Entry::new(Kind::Hardlink(b"a".to_vec())))])),
    ];
    for (what, m) in bad {
        let e = fx.unpack(&m, false).unwrap_err();
        assert!(matches!(e, UnpackError::Manifest(_)), "{what}: {e}");
        assert!(!fx.dest.exists(), "{what}: destination created for an invalid manifest");
    }
    fx.assert_sentinel_untouched();
}

/// Damages a blob in a fixture's store.
type Damage = dyn Fn(&Fixture, &Digest);

/// Each damaged-blob case, for a file copied whole (copy_file_range) and a
/// file with zero runs (read, hashed, written around holes).
#[test]
fn bad_blobs_fail_naming_path_and_digest_and_leave_no_file() {
    let mut sparse = vec![0u8; 2 * BLOCK as usize];
    sparse.extend_from_slice(b"tail after two zero blocks");
    for content in [b"plain content, no zero runs".to_vec(), sparse] {
        let cases: Vec<(&str, Box<Damage>, &str)> = vec![
            ("short", Box::new(|fx: &Fixture, d: &Digest| fx.damage_blob(d, b"short")), "bytes, expected"),
            (
                "long",
                Box::new(|fx: &Fixture, d: &Digest| {
                    let mut v = std::fs::read(fx.store.blob_path(d)).unwrap();
                    v.extend_from_slice(b"more");
                    fx.damage_blob(d, &v)
                }),
                "bytes, expected",
            ),
            (
                "corrupt",
                Box::new(|fx: &Fixture, d: &Digest| {
                    let mut v = std::fs::read(fx.store.blob_path(d)).unwrap();
                    let last = v.len() - 1;
                    v[last] ^= 1;
                    fx.damage_blob(d, &v)
                }),
                "has digest",
            ),
            (
                "missing",
                Box::new(|fx: &Fixture, d: &Digest| std::fs::remove_file(fx.store.blob_path(d)).unwrap()),
                "missing",
            ),
        ];
        for (what, damage, says) in cases {
            let fx = Fixture::new();
            let f = fx.file(&content);
            let d = digest_of(&f);
            let m = manifest(vec![(b"dir", tree(vec![(b"victim", f)]))]);
            damage(&fx, &d);
            let e = fx.unpack(&m, false).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, UnpackError::Content { .. }), "{what}: {msg}");
            assert!(msg.contains("/dir/victim") && msg.contains(&d.to_string()) && msg.contains(says), "{what}: {msg}");
            assert!(leftovers(&fx.dest.join("dir")).is_empty(), "{what}: left {:?}", leftovers(&fx.dest.join("dir")));
            fx.assert_sentinel_untouched();
        }
    }
}

#[test]
fn huge_declared_size_is_an_error_not_an_allocation() {
    let fx = Fixture::new();
    let d = fx.store.put_bytes(b"tiny").unwrap();
    for size in [1u64 << 40, i64::MAX as u64] {
        let _ = std::fs::remove_dir_all(&fx.dest);
        let m = manifest(vec![(b"big", Entry::new(Kind::File(File { size, digest: Some(d), zeros: vec![] })))]);
        let e = fx.unpack(&m, false).unwrap_err().to_string();
        assert!(e.contains("/big") && e.contains(&d.to_string()) && e.contains("4 bytes"), "{e}");
        assert!(leftovers(&fx.dest).is_empty(), "{:?}", leftovers(&fx.dest));
    }
    // all declared as one zero run: the blob still has to be that size
    let size = 1u64 << 40;
    let m = manifest(vec![(
        b"big",
        Entry::new(Kind::File(File { size, digest: Some(d), zeros: vec![(0, size / BLOCK)] })),
    )]);
    let _ = std::fs::remove_dir_all(&fx.dest);
    let e = fx.unpack(&m, false).unwrap_err().to_string();
    assert!(e.contains("/big"), "{e}");
    assert!(leftovers(&fx.dest).is_empty());
    fx.assert_sentinel_untouched();
}

#[test]
fn read_only_destination_fails_naming_the_path() {
    assert!(common::is_root(), "this test drops privileges from root");
    let fx = Fixture::new();
    let m = manifest(vec![(b"f", fx.file(b"x"))]);
    let mpath = fx.base.join("m");
    std::fs::write(&mpath, m.to_bytes().unwrap()).unwrap();
    let st = std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(fx.base.join("store")).status().unwrap();
    assert!(st.success());
    // root-owned, 0755: nobody can read it but not write into it
    std::fs::create_dir(&fx.dest).unwrap();
    common::chmod(&fx.dest, 0o755);
    let o = common::ocix_as_nobody()
        .args([
            OsStr::new("unpack"),
            mpath.as_os_str(),
            OsStr::new("--store"),
            fx.base.join("store").as_os_str(),
            fx.dest.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(fx.dest.to_str().unwrap()) && err.contains("Permission denied"), "{err}");
    assert!(leftovers(&fx.dest).is_empty());
    fx.assert_sentinel_untouched();
}

#[test]
fn full_destination_fails_naming_the_path_and_cleans_up() {
    assert!(common::is_root(), "this test mounts a small tmpfs");
    let fx = Fixture::new();
    let mnt = fx.base.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Umount(mnt.clone());
    let m = manifest(vec![(b"big", fx.file(&common::noise(3 << 20, 9))), (b"small", fx.file(b"fits"))]);
    let dest = mnt.join("dest");
    // one writer: "big" fills the filesystem first, whatever the timing (with
    // two, "small" may be the one that finds it full)
    let opts = UnpackOptions { threads: 1, ..UnpackOptions::default() };
    let e = unpack(&m, &fx.store, &dest, &opts).unwrap_err().to_string();
    assert!(e.contains("/dest/big") && e.contains("No space left"), "{e}");
    assert!(!leftovers(&dest).iter().any(|n| n.contains("ocix-tmp") || n == "big"), "{:?}", leftovers(&dest));
    fx.assert_sentinel_untouched();
}

#[test]
fn user_xattr_on_a_symlink_is_a_clear_error_as_root() {
    assert!(common::is_root());
    let fx = Fixture::new();
    let mut l = Entry::new(Kind::Symlink(b"target".to_vec()));
    l.meta.xattrs.insert(b"user.x".to_vec(), b"v".to_vec());
    let m = manifest(vec![(b"l", l)]);
    let e = fx.unpack(&m, false).unwrap_err().to_string();
    assert!(e.contains("/l") && e.contains("user.x"), "{e}");
    fx.assert_sentinel_untouched();
}

#[test]
fn duplicate_paths_in_the_bytes_are_rejected_by_the_cli() {
    let fx = Fixture::new();
    let m = manifest(vec![(b"a", fx.file(b"1")), (b"b", fx.file(b"2"))]);
    let mut bytes = m.to_bytes().unwrap();
    // the name "b" (bstr of length 1: 0x41 'b') becomes a second "a"
    let at = bytes.windows(2).position(|w| w == [0x41, b'b']).unwrap();
    bytes[at + 1] = b'a';
    let mpath = fx.base.join("m");
    std::fs::write(&mpath, &bytes).unwrap();
    let o = common::run(&[
        OsStr::new("unpack"),
        mpath.as_os_str(),
        OsStr::new("--store"),
        fx.base.join("store").as_os_str(),
        fx.dest.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid OCIX manifest"), "{err}");
    assert!(!fx.dest.exists());
    fx.assert_sentinel_untouched();
}

// ---------------------------------------------------------------- xattr policy: overlay xattrs

/// `e` with the xattr `name` = `value`.
fn with_xattr(mut e: Entry, name: &str, value: &[u8]) -> Entry {
    e.meta.xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
    e
}

/// A tree whose directory `d` and file `d/f` carry an overlay xattr
/// (`name` on `d`, `trusted.overlay.redirect` on `d/f`).
fn overlay_manifest(fx: &Fixture, name: &str) -> Manifest {
    let mut d = tree(vec![(b"f", with_xattr(fx.file(b"x"), "trusted.overlay.redirect", b"/etc"))]);
    d.meta.mode = 0o755;
    manifest(vec![(b"a", fx.file(b"a")), (b"d", with_xattr(d, name, b"y"))])
}

/// Every entry below `dir`, with its content for files.
fn listing(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.push((p.clone(), md.is_file().then(|| std::fs::read(&p).unwrap())));
        }
    }
    out.sort();
    out
}

#[test]
fn overlay_xattrs_in_a_manifest_are_refused_before_anything_is_written() {
    let fx = Fixture::new();
    for name in ["trusted.overlay.opaque", "user.overlay.opaque", "trusted.overlay.overlay.opaque"] {
        let m = overlay_manifest(&fx, name);
        for rootless in [false, true] {
            let opts = UnpackOptions { rootless, ..Default::default() };
            let e = unpack(&m, &fx.store, &fx.dest, &opts).unwrap_err();
            let UnpackError::OverlayXattr { path, name: got, others } = &e else { panic!("{e}") };
            assert_eq!((path.as_str(), got.as_str(), *others), ("/d", name, 1));
            let s = e.to_string();
            assert!(s.contains("entry /d") && s.contains(name) && s.contains("nothing written"), "{s}");
            assert!(!fx.dest.exists(), "DEST created by a refused unpack ({name}, rootless {rootless})");
        }
    }
    // --update of an existing tree: refused, the tree untouched
    let m = overlay_manifest(&fx, "trusted.overlay.opaque");
    std::fs::create_dir(&fx.dest).unwrap();
    std::fs::write(fx.dest.join("keep"), b"mine").unwrap();
    std::fs::create_dir(fx.dest.join("d")).unwrap();
    let before = listing(&fx.dest);
    for rootless in [false, true] {
        let opts = UnpackOptions { update: true, rootless, ..Default::default() };
        let e = unpack(&m, &fx.store, &fx.dest, &opts).unwrap_err();
        assert!(matches!(e, UnpackError::OverlayXattr { .. }), "{e}");
        assert_eq!(listing(&fx.dest), before);
        assert_eq!(lgetxattr(&fx.dest.join("d"), "trusted.overlay.opaque"), None);
    }
    fx.assert_sentinel_untouched();
}

#[test]
fn overlay_xattrs_are_written_when_allowed() {
    assert!(common::is_root(), "trusted.* xattrs need root");
    let fx = Fixture::new();
    let m = overlay_manifest(&fx, "trusted.overlay.opaque");
    let m = {
        let mut m = m;
        let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
        let a = c.remove(b"a".as_slice()).unwrap();
        c.insert(b"a".to_vec(), with_xattr(a, "user.overlay.origin", b"\x00\x01"));
        m
    };
    let r =
        unpack(&m, &fx.store, &fx.dest, &UnpackOptions { allow_overlay_xattrs: true, ..Default::default() }).unwrap();
    assert!(r.not_applied.is_empty(), "{:?}", r.not_applied);
    assert_eq!(lgetxattr(&fx.dest.join("d"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(lgetxattr(&fx.dest.join("d/f"), "trusted.overlay.redirect").as_deref(), Some(&b"/etc"[..]));
    assert_eq!(lgetxattr(&fx.dest.join("a"), "user.overlay.origin").as_deref(), Some(&b"\x00\x01"[..]));
    fx.assert_sentinel_untouched();
}

/// `ocix unpack M --store S DEST [extra]`, as root or as nobody.
fn cli_unpack(fx: &Fixture, m: &Manifest, nobody: bool, extra: &[&str]) -> std::process::Output {
    let mpath = fx.base.join("m.cbor");
    std::fs::write(&mpath, m.to_bytes().unwrap()).unwrap();
    let st = std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(fx.base.join("store")).status().unwrap();
    assert!(st.success());
    common::chmod(&mpath, 0o644);
    let mut c = if nobody { common::ocix_as_nobody() } else { common::ocix() };
    c.arg("unpack").arg(&mpath).arg("--store").arg(fx.base.join("store")).arg(&fx.dest).args(extra);
    c.output().unwrap()
}

#[test]
fn cli_refuses_overlay_xattrs_naming_entry_xattr_and_flag_root_and_rootless() {
    assert!(common::is_root(), "this test drops privileges from root");
    let fx = Fixture::new();
    common::chmod(&fx.base, 0o777);
    for (nobody, name) in [(false, "trusted.overlay.opaque"), (true, "user.overlay.opaque")] {
        let m = overlay_manifest(&fx, name);
        for extra in [&[][..], &["--rootless"], &["--update"]] {
            let o = cli_unpack(&fx, &m, nobody, extra);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{err}");
            assert!(err.contains("entry /d") && err.contains(name), "{err}");
            assert!(err.contains("--allow-overlay-xattrs"), "{err}");
            assert!(!fx.dest.exists(), "{err}");
        }
    }
    // rootless with the flag: user.overlay.* is written (the owner may set user.*)
    let m = overlay_manifest(&fx, "user.overlay.opaque");
    let Kind::Dir(c) = &m.root.kind else { unreachable!() };
    let mut m2 = m.clone();
    let Kind::Dir(c2) = &mut m2.root.kind else { unreachable!() };
    let mut d = c[b"d".as_slice()].clone();
    let Kind::Dir(dc) = &mut d.kind else { unreachable!() };
    dc.insert(b"f".to_vec(), with_xattr(fx.file(b"x"), "user.overlay.redirect", b"/etc"));
    c2.insert(b"d".to_vec(), d);
    let o = cli_unpack(&fx, &m2, true, &["--allow-overlay-xattrs"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lgetxattr(&fx.dest.join("d"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(lgetxattr(&fx.dest.join("d/f"), "user.overlay.redirect").as_deref(), Some(&b"/etc"[..]));
    fx.assert_sentinel_untouched();
}

#[test]
fn scan_of_an_overlay_upper_dir_then_unpack_is_refused() {
    assert!(common::is_root(), "trusted.* xattrs need root");
    let fx = Fixture::new();
    let upper = fx.base.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/hostname"), b"h\n").unwrap();
    rustix::fs::setxattr(upper.join("etc"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).unwrap();
    let mpath = fx.base.join("upper.cbor");
    let store = fx.base.join("store");
    let o = common::ocix().arg("scan").arg(&upper).arg("--store").arg(&store).arg("-o").arg(&mpath).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = common::ocix().arg("unpack").arg(&mpath).arg("--store").arg(&store).arg(&fx.dest).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("entry /etc: xattr trusted.overlay.opaque") && err.contains("--allow-overlay-xattrs"),
        "{err}"
    );
    assert!(!fx.dest.exists());
    let o = common::ocix()
        .arg("unpack")
        .arg(&mpath)
        .arg("--store")
        .arg(&store)
        .arg(&fx.dest)
        .arg("--allow-overlay-xattrs")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lgetxattr(&fx.dest.join("etc"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
}

#[test]
fn selinux_labels_in_a_manifest_are_written_as_root() {
    assert!(common::is_root());
    let fx = Fixture::new();
    let label = b"system_u:object_r:etc_t:s0";
    let m = manifest(vec![(b"f", with_xattr(fx.file(b"x"), "security.selinux", label))]);
    let r = fx.unpack(&m, false).unwrap();
    assert!(r.not_applied.is_empty(), "{:?}", r.not_applied);
    assert_eq!(lgetxattr(&fx.dest.join("f"), "security.selinux").as_deref(), Some(&label[..]));
}

// ------------------------------------------- hardlinks to symlinks, fifos, devices

#[test]
fn hardlinks_to_symlinks_link_the_symlink_and_never_follow_it() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let fx = Fixture::new();
    let outside = fx.sentinel.as_os_str().as_encoded_bytes().to_vec();
    let m = manifest(vec![
        (b"a", Entry::new(Kind::Symlink(outside.clone()))),
        (b"d", tree(vec![(b"l", Entry::new(Kind::Hardlink(b"a".to_vec())))])),
        (b"f", Entry::new(Kind::Fifo)),
        (b"g", Entry::new(Kind::Hardlink(b"f".to_vec()))),
    ]);
    fx.unpack(&m, false).unwrap();
    fx.assert_sentinel_untouched();
    let st = |p: &str| std::fs::symlink_metadata(fx.dest.join(p)).unwrap();
    assert!(st("d/l").file_type().is_symlink());
    assert_eq!((st("d/l").ino(), st("d/l").nlink()), (st("a").ino(), 2));
    assert_eq!((st("g").ino(), st("g").nlink()), (st("f").ino(), 2));
    // --update over names planted to lead outside: a symlink to the outside
    // directory at the link, a directory with a symlink inside at the fifo's
    // link, the first name itself a symlink to the outside directory
    for p in ["d/l", "g", "a"] {
        std::fs::remove_file(fx.dest.join(p)).unwrap();
    }
    std::os::unix::fs::symlink(&fx.sentinel, fx.dest.join("d/l")).unwrap();
    std::os::unix::fs::symlink(&fx.sentinel, fx.dest.join("a")).unwrap();
    std::fs::create_dir(fx.dest.join("g")).unwrap();
    std::os::unix::fs::symlink(&fx.sentinel, fx.dest.join("g/x")).unwrap();
    fx.unpack(&m, true).unwrap();
    fx.assert_sentinel_untouched();
    assert_eq!((st("d/l").ino(), st("d/l").nlink()), (st("a").ino(), 2));
    assert_eq!(std::fs::read_link(fx.dest.join("d/l")).unwrap(), fx.sentinel);
    assert!(st("g").file_type().is_fifo());
    assert_eq!((st("g").ino(), st("g").nlink()), (st("f").ino(), 2));
}

// ------------------------------------------------------------ numbers the kernel cannot take

/// `ocix unpack` of the manifest bytes `bytes` into the fixture's
/// destination: exit code and stderr.
fn unpack_cli(fx: &Fixture, bytes: &[u8], more: &[&str]) -> (Option<i32>, String) {
    let mpath = fx.base.join("m");
    std::fs::write(&mpath, bytes).unwrap();
    let mut args = vec![OsStr::new("unpack"), mpath.as_os_str(), OsStr::new("--store")];
    let store = fx.base.join("store");
    args.push(store.as_os_str());
    args.extend(more.iter().map(OsStr::new));
    args.push(fx.dest.as_os_str());
    let o = common::run(&args);
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Replaces the only occurrence of `from` in `bytes` by `to` (same length).
fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "{from:02x?} occurs {} times", at.len());
    bytes[at[0]..at[0] + from.len()].copy_from_slice(to);
}

#[test]
fn devices_linux_cannot_represent_are_never_created() {
    assert!(common::is_root());
    use ocix::manifest::Dev;
    // through the library: a model built in code
    for (major, minor) in [(4097, 1), (1, 1_048_577), (u32::MAX, u32::MAX), (4096, 1_048_576)] {
        let fx = Fixture::new();
        let mut d = Entry::new(Kind::Char(Dev { major, minor }));
        d.meta.mode = 0o666;
        let e = fx.unpack(&manifest(vec![(b"mem", d)]), false).unwrap_err().to_string();
        assert!(e.contains(&format!("{major}:{minor}")) && e.contains("/mem"), "{e}");
        assert!(!fx.dest.join("mem").exists(), "a device was created");
        fx.assert_sentinel_untouched();
    }
    // through the command line: 4095:1 encoded, then patched to 4097:1
    let fx = Fixture::new();
    let mut d = Entry::new(Kind::Char(Dev { major: 4095, minor: 1 }));
    d.meta.mode = 0o666;
    let mut bytes = manifest(vec![(b"mem", d)]).to_bytes().unwrap();
    patch(&mut bytes, &[0x82, 0x19, 0x0f, 0xff, 0x01], &[0x82, 0x19, 0x10, 0x01, 0x01]);
    let (code, err) = unpack_cli(&fx, &bytes, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("4097:1") && err.contains("/mem"), "{err}");
    assert!(!fx.dest.join("mem").exists(), "a device was created");
    fx.assert_sentinel_untouched();
}

#[test]
fn owner_4294967295_never_reaches_chown() {
    assert!(common::is_root());
    use std::os::unix::fs::MetadataExt;
    // through the library, uid and gid
    for (uid, gid) in [(u32::MAX, 0), (0, u32::MAX)] {
        let fx = Fixture::new();
        let mut f = fx.file(b"#!/bin/sh\n");
        (f.meta.uid, f.meta.gid, f.meta.mode) = (uid, gid, 0o4755);
        let e = fx.unpack(&manifest(vec![(b"su", f)]), false).unwrap_err().to_string();
        assert!(e.contains("4294967295") && e.contains("chown") && e.contains("/su"), "{e}");
        assert!(!fx.dest.join("su").exists(), "a setuid file was written");
        fx.assert_sentinel_untouched();
    }
    // through the command line: 4294967294 encoded, then patched
    let fx = Fixture::new();
    let mut f = fx.file(b"#!/bin/sh\n");
    (f.meta.uid, f.meta.mode) = (u32::MAX - 1, 0o4755);
    let mut bytes = manifest(vec![(b"su", f)]).to_bytes().unwrap();
    patch(&mut bytes, &[0x03, 0x1a, 0xff, 0xff, 0xff, 0xfe], &[0x03, 0x1a, 0xff, 0xff, 0xff, 0xff]);
    let (code, err) = unpack_cli(&fx, &bytes, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("4294967295") && err.contains("chown"), "{err}");
    if let Ok(md) = std::fs::symlink_metadata(fx.dest.join("su")) {
        panic!("written with owner {}, mode {:o}", md.uid(), md.mode());
    }
    fx.assert_sentinel_untouched();
}

#[test]
fn id_maps_never_produce_4294967295() {
    assert!(common::is_root());
    use ocix::materialize::IdMap;
    // the command line refuses a range that reaches it, on either side
    for map in ["0:4294967295:1", "0:4294967200:96", "4294967295:0:1"] {
        let fx = Fixture::new();
        let bytes = manifest(vec![(b"f", fx.file(b"x"))]).to_bytes().unwrap();
        let (code, err) = unpack_cli(&fx, &bytes, &["--uid-map", map]);
        assert_eq!(code, Some(2), "{map}: {err}");
        assert!(err.contains("4294967295") && err.contains("chown"), "{map}: {err}");
        assert!(!fx.dest.exists());
    }
    // the library refuses a mapped id of 4294967295 from maps built in code
    let fx = Fixture::new();
    let mut f = fx.file(b"#!/bin/sh\n");
    f.meta.mode = 0o4755;
    let m = manifest(vec![(b"su", f)]);
    let map = IdMap { container: 0, host: u32::MAX, size: 1 };
    for opts in [
        UnpackOptions { uid_map: vec![map], ..Default::default() },
        UnpackOptions { gid_map: vec![map], ..Default::default() },
    ] {
        let e = unpack(&m, &fx.store, &fx.dest, &opts).unwrap_err().to_string();
        assert!(e.contains("4294967295") && e.contains("chown") && e.contains("/su"), "{e}");
        if let Ok(md) = std::fs::symlink_metadata(fx.dest.join("su")) {
            use std::os::unix::fs::MetadataExt;
            assert_ne!(md.mode() & 0o4000, 0o4000, "setuid file left with owner {}", md.uid());
        }
        let _ = std::fs::remove_dir_all(&fx.dest);
    }
    fx.assert_sentinel_untouched();
}

// ------------------------------------------------- errors that name the fault

/// A blob name that holds a FIFO, a directory, a socket or a symlink: the
/// error names the blob and what is there, and a FIFO does not block.
#[test]
fn blob_that_is_not_a_regular_file_is_named_with_its_type() {
    type Make = fn(&Path);
    let cases: [(&str, Make); 4] = [
        ("a FIFO", |p| {
            let out = std::process::Command::new("mkfifo").arg(p).status().unwrap();
            assert!(out.success());
        }),
        ("a directory", |p| std::fs::create_dir(p).unwrap()),
        ("a socket", |p| {
            std::mem::forget(std::os::unix::net::UnixListener::bind(p).unwrap());
        }),
        ("a symlink", |p| std::os::unix::fs::symlink("elsewhere", p).unwrap()),
    ];
    for (what, make) in cases {
        let fx = Fixture::new();
        let f = fx.file(b"some content");
        let d = digest_of(&f);
        let blob = fx.store.blob_path(&d);
        std::fs::remove_file(&blob).unwrap();
        make(&blob);
        let m = manifest(vec![(b"victim", f)]);
        let msg = fx.unpack(&m, false).unwrap_err().to_string();
        let says = format!("{} is {what}, not a regular file", blob.display());
        assert!(msg.contains(&says) && msg.contains(&d.to_string()), "{what}: {msg}");
        assert!(!msg.contains("not a blob store"), "{what}: {msg}");
        fx.assert_sentinel_untouched();
    }
}

/// Zero runs the blob does not have: the manifest is blamed, not the blob.
#[test]
fn false_zero_runs_blame_the_manifest_not_the_blob() {
    let fx = Fixture::new();
    let mut content = vec![7u8; 2 * BLOCK as usize];
    content.extend_from_slice(b"tail");
    let mut f = fx.file(&content);
    let d = digest_of(&f);
    if let Kind::File(file) = &mut f.kind {
        file.zeros = vec![(1, 1)];
    }
    let m = manifest(vec![(b"victim", f)]);
    let msg = fx.unpack(&m, false).unwrap_err().to_string();
    assert!(msg.contains("/victim") && msg.contains("the manifest's zero runs disagree with blob"), "{msg}");
    assert!(msg.contains(&d.to_string()) && msg.contains("intact"), "{msg}");
    assert!(leftovers(&fx.dest).is_empty(), "left {:?}", leftovers(&fx.dest));
}

/// What the unpack could not apply is listed, not dropped without a word:
/// a symlink's mode (always 0777 on Linux) and mtimes beyond what the
/// filesystem holds (it clamps them).
#[test]
fn symlink_modes_and_clamped_mtimes_are_listed_as_not_applied() {
    use ocix::manifest::{Meta, Time};
    use ocix::materialize::NotAppliedKind;
    let fx = Fixture::new();
    let mut link = Entry::new(Kind::Symlink(b"target".to_vec()));
    link.meta = Meta { mode: 0o644, ..Meta::default() };
    let mut exact = Entry::new(Kind::Symlink(b"target".to_vec()));
    exact.meta = Meta { mode: 0o777, ..Meta::default() };
    let mut late = fx.file(b"late");
    late.meta.mtime = Time { sec: i64::MAX, nsec: 999_999_999 };
    let mut early = fx.file(b"early");
    early.meta.mtime = Time { sec: i64::MIN, nsec: 0 };
    let m = manifest(vec![(b"link", link), (b"exact", exact), (b"late", late), (b"early", early)]);
    let r = fx.unpack(&m, false).unwrap();
    let of = |k: NotAppliedKind| {
        let mut v: Vec<String> = r
            .not_applied
            .iter()
            .filter(|n| n.kind == k)
            .map(|n| format!("{} {}", String::from_utf8_lossy(&n.path), n.detail))
            .collect();
        v.sort();
        v
    };
    let modes = of(NotAppliedKind::Mode);
    assert!(modes.len() == 1 && modes[0].starts_with("link mode 0644"), "{modes:?}");
    // listed exactly when the filesystem stored another time (ext4 and
    // xfs clamp both extremes)
    use std::os::unix::fs::MetadataExt;
    let times = of(NotAppliedKind::Mtime);
    let mut want = Vec::new();
    for (name, sec, nsec) in [("early", i64::MIN, 0), ("late", i64::MAX, 999_999_999)] {
        let md = std::fs::symlink_metadata(fx.dest.join(name)).unwrap();
        if (md.mtime(), md.mtime_nsec()) != (sec, nsec) {
            want.push(format!("{name} mtime {sec}.{nsec:09} s, stored as {}.{:09} s", md.mtime(), md.mtime_nsec()));
        }
    }
    assert_eq!(times.len(), want.len(), "{times:?}");
    for (t, w) in times.iter().zip(&want) {
        assert!(t.starts_with(w.as_str()), "{t} / {w}");
    }
    if !want.is_empty() {
        assert!(r.summary(3).iter().any(|l| l.contains("mtimes not stored exactly")), "{:?}", r.summary(3));
    }
}

// ---------------------------------------------------------------- blobs fetched by this run

use ocix::store::{Arrivals, Filled};
use std::sync::Arc;

/// A blob the pull has just verified is trusted by the unpack (not hashed
/// again), but the manifest's zero runs are only a claim about that
/// content: a run declared over non-zero bytes makes the file zeros there,
/// and only the digest check catches it. Trusting the blob must not
/// trust the claim: the unpack has to fail (as it does for a blob it did
/// not fetch), never write a file whose content is not the digest's.
#[test]
fn false_zero_runs_over_a_freshly_fetched_blob_are_not_trusted() {
    let t = tempfile::tempdir().unwrap();
    let a = Arc::new(Arrivals::new());
    let store = Store::create(&t.path().join("store")).unwrap().with_arrivals(a.clone());
    let mut content = vec![b'x'; BLOCK as usize];
    content.extend_from_slice(b"tail");
    // as the pull names it: through the store being filled
    let d = store.put_bytes(&content).unwrap();
    assert!(store.fetched_here(&d));
    a.close(Filled::Complete);
    // the first block claimed all-zero, which it is not
    let f = File { size: content.len() as u64, digest: Some(d), zeros: vec![(0, 1)] };
    let m = manifest(vec![(b"victim", Entry::new(Kind::File(f)))]);
    let dest = t.path().join("dest");
    let r = unpack(&m, &store, &dest, &UnpackOptions::default());
    match r {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("victim") && msg.contains(&d.to_string()), "{msg}");
        }
        Ok(_) => {
            let got = std::fs::read(dest.join("victim")).unwrap();
            panic!(
                "unpack wrote a file named by {d} whose content hashes to {} ({} zero bytes first)",
                Digest::of(&got),
                got.iter().take_while(|&&b| b == 0).count()
            );
        }
    }
}
