//! The writers (phase 2): one regular file at a time, its content, its
//! metadata, its final name.

use super::walk::join;
use super::{Ctx, Job, UnpackError, content, fresh, meta};
use crate::manifest::KindCode;
use crate::sys::read::{self as rd, FileType, XattrSource};
use crate::sys::{Errno, write as wr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

/// One regular file: in `update`, keep it if its content matches; otherwise
/// write it under a temporary name, verify, apply metadata, rename.
pub(super) fn write_file(ctx: &Ctx<'_>, job: &Job<'_>, buf: &mut Vec<u8>) -> Result<(), UnpackError> {
    let d = job.dir.as_fd();
    let shown = || ctx.shown(&job.rel);
    if job.check {
        match rd::open_file_at(d, job.name, &shown) {
            Ok(fd) => {
                let st = rd::stat_fd(fd.as_fd(), &shown)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && content::same_content(fd.as_fd(), &job.file, &shown, buf)?
                {
                    meta::apply(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, job.node, &job.rel)?;
                    ctx.files_kept.fetch_add(1, Ordering::Relaxed);
                    ctx.advance(job.file.size);
                    return Ok(());
                }
            }
            // unreadable (rootless, mode 0): rewrite it
            Err(e) if e.errno == Errno::ACCESS => {}
            Err(e) => return Err(e.into()),
        }
    }
    if ctx.opts.link && link_file(ctx, job, buf)? {
        return Ok(());
    }
    if let Some(fresh) = &ctx.fresh {
        return fresh::write_new(ctx, fresh, job, buf);
    }
    let (tmp, fd) = create_temp(ctx, job)?;
    let res = (|| -> Result<u64, UnpackError> {
        let n = content::fill(ctx, &job.rel, &job.file, fd.as_fd(), buf)?;
        meta::apply(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, job.node, &job.rel)?;
        wr::rename_at(d, &tmp, job.name, !ctx.update, &shown)?;
        Ok(n)
    })();
    match res {
        Ok(n) => {
            ctx.files_written.fetch_add(1, Ordering::Relaxed);
            ctx.bytes_written.fetch_add(n, Ordering::Relaxed);
            ctx.advance(job.file.size);
            Ok(())
        }
        Err(e) => {
            let _ = wr::unlink_at(d, &tmp, false, &shown);
            Err(e)
        }
    }
}

/// `--link`: makes the file a hardlink of its blob when that keeps the tree
/// exact; false means "copy it instead". The blob is verified (size and
/// sha256) once before it is first linked.
fn link_file(ctx: &Ctx<'_>, job: &Job<'_>, buf: &mut Vec<u8>) -> Result<bool, UnpackError> {
    let Some(&digest) = job.file.digest else { return Ok(false) };
    let d = job.dir.as_fd();
    let shown = || ctx.shown(&job.rel);
    // one name per blob, the first in manifest order: a second name would
    // make two files of the manifest one inode, which the tree must not show
    if !job.link_first {
        return Ok(false);
    }
    // the blob takes this file's mode: one its owner cannot read would stop
    // the other files of this content being copied from it (rootless)
    if job.node.mode() & 0o400 == 0 {
        return Ok(false);
    }
    {
        let blob = match ctx.store.open_blob(&digest) {
            Ok(fd) => fd,
            Err(e) => return Err(content::content_err(ctx, &job.rel, digest, e)),
        };
        let st = rd::stat_fd(blob.as_fd(), &shown)?;
        // a blob another checkout already linked keeps its metadata
        if st.st_nlink != 1 || st.st_size as u64 != job.file.size {
            return Ok(false);
        }
        if !ctx.store.fetched_here(&digest) && !content::same_content(blob.as_fd(), &job.file, &shown, buf)? {
            return Ok(false);
        }
        meta::apply(ctx, XattrSource::Fd(blob.as_fd()), KindCode::File, job.node, &job.rel)?;
    }
    let tmp = loop {
        let n = ctx.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".ocix-tmp.{}.{n}", std::process::id()).into_bytes();
        if !is_sibling(job, &tmp) {
            break tmp;
        }
    };
    match wr::link_at(ctx.store.blobs_dir(), digest.hex().as_bytes(), d, &tmp, &shown) {
        Ok(()) => {}
        // another filesystem: copy instead
        Err(e) if e.errno == Errno::XDEV => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = wr::rename_at(d, &tmp, job.name, !ctx.update, &shown) {
        let _ = wr::unlink_at(d, &tmp, false, &shown);
        return Err(e.into());
    }
    ctx.files_linked.fetch_add(1, Ordering::Relaxed);
    ctx.advance(job.file.size);
    Ok(true)
}

fn create_temp(ctx: &Ctx<'_>, job: &Job<'_>) -> Result<(Vec<u8>, OwnedFd), UnpackError> {
    let pid = std::process::id();
    for _ in 0..1000 {
        let n = ctx.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".ocix-tmp.{pid}.{n}").into_bytes();
        if is_sibling(job, &tmp) {
            continue;
        }
        match wr::create_file_at(job.dir.as_fd(), &tmp, 0o600, &|| ctx.shown(&join(parent_of(&job.rel), &tmp))) {
            Ok(fd) => return Ok((tmp, fd)),
            Err(e) if e.errno == Errno::EXIST => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(UnpackError::NoTempName(ctx.shown(&job.rel)))
}

/// Whether the manifest has an entry named `name` beside the job's file.
fn is_sibling(job: &Job<'_>, name: &[u8]) -> bool {
    job.tmp_siblings.is_some_and(|d| d.children().any(|c| c.name() == name))
}

fn parent_of(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}
