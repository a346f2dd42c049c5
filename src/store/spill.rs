//! The spill: one unnamed file holding the blobs of a store that lives only
//! as long as one run (`ocix unpack --image` without `--store`).
//!
//! Such a store's blobs are read once, by the unpack that follows the
//! import, and then removed. Writing each as a file of its own (create,
//! write, name, close) and then opening and closing it again to copy it
//! costs the kernel more than the files being unpacked do. In the spill the
//! import appends every blob to one `O_TMPFILE` (small ones gathered into
//! large writes), remembers where each digest's bytes start, and the unpack
//! reads them from that one descriptor with `pread` or `copy_file_range`.
//!
//! Every blob's bytes are hashed as they are written, by the same
//! [`BlobWriter`](super::BlobWriter) that writes a store's files, so what
//! the spill names is verified content, and a blob's region is reserved
//! before it is written (its size is known from the layer), so regions
//! never overlap whatever the writers do. All-zero blocks are left as
//! holes, as in a blob file.
//!
//! A region is the blob's digest ([`HEADER`] bytes), then its content. The
//! index keeps 16 bytes a blob: the first 8 bytes of its digest and where
//! its region starts (a million blobs cost 16 MB, not the 40 MB of whole
//! digests). A blob whose 8 bytes are those of a blob already there is
//! compared with that blob's digest in its region: the same blob is not
//! written again, another one (a clash of 8 bytes) is indexed by its whole
//! digest. A reader checks the digest at the start of the region it is
//! given, so the index can never hand out another blob's bytes.

use super::StoreError;
use crate::manifest::Digest;
use crate::sys::{SysError, write as wr};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Blobs up to this size are gathered in memory and written with others.
pub(super) const INLINE: u64 = 64 << 10;
/// Gathered blobs are written once this many bytes wait.
const FLUSH_AT: usize = 1 << 20;
/// A gap of at most this many bytes between gathered blobs (the region of
/// a blob that was already there) is filled with zeros rather than ending
/// the write.
const BRIDGE: u64 = 64 << 10;

/// The digest at the start of each region.
pub(super) const HEADER: u64 = 32;

/// Where each blob's region starts.
#[derive(Default)]
struct Index {
    /// By the first 8 bytes of the digest.
    short: HashMap<u64, u64>,
    /// By the whole digest, where 8 bytes clash.
    long: HashMap<Digest, u64>,
}

impl Index {
    fn get(&self, d: &Digest) -> Option<u64> {
        self.long.get(d).or_else(|| self.short.get(&short(d))).copied()
    }
}

fn short(d: &Digest) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.0[..8]);
    u64::from_le_bytes(b)
}

/// Small blobs waiting to be written: `data` belongs at `base`.
#[derive(Default)]
struct Pending {
    base: u64,
    data: Vec<u8>,
}

/// One run's blobs in one file.
pub(super) struct Spill {
    fd: OwnedFd,
    /// Where the file says it is (for errors).
    shown: String,
    /// The end of the reserved regions.
    end: AtomicU64,
    pending: Mutex<Pending>,
    index: Mutex<Index>,
    /// The index once the writing is over ([`Spill::seal`]): read without
    /// a lock by the unpack's threads.
    sealed: OnceLock<Index>,
}

impl Spill {
    /// An unnamed file in the store's blob directory `dir`; `None` where
    /// the filesystem cannot make one (the store then writes blob files).
    pub(super) fn new(dir: BorrowedFd<'_>, shown: String) -> Option<Spill> {
        let fd = wr::open_tmpfile(dir, 0o600, true, &|| shown.clone()).ok()?;
        Some(Spill {
            fd,
            shown,
            end: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            index: Mutex::new(Index::default()),
            sealed: OnceLock::new(),
        })
    }

    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// Reserves the region of one blob of `size` bytes; returns where it
    /// starts (its content starts [`HEADER`] bytes later).
    pub(super) fn reserve(&self, size: u64) -> Result<u64, StoreError> {
        let len = size.saturating_add(HEADER);
        let off = self.end.fetch_add(len, Ordering::Relaxed);
        if off.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
            return Err(SysError::new("reserve", self.shown.clone(), crate::sys::Errno::FBIG).into());
        }
        Ok(off)
    }

    /// Writes `data` at `off` now (a large blob's piece).
    pub(super) fn write_at(&self, data: &[u8], off: u64) -> Result<(), StoreError> {
        wr::pwrite_all(self.fd.as_fd(), data, off, &|| self.shown.clone())?;
        Ok(())
    }

    /// Gathers a small blob's whole content, which belongs at `off`.
    pub(super) fn gather(&self, data: &[u8], off: u64) -> Result<(), StoreError> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let next = p.base + p.data.len() as u64;
        if p.data.is_empty() {
            p.base = off;
        } else if off >= next && off - next <= BRIDGE {
            let gap = (off - next) as usize;
            let len = p.data.len();
            p.data.resize(len + gap, 0);
        } else {
            self.flush_locked(&mut p)?;
            p.base = off;
        }
        p.data.extend_from_slice(data);
        if p.data.len() >= FLUSH_AT {
            self.flush_locked(&mut p)?;
        }
        Ok(())
    }

    fn flush_locked(&self, p: &mut Pending) -> Result<(), StoreError> {
        if !p.data.is_empty() {
            wr::pwrite_all(self.fd.as_fd(), &p.data, p.base, &|| self.shown.clone())?;
            p.data.clear();
        }
        Ok(())
    }

    /// Names the verified blob `d` whose region starts at `off`: writes
    /// its digest there, and the content of a small blob (`inline`; a large
    /// one's content is written already). Returns false, writing nothing,
    /// when the blob was there already.
    pub(super) fn name(&self, d: Digest, off: u64, inline: Option<&[u8]>) -> Result<bool, StoreError> {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let key = short(&d);
        let clash = match index.short.get(&key) {
            None => false,
            Some(&there) => {
                if index.long.contains_key(&d) || self.digest_at(there)? == d.0 {
                    return Ok(false);
                }
                true
            }
        };
        match inline {
            Some(data) => {
                let mut region = Vec::with_capacity(HEADER as usize + data.len());
                region.extend_from_slice(&d.0);
                region.extend_from_slice(data);
                self.gather(&region, off)?;
            }
            None => self.write_at(&d.0, off)?,
        }
        if clash {
            index.long.insert(d, off);
        } else {
            index.short.insert(key, off);
        }
        Ok(true)
    }

    /// The digest at the start of the region at `off` (gathered or written).
    fn digest_at(&self, off: u64) -> Result<[u8; 32], StoreError> {
        let mut h = [0u8; 32];
        {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if off >= p.base && off + HEADER <= p.base + p.data.len() as u64 {
                let at = (off - p.base) as usize;
                h.copy_from_slice(&p.data[at..at + HEADER as usize]);
                return Ok(h);
            }
        }
        let n = crate::sys::read::pread(self.fd.as_fd(), &mut h, off, &|| self.shown.clone())?;
        if n != h.len() {
            return Err(SysError::new("pread", self.shown.clone(), crate::sys::Errno::NODATA).into());
        }
        Ok(h)
    }

    /// Ends the writing: everything gathered is written, and the blobs can
    /// be read ([`Spill::find`]).
    pub(super) fn seal(&self) -> Result<(), StoreError> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(&mut p)?;
        // a last blob ending in a hole reads as zeros, not as the file's end
        wr::ftruncate(self.fd.as_fd(), self.end.load(Ordering::Relaxed), &|| self.shown.clone())?;
        let index = std::mem::take(&mut *self.index.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = self.sealed.set(index);
        Ok(())
    }

    /// Where the region of blob `d` may start in the spill, once sealed:
    /// the reader checks the digest there (see the module's text).
    pub(super) fn find(&self, d: &Digest) -> Option<(BorrowedFd<'_>, u64)> {
        self.sealed.get()?.get(d).map(|off| (self.fd.as_fd(), off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(first: u8, last: u8) -> Digest {
        let mut d = [first; 32];
        d[31] = last;
        Digest(d)
    }

    #[test]
    fn blobs_whose_first_bytes_clash_are_told_apart_and_a_blob_is_written_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = crate::sys::read::open_dir_path(t.path()).unwrap();
        let sp = Spill::new(dir.as_fd(), "spill".into()).unwrap();
        let (a, b, c) = (digest(1, 1), digest(1, 2), digest(1, 3));
        let (oa, ob, oa2) = (sp.reserve(3).unwrap(), sp.reserve(3).unwrap(), sp.reserve(3).unwrap());
        assert!(sp.name(a, oa, Some(b"aaa")).unwrap());
        assert!(sp.name(b, ob, Some(b"bbb")).unwrap(), "a clash of 8 bytes taken for the same blob");
        assert!(!sp.name(a, oa2, Some(b"aaa")).unwrap(), "the same blob written twice");
        let ol = sp.reserve(100_000).unwrap();
        sp.write_at(&[9u8; 100_000], ol + HEADER).unwrap();
        let l = digest(1, 4);
        assert!(sp.name(l, ol, None).unwrap());
        assert!(!sp.name(b, sp.reserve(3).unwrap(), Some(b"bbb")).unwrap());
        sp.seal().unwrap();
        for (d, off) in [(a, oa), (b, ob), (l, ol)] {
            assert_eq!(sp.find(&d).unwrap().1, off);
            assert_eq!(sp.digest_at(off).unwrap(), d.0);
        }
        // a digest never named but sharing the 8 bytes: the region found
        // starts with another digest, which the reader checks
        let (_, off) = sp.find(&c).unwrap();
        assert_ne!(sp.digest_at(off).unwrap(), c.0);
        assert!(sp.find(&digest(2, 2)).is_none());
    }
}
