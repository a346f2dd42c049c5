//! `ocix mount`: the EROFS image of a manifest passes `fsck.erofs`; mounted
//! over its store it scans back to the same manifest bytes (`ocix diff`
//! exits 0), hostile manifests included (overlay xattrs escaped, long
//! names, deep trees, hardlink groups, every entry type); missing or short
//! blobs are refused before anything is mounted; nothing stays mounted.
//! Mounting needs root: elsewhere each test says it was skipped.

mod common;

use ocix::manifest::{Dev, Digest, Entry, File, Kind, Manifest, Time};
use ocix::mount::{MountOptions, erofs, mount, umount};
use ocix::scan::{ScanOptions, scan_dir};
use ocix::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Unmounts on drop, so a failed assertion leaves nothing mounted.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount(&self.0);
    }
}

fn root_or_skip() -> bool {
    if !common::is_root() {
        return common::skip("mounting needs root");
    }
    true
}

fn mounted_here(p: &Path) -> bool {
    let canon = std::fs::canonicalize(p).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = format!(" {} ", canon.display());
    info.lines().any(|l| l.contains(&want))
}

/// `ocix diff MNT M` exits 0.
fn diff_clean(mnt: &Path, m: &Path) {
    let diff = common::ocix().arg("diff").arg(mnt).arg(m).output().unwrap();
    let said = [diff.stdout, diff.stderr].concat();
    assert_eq!(diff.status.code(), Some(0), "{}", String::from_utf8_lossy(&said));
}

fn fsck(image: &Path) {
    // fsck.erofs walks directories recursively: the 1024-deep chain needs
    // more than the default stack
    let out = Command::new("sh")
        .args(["-c", "ulimit -s unlimited && exec fsck.erofs \"$1\"", "sh"])
        .arg(image)
        .output()
        .expect("fsck.erofs (erofs-utils) installed");
    assert!(
        out.status.success(),
        "fsck.erofs {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn file(store: &Store, data: &[u8]) -> Entry {
    let digest = if data.is_empty() { None } else { Some(store.put_bytes(data).unwrap()) };
    Entry::new(Kind::File(File { size: data.len() as u64, digest, zeros: Vec::new() }))
}

fn dir(children: Vec<(Vec<u8>, Entry)>) -> Entry {
    Entry::new(Kind::Dir(children.into_iter().collect::<BTreeMap<_, _>>()))
}

fn with_xattr(mut e: Entry, name: &str, value: &[u8]) -> Entry {
    e.meta.xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
    e
}

/// A manifest with every kind of entry and the shapes that stress the
/// image: overlay xattrs of every sort, 255-byte names, a directory over
/// several blocks, a 4095-byte symlink target, hardlink groups of files
/// and of other types, a 1024-deep chain, large xattr values, shared
/// xattrs, negative mtimes with nanoseconds, large ids.
fn hostile(store: &Store) -> Manifest {
    let mut top: Vec<(Vec<u8>, Entry)> = Vec::new();
    let opaque = with_xattr(dir(vec![(b"kept".to_vec(), file(store, b"kept"))]), "trusted.overlay.opaque", b"y");
    top.push((b"opaque".to_vec(), opaque));
    let mut r = with_xattr(file(store, b"redirected?"), "trusted.overlay.redirect", b"/etc/shadow");
    r = with_xattr(r, "trusted.overlay.metacopy", b"");
    top.push((b"redirect".to_vec(), r));
    top.push((b"whiteout".to_vec(), with_xattr(file(store, b""), "trusted.overlay.whiteout", b"")));
    top.push((b"escaped".to_vec(), with_xattr(file(store, b"e"), "trusted.overlay.overlay.opaque", b"y")));
    top.push((b"user-ovl".to_vec(), with_xattr(dir(vec![]), "user.overlay.opaque", b"y")));
    top.push((vec![b'n'; 255], file(store, b"long name")));
    let many: Vec<(Vec<u8>, Entry)> = (0..300u32)
        .map(|i| {
            let mut n = format!("{i:04}-").into_bytes();
            n.resize(200, b'x');
            (n, Entry::new(Kind::Fifo))
        })
        .collect();
    top.push((b"many".to_vec(), dir(many)));
    top.push((b"longlink".to_vec(), Entry::new(Kind::Symlink(vec![b'L'; 4095]))));
    top.push((b"link".to_vec(), Entry::new(Kind::Symlink(b"../x".to_vec()))));
    top.push((b"h1".to_vec(), file(store, b"shared by three names")));
    top.push((b"h2".to_vec(), Entry::new(Kind::Hardlink(b"h1".to_vec()))));
    top.push((b"hsub".to_vec(), dir(vec![(b"h3".to_vec(), Entry::new(Kind::Hardlink(b"h1".to_vec())))])));
    top.push((b"zs".to_vec(), Entry::new(Kind::Hardlink(b"link".to_vec()))));
    top.push((b"chr".to_vec(), Entry::new(Kind::Char(Dev { major: 1, minor: 3 }))));
    top.push((b"blk".to_vec(), Entry::new(Kind::Block(Dev { major: 259, minor: 70000 }))));
    top.push((b"fifo".to_vec(), Entry::new(Kind::Fifo)));
    top.push((b"sock".to_vec(), Entry::new(Kind::Socket)));
    let mut big = file(store, b"big xattrs");
    big = with_xattr(big, "user.big", &vec![7u8; 60000]);
    big = with_xattr(big, "security.capability", &[1, 0, 0, 2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for i in 0..20 {
        big = with_xattr(big, &format!("trusted.k{i}"), format!("v{i}").as_bytes());
    }
    top.push((b"big".to_vec(), big));
    let same = |n: u8| with_xattr(file(store, &[n; 10]), "user.same", b"shared value");
    top.push((b"same1".to_vec(), same(1)));
    top.push((b"same2".to_vec(), same(2)));
    let mut odd = file(store, b"odd metadata");
    odd.meta.mtime = Time { sec: -12345, nsec: 999_999_999 };
    odd.meta.uid = 4_000_000_000;
    odd.meta.gid = 123_456;
    odd.meta.mode = 0o7755;
    top.push((b"odd".to_vec(), odd));
    top.push((b"\x01\xff\n name".to_vec(), file(store, b"raw name")));
    let mut deep = file(store, b"at the bottom");
    // "deep" and 1023 directories below it: the nesting limit, a file inside
    for _ in 0..1023 {
        deep = dir(vec![(b"d".to_vec(), deep)]);
    }
    top.push((b"deep".to_vec(), deep));
    let mut m = Manifest { root: dir(top) };
    m.root.meta.mtime = Time { sec: 1_700_000_000, nsec: 1 };
    // round trip through the codec: the manifest is valid
    Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap()
}

/// `/a` "alpha" and `/b` "bravo".
fn two_files(store: &Store) -> Manifest {
    Manifest { root: dir(vec![(b"a".to_vec(), file(store, b"alpha")), (b"b".to_vec(), file(store, b"bravo"))]) }
}

/// The compact form the mount takes.
fn compact(m: &Manifest) -> ocix::manifest::Compact {
    ocix::manifest::Compact::from_tree(m).unwrap()
}

fn mount_manifest(m: &Manifest, store: &Store, target: &Path) -> Mounted {
    std::fs::create_dir_all(target).unwrap();
    let digest = m.digest().unwrap();
    mount(&compact(m), &digest, store, target, &MountOptions::default()).unwrap();
    Mounted(target.to_path_buf())
}

fn scan(dir: &Path) -> Vec<u8> {
    scan_dir(dir, None, &ScanOptions::default()).unwrap().manifest.to_bytes().unwrap()
}

#[test]
fn hostile_manifest_image_passes_fsck_and_mounts_as_itself() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = hostile(&store);
    let image = t.path().join("image.erofs");
    let mut f = std::fs::File::create(&image).unwrap();
    erofs::write_image(&compact(&m), [7; 16], &mut f).unwrap();
    drop(f);
    fsck(&image);
    // the same manifest always gives the same bytes
    let mut again = Vec::new();
    erofs::write_image(&compact(&m), [7; 16], &mut again).unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), again);
    if !root_or_skip() {
        return;
    }
    let mnt = t.path().join("mnt");
    let guard = mount_manifest(&m, &store, &mnt);
    let scanned = scan(&mnt);
    if scanned != m.to_bytes().unwrap() {
        let got = Manifest::from_bytes(&scanned).unwrap();
        let f = ocix::diff::diff(&m, &got, &Default::default());
        panic!("mount differs: {:?}", f.iter().map(|f| f.to_string()).collect::<Vec<_>>());
    }
    // the escaped xattrs did not steer the overlay
    assert_eq!(std::fs::read(mnt.join("redirect")).unwrap(), b"redirected?");
    assert_eq!(std::fs::read(mnt.join("opaque/kept")).unwrap(), b"kept");
    assert!(mnt.join("whiteout").is_file());
    // the store is not visible through the mount
    assert!(!mnt.join("blobs").exists());
    drop(guard);
    assert!(!mounted_here(&mnt));
}

#[test]
fn unrepresentable_entries_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let cases: Vec<(Entry, &str)> = vec![
        (Entry::new(Kind::Char(Dev { major: 0, minor: 0 })), "whiteout"),
        (with_xattr(file(&store, b"x"), "user.v", &vec![0; 65536]), "at most 65535"),
        (with_xattr(file(&store, b"x"), "system.nfs4_acl", b"x"), "namespace"),
        (
            (0..5).fold(file(&store, b"x"), |e, i| with_xattr(e, &format!("user.v{i}"), &vec![i; 60000])),
            "bytes of xattrs",
        ),
    ];
    for (e, why) in cases {
        let m = Manifest { root: dir(vec![(b"bad".to_vec(), e)]) };
        let err = erofs::write_image(&compact(&m), [0; 16], &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("/bad") && err.contains(why) && err.contains("a mount cannot show it"), "{err}");
    }
}

#[test]
fn sample_tree_mounts_and_diffs_clean_and_the_image_is_cached() {
    if !root_or_skip() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    common::make_tree(&src, false);
    let (store, m, mnt) = (t.path().join("store"), t.path().join("m.ocix"), t.path().join("mnt"));
    let out = common::ocix().arg("scan").arg(&src).arg("--store").arg(&store).arg("-o").arg(&m).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::create_dir(&mnt).unwrap();
    let run_mount =
        || common::ocix().args(["mount", "-v"]).arg(&m).arg("--store").arg(&store).arg(&mnt).output().unwrap();
    let out = run_mount();
    let _guard = Mounted(mnt.clone());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("written"), "{}", String::from_utf8_lossy(&out.stderr));
    diff_clean(&mnt, &m);
    let out = common::ocix().arg("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted_here(&mnt));
    // the second mount writes nothing: image cached, blobs remembered
    let cache = store.join(".ocix-mount");
    let before: Vec<_> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().metadata().unwrap().modified().unwrap()).collect();
    let out = run_mount();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cached") && err.contains(", 0 hashed"), "{err}");
    let after: Vec<_> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().metadata().unwrap().modified().unwrap()).collect();
    assert_eq!(before, after);
    // umount refuses what it did not mount
    let out = common::ocix().arg("umount").arg(t.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a mount made by `ocix mount`"));
}

#[test]
fn missing_short_or_corrupt_blobs_are_refused_before_mounting() {
    if !root_or_skip() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = two_files(&store);
    let digest = m.digest().unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let blob = store.blob_path(&Digest::of(b"bravo"));
    let try_mount = |verify: bool| {
        let r = mount(&compact(&m), &digest, &store, &mnt, &MountOptions { verify, ..Default::default() });
        if r.is_ok() {
            umount(&mnt).unwrap();
        }
        assert!(!mounted_here(&mnt));
        r.err().map(|e| e.to_string())
    };
    std::fs::write(&blob, b"brav").unwrap();
    let e = try_mount(false).unwrap();
    assert!(e.contains("4 bytes, expected 5") && e.contains("nothing was mounted"), "{e}");
    std::fs::remove_file(&blob).unwrap();
    let e = try_mount(false).unwrap();
    assert!(e.contains("missing") && e.contains(&Digest::of(b"bravo").hex()), "{e}");
    // same size, other content: found by the first check
    std::fs::write(&blob, b"BRAVO").unwrap();
    let e = try_mount(false).unwrap();
    assert!(e.contains("content has digest"), "{e}");
    std::fs::write(&blob, b"bravo").unwrap();
    assert_eq!(try_mount(false), None);
    assert!(!image_tmp_left(&store));
    // a blob replaced after it was checked (same size, another inode: made
    // while the old one exists) is checked again, and refused
    let new = blob.with_extension("new");
    std::fs::write(&new, b"BRAVO").unwrap();
    std::fs::rename(&new, &blob).unwrap();
    let e = try_mount(false).unwrap();
    assert!(e.contains("content has digest"), "{e}");
}

fn image_tmp_left(store: &Store) -> bool {
    std::fs::read_dir(store.root().join(".ocix-mount"))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".tmp")))
        .unwrap_or(false)
}

#[test]
fn a_refused_manifest_leaves_no_image() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = Manifest { root: dir(vec![(b"w".to_vec(), Entry::new(Kind::Char(Dev { major: 0, minor: 0 })))]) };
    let digest = m.digest().unwrap();
    let e = ocix::mount::cached_image(&compact(&m), &digest, &store).unwrap_err().to_string();
    assert!(e.contains("whiteout"), "{e}");
    assert!(!ocix::mount::image_path(&store, &digest).exists());
    assert!(!image_tmp_left(&store));
}

#[test]
fn corpus_image_mounts_and_diffs_clean() {
    if !root_or_skip() {
        return;
    }
    let corpus = match std::env::var_os("OCIX_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ocix-corpus"),
    };
    if !corpus.join("image/index.json").is_file() {
        eprintln!("SKIP: no corpus at {}", corpus.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (store, m, mnt) = (t.path().join("store"), t.path().join("m.ocix"), t.path().join("mnt"));
    let image = format!("{}:debian", corpus.join("image").display());
    let out = common::ocix().args(["import", &image, "--store"]).arg(&store).arg("-o").arg(&m).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::create_dir(&mnt).unwrap();
    let out = common::ocix().arg("mount").arg(&m).arg("--store").arg(&store).arg(&mnt).output().unwrap();
    let _guard = Mounted(mnt.clone());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    diff_clean(&mnt, &m);
    let digest = Digest::of(&std::fs::read(&m).unwrap());
    fsck(&ocix::mount::image_path(&Store::open(&store).unwrap(), &digest));
}

#[test]
fn upper_makes_the_mount_writable_and_keeps_the_store_clean() {
    if !root_or_skip() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let mut m = two_files(&store);
    m.root.meta =
        ocix::manifest::Meta { mode: 0o1750, uid: 7, gid: 8, mtime: Time { sec: 1234, nsec: 5 }, ..Default::default() };
    m.root.meta.xattrs.insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
    let digest = m.digest().unwrap();
    let (mnt, upper, work) = (t.path().join("mnt"), t.path().join("upper"), t.path().join("work"));
    for d in [&mnt, &upper, &work] {
        std::fs::create_dir(d).unwrap();
    }
    let opts = MountOptions { upper: Some(upper.clone()), work: Some(work), verify: false };
    mount(&compact(&m), &digest, &store, &mnt, &opts).unwrap();
    let guard = Mounted(mnt.clone());
    // before any change, a writable mount is the manifest too (its root
    // shows the upper directory, given the root's metadata)
    assert_eq!(scan(&mnt), m.to_bytes().unwrap());
    std::fs::write(mnt.join("a"), b"changed").unwrap();
    std::fs::remove_file(mnt.join("b")).unwrap();
    std::fs::write(mnt.join("c"), b"new").unwrap();
    assert_eq!(std::fs::read(upper.join("a")).unwrap(), b"changed");
    assert_eq!(std::fs::read(upper.join("c")).unwrap(), b"new");
    // the blobs are as they were
    assert_eq!(std::fs::read(store.blob_path(&Digest::of(b"alpha"))).unwrap(), b"alpha");
    assert!(store.has(&Digest::of(b"bravo")));
    let scanned = Manifest::from_bytes(&scan(&mnt)).unwrap();
    let found: Vec<String> =
        ocix::diff::diff(&m, &scanned, &Default::default()).iter().map(|f| f.to_string()).collect();
    assert!(found.iter().any(|f| f.starts_with("/a: ")), "{found:?}");
    assert!(found.contains(&"missing /b".to_string()) && found.contains(&"extra /c".to_string()), "{found:?}");
    drop(guard);
    assert!(!mounted_here(&mnt));
    // mounted again read-only: the manifest, unchanged
    let _guard = mount_manifest(&m, &store, &mnt);
    assert_eq!(scan(&mnt), m.to_bytes().unwrap());
}

#[test]
fn without_privilege_the_error_says_what_is_missing() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = two_files(&store);
    let (mf, mnt) = (t.path().join("m.ocix"), t.path().join("mnt"));
    std::fs::write(&mf, m.to_bytes().unwrap()).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let out =
        common::ocix_as_nobody().arg("mount").arg(&mf).arg("--store").arg(store.root()).arg(&mnt).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs root") && err.contains("ocix unpack"), "{err}");
    assert!(!mounted_here(&mnt));
    // refused before anything was written into the store
    assert!(!store.root().join(".ocix-mount").exists());
}
