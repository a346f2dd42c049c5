//! The walk (phase 1): directories, symlinks, devices and fifos created in
//! manifest order, regular files handed to the writers; with `update`, the
//! reconciliation of an existing tree (extra names removed, entries of
//! another type replaced). Then hardlinks (phase 3) and directory metadata
//! (phase 4).

use super::{Ctx, Job, NotAppliedKind, UnpackError, meta};
use crate::manifest::{self, KindCode, KindRef, Node, path_display};
use crate::queue;
use crate::sys::read::{self as rd, FileType, XattrSource};
use crate::sys::{Errno, SysError, write as wr};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

pub(super) struct Walker<'c, 'a, 'm> {
    pub(super) ctx: &'c Ctx<'a>,
    /// The first names hardlinks name, by path, and each one's entry and
    /// its directory's entry index once the walk has met it (validation
    /// put every one before its links).
    pub(super) first_names: HashMap<&'m [u8], Option<(Node<'m>, usize)>>,
    /// The writers' queue, and the batch being filled for it.
    pub(super) jobs: &'c queue::Queue<Vec<Job<'m>>>,
    pub(super) batch: Vec<Job<'m>>,
    pub(super) batch_bytes: u64,
    /// Hardlinks to make.
    pub(super) links: Vec<Link>,
    /// (dev, ino) of existing non-directories kept (`update`).
    pub(super) claimed: HashSet<(u64, u64)>,
    /// `--link`: contents already given to a file, in manifest order, by
    /// the first 8 bytes of their digest (a quarter of the memory for a
    /// million contents; two contents that share them only cost the second
    /// a copy instead of a link).
    pub(super) link_seen: HashSet<u64>,
    /// Directories the walk opened, by entry index, kept open for phase 4
    /// (at most `fd_budget` of them; any other is opened again there).
    pub(super) dir_fds: HashMap<usize, Arc<OwnedFd>>,
    pub(super) fd_budget: usize,
    pub(super) dirs: u64,
    pub(super) others: u64,
    pub(super) removed: u64,
}

/// Files handed to the writers at once, and the data that ends a batch
/// sooner (large files are spread over the writers). A batch of
/// `BATCH_FILES` ends where the next file is in another directory, up to
/// `BATCH_FILES_MAX`: creating a file locks its directory, and two writers
/// creating files in one directory wait for each other (measured on the
/// node tree: 3% of the CPU time spent spinning on that lock).
const BATCH_FILES: usize = 256;
const BATCH_FILES_MAX: usize = 4096;
const BATCH_BYTES: u64 = 4 << 20;

impl<'m> Walker<'_, '_, 'm> {
    /// Queues a file for the writers, in batches.
    fn send(&mut self, job: Job<'m>) -> Result<(), UnpackError> {
        if self.batch.len() >= BATCH_FILES && self.batch.last().is_some_and(|last| !Arc::ptr_eq(&last.dir, &job.dir)) {
            self.flush()?;
        }
        self.batch_bytes += job.file.size;
        self.batch.push(job);
        if self.batch.len() >= BATCH_FILES_MAX || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the batch being filled to the writers.
    pub(super) fn flush(&mut self) -> Result<(), UnpackError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        if let Err(b) = self.jobs.push(batch) {
            return Err(SysError::new("thread", self.ctx.shown(&b[0].rel), Errno::IO).into());
        }
        Ok(())
    }

    /// Creates the children of the directory `parent`, open as `dir`.
    pub(super) fn walk(&mut self, dir: &Arc<OwnedFd>, rel: &mut Vec<u8>, parent: Node<'m>) -> Result<(), UnpackError> {
        let ctx = self.ctx;
        if ctx.update {
            // children come in name order: a sorted list to search
            let names: Vec<&[u8]> = parent.children().map(|c| c.name()).collect();
            let dshown = || ctx.shown(rel);
            for name in rd::read_dir_names(dir.as_fd(), &dshown)? {
                if names.binary_search(&name.as_slice()).is_err() {
                    let crel = join(rel, &name);
                    remove_entry(ctx, dir.as_fd(), &name, &crel)?;
                    self.removed += 1;
                }
            }
        }
        // temporary names (update, --link) avoid the names of the manifest:
        // only a directory holding one like them needs its children checked
        let tmp_like =
            (ctx.update || ctx.opts.link) && parent.children().any(|c| c.name().starts_with(super::TMP_PREFIX));
        let tmp_siblings = tmp_like.then_some(parent);
        for n in parent.children() {
            if ctx.aborted() {
                return Ok(());
            }
            let base = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(n.name());
            let r = self.entry(dir, parent.index(), n, rel, tmp_siblings);
            rel.truncate(base);
            r?;
        }
        Ok(())
    }

    /// What exists at `name` (`update` only), as (type, stat).
    fn existing(&self, dir: BorrowedFd<'_>, name: &[u8], rel: &[u8]) -> Result<Option<rd::Stat>, UnpackError> {
        if !self.ctx.update {
            return Ok(None);
        }
        match rd::stat_at(dir, name, &|| self.ctx.shown(rel)) {
            Ok(st) => Ok(Some(st)),
            Err(e) if e.errno == Errno::NOENT => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an existing non-directory may be kept: it is the first
    /// manifest entry to claim its inode.
    fn claim(&mut self, st: &rd::Stat) -> bool {
        self.claimed.insert((st.st_dev, st.st_ino))
    }

    fn entry(
        &mut self,
        dir: &Arc<OwnedFd>,
        dir_index: usize,
        e: Node<'m>,
        rel: &[u8],
        tmp_siblings: Option<Node<'m>>,
    ) -> Result<(), UnpackError> {
        let ctx = self.ctx;
        let name = e.name();
        if !self.first_names.is_empty() && !e.is_dir() {
            if let Some(slot) = self.first_names.get_mut(rel) {
                slot.get_or_insert((e, dir_index));
            }
        }
        let d = dir.as_fd();
        let shown = || ctx.shown(rel);
        let ex = self.existing(d, name, rel)?;
        let ex_type = ex.as_ref().map(|s| FileType::from_raw_mode(s.st_mode));
        // Removes what is there unless `keep`.
        let clear = |w: &mut Self, keep: bool| -> Result<(), UnpackError> {
            if ex.is_some() && !keep {
                remove_entry(ctx, d, name, rel)?;
                w.removed += 1;
            }
            Ok(())
        };
        match e.kind() {
            KindRef::Dir(_) => {
                let keep = ex_type == Some(FileType::Directory);
                clear(self, keep)?;
                if !keep {
                    let m = ctx.fresh.map_or(0o700, |f| f.dir_create_mode(e.mode()));
                    wr::mkdir_at(d, name, m, &shown)?;
                } else if ctx.rootless && ex.as_ref().is_some_and(|s| s.st_mode & 0o700 != 0o700) {
                    // an existing directory (0555, 0311...) must be readable
                    // and writable by its owner while children are fixed;
                    // its mode is set again once they are
                    wr::chmod_at(d, name, 0o700, &shown)?;
                }
                let fd = rd::open_dir_at(d, name, &shown)?;
                self.dirs += 1;
                let fd = Arc::new(fd);
                if self.dir_fds.len() < self.fd_budget {
                    self.dir_fds.insert(e.index(), fd.clone());
                }
                let mut r = rel.to_vec();
                self.walk(&fd, &mut r, e)?;
            }
            KindRef::File(f) => {
                let check = ex_type == Some(FileType::RegularFile) && {
                    let st = ex.as_ref().map(|s| (s.st_dev, s.st_ino));
                    st.is_some_and(|k| self.claimed.insert(k))
                };
                // a directory (or anything not a file) cannot be renamed over
                if ex.is_some() && ex_type != Some(FileType::RegularFile) {
                    clear(self, false)?;
                }
                let link_first = self.ctx.opts.link && f.digest.is_some_and(|d| self.link_seen.insert(d.prefix()));
                let job = Job {
                    dir: dir.clone(),
                    name,
                    rel: rel.to_vec(),
                    node: e,
                    file: f,
                    tmp_siblings,
                    check,
                    link_first,
                };
                self.send(job)?;
            }
            KindRef::Symlink(target) => {
                let keep = ex_type == Some(FileType::Symlink)
                    && rd::read_link_at(d, name, &shown)? == target
                    && ex.as_ref().is_some_and(|s| self.claim(s));
                clear(self, keep)?;
                if !keep {
                    wr::symlink_at(target, d, name, &shown)?;
                }
                meta::apply_known(ctx, XattrSource::At(d, name), KindCode::Symlink, e, rel, made(ctx, keep))?;
                self.others += 1;
            }
            KindRef::Char(dev) | KindRef::Block(dev) => {
                let (ty, code) = if e.code() == KindCode::Char {
                    (FileType::CharacterDevice, KindCode::Char)
                } else {
                    (FileType::BlockDevice, KindCode::Block)
                };
                if ctx.rootless {
                    // placeholder: an empty regular file
                    let keep = ex_type == Some(FileType::RegularFile)
                        && ex.as_ref().is_some_and(|s| s.st_size == 0)
                        && ex.as_ref().is_some_and(|s| self.claim(s));
                    clear(self, keep)?;
                    let fd = if keep {
                        rd::open_file_at(d, name, &shown)?
                    } else {
                        wr::create_file_at(d, name, 0o600, &shown)?
                    };
                    meta::apply(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, e, rel)?;
                    ctx.not_applied(
                        NotAppliedKind::Device,
                        rel,
                        format!("{} {}:{}", code.name(), dev.major, dev.minor),
                    );
                } else {
                    let want = rd::makedev(dev.major, dev.minor);
                    let keep = ex_type == Some(ty)
                        && ex.as_ref().is_some_and(|s| s.st_rdev == want)
                        && ex.as_ref().is_some_and(|s| self.claim(s));
                    clear(self, keep)?;
                    if !keep {
                        wr::mknod_at(d, name, ty, 0o600, (dev.major, dev.minor), &shown)
                            .map_err(|e| if e.errno == Errno::PERM { UnpackError::NoMknod(e) } else { e.into() })?;
                    }
                    meta::apply_known(ctx, XattrSource::At(d, name), code, e, rel, made(ctx, keep))?;
                }
                self.others += 1;
            }
            KindRef::Fifo => {
                let keep = ex_type == Some(FileType::Fifo) && ex.as_ref().is_some_and(|s| self.claim(s));
                clear(self, keep)?;
                if !keep {
                    wr::mknod_at(d, name, FileType::Fifo, 0o600, (0, 0), &shown)?;
                }
                meta::apply_known(ctx, XattrSource::At(d, name), KindCode::Fifo, e, rel, made(ctx, keep))?;
                self.others += 1;
            }
            KindRef::Socket => {
                clear(self, ex_type == Some(FileType::Socket))?;
                ctx.not_applied(NotAppliedKind::Socket, rel, "not created".into());
            }
            KindRef::Hardlink(target) => {
                let first_at = self.first_names.get(target).copied().flatten();
                let first = first_at.map(|(n, _)| n);
                if first.is_some_and(|f| f.code() == KindCode::Socket) {
                    // its first name is not created either
                    clear(self, ex_type == Some(FileType::Socket))?;
                    let detail = format!("hardlink to {}, not created", path_display(target));
                    ctx.not_applied(NotAppliedKind::Socket, rel, detail);
                    return Ok(());
                }
                let Some(ty) = first.and_then(|k| disk_type(k.code(), ctx.rootless)) else {
                    let what = format!("hardlink to {} names no file, symlink, device or fifo", path_display(target));
                    let e = manifest::DecodeError { offset: None, path: Some(path_display(rel)), what };
                    return Err(e.into());
                };
                if let (true, Some(k)) = (ctx.rootless, first.filter(|k| k.dev().is_some())) {
                    let dev = k.dev().unwrap_or_default();
                    let (name, shown_target) = (k.code().name(), path_display(target));
                    let detail = format!("{name} {}:{}, hardlink to {shown_target}", dev.major, dev.minor);
                    ctx.not_applied(NotAppliedKind::Device, rel, detail);
                }
                // anything else here is compared by inode once links are made
                if ex_type == Some(FileType::Directory) {
                    clear(self, false)?;
                }
                let target_dir = first_at.map_or(0, |(_, d)| d);
                self.links.push(Link { rel: rel.to_vec(), target: target.to_vec(), ty, dir: dir_index, target_dir });
            }
        }
        Ok(())
    }
}

/// What is known of a symlink, device or fifo: nothing of one kept from
/// the existing tree; of one the walk has just made in a fresh destination,
/// its owner and that it has no xattrs (see the `fresh` module).
fn made(ctx: &Ctx<'_>, kept: bool) -> meta::Known {
    match ctx.fresh {
        Some(f) if !kept => f.other(),
        _ => meta::Known::default(),
    }
}

pub(super) fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut r = rel.to_vec();
    if !r.is_empty() {
        r.push(b'/');
    }
    r.extend_from_slice(name);
    r
}

/// Removes `name` in `dir`, a whole subtree if it is a directory, never
/// following symlinks. Rootless, a directory without owner write permission
/// is made writable first (we own it or cannot remove it anyway).
pub(super) fn remove_entry(ctx: &Ctx<'_>, dir: BorrowedFd<'_>, name: &[u8], rel: &[u8]) -> Result<(), UnpackError> {
    let shown = || ctx.shown(rel);
    let st = rd::stat_at(dir, name, &shown)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        // iterative: an existing tree may be deeper than any stack
        let mut stack: Vec<(OwnedFd, Vec<u8>)> = Vec::new();
        if st.st_mode & 0o700 != 0o700 && st.st_uid == crate::sys::euid() {
            wr::chmod_at(dir, name, 0o700, &shown)?;
        }
        let fd = rd::open_dir_at(dir, name, &shown)?;
        stack.push((fd, rel.to_vec()));
        while let Some((fd, drel)) = stack.pop() {
            let dshown = || ctx.shown(&drel);
            let mut pushed = None;
            for n in rd::read_dir_names(fd.as_fd(), &dshown)? {
                let crel = join(&drel, &n);
                let cshown = || ctx.shown(&crel);
                let cst = rd::stat_at(fd.as_fd(), &n, &cshown)?;
                if FileType::from_raw_mode(cst.st_mode) == FileType::Directory {
                    match wr::unlink_at(fd.as_fd(), &n, true, &cshown) {
                        Ok(()) => {}
                        Err(e) if e.errno == Errno::NOTEMPTY || e.errno == Errno::EXIST => {
                            if cst.st_mode & 0o700 != 0o700 && cst.st_uid == crate::sys::euid() {
                                wr::chmod_at(fd.as_fd(), &n, 0o700, &cshown)?;
                            }
                            let cfd = rd::open_dir_at(fd.as_fd(), &n, &cshown)?;
                            pushed = Some((cfd, crel));
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    wr::unlink_at(fd.as_fd(), &n, false, &cshown)?;
                }
            }
            // revisit this directory after the child is emptied
            if let Some(child) = pushed {
                stack.push((fd, drel));
                stack.push(child);
            }
        }
        wr::unlink_at(dir, name, true, &shown)?;
    } else {
        wr::unlink_at(dir, name, false, &shown)?;
    }
    Ok(())
}

/// A hardlink for phase 3 to make.
pub(super) struct Link {
    /// Its path.
    pub(super) rel: Vec<u8>,
    /// Its first name.
    pub(super) target: Vec<u8>,
    /// The first name's type on disk.
    pub(super) ty: FileType,
    /// The entry indexes of the directories holding it and its first name
    /// (the walk may have kept them open).
    pub(super) dir: usize,
    pub(super) target_dir: usize,
}

/// The directories phase 3 opened to make hardlinks in or to, by path:
/// the last few, since the links of one directory come one after another
/// in manifest order and often name first names in one directory too.
#[derive(Default)]
pub(super) struct LinkDirs {
    /// Least recently used first.
    open: Vec<(Vec<u8>, OwnedFd)>,
}

impl LinkDirs {
    /// Directories kept open at once (at least the two one link needs).
    const KEEP: usize = 8;

    /// Opens `rel` (never following a symlink) unless it is open already
    /// or the walk kept it open (`kept`); it becomes the most recently used.
    fn ensure(&mut self, ctx: &Ctx<'_>, root: &OwnedFd, rel: &[u8], kept: bool) -> Result<(), UnpackError> {
        if rel.is_empty() || kept {
            return Ok(());
        }
        if let Some(i) = self.open.iter().position(|(p, _)| p == rel) {
            let hit = self.open.remove(i);
            self.open.push(hit);
            return Ok(());
        }
        let fd = rd::open_dir_beneath(root.as_fd(), rel, &|| ctx.shown(rel))?;
        if self.open.len() == Self::KEEP {
            self.open.remove(0);
        }
        self.open.push((rel.to_vec(), fd));
        Ok(())
    }

    /// The directory `rel` (entry `index`): kept open by the walk, opened
    /// by [`LinkDirs::ensure`], or the root for an empty path.
    fn get<'s>(&'s self, root: &'s OwnedFd, kept: &'s DirFds, index: usize, rel: &[u8]) -> BorrowedFd<'s> {
        if let Some(fd) = kept.get(&index) {
            return fd.as_fd();
        }
        match self.open.iter().find(|(p, _)| p == rel) {
            Some((_, fd)) => fd.as_fd(),
            None => root.as_fd(),
        }
    }
}

fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

/// What the walk makes on disk for a first name of this kind: a device is an
/// empty regular file when rootless. `None` for what a hardlink cannot name
/// or unpack does not create (directories, hardlinks, sockets).
fn disk_type(kind: KindCode, rootless: bool) -> Option<FileType> {
    Some(match kind {
        KindCode::File => FileType::RegularFile,
        KindCode::Symlink => FileType::Symlink,
        KindCode::Char | KindCode::Block if rootless => FileType::RegularFile,
        KindCode::Char => FileType::CharacterDevice,
        KindCode::Block => FileType::BlockDevice,
        KindCode::Fifo => FileType::Fifo,
        KindCode::Dir | KindCode::Hardlink | KindCode::Socket => return None,
    })
}

/// Makes the hardlink at `rel` to the first name `target`, which the walk
/// made as an entry of type `ty` (anything else there now is refused); in
/// `update`, an existing entry that is already that inode is kept, any other
/// is removed first (then the result is true).
pub(super) fn make_link(
    ctx: &Ctx<'_>,
    root: &OwnedFd,
    dirs: &mut LinkDirs,
    kept: &DirFds,
    link: &Link,
) -> Result<bool, UnpackError> {
    let (rel, target, ty) = (&link.rel[..], &link.target[..], link.ty);
    let (tdir, tname) = split_last(target);
    let (ldir, lname) = split_last(rel);
    dirs.ensure(ctx, root, tdir, kept.contains_key(&link.target_dir))?;
    dirs.ensure(ctx, root, ldir, kept.contains_key(&link.dir))?;
    let (tfd, lfd) = (dirs.get(root, kept, link.target_dir, tdir), dirs.get(root, kept, link.dir, ldir));
    let shown = || format!("{} (hardlink to {})", ctx.shown(rel), path_display(target));
    let tst = rd::stat_at(tfd.as_fd(), tname, &|| ctx.shown(target))?;
    if FileType::from_raw_mode(tst.st_mode) != ty {
        return Err(SysError::new("linkat", shown(), Errno::PERM).into());
    }
    let mut removed = false;
    if ctx.update {
        match rd::stat_at(lfd.as_fd(), lname, &shown) {
            Ok(st) if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino => return Ok(false),
            Ok(_) => {
                remove_entry(ctx, lfd.as_fd(), lname, rel)?;
                removed = true;
            }
            Err(e) if e.errno == Errno::NOENT => {}
            Err(e) => return Err(e.into()),
        }
    }
    wr::link_at(tfd.as_fd(), tname, lfd.as_fd(), lname, &shown)?;
    Ok(removed)
}

fn finish_dir(
    ctx: &Ctx<'_>,
    dir: BorrowedFd<'_>,
    rel: &mut Vec<u8>,
    e: Node<'_>,
    kept: &DirFds,
) -> Result<(), UnpackError> {
    let known = ctx.fresh.map(|f| f.dir(e.mode())).unwrap_or_default();
    let opened;
    let fd = match kept.get(&e.index()) {
        Some(fd) => fd.as_fd(),
        // a directory this unpack made, with no directory below it, needs
        // no fd of its own: its metadata goes by name (a chown, time or
        // xattr that never follows a symlink), usually one utimensat
        None if ctx.fresh.is_some() && !e.children().any(|c| c.is_dir()) => {
            return meta::apply_known(ctx, XattrSource::At(dir, e.name()), KindCode::Dir, e, rel, known);
        }
        None => {
            let shown = ctx.shown(rel);
            opened = rd::open_dir_at(dir, e.name(), &|| shown.clone())?;
            opened.as_fd()
        }
    };
    finish_dirs(ctx, fd, rel, e, kept)?;
    meta::apply_known(ctx, XattrSource::Fd(fd), KindCode::Dir, e, rel, known)
}

/// The directories the walk kept open, by entry index.
pub(super) type DirFds = HashMap<usize, Arc<OwnedFd>>;

/// Applies directory metadata below `dir` (the directory `parent`),
/// children before parents.
pub(super) fn finish_dirs(
    ctx: &Ctx<'_>,
    dir: BorrowedFd<'_>,
    rel: &mut Vec<u8>,
    parent: Node<'_>,
    kept: &DirFds,
) -> Result<(), UnpackError> {
    for e in parent.children().filter(|c| c.is_dir()) {
        let base = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.name());
        let r = finish_dir(ctx, dir, rel, e, kept);
        rel.truncate(base);
        r?;
    }
    Ok(())
}
