//! `ocix unpack --link`: files become hardlinks of their blobs where the tree
//! stays exact; the rest is copied.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn ino(p: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.ino(), m.nlink())
}

#[test]
fn link_checkout_is_exact_and_shares_blob_inodes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    write(&src.join("dup-a"), b"same content\n");
    write(&src.join("dup-b"), b"same content\n");
    chmod(&src.join("dup-b"), 0o600);
    let store = t.path().join("store");
    let m = t.path().join("m.ocix");
    let out = ocix().arg("scan").arg(&src).arg("--store").arg(&store).arg("-o").arg(&m).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dest = t.path().join("linked");
    let out = ocix().arg("unpack").arg(&m).arg(&dest).arg("--store").arg(&store).arg("--link").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // exact: scans back to the same manifest
    let back = ocix().arg("scan").arg(&dest).output().unwrap();
    assert_eq!(back.stdout, std::fs::read(&m).unwrap(), "--link tree is not exact");

    // the first name with a content is its blob; the duplicate is a copy
    let blob = |p: &str| {
        store.join("blobs/sha256").join(ocix::manifest::Digest::of(&std::fs::read(dest.join(p)).unwrap()).hex())
    };
    let (a, a_links) = ino(&dest.join("dup-a"));
    assert_eq!(a, ino(&blob("dup-a")).0, "dup-a is not its blob");
    assert_eq!(a_links, 2);
    assert_ne!(ino(&dest.join("dup-b")).0, a, "two manifest files share an inode");
    // the blob took dup-a's metadata
    assert_eq!(std::fs::metadata(blob("dup-a")).unwrap().mode() & 0o7777, 0o644);

    // a second checkout finds the blob claimed and copies: still exact
    let dest2 = t.path().join("linked2");
    let out = ocix().arg("unpack").arg(&m).arg(&dest2).arg("--store").arg(&store).arg("--link").output().unwrap();
    assert!(out.status.success());
    assert_ne!(ino(&dest2.join("dup-a")).0, a);
    let back = ocix().arg("scan").arg(&dest2).output().unwrap();
    assert_eq!(back.stdout, std::fs::read(&m).unwrap());
}
