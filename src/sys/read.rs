//! Read-only filesystem calls for scanning a tree: directories opened with
//! `O_NOFOLLOW`, `statx`/`fstatat` without following symlinks, xattrs read
//! from a file descriptor (or, for entries that must not be opened such as
//! devices, fifos and symlinks, through `/proc/self/fd/<dir>/<name>` with the
//! `l*xattr` calls, which never follow the last component), and data/hole
//! probing with `SEEK_DATA`/`SEEK_HOLE`.

use super::{Result, call};
use rustix::fd::{AsFd as _, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, Mode, OFlags};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use rustix::fs::{FileType, Stat, StatVfs, StatVfsMountFlags, major, makedev, minor};

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// Opens a directory given by a full path, refusing to follow a symlink as
/// the last component.
pub fn open_dir_path(path: &Path) -> Result<OwnedFd> {
    call(
        "open",
        || show(path),
        || fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()),
    )
}

/// `lstat` of a full path: the last component is not followed.
pub fn lstat_path(path: &Path) -> Result<Stat> {
    call("lstat", || show(path), || fs::lstat(path))
}

/// Opens a directory given by a full path, following a symlink (a root
/// the user named may be one, as `find -H` allows).
pub fn open_dir_path_following(path: &Path) -> Result<OwnedFd> {
    call("open", || show(path), || fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()))
}

/// `dup(fd)`.
pub fn dup(fd: BorrowedFd<'_>, shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    call("dup", shown, || rustix::io::dup(fd))
}

/// `statvfs` of a full path.
pub fn statvfs_path(path: &Path) -> Result<StatVfs> {
    call("statvfs", || show(path), || fs::statvfs(path))
}

/// Opens the directory `name` inside `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    call("openat", shown, || {
        fs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })
}

/// Set once `openat2` turned out to be missing (a kernel before 5.6, or a
/// seccomp filter that refuses it): [`open_dir_beneath`] walks from then on.
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens the directory at `rel` (relative, `/`-separated, no `..`) below
/// `root`, following no symlink on the way: one `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, which
/// refuses what opening each component with `O_NOFOLLOW` refuses, in one
/// call instead of one a component. Without `openat2`, or when a rename
/// elsewhere made the kernel give up (`EAGAIN`), it walks the components.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &[u8], shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !rel.is_empty() && !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = fs::ResolveFlags::BENEATH | fs::ResolveFlags::NO_SYMLINKS | fs::ResolveFlags::NO_MAGICLINKS;
        match fs::openat2(root, OsStr::from_bytes(rel), flags, Mode::empty(), how) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(super::SysError::new("openat2", shown(), e)),
        }
    }
    let mut cur = dup(root, shown)?;
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        cur = open_dir_at(cur.as_fd(), comp, shown)?;
    }
    Ok(cur)
}

/// Opens the regular file `name` inside `dir` for reading, never following a
/// symlink and never blocking (a fifo swapped in would otherwise hang).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    call("openat", shown, || {
        fs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
    })
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<Stat> {
    call("fstatat", shown, || fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW))
}

/// `fstat`.
pub fn stat_fd(fd: BorrowedFd<'_>, shown: &dyn Fn() -> String) -> Result<Stat> {
    call("fstat", shown, || fs::fstat(fd))
}

/// All names in a directory except `.` and `..`, in the order the kernel
/// gives them (callers sort).
pub fn read_dir_names(dir: BorrowedFd<'_>, shown: &dyn Fn() -> String) -> Result<Vec<Vec<u8>>> {
    let mut d = call("opendir", shown, || fs::Dir::read_from(dir))?;
    names(|| d.read().map(|r| r.map(|e| e.file_name().to_bytes().to_vec())), shown)
}

/// All names in a directory except `.` and `..`, read with `getdents64`
/// from `dir` itself (not a reopened copy), so from its current offset: for
/// a directory fd opened to be listed once. The names are held in one
/// buffer, not one allocation each; [`DirNames::sort`] puts them in byte
/// order.
pub fn list_dir_once(dir: BorrowedFd<'_>, shown: &dyn Fn() -> String) -> Result<DirNames> {
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut d = fs::RawDir::new(dir, buf.spare_capacity_mut());
    let mut out = DirNames::default();
    while let Some(e) = d.next() {
        let e = e.map_err(|e| super::SysError::new("getdents64", shown(), e))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." && !out.push(n) {
            // more bytes of names than offsets of this width reach
            return Err(super::SysError::new("getdents64", shown(), rustix::io::Errno::OVERFLOW));
        }
    }
    Ok(out)
}

/// The names of a directory's entries, in one byte buffer.
#[derive(Debug, Default)]
pub struct DirNames {
    bytes: Vec<u8>,
    /// Start and length of each name in `bytes`.
    spans: Vec<(u32, u32)>,
}

impl DirNames {
    /// Appends a name; false when the names would pass 4 GiB.
    fn push(&mut self, name: &[u8]) -> bool {
        let (Ok(start), Ok(len)) = (u32::try_from(self.bytes.len()), u32::try_from(name.len())) else {
            return false;
        };
        if start.checked_add(len).is_none() {
            return false;
        }
        self.bytes.extend_from_slice(name);
        self.spans.push((start, len));
        true
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn name(&self, (start, len): (u32, u32)) -> &[u8] {
        &self.bytes[start as usize..start as usize + len as usize]
    }

    /// The `i`th name.
    pub fn get(&self, i: usize) -> &[u8] {
        self.name(self.spans[i])
    }

    /// Puts the names in byte order.
    pub fn sort(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        self.spans = spans;
    }

    /// The names in their current order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|&s| self.name(s))
    }
}

/// The names `next` yields until it is done, except `.` and `..`; a failed
/// read is `getdents64`'s error.
fn names(
    mut next: impl FnMut() -> Option<rustix::io::Result<Vec<u8>>>,
    shown: &dyn Fn() -> String,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(n) = next() {
        let n = n.map_err(|e| super::SysError::new("getdents64", shown(), e))?;
        if n != b"." && n != b".." {
            out.push(n);
        }
    }
    Ok(out)
}

/// `readlinkat`: a symlink's target as raw bytes.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<Vec<u8>> {
    let t = call("readlinkat", shown, || fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new()))?;
    Ok(t.into_bytes())
}

/// Where the xattrs of an entry are read from.
pub enum XattrSource<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// An entry that must not be opened: `name` inside directory `dir`.
    At(BorrowedFd<'a>, &'a [u8]),
}

fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    use rustix::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

/// Gives the calling thread its own current directory (`unshare(CLONE_FS)`),
/// so that [`change_dir`] moves no other thread; false when the kernel
/// refuses.
pub fn own_cwd() -> bool {
    // Only the filesystem context (cwd, root, umask) is unshared: the file
    // descriptor table stays shared, which is what makes `unshare` unsafe
    // in general.
    #[allow(deprecated)]
    rustix::thread::unshare(rustix::thread::UnshareFlags::FS).is_ok()
}

/// `fchdir(dir)`: relative names then resolve in `dir`. Only for a thread
/// that [`own_cwd`] gave its own current directory.
pub fn change_dir(dir: BorrowedFd<'_>) -> bool {
    rustix::process::fchdir(dir).is_ok()
}

/// Reads every extended attribute, names and values as bytes. A filesystem
/// without xattr support yields none.
pub fn read_xattrs(src: XattrSource<'_>, shown: &dyn Fn() -> String) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    match src {
        XattrSource::Fd(fd) => xattrs_with(|b| fs::flistxattr(fd, b), |n, b| fs::fgetxattr(fd, n, b), shown),
        XattrSource::At(d, n) => {
            let p = proc_path(d, n);
            let p = OsStr::from_bytes(&p);
            xattrs_with(|b| fs::llistxattr(p, b), |n, b| fs::lgetxattr(p, n, b), shown)
        }
    }
}

/// [`read_xattrs`] of the entry `name` of the current directory, which
/// the calling thread made its own ([`own_cwd`], [`change_dir`]); the last
/// component is not followed. One lookup of one name, where the
/// `/proc/self/fd` path of [`XattrSource::At`] walks five.
pub fn read_xattrs_here(name: &[u8], shown: &dyn Fn() -> String) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let p = OsStr::from_bytes(name);
    xattrs_with(|b| fs::llistxattr(p, b), |n, b| fs::lgetxattr(p, n, b), shown)
}

fn xattrs_with(
    list: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&std::ffi::CStr, &mut [u8]) -> rustix::io::Result<usize>,
    shown: &dyn Fn() -> String,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use rustix::io::Errno;
    let get = |name: &[u8], buf: &mut [u8]| -> rustix::io::Result<usize> {
        let cname = std::ffi::CString::new(name).map_err(|_| Errno::INVAL)?;
        get(cname.as_c_str(), buf)
    };
    // Read into a buffer that grows on ERANGE, up to the kernel's limit for a
    // name list or a value (64 KiB). (A zero-sized query is not relied on.)
    fn fetch(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
        let mut size = 256usize;
        loop {
            let mut buf = vec![0u8; size];
            match f(&mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::RANGE) if size < (1 << 17) => size *= 4,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let names = match fetch(list) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(super::SysError::new("listxattr", shown(), e)),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match fetch(|buf| get(name, buf)) {
            Ok(val) => out.push((name.to_vec(), val)),
            Err(Errno::NODATA) => {} // removed meanwhile
            Err(e) => {
                return Err(super::SysError::new(
                    "getxattr",
                    format!("{} ({})", shown(), String::from_utf8_lossy(name)),
                    e,
                ));
            }
        }
    }
    Ok(out)
}

/// Reads into `buf` at the current position, retrying on EINTR; 0 at EOF.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8], shown: &dyn Fn() -> String) -> Result<usize> {
    call("read", shown, || rustix::io::read(fd, &mut *buf))
}

/// Reads at an offset.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64, shown: &dyn Fn() -> String) -> Result<usize> {
    call("pread", shown, || rustix::io::pread(fd, &mut *buf, off))
}

/// Offset of the next data at or after `off`, or `None` when only a hole
/// remains (ENXIO) or the filesystem cannot tell (then all is data).
pub fn seek_data(fd: BorrowedFd<'_>, off: u64) -> Option<u64> {
    match fs::seek(fd, fs::SeekFrom::Data(off)) {
        Ok(p) => Some(p),
        Err(rustix::io::Errno::NXIO) => None,
        Err(_) => Some(off),
    }
}

/// Offset of the next hole at or after `off` (the end of file counts as one).
pub fn seek_hole(fd: BorrowedFd<'_>, off: u64, size: u64) -> u64 {
    fs::seek(fd, fs::SeekFrom::Hole(off)).unwrap_or(size)
}
