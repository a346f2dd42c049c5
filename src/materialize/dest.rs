//! The destination: checked, and opened or created, before anything is
//! written into it.

use super::UnpackError;
use crate::sys::read::{self as rd, FileType};
use crate::sys::{Errno, SysError};
use rustix::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(super) fn strip_trailing_slashes(p: &Path) -> PathBuf {
    let mut b = p.as_os_str().as_bytes();
    while b.len() > 1 && b.ends_with(b"/") {
        b = &b[..b.len() - 1];
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

/// Opens (creating if absent) the destination directory, refusing a symlink
/// and, without `update`, a non-empty directory. True: it was created here.
pub(super) fn open_dest(dest: &Path, update: bool) -> Result<(OwnedFd, bool), UnpackError> {
    let shown = || dest.display().to_string();
    let mut created = false;
    match rustix::fs::lstat(dest) {
        Err(Errno::NOENT) => {
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    SysError::new("mkdir", parent.display().to_string(), Errno::from_io_error(&e).unwrap_or(Errno::IO))
                })?;
            }
            crate::sys::call("mkdir", shown, || rustix::fs::mkdir(dest, rustix::fs::Mode::from_raw_mode(0o700)))?;
            created = true;
        }
        Err(e) => return Err(SysError::new("lstat", shown(), e).into()),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {}
            FileType::Symlink => return Err(UnpackError::DestSymlink(shown())),
            _ => return Err(UnpackError::DestNotDir(shown())),
        },
    }
    let fd = match rd::open_dir_path(dest) {
        Err(e) if e.errno == Errno::LOOP || e.errno == Errno::NOTDIR => {
            return Err(UnpackError::DestSymlink(shown()));
        }
        r => r?,
    };
    if !update && !rd::read_dir_names(fd.as_fd(), &shown)?.is_empty() {
        return Err(UnpackError::DestNotEmpty(shown()));
    }
    Ok((fd, created))
}
