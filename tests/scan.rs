//! `ocix scan` end to end: real trees on disk, the binary, the store.

mod common;

use common::*;
use ocix::manifest::{Dev, Digest, Kind, Manifest};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn scan(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("scan"), dir.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let out = run(&args);
    assert!(out.status.success(), "scan failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn scan_is_identical_across_creation_order_and_filesystems() {
    let a = tempfile::tempdir().unwrap();
    make_tree(a.path(), false);
    // tmpfs when available: a different filesystem with other inode numbers
    let shm = Path::new("/dev/shm");
    let b = if shm.is_dir() { tempfile::tempdir_in(shm).unwrap() } else { tempfile::tempdir().unwrap() };
    make_tree(b.path(), true);
    let ma = scan(a.path(), &[]);
    let mb = scan(b.path(), &[]);
    assert!(ma == mb, "manifests differ between the two builds");
    // and across runs
    assert_eq!(scan(a.path(), &["--threads", "1"]), ma);
}

#[test]
fn scan_records_every_kind_of_entry() {
    let t = tempfile::tempdir().unwrap();
    make_tree(t.path(), false);
    let m = Manifest::from_bytes(&scan(t.path(), &[])).unwrap();
    let get = |p: &[u8]| m.get(p).unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(p)));

    // regular file with xattrs and a nanosecond mtime; its first name in
    // manifest order is a/b/hl-2 (a/b sorts before a/hello), which carries it
    let hello = get(b"a/b/hl-2");
    let Kind::File(f) = &hello.kind else { panic!("a/hello not a file") };
    assert_eq!(f.size, 13);
    assert_eq!(f.digest, Some(Digest::of(b"hello, world\n")));
    assert_eq!(hello.meta.mtime.sec, 1_234_567_890);
    assert_eq!(hello.meta.mtime.nsec, 123_456_789);
    assert_eq!(hello.meta.xattrs.get(&b"user.greeting"[..]).map(|v| v.as_slice()), Some(&b"hi"[..]));
    assert_eq!(hello.meta.xattrs.get(&b"user.bin"[..]).map(|v| v.as_slice()), Some(&[0u8, 255, 0, 254][..]));
    assert_eq!(get(b"a").meta.xattrs.len(), 1);

    // hardlinks point at the first name in manifest order
    assert_eq!(get(b"hl-1").kind, Kind::Hardlink(b"a/b/hl-2".to_vec()));
    assert_eq!(get(b"a/hello").kind, Kind::Hardlink(b"a/b/hl-2".to_vec()));

    // zero runs: sparse file (holes on disk) and a written zero block
    let Kind::File(sp) = &get(b"sparse").kind else { panic!() };
    assert_eq!(sp.size, 8 << 20);
    // data at block 256 (1 MiB) and blocks 1280..=1282 (5 MiB, 10000 bytes)
    assert_eq!(sp.zeros, vec![(0, 256), (257, 1023), (1283, 765)]);
    let Kind::File(z) = &get(b"a/b/zero4k").kind else { panic!() };
    assert_eq!(z.zeros, vec![(0, 1)]);
    assert_eq!(get(b"a/b/zero4k").meta.mtime.sec, 0);
    let Kind::File(e) = &get(b"empty-file").kind else { panic!() };
    assert_eq!((e.size, e.digest), (0, None));

    // symlinks, fifo, modes
    assert_eq!(get(b"link").kind, Kind::Symlink(b"a/hello".to_vec()));
    assert_eq!(get(b"dangling").kind, Kind::Symlink(b"does-not-exist".to_vec()));
    assert_eq!(get(b"fifo").kind, Kind::Fifo);
    assert_eq!(get(b"fifo").meta.mode, 0o620);
    assert_eq!(get(b"perm/setuid").meta.mode, 0o4755);
    assert_eq!(get(b"perm/none").meta.mode, 0);
    assert_eq!(get(b"perm/sticky").meta.mode, 0o1777);
    assert_eq!(get(b"empty").meta.mtime.sec, -86400);

    // names kept as bytes
    assert!(m.get(b"names/\xff\xfe-latin1").is_some());
    assert!(m.get(b"names/new\nline").is_some());
    assert!(m.get("names/ünï".as_bytes()).is_some());

    if is_root() {
        assert_eq!(get(b"null").kind, Kind::Char(Dev { major: 1, minor: 3 }));
        assert_eq!(get(b"loop0").kind, Kind::Block(Dev { major: 7, minor: 0 }));
        assert_eq!((get(b"loop0").meta.gid, get(b"loop0").meta.mode), (6, 0o660));
        assert_eq!((get(b"names/with space").meta.uid, get(b"names/with space").meta.gid), (1000, 1000));
        assert_eq!(get(b"link").meta.uid, 65534);
    }
}

#[test]
fn store_gets_every_blob_once_and_sparse() {
    let t = tempfile::tempdir().unwrap();
    make_tree(t.path(), false);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let out = run(&[OsStr::new("scan"), t.path().as_os_str(), OsStr::new("--store"), store.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Manifest::from_bytes(&out.stdout).unwrap();
    let mut want = std::collections::BTreeSet::new();
    for (_, e) in m.walk() {
        if let Kind::File(f) = &e.kind {
            if let Some(d) = f.digest {
                want.insert(d.hex());
            }
        }
    }
    let blobs = store.join("blobs/sha256");
    let mut have = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(Digest::of(&data).hex(), name, "blob content does not match its name");
        have.insert(name);
    }
    assert_eq!(have, want);
    // the sparse file's blob keeps its holes: 8 MiB apparent, ~20 KiB allocated
    let Kind::File(sp) = &m.get(b"sparse").unwrap().kind else { panic!() };
    let md = std::fs::metadata(blobs.join(sp.digest.unwrap().hex())).unwrap();
    assert_eq!(md.len(), 8 << 20);
    assert!(md.blocks() * 512 < 1 << 20, "sparse blob allocated {} bytes", md.blocks() * 512);
    // a second scan rewrites nothing: same inode for each blob
    let ino = std::fs::metadata(blobs.join(sp.digest.unwrap().hex())).unwrap().ino();
    let out2 = run(&[OsStr::new("scan"), t.path().as_os_str(), OsStr::new("--store"), store.as_os_str()]);
    assert!(out2.status.success());
    assert_eq!(out2.stdout, out.stdout);
    assert_eq!(std::fs::metadata(blobs.join(sp.digest.unwrap().hex())).unwrap().ino(), ino);
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), want.len());
}

#[test]
fn exclude_patterns_by_name_and_by_path() {
    let t = tempfile::tempdir().unwrap();
    make_tree(t.path(), false);
    let m = Manifest::from_bytes(&scan(t.path(), &["--exclude", "hl-*", "--exclude", "/a/b"])).unwrap();
    assert!(m.get(b"hl-1").is_none());
    assert!(m.get(b"a/b").is_none());
    assert!(m.get(b"a/b/big").is_none());
    assert!(m.get(b"a/hello").is_some());
    let out = run(&[OsStr::new("scan"), t.path().as_os_str(), OsStr::new("--exclude"), OsStr::new("a[")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exclude"));
}

#[test]
fn rootless_scan_reads_owner_from_xattr() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("owned");
    write(&f, b"x");
    // uid 1000, gid 0 -> gid carried as "no change" (0xffffffff)
    let payload = ocix::rootless::encode(1000, 0).unwrap().unwrap();
    rustix::fs::setxattr(&f, "user.rootlesscontainers", &payload, rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&f, "user.other", b"kept", rustix::fs::XattrFlags::empty()).unwrap();
    let m = Manifest::from_bytes(&scan(t.path(), &["--rootless"])).unwrap();
    let e = m.get(b"owned").unwrap();
    assert_eq!((e.meta.uid, e.meta.gid), (1000, 0));
    assert!(!e.meta.xattrs.contains_key(&b"user.rootlesscontainers"[..]));
    assert!(e.meta.xattrs.contains_key(&b"user.other"[..]));
    // root dir without xattr: owner 0:0 whatever the disk says
    assert_eq!((m.root.meta.uid, m.root.meta.gid), (0, 0));
    // a broken payload is an error naming the file
    rustix::fs::setxattr(&f, "user.rootlesscontainers", &[0x08], rustix::fs::XattrFlags::empty()).unwrap();
    let out = run(&[OsStr::new("scan"), t.path().as_os_str(), OsStr::new("--rootless")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owned") && err.contains("rootlesscontainers"), "{err}");
}

#[test]
fn missing_or_non_directory_root_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    let out = run(&[OsStr::new("scan"), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let file = t.path().join("file");
    write(&file, b"x");
    let out = run(&[OsStr::new("scan"), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file") && err.contains("directory"), "{err}");
}

#[test]
fn unreadable_entries_fail_the_scan_and_name_every_path() {
    if !is_root() {
        eprintln!("skipped: needs root to drop privileges");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let d = t.path().join("tree");
    std::fs::create_dir(&d).unwrap();
    write(&d.join("readable"), b"ok");
    write(&d.join("secret"), b"no");
    chmod(&d.join("secret"), 0o600);
    std::fs::create_dir(d.join("locked")).unwrap();
    chmod(&d.join("locked"), 0o700);
    let out = ocix_as_nobody().arg("scan").arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tree/secret") && err.contains("Permission denied"), "{err}");
    assert!(err.contains("tree/locked"), "{err}");
    assert!(out.stdout.is_empty(), "no manifest on failure");
}

#[test]
fn output_file_and_digest_agree() {
    let t = tempfile::tempdir().unwrap();
    make_tree(t.path(), false);
    let o = tempfile::tempdir().unwrap();
    let mpath = o.path().join("m.ocix");
    let out = run(&[OsStr::new("scan"), t.path().as_os_str(), OsStr::new("-o"), mpath.as_os_str()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let bytes = std::fs::read(&mpath).unwrap();
    let out = run(&[OsStr::new("digest"), mpath.as_os_str()]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), Digest::of(&bytes).to_string());
    // digest refuses a file that is not a manifest, naming it
    let bad = o.path().join("bad");
    write(&bad, b"not cbor");
    let out = run(&[OsStr::new("digest"), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad"));
}

#[test]
fn symlinked_directories_are_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("outside-file"), b"must not be scanned");
    std::os::unix::fs::symlink(outside.path(), t.path().join("escape")).unwrap();
    let m = Manifest::from_bytes(&scan(t.path(), &[])).unwrap();
    assert!(matches!(m.get(b"escape").unwrap().kind, Kind::Symlink(_)));
    assert!(m.get(b"escape/outside-file").is_none());
    assert_eq!(m.walk().count(), 2);
    let _ = OsStr::from_bytes(b"");
}

#[test]
fn rootless_scan_reads_what_its_owner_may_not_and_restores_modes() {
    if !is_root() {
        eprintln!("skipped: needs root to prepare a tree owned by nobody");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let d = t.path().join("tree");
    std::fs::create_dir(&d).unwrap();
    write(&d.join("mode-0000"), b"locked");
    std::fs::create_dir(d.join("wx-only")).unwrap();
    write(&d.join("wx-only/inner"), b"inner");
    let payload = ocix::rootless::encode(1000, 1000).unwrap().unwrap();
    rustix::fs::setxattr(d.join("mode-0000"), "user.rootlesscontainers", &payload, rustix::fs::XattrFlags::empty())
        .unwrap();
    for p in ["", "mode-0000", "wx-only", "wx-only/inner"] {
        std::os::unix::fs::lchown(d.join(p), Some(65534), Some(65534)).unwrap();
    }
    chmod(&d.join("mode-0000"), 0o000);
    chmod(&d.join("wx-only"), 0o311);
    let out = ocix_as_nobody().args(["scan", "--rootless"]).arg(&d).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Manifest::from_bytes(&out.stdout).unwrap();
    let f = m.get(b"mode-0000").unwrap();
    assert_eq!((f.meta.mode, f.meta.uid, f.meta.gid), (0, 1000, 1000));
    assert_eq!(
        f.kind,
        Kind::File(ocix::manifest::File { size: 6, digest: Some(Digest::of(b"locked")), zeros: vec![] })
    );
    assert_eq!(m.get(b"wx-only").unwrap().meta.mode, 0o311);
    assert!(m.get(b"wx-only/inner").is_some());
    // modes are back as they were
    assert_eq!(std::fs::symlink_metadata(d.join("mode-0000")).unwrap().mode() & 0o7777, 0);
    assert_eq!(std::fs::symlink_metadata(d.join("wx-only")).unwrap().mode() & 0o7777, 0o311);
    // without --rootless the same user gets a clear error naming the file
    let out = ocix_as_nobody().arg("scan").arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode-0000"));
}

#[test]
fn output_to_a_device_or_fifo_writes_into_it_and_never_replaces_it() {
    if !is_root() {
        eprintln!("skipped: needs root for mknod");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    // a private null device, standing for /dev/null
    let null = t.path().join("null");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &null,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let out = run(&[OsStr::new("scan"), tree.as_os_str(), OsStr::new("-o"), null.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::symlink_metadata(&null).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&md.file_type()), "-o replaced the device with a file");
    // a symlink to a file: the target is written, the symlink stays
    let target = t.path().join("target");
    std::os::unix::fs::symlink(&target, t.path().join("link")).unwrap();
    let link = t.path().join("link");
    write(&target, &[b'x'; 100_000]);
    let out = run(&[OsStr::new("scan"), tree.as_os_str(), OsStr::new("-o"), link.as_os_str()]);
    assert!(out.status.success());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(Manifest::from_bytes(&std::fs::read(&target).unwrap()).is_ok());
}

// ------------------------------------------- hardlinks to symlinks, fifos, devices, sockets

#[test]
fn scan_records_hardlinks_of_every_type_but_directories() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let link = |old: &str, new: &str| {
        rustix::fs::linkat(rustix::fs::CWD, r.join(old), rustix::fs::CWD, r.join(new), rustix::fs::AtFlags::empty())
            .unwrap_or_else(|e| panic!("link {old} {new}: {e}"))
    };
    std::os::unix::fs::symlink("t", r.join("s")).unwrap();
    link("s", "s2");
    rustix::fs::mknodat(rustix::fs::CWD, r.join("f"), rustix::fs::FileType::Fifo, rustix::fs::Mode::empty(), 0)
        .unwrap();
    link("f", "e"); // sorts before f: it is the first name
    let _l = std::os::unix::net::UnixListener::bind(r.join("k")).unwrap();
    link("k", "k2");
    if is_root() {
        let dev = rustix::fs::makedev(1, 3);
        let ty = rustix::fs::FileType::CharacterDevice;
        rustix::fs::mknodat(rustix::fs::CWD, r.join("c"), ty, rustix::fs::Mode::empty(), dev).unwrap();
        link("c", "c2");
    }
    // one symlink more with the same target, not linked: its own entry
    std::os::unix::fs::symlink("t", r.join("s3")).unwrap();
    let m = Manifest::from_bytes(&scan(r, &[])).unwrap();
    let kind = |p: &str| m.get(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing")).kind.clone();
    let hl = |p: &str| Kind::Hardlink(p.as_bytes().to_vec());
    assert_eq!(kind("s"), Kind::Symlink(b"t".to_vec()));
    assert_eq!(kind("s2"), hl("s"));
    assert_eq!(kind("s3"), Kind::Symlink(b"t".to_vec()));
    assert_eq!(kind("e"), Kind::Fifo);
    assert_eq!(kind("f"), hl("e"));
    assert_eq!(kind("k"), Kind::Socket);
    assert_eq!(kind("k2"), hl("k"));
    if is_root() {
        assert_eq!(kind("c"), Kind::Char(Dev { major: 1, minor: 3 }));
        assert_eq!(kind("c2"), hl("c"));
    }
    // the first name left out: the next name carries the inode
    let m = Manifest::from_bytes(&scan(r, &["--exclude", "e", "--exclude", "s"])).unwrap();
    assert_eq!(m.get(b"f").unwrap().kind, Kind::Fifo);
    assert_eq!(m.get(b"s2").unwrap().kind, Kind::Symlink(b"t".to_vec()));
}

// ------------------------------------------------------------ device numbers at Linux's limits

#[test]
fn device_numbers_at_linuxs_limits_scan_and_unpack_exactly() {
    assert!(is_root(), "tests run as root");
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    // the 12 bits of major and 20 of minor, each side of the byte splits of dev_t
    let devs = [(4095u32, 1_048_575u32), (0, 256), (256, 0), (255, 255), (1, 3)];
    for (i, &(major, minor)) in devs.iter().enumerate() {
        let ty = if i % 2 == 0 { rustix::fs::FileType::CharacterDevice } else { rustix::fs::FileType::BlockDevice };
        let p = tree.join(format!("d{i}"));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            ty,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
    }
    let mpath = t.path().join("m");
    let out = run(&[OsStr::new("scan"), tree.as_os_str(), OsStr::new("-o"), mpath.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Manifest::from_bytes(&std::fs::read(&mpath).unwrap()).unwrap();
    for (i, &(major, minor)) in devs.iter().enumerate() {
        let want = Dev { major, minor };
        let got = &m.get(format!("d{i}").as_bytes()).unwrap().kind;
        assert!(matches!(got, Kind::Char(d) | Kind::Block(d) if *d == want), "d{i}: {got:?}, want {want:?}");
    }
    // and unpack makes exactly those devices again
    let dest = t.path().join("dest");
    let store = t.path().join("store");
    std::fs::create_dir_all(store.join("blobs/sha256")).unwrap();
    let out =
        run(&[OsStr::new("unpack"), mpath.as_os_str(), OsStr::new("--store"), store.as_os_str(), dest.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, &(major, minor)) in devs.iter().enumerate() {
        let rdev = std::fs::symlink_metadata(dest.join(format!("d{i}"))).unwrap().rdev();
        assert_eq!((rustix::fs::major(rdev), rustix::fs::minor(rdev)), (major, minor), "d{i}");
    }
}

// ------------------------------------------------------- the nesting limit

/// `dirs` directories nested one in the other (`d/d/...`), with a symlink
/// `l` inside the deepest when `leaf`.
fn deep_model(dirs: usize, leaf: bool) -> Manifest {
    use ocix::manifest::{Entry, Meta};
    use std::collections::BTreeMap;
    let dir_meta = Meta { mode: 0o755, ..Meta::default() };
    let mut inner = BTreeMap::new();
    if leaf {
        inner.insert(
            b"l".to_vec(),
            Entry { meta: Meta { mode: 0o777, ..Meta::default() }, kind: Kind::Symlink(b"x".to_vec()) },
        );
    }
    for _ in 0..dirs {
        let d = Entry { meta: dir_meta.clone(), kind: Kind::Dir(inner) };
        inner = BTreeMap::new();
        inner.insert(b"d".to_vec(), d);
    }
    Manifest { root: Entry { meta: dir_meta, kind: Kind::Dir(inner) } }
}

/// Runs `f` on a thread with a large stack: trees 1025 levels deep are
/// dropped and compared recursively.
fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(256 << 20).spawn(f).unwrap().join().unwrap();
}

#[test]
fn nesting_limit_round_trips_at_the_limit_and_refuses_one_deeper() {
    big_stack(|| {
        let max = ocix::manifest::MAX_DEPTH;
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store");
        std::fs::create_dir_all(store.join("blobs/sha256")).unwrap();
        let dest = t.path().join("dest");
        let mpath = t.path().join("m.ocix");
        // the deepest directory allowed, with an entry inside it
        let m = deep_model(max, true);
        let bytes = ocix::manifest::encode(&m).expect("the limit itself encodes");
        assert_eq!(Manifest::from_bytes(&bytes).expect("the limit itself decodes"), m);
        std::fs::write(&mpath, &bytes).unwrap();
        let out = run(&["unpack".as_ref(), mpath.as_os_str(), "--store".as_ref(), store.as_os_str(), dest.as_os_str()]);
        assert!(out.status.success(), "unpack: {}", String::from_utf8_lossy(&out.stderr));
        assert!(scan(&dest, &[]) == bytes, "scan(unpack(M)) differs from M");
        let out = run(&["diff".as_ref(), dest.as_os_str(), mpath.as_os_str()]);
        assert!(out.status.success(), "diff: {}", String::from_utf8_lossy(&out.stdout));

        // one directory deeper, on disk: scan and diff refuse, naming it
        let deepest: std::path::PathBuf = std::iter::once(dest.clone()).chain(vec!["d".into(); max]).collect();
        std::fs::create_dir(deepest.join("d")).unwrap();
        for cmd in ["scan", "diff"] {
            let mut args = vec![cmd.as_ref(), dest.as_os_str()];
            if cmd == "diff" {
                args.push(mpath.as_os_str());
            }
            let out = run(&args);
            let e = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && out.status.code() != Some(1), "{cmd} accepted it: {e}");
            assert!(e.contains("directory nested 1025 levels below the root; the limit is 1024"), "{cmd}: {e}");
        }

        // one directory deeper, in a manifest: encoder, decoder and unpack refuse
        let m = deep_model(max + 1, false);
        let e = ocix::manifest::encode(&m).unwrap_err().to_string();
        assert!(e.contains("directory nested 1025 levels"), "{e}");
        let store = ocix::store::Store::open(&store).unwrap();
        let e = ocix::materialize::unpack(
            &ocix::manifest::Compact::from_tree(&m).unwrap(),
            &store,
            &t.path().join("d2"),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("directory nested 1025 levels"), "{e}");
        assert!(!t.path().join("d2").exists());
    });
}

// ---- empty files are described without being opened

#[test]
fn empty_files_keep_their_xattrs_and_an_unreadable_one_still_fails() {
    if !is_root() {
        eprintln!("skipped: needs root to drop privileges");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let d = t.path().join("tree");
    std::fs::create_dir(&d).unwrap();
    write(&d.join("empty"), b"");
    rustix::fs::setxattr(d.join("empty"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    chmod(&d.join("empty"), 0o000);
    write(&d.join("full"), b"data");
    let m = Manifest::from_bytes(&scan(&d, &[])).unwrap();
    let e = m.get(b"empty").unwrap();
    assert_eq!(e.kind, Kind::File(ocix::manifest::File::default()));
    assert_eq!(e.meta.mode, 0);
    assert_eq!(e.meta.xattrs.get(b"user.k".as_slice()).map(Vec::as_slice), Some(b"v".as_slice()));
    // someone who may not read it gets the same error as for a file with
    // content
    chmod(&d.join("empty"), 0o600);
    let out = ocix_as_nobody().arg("scan").arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tree/empty") && err.contains("Permission denied"), "{err}");
}

#[test]
fn files_hashed_in_batches_land_at_their_own_entries() {
    let t = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    for d in ["a", "b/c", "z"] {
        std::fs::create_dir_all(t.path().join(d)).unwrap();
        for i in 0..150u32 {
            let name = format!("{d}/f{i:03}");
            // mostly small; now and then one larger than a batch, one
            // with a zero block inside, one empty
            let content: Vec<u8> = match i % 50 {
                7 => vec![i as u8; (3 << 20) + 5],
                8 => [vec![1u8; 4096], vec![0u8; 8192], vec![2u8; 100]].concat(),
                9 => Vec::new(),
                _ => format!("{name} {}", "x".repeat(i as usize)).into_bytes(),
            };
            let p = t.path().join(&name);
            write(&p, &content);
            rustix::fs::setxattr(&p, "user.n", name.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
            if i % 3 == 0 {
                let owner = ocix::rootless::encode(1000 + i, 7).unwrap().unwrap();
                rustix::fs::setxattr(&p, "user.rootlesscontainers", &owner, rustix::fs::XattrFlags::empty()).unwrap();
            }
            want.push((name, content, i));
        }
    }
    std::fs::hard_link(t.path().join("a/f001"), t.path().join("b/link")).unwrap();
    let scan_with = |threads: usize, rootless: bool| {
        let o = ocix::scan::ScanOptions { threads, rootless, ..Default::default() };
        let s = ocix::scan::scan_dir(t.path(), None, &o).unwrap();
        assert_eq!(s.files, 450);
        s.manifest
    };
    let one = scan_with(1, true).to_bytes().unwrap();
    let m = scan_with(3, true);
    assert_eq!(m.to_bytes().unwrap(), one, "the same bytes whatever the number of threads");
    for (name, content, i) in &want {
        let n = m.get(name.as_bytes()).unwrap_or_else(|| panic!("{name} missing"));
        let f = n.file().unwrap();
        assert_eq!(f.size, content.len() as u64, "{name}");
        assert_eq!(f.digest.copied(), (!content.is_empty()).then(|| Digest::of(content)), "{name}");
        assert_eq!(f.zeros, if i % 50 == 8 { &[(1u64, 2u64)][..] } else { &[] }, "{name}");
        assert_eq!(n.xattrs().get(b"user.n"), Some(name.as_bytes()), "{name}");
        assert_eq!(n.xattrs().get(b"user.rootlesscontainers"), None, "{name}");
        let ids = if i % 3 == 0 { (1000 + i, 7) } else { (0, 0) };
        assert_eq!((n.uid(), n.gid()), ids, "{name}");
    }
    assert_eq!(m.get(b"b/link").unwrap().target(), Some(&b"a/f001"[..]));
    // without --rootless the owner xattr stays and the disk's owner counts
    let plain = scan_with(2, false);
    let n = plain.get(b"z/f003").unwrap();
    assert!(n.xattrs().get(b"user.rootlesscontainers").is_some());
    assert_eq!((n.uid(), n.gid()), (std::fs::metadata(t.path().join("z/f003")).unwrap().uid(), n.gid()));
}

#[test]
fn entries_read_by_name_keep_their_xattrs_before_and_after_a_subdirectory() {
    // empty files (as symlinks, devices, fifos) have their xattrs read by
    // name in the directory being listed; a subdirectory walked in between
    // must not move where the names after it are looked up
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let set = |p: &Path, v: &str| {
        rustix::fs::lsetxattr(p, "user.k", v.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
    };
    std::fs::create_dir_all(d.join("a/m/deeper")).unwrap();
    for (p, v) in [("a/e1", "1"), ("a/m/deeper/e2", "2"), ("a/m/e3", "3"), ("a/z", "4"), ("zz", "5")] {
        write(&d.join(p), b"");
        set(&d.join(p), v);
    }
    // the same names in the subdirectory as after it: a lookup in the
    // wrong directory would find the wrong value
    write(&d.join("a/m/deeper/z"), b"");
    set(&d.join("a/m/deeper/z"), "wrong");
    let m = Manifest::from_bytes(&scan(d, &[])).unwrap();
    for (p, v) in [("a/e1", "1"), ("a/m/deeper/e2", "2"), ("a/m/e3", "3"), ("a/z", "4"), ("zz", "5")] {
        let e = m.get(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!(e.meta.xattrs.get(b"user.k".as_slice()).map(Vec::as_slice), Some(v.as_bytes()), "{p}");
    }
}
