//! The destination: checked, and opened or created, before anything is
//! written into it.

use super::UnpackError;
use crate::sys::read::{self as rd, FileType};
use crate::sys::{Errno, SysError, write as wr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(super) fn strip_trailing_slashes(p: &Path) -> PathBuf {
    let mut b = p.as_os_str().as_bytes();
    while b.len() > 1 && b.ends_with(b"/") {
        b = &b[..b.len() - 1];
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

/// Checks `dest` as an unpack into it would, changing nothing: a symlink,
/// anything but a directory, or (without `update`) a directory that is not
/// empty is refused, with the same error [`unpack`](super::unpack) gives.
/// True: it exists. For a caller with work to do before it unpacks (a
/// pull), so that a destination the unpack would refuse costs nothing.
pub fn check_dest(dest: &Path, update: bool) -> Result<bool, UnpackError> {
    Ok(existing(&strip_trailing_slashes(dest), update)?.is_some())
}

/// Opens (creating if absent) the destination directory, refusing a symlink
/// and, without `update`, a non-empty directory. True: it was created here.
pub(super) fn open_dest(dest: &Path, update: bool) -> Result<(OwnedFd, bool), UnpackError> {
    if let Some(fd) = existing(dest, update)? {
        return Ok((fd, false));
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            SysError::new("mkdir", parent.display().to_string(), Errno::from_io_error(&e).unwrap_or(Errno::IO))
        })?;
    }
    wr::mkdir_path(dest, 0o700)?;
    Ok((open_checked(dest, update)?, true))
}

/// The destination, opened and checked; `None` when it is absent.
fn existing(dest: &Path, update: bool) -> Result<Option<OwnedFd>, UnpackError> {
    let shown = || dest.display().to_string();
    match rd::lstat_path(dest) {
        Err(e) if e.errno == Errno::NOENT => return Ok(None),
        Err(e) => return Err(e.into()),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {}
            FileType::Symlink => return Err(UnpackError::DestSymlink(shown())),
            _ => return Err(UnpackError::DestNotDir(shown())),
        },
    }
    open_checked(dest, update).map(Some)
}

/// Opens the directory `dest` (never through a symlink) and, without
/// `update`, refuses it unless it is empty.
fn open_checked(dest: &Path, update: bool) -> Result<OwnedFd, UnpackError> {
    let shown = || dest.display().to_string();
    let fd = match rd::open_dir_path(dest) {
        Err(e) if e.errno == Errno::LOOP || e.errno == Errno::NOTDIR => {
            return Err(UnpackError::DestSymlink(shown()));
        }
        r => r?,
    };
    if !update && !rd::read_dir_names(fd.as_fd(), &shown)?.is_empty() {
        return Err(UnpackError::DestNotEmpty(shown()));
    }
    Ok(fd)
}
