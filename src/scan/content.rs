//! A regular file's content -> its sha256, its zero runs and (optionally) a
//! blob in the store, in one read pass.
//!
//! The file is read in 1 MiB chunks aligned to 4 KiB. A chunk that lies
//! wholly inside a hole the filesystem reports (`SEEK_DATA`/`SEEK_HOLE`, only
//! asked for files with fewer allocated blocks than their size) is not read
//! at all: it is zeros. Every whole, aligned 4 KiB block whose bytes are all
//! zero joins a zero run ([`ZeroRuns`]) whether or not it was a hole on
//! disk, so the runs depend on the content alone. Zero blocks are skipped,
//! not written, when the blob is stored, so blobs stay sparse too.

use super::{Change, EntryError, show};
use crate::manifest::zeros::ZeroRuns;
use crate::manifest::{BLOCK, Digest, File};
use crate::store::{BlobWriter, Store, StoreError};
use crate::sys::read as rd;
use sha2::{Digest as _, Sha256};
use std::os::fd::BorrowedFd;
use std::path::Path;

/// Read size.
pub const CHUNK: usize = 1 << 20;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Where content goes while it is read: a hash only, or a blob being written
/// (which hashes too).
pub enum ContentSink<'s> {
    /// Hash only.
    Hash(Box<Sha256>),
    /// Write a blob.
    Blob(BlobWriter<'s>),
}

impl ContentSink<'_> {
    /// Appends data.
    pub fn data(&mut self, d: &[u8]) -> Result<(), StoreError> {
        match self {
            ContentSink::Hash(h) => {
                h.update(d);
                Ok(())
            }
            ContentSink::Blob(w) => w.write(d),
        }
    }

    /// Appends `n` zero bytes (a hole in the blob).
    pub fn zeros(&mut self, mut n: u64) {
        match self {
            ContentSink::Hash(h) => {
                while n > 0 {
                    let k = n.min(CHUNK as u64) as usize;
                    h.update(&ZEROS[..k]);
                    n -= k as u64;
                }
            }
            ContentSink::Blob(w) => w.skip_zeros(n),
        }
    }

    /// The content's digest (the blob is named by it).
    pub fn finish(self) -> Result<Digest, StoreError> {
        match self {
            ContentSink::Hash(h) => Ok(Digest((*h).finalize().into())),
            ContentSink::Blob(w) => w.finish(None),
        }
    }
}

/// Data segments `[start, end)` of a sparse file; the rest is holes.
fn data_segments(fd: BorrowedFd<'_>, size: u64) -> Vec<(u64, u64)> {
    let mut segs = Vec::new();
    let mut off = 0;
    while off < size {
        let Some(start) = rd::seek_data(fd, off) else { break };
        if start >= size {
            break;
        }
        let end = rd::seek_hole(fd, start, size).min(size);
        if end <= start {
            // cannot tell: treat the rest as data
            segs.push((start, size));
            break;
        }
        segs.push((start, end));
        off = end;
    }
    segs
}

/// Reads `size` bytes of `fd` from offset 0, hashing them, finding zero runs
/// and, with a store, writing the blob. Fails if the file is shorter or
/// longer than `size` when read. `path` names the file in errors.
pub fn hash_content(
    fd: BorrowedFd<'_>,
    size: u64,
    sparse: bool,
    store: Option<&Store>,
    buf: &mut [u8],
    path: &Path,
) -> Result<File, EntryError> {
    debug_assert!(buf.len() >= CHUNK);
    let shown = &|| show(path);
    let changed = |what| EntryError::Changed { path: path.to_path_buf(), what };
    let mut probe = [0u8; 1];
    if size == 0 {
        if rd::pread(fd, &mut probe, 0, shown)? != 0 {
            return Err(changed(Change::Grew));
        }
        return Ok(File::default());
    }
    let segments = if sparse { Some(data_segments(fd, size)) } else { None };
    let mut sink = match store {
        Some(s) => ContentSink::Blob(s.writer()?),
        None => ContentSink::Hash(Box::default()),
    };
    let mut runs = ZeroRuns::new(size);
    let mut off = 0u64;
    let mut seg_i = 0usize;
    // whether the last read already showed the end of the file
    let mut probed = false;
    while off < size {
        let len = (size - off).min(CHUNK as u64);
        let end = off + len;
        let in_hole = match &segments {
            None => false,
            Some(segs) => {
                while seg_i < segs.len() && segs[seg_i].1 <= off {
                    seg_i += 1;
                }
                seg_i >= segs.len() || segs[seg_i].0 >= end
            }
        };
        if in_hole {
            sink.zeros(len);
            runs.zeros(len);
        } else {
            // The last read asks for one byte more when the buffer has
            // room: a regular file reads short only at its end, so getting
            // exactly what is left shows the end without another call.
            let want = if end == size && buf.len() > len as usize { len as usize + 1 } else { len as usize };
            let mut got = 0usize;
            while got < len as usize {
                let n = rd::pread(fd, &mut buf[got..want], off + got as u64, shown)?;
                if n == 0 {
                    return Err(changed(Change::Shrank { expected: size, got: off + got as u64 }));
                }
                got += n;
            }
            if got > len as usize {
                return Err(changed(Change::GrewPast(size)));
            }
            if want > len as usize {
                probed = true;
            }
            let chunk = &mut buf[..len as usize];
            let mut pending = 0usize; // start of data not yet given to the sink
            let mut i = 0usize;
            while i < chunk.len() {
                let blk_end = (i + BLOCK as usize).min(chunk.len());
                // chunks start block-aligned, so this is one whole block
                // (or the file's partial last one)
                if runs.block(&chunk[i..blk_end]) {
                    if pending < i {
                        sink.data(&chunk[pending..i])?;
                    }
                    sink.zeros(BLOCK);
                    pending = blk_end;
                }
                i = blk_end;
            }
            if pending < chunk.len() {
                sink.data(&chunk[pending..])?;
            }
        }
        off = end;
    }
    if !probed && rd::pread(fd, &mut probe, size, shown)? != 0 {
        return Err(changed(Change::GrewPast(size)));
    }
    let digest = sink.finish()?;
    Ok(File { size, digest: Some(digest), zeros: runs.finish() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsFd;

    fn scan_bytes(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        let mut buf = vec![0; CHUNK];
        hash_content(f.as_fd(), data.len() as u64, false, None, &mut buf, Path::new("t")).unwrap()
    }

    #[test]
    fn digest_covers_zero_blocks_left_out_of_the_sink() {
        let mut d = vec![1u8; 4096];
        d.extend_from_slice(&[0; 8192]);
        d.extend_from_slice(&[2; 4096]);
        d.extend_from_slice(&[0; 4096]);
        d.extend_from_slice(&[0; 100]);
        let f = scan_bytes(&d);
        assert_eq!(f.zeros, vec![(1, 2), (4, 1)]);
        assert_eq!(f.digest, Some(Digest::of(&d)));
        assert_eq!(f.size, d.len() as u64);
    }

    #[test]
    fn sparse_file_same_as_dense() {
        // a real hole on disk and written zeros give the same record
        let mut sparse = tempfile::tempfile().unwrap();
        sparse.seek(SeekFrom::Start(3 * CHUNK as u64 + 4096)).unwrap();
        sparse.write_all(b"data").unwrap();
        let size = 3 * CHUNK as u64 + 4100;
        let mut buf = vec![0; CHUNK];
        let a = hash_content(sparse.as_fd(), size, true, None, &mut buf, Path::new("s")).unwrap();
        let mut dense = vec![0u8; size as usize];
        dense[3 * CHUNK + 4096..].copy_from_slice(b"data");
        let b = scan_bytes(&dense);
        assert_eq!(a, b);
        assert_eq!(a.zeros, vec![(0, (3 * CHUNK as u64 + 4096) / 4096)]);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello").unwrap();
        let mut buf = vec![0; CHUNK];
        let e = hash_content(f.as_fd(), 4, false, None, &mut buf, Path::new("g")).unwrap_err();
        assert!(matches!(e, EntryError::Changed { what: Change::GrewPast(4), .. }), "{e}");
        let e = hash_content(f.as_fd(), 9, false, None, &mut buf, Path::new("s")).unwrap_err();
        assert!(e.to_string().contains("shrank"), "{e}");
        // a buffer with room past the size sees the end in the last read
        let mut buf = vec![0; CHUNK + BLOCK as usize];
        let e = hash_content(f.as_fd(), 4, false, None, &mut buf, Path::new("g")).unwrap_err();
        assert!(matches!(e, EntryError::Changed { what: Change::GrewPast(4), .. }), "{e}");
        let e = hash_content(f.as_fd(), 9, false, None, &mut buf, Path::new("s")).unwrap_err();
        assert!(e.to_string().contains("shrank"), "{e}");
        let ok = hash_content(f.as_fd(), 5, false, None, &mut buf, Path::new("o")).unwrap();
        assert_eq!(ok.digest, Some(Digest::of(b"hello")));
    }
}
