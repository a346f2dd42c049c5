//! Property: for random trees (non-UTF-8 names, modes with setuid/setgid/
//! sticky, owners, xattrs, hardlinks, sparse files, devices, fifos,
//! symlinks), scan -> unpack -> scan gives the same manifest bytes, and
//! unpacking again with `update` over the result changes nothing.

mod common;

use common::{chmod, set_mtime, unpack};
use ocix::materialize::UnpackOptions;
use ocix::scan::{ScanOptions, scan_dir};
use ocix::store::Store;
use proptest::prelude::*;
use rustix::fs::{CWD, FileType, Mode, XattrFlags};
use std::ffi::OsStr;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::rng::Rng;

fn random_name(r: &mut Rng) -> Vec<u8> {
    const ALPHA: &[u8] = b"abcXYZ019 -_.\n\t\x01\x7f\x80\xc3\xa9\xfe\xff";
    loop {
        let n = 1 + r.below(12) as usize;
        let name: Vec<u8> = (0..n).map(|_| ALPHA[r.below(ALPHA.len() as u64) as usize]).collect();
        if name != b"." && name != b".." {
            return name;
        }
    }
}

struct Gen {
    r: Rng,
    files: Vec<PathBuf>,
    all: Vec<PathBuf>,
}

impl Gen {
    fn dir(&mut self, dir: &Path, depth: u32) {
        let n = 2 + self.r.below(if depth == 0 { 14 } else { 7 });
        for _ in 0..n {
            let name = random_name(&mut self.r);
            let p = dir.join(OsStr::from_bytes(&name));
            if std::fs::symlink_metadata(&p).is_ok() {
                continue;
            }
            let kind = self.r.below(10);
            match kind {
                0 | 1 if depth < 3 => {
                    std::fs::create_dir(&p).unwrap();
                    self.dir(&p, depth + 1);
                }
                0..=3 => {
                    let mut f = std::fs::File::create(&p).unwrap();
                    match self.r.below(4) {
                        0 => {}
                        1 => f.write_all(&self.r.bytes(1, 9000)).unwrap(),
                        2 => {
                            // sparse: data, holes, maybe a trailing hole
                            let blocks = 2 + self.r.below(30);
                            for b in 0..blocks {
                                if self.r.below(3) == 0 {
                                    f.seek(SeekFrom::Start(b * 4096)).unwrap();
                                    let data = self.r.bytes(1, 4096);
                                    f.write_all(&data).unwrap();
                                }
                            }
                            f.set_len(blocks * 4096 + self.r.below(100)).unwrap();
                        }
                        _ => f.write_all(&vec![0; 4096 * (1 + self.r.below(3) as usize)]).unwrap(),
                    }
                    self.files.push(p.clone());
                }
                4 if !self.files.is_empty() => {
                    let target = self.files[self.r.below(self.files.len() as u64) as usize].clone();
                    std::fs::hard_link(&target, &p).unwrap();
                    continue; // metadata belongs to the first name
                }
                5 => {
                    let t = random_name(&mut self.r);
                    std::os::unix::fs::symlink(OsStr::from_bytes(&t), &p).unwrap();
                }
                6 => rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap(),
                7 => {
                    let ty = if self.r.below(2) == 0 { FileType::CharacterDevice } else { FileType::BlockDevice };
                    let dev = rustix::fs::makedev(self.r.below(300) as u32, self.r.below(70000) as u32);
                    rustix::fs::mknodat(CWD, &p, ty, Mode::from_raw_mode(0o600), dev).unwrap();
                }
                _ => {
                    std::fs::write(&p, self.r.bytes(0, 50)).unwrap();
                    self.files.push(p.clone());
                }
            }
            self.all.push(p);
        }
    }

    /// Owners, xattrs, modes (after chown, which clears setuid), in that order.
    fn metadata(&mut self, root: &Path) {
        let mut everything = self.all.clone();
        everything.push(root.to_path_buf());
        for p in &everything {
            let md = std::fs::symlink_metadata(p).unwrap();
            let ids = [0u32, 1, 65534, 1000, 123456];
            let (u, g) = (ids[self.r.below(5) as usize], ids[self.r.below(5) as usize]);
            std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
            let ft = md.file_type();
            if (ft.is_file() || ft.is_dir()) && self.r.below(3) == 0 {
                let k = format!("user.k{}", self.r.below(3));
                let v = self.r.bytes(0, 40);
                rustix::fs::setxattr(p, k.as_str(), &v, XattrFlags::empty()).unwrap();
            }
            if ft.is_file() && self.r.below(8) == 0 {
                let mut cap = vec![0u8; 20];
                cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
                cap[4] = 1 << self.r.below(8);
                rustix::fs::setxattr(p, "security.capability", &cap, XattrFlags::empty()).unwrap();
            }
            if !ft.is_symlink() {
                let mode =
                    if ft.is_dir() { 0o700 | self.r.below(0o10000) as u32 } else { self.r.below(0o10000) as u32 };
                // security.capability survives chmod, not chown: set it after chown above
                chmod(p, mode);
            }
        }
        // mtimes deepest first so directories keep theirs
        everything.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in &everything {
            let sec = self.r.below(4_000_000_000) as i64 - 1_000_000_000;
            let nsec = if self.r.below(2) == 0 { 0 } else { self.r.below(1_000_000_000) as i64 };
            set_mtime(p, sec, nsec);
        }
    }
}

fn scan(dir: &Path, store: Option<&Store>) -> Vec<u8> {
    scan_dir(dir, store, &ScanOptions::default()).unwrap().manifest.to_bytes().unwrap()
}

/// A random tree made from `seed` in `dir/src`, scanned into the new store
/// `dir/store`: the store and the manifest's bytes.
fn random_tree(dir: &Path, seed: u64) -> (Store, Vec<u8>) {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    let mut g = Gen { r: Rng(seed | 1), files: Vec::new(), all: Vec::new() };
    g.dir(&src, 0);
    g.metadata(&src);
    let store = Store::create(&dir.join("store")).unwrap();
    let before = scan(&src, Some(&store));
    (store, before)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(seed in 1u64..u64::MAX) {
        prop_assume!(common::is_root());
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let (store, before) = random_tree(t.path(), seed);
        let m = ocix::manifest::Manifest::from_bytes(&before).unwrap();
        let threads = 1 + (seed % 3) as usize;
        unpack(&m, &store, &out, &UnpackOptions { threads, ..Default::default() }).unwrap();
        prop_assert_eq!(&scan(&out, None), &before);
        let r = unpack(&m, &store, &out, &UnpackOptions { update: true, ..Default::default() }).unwrap();
        prop_assert_eq!(r.files_written, 0);
        prop_assert_eq!(r.removed, 0);
        prop_assert_eq!(&scan(&out, None), &before);
    }
}

// ---- ocix mount: the same random trees, mounted instead of unpacked ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    /// scan -> mount (EROFS image + overlay over the store) -> scan gives
    /// the same manifest bytes; the mount is gone afterwards.
    #[test]
    fn random_trees_mount_as_scanned(seed in 1u64..u64::MAX) {
        prop_assume!(common::is_root());
        let t = tempfile::tempdir().unwrap();
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let (store, before) = random_tree(t.path(), seed);
        let m = ocix::manifest::Compact::from_bytes(&before).unwrap();
        let digest = ocix::manifest::Digest::of(&before);
        match ocix::mount::mount(&m, &digest, &store, &mnt, &Default::default()) {
            // a character device 0:0 (an overlay whiteout) is refused
            Err(ocix::mount::MountError::Image(e)) if e.to_string().contains("whiteout") => return Ok(()),
            r => { r.unwrap(); }
        }
        let scanned = std::panic::catch_unwind(|| scan(&mnt, None));
        ocix::mount::umount(&mnt).unwrap();
        prop_assert_eq!(&scanned.unwrap(), &before);
        let fsck = std::process::Command::new("fsck.erofs").arg(ocix::mount::image_path(&store, &digest)).output().unwrap();
        prop_assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stderr));
    }
}
