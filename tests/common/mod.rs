//! Shared helpers for the tests: a sample tree with every kind of entry,
//! hand-built manifests, the ocix binary, privilege checks, a gate between
//! threads, the shared corpus.
#![allow(dead_code)]

pub mod net;
pub mod progress;
pub mod registry;
pub mod rng;

use ocix::manifest::{Digest, Entry, File, Kind, Manifest};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built ocix binary.
pub fn ocix() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ocix"))
}

/// Runs ocix with args, returns the output.
pub fn run(args: &[&std::ffi::OsStr]) -> Output {
    ocix().args(args).output().expect("run ocix")
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sets mtime (and atime) of a path without following a symlink.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    rustix::fs::utimensat(CWD, p, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

pub fn chmod(p: &Path, mode: u32) {
    rustix::fs::chmod(p, Mode::from_raw_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

pub fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Builds the sample tree under `root` (which must exist and be empty).
/// Every entry gets a fixed mtime, so two builds give the same manifest.
/// `reverse` creates the entries in the opposite order (directory listing
/// order then differs). Device nodes and foreign owners only as root.
pub fn make_tree(root: &Path, reverse: bool) {
    let j = |s: &str| root.join(s);
    let r = root.to_path_buf();
    let dirs = ["a", "a/b", "empty", "perm", "perm/sticky", "names"];
    for d in dirs {
        std::fs::create_dir(j(d)).unwrap();
    }
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("a/hello", b"hello, world\n".to_vec()),
        ("a/b/big", noise(3 << 20, 7)),
        ("a/b/zero4k", vec![0; 4096]),
        ("empty-file", Vec::new()),
        ("perm/setuid", b"#!/bin/true\n".to_vec()),
        ("perm/none", b"secret\n".to_vec()),
        ("names/with space", b"s\n".to_vec()),
        ("names/new\nline", b"n\n".to_vec()),
        ("names/ünï", b"u\n".to_vec()),
        ("names/-dash", b"d\n".to_vec()),
    ];
    if reverse {
        files.reverse();
    }
    for (p, data) in &files {
        write(&j(p), data);
    }
    // non-UTF-8 name
    let raw = r.join(std::ffi::OsStr::from_bytes(b"names/\xff\xfe-latin1"));
    write(&raw, b"raw\n");
    // sparse: 8 MiB with data at 1 MiB and 5 MiB, a trailing hole
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(j("sparse")).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&noise(4096, 1)).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&noise(10000, 2)).unwrap();
        f.set_len(8 << 20).unwrap();
    }
    // hardlinks: primary a/hello (first in manifest order), two more names
    std::fs::hard_link(j("a/hello"), j("hl-1")).unwrap();
    std::fs::hard_link(j("a/hello"), j("a/b/hl-2")).unwrap();
    // symlinks
    std::os::unix::fs::symlink("a/hello", j("link")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", j("dangling")).unwrap();
    std::os::unix::fs::symlink("../a", j("a/b/up")).unwrap();
    // fifo
    rustix::fs::mknodat(CWD, j("fifo"), FileType::Fifo, Mode::from_raw_mode(0o620), 0).unwrap();
    chmod(&j("fifo"), 0o620);
    // xattrs
    rustix::fs::setxattr(j("a/hello"), "user.greeting", b"hi", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(j("a/hello"), "user.bin", &[0, 255, 0, 254], rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(j("a"), "user.dir", b"d", rustix::fs::XattrFlags::empty()).unwrap();
    if is_root() {
        rustix::fs::mknodat(
            CWD,
            j("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            CWD,
            j("loop0"),
            FileType::BlockDevice,
            Mode::from_raw_mode(0o660),
            rustix::fs::makedev(7, 0),
        )
        .unwrap();
        chmod(&j("null"), 0o666);
        chmod(&j("loop0"), 0o660);
        std::os::unix::fs::lchown(j("loop0"), Some(0), Some(6)).unwrap();
        std::os::unix::fs::lchown(j("names/with space"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(j("link"), Some(65534), Some(65534)).unwrap();
    }
    chmod(&j("perm/setuid"), 0o4755);
    chmod(&j("perm/none"), 0o000);
    chmod(&j("perm/sticky"), 0o1777);
    chmod(root, 0o755);
    // fixed mtimes, deepest first so directories keep theirs
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort();
    all.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_700_000_000 + (i as i64 % 3), if i % 2 == 0 { 0 } else { 500_000_000 });
    }
    set_mtime(&j("a/hello"), 1_234_567_890, 123_456_789);
    set_mtime(&j("empty"), -86400, 0);
    set_mtime(&j("a/b/zero4k"), 0, 0);
    set_mtime(root, 1_700_000_000, 0);
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        let ft = e.file_type().unwrap();
        out.push(path.clone());
        if ft.is_dir() {
            collect(&path, out);
        }
    }
}

/// A copy of the ocix binary that an unprivileged user can execute (the
/// build directory may sit below a private home directory). The copy is
/// named after the build's path, size and mtime, so every test process of
/// one build shares it and a rebuild replaces rather than adds one.
pub fn ocix_unprivileged() -> PathBuf {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let src = Path::new(env!("CARGO_BIN_EXE_ocix"));
        let meta = std::fs::metadata(src).unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (src, meta.len(), meta.mtime(), meta.mtime_nsec()).hash(&mut h);
        let dir = std::env::temp_dir().join(format!("ocix-test-bin-{:016x}", h.finish()));
        let bin = dir.join("ocix");
        if std::fs::metadata(&bin).is_ok_and(|m| m.len() == meta.len()) {
            return bin;
        }
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // copied under a name of this process, then renamed: concurrent test
        // processes never run a half-written copy
        let tmp = dir.join(format!("ocix.{}", std::process::id()));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &bin).unwrap();
        bin
    })
    .clone()
}

/// A command running `ocix` as uid/gid 65534 (nobody) with no groups.
pub fn ocix_as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(ocix_unprivileged());
    c
}

/// Unpacks a manifest built in tree form (as the tests build them).
pub fn unpack(
    m: &ocix::manifest::Manifest,
    store: &ocix::store::Store,
    dest: &std::path::Path,
    opts: &ocix::materialize::UnpackOptions,
) -> Result<ocix::materialize::UnpackReport, ocix::materialize::UnpackError> {
    ocix::materialize::unpack(&ocix::manifest::Compact::from_tree(m)?, store, dest, opts)
}

/// A test that cannot run here says why and returns `false`; with
/// `OCIX_REQUIRE_PRIVILEGED=1` (as `make test` sets, which CI runs as root)
/// that fails it instead, so a root-only test never passes untried.
pub fn skip(why: &str) -> bool {
    if std::env::var_os("OCIX_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{why} (OCIX_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIP: {why}");
    false
}

/// A directory entry (default metadata) holding `children`.
pub fn dir(children: Vec<(&[u8], Entry)>) -> Entry {
    Entry::new(Kind::Dir(children.into_iter().map(|(n, e)| (n.to_vec(), e)).collect::<BTreeMap<_, _>>()))
}

/// A manifest whose root directory holds `children`.
pub fn manifest(children: Vec<(&[u8], Entry)>) -> Manifest {
    Manifest { root: dir(children) }
}

/// A regular file entry with `content`'s size and digest (none when
/// empty), no zero runs.
pub fn file_entry(content: &[u8]) -> Entry {
    let digest = (!content.is_empty()).then(|| Digest::of(content));
    Entry::new(Kind::File(File { size: content.len() as u64, digest, zeros: Vec::new() }))
}

/// `d` gzip-compressed.
pub fn gzip(d: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

/// The xattr `name` of `p`, not following a symlink.
pub fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::lgetxattr(p, name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {} {name}: {e}", p.display()),
    }
}

/// A gate one thread waits at (at most a minute) until another opens it.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    pub fn wait(&self) {
        let g = self.0.0.lock().unwrap();
        let _ = self.0.1.wait_timeout_while(g, std::time::Duration::from_secs(60), |open| !*open).unwrap();
    }
}

/// The shared corpus (`$OCIX_CORPUS`, by default `~/.cache/ocix-corpus`,
/// built by integration/lib.sh's `ensure_corpus`, which `make test` runs
/// first) when it holds every path of `needs`. Otherwise the test cannot
/// run: with `OCIX_REQUIRE_CORPUS=1` (as `make test` sets) that fails it,
/// else it says on stderr (not captured) that it was skipped and the caller
/// returns.
pub fn corpus(test: &str, needs: &[&str]) -> Option<PathBuf> {
    let dir = match std::env::var_os("OCIX_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ocix-corpus"),
    };
    let missing: Vec<&str> = needs.iter().copied().filter(|n| !dir.join(n).exists()).collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!(
        "{test}: no corpus at {} (missing {}); build it with `make test` or integration/lib.sh's ensure_corpus, or set OCIX_CORPUS",
        dir.display(),
        missing.join(", ")
    );
    if std::env::var_os("OCIX_REQUIRE_CORPUS").is_some_and(|v| v == "1") {
        panic!("{why} (OCIX_REQUIRE_CORPUS=1)");
    }
    // straight to stderr, past the test harness's capture, so that the skip
    // shows in a plain `cargo test`
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("skipped: {why}\n").as_bytes());
    None
}

/// A tar with these regular files (mode 0644, one fixed mtime).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}
