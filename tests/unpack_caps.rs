//! `ocix unpack` as root without every capability, as inside a container:
//! without CAP_MKNOD a device node cannot be made, and the error says what
//! to do instead. The built binary runs under `setpriv` with CAP_MKNOD
//! dropped from its inheritable and bounding sets (so root's exec does not
//! regain it).

mod common;

use common::dir;
use ocix::manifest::{Dev, Entry, Kind, Manifest};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NO_MKNOD: [&str; 2] = ["--inh-caps=-mknod", "--bounding-set=-mknod"];

/// Writes a manifest whose tree is `dev/<name>` = `kind`.
fn write_manifest(path: &Path, name: &[u8], kind: Kind) {
    let m = Manifest { root: dir(vec![(b"dev", dir(vec![(name, Entry::new(kind))]))]) };
    std::fs::write(path, m.to_bytes().unwrap()).unwrap();
}

/// Runs `ocix unpack MANIFEST --store STORE DEST [extra]` without CAP_MKNOD.
fn unpack_without_mknod(manifest: &Path, store: &Path, dest: &Path, extra: &[&str]) -> Output {
    Command::new("setpriv")
        .args(NO_MKNOD)
        .arg(env!("CARGO_BIN_EXE_ocix"))
        .arg("unpack")
        .arg(manifest)
        .arg("--store")
        .arg(store)
        .arg(dest)
        .args(extra)
        .output()
        .expect("run setpriv")
}

/// Root, and setpriv can drop CAP_MKNOD here; otherwise a note says why the
/// test does not apply.
fn can_drop_mknod() -> bool {
    if !common::is_root() {
        eprintln!("SKIP: not root (root without CAP_MKNOD is what is tested)");
        return false;
    }
    match Command::new("setpriv").args(NO_MKNOD).arg("true").status() {
        Ok(s) if s.success() => true,
        r => {
            eprintln!("SKIP: setpriv cannot drop CAP_MKNOD here: {r:?}");
            false
        }
    }
}

/// A manifest of /dev/NAME of `kind`, unpacked without CAP_MKNOD: exit 2
/// and an error naming the path, the call, the capability and --rootless.
/// Returns the temporary directory, the (empty) store and the manifest.
fn refused_without_mknod(name: &[u8], kind: Kind) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    ocix::store::Store::create(&store).unwrap();
    let m = t.path().join("m.ocix");
    write_manifest(&m, name, kind);
    let dest = t.path().join("root");
    let o = unpack_without_mknod(&m, &store, &dest, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    let path = format!("{}/dev/{}", dest.display(), String::from_utf8_lossy(name));
    assert!(err.contains(&path), "error does not name {path}: {err}");
    assert!(err.contains("mknodat"), "error does not name the call: {err}");
    assert!(err.contains("CAP_MKNOD"), "error does not name the capability: {err}");
    assert!(err.contains("--rootless"), "error does not point at --rootless: {err}");
    (t, store, m)
}

#[test]
fn device_without_cap_mknod_says_what_to_do() {
    if !can_drop_mknod() {
        return;
    }
    let (t, store, m) = refused_without_mknod(b"null", Kind::Char(Dev { major: 1, minor: 3 }));

    // and the advice works: --rootless writes the device as an empty file
    let dest = t.path().join("rootless");
    let o = unpack_without_mknod(&m, &store, &dest, &["--rootless"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(md.is_file() && md.len() == 0, "{md:?}");
}

#[test]
fn block_device_without_cap_mknod_says_what_to_do() {
    if !can_drop_mknod() {
        return;
    }
    refused_without_mknod(b"loop0", Kind::Block(Dev { major: 7, minor: 0 }));
}

#[test]
fn fifo_needs_no_cap_mknod() {
    if !can_drop_mknod() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    ocix::store::Store::create(&store).unwrap();
    let m = t.path().join("m.ocix");
    write_manifest(&m, b"pipe", Kind::Fifo);
    let dest = t.path().join("root");
    let o = unpack_without_mknod(&m, &store, &dest, &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::symlink_metadata(dest.join("dev/pipe")).unwrap().file_type().is_fifo());
}
