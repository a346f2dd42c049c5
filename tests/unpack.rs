//! `ocix unpack`: scan -> unpack -> scan round trips (library and CLI, root
//! and rootless), holes, id maps, and `--update` bringing a damaged or
//! half-written tree back to the manifest.

mod common;

use common::progress::Tally;
use common::{chmod, is_root, make_tree, set_mtime, unpack, write};
use ocix::manifest::{Entry, Kind, Manifest};
use ocix::materialize::{IdMap, NotAppliedKind, UnpackOptions};
use ocix::progress::{Progress, Work};
use ocix::scan::{ScanOptions, scan_dir};
use ocix::store::Store;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn scan(dir: &Path, store: Option<&Store>) -> Manifest {
    scan_dir(dir, store, &ScanOptions::default())
        .unwrap_or_else(|e| panic!("scan {}: {e}", dir.display()))
        .manifest
        .to_tree()
}

fn scan_rootless(dir: &Path) -> Manifest {
    let o = ScanOptions { rootless: true, ..ScanOptions::default() };
    scan_dir(dir, None, &o).unwrap_or_else(|e| panic!("scan --rootless {}: {e}", dir.display())).manifest.to_tree()
}

fn setfacl(args: &[&str], p: &Path) {
    let st = Command::new("setfacl").args(args).arg(p).status().expect("run setfacl");
    assert!(st.success(), "setfacl {args:?} {}", p.display());
}

/// The shared sample tree plus what unpack must handle on top: a
/// capability, ACLs (access and default), a setgid directory, directories
/// without owner write permission that still have children, owners.
fn make_full_tree(root: &Path) {
    make_tree(root, false);
    let j = |s: &str| root.join(s);
    std::fs::create_dir(j("ro")).unwrap();
    write(&j("ro/inside"), b"in a 0555 directory\n");
    std::fs::create_dir(j("ro/sub")).unwrap();
    write(&j("ro/sub/deep"), b"deeper\n");
    std::fs::create_dir(j("wx")).unwrap();
    write(&j("wx/secret"), b"in a 0311 directory\n");
    std::fs::create_dir(j("sgid")).unwrap();
    write(&j("cap"), b"#!/bin/true\n");
    rustix::fs::setxattr(j("cap"), "security.capability", &cap_net_raw(), rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(j("ro/inside"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    setfacl(&["-m", "u:123:rx,g:45:r"], &j("a/b"));
    setfacl(&["-d", "-m", "u:5:r"], &j("a/b"));
    std::os::unix::fs::lchown(j("sgid"), Some(10), Some(20)).unwrap();
    std::os::unix::fs::lchown(j("ro/inside"), Some(1), Some(0)).unwrap();
    std::os::unix::fs::lchown(j("fifo"), Some(7), Some(8)).unwrap();
    chmod(&j("sgid"), 0o2775);
    chmod(&j("ro/sub"), 0o555);
    chmod(&j("ro"), 0o555);
    chmod(&j("wx"), 0o311);
    for p in ["ro/sub/deep", "ro/inside", "ro/sub", "ro", "wx/secret", "wx", "sgid", "cap", "a/b", "fifo", "a", ""] {
        set_mtime(&j(p), 1_600_000_000, 42);
    }
}

/// A v3 `security.capability` value granting CAP_NET_RAW (effective,
/// permitted), root id 0.
fn cap_net_raw() -> Vec<u8> {
    let mut v = vec![0u8; 24];
    v[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes()); // VFS_CAP_REVISION_3 | EFFECTIVE
    v[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes()); // permitted: CAP_NET_RAW
    v
}

/// A temporary directory every user can enter (for the rootless tests).
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    t
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

fn names_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name().as_bytes().windows(needle.len()).any(|w| w == needle) {
                out.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn round_trip_as_root_gives_the_same_manifest_bytes() {
    assert!(is_root(), "the round trip test needs root (CI runs as root)");
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    std::fs::create_dir(&src).unwrap();
    make_full_tree(&src);
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = scan(&src, Some(&store));
    // the tree really has what this test claims to cover
    assert!(m.get(b"cap").unwrap().meta.xattrs.contains_key(b"security.capability".as_slice()));
    assert!(m.get(b"a/b").unwrap().meta.xattrs.contains_key(b"system.posix_acl_default".as_slice()));
    assert!(matches!(m.get(b"null").unwrap().kind, Kind::Char(_)));
    assert!(matches!(m.get(b"hl-1").unwrap().kind, Kind::Hardlink(_)));
    assert!(m.get(b"names/\xff\xfe-latin1").is_some());
    assert_eq!(m.get(b"wx").unwrap().meta.mode, 0o311);

    let r = unpack(&m, &store, &out, &UnpackOptions::default()).unwrap();
    assert!(!r.rootless);
    assert_eq!(r.hardlinks, 2);
    assert!(r.not_applied.is_empty(), "{:?}", r.not_applied);
    let back = scan(&out, None);
    assert_eq!(back.to_bytes().unwrap(), m.to_bytes().unwrap(), "{back:#?}\nvs\n{m:#?}");

    // zero runs are holes: 8 MiB file with 14 KB of data
    let sparse = std::fs::metadata(out.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 8 << 20);
    assert!(sparse.blocks() * 512 <= 64 << 10, "sparse file has {} blocks allocated", sparse.blocks());
    // a file that is all zeros is all hole
    assert_eq!(std::fs::metadata(out.join("a/b/zero4k")).unwrap().blocks(), 0);
    // hardlinks share the inode
    let ino = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("a/hello"), ino("hl-1"));
    assert_eq!(ino("a/hello"), ino("a/b/hl-2"));
    // no temporary names left
    assert!(names_containing(&out, b".ocix-tmp").is_empty());
}

#[test]
fn cli_round_trip_and_nonempty_destination() {
    let t = tempfile::tempdir().unwrap();
    let (src, out, s) = (t.path().join("src"), t.path().join("out"), t.path().join("store"));
    std::fs::create_dir(&src).unwrap();
    make_full_tree(&src);
    let m1 = t.path().join("m1");
    let o = common::run(&[
        OsStr::new("scan"),
        src.as_os_str(),
        OsStr::new("--store"),
        s.as_os_str(),
        OsStr::new("-o"),
        m1.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = common::run(&[OsStr::new("unpack"), m1.as_os_str(), OsStr::new("--store"), s.as_os_str(), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m2 = t.path().join("m2");
    let o = common::run(&[OsStr::new("scan"), out.as_os_str(), OsStr::new("-o"), m2.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&m1).unwrap(), std::fs::read(&m2).unwrap());
    // a second unpack into the same place needs --update
    let o = common::run(&[OsStr::new("unpack"), m1.as_os_str(), OsStr::new("--store"), s.as_os_str(), out.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not empty") && err.contains(out.to_str().unwrap()), "{err}");
    let o = common::run(&[
        OsStr::new("unpack"),
        m1.as_os_str(),
        OsStr::new("--store"),
        s.as_os_str(),
        OsStr::new("--update"),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// What `scan --rootless` of a rootless unpack gives back: the manifest,
/// except device nodes (empty files with the device's metadata), privileged
/// xattrs (dropped), and owners of symlinks and fifos (which cannot carry
/// the user.rootlesscontainers xattr: 0:0).
fn rootless_expectation(m: &Manifest) -> Manifest {
    fn fix(e: &mut Entry) {
        e.meta.xattrs.retain(|k, _| !k.starts_with(b"security.") && !k.starts_with(b"trusted."));
        match &mut e.kind {
            Kind::Char(_) | Kind::Block(_) => e.kind = Kind::File(Default::default()),
            Kind::Symlink(_) | Kind::Fifo => {
                e.meta.uid = 0;
                e.meta.gid = 0;
            }
            Kind::Dir(c) => c.values_mut().for_each(fix),
            _ => {}
        }
        e.meta.uname = None;
        e.meta.gname = None;
    }
    let mut m = m.clone();
    fix(&mut m.root);
    m
}

fn strip_names(m: &Manifest) -> Manifest {
    fn f(e: &mut Entry) {
        e.meta.uname = None;
        e.meta.gname = None;
        if let Kind::Dir(c) = &mut e.kind {
            c.values_mut().for_each(f);
        }
    }
    let mut m = m.clone();
    f(&mut m.root);
    m
}

fn as_nobody(args: &[&OsStr]) -> std::process::Output {
    common::ocix_as_nobody().args(args).output().expect("run setpriv")
}

/// Scans `src` into a store under `t`, writes its manifest, makes both
/// readable by uid 65534 and gives it a home it alone may write; returns
/// (manifest path, store path, a destination inside that home).
fn prepare_for_nobody(t: &Path, src: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let s = t.join("store");
    let store = Store::create(&s).unwrap();
    let m = scan(src, Some(&store));
    let mpath = t.join("m");
    std::fs::write(&mpath, m.to_bytes().unwrap()).unwrap();
    chmod(&mpath, 0o644);
    let st = Command::new("chmod").args(["-R", "a+rX"]).arg(&s).status().unwrap();
    assert!(st.success());
    let home = t.join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::lchown(&home, Some(65534), Some(65534)).unwrap();
    (mpath, s, home.join("out"))
}

#[test]
fn rootless_round_trip_as_nobody() {
    assert!(is_root(), "this test drops privileges from root");
    let t = open_tempdir();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_full_tree(&src);
    // a root without owner write permission: a rerun must still get in
    chmod(&src, 0o555);
    // nobody may write only in its home
    let (mpath, s, out) = prepare_for_nobody(t.path(), &src);
    let m = Manifest::from_bytes(&std::fs::read(&mpath).unwrap()).unwrap();

    let o =
        as_nobody(&[OsStr::new("unpack"), mpath.as_os_str(), OsStr::new("--store"), s.as_os_str(), out.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // one summary of what could not be applied
    assert!(err.contains("devices written as empty files"), "{err}");
    assert!(err.contains("security.capability"), "{err}");
    // everything is owned by the unpacking user; intended owners in the xattr
    let md = std::fs::symlink_metadata(out.join("sgid")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    let x = rustix::fs::getxattr(out.join("sgid"), "user.rootlesscontainers", &mut vec![0u8; 64]).unwrap();
    assert!(x > 0);
    // directories without owner write permission got their children
    assert!(out.join("wx/secret").exists() || std::fs::symlink_metadata(out.join("wx/secret")).is_ok());
    assert_eq!(std::fs::symlink_metadata(out.join("wx")).unwrap().mode() & 0o7777, 0o311);
    assert!(std::fs::symlink_metadata(out.join("null")).unwrap().file_type().is_file());

    let back = scan_rootless(&out);
    assert_eq!(
        strip_names(&back),
        rootless_expectation(&m),
        "rootless round trip differs beyond the documented exceptions"
    );

    // --update as nobody over its own tree (0555/0311 directories included) is clean
    let o = as_nobody(&[
        OsStr::new("unpack"),
        mpath.as_os_str(),
        OsStr::new("--store"),
        s.as_os_str(),
        OsStr::new("--update"),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(strip_names(&scan_rootless(&out)), rootless_expectation(&m));
}

#[test]
fn forced_rootless_as_root_matches_umoci_convention() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("s")).unwrap();
    let mut m = Manifest::default();
    let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
    let mut f = Entry::new(Kind::File(Default::default()));
    f.meta.uid = 1000;
    f.meta.gid = 0;
    c.insert(b"f".to_vec(), f);
    c.insert(b"z".to_vec(), Entry::new(Kind::File(Default::default())));
    let out = t.path().join("out");
    let r = unpack(&m, &store, &out, &UnpackOptions { rootless: true, ..Default::default() }).unwrap();
    assert!(r.rootless);
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::getxattr(out.join("f"), "user.rootlesscontainers", &mut buf).unwrap();
    // uid 1000, gid 0 written as NoopID
    assert_eq!(&buf[..n], &[0x08, 0xe8, 0x07, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert_eq!(ocix::rootless::decode(&buf[..n]).unwrap(), (1000, 0));
    // 0:0 carries no xattr
    assert!(rustix::fs::getxattr(out.join("z"), "user.rootlesscontainers", &mut buf).is_err());
    assert_eq!(std::fs::metadata(out.join("f")).unwrap().uid(), 0, "no chown when rootless");
}

#[test]
fn uid_and_gid_maps_shift_owners() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("s")).unwrap();
    let mut m = Manifest::default();
    let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
    let mut f = Entry::new(Kind::File(Default::default()));
    f.meta.uid = 5;
    f.meta.gid = 7;
    c.insert(b"f".to_vec(), f);
    c.insert(b"l".to_vec(), Entry::new(Kind::Symlink(b"f".to_vec())));
    let opts = UnpackOptions {
        uid_map: vec!["0:100000:1000".parse::<IdMap>().unwrap()],
        gid_map: vec!["0:200000:10".parse::<IdMap>().unwrap()],
        ..Default::default()
    };
    let out = t.path().join("out");
    unpack(&m, &store, &out, &opts).unwrap();
    let md = std::fs::symlink_metadata(out.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (100005, 200007));
    let md = std::fs::symlink_metadata(out.join("l")).unwrap();
    assert_eq!((md.uid(), md.gid()), (100000, 200000));
    assert_eq!(std::fs::symlink_metadata(&out).unwrap().uid(), 100000);
    // an id outside every range is an error naming the entry
    let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
    c.get_mut(b"f".as_slice()).unwrap().meta.gid = 10;
    let e = unpack(&m, &store, &t.path().join("out2"), &opts).unwrap_err().to_string();
    assert!(e.contains("/f") && e.contains("gid 10"), "{e}");
}

#[test]
fn update_repairs_a_damaged_tree_with_least_work() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    std::fs::create_dir(&src).unwrap();
    make_full_tree(&src);
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = scan(&src, Some(&store));
    unpack(&m, &store, &out, &UnpackOptions::default()).unwrap();
    let j = |s: &str| out.join(s);
    let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
    let big_ino = ino(&j("a/b/big"));

    // content changed, size and mtime kept: must still be caught
    let md = std::fs::metadata(j("names/-dash")).unwrap();
    write(&j("names/-dash"), b"D\n");
    set_mtime(&j("names/-dash"), md.mtime(), md.mtime_nsec());
    // metadata drift
    chmod(&j("perm/setuid"), 0o755);
    std::os::unix::fs::lchown(j("a/hello"), Some(9), Some(9)).unwrap();
    rustix::fs::setxattr(j("a"), "user.extra", b"x", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::removexattr(j("cap"), "security.capability").unwrap();
    set_mtime(&j("empty"), 5, 5);
    // extra entries, one in a read-only directory tree
    write(&j("extra-file"), b"x");
    std::fs::create_dir_all(j("extra-dir/d")).unwrap();
    write(&j("extra-dir/d/f"), b"x");
    chmod(&j("extra-dir/d"), 0o555);
    chmod(&j("extra-dir"), 0o000);
    // type changes
    std::fs::remove_dir(j("empty")).unwrap();
    write(&j("empty"), b"now a file");
    std::fs::remove_file(j("empty-file")).unwrap();
    std::fs::create_dir_all(j("empty-file/x")).unwrap();
    std::fs::remove_file(j("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", j("link")).unwrap();
    // a hardlink broken into a copy, another replaced by a symlink
    std::fs::remove_file(j("hl-1")).unwrap();
    write(&j("hl-1"), b"hello, world\n");
    std::fs::remove_file(j("a/b/hl-2")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", j("a/b/hl-2")).unwrap();
    // something missing, and a leftover temporary file of a killed unpack
    std::fs::remove_file(j("sparse")).unwrap();
    write(&j("a/.ocix-tmp.1.1"), b"partial");
    // an inherited default ACL makes new children get ACLs they must not keep
    setfacl(&["-d", "-m", "u:77:rwx"], &out);

    let r = unpack(&m, &store, &out, &UnpackOptions { update: true, ..Default::default() }).unwrap();
    let back = scan(&out, None);
    assert_eq!(back.to_bytes().unwrap(), m.to_bytes().unwrap(), "{back:#?}");
    // untouched content is not rewritten
    assert_eq!(ino(&j("a/b/big")), big_ino);
    assert!(r.files_kept >= 5, "{r:?}");
    assert!(r.removed >= 5, "{r:?}");
    assert_eq!(std::fs::read(j("names/-dash")).unwrap(), b"d\n");
    assert_eq!(ino(&j("hl-1")), ino(&j("a/hello")));
    assert_eq!(ino(&j("a/b/hl-2")), ino(&j("a/hello")));
    assert!(names_containing(&out, b".ocix-tmp").is_empty());
    assert!(std::fs::symlink_metadata("/etc/passwd").is_ok());
}

#[test]
fn killed_unpack_then_update_ends_in_the_exact_tree() {
    let t = tempfile::tempdir().unwrap();
    let (src, s, out) = (t.path().join("src"), t.path().join("store"), t.path().join("out"));
    std::fs::create_dir(&src).unwrap();
    make_full_tree(&src);
    // many files, so that the unpack is still writing them when stopped
    std::fs::create_dir(src.join("many")).unwrap();
    for i in 0..1500 {
        write(&src.join(format!("many/{i:04}")), &common::noise(3000 + i, i as u64));
    }
    set_mtime(&src.join("many"), 1, 0);
    let store = Store::create(&s).unwrap();
    let m = scan(&src, Some(&store));
    let mpath = t.path().join("m");
    std::fs::write(&mpath, m.to_bytes().unwrap()).unwrap();
    // Whatever state the tree is in, --update must end in the exact tree.
    // The unpack is stopped (SIGSTOP) once `done` files of many/ exist, so
    // the kill lands at a known point mid-way, then killed.
    let written = || {
        std::fs::read_dir(out.join("many"))
            .map(|d| d.filter(|e| !e.as_ref().unwrap().file_name().as_bytes().starts_with(b".ocix-tmp")).count())
            .unwrap_or(0)
    };
    for done in [1usize, 300, 900] {
        let _ = std::fs::remove_dir_all(&out);
        let mut child = common::ocix()
            .args([OsStr::new("unpack"), mpath.as_os_str(), OsStr::new("--store"), s.as_os_str(), out.as_os_str()])
            .spawn()
            .unwrap();
        while written() < done {
            let exit = child.try_wait().unwrap();
            assert!(exit.is_none(), "the unpack ended ({exit:?}) before {done} files of many/ were written");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        // mid-way: running when stopped, started and not finished
        assert!(child.try_wait().unwrap().is_none(), "the unpack had exited before the kill");
        let n = written();
        assert!(n >= done && n < 1500, "{n} of 1500 files of many/ written when the unpack was stopped");
        let _ = child.kill();
        let _ = child.wait();
        let o = common::run(&[
            OsStr::new("unpack"),
            mpath.as_os_str(),
            OsStr::new("--store"),
            s.as_os_str(),
            OsStr::new("--update"),
            out.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(scan(&out, None).to_bytes().unwrap(), m.to_bytes().unwrap(), "after a kill at {n} of 1500 files");
    }
}

#[test]
fn sockets_are_skipped_and_reported() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("s")).unwrap();
    let mut m = Manifest::default();
    let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
    c.insert(b"sock".to_vec(), Entry::new(Kind::Socket));
    let out = t.path().join("out");
    // progress reported: must not disturb anything else
    let opts = UnpackOptions { progress: Progress::to(Arc::new(Tally::default())), ..Default::default() };
    let r = unpack(&m, &store, &out, &opts).unwrap();
    assert_eq!(r.not_applied.len(), 1);
    assert_eq!(r.not_applied[0].kind, NotAppliedKind::Socket);
    assert!(r.summary(3)[0].contains("/sock"), "{:?}", r.summary(3));
    assert!(dir_is_empty(&out));
}

// ------------------------------------------- hardlinks to symlinks, fifos, devices

/// Makes `new` another name of `old` (both relative to `root`), never
/// following a symlink.
fn link(root: &Path, old: &str, new: &str) {
    rustix::fs::linkat(rustix::fs::CWD, root.join(old), rustix::fs::CWD, root.join(new), rustix::fs::AtFlags::empty())
        .unwrap_or_else(|e| panic!("link {old} {new}: {e}"));
}

/// A tree whose hardlink groups are a symlink, a fifo, a char and a block
/// device (the devices only as root) and, for comparison, a regular file;
/// in two groups a link sorts before the name it was made from.
fn make_special_links(root: &Path) {
    let j = |s: &str| root.join(s);
    std::fs::create_dir(j("tmp")).unwrap();
    std::fs::create_dir(j("dev")).unwrap();
    std::os::unix::fs::symlink("target", j("symlink")).unwrap();
    link(root, "symlink", "tmp/symlink_hard");
    rustix::fs::mknodat(rustix::fs::CWD, j("fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::empty(), 0).unwrap();
    chmod(&j("fifo"), 0o640);
    link(root, "fifo", "a-fifo");
    link(root, "fifo", "tmp/fifo3");
    write(&j("file"), b"data\n");
    link(root, "file", "tmp/file_hard");
    if is_root() {
        let dev = |p: &str, ty, mode, (ma, mi)| {
            rustix::fs::mknodat(rustix::fs::CWD, j(p), ty, rustix::fs::Mode::empty(), rustix::fs::makedev(ma, mi))
                .unwrap();
            chmod(&j(p), mode);
        };
        dev("dev/null", rustix::fs::FileType::CharacterDevice, 0o666, (1, 3));
        link(root, "dev/null", "dev/null2");
        link(root, "dev/null", "tmp/null3");
        dev("loop0", rustix::fs::FileType::BlockDevice, 0o660, (7, 0));
        link(root, "loop0", "dev/a-loop");
        std::os::unix::fs::lchown(j("loop0"), Some(0), Some(6)).unwrap();
        std::os::unix::fs::lchown(j("symlink"), Some(12), Some(34)).unwrap();
    }
    for p in ["tmp", "dev", ""] {
        set_mtime(&j(p), 1_700_000_000, 0);
    }
    for (i, p) in ["symlink", "fifo", "file", "dev/null", "loop0"].iter().enumerate() {
        if j(p).symlink_metadata().is_ok() {
            set_mtime(&j(p), 1_600_000_000 + i as i64, 7);
        }
    }
}

/// Every group of names sharing an inode (directories aside), each group
/// sorted; checks on the way that each name's st_nlink is its group's size.
fn inode_groups(root: &Path) -> std::collections::BTreeSet<Vec<String>> {
    let mut by: std::collections::HashMap<(u64, u64), Vec<String>> = Default::default();
    let mut nlinks: Vec<(String, u64)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            nlinks.push((rel.clone(), md.nlink()));
            by.entry((md.dev(), md.ino())).or_default().push(rel);
        }
    }
    for (rel, n) in nlinks {
        let group = by.values().find(|g| g.contains(&rel)).unwrap();
        assert_eq!(n, group.len() as u64, "{}: st_nlink {n}, names {group:?}", root.join(&rel).display());
    }
    by.into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

fn groups(list: &[&[&str]]) -> std::collections::BTreeSet<Vec<String>> {
    list.iter().map(|g| g.iter().map(|s| s.to_string()).collect()).collect()
}

#[test]
fn hardlinked_symlinks_fifos_devices_round_trip_with_the_same_inodes() {
    assert!(is_root(), "this test makes device nodes");
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    std::fs::create_dir(&src).unwrap();
    make_special_links(&src);
    let want = groups(&[
        &["symlink", "tmp/symlink_hard"],
        &["a-fifo", "fifo", "tmp/fifo3"],
        &["file", "tmp/file_hard"],
        &["dev/null", "dev/null2", "tmp/null3"],
        &["dev/a-loop", "loop0"],
    ]);
    assert_eq!(inode_groups(&src), want);
    let store = Store::create(&t.path().join("store")).unwrap();
    let m = scan(&src, Some(&store));
    let hl = |p: &str| Kind::Hardlink(p.as_bytes().to_vec());
    assert_eq!(m.get(b"tmp/symlink_hard").unwrap().kind, hl("symlink"));
    assert_eq!(m.get(b"a-fifo").unwrap().kind, Kind::Fifo);
    assert_eq!(m.get(b"fifo").unwrap().kind, hl("a-fifo"));
    assert_eq!(m.get(b"tmp/fifo3").unwrap().kind, hl("a-fifo"));
    assert_eq!(m.get(b"dev/null2").unwrap().kind, hl("dev/null"));
    assert_eq!(m.get(b"tmp/null3").unwrap().kind, hl("dev/null"));
    assert_eq!(m.get(b"dev/a-loop").unwrap().meta.gid, 6);
    assert_eq!(m.get(b"loop0").unwrap().kind, hl("dev/a-loop"));
    assert_eq!(m.get(b"symlink").unwrap().meta.uid, 12);

    let r = unpack(&m, &store, &out, &UnpackOptions::default()).unwrap();
    assert_eq!(r.hardlinks, 7);
    assert!(r.not_applied.is_empty(), "{:?}", r.not_applied);
    assert_eq!(inode_groups(&out), want);
    assert_eq!(scan(&out, Some(&store)).to_bytes().unwrap(), m.to_bytes().unwrap());
    assert_eq!(std::fs::read_link(out.join("tmp/symlink_hard")).unwrap(), Path::new("target"));

    // --update over the exact tree keeps every link; over a tree where each
    // group was broken into copies (or a directory took a name) it links again
    let r = unpack(&m, &store, &out, &UnpackOptions { update: true, ..Default::default() }).unwrap();
    assert_eq!((r.removed, r.hardlinks), (0, 7));
    std::fs::remove_file(out.join("tmp/symlink_hard")).unwrap();
    std::os::unix::fs::symlink("target", out.join("tmp/symlink_hard")).unwrap();
    std::fs::remove_file(out.join("tmp/fifo3")).unwrap();
    std::fs::create_dir(out.join("tmp/fifo3")).unwrap();
    std::fs::remove_file(out.join("dev/null2")).unwrap();
    write(&out.join("dev/null2"), b"not a device\n");
    let r = unpack(&m, &store, &out, &UnpackOptions { update: true, ..Default::default() }).unwrap();
    assert_eq!(r.removed, 3);
    assert_eq!(inode_groups(&out), want);
    assert_eq!(scan(&out, None).to_bytes().unwrap(), m.to_bytes().unwrap());
}

#[test]
fn rootless_unpack_links_the_placeholder_of_a_hardlinked_device() {
    assert!(is_root(), "this test drops privileges from root");
    let t = open_tempdir();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_special_links(&src);
    let (mpath, s, out) = prepare_for_nobody(t.path(), &src);
    let m = Manifest::from_bytes(&std::fs::read(&mpath).unwrap()).unwrap();
    let o =
        as_nobody(&[OsStr::new("unpack"), mpath.as_os_str(), OsStr::new("--store"), s.as_os_str(), out.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // every name of a device is reported, and is the one placeholder file
    assert!(err.contains("5 devices written as empty files"), "{err}");
    assert!(err.contains("/dev/null2 (char 1:3, hardlink to /dev/null)"), "{err}");
    assert_eq!(
        inode_groups(&out),
        groups(&[
            &["symlink", "tmp/symlink_hard"],
            &["a-fifo", "fifo", "tmp/fifo3"],
            &["file", "tmp/file_hard"],
            &["dev/null", "dev/null2", "tmp/null3"],
            &["dev/a-loop", "loop0"],
        ])
    );
    let null = std::fs::symlink_metadata(out.join("tmp/null3")).unwrap();
    assert!(null.is_file() && null.len() == 0 && null.uid() == 65534, "{null:?}");
    assert!(std::fs::symlink_metadata(out.join("fifo")).unwrap().file_type().is_fifo());
    // scanned back: the manifest, devices as files (their links to them)
    assert_eq!(strip_names(&scan_rootless(&out)), rootless_expectation(&m));
    // --update as nobody keeps it so
    let o = as_nobody(&[
        OsStr::new("unpack"),
        mpath.as_os_str(),
        OsStr::new("--store"),
        s.as_os_str(),
        OsStr::new("--update"),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(strip_names(&scan_rootless(&out)), rootless_expectation(&m));
    assert_eq!(inode_groups(&out).len(), 5);
}

#[test]
fn hardlinked_sockets_are_recorded_skipped_and_reported() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let _l = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    link(&src, "sock", "sock2");
    let store = Store::create(&t.path().join("s")).unwrap();
    let m = scan(&src, None);
    assert_eq!(m.get(b"sock").unwrap().kind, Kind::Socket);
    assert_eq!(m.get(b"sock2").unwrap().kind, Kind::Hardlink(b"sock".to_vec()));
    let out = t.path().join("out");
    let r = unpack(&m, &store, &out, &UnpackOptions::default()).unwrap();
    let mut paths: Vec<_> = r.not_applied.iter().map(|n| (n.kind, n.path.clone())).collect();
    paths.sort();
    assert_eq!(paths, [(NotAppliedKind::Socket, b"sock".to_vec()), (NotAppliedKind::Socket, b"sock2".to_vec())]);
    assert_eq!(r.hardlinks, 0);
    assert!(dir_is_empty(&out));
}

// ------------------------------------------- fresh destinations: skipped calls

/// Into a fresh DEST, calls that would change nothing are skipped (the chown
/// to the creating user's ids, the listing of xattrs of a new file, the chmod
/// of a mode `open` already gave). Whatever the surroundings make a new
/// entry look like (a strict umask, a setgid parent of another group, a
/// default ACL on the parent or on an empty DEST), the tree still scans back
/// to the manifest.
#[test]
fn fresh_unpack_is_exact_whatever_umask_setgid_parent_or_default_acl() {
    assert!(is_root(), "this test sets owners and groups");
    let t = open_tempdir();
    let (src, s) = (t.path().join("src"), t.path().join("store"));
    std::fs::create_dir(&src).unwrap();
    make_full_tree(&src);
    // modes a umask would cut, an empty file among them, and one small
    // content many times (read once, then written from memory)
    for (name, mode) in [("g664", 0o664), ("p600", 0o600), ("o606", 0o606), ("x777", 0o777)] {
        write(&src.join(name), name.as_bytes());
        chmod(&src.join(name), mode);
    }
    write(&src.join("e664"), b"");
    chmod(&src.join("e664"), 0o664);
    std::fs::create_dir(src.join("same")).unwrap();
    for i in 0..40 {
        write(&src.join(format!("same/{i}")), b"one content, many files\n");
    }
    chmod(&src.join("same"), 0o775);
    set_mtime(&src.join("same"), 1_600_000_000, 7);
    // directories made with their final mode where the umask keeps it,
    // 0700 and a chmod at the end otherwise
    for (name, mode) in [("d750", 0o750), ("d705", 0o705), ("d711", 0o711), ("d2750", 0o2750), ("d1755", 0o1755)] {
        std::fs::create_dir(src.join(name)).unwrap();
        std::fs::create_dir(src.join(name).join("sub")).unwrap();
        write(&src.join(name).join("f"), name.as_bytes());
        chmod(&src.join(name), mode);
        set_mtime(&src.join(name), 1_500_000_000, 3);
    }
    set_mtime(&src, 1_600_000_000, 42);
    let store = Store::create(&s).unwrap();
    let m = scan(&src, Some(&store));
    let mpath = t.path().join("m");
    std::fs::write(&mpath, m.to_bytes().unwrap()).unwrap();
    let check = |out: &Path, what: &str| {
        let back = scan(out, None);
        assert_eq!(back.to_bytes().unwrap(), m.to_bytes().unwrap(), "{what}: {back:#?}");
    };

    // umasks of 077 and 000, through the command line in a shell that sets them
    for umask in ["077", "000"] {
        let out = t.path().join(format!("umask{umask}"));
        let o = Command::new("sh")
            .args(["-c", &format!("umask {umask} && exec \"$0\" unpack \"$1\" --store \"$2\" \"$3\"")])
            .arg(env!("CARGO_BIN_EXE_ocix"))
            .args([mpath.as_os_str(), s.as_os_str(), out.as_os_str()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        check(&out, &format!("umask {umask}"));
    }

    // DEST made inside a setgid directory of another group: new entries
    // take that group, not the unpacking user's
    let parent = t.path().join("sgid-parent");
    std::fs::create_dir(&parent).unwrap();
    std::os::unix::fs::lchown(&parent, None, Some(4321)).unwrap();
    chmod(&parent, 0o2775);
    unpack(&m, &store, &parent.join("out"), &UnpackOptions::default()).unwrap();
    check(&parent.join("out"), "setgid parent");

    // DEST made inside a directory with a default ACL: it and every new
    // entry inherit ACLs the manifest does not have
    let parent = t.path().join("acl-parent");
    std::fs::create_dir(&parent).unwrap();
    setfacl(&["-d", "-m", "u:77:rwx,g:78:r"], &parent);
    unpack(&m, &store, &parent.join("out"), &UnpackOptions::default()).unwrap();
    check(&parent.join("out"), "default ACL on the parent");

    // an empty DEST of its own with a default ACL
    let out = t.path().join("acl-dest");
    std::fs::create_dir(&out).unwrap();
    setfacl(&["-d", "-m", "u:77:rwx"], &out);
    unpack(&m, &store, &out, &UnpackOptions::default()).unwrap();
    check(&out, "default ACL on an empty DEST");
}

// ------------------------------------------- progress

/// An unpack reports one piece of work, declared as the manifest's file
/// bytes, and reports every one of them done before it ends; a scan
/// reports the bytes it hashed and the entries it met.
#[test]
fn unpack_and_scan_report_their_bytes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    let store = Store::create(&t.path().join("s")).unwrap();
    let tally = Arc::new(Tally::default());
    let sopts = ScanOptions { progress: Progress::to(tally.clone()), ..Default::default() };
    let scan = scan_dir(&src, Some(&store), &sopts).unwrap();
    let scans = tally.of(Work::Scan);
    assert_eq!(scans.len(), 1);
    assert_eq!(*scans[0].bytes.lock().unwrap(), None);
    assert_eq!(scans[0].done.load(std::sync::atomic::Ordering::Relaxed), scan.bytes);
    assert!(scans[0].ended.load(std::sync::atomic::Ordering::Relaxed));
    let tree = scan.manifest.to_tree();
    let total: u64 =
        tree.walk().filter_map(|(_, e)| if let Kind::File(f) = &e.kind { Some(f.size) } else { None }).sum();
    assert!(total > 0);
    let opts = UnpackOptions { progress: Progress::to(tally.clone()), ..Default::default() };
    unpack(&tree, &store, &t.path().join("out"), &opts).unwrap();
    let unpacks = tally.of(Work::Unpack);
    assert_eq!(unpacks.len(), 1);
    assert_eq!(*unpacks[0].bytes.lock().unwrap(), Some(total));
    assert_eq!(unpacks[0].done.load(std::sync::atomic::Ordering::Relaxed), total);
    assert!(unpacks[0].ended.load(std::sync::atomic::Ordering::Relaxed));
}
