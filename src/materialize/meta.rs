//! Per-entry metadata, applied in one fixed order: owner (`fchown`, or
//! `lchown` for a symlink), then extended attributes (set what differs,
//! remove what the manifest lacks), then mode (never on a symlink), then
//! modification time.
//!
//! Why this order: a chown clears setuid/setgid and `security.capability`,
//! so both come after it. Xattrs come before the mode because setting a
//! POSIX ACL may clear setgid and rewrites the group bits, and because
//! without privilege `user.*` xattrs need write permission on the entry,
//! which its final mode (0444, 0555) may not give. The time is last since
//! every other change would not touch it, but nothing should come after it.

use super::{Ctx, NotAppliedKind, UnpackError};
use crate::manifest::{KindCode, Node};
use crate::rootless;
use crate::sys::read::{self as rd, XattrSource};
use crate::sys::{Errno, SysError, write as wr};
use std::collections::BTreeMap;

fn is_privileged_ns(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

/// What is known for certain of an entry this unpack has just created, so
/// that calls which would change nothing are not made.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Known {
    /// Its owner (host ids).
    pub owner: Option<(u32, u32)>,
    /// It has no xattrs at all.
    pub no_xattrs: bool,
    /// Its permission bits, exactly; never with setuid, setgid or sticky
    /// bits (which a chown may clear).
    pub mode: Option<u32>,
}

/// Applies owner, xattrs, mode and mtime of `meta` to the entry reached by
/// `target` (an open fd for files and directories; directory + name for
/// symlinks, devices and fifos). `kind` is what is on disk (a device
/// placeholder is a regular file).
pub(super) fn apply(
    ctx: &Ctx<'_>,
    target: XattrSource<'_>,
    kind: KindCode,
    meta: Node<'_>,
    rel: &[u8],
) -> Result<(), UnpackError> {
    apply_known(ctx, target, kind, meta, rel, Known::default())
}

/// [`apply`], skipping what `known` shows to be in place already: the chown
/// when the owner is right, the listing of xattrs when there are none, the
/// chmod when the mode is right and no ACL was set since.
pub(super) fn apply_known(
    ctx: &Ctx<'_>,
    target: XattrSource<'_>,
    kind: KindCode,
    meta: Node<'_>,
    rel: &[u8],
    known: Known,
) -> Result<(), UnpackError> {
    let shown = || ctx.shown(rel);
    let (mode, uid, gid, mtime) = (meta.mode(), meta.uid(), meta.gid(), meta.mtime());
    // 1. owner
    if !ctx.rootless {
        let (uid, gid) = ctx.host_ids(rel, meta)?;
        if known.owner != Some((uid, gid)) {
            match &target {
                XattrSource::Fd(fd) => wr::fchown(*fd, uid, gid, &shown)?,
                XattrSource::At(d, n) => wr::chown_at(*d, n, uid, gid, &shown)?,
            }
        }
    }
    // 2. xattrs
    let mut want: BTreeMap<&[u8], &[u8]> = meta.xattrs().iter().collect();
    let owner_xattr;
    if ctx.rootless {
        want.remove(rootless::XATTR);
        owner_xattr = rootless::encode(uid, gid).map_err(|what| crate::manifest::DecodeError {
            offset: None,
            path: Some(crate::manifest::path_display(rel)),
            what: what.to_string(),
        })?;
        if let Some(v) = &owner_xattr {
            if matches!(kind, KindCode::File | KindCode::Dir) {
                want.insert(rootless::XATTR, v);
            } else {
                // the kernel allows user.* xattrs only on files and directories
                ctx.not_applied(
                    NotAppliedKind::Owner,
                    rel,
                    format!("owner {uid}:{gid} (no user.* xattr on a {})", kind.name()),
                );
            }
        }
    }
    let have = if known.no_xattrs {
        Vec::new()
    } else {
        match rd::read_xattrs(clone_src(&target), &shown) {
            Ok(h) => h,
            // an entry type that cannot list (e.g. user namespace quirks) has none we could fix
            Err(e) if e.errno == Errno::NOTSUP || e.errno == Errno::PERM => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    };
    // a POSIX ACL (system.posix_acl_*) set or removed rewrites the mode
    let mut mode_known = known.mode;
    for (k, _) in &have {
        if want.contains_key(k.as_slice()) {
            continue;
        }
        if k.starts_with(b"system.") {
            mode_known = None;
        }
        match wr::remove_xattr(&target, k, &shown) {
            Ok(()) => {}
            // a label the host's security module puts on every new file
            // (security.selinux) may refuse removal: report, go on
            Err(e) if k.starts_with(b"security.") && matches!(e.errno, Errno::PERM | Errno::ACCESS) => {
                let n = String::from_utf8_lossy(k);
                ctx.not_applied(NotAppliedKind::Xattr, rel, format!("xattr {n} could not be removed: {}", e.errno));
            }
            Err(e) => tolerate(ctx, rel, k, e, "could not remove")?,
        }
    }
    for (k, v) in &want {
        if have.iter().any(|(hk, hv)| hk.as_slice() == *k && hv.as_slice() == *v) {
            continue;
        }
        if k.starts_with(b"system.") {
            mode_known = None;
        }
        if let Err(e) = wr::set_xattr(&target, k, v, &shown) {
            tolerate(ctx, rel, k, e, "not set")?;
        }
    }
    // 3. mode
    if kind != KindCode::Symlink {
        if mode_known != Some(mode & 0o7777) {
            match &target {
                XattrSource::Fd(fd) => wr::fchmod(*fd, mode, &shown)?,
                XattrSource::At(d, n) => wr::chmod_at(*d, n, mode, &shown)?,
            }
        }
    } else if mode != 0o777 {
        ctx.not_applied(
            NotAppliedKind::Mode,
            rel,
            format!("mode {mode:04o}: a symlink's mode is always 0777 on Linux"),
        );
    }
    // 4. mtime
    match &target {
        XattrSource::Fd(fd) => wr::futimens(*fd, mtime, &shown)?,
        XattrSource::At(d, n) => wr::utimens_at(*d, n, mtime, &shown)?,
    }
    // a time outside 1970..2038 may be beyond what the filesystem holds,
    // which clamps it without an error: say what it kept
    if !(0..=i64::from(i32::MAX)).contains(&mtime.sec) {
        let st = match &target {
            XattrSource::Fd(fd) => rd::stat_fd(*fd, &shown)?,
            XattrSource::At(d, n) => rd::stat_at(*d, n, &shown)?,
        };
        let (sec, nsec) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
        if sec != mtime.sec || nsec != i64::from(mtime.nsec) {
            ctx.not_applied(
                NotAppliedKind::Mtime,
                rel,
                format!(
                    "mtime {}.{:09} s, stored as {sec}.{nsec:09} s (beyond what the filesystem holds)",
                    mtime.sec, mtime.nsec
                ),
            );
        }
    }
    Ok(())
}

fn clone_src<'a>(s: &XattrSource<'a>) -> XattrSource<'a> {
    match s {
        XattrSource::Fd(fd) => XattrSource::Fd(*fd),
        XattrSource::At(d, n) => XattrSource::At(*d, n),
    }
}

/// Decides whether a failed xattr change is fatal. Not fatal, and reported
/// once in the summary: a filesystem without xattr support (`ENOTSUP`), and
/// without privilege a `security.*` or `trusted.*` xattr refused with
/// `EPERM`/`EACCES`. Everything else is an error.
fn tolerate(ctx: &Ctx<'_>, rel: &[u8], name: &[u8], e: SysError, what: &str) -> Result<(), UnpackError> {
    let n = String::from_utf8_lossy(name);
    if e.errno == Errno::NOTSUP {
        ctx.not_applied(NotAppliedKind::Xattr, rel, format!("xattr {n} {what}: not supported by the filesystem"));
        return Ok(());
    }
    if ctx.rootless && matches!(e.errno, Errno::PERM | Errno::ACCESS) && is_privileged_ns(name) {
        ctx.not_applied(NotAppliedKind::Xattr, rel, format!("xattr {n} {what}: needs privilege"));
        return Ok(());
    }
    Err(e.into())
}
