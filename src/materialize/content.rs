//! Regular file content: blob -> file, verified while written, with the
//! manifest's zero runs left as holes; and, for `--update`, checking whether
//! a file already on disk has the manifest's content.

use super::{Ctx, UnpackError};
use crate::manifest::compact::FileRef;
use crate::manifest::{BLOCK, Digest};
use crate::store::{SPILL_HEADER, Store, StoreError, Verifier};
use crate::sys::read::{self as rd, FileType};
use crate::sys::{Errno, write as wr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Bytes read or copied at once.
pub(super) const CHUNK: usize = 1 << 20;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

fn feed_zeros(v: &mut Verifier, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        v.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// The file's data segments `[start, end)`: everything outside its zero runs.
fn data_segments(f: &FileRef<'_>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(f.zeros.len() + 1);
    let mut pos = 0u64;
    for &(s, n) in f.zeros {
        let (zs, ze) = (s.saturating_mul(BLOCK).min(f.size), s.saturating_add(n).saturating_mul(BLOCK).min(f.size));
        if zs > pos {
            out.push((pos, zs));
        }
        pos = pos.max(ze);
    }
    if pos < f.size {
        out.push((pos, f.size));
    }
    out
}

pub(super) fn content_err(ctx: &Ctx<'_>, rel: &[u8], digest: Digest, e: StoreError) -> UnpackError {
    UnpackError::Content { path: ctx.shown(rel), digest, source: Box::new(e) }
}

/// Writes the content of `f` into the new, empty file `out`, reading blob
/// `f.digest` from the store. The blob's size must equal the declared size,
/// and the sha256 of what is written must equal the digest; otherwise an
/// error naming the path and the digest (the caller removes the file).
/// Zero runs are skipped (holes after `ftruncate`), their zeros fed to the
/// hash; without zero runs the blob is copied with `copy_file_range`
/// (possibly a reflink) and the written file is read back to verify it.
/// Either way what is hashed is exactly what the file now holds, so a blob
/// whose declared zero runs are not zero cannot smuggle data in: the file
/// gets zeros there, and the digest decides.
pub(super) fn write_content(
    ctx: &Ctx<'_>,
    rel: &[u8],
    f: &FileRef<'_>,
    out: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> Result<u64, UnpackError> {
    let Some(&digest) = f.digest else { return Ok(0) };
    if f.size == 0 {
        return Ok(0);
    }
    let shown = || ctx.shown(rel);
    if let Some((spill, at)) = ctx.store.spilled(&digest) {
        let mut head = [0u8; SPILL_HEADER as usize];
        read_spilled(ctx, digest, spill, at, &mut head)?;
        if !Store::spilled_as(&digest, &head) {
            return Err(not_spilled(ctx, rel, digest));
        }
        return write_spilled(ctx, rel, f, digest, out, buf, spill, at + SPILL_HEADER);
    }
    let blob = ctx.store.open_blob(&digest).map_err(|e| content_err(ctx, rel, digest, e))?;
    let blob_shown = || ctx.store.blob_path(&digest).display().to_string();
    let st = rd::stat_fd(blob.as_fd(), &blob_shown)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(content_err(
            ctx,
            rel,
            digest,
            StoreError::NotAStore(format!("{} is not a regular file", blob_shown())),
        ));
    }
    let blob_size = st.st_size as u64;
    if blob_size != f.size {
        return Err(content_err(
            ctx,
            rel,
            digest,
            StoreError::WrongSize { path: blob_shown(), expected: f.size, actual: blob_size },
        ));
    }
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    // a blob this process has just fetched and verified (a pull filling
    // the store beside the unpack) is not hashed a second time; but zero
    // runs are the manifest's claim about the content, which only the hash
    // of what was written tests, so a file with zero runs is still hashed
    let trusted = f.zeros.is_empty() && ctx.store.fetched_here(&digest);
    let same_fs = rd::stat_fd(out, &shown).map(|o| o.st_dev == st.st_dev).unwrap_or(false);
    if f.zeros.is_empty() && same_fs && copy_range(blob.as_fd(), 0, out, f.size, &shown, &blob_shown)? {
        if trusted {
            return Ok(f.size);
        }
        // verify what was written, reading it back
        let mut v = Verifier::new(digest, f.size);
        let mut off = 0u64;
        while off < f.size {
            let want = (f.size - off).min(buf.len() as u64) as usize;
            let n = rd::pread(out, &mut buf[..want], off, &shown)?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n]);
            off += n as u64;
        }
        v.finish_with(blob_shown).map_err(|e| content_err(ctx, rel, digest, e))?;
        return Ok(f.size);
    }
    wr::ftruncate(out, f.size, &shown)?;
    let mut v = (!trusted).then(|| Verifier::new(digest, f.size));
    let src = Source { fd: blob.as_fd(), base: 0, shown: &blob_shown };
    let written = copy_segments(ctx, rel, f, digest, &src, out, buf, &mut v)?;
    // a blob that grew since it was measured is not what was hashed
    if rd::pread(blob.as_fd(), &mut buf[..1], f.size, &blob_shown)? != 0 {
        return Err(content_err(
            ctx,
            rel,
            digest,
            StoreError::WrongSize { path: blob_shown(), expected: f.size, actual: f.size + 1 },
        ));
    }
    if let Some(v) = v {
        if let Err(e) = v.finish_with(blob_shown) {
            // an intact blob written with false zero runs: blame the manifest
            if !f.zeros.is_empty() && blob_is_intact(&blob, f.size, digest, buf, &blob_shown)? {
                return Err(UnpackError::ZeroRuns { path: ctx.shown(rel), digest, blob: blob_shown() });
            }
            return Err(content_err(ctx, rel, digest, e));
        }
    }
    Ok(written)
}

/// Where a blob's bytes are read from: `fd`, its first byte at `base`.
struct Source<'a> {
    fd: BorrowedFd<'a>,
    base: u64,
    shown: &'a dyn Fn() -> String,
}

/// Writes the data segments of `f` (all but its zero runs) from `src` into
/// `out` (already of the right size), feeding everything the file holds,
/// zero runs included, to `v`. Returns the bytes written. A blob that ends
/// early is an error naming it.
#[allow(clippy::too_many_arguments)]
fn copy_segments(
    ctx: &Ctx<'_>,
    rel: &[u8],
    f: &FileRef<'_>,
    digest: Digest,
    src: &Source<'_>,
    out: BorrowedFd<'_>,
    buf: &mut [u8],
    v: &mut Option<Verifier>,
) -> Result<u64, UnpackError> {
    let shown = || ctx.shown(rel);
    let mut pos = 0u64;
    let mut written = 0u64;
    for (start, end) in data_segments(f) {
        if let Some(v) = v {
            feed_zeros(v, start - pos);
        }
        let mut off = start;
        while off < end {
            let want = (end - off).min(buf.len() as u64) as usize;
            let n = rd::pread(src.fd, &mut buf[..want], src.base + off, src.shown)?;
            if n == 0 {
                return Err(content_err(
                    ctx,
                    rel,
                    digest,
                    StoreError::WrongSize { path: (src.shown)(), expected: f.size, actual: off },
                ));
            }
            if let Some(v) = v {
                v.update(&buf[..n]);
            }
            wr::pwrite_all(out, &buf[..n], off, &shown)?;
            off += n as u64;
            written += n as u64;
        }
        pos = end;
    }
    if let Some(v) = v {
        feed_zeros(v, f.size - pos);
    }
    Ok(written)
}

/// Whether the blob's whole content (`size` bytes) has digest `digest`.
fn blob_is_intact(
    blob: &OwnedFd,
    size: u64,
    digest: Digest,
    buf: &mut [u8],
    blob_shown: &dyn Fn() -> String,
) -> Result<bool, UnpackError> {
    let mut v = Verifier::new(digest, size);
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(buf.len() as u64) as usize;
        let n = rd::pread(blob.as_fd(), &mut buf[..want], off, blob_shown)?;
        if n == 0 {
            return Ok(false);
        }
        v.update(&buf[..n]);
        off += n as u64;
    }
    Ok(v.finish_with(blob_shown).is_ok())
}

/// Writes the content of `f` into the new, empty file `out`: a small file
/// read whole ([`read_small`]) and written at once, any other as
/// [`write_content`] does.
pub(super) fn fill(
    ctx: &Ctx<'_>,
    rel: &[u8],
    f: &FileRef<'_>,
    out: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> Result<u64, UnpackError> {
    if f.digest.is_some() && f.size > 0 && f.size < SMALL && f.zeros.is_empty() {
        let len = read_small(ctx, rel, f, buf)?.len();
        wr::pwrite_all(out, &buf[..len], 0, &|| ctx.shown(rel))?;
        return Ok(len as u64);
    }
    write_content(ctx, rel, f, out, buf)
}

/// Files below this size without zero runs are read whole, hashed and
/// written with one call each ([`read_small`]): cheaper than
/// `copy_file_range` followed by reading the copy back to verify it.
pub(super) const SMALL: u64 = CHUNK as u64;

/// Reads the whole blob of `f` (smaller than [`SMALL`], no zero runs) into
/// `buf` and checks it: exactly `f.size` bytes, and their sha256 is the
/// digest (unless the store fetched and verified it in this process).
/// Returns the verified content. One `read` asking for one byte more than
/// the size both reads it and shows the blob ends there; only a blob that
/// is not exactly right is looked at further (`fstat`), to say what is
/// wrong with it.
pub(super) fn read_small<'b>(
    ctx: &Ctx<'_>,
    rel: &[u8],
    f: &FileRef<'_>,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], UnpackError> {
    let Some(&digest) = f.digest else { return Ok(&[]) };
    let size = f.size as usize;
    if f.size == 0 {
        return Ok(&[]);
    }
    if buf.len() < size.max(CHUNK) {
        buf.resize(size.max(CHUNK), 0);
    }
    if let Some((spill, at)) = ctx.store.spilled(&digest) {
        // the region's digest and the content in one read; the content was
        // hashed by this process as it was written (see `Store::with_spill`)
        let head = SPILL_HEADER as usize;
        if buf.len() < head + size {
            buf.resize(head + size, 0);
        }
        read_spilled(ctx, digest, spill, at, &mut buf[..head + size])?;
        if !Store::spilled_as(&digest, &buf[..head]) {
            return Err(not_spilled(ctx, rel, digest));
        }
        buf.copy_within(head..head + size, 0);
        return Ok(&buf[..size]);
    }
    let blob = ctx.store.open_blob_unchecked(&digest).map_err(|e| content_err(ctx, rel, digest, e))?;
    let blob_shown = || ctx.store.blob_path(&digest).display().to_string();
    let want = size + 1;
    if buf.len() < want.max(CHUNK) {
        buf.resize(want.max(CHUNK), 0);
    }
    let mut got = 0usize;
    let mut eof = false;
    while got < want {
        let ask = want - got;
        let n = match rd::read(blob.as_fd(), &mut buf[got..want], &blob_shown) {
            Ok(n) => n,
            Err(e) => return Err(blob_trouble(ctx, rel, digest, &blob, f.size, Ok(e))),
        };
        got += n;
        // a short read of a regular file ends at its end
        if n == 0 || (n < ask && got == size) {
            eof = true;
            break;
        }
    }
    if !eof || got != size {
        return Err(blob_trouble(ctx, rel, digest, &blob, f.size, Err(got as u64)));
    }
    if !ctx.store.fetched_here(&digest) {
        let mut v = Verifier::new(digest, f.size);
        v.update(&buf[..size]);
        v.finish_with(blob_shown).map_err(|e| content_err(ctx, rel, digest, e))?;
    }
    Ok(&buf[..size])
}

/// The error for a blob the spill's index pointed at another blob for
/// (which its checks make impossible): the blob is not there.
fn not_spilled(ctx: &Ctx<'_>, rel: &[u8], digest: Digest) -> UnpackError {
    let store = ctx.store.root().display().to_string();
    content_err(ctx, rel, digest, StoreError::Missing { digest, store })
}

/// Reads exactly `into.len()` bytes of the spilled blob `digest` from
/// `spill` at `base`.
fn read_spilled(
    ctx: &Ctx<'_>,
    digest: Digest,
    spill: BorrowedFd<'_>,
    base: u64,
    into: &mut [u8],
) -> Result<(), UnpackError> {
    let shown = || ctx.store.spilled_shown(&digest);
    let mut got = 0usize;
    while got < into.len() {
        let n = rd::pread(spill, &mut into[got..], base + got as u64, &shown)?;
        if n == 0 {
            // the spill was cut short under this run
            return Err(UnpackError::Sys(crate::sys::SysError::new("pread", shown(), Errno::NODATA)));
        }
        got += n;
    }
    Ok(())
}

/// [`write_content`] for a blob in the store's spill (see
/// `Store::with_spill`): its bytes were hashed by this process as they
/// were written, so only a file with zero runs is hashed again (the runs
/// are the manifest's claim, tested by the hash of what the file holds).
#[allow(clippy::too_many_arguments)]
fn write_spilled(
    ctx: &Ctx<'_>,
    rel: &[u8],
    f: &FileRef<'_>,
    digest: Digest,
    out: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    spill: BorrowedFd<'_>,
    base: u64,
) -> Result<u64, UnpackError> {
    let shown = || ctx.shown(rel);
    let spill_shown = || ctx.store.spilled_shown(&digest);
    if f.zeros.is_empty() && copy_range(spill, base, out, f.size, &shown, &spill_shown)? {
        return Ok(f.size);
    }
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    wr::ftruncate(out, f.size, &shown)?;
    let mut v = (!f.zeros.is_empty()).then(|| Verifier::new(digest, f.size));
    let src = Source { fd: spill, base, shown: &spill_shown };
    let written = copy_segments(ctx, rel, f, digest, &src, out, buf, &mut v)?;
    if let Some(v) = v {
        // the spilled bytes hashed to the digest as they were written: a
        // mismatch now is the manifest's zero runs
        if v.finish_with(spill_shown).is_err() {
            return Err(UnpackError::ZeroRuns { path: ctx.shown(rel), digest, blob: spill_shown() });
        }
    }
    Ok(written)
}

/// The error for a blob that did not read back as `size` bytes: not a
/// regular file, or the read's own error (`Ok`), or its size (`Err`: the
/// bytes read).
fn blob_trouble(
    ctx: &Ctx<'_>,
    rel: &[u8],
    digest: Digest,
    blob: &OwnedFd,
    size: u64,
    read: Result<crate::sys::SysError, u64>,
) -> UnpackError {
    let blob_shown = || ctx.store.blob_path(&digest).display().to_string();
    let st = match rd::stat_fd(blob.as_fd(), &blob_shown) {
        Ok(st) => st,
        Err(e) => return e.into(),
    };
    if let Some(e) = ctx.store.not_regular(&digest, FileType::from_raw_mode(st.st_mode)) {
        return content_err(ctx, rel, digest, e);
    }
    let got = match read {
        Ok(e) => return e.into(),
        Err(got) => got,
    };
    // the size on disk, unless the blob changed under the read
    let actual = if st.st_size as u64 != size { st.st_size as u64 } else { got };
    content_err(ctx, rel, digest, StoreError::WrongSize { path: blob_shown(), expected: size, actual })
}

/// Copies `size` bytes with `copy_file_range`. Returns false (nothing
/// copied) when the kernel or filesystem cannot do it, so the caller falls
/// back to reading and writing.
fn copy_range(
    blob: BorrowedFd<'_>,
    base: u64,
    out: BorrowedFd<'_>,
    size: u64,
    shown: &dyn Fn() -> String,
    blob_shown: &dyn Fn() -> String,
) -> Result<bool, UnpackError> {
    let (mut off_in, mut off_out) = (base, 0u64);
    while off_out < size {
        let want = (size - off_out).min(1 << 30) as usize;
        match wr::copy_file_range(blob, &mut off_in, out, &mut off_out, want, shown) {
            Ok(0) => {
                return Err(UnpackError::Sys(crate::sys::SysError::new(
                    "copy_file_range",
                    blob_shown(),
                    Errno::NODATA,
                )));
            }
            Ok(_) => {}
            Err(e)
                if off_out == 0
                    && matches!(
                        e.errno,
                        Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP | Errno::BADF
                    ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Whether the regular file open as `fd` has exactly the content of `f`
/// (size, then sha256; holes are read as zeros without reading them).
pub(super) fn same_content(
    fd: BorrowedFd<'_>,
    f: &FileRef<'_>,
    shown: &dyn Fn() -> String,
    buf: &mut Vec<u8>,
) -> Result<bool, UnpackError> {
    let st = rd::stat_fd(fd, shown)?;
    if st.st_size as u64 != f.size {
        return Ok(false);
    }
    let Some(&digest) = f.digest else {
        return Ok(f.size == 0);
    };
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let mut v = Verifier::new(digest, f.size);
    let mut pos = 0u64;
    while pos < f.size {
        let data = rd::seek_data(fd, pos).unwrap_or(f.size).min(f.size);
        feed_zeros(&mut v, data - pos);
        pos = data;
        if pos >= f.size {
            break;
        }
        let hole = rd::seek_hole(fd, pos, f.size).min(f.size);
        while pos < hole {
            let want = (hole - pos).min(buf.len() as u64) as usize;
            let n = rd::pread(fd, &mut buf[..want], pos, shown)?;
            if n == 0 {
                return Ok(false);
            }
            v.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok(v.finish("").is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_between_runs() {
        let f = FileRef { size: 5 * BLOCK + 10, digest: None, zeros: &[(1, 2), (4, 1)] };
        assert_eq!(data_segments(&f), vec![(0, BLOCK), (3 * BLOCK, 4 * BLOCK), (5 * BLOCK, 5 * BLOCK + 10)]);
        let f = FileRef { size: 2 * BLOCK, digest: None, zeros: &[(0, 2)] };
        assert_eq!(data_segments(&f), vec![]);
    }
}
