//! Write-side filesystem calls for materializing a tree (the `materialize`
//! sink). Every call takes a directory fd and one name component, never a
//! multi-component path inside the tree, and never follows a symlink in the
//! last component: files are created with `O_EXCL | O_NOFOLLOW`, owners set
//! with `AT_SYMLINK_NOFOLLOW`, times with `utimensat(AT_SYMLINK_NOFOLLOW)`.
//! Entries that must not be opened (symlinks, devices, fifos) get their
//! xattrs through `/proc/self/fd/<dir>/<name>` with the `l*xattr` calls, and
//! their mode through an `O_PATH` descriptor, so a symlink is never chmodded.
//! Every error names the call and the path it was made on.

use super::read::XattrSource;
use super::{Result, SysError, call};
use crate::manifest::Time;
use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

fn mode(m: u32) -> Mode {
    Mode::from_raw_mode(m & 0o7777)
}

/// `mkdir(path, mode)` of a full path.
pub fn mkdir_path(path: &std::path::Path, m: u32) -> Result<()> {
    call("mkdir", || path.display().to_string(), || fs::mkdir(path, mode(m)))
}

/// An unnamed file in the directory `dir` (`O_TMPFILE`), write-only or,
/// with `readable`, read-write; it takes a name only by [`link_tmpfile`].
pub fn open_tmpfile(dir: BorrowedFd<'_>, m: u32, readable: bool, shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    let rw = if readable { OFlags::RDWR } else { OFlags::WRONLY };
    call("openat", shown, || fs::openat(dir, c".", rw | OFlags::TMPFILE | OFlags::CLOEXEC, mode(m)))
}

/// Creates the new file `path` (a full path; `O_EXCL | O_NOFOLLOW`),
/// write-only or, with `readable`, read-write.
pub fn create_file_path(path: &std::path::Path, m: u32, readable: bool) -> Result<OwnedFd> {
    let rw = if readable { OFlags::RDWR } else { OFlags::WRONLY };
    let flags = rw | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    call("open", || path.display().to_string(), || fs::open(path, flags, mode(m)))
}

/// Names the unnamed file `fd` (see [`open_tmpfile`]) `name` in `dir`:
/// `linkat` of `/proc/self/fd/N`. An existing `name` is `EEXIST`.
pub fn link_tmpfile(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<()> {
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    call("linkat", shown, || fs::linkat(fs::CWD, proc.as_str(), dir, os(name), AtFlags::SYMLINK_FOLLOW))
}

/// `syncfs(fd)`: flushes the filesystem holding `fd` to stable storage.
pub fn syncfs(fd: BorrowedFd<'_>, shown: &dyn Fn() -> String) -> Result<()> {
    call("syncfs", shown, || fs::syncfs(fd))
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], m: u32, shown: &dyn Fn() -> String) -> Result<()> {
    call("mkdirat", shown, || fs::mkdirat(dir, os(name), mode(m)))
}

/// Creates a new regular file `name` in `dir` for reading and writing:
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, so an existing entry (a symlink above
/// all) is never opened.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8], m: u32, shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    call("openat", shown, || {
        fs::openat(
            dir,
            os(name),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode(m),
        )
    })
}

/// Creates the new, empty regular file `name` in `dir` without opening it
/// (`mknodat` with `S_IFREG`): an existing entry, a symlink above all, is
/// an error (`EEXIST`), never followed.
pub fn create_empty_at(dir: BorrowedFd<'_>, name: &[u8], m: u32, shown: &dyn Fn() -> String) -> Result<()> {
    call("mknodat", shown, || fs::mknodat(dir, os(name), FileType::RegularFile, mode(m), 0))
}

/// Opens `name` in `dir` with `O_PATH | O_NOFOLLOW`: a handle on the entry
/// itself (a symlink stays a symlink), good for `fstat` and `/proc` paths.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<OwnedFd> {
    call("openat", shown, || {
        fs::openat(dir, os(name), OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
    })
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<()> {
    call("symlinkat", shown, || fs::symlinkat(os(target), dir, os(name)))
}

/// `linkat(old_dir, old_name, new_dir, new_name, 0)`: never follows a
/// symlink at the old name.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old_name: &[u8],
    new_dir: BorrowedFd<'_>,
    new_name: &[u8],
    shown: &dyn Fn() -> String,
) -> Result<()> {
    call("linkat", shown, || fs::linkat(old_dir, os(old_name), new_dir, os(new_name), AtFlags::empty()))
}

/// `mknodat(dir, name, type, mode, makedev(major, minor))`: character and
/// block devices and fifos. Numbers the kernel cannot represent (major above
/// 4095, minor above 1048575) are refused with `EINVAL`, whatever checked
/// them before: the kernel would drop their high bits and make another
/// device.
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    ty: FileType,
    m: u32,
    dev: (u32, u32),
    shown: &dyn Fn() -> String,
) -> Result<()> {
    if crate::manifest::check_dev(dev.0.into(), dev.1.into()).is_err() {
        return Err(SysError::new("mknodat", shown(), Errno::INVAL));
    }
    call("mknodat", shown, || fs::mknodat(dir, os(name), ty, mode(m), fs::makedev(dev.0, dev.1)))
}

/// Ids as chown takes them: 4294967295 (-1) would mean "leave unchanged",
/// so it is refused with `EINVAL` whatever checked it before.
fn check_owner(call: &'static str, uid: u32, gid: u32, shown: &dyn Fn() -> String) -> Result<()> {
    if uid == crate::manifest::NO_CHANGE_ID || gid == crate::manifest::NO_CHANGE_ID {
        return Err(SysError::new(call, shown(), Errno::INVAL));
    }
    Ok(())
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: a symlink's own
/// owner (`lchown`).
pub fn chown_at(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32, shown: &dyn Fn() -> String) -> Result<()> {
    check_owner("fchownat", uid, gid, shown)?;
    call("fchownat", shown, || {
        fs::chownat(dir, os(name), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::SYMLINK_NOFOLLOW)
    })
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32, shown: &dyn Fn() -> String) -> Result<()> {
    check_owner("fchown", uid, gid, shown)?;
    call("fchown", shown, || fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))))
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, m: u32, shown: &dyn Fn() -> String) -> Result<()> {
    call("fchmod", shown, || fs::fchmod(fd, mode(m)))
}

/// Sets the mode of `name` in `dir` without opening it for I/O (devices,
/// fifos): an `O_PATH | O_NOFOLLOW` handle, checked not to be a symlink, is
/// chmodded through its `/proc/self/fd` link. A symlink is refused with
/// `ELOOP`: its mode is never changed.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], m: u32, shown: &dyn Fn() -> String) -> Result<()> {
    let fd = open_path_at(dir, name, shown)?;
    let st = call("fstat", shown, || fs::fstat(&fd))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(SysError::new("fchmodat", shown(), Errno::LOOP));
    }
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    call("fchmodat", shown, || fs::chmodat(fs::CWD, proc.as_str(), mode(m), AtFlags::empty()))
}

fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

fn xattr_shown(shown: &dyn Fn() -> String, name: &[u8]) -> String {
    format!("{} (xattr {})", shown(), String::from_utf8_lossy(name))
}

/// Sets one extended attribute, on an open fd (`fsetxattr`) or on an entry
/// that must not be opened (`lsetxattr` through `/proc/self/fd/<dir>/<name>`,
/// which does not follow a symlink in the last component).
pub fn set_xattr(target: &XattrSource<'_>, name: &[u8], value: &[u8], shown: &dyn Fn() -> String) -> Result<()> {
    let cname = CString::new(name).map_err(|_| SysError::new("setxattr", xattr_shown(shown, name), Errno::INVAL))?;
    call(
        "setxattr",
        || xattr_shown(shown, name),
        || match target {
            XattrSource::Fd(fd) => fs::fsetxattr(fd, cname.as_c_str(), value, XattrFlags::empty()),
            XattrSource::At(d, n) => fs::lsetxattr(os(&proc_path(*d, n)), cname.as_c_str(), value, XattrFlags::empty()),
        },
    )
}

/// Removes one extended attribute (see [`set_xattr`] for how the entry is
/// reached).
pub fn remove_xattr(target: &XattrSource<'_>, name: &[u8], shown: &dyn Fn() -> String) -> Result<()> {
    let cname = CString::new(name).map_err(|_| SysError::new("removexattr", xattr_shown(shown, name), Errno::INVAL))?;
    call(
        "removexattr",
        || xattr_shown(shown, name),
        || match target {
            XattrSource::Fd(fd) => fs::fremovexattr(fd, cname.as_c_str()),
            XattrSource::At(d, n) => fs::lremovexattr(os(&proc_path(*d, n)), cname.as_c_str()),
        },
    )
}

fn stamps(t: Time) -> Timestamps {
    let ts = Timespec { tv_sec: t.sec, tv_nsec: t.nsec as _ };
    Timestamps { last_access: ts, last_modification: ts }
}

/// `utimensat(dir, name, {mtime, mtime}, AT_SYMLINK_NOFOLLOW)`: sets access
/// and modification time of the entry itself, a symlink included.
pub fn utimens_at(dir: BorrowedFd<'_>, name: &[u8], t: Time, shown: &dyn Fn() -> String) -> Result<()> {
    call("utimensat", shown, || fs::utimensat(dir, os(name), &stamps(t), AtFlags::SYMLINK_NOFOLLOW))
}

/// `futimens(fd, {mtime, mtime})`.
pub fn futimens(fd: BorrowedFd<'_>, t: Time, shown: &dyn Fn() -> String) -> Result<()> {
    call("futimens", shown, || fs::futimens(fd, &stamps(t)))
}

/// `ftruncate(fd, len)`: sets the size; growing leaves a hole.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64, shown: &dyn Fn() -> String) -> Result<()> {
    call("ftruncate", shown, || fs::ftruncate(fd, len))
}

/// `fallocate(fd, 0, off, len)`: reserves blocks for data about to be written.
pub fn fallocate(fd: BorrowedFd<'_>, off: u64, len: u64, shown: &dyn Fn() -> String) -> Result<()> {
    call("fallocate", shown, || fs::fallocate(fd, fs::FallocateFlags::empty(), off, len))
}

/// `pwrite` of the whole buffer at `off` (loops over short writes).
pub fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut off: u64, shown: &dyn Fn() -> String) -> Result<()> {
    while !buf.is_empty() {
        let n = call("pwrite", shown, || rustix::io::pwrite(fd, buf, off))?;
        if n == 0 {
            return Err(SysError::new("pwrite", shown(), Errno::NOSPC));
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// One `copy_file_range` call copying up to `len` bytes from `src` at
/// `*off_in` to `dst` at `*off_out`, advancing both; returns the bytes copied
/// (0 at the end of `src`). The kernel may share blocks (reflink) when both
/// are on one filesystem that supports it.
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    off_in: &mut u64,
    dst: BorrowedFd<'_>,
    off_out: &mut u64,
    len: usize,
    shown: &dyn Fn() -> String,
) -> Result<usize> {
    call("copy_file_range", shown, || fs::copy_file_range(src, Some(&mut *off_in), dst, Some(&mut *off_out), len))
}

/// `renameat2(dir, old, dir, new, flags)`; with `noreplace`, an existing
/// `new` is an error (`EEXIST`) instead of being replaced.
pub fn rename_at(
    dir: BorrowedFd<'_>,
    old: &[u8],
    new: &[u8],
    noreplace: bool,
    shown: &dyn Fn() -> String,
) -> Result<()> {
    let flags = if noreplace { RenameFlags::NOREPLACE } else { RenameFlags::empty() };
    call("renameat2", shown, || fs::renameat_with(dir, os(old), dir, os(new), flags))
}

/// `unlinkat(dir, name, 0 or AT_REMOVEDIR)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool, shown: &dyn Fn() -> String) -> Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    call("unlinkat", shown, || fs::unlinkat(dir, os(name), flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;

    #[test]
    fn numbers_the_kernel_would_change_are_refused() {
        assert!(rustix::process::geteuid().is_root(), "tests run as root");
        let t = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(t.path()).unwrap();
        let shown = || "test".to_string();
        // 4097:1 would be made as 1:1
        for (i, dev) in [(4097, 1), (1, 1 << 20), (u32::MAX, u32::MAX)].into_iter().enumerate() {
            let name = format!("d{i}");
            let e = mknod_at(dir.as_fd(), name.as_bytes(), FileType::CharacterDevice, 0o600, dev, &shown).unwrap_err();
            assert_eq!(e.errno, Errno::INVAL);
            assert!(!t.path().join(&name).exists(), "{dev:?} was created");
        }
        mknod_at(dir.as_fd(), b"ok", FileType::CharacterDevice, 0o600, (4095, (1 << 20) - 1), &shown).unwrap();
        // -1 would leave the owner as it is
        let f = create_file_at(dir.as_fd(), b"f", 0o600, &shown).unwrap();
        fchown(f.as_fd(), 5, 5, &shown).unwrap();
        for (uid, gid) in [(u32::MAX, 7), (7, u32::MAX)] {
            assert_eq!(fchown(f.as_fd(), uid, gid, &shown).unwrap_err().errno, Errno::INVAL);
            assert_eq!(chown_at(dir.as_fd(), b"f", uid, gid, &shown).unwrap_err().errno, Errno::INVAL);
        }
    }
}
