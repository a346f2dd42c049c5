//! Writing into a fresh destination (no `update`): every entry is new, made
//! by this unpack, so a file is created under its final name (`O_EXCL`,
//! nothing to replace, no temporary name to rename) and the calls that
//! would change nothing are left out.
//!
//! What a new entry is like is known from the destination root, looked at
//! once (`fstat`, `flistxattr`):
//! - owner: a new inode belongs to the effective uid, and to the effective
//!   gid or its directory's group (setgid directory, `grpid` mount). The
//!   directories are all made here (mode 0700, their group changed only at
//!   the end), so when the root's group is the effective gid, every new
//!   file and directory gets exactly (euid, egid): a chown to those ids is
//!   skipped.
//! - xattrs: only a default ACL of its directory or a security module's
//!   label gives a new inode xattrs. When this unpack created the root and
//!   the root has none, no directory has a default ACL (they would have
//!   inherited the root's) and nothing labels new inodes (the root would
//!   carry the label): nothing is listed. Otherwise xattrs are listed as
//!   for any existing entry.
//! - mode: with no default ACL, the mode given to `open`/`mkdir` less the
//!   process umask (read once from `/proc/self/status`). A file whose mode
//!   has no setuid, setgid or sticky bit and no bit of the umask is created
//!   with its mode (a chown never touches such a mode); otherwise it is
//!   created 0600 and chmodded after its owner and xattrs, in the order of
//!   [`meta`](super::meta).
//!
//! A file whose blob is not right is found before the file is created when
//! it is small (read whole first), and is unlinked otherwise: no file with
//! wrong content keeps its name once the unpack returns. A killed unpack may
//! leave a file partly written under its final name; `update` checks the
//! content of every file, so a rerun with it rewrites that file.

use super::content::{self, SMALL};
use super::meta::{self, Known};
use super::{Ctx, Job, UnpackError};
use crate::manifest::KindCode;
use crate::sys::read::{self as rd, XattrSource};
use crate::sys::write as wr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

/// What every entry this unpack creates is like (see the module doc).
#[derive(Clone, Copy, Debug)]
pub(super) struct Fresh {
    /// The owner of every new inode (euid, egid), when certain.
    owner: Option<(u32, u32)>,
    /// The process umask, when it could be read.
    umask: Option<u32>,
    /// New inodes get no xattrs and their mode is not changed by an ACL.
    plain: bool,
    /// New directories inherit no setgid bit (the root has none).
    no_setgid_dirs: bool,
}

impl Fresh {
    /// Looks at the destination root once. `created`: this unpack made it.
    pub(super) fn probe(root: BorrowedFd<'_>, created: bool, shown: &dyn Fn() -> String) -> Result<Fresh, UnpackError> {
        let st = rd::stat_fd(root, shown)?;
        let (euid, egid) = (crate::sys::euid(), crate::sys::egid());
        let plain = created && rd::read_xattrs(XattrSource::Fd(root), shown)?.is_empty();
        Ok(Fresh {
            owner: (st.st_gid == egid).then_some((euid, egid)),
            umask: read_umask(),
            plain,
            no_setgid_dirs: st.st_mode & 0o2000 == 0,
        })
    }

    /// The mode the walk gives a new directory whose manifest mode is `m`:
    /// `m` itself when the kernel is known to keep it exactly (no bit of the
    /// umask, no default ACL, no inherited setgid), it has no setuid, setgid
    /// or sticky bit, it lets its owner add children (0700) and nobody else
    /// write (so the tree is never open to others while it is filled);
    /// otherwise 0700, and the mode is set at the end.
    pub(super) fn dir_create_mode(&self, m: u32) -> u32 {
        let m = m & 0o7777;
        let exact = self.plain && self.no_setgid_dirs && self.umask.is_some_and(|u| m & u == 0);
        if exact && m & 0o7000 == 0 && m & 0o700 == 0o700 && m & 0o022 == 0 { m } else { 0o700 }
    }

    /// What is known of a directory made by the walk, whose manifest mode
    /// is `m` (created with [`Fresh::dir_create_mode`]).
    pub(super) fn dir(&self, m: u32) -> Known {
        let created = self.dir_create_mode(m);
        Known {
            owner: self.owner,
            no_xattrs: self.plain,
            mode: self.umask.filter(|_| self.plain && self.no_setgid_dirs).map(|u| created & !u),
        }
    }

    /// What is known of a symlink, device or fifo the walk has just made:
    /// its owner and that it has no xattrs, as for any new inode (its mode
    /// is set as always: a symlink has none to set, a device or fifo is
    /// made 0600).
    pub(super) fn other(&self) -> Known {
        Known { owner: self.owner, no_xattrs: self.plain, mode: None }
    }
}

/// The process umask from `/proc/self/status` (reading it with `umask(2)`
/// would change it for a moment, for every thread).
fn read_umask() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok().filter(|u| *u <= 0o777)
}

/// Writes one regular file of a fresh destination under its final name.
pub(super) fn write_new(ctx: &Ctx<'_>, fresh: &Fresh, job: &Job<'_>, buf: &mut Vec<u8>) -> Result<(), UnpackError> {
    let d = job.dir.as_fd();
    let (f, m, rel) = (&job.file, job.node.mode() & 0o7777, &job.rel);
    let shown = || ctx.shown(rel);
    let owner_ok = ctx.rootless || fresh.owner.is_some_and(|o| ctx.host_ids(rel, job.node).is_ok_and(|h| h == o));
    let xattrs = !job.node.xattrs().is_empty() || (ctx.rootless && (job.node.uid(), job.node.gid()) != (0, 0));
    let umask = fresh.umask.filter(|_| fresh.plain);
    let as_is = m & 0o7000 == 0 && umask.is_some_and(|u| m & u == 0);
    // without privilege, a user.* xattr needs the owner's write permission
    let create_mode = if as_is && !(xattrs && m & 0o200 == 0) { m } else { 0o600 };
    let known = Known { owner: fresh.owner, no_xattrs: fresh.plain, mode: umask.map(|u| create_mode & !u) };
    let empty = f.digest.is_none() || f.size == 0;
    if empty && owner_ok && !xattrs && known.mode == Some(m) {
        // nothing to write and nothing to set but the time: no open at all
        wr::create_empty_at(d, job.name, m, &shown)?;
        if let Err(e) = meta::apply_known(ctx, XattrSource::At(d, job.name), KindCode::File, job.node, rel, known) {
            let _ = wr::unlink_at(d, job.name, false, &shown);
            return Err(e);
        }
        done(ctx, job, 0);
        return Ok(());
    }
    let small = !empty && f.zeros.is_empty() && f.size < SMALL;
    // a small blob is read and verified before anything is created (or
    // found among those read lately; a spilled blob is one `pread` away
    // and checked already, so keeping a copy would gain nothing)
    let cache = small && !ctx.store.spills() && f.digest.is_some_and(|d| ctx.cache.wanted(d));
    let cached = if cache { f.digest.and_then(|dg| ctx.cache.get(dg)) } else { None };
    let len = match (small, &cached, f.digest) {
        (true, None, Some(dg)) => {
            let data = content::read_small(ctx, rel, f, buf)?;
            if cache {
                ctx.cache.put(*dg, data);
            }
            data.len()
        }
        _ => 0,
    };
    let fd = wr::create_file_at(d, job.name, create_mode, &shown)?;
    let res = (|| -> Result<u64, UnpackError> {
        let n = if small {
            let data = match &cached {
                Some(c) => &c[..],
                None => &buf[..len],
            };
            wr::pwrite_all(fd.as_fd(), data, 0, &shown)?;
            data.len() as u64
        } else if empty {
            0
        } else {
            content::write_content(ctx, rel, f, fd.as_fd(), buf)?
        };
        meta::apply_known(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, job.node, rel, known)?;
        Ok(n)
    })();
    match res {
        Ok(n) => {
            done(ctx, job, n);
            Ok(())
        }
        Err(e) => {
            let _ = wr::unlink_at(d, job.name, false, &shown);
            Err(e)
        }
    }
}

fn done(ctx: &Ctx<'_>, job: &Job<'_>, n: u64) {
    ctx.files_written.fetch_add(1, Ordering::Relaxed);
    ctx.bytes_written.fetch_add(n, Ordering::Relaxed);
    ctx.advance(job.file.size);
}
