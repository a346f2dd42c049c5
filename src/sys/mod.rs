//! The one place ocix talks to the kernel's filesystem calls directly.
//!
//! Everything goes through rustix, whose calls are safe Rust, so ocix needs no
//! `unsafe` at all (the crate forbids it). This layer adds what rustix does
//! not: every error records the call and the path it was made on, so a
//! message always says which file failed and how. Paths are carried as
//! `(directory fd, one name)` pairs: a caller opens each directory itself with
//! `O_NOFOLLOW` and never hands the kernel a multi-component path that could
//! be redirected by a symlink inside the tree.
//!
//! `read` holds the calls the read-only side (scan) uses; `write` the calls
//! the materializing side uses; `mount` the mount calls of `ocix mount`.

pub mod mount;
pub mod read;
pub mod write;

use std::fmt;

pub use rustix::io::Errno;

/// A failed system call: which call, on which path, and the errno.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SysError {
    /// The call, e.g. `openat`.
    pub call: &'static str,
    /// The path it was made on, for display.
    pub path: String,
    /// The kernel's answer.
    pub errno: Errno,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} failed: {}", self.path, self.call, std::io::Error::from(self.errno))
    }
}

impl SysError {
    /// Builds an error for `call` on `path`.
    pub fn new(call: &'static str, path: impl Into<String>, errno: Errno) -> Self {
        SysError { call, path: path.into(), errno }
    }
}

/// `O_NOFOLLOW` and `O_NONBLOCK`, for std's `OpenOptionsExt::custom_flags`.
pub const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
/// See [`O_NOFOLLOW`].
pub const O_NONBLOCK: i32 = rustix::fs::OFlags::NONBLOCK.bits() as i32;

/// This process's effective uid (`geteuid`, which cannot fail).
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// This process's effective gid (`getegid`, which cannot fail).
pub fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Raises the soft limit on open files to the hard one (an unpack keeps a
/// descriptor open per directory being filled). A refusal leaves the limit
/// as it was: running out of descriptors is then reported where it happens.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (l.current, l.maximum) {
        if cur < max {
            let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(max), maximum: Some(max) });
        }
    }
}

/// Grows this process's descriptor table to hold at least `n` descriptors
/// now, while few threads exist: the kernel grows the table by doubling
/// it, and when threads share it each growth waits for an RCU grace period
/// (milliseconds here), stalling the thread that opened a descriptor,
/// once per doubling. A duplicate of `fd` is made at the highest number
/// wanted and closed at once; the table keeps its size. Best effort: a
/// refusal (the limit) changes nothing.
pub fn reserve_fds(fd: std::os::fd::BorrowedFd<'_>, n: u64) {
    let top = n.min(fd_limit().saturating_sub(1)).min(u64::from(u32::MAX >> 1));
    if top > 64 {
        let _ = rustix::io::fcntl_dupfd_cloexec(fd, top as i32);
    }
}

/// The soft limit on open files (`u64::MAX` when unlimited).
pub fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Result of a syscall wrapper.
pub type Result<T> = std::result::Result<T, SysError>;

/// Runs `f`, retrying on EINTR, and labels a failure with `call` and `path`.
pub fn call<T>(
    call: &'static str,
    path: impl Fn() -> String,
    mut f: impl FnMut() -> rustix::io::Result<T>,
) -> Result<T> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(SysError::new(call, path(), e)),
        }
    }
}
