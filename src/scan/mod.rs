//! Source: a real directory tree -> manifest (+ blobs in a store).
//!
//! One thread walks the tree depth-first with one directory fd per level,
//! every call relative to its parent's fd by a single name, never following a
//! symlink (`fstatat(AT_SYMLINK_NOFOLLOW)`, `O_NOFOLLOW`). Children are
//! visited in the byte order of their names, which is manifest order, so the
//! first name met of a hardlinked inode (of any type but a directory) is the
//! one that carries it. Each entry is appended to the compact manifest
//! ([`Compact`], through its builder) as it is met, so the walk holds no
//! tree. Regular files are opened by the walker and handed, as open fds in
//! batches, to hashing threads that compute sha256 and the zero runs and,
//! with a store, write the blob in the same pass (sparse where the content
//! is zero); a file's content and xattrs are filled into its entry when its
//! batch comes back. The walk runs on a thread with a current directory
//! of its own, moved to each directory as it is listed, so the xattrs of
//! entries that are not opened (empty files, symlinks, devices) are read by
//! their single name; where the kernel refuses a thread its own current
//! directory, through `/proc/self/fd/<dir>/<name>`. Only read calls are
//! made on the tree.
//!
//! What is fatal and what is not: an entry that cannot be read (permission,
//! I/O error), an entry that changes while it is read (its inode, size, mtime
//! or ctime differ after reading), and a file that grows or shrinks while
//! hashed are errors; all of them are collected and reported together and no
//! manifest is produced. An entry that vanishes between listing its directory
//! and reading it is a warning and is left out (the tree was changing; the
//! manifest describes what was there). A mount point below the root is
//! recorded as a directory but not descended into unless asked.

mod content;

use crate::filter::{Excludes, PatternError};
use crate::manifest::compact::{BuildError, Builder, Children, FileRef, KindRef, Leaf, MetaIn, Node};
use crate::manifest::{self, Compact, Dev, File, Kind, Time};
use crate::progress::{Progress, Task, Work};
use crate::queue::{CloseOnDrop, CloseWhenLast, Queue};
use crate::rootless;
use crate::store::Store;
use crate::sys::read::{self as rd, FileType, Stat, XattrSource};
use crate::sys::write as wr;
use crate::sys::{Errno, SysError};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use content::{ContentSink, hash_content};

/// How to scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Glob patterns of paths to leave out. A pattern without `/` matches a
    /// name at any depth; one with `/` matches the path relative to the root.
    pub excludes: Vec<String>,
    /// Read owners from `user.rootlesscontainers` (a tree unpacked without
    /// privilege): the on-disk owner is ignored and the xattr is not recorded.
    pub rootless: bool,
    /// Descend into directories on other filesystems.
    pub cross_mounts: bool,
    /// Hashing threads; 0 means one per CPU.
    pub threads: usize,
    /// Where the entries met and the bytes hashed are reported.
    pub progress: Progress,
    /// Contents known from an earlier record of the same tree, taken for
    /// files that have surely not changed since instead of hashing them.
    pub reuse: Option<std::sync::Arc<Reuse>>,
}

/// An earlier record of the tree being scanned, for [`ScanOptions::reuse`].
///
/// A regular file's content is taken from `manifest` without reading it
/// when the entry at its path there is a regular file of the same size and
/// mtime and the file's inode last changed (its ctime, which no call can
/// set back) strictly before `changed_before`: writing the content, and
/// every way of restoring an mtime, sets the ctime to the present. The
/// caller takes `changed_before` from the filesystem's own clock at a
/// moment when the tree matched `manifest` (the record was written after
/// the tree was complete, and nothing changed in between). With a store, a
/// file taken as recorded is not stored again: its blob is assumed present.
#[derive(Debug)]
///
/// The record is followed in step with the walk (both are in manifest
/// order): each directory's recorded children are passed once, so finding
/// every file costs one pass over the record, however flat the tree.
pub struct Reuse {
    /// The tree's earlier manifest.
    pub manifest: Compact,
    /// Files whose inode changed at or after this time are hashed.
    pub changed_before: Time,
}

impl Reuse {
    /// The recorded content of the regular file whose record is `rec`, if
    /// it surely still holds.
    fn known<'r>(&self, rec: Option<Node<'r>>, st: &Stat) -> Option<FileRef<'r>> {
        let ctime = Time { sec: st.st_ctime, nsec: st.st_ctime_nsec as u32 };
        if ctime >= self.changed_before {
            return None;
        }
        let rec = rec?;
        match rec.kind() {
            KindRef::File(f) if f.size == st.st_size as u64 && rec.mtime() == stat_time(st) && f.digest.is_some() => {
                Some(f)
            }
            _ => None,
        }
    }
}

/// The recorded children of a directory being walked, passed in step with
/// its names in byte order.
struct Recorded<'r>(Option<std::iter::Peekable<Children<'r>>>);

impl<'r> Recorded<'r> {
    /// The children of `dir` (none without a record or for another type).
    fn of(dir: Option<Node<'r>>) -> Self {
        Recorded(dir.filter(Node::is_dir).map(|d| d.children().peekable()))
    }

    /// The recorded child called `name`; names asked for come in
    /// increasing byte order, so the children before it are passed for good.
    fn seek(&mut self, name: &[u8]) -> Option<Node<'r>> {
        let it = self.0.as_mut()?;
        while let Some(n) = it.peek() {
            match n.name().cmp(name) {
                std::cmp::Ordering::Less => {
                    it.next();
                }
                std::cmp::Ordering::Equal => return it.next(),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}

/// A non-fatal finding of a scan; each names the entry (as shown, relative
/// to the root).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanWarning {
    /// The entry vanished while it was scanned; it is left out.
    #[error("{0}: vanished while scanning; left out")]
    Vanished(String),
    /// A directory on another filesystem: recorded, its contents not (see
    /// [`ScanOptions::cross_mounts`]).
    #[error("{0}: mount point; recorded, not descended into")]
    MountPoint(String),
}

/// A finished scan.
#[derive(Debug)]
pub struct Scan {
    /// The tree's manifest.
    pub manifest: Compact,
    /// Non-fatal findings (entries that vanished while scanned, mount points).
    pub warnings: Vec<ScanWarning>,
    /// Regular files hashed.
    pub files: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Regular files whose content was taken from [`ScanOptions::reuse`]
    /// (counted in `files` and `bytes` too).
    pub reused: u64,
}

/// Why one entry of the tree could not be scanned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// A call on the entry failed (the error names the call and the path).
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Its content could not be stored.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// It changed while it was read.
    #[error("{}: {what}", show(.path))]
    Changed {
        /// The entry.
        path: PathBuf,
        /// How.
        what: Change,
    },
    /// Its owner cannot be read from `user.rootlesscontainers`.
    #[error("{}: user.rootlesscontainers: {why}", show(.path))]
    Rootless {
        /// The entry.
        path: PathBuf,
        /// What is wrong with the xattr.
        why: rootless::RootlessError,
    },
    /// It is nested deeper than a manifest allows.
    #[error("{}: {why}", show(.path))]
    Depth {
        /// The directory.
        path: PathBuf,
        /// The limit it exceeds.
        why: manifest::LimitError,
    },
    /// Its file type is none Linux has.
    #[error("{}: unknown file type (mode {mode:o})", show(.path))]
    UnknownType {
        /// The entry.
        path: PathBuf,
        /// Its `st_mode`.
        mode: u32,
    },
    /// A directory lent read permission (rootless) could not be given its
    /// mode back.
    #[error("restoring mode {mode:o}: {err}")]
    RestoreMode {
        /// The mode it had.
        mode: u32,
        /// The failed call.
        err: SysError,
    },
    /// The hashing threads stopped before the walk was done.
    #[error("hashing threads stopped")]
    ThreadsStopped,
    /// A file handed to the hashing threads came back without a result.
    #[error("{}: not hashed", show(.0))]
    NotHashed(PathBuf),
    /// It cannot be held in a manifest (a name longer than 255 bytes,
    /// device numbers Linux cannot represent, past the model's limits).
    #[error("{}: {why}", show(.path))]
    Unrepresentable {
        /// The entry.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// How an entry changed while it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Change {
    /// Another inode is at its name now.
    #[error("replaced while scanning")]
    Replaced,
    /// Its inode, size, mtime or ctime differ after reading.
    #[error("changed while being read")]
    Modified,
    /// An empty file has content now.
    #[error("grew while being read")]
    Grew,
    /// A file has more than this many bytes now.
    #[error("grew while being read (more than {0} bytes)")]
    GrewPast(u64),
    /// A file ended before its size.
    #[error("shrank while being read (expected {expected} bytes, got {got})")]
    Shrank {
        /// Its size when listed.
        expected: u64,
        /// Bytes read.
        got: u64,
    },
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root could not be opened or read.
    #[error(transparent)]
    Root(#[from] SysError),
    /// Entries that could not be read; the manifest is not produced.
    #[error("{} entries could not be scanned:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Entries(Vec<EntryError>),
    /// A blob could not be stored.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An exclude pattern is not a valid glob.
    #[error("invalid exclude pattern {0}")]
    Pattern(PatternError),
}

struct Job {
    /// The file's entry in the manifest being built.
    index: usize,
    fd: OwnedFd,
    stat: Stat,
    /// Path relative to the root, for messages.
    path: Vec<u8>,
    /// Already read by the walker (while read permission was lent).
    xattrs: Option<Xattrs>,
}

/// Files handed to a hashing thread at once, at most: this many, or as
/// many as hold this many bytes (a larger file goes alone); enough work
/// per hand-over that the threads rarely wait on each other.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 2 << 20;
/// Files open at once in batches, at most (about: the walk's own
/// directories come on top), well under the usual limit of 1024.
const OPEN_FILES: usize = 512;
/// Batches waiting in the queue, at most.
const QUEUED: usize = 2;

/// Extended attributes as read, name and value.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A hashed file: its content record and xattrs, or why it failed.
type Hashed = Result<(File, Xattrs), EntryError>;

struct Done {
    index: usize,
    path: Vec<u8>,
    result: Hashed,
}

struct Walker<'a> {
    root_path: &'a Path,
    root_dev: u64,
    opts: &'a ScanOptions,
    excludes: Excludes,
    /// Batches of files to hash, and of their results.
    jobs: &'a Queue<Vec<Job>>,
    done: &'a Queue<Vec<Done>>,
    /// Files gathered for the next batch, and their bytes.
    batch: Vec<Job>,
    batch_bytes: u64,
    /// Files per batch: fewer with many threads, so that the batches
    /// queued, gathered and being hashed hold at most [`OPEN_FILES`].
    batch_files: usize,
    /// The manifest, appended to in manifest order; a file's content and
    /// xattrs are set when its result comes in.
    b: Builder,
    /// Files handed out, results taken in.
    sent: usize,
    received: usize,
    /// Entries met so far (for the progress line).
    seen: u64,
    /// Regular files described (empty, hashed or taken as recorded) and
    /// bytes hashed or taken.
    files: u64,
    bytes: u64,
    /// Regular files taken from [`ScanOptions::reuse`].
    reused: u64,
    /// first name of each hardlinked inode (any type but a directory), by
    /// (dev, ino)
    links: HashMap<(u64, u64), Vec<u8>>,
    errors: Vec<EntryError>,
    /// Errors of hashed files, by entry: reported after the walk's, in
    /// manifest order.
    hash_errors: Vec<(usize, EntryError)>,
    warnings: Vec<ScanWarning>,
    progress: &'a dyn Task,
    euid: u32,
    /// The walking thread has a current directory of its own
    /// ([`rd::own_cwd`]), moved to each directory listed.
    own_cwd: bool,
    /// The current directory is the one whose entries are being read:
    /// their xattrs are read by name, relative to it.
    here: bool,
}

/// The path of the entry at `path` (relative to the root, `/`-joined).
fn entry_path(root: &Path, path: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(path))
}

/// How a path is named in messages: on one line, bytes that are not UTF-8
/// and control characters escaped (see [`manifest::path_display`]).
pub(crate) fn show(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    manifest::notation::escape(path.as_os_str().as_bytes())
}

/// How a path below the root is named in messages.
fn shown_path(root: &Path, path: &[u8]) -> String {
    show(&entry_path(root, path))
}

fn stat_time(st: &Stat) -> Time {
    Time { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }
}

/// Why the manifest cannot hold an entry.
fn unrepresentable(path: PathBuf, e: BuildError) -> EntryError {
    let why = match e {
        BuildError::NameTooLong => "name longer than 255 bytes".to_string(),
        BuildError::Mode(m) => format!("mode {m:o} has bits outside 07777"),
        BuildError::Device(why) => why.to_string(),
        BuildError::TooLarge(t) => t.to_string(),
    };
    EntryError::Unrepresentable { path, why }
}

impl<'a> Walker<'a> {
    /// Whether the owner's read permission may be lent to read this entry:
    /// a rootless scan by the unprivileged user who owns it.
    fn may_lend(&self, st: &Stat) -> bool {
        self.opts.rootless && self.euid != 0 && st.st_uid == self.euid
    }

    /// Whether an empty regular file surely may be read without opening
    /// it: root may read anything; an owner may if the owner's read bit is
    /// set (which no ACL overrides). Anyone else opens it, so that a file
    /// they may not read fails the scan as a file with content does.
    fn may_skip_open(&self, st: &Stat) -> bool {
        self.euid == 0 || (st.st_uid == self.euid && st.st_mode & 0o400 != 0)
    }

    fn shown(&self, path: &[u8]) -> String {
        shown_path(self.root_path, path)
    }

    fn path(&self, path: &[u8]) -> PathBuf {
        entry_path(self.root_path, path)
    }

    /// Takes in the results the hashing threads have finished so far.
    fn take_done(&mut self) {
        while let Some(batch) = self.done.try_pop() {
            self.apply(batch);
        }
    }

    /// Puts hashed files' content and xattrs into the manifest.
    fn apply(&mut self, batch: Vec<Done>) {
        for d in batch {
            self.received += 1;
            let (f, xattrs) = match d.result {
                Ok(r) => r,
                Err(e) => {
                    self.hash_errors.push((d.index, e));
                    continue;
                }
            };
            self.files += 1;
            self.bytes += f.size;
            if let Err(t) = self.b.set_file(d.index, f.size, f.digest, &f.zeros) {
                let why = EntryError::Unrepresentable { path: self.path(&d.path), why: t.to_string() };
                self.hash_errors.push((d.index, why));
            }
            let mut xattrs: BTreeMap<Vec<u8>, Vec<u8>> = xattrs.into_iter().collect();
            if self.opts.rootless {
                match rootless_ids(&mut xattrs) {
                    Ok((uid, gid)) => self.b.set_ids(d.index, uid, gid),
                    Err(why) => {
                        self.hash_errors.push((d.index, EntryError::Rootless { path: self.path(&d.path), why }))
                    }
                }
            }
            let x = self.intern(&xattrs, &d.path);
            self.b.set_xattrs(d.index, x);
        }
    }

    fn intern(&mut self, xattrs: &BTreeMap<Vec<u8>, Vec<u8>>, path: &[u8]) -> u32 {
        match self.b.intern_xattrs(xattrs.iter().map(|(k, v)| (&k[..], &v[..]))) {
            Ok(i) => i,
            Err(t) => {
                self.errors.push(EntryError::Unrepresentable { path: self.path(path), why: t.to_string() });
                0
            }
        }
    }

    fn meta(&mut self, st: &Stat, xattrs: Xattrs, path: &[u8]) -> MetaIn<'static> {
        let mut xattrs: BTreeMap<Vec<u8>, Vec<u8>> = xattrs.into_iter().collect();
        let (mut uid, mut gid) = (st.st_uid, st.st_gid);
        if self.opts.rootless {
            match rootless_ids(&mut xattrs) {
                Ok(ids) => (uid, gid) = ids,
                Err(why) => self.errors.push(EntryError::Rootless { path: self.path(path), why }),
            }
        }
        let xattrs = self.intern(&xattrs, path);
        MetaIn { mode: st.st_mode & 0o7777, uid, gid, mtime: stat_time(st), xattrs, uname: None, gname: None }
    }

    /// Appends a non-directory entry; returns its index.
    fn push(&mut self, name: &[u8], meta: &MetaIn<'_>, leaf: Leaf<'_>, path: &[u8]) -> Option<usize> {
        match self.b.push(name, meta, leaf) {
            Ok(i) => Some(i),
            Err(e) => {
                self.errors.push(unrepresentable(self.path(path), e));
                None
            }
        }
    }

    /// Hands a file to the hashing threads, in batches.
    fn hash(&mut self, job: Job) {
        self.batch_bytes += job.stat.st_size as u64;
        self.batch.push(job);
        if self.batch.len() >= self.batch_files || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands out the files gathered so far.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_files));
        self.batch_bytes = 0;
        let n = batch.len();
        if self.jobs.push(batch).is_ok() {
            self.sent += n;
        } else {
            self.errors.push(EntryError::ThreadsStopped);
        }
    }

    /// Scans the directory open as `fd` at `path`: appends its children.
    /// `rec` is the directory's record in [`ScanOptions::reuse`], if any.
    fn walk_dir(&mut self, fd: BorrowedFd<'_>, path: &mut Vec<u8>, depth: usize, rec: Option<Node<'a>>) {
        if let Err(why) = manifest::check_depth(depth, true) {
            self.errors.push(EntryError::Depth { path: self.path(path), why });
            return;
        }
        self.here = self.own_cwd && rd::change_dir(fd);
        let mut names = match rd::list_dir_once(fd, &|| self.shown(path)) {
            Ok(n) => n,
            Err(e) => {
                self.errors.push(e.into());
                return;
            }
        };
        // children in name order: manifest order
        names.sort();
        let mut recorded = Recorded::of(rec);
        let base = path.len();
        for name in names.iter() {
            path.truncate(base);
            if base > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            if self.excludes.is_excluded(path) {
                continue;
            }
            let rec = recorded.seek(name);
            self.entry(fd, name, path, depth, rec);
            self.take_done();
        }
        path.truncate(base);
    }

    /// Rootless: opens a file its owner may not read (mode 0000, say) by
    /// lending the owner read permission for the moment of opening and of
    /// reading its xattrs, then restoring the mode at once, as umoci does;
    /// only the ctime changes. `st` is refreshed so the changed-while-read
    /// check compares against the restored state.
    fn open_lent(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        st: &mut Stat,
        sh: &dyn Fn() -> String,
    ) -> crate::sys::Result<(OwnedFd, Xattrs)> {
        let mode = st.st_mode & 0o7777;
        wr::chmod_at(dir, name, mode | 0o400, sh)?;
        let opened = rd::open_file_at(dir, name, sh)
            .and_then(|fd| rd::read_xattrs(XattrSource::Fd(fd.as_fd()), sh).map(|x| (fd, x)));
        let restored = wr::chmod_at(dir, name, mode, sh);
        let (fd, x) = opened?;
        restored?;
        let now = rd::stat_fd(fd.as_fd(), sh)?;
        if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
            return Err(crate::sys::SysError::new(
                "openat",
                format!("{} (replaced while scanning)", sh()),
                Errno::AGAIN,
            ));
        }
        *st = now;
        Ok((fd, x))
    }

    /// Keeps a result, or records why there is none: an entry that vanished
    /// is a warning (left out), any other failure an error.
    fn settle<T>(&mut self, r: crate::sys::Result<T>, shown: &dyn Fn() -> String) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if e.errno == Errno::NOENT => {
                self.warnings.push(ScanWarning::Vanished(shown()));
                None
            }
            Err(e) => {
                self.errors.push(e.into());
                None
            }
        }
    }

    /// Scans the entry `name` of the directory open as `dir` and appends
    /// it (a directory with its subtree); an entry left out appends nothing.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &mut Vec<u8>,
        depth: usize,
        rec: Option<Node<'a>>,
    ) -> Option<()> {
        let root_path = self.root_path;
        let shown_of = |p: &[u8]| shown_path(root_path, p);
        let here = path.clone();
        let sh = || shown_of(&here);
        let st = self.settle(rd::stat_at(dir, name, &sh), &sh)?;
        self.seen += 1;
        if self.seen % 64 == 0 {
            self.progress.items(self.seen, None);
        }
        let ft = FileType::from_raw_mode(st.st_mode);
        // a later name of an inode met before, whatever its type (a
        // directory's link count counts its subdirectories, not names)
        if st.st_nlink > 1 && ft != FileType::Directory {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                self.push(name, &MetaIn::default(), Leaf::Hardlink(&first), path);
                return Some(());
            }
            self.links.insert(key, path.clone());
        }
        let xattrs_at = |w: &mut Self| -> Xattrs {
            let read =
                if w.here { rd::read_xattrs_here(name, &sh) } else { rd::read_xattrs(XattrSource::At(dir, name), &sh) };
            match read {
                Ok(x) => x,
                Err(e) => {
                    w.errors.push(e.into());
                    Vec::new()
                }
            }
        };
        let empty = Leaf::File { size: 0, digest: None, zeros: &[] };
        let (leaf_owned, xattrs): (Kind, Xattrs) = match ft {
            FileType::Directory => {
                let mut lent: Option<u32> = None;
                let opened = match rd::open_dir_at(dir, name, &sh) {
                    Err(e) if e.errno == Errno::ACCESS && self.may_lend(&st) => {
                        // rootless: the owner may list it once it lends itself r-x
                        let mode = st.st_mode & 0o7777;
                        match wr::chmod_at(dir, name, mode | 0o500, &sh) {
                            Ok(()) => {
                                lent = Some(mode);
                                rd::open_dir_at(dir, name, &sh)
                            }
                            Err(_) => Err(e),
                        }
                    }
                    r => r,
                };
                let fd = self.settle(opened, &sh)?;
                if !same_inode(&st, &fd, &self.path(path), &mut self.errors) {
                    return None;
                }
                let xattrs = match rd::read_xattrs(XattrSource::Fd(fd.as_fd()), &sh) {
                    Ok(x) => x,
                    Err(e) => {
                        self.errors.push(e.into());
                        Vec::new()
                    }
                };
                let meta = self.meta(&st, xattrs, path);
                match self.b.open_dir(name, &meta) {
                    Ok(_) => {
                        if st.st_dev != self.root_dev && !self.opts.cross_mounts {
                            self.warnings.push(ScanWarning::MountPoint(sh()));
                        } else {
                            stacker::maybe_grow(64 * 1024, 1024 * 1024, || {
                                self.walk_dir(fd.as_fd(), path, depth + 1, rec)
                            });
                            // back to this directory for its next entries
                            self.here = self.own_cwd && rd::change_dir(dir);
                        }
                        self.b.close_dir();
                    }
                    Err(e) => self.errors.push(unrepresentable(self.path(path), e)),
                }
                if let Some(mode) = lent {
                    if let Err(e) = wr::chmod_at(dir, name, mode, &sh) {
                        self.errors.push(EntryError::RestoreMode { mode, err: e });
                    }
                }
                return Some(());
            }
            FileType::RegularFile => {
                let mut st = st;
                let opts: &'a ScanOptions = self.opts;
                let known = match &opts.reuse {
                    Some(r) if st.st_size > 0 && self.may_skip_open(&st) => r.known(rec, &st),
                    _ => None,
                };
                if let Some(file) = known {
                    // taken as recorded
                    let x = xattrs_at(self);
                    let meta = self.meta(&st, x, path);
                    self.reused += 1;
                    self.files += 1;
                    self.bytes += file.size;
                    let leaf = Leaf::File { size: file.size, digest: file.digest.copied(), zeros: file.zeros };
                    self.push(name, &meta, leaf, path);
                    return Some(());
                }
                if st.st_size == 0 && self.may_skip_open(&st) {
                    // Empty: nothing to read or hash, and no need to open it;
                    // its xattrs are read by name.
                    let xattrs = xattrs_at(self);
                    let meta = self.meta(&st, xattrs, path);
                    self.files += 1;
                    self.push(name, &meta, empty, path);
                    return Some(());
                }
                let mut xattrs = None;
                let opened = match rd::open_file_at(dir, name, &sh) {
                    Err(e) if e.errno == Errno::ACCESS && self.may_lend(&st) => {
                        self.open_lent(dir, name, &mut st, &sh).map(|(fd, x)| {
                            xattrs = Some(x);
                            fd
                        })
                    }
                    r => r,
                };
                let fd = self.settle(opened, &sh)?;
                if st.st_size == 0 {
                    // opened only to be sure it may be read
                    let x = match xattrs {
                        Some(x) => Ok(x),
                        None => rd::read_xattrs(XattrSource::Fd(fd.as_fd()), &sh),
                    };
                    let x = x.unwrap_or_else(|e| {
                        self.errors.push(e.into());
                        Vec::new()
                    });
                    let meta = self.meta(&st, x, path);
                    self.files += 1;
                    self.push(name, &meta, empty, path);
                    return Some(());
                }
                // Content and xattrs are set when a hashing thread is done.
                let meta = self.meta(&st, Vec::new(), path);
                let leaf = Leaf::File { size: st.st_size as u64, digest: None, zeros: &[] };
                let index = self.push(name, &meta, leaf, path)?;
                self.hash(Job { index, fd, stat: st, path: path.clone(), xattrs });
                return Some(());
            }
            FileType::Symlink => match rd::read_link_at(dir, name, &sh) {
                Ok(t) => (Kind::Symlink(t), xattrs_at(self)),
                Err(e) => {
                    self.errors.push(e.into());
                    return None;
                }
            },
            FileType::CharacterDevice | FileType::BlockDevice => {
                let d = Dev { major: rd::major(st.st_rdev), minor: rd::minor(st.st_rdev) };
                let k = if ft == FileType::CharacterDevice { Kind::Char(d) } else { Kind::Block(d) };
                (k, xattrs_at(self))
            }
            FileType::Fifo => (Kind::Fifo, xattrs_at(self)),
            FileType::Socket => (Kind::Socket, xattrs_at(self)),
            FileType::Unknown => {
                self.errors.push(EntryError::UnknownType { path: self.path(path), mode: st.st_mode });
                return None;
            }
        };
        let meta = self.meta(&st, xattrs, path);
        let leaf = Leaf::of(&leaf_owned).unwrap_or(Leaf::Fifo);
        self.push(name, &meta, leaf, path);
        Some(())
    }
}

fn same_inode(st: &Stat, fd: &OwnedFd, path: &Path, errors: &mut Vec<EntryError>) -> bool {
    match rd::stat_fd(fd.as_fd(), &|| show(path)) {
        Ok(now) if now.st_ino == st.st_ino && now.st_dev == st.st_dev => true,
        Ok(_) => {
            errors.push(EntryError::Changed { path: path.to_path_buf(), what: Change::Replaced });
            false
        }
        Err(e) => {
            errors.push(e.into());
            false
        }
    }
}

/// The owner recorded in `user.rootlesscontainers` (0:0 when absent), the
/// xattr taken out of `xattrs`.
fn rootless_ids(xattrs: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(u32, u32), rootless::RootlessError> {
    match xattrs.remove(rootless::XATTR) {
        Some(v) => rootless::decode(&v),
        None => Ok((0, 0)),
    }
}

fn hash_worker(
    root: &Path,
    jobs: &Queue<Vec<Job>>,
    done: &Queue<Vec<Done>>,
    store: Option<&Store>,
    progress: &dyn Task,
) {
    // one block more than a read: the last read of a file asks for a byte
    // past its size, so that a short read shows its end
    let mut buf = vec![0u8; content::CHUNK + manifest::BLOCK as usize];
    while let Some(batch) = jobs.pop() {
        let mut out = Vec::with_capacity(batch.len());
        for job in batch {
            let full = entry_path(root, &job.path);
            let sh = || show(&full);
            let result = (|| {
                let size = job.stat.st_size as u64;
                let sparse = (job.stat.st_blocks as u64) * 512 < size;
                let file = hash_content(job.fd.as_fd(), size, sparse, store, &mut buf, &full)?;
                let now = rd::stat_fd(job.fd.as_fd(), &sh)?;
                if now.st_ino != job.stat.st_ino
                    || now.st_size != job.stat.st_size
                    || now.st_mtime != job.stat.st_mtime
                    || now.st_mtime_nsec != job.stat.st_mtime_nsec
                    || now.st_ctime != job.stat.st_ctime
                    || now.st_ctime_nsec != job.stat.st_ctime_nsec
                {
                    return Err(EntryError::Changed { path: full.clone(), what: Change::Modified });
                }
                let xattrs = match job.xattrs {
                    Some(x) => x,
                    None => rd::read_xattrs(XattrSource::Fd(job.fd.as_fd()), &sh)?,
                };
                progress.advance(size);
                Ok((file, xattrs))
            })();
            // the file is closed here, before the next one is read
            drop(job.fd);
            out.push(Done { index: job.index, path: job.path, result });
        }
        if done.push(out).is_err() {
            return;
        }
    }
}

/// Files per batch for `threads` hashing threads: the batches queued,
/// being gathered and being hashed (one per thread) hold at most
/// [`OPEN_FILES`] (up to 500 threads).
fn batch_files(threads: usize) -> usize {
    (OPEN_FILES / (QUEUED + 1 + threads)).clamp(1, BATCH_FILES)
}

/// Scans `dir`; with `store`, also puts every file's content there.
pub fn scan_dir(dir: &Path, store: Option<&Store>, opts: &ScanOptions) -> Result<Scan, ScanError> {
    let excludes = Excludes::new(&opts.excludes).map_err(ScanError::Pattern)?;
    // The root itself may be reached through a symlink the user named (as
    // `find -H` does); nothing below it is followed.
    let root_fd = rd::open_dir_path_following(dir)?;
    let shown_root = dir.display().to_string();
    let root_st = rd::stat_fd(root_fd.as_fd(), &|| shown_root.clone())?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        opts.threads
    };
    let progress = opts.progress.start(Work::Scan, None);
    // batches queued, being gathered and being hashed (one per thread)
    let batch_files = batch_files(threads);
    let jobs = Queue::<Vec<Job>>::new(QUEUED);
    let done = Queue::<Vec<Done>>::new(usize::MAX);
    let live = std::sync::atomic::AtomicUsize::new(threads);

    let mut w = std::thread::scope(|s| {
        for _ in 0..threads {
            let (jobs, done, pb) = (&jobs, &done, &*progress);
            let last_closes = CloseWhenLast { queue: done, live: &live };
            s.spawn(move || {
                let _last_closes = last_closes;
                hash_worker(dir, jobs, done, store, pb)
            });
        }
        // The walk runs on a thread of its own, which may take a current
        // directory of its own without moving the caller's.
        let walker = s.spawn(|| {
            // the walk ending, however it ends, stops the hashing threads
            let _close = CloseOnDrop(&jobs);
            let own_cwd = rd::own_cwd();
            let mut w = Walker {
                root_path: dir,
                root_dev: root_st.st_dev,
                opts,
                excludes,
                jobs: &jobs,
                done: &done,
                batch: Vec::with_capacity(batch_files),
                batch_bytes: 0,
                batch_files,
                b: Builder::new(),
                sent: 0,
                received: 0,
                seen: 0,
                files: 0,
                bytes: 0,
                reused: 0,
                links: HashMap::new(),
                errors: Vec::new(),
                hash_errors: Vec::new(),
                warnings: Vec::new(),
                progress: &*progress,
                euid: crate::sys::euid(),
                own_cwd,
                here: false,
            };
            let xattrs =
                rd::read_xattrs(XattrSource::Fd(root_fd.as_fd()), &|| shown_root.clone()).unwrap_or_else(|e| {
                    w.errors.push(e.into());
                    Vec::new()
                });
            let meta = w.meta(&root_st, xattrs, b"");
            match w.b.open_dir(b"", &meta) {
                Ok(_) => {
                    let rec = opts.reuse.as_deref().map(|r| r.manifest.root());
                    w.walk_dir(root_fd.as_fd(), &mut Vec::new(), 0, rec);
                    w.b.close_dir();
                }
                Err(e) => w.errors.push(unrepresentable(dir.to_path_buf(), e)),
            }
            // the last files, then no more: the hashing threads finish
            w.flush();
            jobs.close();
            while let Some(batch) = done.pop() {
                w.apply(batch);
            }
            if w.received < w.sent && w.errors.is_empty() {
                w.errors.push(EntryError::ThreadsStopped);
            }
            w
        });
        walker.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    // the hashed files' errors in manifest order, after the walk's
    w.hash_errors.sort_by_key(|(i, _)| *i);
    let mut errors = std::mem::take(&mut w.errors);
    errors.extend(w.hash_errors.drain(..).map(|(_, e)| e));
    if !errors.is_empty() {
        return Err(ScanError::Entries(errors));
    }
    if let Some(s) = store {
        s.sync()?;
    }
    Ok(Scan { manifest: w.b.finish(), warnings: w.warnings, files: w.files, bytes: w.bytes, reused: w.reused })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_the_open_files_bounded() {
        assert_eq!(batch_files(2), BATCH_FILES);
        for threads in 1..=500 {
            let b = batch_files(threads);
            assert!(b >= 1 && b * (QUEUED + 1 + threads) <= OPEN_FILES, "{threads} threads: {b} files per batch");
        }
    }

    #[test]
    fn reuse_follows_the_walk_through_names_the_record_lacks_or_has_more_of() {
        use crate::manifest::Digest;
        let t = tempfile::tempdir().unwrap();
        let w = |p: &str, data: &[u8]| {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        for i in 0..300 {
            w(&format!("flat/f{i:03}"), format!("file {i}").as_bytes());
        }
        w("a/x", b"x");
        w("b", b"b as a file");
        w("c/y", b"y");
        w("gone", b"gone later");
        let first = scan_dir(t.path(), None, &ScanOptions::default()).unwrap().manifest;
        // the record says other digests than the contents have: a file
        // taken from it keeps the recorded digest
        let fake = Digest([7; 32]);
        fn fake_all(e: &mut manifest::Entry, fake: Digest) {
            match &mut e.kind {
                Kind::File(f) if f.size > 0 => f.digest = Some(fake),
                Kind::Dir(c) => c.values_mut().for_each(|e| fake_all(e, fake)),
                _ => {}
            }
        }
        let mut rec = first.to_tree();
        fake_all(&mut rec.root, fake);
        let rec = Compact::from_tree(&rec).unwrap();
        std::fs::remove_file(t.path().join("gone")).unwrap();
        std::fs::remove_file(t.path().join("flat/f100")).unwrap();
        w("flat/f100a", b"new name in between");
        w("flat/f200", b"other size than recorded");
        std::fs::remove_file(t.path().join("b")).unwrap();
        w("b/z", b"was a file, now a directory");
        let opts = ScanOptions {
            reuse: Some(std::sync::Arc::new(Reuse { manifest: rec, changed_before: Time { sec: i64::MAX, nsec: 0 } })),
            ..ScanOptions::default()
        };
        let s = scan_dir(t.path(), None, &opts).unwrap();
        let m = s.manifest;
        let digest = |p: &[u8]| m.get(p).unwrap().file().unwrap().digest.copied();
        for i in (0..300).filter(|&i| i != 100 && i != 200) {
            assert_eq!(digest(format!("flat/f{i:03}").as_bytes()), Some(fake), "flat/f{i:03}");
        }
        assert_eq!(digest(b"a/x"), Some(fake));
        assert_eq!(digest(b"c/y"), Some(fake));
        assert_eq!(digest(b"flat/f100a"), Some(Digest::of(b"new name in between")));
        assert_eq!(digest(b"flat/f200"), Some(Digest::of(b"other size than recorded")));
        assert_eq!(digest(b"b/z"), Some(Digest::of(b"was a file, now a directory")));
        assert_eq!(s.reused, 300);
    }
}
