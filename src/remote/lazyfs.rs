//! The data layer of a lazy mount: a read-only FUSE filesystem (the
//! `fuser` crate speaking to `/dev/fuse` itself, no libfuse) holding
//! `blobs/sha256/<hex>` for every file blob of a [`Lazy`] source, with the
//! sizes the manifest gives. Listing and `stat` need no blob; the first
//! `open` of one brings it into the store ([`Lazy::open_blob`]: fetched,
//! verified, recorded) and reads are served from the store's file, so the
//! page cache is kept across opens. A blob that cannot be fetched fails
//! the `open` with EIO; the next `open` tries again.
//!
//! An overlay mounts the EROFS metadata image over it as a data-only layer
//! (see [`crate::mount::mount_with_data`]): overlayfs looks up a file's
//! blob on its first open, so nothing is fetched before a file is read.

use super::lazy::Lazy;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const ROOT: u64 = 1;
const BLOBS: u64 = 2;
const SHA256: u64 = 3;
/// Blob `i` is inode `FIRST + i`.
const FIRST: u64 = 4;
/// Fetches at once of the blobs an access list names.
const FIRST_JOBS: usize = 8;
/// Nothing here ever changes while mounted.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The filesystem.
pub struct LazyFs {
    lazy: Arc<Lazy>,
    handles: Mutex<HashMap<u64, Arc<std::fs::File>>>,
    next: AtomicU64,
    /// Set when the session ends: the fetch of the access list's blobs
    /// stops.
    stop: Arc<AtomicBool>,
}

impl LazyFs {
    /// A filesystem serving `lazy`'s blobs.
    pub fn new(lazy: Arc<Lazy>) -> LazyFs {
        LazyFs { lazy, handles: Mutex::new(HashMap::new()), next: AtomicU64::new(1), stop: Arc::default() }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT | BLOBS | SHA256 => (FileType::Directory, 0o555, 0, 2),
            _ => {
                let i = usize::try_from(ino.checked_sub(FIRST)?).ok()?;
                (FileType::RegularFile, 0o444, self.lazy.blobs().get(i)?.size, 1)
            }
        };
        let t = SystemTime::UNIX_EPOCH;
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn blob_ino(&self, name: &[u8]) -> Option<u64> {
        let hex = std::str::from_utf8(name).ok()?;
        let d = crate::manifest::Digest::parse(&format!("sha256:{hex}")).ok()?;
        // only the canonical (lowercase) name
        if d.hex() != hex {
            return None;
        }
        Some(FIRST + self.lazy.find(&d)? as u64)
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<std::fs::File>>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Filesystem for LazyFs {
    /// The kernel has connected: the blobs the artifact's access list
    /// names are fetched at once, meanwhile (see [`Lazy::fetch_first`]).
    fn init(&mut self, _req: &Request, _config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let (lazy, stop) = (self.lazy.clone(), self.stop.clone());
        std::thread::spawn(move || lazy.fetch_first(FIRST_JOBS, &stop));
        Ok(())
    }

    fn destroy(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.as_bytes()) {
            (ROOT, b"blobs") => Some(BLOBS),
            (BLOBS, b"sha256") => Some(SHA256),
            (SHA256, hex) => self.blob_ino(hex),
            _ => None,
        };
        match ino.and_then(|i| self.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(i) = ino.0.checked_sub(FIRST).and_then(|i| usize::try_from(i).ok()) else {
            return reply.error(Errno::EISDIR);
        };
        if i >= self.lazy.blobs().len() {
            return reply.error(Errno::ENOENT);
        }
        match self.lazy.open_blob(i) {
            Ok(f) => {
                let fh = self.next.fetch_add(1, Ordering::Relaxed);
                self.handles().insert(fh, Arc::new(f));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.handles().get(&fh.0).cloned() else { return reply.error(Errno::EBADF) };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return reply.error(Errno::EIO),
            }
        }
        reply.data(&buf[..got]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles().remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let (parent, fixed): (u64, &[(u64, &str)]) = match ino.0 {
            ROOT => (ROOT, &[(BLOBS, "blobs")]),
            BLOBS => (ROOT, &[(SHA256, "sha256")]),
            SHA256 => (BLOBS, &[]),
            _ => return reply.error(Errno::ENOTDIR),
        };
        let blobs = if ino.0 == SHA256 { self.lazy.blobs().len() } else { 0 };
        let n = 2 + fixed.len() + blobs;
        let mut k = offset as usize;
        while k < n {
            let full = match k {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(parent), 2, FileType::Directory, ".."),
                _ if k - 2 < fixed.len() => {
                    let (i, name) = fixed[k - 2];
                    reply.add(INodeNo(i), k as u64 + 1, FileType::Directory, name)
                }
                _ => {
                    let i = k - 2 - fixed.len();
                    let hex = self.lazy.blobs()[i].digest.hex();
                    reply.add(INodeNo(FIRST + i as u64), k as u64 + 1, FileType::RegularFile, hex)
                }
            };
            if full {
                break;
            }
            k += 1;
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
