//! Sink: manifest + store -> a mounted tree, with no file data copied
//! (`ocix mount`). The manifest becomes an EROFS image holding only
//! metadata ([`erofs`]), whose regular files are overlayfs "metacopy"
//! entries redirecting to `/blobs/sha256/<hex>`; an overlay mounts that
//! image as its lower layer with the store as a data-only layer beneath,
//! so every file reads its blob's bytes under its own metadata, and the
//! page cache of one blob is shared by every mount that names it.
//!
//! - The image is built only from a decoded, validated manifest, in time
//!   proportional to its entries, and cached by the manifest's digest in
//!   `STORE/.ocix-mount/` (a name no blob can take; written to a temporary
//!   name, then renamed), so mounting a manifest again writes nothing.
//! - overlayfs's own xattrs in the manifest are stored escaped
//!   (`trusted.overlay.overlay.*`): the mount shows them, never obeys them.
//!   A character device 0:0 (a whiteout to overlayfs) is refused.
//! - Before mounting, every blob the manifest names must be present as a
//!   regular file of the right size; their digests are checked once and
//!   the result remembered (by the blobs' identity, size and times), or
//!   always with [`MountOptions::verify`].
//! - Both filesystems are mounted detached and only the overlay is attached
//!   at the target, so a failure at any step leaves nothing mounted, and
//!   unmounting the target releases the image too.

pub mod erofs;

use crate::manifest::{Compact, Digest};
use crate::store::{Store, StoreError, Verifier};
use crate::sys::mount::{FsContext, attach, detach};
use crate::sys::{self, Errno, SysError};
use rustix::fd::AsFd;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Version of the image layout; part of the cached image's name, so a
/// different writer never reuses an image it did not make.
const IMAGE_VERSION: u32 = 1;
/// Where images and verification records are cached, inside the store.
pub const CACHE_DIR: &str = ".ocix-mount";
/// The overlay's source as mount tables show it.
pub const SOURCE: &str = "ocix";

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// A blob is missing, short, not a regular file or corrupt.
    #[error("{0}; nothing was mounted")]
    Blob(#[from] StoreError),
    /// The manifest holds something the image cannot represent.
    #[error(transparent)]
    Image(#[from] erofs::ImageError),
    /// A filesystem call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The kernel or the caller's privileges lack what a mount needs.
    #[error("{what}: {source}")]
    Unsupported {
        /// What is missing.
        what: String,
        /// The failed call.
        source: SysError,
    },
    /// The target of [`umount`] is not a mount [`mount`] made.
    #[error("{}: not an ocix mount ({})", .target.display(), .found.as_deref().unwrap_or("not a mount point"))]
    NotOurs {
        /// The mount point given.
        target: PathBuf,
        /// What is mounted there instead (`a TYPE mount of SOURCE`), if
        /// anything.
        found: Option<String>,
    },
    /// Only one of [`MountOptions::upper`] and [`MountOptions::work`] is
    /// given.
    #[error("a writable mount needs both an upper and a work directory")]
    UpperWithoutWork,
    /// Caching the image failed.
    #[error("{}: {source}", .path.display())]
    Cache {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// A writable mount: changes go into this directory (overlay's
    /// `upperdir`); needs [`work`](Self::work) on the same filesystem.
    pub upper: Option<PathBuf>,
    /// overlay's `workdir`, an empty directory beside `upper`.
    pub work: Option<PathBuf>,
    /// Hash every blob even when an earlier mount checked it.
    pub verify: bool,
}

/// What a mount did.
#[derive(Debug, Clone, Default)]
pub struct MountReport {
    /// The cached image.
    pub image: PathBuf,
    /// Whether the image was written by this call (else it was cached).
    pub image_written: bool,
    /// Distinct blobs the manifest names.
    pub blobs: usize,
    /// Blobs whose digest was checked by this call.
    pub blobs_hashed: usize,
    /// Time spent writing the image (none when it was cached).
    pub image_time: std::time::Duration,
    /// Time the whole mount took.
    pub time: std::time::Duration,
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |source| MountError::Cache { path: path.into(), source }
}

/// The image of manifest `digest` in `store`'s cache.
pub fn image_path(store: &Store, digest: &Digest) -> PathBuf {
    store.root().join(CACHE_DIR).join(format!("{}.erofs-v{IMAGE_VERSION}", digest.hex()))
}

fn checked_path(store: &Store, digest: &Digest) -> PathBuf {
    store.root().join(CACHE_DIR).join(format!("{}.checked-v{IMAGE_VERSION}", digest.hex()))
}

/// Writes the image of `m` (whose digest is `digest`) into the store's
/// cache unless it is there; returns its path and whether it was written.
/// A half-written image never takes the final name.
pub fn cached_image(m: &Compact, digest: &Digest, store: &Store) -> Result<(PathBuf, bool), MountError> {
    let path = image_path(store, digest);
    if path.is_file() {
        return Ok((path, false));
    }
    let dir = store.root().join(CACHE_DIR);
    std::fs::create_dir_all(&dir).map_err(cache_err(&dir))?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), digest.hex()));
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(cache_err(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&digest.0[..16]);
        erofs::write_image(m, uuid, &mut w)?;
        let f = w.into_inner().map_err(|e| cache_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(cache_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(cache_err(&path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| (path, true))
}

/// The distinct blobs `m` names, with their sizes, in digest order.
fn blobs_of(m: &Compact) -> Vec<(Digest, u64)> {
    let mut blobs: Vec<(Digest, u64)> =
        m.nodes().filter_map(|n| n.file().and_then(|f| Some((*f.digest?, f.size)))).collect();
    // one size per digest: the last named, as a map keyed by digest keeps
    blobs.sort_by_key(|b| b.0);
    blobs.reverse();
    blobs.dedup_by_key(|b| b.0);
    blobs.reverse();
    blobs
}

/// Checks that every blob `m` names is a regular file of the right size,
/// and its digest unless the same blobs (same inodes, sizes and times)
/// were checked for this manifest before. Returns (blobs, blobs hashed).
pub fn check_blobs(m: &Compact, digest: &Digest, store: &Store, verify: bool) -> Result<(usize, usize), MountError> {
    let blobs = blobs_of(m);
    let list: Vec<(&Digest, &u64)> = blobs.iter().map(|(d, s)| (d, s)).collect();
    // one fstatat per blob, on a few threads: the bulk of a cached mount
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    let per = list.len().div_ceil(threads).max(1);
    let stats: Vec<Result<Vec<[u64; 7]>, MountError>> = std::thread::scope(|s| {
        let workers: Vec<_> = list.chunks(per).map(|part| s.spawn(|| stat_blobs(part, store))).collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(panicked(store)))).collect()
    });
    let mut fp = Sha256::new();
    for (part, st) in list.chunks(per).zip(stats) {
        for ((d, _), st) in part.iter().zip(st?) {
            fp.update(d.0);
            for v in st {
                fp.update(v.to_le_bytes());
            }
        }
    }
    let record = format!("ocix blobs checked {}\n", hex::encode(fp.finalize()));
    let rpath = checked_path(store, digest);
    if !verify && std::fs::read(&rpath).is_ok_and(|r| r == record.as_bytes()) {
        return Ok((blobs.len(), 0));
    }
    hash_blobs(&blobs, store)?;
    // remembered only once every blob passed; a failure to record is not
    // an error (the next mount checks again)
    let dir = store.root().join(CACHE_DIR);
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!(".tmp-{}-checked", std::process::id()));
        if std::fs::write(&tmp, record).is_ok() && std::fs::rename(&tmp, &rpath).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((blobs.len(), blobs.len()))
}

/// Checks each blob is a regular file of its size; returns the blobs'
/// identities, sizes and times.
fn stat_blobs(part: &[(&Digest, &u64)], store: &Store) -> Result<Vec<[u64; 7]>, MountError> {
    let mut out = Vec::with_capacity(part.len());
    for &(d, &size) in part {
        let shown = || store.blob_path(d).display().to_string();
        let st = match sys::read::stat_at(store.blobs_dir(), d.hex().as_bytes(), &shown) {
            Ok(st) => st,
            Err(e) if e.errno == Errno::NOENT => {
                return Err(StoreError::Missing { digest: *d, store: store.root().display().to_string() }.into());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(e) = store.not_regular(d, sys::read::FileType::from_raw_mode(st.st_mode)) {
            return Err(e.into());
        }
        if st.st_size as u64 != size {
            return Err(StoreError::WrongSize { path: shown(), expected: size, actual: st.st_size as u64 }.into());
        }
        out.push([
            st.st_dev,
            st.st_ino,
            st.st_size as u64,
            st.st_mtime as u64,
            st.st_mtime_nsec as u64,
            st.st_ctime as u64,
            st.st_ctime_nsec as u64,
        ]);
    }
    Ok(out)
}

fn panicked(store: &Store) -> MountError {
    cache_err(store.root())(std::io::Error::other("a blob checking thread panicked"))
}

/// Hashes every blob on a few threads; the first mismatch is the error.
fn hash_blobs(blobs: &[(Digest, u64)], store: &Store) -> Result<(), MountError> {
    let list: Vec<(&Digest, &u64)> = blobs.iter().map(|(d, s)| (d, s)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), MountError> {
                    let mut buf = vec![0u8; 1 << 18];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(d, &size)) = list.get(i) else { return Ok(()) };
                        let path = store.blob_path(d).display().to_string();
                        let mut f = std::fs::File::from(store.open_blob(d)?);
                        let mut v = Verifier::new(*d, size);
                        loop {
                            let n = f.read(&mut buf).map_err(|e| cache_err(Path::new(&path))(e))?;
                            if n == 0 {
                                break;
                            }
                            v.update(&buf[..n]);
                        }
                        v.finish(&path)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(cache_err(store.root())(std::io::Error::other("a blob hashing thread panicked")))
            })
        })
    })
}

fn unsupported(what: &str, e: SysError) -> MountError {
    MountError::Unsupported { what: what.to_string(), source: e }
}

/// The common reasons a mount call fails, said plainly.
fn explain(e: SysError, step: &str) -> MountError {
    match e.errno {
        Errno::PERM | Errno::ACCESS => unsupported("mounting needs root (CAP_SYS_ADMIN)", e),
        Errno::NOSYS => unsupported("the kernel lacks the mount API fsopen/fsmount (Linux 5.2 and later)", e),
        Errno::NODEV => unsupported(&format!("the kernel has no {step} filesystem"), e),
        _ => e.into(),
    }
}

/// Mounts `m` (whose digest is `digest`, the sha256 of its bytes) at
/// `target` with the blobs of `store`: read-only, or writable into
/// `opts.upper`. Nothing is mounted when this fails.
pub fn mount(
    m: &Compact,
    digest: &Digest,
    store: &Store,
    target: &Path,
    opts: &MountOptions,
) -> Result<MountReport, MountError> {
    mount_over(m, digest, store, target, opts, None)
}

/// The source a lazy mount's overlay shows in mount tables: `ocix-lazy:`
/// and the pid of the process serving its data layer.
pub const LAZY_SOURCE: &str = "ocix-lazy:";

/// [`mount`] with `data` (an open directory, e.g. a detached FUSE mount,
/// holding `blobs/sha256/<hex>`) as the data-only layer instead of the
/// store, whose blobs are then not checked (the data layer serves and
/// verifies them); the overlay shows `source` in mount tables. The image
/// is still cached in `store`.
pub fn mount_with_data(
    m: &Compact,
    digest: &Digest,
    store: &Store,
    target: &Path,
    opts: &MountOptions,
    data: rustix::fd::BorrowedFd<'_>,
    source: &str,
) -> Result<MountReport, MountError> {
    mount_over(m, digest, store, target, opts, Some((data, source)))
}

fn mount_over(
    m: &Compact,
    digest: &Digest,
    store: &Store,
    target: &Path,
    opts: &MountOptions,
    data_layer: Option<(rustix::fd::BorrowedFd<'_>, &str)>,
) -> Result<MountReport, MountError> {
    let t0 = std::time::Instant::now();
    match std::fs::metadata(target) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(SysError::new("mount", target.display().to_string(), Errno::NOTDIR).into());
        }
        Err(e) => {
            let errno = Errno::from_io_error(&e).unwrap_or(Errno::NOENT);
            return Err(SysError::new("stat", target.display().to_string(), errno).into());
        }
    }
    if opts.upper.is_some() != opts.work.is_some() {
        return Err(MountError::UpperWithoutWork);
    }
    // the filesystems first: a kernel or a caller that cannot mount is
    // told so before any blob is read or any image written
    let ctx = FsContext::open("erofs").map_err(|e| explain(e, "EROFS"))?;
    let ovl = FsContext::open("overlay").map_err(|e| explain(e, "overlay"))?;
    let (blobs, blobs_hashed) = match data_layer {
        None => check_blobs(m, digest, store, opts.verify)?,
        Some(_) => (blobs_of(m).len(), 0),
    };
    let t_image = std::time::Instant::now();
    let (image, image_written) = cached_image(m, digest, store)?;
    let image_time = t_image.elapsed();
    let img = std::fs::File::open(&image).map_err(cache_err(&image))?;

    ctx.set_fd_path("source", img.as_fd(), &image).map_err(|e| {
        unsupported("the kernel cannot mount an EROFS image file (Linux 6.12 and later, EROFS_FS_BACKED_BY_FILE)", e)
    })?;
    let lower = ctx.mount_detached(true).map_err(|e| match e.errno {
        // the kernel reads an image file through its page cache
        // (`read_folio`), which tmpfs lacks; older kernels want a block device
        Errno::NOTBLK => unsupported(
            &format!(
                "the kernel cannot mount the EROFS image {} from its filesystem (file-backed EROFS \
                 needs Linux 6.12 or later and a store on a disk filesystem, not tmpfs)",
                image.display()
            ),
            e,
        ),
        _ => explain(e, "EROFS"),
    })?;
    drop(img);

    ovl.set("source", data_layer.map_or(SOURCE, |(_, s)| s))?;
    ovl.set_layer("lowerdir+", lower.as_fd(), &image)
        .map_err(|e| unsupported("the kernel's overlayfs lacks lowerdir+ (Linux 6.8 and later)", e))?;
    let data;
    let data_fd = match data_layer {
        Some((fd, _)) => fd,
        None => {
            data = sys::read::open_dir_path(store.root())?;
            data.as_fd()
        }
    };
    ovl.set_layer("datadir+", data_fd, store.root())
        .map_err(|e| unsupported("the kernel's overlayfs lacks data-only layers (Linux 6.8 and later)", e))?;
    ovl.set("metacopy", "on")?;
    ovl.set("redirect_dir", "on")?;
    let dirs;
    if let (Some(upper), Some(work)) = (&opts.upper, &opts.work) {
        dirs = (sys::read::open_dir_path(upper)?, sys::read::open_dir_path(work)?);
        let empty = std::fs::read_dir(upper).map_err(cache_err(upper))?.next().is_none();
        if empty {
            root_meta(m, dirs.0.as_fd(), upper)?;
        }
        ovl.set_layer("upperdir", dirs.0.as_fd(), upper)?;
        ovl.set_layer("workdir", dirs.1.as_fd(), work)?;
    }
    let top = ovl.mount_detached(false).map_err(|e| explain(e, "overlay"))?;
    attach(top.as_fd(), target).map_err(|e| explain(e, "overlay"))?;
    Ok(MountReport { image, image_written, blobs, blobs_hashed, image_time, time: t0.elapsed() })
}

/// Gives a fresh upper directory the manifest root's owner, xattrs
/// (escaped as in the image), mode and mtime: the root of a writable
/// overlay shows its upper directory's metadata.
fn root_meta(m: &Compact, fd: rustix::fd::BorrowedFd<'_>, upper: &Path) -> Result<(), MountError> {
    use sys::write::{fchmod, fchown, futimens, set_xattr};
    let shown = || upper.display().to_string();
    let root = m.root();
    fchown(fd, root.uid(), root.gid(), &shown)?;
    for (name, value) in root.xattrs().iter() {
        set_xattr(&sys::read::XattrSource::Fd(fd), &erofs::escaped_name(name), value, &shown)?;
    }
    fchmod(fd, root.mode(), &shown)?;
    futimens(fd, root.mtime(), &shown)?;
    Ok(())
}

/// Unmounts a tree `mount` made at `target` (the image goes with it).
/// Anything else mounted there is left alone and named in the error.
pub fn umount(target: &Path) -> Result<(), MountError> {
    umount_any(target).map(|_| ())
}

/// [`umount`] of a mount [`mount`] or [`mount_with_data`] made; for a
/// lazy mount (source [`LAZY_SOURCE`]) returns the pid serving its data
/// layer, whose session ends once the overlay is gone.
pub fn umount_any(target: &Path) -> Result<Option<u32>, MountError> {
    let canon = std::fs::canonicalize(target).map_err(cache_err(target))?;
    let info = std::fs::read("/proc/self/mountinfo").map_err(cache_err(Path::new("/proc/self/mountinfo")))?;
    let want = canon.as_os_str().as_encoded_bytes();
    // the last line for a mount point is the mount on top
    let top = info.split(|&b| b == b'\n').filter_map(parse_mountinfo).rfind(|(mp, _, _)| mp == want);
    match &top {
        Some((_, fstype, source)) if fstype == b"overlay" && source == SOURCE.as_bytes() => {
            detach(target)?;
            Ok(None)
        }
        Some((_, fstype, source))
            if fstype == b"overlay"
                && let Some(pid) = source.strip_prefix(LAZY_SOURCE.as_bytes()) =>
        {
            detach(target)?;
            Ok(std::str::from_utf8(pid).ok().and_then(|p| p.parse().ok()))
        }
        Some((_, fstype, source)) => Err(MountError::NotOurs {
            target: target.into(),
            found: Some(format!("a {} mount of {}", String::from_utf8_lossy(fstype), String::from_utf8_lossy(source))),
        }),
        None => Err(MountError::NotOurs { target: target.into(), found: None }),
    }
}

/// (mount point, fstype, source) of one `/proc/self/mountinfo` line.
fn parse_mountinfo(line: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let mp = line[..sep].split(|&b| b == b' ').nth(4)?;
    let mut r = line[sep + 3..].split(|&b| b == b' ');
    let fstype = unescape(r.next()?);
    let source = unescape(r.next()?);
    Some((unescape(mp), fstype, source))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(b[i + 1..i + 4].iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let l = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - overlay ocix rw,lowerdir+=/x";
        let (mp, fs, src) = parse_mountinfo(l.as_bytes()).unwrap();
        assert_eq!(mp, b"/mnt/a b");
        assert_eq!((&fs[..], &src[..]), (&b"overlay"[..], &b"ocix"[..]));
    }
}
