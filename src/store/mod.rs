//! The content-addressed blob store: `STORE/blobs/sha256/<hex>`, the OCI image
//! layout convention, so an OCI layout directory is also a usable store.
//!
//! Writers never leave a partial blob under a digest name: content is written
//! to an anonymous `O_TMPFILE` (or, where the filesystem lacks it, a named
//! temporary file in `STORE/.ocix-tmp/`), its sha256 is computed while it is
//! written, and only then is it linked under its name. A blob that already
//! exists is not rewritten. Blobs are not fsynced one by one; a writer that
//! needs durability calls [`Store::sync`] once at the end. Readers verify
//! every blob's digest as they read it, so a blob damaged on disk is reported,
//! never trusted.

mod arrivals;
mod spill;

pub use arrivals::{Arrivals, Filled};

use crate::manifest::Digest;
use crate::sys::read::{self as rd, FileType};
use crate::sys::{self, Errno, SysError, write as wr};
use sha2::{Digest as _, Sha256};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The store directory does not exist (and was not to be created).
    #[error("{0}: not a blob store (no blobs/sha256 directory)")]
    NotAStore(String),
    /// A blob the store's filler (a pull) ended without.
    #[error(
        "blob {digest} was not fetched into store {store}{}",
        match .stopped { Some(why) => format!(": {why}"), None => String::new() }
    )]
    NotFetched {
        /// The digest.
        digest: Digest,
        /// The store's path.
        store: String,
        /// Why the filler stopped early; `None` when it completed without
        /// this blob.
        stopped: Option<String>,
    },
    /// A blob is absent.
    #[error("blob {digest} missing from store {store}")]
    Missing {
        /// The missing digest.
        digest: Digest,
        /// The store's path.
        store: String,
    },
    /// A blob's name holds something other than a regular file.
    #[error("blob {path} is {what}, not a regular file")]
    NotRegular {
        /// The digest.
        digest: Digest,
        /// The store's path.
        store: String,
        /// The blob path.
        path: String,
        /// What is there: "a FIFO", "a directory", ...
        what: &'static str,
    },
    /// Content did not match the expected digest.
    #[error("blob {path}: content has digest {actual}, expected {expected}")]
    Corrupt {
        /// The blob path.
        path: String,
        /// Expected digest.
        expected: Digest,
        /// Computed digest.
        actual: Digest,
    },
    /// Content did not have the expected size.
    #[error("blob {path}: {actual} bytes, expected {expected}")]
    WrongSize {
        /// The blob path.
        path: String,
        /// Expected size.
        expected: u64,
        /// Actual size (or bytes read before stopping).
        actual: u64,
    },
}

/// The bytes before a spilled blob's content (see [`Store::spilled`]).
pub const SPILL_HEADER: u64 = spill::HEADER;

/// An open blob store.
pub struct Store {
    root: PathBuf,
    blobs: OwnedFd,
    tmp_seq: AtomicU64,
    arrivals: Option<Arc<Arrivals>>,
    spill: Option<spill::Spill>,
}

impl Store {
    /// Opens an existing store.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let blobs = root.join("blobs/sha256");
        if !blobs.is_dir() {
            return Err(StoreError::NotAStore(root.display().to_string()));
        }
        Self::open_blobs(root, &blobs)
    }

    /// Opens a store, creating its directories if needed.
    pub fn create(root: &Path) -> Result<Store, StoreError> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| {
            SysError::new("mkdir", blobs.display().to_string(), Errno::from_io_error(&e).unwrap_or(Errno::IO))
        })?;
        Self::open_blobs(root, &blobs)
    }

    fn open_blobs(root: &Path, blobs: &Path) -> Result<Store, StoreError> {
        let fd = sys::read::open_dir_path(blobs)?;
        Ok(Store { root: root.to_path_buf(), blobs: fd, tmp_seq: AtomicU64::new(0), arrivals: None, spill: None })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The open `blobs/sha256` directory, for `*at()` calls on blobs by name.
    pub fn blobs_dir(&self) -> BorrowedFd<'_> {
        self.blobs.as_fd()
    }

    /// Whether a blob is present (by name; content is verified on read).
    pub fn has(&self, d: &Digest) -> bool {
        // the error is not wanted: no path is formatted for it
        rd::stat_at(self.blobs.as_fd(), d.hex().as_bytes(), &String::new)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile)
    }

    /// This store is being filled while it is read:
    /// [`open_blob`](Self::open_blob) of a missing blob waits for it until
    /// the filler closes `arrivals`, and every blob named through this store
    /// is announced there.
    pub fn with_arrivals(mut self, arrivals: Arc<Arrivals>) -> Store {
        self.arrivals = Some(arrivals);
        self
    }

    /// This store lives for one run, which writes its blobs and then reads
    /// each back once (`unpack --image` without `--store`): they go into one
    /// unnamed file instead of a file each (see [`spill`]), read through
    /// [`spilled`](Self::spilled) once [`seal`](Self::seal) has been called.
    /// Where the filesystem cannot make an unnamed file, blobs stay files.
    pub fn with_spill(mut self) -> Store {
        let shown = format!("{} (this run's blobs, unnamed)", self.root.join("blobs/sha256").display());
        self.spill = spill::Spill::new(self.blobs.as_fd(), shown);
        self
    }

    /// Whether blobs go to a spill (see [`with_spill`](Self::with_spill)).
    pub fn spills(&self) -> bool {
        self.spill.is_some()
    }

    /// Ends the writing of a spilling store (see
    /// [`with_spill`](Self::with_spill)): what it gathered is written, and
    /// its blobs can be read.
    pub fn seal(&self) -> Result<(), StoreError> {
        match &self.spill {
            Some(s) => s.seal(),
            None => Ok(()),
        }
    }

    /// Where blob `d` may be in a sealed spill: the descriptor to read with
    /// `pread` and the offset of its region, which starts with
    /// [`SPILL_HEADER`] bytes that must be `d`'s digest (see
    /// [`spilled_as`](Self::spilled_as)), then its content (its size is the
    /// manifest's; bytes past it belong to other blobs). Its content was
    /// hashed by this process as it was written. `None` for a blob that is
    /// a file of its own (or a store without a spill).
    pub fn spilled(&self, d: &Digest) -> Option<(BorrowedFd<'_>, u64)> {
        self.spill.as_ref()?.find(d)
    }

    /// Whether the start of a spilled region (`header`, read from where
    /// [`spilled`](Self::spilled) said) is blob `d`'s.
    pub fn spilled_as(d: &Digest, header: &[u8]) -> bool {
        header == d.0
    }

    /// How a spilled blob is named in errors.
    pub fn spilled_shown(&self, d: &Digest) -> String {
        match &self.spill {
            Some(s) => format!("blob {d} in {}", s.shown()),
            None => self.blob_path(d).display().to_string(),
        }
    }

    /// Opens a blob for reading. The caller verifies its content (see
    /// [`Verifier`]). A store being filled (see
    /// [`with_arrivals`](Self::with_arrivals)) waits for a missing blob.
    pub fn open_blob(&self, d: &Digest) -> Result<OwnedFd, StoreError> {
        self.open_blob_as(d, true)
    }

    /// [`open_blob`](Self::open_blob) without the `fstat` that refuses
    /// anything but a regular file (a directory opens; a FIFO opens without
    /// blocking). For a caller that reads the blob whole and, only when it
    /// does not read back as the size it expects, asks
    /// [`not_regular`](Self::not_regular) what is there.
    pub fn open_blob_unchecked(&self, d: &Digest) -> Result<OwnedFd, StoreError> {
        self.open_blob_as(d, false)
    }

    fn open_blob_as(&self, d: &Digest, check: bool) -> Result<OwnedFd, StoreError> {
        let Some(arrivals) = &self.arrivals else { return self.open_blob_now(d, check) };
        loop {
            let mark = arrivals.mark();
            match self.open_blob_now(d, check) {
                Err(StoreError::Missing { .. }) => {}
                r => return r,
            }
            match mark {
                Ok(mark) => arrivals.wait_after(mark),
                Err(end) => {
                    return Err(StoreError::NotFetched {
                        digest: *d,
                        store: self.root.display().to_string(),
                        stopped: match end {
                            Filled::Complete => None,
                            Filled::Stopped(why) => Some(why),
                        },
                    });
                }
            }
        }
    }

    /// Whether blob `d` was written and named through this store handle
    /// while it was being filled (see [`with_arrivals`](Self::with_arrivals)):
    /// its content was verified against `d` by this process a moment ago.
    /// Asked of a blob found in the store; for a store filled fresh
    /// ([`Arrivals::fresh`]), true of every blob.
    pub fn fetched_here(&self, d: &Digest) -> bool {
        self.arrivals.as_ref().is_some_and(|a| a.has_named(d))
    }

    fn open_blob_now(&self, d: &Digest, check: bool) -> Result<OwnedFd, StoreError> {
        let name = d.hex_bytes();
        let shown = || self.blob_path(d).display().to_string();
        match rd::open_file_at(self.blobs.as_fd(), &name, &shown) {
            Ok(fd) if !check => Ok(fd),
            Ok(fd) => {
                let st = rd::stat_fd(fd.as_fd(), &shown)?;
                match self.not_regular(d, FileType::from_raw_mode(st.st_mode)) {
                    Some(e) => Err(e),
                    None => Ok(fd),
                }
            }
            Err(e) if e.errno == Errno::NOENT => {
                Err(StoreError::Missing { digest: *d, store: self.root.display().to_string() })
            }
            // a symlink (O_NOFOLLOW) or a socket (ENXIO): say what is there
            Err(e) => {
                let there = rd::stat_at(self.blobs.as_fd(), &name, &shown).ok();
                match there.and_then(|st| self.not_regular(d, FileType::from_raw_mode(st.st_mode))) {
                    Some(err) => Err(err),
                    None => Err(e.into()),
                }
            }
        }
    }

    /// The error for a blob name that holds something other than a regular
    /// file, or `None` for a regular file.
    pub fn not_regular(&self, d: &Digest, t: FileType) -> Option<StoreError> {
        let what = match t {
            FileType::RegularFile => return None,
            FileType::Directory => "a directory",
            FileType::Symlink => "a symlink",
            FileType::Fifo => "a FIFO",
            FileType::Socket => "a socket",
            FileType::CharacterDevice => "a character device",
            FileType::BlockDevice => "a block device",
            _ => "of an unknown type",
        };
        Some(StoreError::NotRegular {
            digest: *d,
            store: self.root.display().to_string(),
            path: self.blob_path(d).display().to_string(),
            what,
        })
    }

    /// Starts writing a new blob.
    pub fn writer(&self) -> Result<BlobWriter<'_>, StoreError> {
        let tmp = match wr::open_tmpfile(self.blobs.as_fd(), 0o644, false, &|| String::new()) {
            Ok(fd) => Tmp::Anonymous(fd),
            Err(_) => {
                let dir = self.root.join(".ocix-tmp");
                let _ = std::fs::create_dir(&dir);
                let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
                let path = dir.join(format!("{}-{}", std::process::id(), n));
                let fd = wr::create_file_path(&path, 0o644, false)?;
                Tmp::Named(fd, path)
            }
        };
        Ok(BlobWriter { store: self, tmp: Some(tmp), hasher: Sha256::new(), len: 0, end: 0 })
    }

    /// Starts writing a new blob of exactly `size` bytes: in a spilling
    /// store (see [`with_spill`](Self::with_spill)) its region is reserved
    /// in the spill; elsewhere as [`writer`](Self::writer).
    pub fn writer_sized(&self, size: u64) -> Result<BlobWriter<'_>, StoreError> {
        let Some(sp) = &self.spill else { return self.writer() };
        let off = sp.reserve(size)?;
        let inline = (size <= spill::INLINE).then(|| Vec::with_capacity(size as usize));
        let tmp = Tmp::Spill { off, size, inline };
        Ok(BlobWriter { store: self, tmp: Some(tmp), hasher: Sha256::new(), len: 0, end: 0 })
    }

    /// Stores `data`, returning its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(data);
        if self.has(&d) {
            return Ok(d);
        }
        let mut w = self.writer()?;
        w.write(data)?;
        w.finish(Some(d))
    }

    /// An unnamed read-write file on the store's filesystem, gone once
    /// closed: room for bytes derived from blobs (a push's compressed form
    /// of one) that must never take a name in a store other processes
    /// share.
    pub fn scratch(&self) -> Result<std::fs::File, StoreError> {
        if let Ok(fd) = wr::open_tmpfile(self.blobs.as_fd(), 0o600, true, &|| String::new()) {
            return Ok(std::fs::File::from(fd));
        }
        let dir = self.root.join(".ocix-tmp");
        let _ = std::fs::create_dir(&dir);
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{}", std::process::id(), n));
        let fd = wr::create_file_path(&path, 0o600, true)?;
        let _ = std::fs::remove_file(&path);
        Ok(std::fs::File::from(fd))
    }

    /// Flushes everything written to the store's filesystem to stable storage.
    pub fn sync(&self) -> Result<(), StoreError> {
        wr::syncfs(self.blobs.as_fd(), &|| self.root.display().to_string())?;
        Ok(())
    }
}

enum Tmp {
    Anonymous(OwnedFd),
    Named(OwnedFd, PathBuf),
    /// A region of the store's spill: `size` bytes from `off`, small
    /// content gathered in `inline` until the end.
    Spill {
        off: u64,
        size: u64,
        inline: Option<Vec<u8>>,
    },
}

/// A blob being written: hashed as it goes, named only by [`finish`](Self::finish).
pub struct BlobWriter<'s> {
    store: &'s Store,
    tmp: Option<Tmp>,
    hasher: Sha256,
    len: u64,
    /// The end of the bytes written: the file's size (it starts empty).
    end: u64,
}

impl BlobWriter<'_> {
    fn shown(&self) -> String {
        format!("{}/.ocix-tmp (blob being written)", self.store.root.display())
    }

    /// Appends data.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(data);
        let store = self.store;
        let shown = || format!("{}/.ocix-tmp (blob being written)", store.root.display());
        match self.tmp.as_mut().expect("writer used after finish") {
            Tmp::Anonymous(fd) | Tmp::Named(fd, _) => {
                wr::pwrite_all(fd.as_fd(), data, self.len, &shown)?;
            }
            Tmp::Spill { off, size, inline } => {
                // never past the region reserved: the next blob's bytes
                let end = self.len + data.len() as u64;
                if end > *size {
                    return Err(StoreError::WrongSize { path: shown(), expected: *size, actual: end });
                }
                match inline {
                    Some(v) => {
                        v.resize(self.len as usize, 0);
                        v.extend_from_slice(data);
                    }
                    None => {
                        let sp = self.store.spill.as_ref().expect("a spill writer has a spill");
                        sp.write_at(data, *off + spill::HEADER + self.len)?;
                    }
                }
            }
        }
        self.len += data.len() as u64;
        self.end = self.len;
        Ok(())
    }

    /// Appends `n` zero bytes without writing them (a hole).
    pub fn skip_zeros(&mut self, n: u64) {
        const Z: [u8; 4096] = [0; 4096];
        let mut left = n;
        while left > 0 {
            let k = left.min(Z.len() as u64) as usize;
            self.hasher.update(&Z[..k]);
            left -= k as u64;
        }
        self.len += n;
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Names the blob by its digest. If `expected` is given and differs,
    /// nothing is named and an error is returned. A blob already present is
    /// kept as it is.
    pub fn finish(mut self, expected: Option<Digest>) -> Result<Digest, StoreError> {
        let tmp = self.tmp.take().expect("finish twice");
        if let Tmp::Spill { off, size, inline } = tmp {
            return self.finish_spilled(expected, off, size, inline);
        }
        let (Tmp::Anonymous(fd) | Tmp::Named(fd, _)) = &tmp else { unreachable!("spill handled above") };
        // only trailing holes need the size set
        if self.len != self.end {
            wr::ftruncate(fd.as_fd(), self.len, &|| self.shown())?;
        }
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(exp) = expected {
            if exp != actual {
                if let Tmp::Named(_, p) = &tmp {
                    let _ = std::fs::remove_file(p);
                }
                return Err(StoreError::Corrupt { path: self.shown(), expected: exp, actual });
            }
        }
        let name = actual.hex();
        // whether the name is now this writer's content (not a blob that
        // was there already)
        let mut linked = false;
        match &tmp {
            Tmp::Anonymous(fd) => {
                let shown = || self.store.blob_path(&actual).display().to_string();
                match wr::link_tmpfile(fd.as_fd(), self.store.blobs.as_fd(), name.as_bytes(), &shown) {
                    Ok(()) => linked = true,
                    Err(e) if e.errno == Errno::EXIST => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Tmp::Named(_, p) => {
                let target = self.store.blob_path(&actual);
                if self.store.has(&actual) {
                    let _ = std::fs::remove_file(p);
                } else {
                    linked = true;
                    std::fs::rename(p, &target).map_err(|e| {
                        SysError::new(
                            "rename",
                            target.display().to_string(),
                            Errno::from_io_error(&e).unwrap_or(Errno::IO),
                        )
                    })?;
                }
            }
            Tmp::Spill { .. } => unreachable!("spill handled above"),
        }
        let _ = fd.as_fd();
        if let Some(a) = &self.store.arrivals {
            if linked {
                a.named(actual);
            } else {
                a.woke();
            }
        }
        Ok(actual)
    }
}

impl BlobWriter<'_> {
    fn finish_spilled(
        mut self,
        expected: Option<Digest>,
        off: u64,
        size: u64,
        inline: Option<Vec<u8>>,
    ) -> Result<Digest, StoreError> {
        if self.len != size {
            return Err(StoreError::WrongSize { path: self.shown(), expected: size, actual: self.len });
        }
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(exp) = expected
            && exp != actual
        {
            return Err(StoreError::Corrupt { path: self.shown(), expected: exp, actual });
        }
        let sp = self.store.spill.as_ref().expect("a spill writer has a spill");
        // trailing holes of a small blob are zeros gathered with it
        let inline = inline.map(|mut v| {
            v.resize(size as usize, 0);
            v
        });
        let named = sp.name(actual, off, inline.as_deref())?;
        if let Some(a) = &self.store.arrivals {
            if named {
                a.named(actual);
            } else {
                a.woke();
            }
        }
        Ok(actual)
    }
}

impl Drop for BlobWriter<'_> {
    fn drop(&mut self) {
        if let Some(Tmp::Named(_, p)) = &self.tmp {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Checks a stream of blob content against its expected digest and size.
pub struct Verifier {
    hasher: Sha256,
    len: u64,
    expected: Digest,
    size: u64,
}

impl Verifier {
    /// Expects `size` bytes hashing to `expected`.
    pub fn new(expected: Digest, size: u64) -> Self {
        Verifier { hasher: Sha256::new(), len: 0, expected, size }
    }

    /// Feeds content.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// Checks the end of the content; `path` names the blob in errors.
    pub fn finish(self, path: &str) -> Result<(), StoreError> {
        self.finish_with(|| path.to_string())
    }

    /// [`finish`](Self::finish) naming the blob only when there is an
    /// error: unpack checks a blob per file and builds no name for a good one.
    pub fn finish_with(self, path: impl FnOnce() -> String) -> Result<(), StoreError> {
        if self.len != self.size {
            return Err(StoreError::WrongSize { path: path(), expected: self.size, actual: self.len });
        }
        let actual = Digest(self.hasher.finalize().into());
        if actual != self.expected {
            return Err(StoreError::Corrupt { path: path(), expected: self.expected, actual });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_being_filled_makes_readers_wait_and_tells_what_it_verified() {
        let t = tempfile::tempdir().unwrap();
        let old = Store::create(t.path()).unwrap().put_bytes(b"was here").unwrap();
        let a = Arc::new(Arrivals::new());
        let s = Store::create(t.path()).unwrap().with_arrivals(a.clone());
        let late = Digest::of(b"arrives late");
        let never = Digest::of(b"never arrives");
        std::thread::scope(|sc| {
            let reader = sc.spawn(|| {
                use std::io::Read as _;
                let mut data = Vec::new();
                std::fs::File::from(s.open_blob(&late).unwrap()).read_to_end(&mut data).unwrap();
                data
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!reader.is_finished(), "the reader did not wait");
            s.put_bytes(b"was here").unwrap(); // present already: not ours
            s.put_bytes(b"arrives late").unwrap();
            assert_eq!(reader.join().unwrap(), b"arrives late");
            let waiter = sc.spawn(|| s.open_blob(&never).map(|_| ()));
            std::thread::sleep(std::time::Duration::from_millis(50));
            a.close(Filled::Stopped("the registry went away".into()));
            let e = waiter.join().unwrap().unwrap_err().to_string();
            assert!(e.contains(&never.to_string()) && e.contains("the registry went away"), "{e}");
        });
        assert!(s.fetched_here(&late));
        assert!(!s.fetched_here(&old), "a blob found in place counted as verified");
        // once closed, a present blob still opens and a missing one fails at once
        assert!(s.open_blob(&old).is_ok());
        assert!(matches!(s.open_blob(&never), Err(StoreError::NotFetched { .. })));
    }

    /// Reads `len` bytes of a spilled blob.
    fn read_spilled(s: &Store, d: &Digest, len: usize) -> Vec<u8> {
        let (fd, off) = s.spilled(d).expect("spilled");
        let mut h = [0u8; 32];
        assert_eq!(rd::pread(fd, &mut h, off, &String::new).unwrap(), 32);
        assert!(Store::spilled_as(d, &h), "the region of {d} starts with another digest");
        let off = off + SPILL_HEADER;
        let mut v = vec![0xAA; len];
        let mut got = 0;
        while got < len {
            let n = rd::pread(fd, &mut v[got..], off + got as u64, &String::new).unwrap();
            assert!(n > 0, "spill ends inside blob {d}");
            got += n;
        }
        v
    }

    #[test]
    fn a_spill_gives_back_every_blob_exactly_and_names_no_file() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap().with_spill();
        assert!(s.spills());
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let blobs: Vec<(Vec<u8>, u64)> = vec![
            (b"small".to_vec(), 0),
            (big.clone(), 0),
            (b"small".to_vec(), 0),           // the same content again
            (b"holes around".to_vec(), 8192), // zeros skipped before and after
            (vec![7u8; 70_000], 0),           // above the gathered size
            (b"tail".to_vec(), 100_000),      // the last blob ends in a hole
        ];
        let mut want = Vec::new();
        for (data, hole) in &blobs {
            let size = data.len() as u64 + 2 * hole;
            let mut w = s.writer_sized(size).unwrap();
            w.skip_zeros(*hole);
            w.write(data).unwrap();
            w.skip_zeros(*hole);
            let d = w.finish(None).unwrap();
            let mut full = vec![0u8; *hole as usize];
            full.extend_from_slice(data);
            full.resize(size as usize, 0);
            assert_eq!(d, Digest::of(&full));
            want.push((d, full));
        }
        // nothing can be read before the seal, and no blob is a file
        assert!(s.spilled(&want[0].0).is_none());
        s.seal().unwrap();
        for (d, full) in &want {
            assert_eq!(read_spilled(&s, d, full.len()), *full, "blob {d}");
            assert!(!s.has(d), "blob {d} became a file");
        }
        assert_eq!(std::fs::read_dir(t.path().join("blobs/sha256")).unwrap().count(), 0);
    }

    #[test]
    fn a_spill_writer_never_writes_past_its_region() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap().with_spill();
        let mut over = s.writer_sized(4).unwrap();
        let mut next = s.writer_sized(100_000).unwrap();
        next.write(&vec![1u8; 100_000]).unwrap();
        let nd = next.finish(None).unwrap();
        over.write(b"1234").unwrap();
        assert!(matches!(over.write(b"5"), Err(StoreError::WrongSize { .. })));
        let mut short = s.writer_sized(10).unwrap();
        short.write(b"short").unwrap();
        assert!(matches!(short.finish(None), Err(StoreError::WrongSize { .. })));
        let wrong = s.writer_sized(3).unwrap();
        let mut wrong = wrong;
        wrong.write(b"abc").unwrap();
        assert!(matches!(wrong.finish(Some(Digest::of(b"abd"))), Err(StoreError::Corrupt { .. })));
        s.seal().unwrap();
        assert_eq!(read_spilled(&s, &nd, 100_000), vec![1u8; 100_000]);
        assert!(s.spilled(&Digest::of(b"abc")).is_none(), "a blob with the wrong digest was named");
    }

    #[test]
    fn put_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap();
        let d = s.put_bytes(b"hello").unwrap();
        assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), b"hello");
        assert!(s.has(&d));
        // second put is a no-op
        assert_eq!(s.put_bytes(b"hello").unwrap(), d);
        // no temporary files are left behind
        let names: Vec<_> = std::fs::read_dir(t.path().join("blobs/sha256")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn wrong_expected_digest_names_nothing() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap();
        let mut w = s.writer().unwrap();
        w.write(b"abc").unwrap();
        let e = w.finish(Some(Digest::of(b"abd"))).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(std::fs::read_dir(t.path().join("blobs/sha256")).unwrap().count(), 0);
    }

    #[test]
    fn holes_hash_as_zeros() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap();
        let mut w = s.writer().unwrap();
        w.write(b"x").unwrap();
        w.skip_zeros(8192);
        w.write(b"y").unwrap();
        let d = w.finish(None).unwrap();
        let mut want = b"x".to_vec();
        want.extend_from_slice(&[0; 8192]);
        want.push(b'y');
        assert_eq!(d, Digest::of(&want));
        assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), want);
    }

    /// Holes at the end still count in the blob's size (only then is its
    /// size set apart from the writes).
    #[test]
    fn trailing_holes_are_part_of_the_blob() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::create(t.path()).unwrap();
        for (head, holes) in [(&b"x"[..], 8192), (&b""[..], 4096), (&b"abc"[..], 0)] {
            let mut w = s.writer().unwrap();
            w.write(head).unwrap();
            w.skip_zeros(holes);
            let d = w.finish(None).unwrap();
            let mut want = head.to_vec();
            want.resize(head.len() + holes as usize, 0);
            assert_eq!(d, Digest::of(&want));
            assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), want);
        }
    }
}
