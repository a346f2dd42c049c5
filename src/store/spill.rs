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
    index: Mutex<HashMap<Digest, u64>>,
    /// The index once the writing is over ([`Spill::seal`]): read without
    /// a lock by the unpack's threads.
    sealed: OnceLock<HashMap<Digest, u64>>,
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
            index: Mutex::new(HashMap::new()),
            sealed: OnceLock::new(),
        })
    }

    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// Reserves `size` bytes for one blob; returns where they start.
    pub(super) fn reserve(&self, size: u64) -> Result<u64, StoreError> {
        let off = self.end.fetch_add(size, Ordering::Relaxed);
        if off.checked_add(size).is_none_or(|e| e > i64::MAX as u64) {
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

    /// Names the verified blob `d` whose bytes start at `off`. Returns
    /// false when it was there already (its new region is left unread).
    pub(super) fn name(&self, d: Digest, off: u64) -> bool {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        match index.entry(d) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(off);
                true
            }
        }
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

    /// Where blob `d` starts in the spill, once sealed.
    pub(super) fn find(&self, d: &Digest) -> Option<(BorrowedFd<'_>, u64)> {
        self.sealed.get()?.get(d).map(|&off| (self.fd.as_fd(), off))
    }
}
