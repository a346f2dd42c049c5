//! Mount calls for `ocix mount` (the `mount` sink), through the new mount
//! API: `fsopen`, `fsconfig`, `fsmount` and `move_mount`. A filesystem is
//! configured and mounted detached (reachable only through its fd), so a
//! failure at any step leaves nothing mounted: the detached mount goes away
//! with its fd. Every error names the call, the filesystem type and what
//! the kernel wrote into the context's log.

use super::{Result, SysError};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create, fsconfig_set_fd,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
};
use std::path::Path;

/// A filesystem context being configured (`fsopen`).
pub struct FsContext {
    fd: OwnedFd,
    fstype: &'static str,
}

/// What the kernel logged into a filesystem context (`e ...`, `w ...`
/// lines), joined; empty when it said nothing.
fn kernel_log(fd: BorrowedFd<'_>) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    msgs.join("; ")
}

impl FsContext {
    /// `fsopen(fstype)`.
    pub fn open(fstype: &'static str) -> Result<FsContext> {
        let fd = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| SysError::new("fsopen", fstype, e))?;
        Ok(FsContext { fd, fstype })
    }

    fn err(&self, call: &'static str, what: &str, e: Errno) -> SysError {
        let log = kernel_log(self.fd.as_fd());
        let path =
            if log.is_empty() { format!("{} {what}", self.fstype) } else { format!("{} {what} ({log})", self.fstype) };
        SysError::new(call, path, e)
    }

    /// `fsconfig(FSCONFIG_SET_STRING, key, value)`.
    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        fsconfig_set_string(&self.fd, key, value).map_err(|e| self.err("fsconfig", &format!("{key}={value}"), e))
    }

    /// `fsconfig(FSCONFIG_SET_STRING, key, "/proc/self/fd/N")`: a path
    /// the kernel resolves to what `fd` is open on, whatever its name.
    pub fn set_fd_path(&self, key: &str, fd: BorrowedFd<'_>, shown: &Path) -> Result<()> {
        let value = format!("/proc/self/fd/{}", fd.as_raw_fd());
        fsconfig_set_string(&self.fd, key, &value)
            .map_err(|e| self.err("fsconfig", &format!("{key}={}", shown.display()), e))
    }

    /// `fsconfig(FSCONFIG_SET_FD, key, fd)`: a layer given by its fd, a
    /// detached mount included (overlayfs, Linux 6.15 and later); where the
    /// kernel refuses that form, the `/proc/self/fd/N` path instead.
    pub fn set_layer(&self, key: &str, fd: BorrowedFd<'_>, shown: &Path) -> Result<()> {
        match fsconfig_set_fd(&self.fd, key, fd) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL) => {
                let _ = kernel_log(self.fd.as_fd());
                self.set_fd_path(key, fd, shown)
            }
            Err(e) => Err(self.err("fsconfig", &format!("{key}={}", shown.display()), e)),
        }
    }

    /// `fsconfig(FSCONFIG_SET_FLAG, key)`.
    pub fn flag(&self, key: &str) -> Result<()> {
        fsconfig_set_flag(&self.fd, key).map_err(|e| self.err("fsconfig", key, e))
    }

    /// `fsconfig(FSCONFIG_CMD_CREATE)` then `fsmount`: the filesystem,
    /// mounted nowhere yet; read-only when `read_only`.
    pub fn mount_detached(&self, read_only: bool) -> Result<OwnedFd> {
        fsconfig_create(&self.fd).map_err(|e| self.err("fsconfig", "create", e))?;
        let attrs = if read_only { MountAttrFlags::MOUNT_ATTR_RDONLY } else { MountAttrFlags::empty() };
        fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| self.err("fsmount", "", e))
    }
}

/// `move_mount(mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`:
/// attaches a detached mount at `target`.
pub fn attach(mnt: BorrowedFd<'_>, target: &Path) -> Result<()> {
    move_mount(mnt, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(|e| SysError::new("move_mount", target.display().to_string(), e))
}

/// `umount2(target, UMOUNT_NOFOLLOW)`.
pub fn detach(target: &Path) -> Result<()> {
    super::call("umount2", || target.display().to_string(), || unmount(target, UnmountFlags::NOFOLLOW))
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem on it, detached
/// (`fsopen("fuse")`, `fd=`, `rootmode=`, the caller's uid and gid,
/// `allow_other`, read-only): returns the device fd (for the session that
/// serves the filesystem; the kernel has queued its INIT request on it) and
/// the detached mount. `source` is what mount tables show.
pub fn fuse_detached(source: &str) -> Result<(OwnedFd, OwnedFd)> {
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| SysError::new("open", "/dev/fuse", e))?;
    let ctx = FsContext::open("fuse")?;
    ctx.set("source", source)?;
    ctx.set("fd", &dev.as_raw_fd().to_string())?;
    ctx.set("rootmode", "40000")?;
    ctx.set("user_id", &rustix::process::getuid().as_raw().to_string())?;
    ctx.set("group_id", &rustix::process::getgid().as_raw().to_string())?;
    ctx.flag("allow_other")?;
    let mnt = ctx.mount_detached(true)?;
    Ok((dev, mnt))
}
