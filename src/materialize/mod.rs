//! Sink: manifest + blob store -> a real rootfs directory (`ocix unpack`).
//!
//! Safety: every call is relative to an open directory fd and names one
//! component (`*at()` with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`), so a symlink
//! inside the destination is never followed, whatever the manifest or the
//! existing tree say; nothing outside the destination is created, changed,
//! removed or read (blobs aside). The destination itself must not be a
//! symlink.
//!
//! Order of work:
//! 1. One thread walks the manifest depth first. It creates directories
//!    (mode 0700 for now, so children can be added whatever the final mode
//!    is), symlinks, devices and fifos (with their metadata), and hands each
//!    regular file to a pool of writer threads. With `update`, it first
//!    removes every name the manifest lacks, and replaces entries of the
//!    wrong type.
//! 2. Writers, fed batches of files through a queue on which idle threads
//!    sleep, write each file. With `update`, under a temporary name in its
//!    directory (`.ocix-tmp.<pid>.<n>`, `O_EXCL|O_NOFOLLOW`, a name no
//!    manifest entry of that directory has): write and verify its content,
//!    apply its metadata, then rename it into place. A file whose blob is
//!    missing, short, long or corrupt is unlinked: no file with wrong content
//!    ever has its final name. A killed unpack leaves at most these
//!    temporary files, which a rerun with `update` removes like any other
//!    extra name. Into a fresh destination, each file is created under its
//!    final name and calls that would change nothing are skipped (see
//!    the `fresh` module); a file with a bad blob is still unlinked, and a killed
//!    unpack may leave one file partly written, which `update` rewrites
//!    (it checks every file's content).
//! 3. Hardlinks, by `linkat` to their first name, whatever its type (a
//!    symlink is linked, never followed; rootless, the empty file that
//!    stands for a device). A hardlink to a socket is skipped and reported,
//!    as the socket is.
//! 4. Directory metadata, deepest first, so a directory's mode and mtime are
//!    set after all its children exist.
//!
//! Per entry, metadata goes owner, xattrs, mode, mtime (see `meta.rs`).
//! Entries that must not be opened (symlinks, devices, fifos) get xattrs and
//! mode through `/proc/self/fd`, so `/proc` must be mounted.
//!
//! Ownership: as root (or with explicit maps) owners are set with `chown`,
//! shifted by `--uid-map`/`--gid-map`. Rootless (not root, or forced), no
//! chown is tried: the intended owner goes into `user.rootlesscontainers` as
//! umoci writes it (none for 0:0); device nodes become empty regular files
//! with the device's mode, owner xattr and mtime, its hardlinks links to
//! that file (as umoci does);
//! `security.*`/`trusted.*` xattrs the kernel refuses are skipped; symlinks
//! and fifos cannot carry a `user.*` xattr, so their owner is lost. Each of
//! these is listed in [`UnpackReport::not_applied`]. `ocix scan --rootless`
//! of such a tree gives back the manifest except for devices (empty files)
//! and symlink/fifo owners (0:0) and the skipped privileged xattrs.
//!
//! `update`: existing directories are kept, extra names removed, entries of
//! another type (or sharing an inode with an entry already kept) replaced,
//! symlinks and devices kept when target/numbers match, a regular file kept
//! when its size and sha256 match (it is read and hashed: correctness over
//! speed; mtime alone is not trusted), hardlinks kept when they are the
//! same inode as their first name. Metadata is then applied to everything,
//! which also repairs whatever a killed unpack left half done.
//!
//! xattrs in overlayfs's namespace (`trusted.overlay.*`, `user.overlay.*`,
//! see [`manifest::is_overlay_xattr`]) are written only with
//! [`UnpackOptions::allow_overlay_xattrs`]: otherwise a manifest holding one
//! is refused before the destination is opened, in every mode (as root they
//! would steer an overlay using the tree as a layer; rootless, `user.*` is
//! writable, and `userxattr` overlays read `user.overlay.*`).

mod cache;
mod content;
mod fresh;
mod idmap;
mod meta;
mod queue;

pub use idmap::{IdMap, map_id};

use crate::manifest::{self, Digest, Entry, File, Kind, KindCode, Manifest, Meta, Name, path_display};
use crate::store::{Store, StoreError};
use crate::sys::read::{self as rd, FileType, XattrSource};
use crate::sys::{Errno, SysError, write as wr};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How to unpack.
#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    /// Bring an existing tree to the manifest instead of requiring an empty
    /// destination.
    pub update: bool,
    /// Unpack without privilege even when running as root (implied when
    /// the effective uid is not 0).
    pub rootless: bool,
    /// uid ranges, container -> host (root mode only); empty: identity.
    pub uid_map: Vec<IdMap>,
    /// gid ranges, container -> host (root mode only); empty: identity.
    pub gid_map: Vec<IdMap>,
    /// Writer threads; 0 means one per CPU.
    pub threads: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Make regular files hardlinks of their blobs (an ostree-style
    /// checkout, no data copied) where that keeps the tree exact: a blob no
    /// other name links yet is verified, takes the owner, mode, mtime and
    /// xattrs of the first file with its content, and becomes that file;
    /// every other file is copied (two files of the manifest never share an
    /// inode), as is a file whose mode denies its owner reading (the blob
    /// must stay readable for the copies). Editing a linked file in place edits the store (readers then
    /// report the blob as corrupt).
    pub link: bool,
    /// The caller has just written and verified every blob of the store
    /// (`unpack --image` with its own temporary store): linked blobs are not
    /// hashed again, only their sizes checked.
    pub store_verified: bool,
    /// Set as soon as the unpack fails, before its writers have finished
    /// (a writer may be waiting for a blob): a pull filling the store
    /// (`unpack docker://`) stops on it instead of fetching the rest.
    pub failed: Option<Arc<AtomicBool>>,
    /// Write xattrs in overlayfs's namespace
    /// ([`manifest::is_overlay_xattr`]) as the manifest gives them. Off by
    /// default: a manifest holding one is refused before anything is
    /// written ([`UnpackError::OverlayXattr`]).
    pub allow_overlay_xattrs: bool,
}

/// A kind of thing the unpack could not apply exactly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum NotAppliedKind {
    /// A socket: never created.
    Socket,
    /// A device node written as an empty regular file (rootless).
    Device,
    /// An extended attribute not set or not removed.
    Xattr,
    /// An owner that could not be recorded (rootless symlink or fifo).
    Owner,
    /// A symlink's mode other than 0777: Linux gives every symlink 0777.
    Mode,
    /// A modification time the filesystem cannot hold (it stored another).
    Mtime,
}

impl NotAppliedKind {
    /// Short description for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            NotAppliedKind::Socket => "sockets skipped",
            NotAppliedKind::Device => "devices written as empty files",
            NotAppliedKind::Xattr => "xattrs not applied",
            NotAppliedKind::Owner => "owners not recorded",
            NotAppliedKind::Mode => "symlink modes not applied",
            NotAppliedKind::Mtime => "mtimes not stored exactly",
        }
    }
}

/// One thing not applied, with the entry's path (relative, raw bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NotApplied {
    /// What.
    pub kind: NotAppliedKind,
    /// The entry, relative to the destination.
    pub path: Vec<u8>,
    /// Details (which xattr, which owner).
    pub detail: String,
}

/// What an unpack did.
#[derive(Clone, Debug, Default)]
pub struct UnpackReport {
    /// Whether it ran rootless.
    pub rootless: bool,
    /// Directories created or kept (the root included).
    pub dirs: u64,
    /// Regular files written.
    pub files_written: u64,
    /// Regular files kept as they were (`update`).
    pub files_kept: u64,
    /// Regular files made hardlinks of their blobs (`--link`).
    pub files_linked: u64,
    /// Data bytes written (holes and kept files not counted).
    pub bytes_written: u64,
    /// Symlinks, devices, fifos created or kept.
    pub others: u64,
    /// Hardlinks made or kept.
    pub hardlinks: u64,
    /// Entries removed because the manifest lacks them or their type
    /// differs (`update`; a removed directory counts once).
    pub removed: u64,
    /// Everything that could not be applied exactly, in no fixed order.
    pub not_applied: Vec<NotApplied>,
}

impl UnpackReport {
    /// One line per kind of thing not applied: count and the first few
    /// paths. Empty when everything was applied.
    pub fn summary(&self, first: usize) -> Vec<String> {
        let mut by: BTreeMap<NotAppliedKind, Vec<&NotApplied>> = BTreeMap::new();
        for n in &self.not_applied {
            by.entry(n.kind).or_default().push(n);
        }
        by.into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.path.cmp(&b.path));
                let shown: Vec<String> =
                    v.iter().take(first).map(|n| format!("{} ({})", path_display(&n.path), n.detail)).collect();
                let more = if v.len() > first { format!(", and {} more", v.len() - first) } else { String::new() };
                format!("{} {}: {}{}", v.len(), k.describe(), shown.join(", "), more)
            })
            .collect()
    }
}

/// Why an unpack failed. Paths are shown as DEST followed by the entry's
/// path.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A filesystem call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The manifest breaks the format.
    #[error("invalid manifest: {0}")]
    Manifest(#[from] manifest::DecodeError),
    /// The destination is a symlink.
    #[error("{0}: destination is a symlink (refusing to follow it)")]
    DestSymlink(String),
    /// The destination exists and is not a directory.
    #[error("{0}: destination exists and is not a directory")]
    DestNotDir(String),
    /// The destination is not empty and `update` was not asked for.
    #[error("{0}: destination is not empty (use --update to bring an existing tree to the manifest)")]
    DestNotEmpty(String),
    /// A file's content could not be produced from the store.
    #[error("{path}: content {digest}: {source}")]
    Content {
        /// The file being written.
        path: String,
        /// Its digest in the manifest.
        digest: Digest,
        /// What is wrong with the blob.
        source: Box<StoreError>,
    },
    /// A file's zero runs in the manifest are not zeros in its (intact)
    /// blob: the manifest is at fault, not the store.
    #[error(
        "{path}: the manifest's zero runs disagree with blob {blob}: the blob is intact (digest {digest}) but holds non-zero bytes inside runs the manifest declares zero"
    )]
    ZeroRuns {
        /// The file being written.
        path: String,
        /// Its digest in the manifest, which the blob has.
        digest: Digest,
        /// The blob's path.
        blob: String,
    },
    /// An owner has no mapping.
    #[error("{path}: {what} {id} is outside every --{what}-map range")]
    Unmapped {
        /// The entry.
        path: String,
        /// `uid` or `gid`.
        what: &'static str,
        /// The manifest's id.
        id: u32,
    },
    /// Creating a character or block device was refused (`mknodat` gave
    /// EPERM): root without CAP_MKNOD, as in most containers, or in a user
    /// namespace. Says so, and that `--rootless` writes devices as empty
    /// files instead.
    #[error(
        "{0}: creating device nodes needs CAP_MKNOD (in the initial user namespace); \
         unpack with --rootless to write devices as empty files instead"
    )]
    NoMknod(SysError),
    /// A name in the destination was taken by something unexpected.
    #[error("{0}: could not find a free temporary name")]
    NoTempName(String),
    /// The manifest holds an xattr in overlayfs's namespace and
    /// [`UnpackOptions::allow_overlay_xattrs`] is off. Found before
    /// anything is written: the destination is untouched.
    #[error(
        "entry {path}: xattr {name} is overlayfs's own, and an overlay using the tree as a layer would obey it{}; \
         nothing written: overlay xattrs are written only when explicitly allowed",
        match .others { 0 => String::new(), 1 => " (1 more such xattr in the manifest)".into(), n => format!(" ({n} more such xattrs in the manifest)") }
    )]
    OverlayXattr {
        /// The first entry holding one, in manifest order.
        path: String,
        /// Its xattr's name.
        name: String,
        /// How many more the manifest holds.
        others: u64,
    },
    /// An id map sends an owner to 4294967295, which chown would take as
    /// "leave unchanged".
    #[error(
        "{path}: {what} {id} maps to 4294967295, which is -1, the \"no change\" value of chown, \
         not an id (check the --{what}-map ranges)"
    )]
    NoChangeId {
        /// The entry.
        path: String,
        /// `uid` or `gid`.
        what: &'static str,
        /// The manifest's id.
        id: u32,
    },
}

/// Shared state of one unpack.
pub(crate) struct Ctx<'a> {
    store: &'a Store,
    dest: String,
    rootless: bool,
    update: bool,
    opts: &'a UnpackOptions,
    not_applied: Mutex<Vec<NotApplied>>,
    abort: AtomicBool,
    first_error: Mutex<Option<UnpackError>>,
    progress: Option<indicatif::ProgressBar>,
    /// A fresh destination (no `update`): what new entries are like.
    fresh: Option<fresh::Fresh>,
    /// Small blobs read lately (fresh destination).
    cache: cache::BlobCache,
    tmp_seq: AtomicU64,
    files_written: AtomicU64,
    files_kept: AtomicU64,
    bytes_written: AtomicU64,
    files_linked: AtomicU64,
}

impl Ctx<'_> {
    fn shown(&self, rel: &[u8]) -> String {
        if rel.is_empty() { self.dest.clone() } else { format!("{}{}", self.dest, path_display(rel)) }
    }

    fn not_applied(&self, kind: NotAppliedKind, rel: &[u8], detail: String) {
        self.not_applied.lock().unwrap_or_else(|p| p.into_inner()).push(NotApplied {
            kind,
            path: rel.to_vec(),
            detail,
        });
    }

    fn host_ids(&self, rel: &[u8], m: &Meta) -> Result<(u32, u32), UnpackError> {
        // the path is formatted only for an error: this runs for every entry
        let uid = map_id(&self.opts.uid_map, m.uid).ok_or_else(|| UnpackError::Unmapped {
            path: self.shown(rel),
            what: "uid",
            id: m.uid,
        })?;
        let gid = map_id(&self.opts.gid_map, m.gid).ok_or_else(|| UnpackError::Unmapped {
            path: self.shown(rel),
            what: "gid",
            id: m.gid,
        })?;
        for (what, id, host) in [("uid", m.uid, uid), ("gid", m.gid, gid)] {
            if host == manifest::NO_CHANGE_ID {
                return Err(UnpackError::NoChangeId { path: self.shown(rel), what, id });
            }
        }
        Ok((uid, gid))
    }

    fn fail(&self, e: UnpackError) {
        self.abort.store(true, Ordering::SeqCst);
        if let Some(f) = &self.opts.failed {
            f.store(true, Ordering::SeqCst);
        }
        let mut g = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// A regular file for the writer threads.
struct Job<'m> {
    dir: Arc<OwnedFd>,
    name: &'m [u8],
    rel: Vec<u8>,
    meta: &'m Meta,
    file: &'m File,
    /// Names in this directory the temporary name must avoid.
    siblings: &'m BTreeMap<Name, Entry>,
    /// `update`: an existing regular file to check before rewriting.
    check: bool,
    /// `--link`: the first file with its content in manifest order, the one
    /// that may become its blob.
    link_first: bool,
}

/// Unpacks `m` into `dest`, reading file contents from `store`. `dest` must
/// be absent (it is created, with missing parents) or an empty directory,
/// unless `opts.update`. Stops at the first error, leaving a partial tree
/// that a rerun with `update` completes.
pub fn unpack(m: &Manifest, store: &Store, dest: &Path, opts: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    // the same checks the decoder makes (a model built in code may break them)
    manifest::encode(m)?;
    check_names(&m.root, &mut Vec::new())?;
    if !opts.allow_overlay_xattrs {
        check_overlay_xattrs(m)?;
    }
    let rootless = opts.rootless || !rustix::process::geteuid().is_root();
    raise_fd_limit();
    let dest = strip_trailing_slashes(dest);
    let (root, created) = open_dest(&dest, opts.update)?;
    if rootless {
        // children are added to the destination itself before its final
        // mode is applied: its owner (us) needs rwx meanwhile
        let shown = || dest.display().to_string();
        let st = rd::stat_fd(root.as_fd(), &shown)?;
        if st.st_mode & 0o700 != 0o700 && st.st_uid == rustix::process::geteuid().as_raw() {
            wr::fchmod(root.as_fd(), 0o700, &shown)?;
        }
    }
    let fresh = if opts.update {
        None
    } else {
        Some(fresh::Fresh::probe(root.as_fd(), created, &|| dest.display().to_string())?)
    };
    let root = Arc::new(root);
    let total: u64 = m.walk().filter_map(|(_, e)| if let Kind::File(f) = &e.kind { Some(f.size) } else { None }).sum();
    let progress = opts.progress.then(|| {
        let pb = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "unpacking {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            pb.set_style(style);
        }
        pb
    });
    let ctx = Ctx {
        store,
        dest: dest.display().to_string(),
        rootless,
        update: opts.update,
        opts,
        not_applied: Mutex::new(Vec::new()),
        abort: AtomicBool::new(false),
        first_error: Mutex::new(None),
        progress,
        fresh,
        cache: cache::BlobCache::default(),
        tmp_seq: AtomicU64::new(0),
        files_linked: AtomicU64::new(0),
        files_written: AtomicU64::new(0),
        files_kept: AtomicU64::new(0),
        bytes_written: AtomicU64::new(0),
    };
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        opts.threads
    };
    let mut report = UnpackReport { rootless, ..UnpackReport::default() };
    let Kind::Dir(top) = &m.root.kind else { unreachable!("validated: the root is a directory") };

    // Phases 1 and 2: the walk creates, the writers write.
    let mut links = Vec::new();
    let jobs = queue::Queue::new(2 * threads + 2);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (ctx, jobs) = (&ctx, &jobs);
            s.spawn(move || {
                // a writer that panics must not leave the walk waiting
                let _close = queue::CloseOnDrop(jobs);
                let mut buf = Vec::new();
                while let Some(batch) = jobs.pop() {
                    for job in batch {
                        if ctx.aborted() {
                            continue;
                        }
                        if let Err(e) = write_file(ctx, &job, &mut buf) {
                            ctx.fail(e);
                        }
                    }
                }
            });
        }
        let walker = std::thread::Builder::new().stack_size(256 << 20).spawn_scoped(s, || {
            let _close = queue::CloseOnDrop(&jobs);
            let mut w = Walker {
                ctx: &ctx,
                manifest: m,
                jobs: &jobs,
                batch: Vec::new(),
                batch_bytes: 0,
                links: Vec::new(),
                claimed: HashSet::new(),
                link_seen: HashSet::new(),
                dirs: 1,
                others: 0,
                removed: 0,
            };
            if let Err(e) = w.walk(&root, &mut Vec::new(), top).and_then(|()| w.flush()) {
                ctx.fail(e);
            }
            (w.links, w.dirs, w.others, w.removed)
        });
        match walker {
            Ok(h) => match h.join() {
                Ok((l, d, o, r)) => {
                    links = l;
                    report.dirs = d;
                    report.others = o;
                    report.removed = r;
                }
                Err(_) => ctx.fail(UnpackError::Sys(SysError::new("thread", ctx.dest.clone(), Errno::IO))),
            },
            Err(_) => {
                jobs.close();
                ctx.fail(UnpackError::Sys(SysError::new("clone", ctx.dest.clone(), Errno::AGAIN)));
            }
        }
    });
    if let Some(pb) = &ctx.progress {
        pb.finish_and_clear();
    }
    if let Some(e) = ctx.first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    // Phase 3: hardlinks.
    for (rel, target, ty) in &links {
        if make_link(&ctx, &root, rel, target, *ty)? {
            report.removed += 1;
        }
        report.hardlinks += 1;
    }
    // Phase 4: directory metadata, deepest first; the root last.
    let big_stack = std::thread::Builder::new().stack_size(256 << 20);
    let res = std::thread::scope(|s| {
        let h = big_stack.spawn_scoped(s, || -> Result<(), UnpackError> {
            finish_dirs(&ctx, root.as_fd(), &mut Vec::new(), top)?;
            meta::apply(&ctx, XattrSource::Fd(root.as_fd()), KindCode::Dir, &m.root.meta, b"")
        });
        match h {
            Ok(h) => {
                h.join().unwrap_or_else(|_| Err(UnpackError::Sys(SysError::new("thread", ctx.dest.clone(), Errno::IO))))
            }
            Err(_) => Err(UnpackError::Sys(SysError::new("clone", ctx.dest.clone(), Errno::AGAIN))),
        }
    });
    res?;
    report.files_written = ctx.files_written.load(Ordering::Relaxed);
    report.files_kept = ctx.files_kept.load(Ordering::Relaxed);
    report.files_linked = ctx.files_linked.load(Ordering::Relaxed);
    report.bytes_written = ctx.bytes_written.load(Ordering::Relaxed);
    report.not_applied = ctx.not_applied.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(report)
}

/// Every name is one valid component: the kernel must never see a name
/// with `/` (a model built in code is checked here again, whatever else
/// validated it).
fn check_names(e: &Entry, rel: &mut Vec<u8>) -> Result<(), UnpackError> {
    let Kind::Dir(children) = &e.kind else {
        return Ok(());
    };
    for (name, c) in children {
        let base = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        if let Err(what) = manifest::check_name(name) {
            return Err(manifest::DecodeError {
                offset: None,
                path: Some(path_display(rel)),
                what: format!("invalid name: {what}"),
            }
            .into());
        }
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || check_names(c, rel))?;
        rel.truncate(base);
    }
    Ok(())
}

/// Refuses a manifest holding an xattr in overlayfs's namespace; names the
/// first, in manifest order, and counts the others.
fn check_overlay_xattrs(m: &Manifest) -> Result<(), UnpackError> {
    let mut first = None;
    let mut others = 0u64;
    for (rel, e) in m.walk() {
        for name in e.meta.xattrs.keys().filter(|k| manifest::is_overlay_xattr(k)) {
            if first.is_none() {
                first = Some((path_display(&rel), manifest::xattr_display(name)));
            } else {
                others += 1;
            }
        }
    }
    match first {
        Some((path, name)) => Err(UnpackError::OverlayXattr { path, name, others }),
        None => Ok(()),
    }
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (l.current, l.maximum) {
        if cur < max {
            let _ = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(max), maximum: Some(max) });
        }
    }
}

fn strip_trailing_slashes(p: &Path) -> PathBuf {
    let mut b = p.as_os_str().as_bytes();
    while b.len() > 1 && b.ends_with(b"/") {
        b = &b[..b.len() - 1];
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

/// Opens (creating if absent) the destination directory, refusing a symlink
/// and, without `update`, a non-empty directory. True: it was created here.
fn open_dest(dest: &Path, update: bool) -> Result<(OwnedFd, bool), UnpackError> {
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

struct Walker<'c, 'a, 'm> {
    ctx: &'c Ctx<'a>,
    manifest: &'m Manifest,
    /// The writers' queue, and the batch being filled for it.
    jobs: &'c queue::Queue<Vec<Job<'m>>>,
    batch: Vec<Job<'m>>,
    batch_bytes: u64,
    /// Hardlinks to make: path, first name, the first name's type on disk.
    links: Vec<(Vec<u8>, Vec<u8>, FileType)>,
    /// (dev, ino) of existing non-directories kept (`update`).
    claimed: HashSet<(u64, u64)>,
    /// `--link`: contents already given to a file, in manifest order.
    link_seen: HashSet<crate::manifest::Digest>,
    dirs: u64,
    others: u64,
    removed: u64,
}

/// Files handed to the writers at once, and the data that ends a batch
/// sooner (large files are spread over the writers).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

impl<'m> Walker<'_, '_, 'm> {
    /// Queues a file for the writers, in batches.
    fn send(&mut self, job: Job<'m>) -> Result<(), UnpackError> {
        self.batch_bytes += job.file.size;
        self.batch.push(job);
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the batch being filled to the writers.
    fn flush(&mut self) -> Result<(), UnpackError> {
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

    fn walk(
        &mut self,
        dir: &Arc<OwnedFd>,
        rel: &mut Vec<u8>,
        children: &'m BTreeMap<Name, Entry>,
    ) -> Result<(), UnpackError> {
        let ctx = self.ctx;
        if ctx.update {
            let dshown = || ctx.shown(rel);
            for name in rd::read_dir_names(dir.as_fd(), &dshown)? {
                if !children.contains_key(&name) {
                    let crel = join(rel, &name);
                    remove_entry(ctx, dir.as_fd(), &name, &crel)?;
                    self.removed += 1;
                }
            }
        }
        for (name, e) in children {
            if ctx.aborted() {
                return Ok(());
            }
            let base = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            let r = self.entry(dir, name, e, rel, children);
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
        name: &'m [u8],
        e: &'m Entry,
        rel: &[u8],
        siblings: &'m BTreeMap<Name, Entry>,
    ) -> Result<(), UnpackError> {
        let ctx = self.ctx;
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
        match &e.kind {
            Kind::Dir(children) => {
                let keep = ex_type == Some(FileType::Directory);
                clear(self, keep)?;
                if !keep {
                    wr::mkdir_at(d, name, 0o700, &shown)?;
                } else if ctx.rootless && ex.as_ref().is_some_and(|s| s.st_mode & 0o700 != 0o700) {
                    // an existing directory (0555, 0311...) must be readable
                    // and writable by its owner while children are fixed;
                    // its mode is set again once they are
                    wr::chmod_at(d, name, 0o700, &shown)?;
                }
                let fd = rd::open_dir_at(d, name, &shown)?;
                self.dirs += 1;
                let fd = Arc::new(fd);
                let mut r = rel.to_vec();
                self.walk(&fd, &mut r, children)?;
            }
            Kind::File(f) => {
                let check = ex_type == Some(FileType::RegularFile) && {
                    let st = ex.as_ref().map(|s| (s.st_dev, s.st_ino));
                    st.is_some_and(|k| self.claimed.insert(k))
                };
                // a directory (or anything not a file) cannot be renamed over
                if ex.is_some() && ex_type != Some(FileType::RegularFile) {
                    clear(self, false)?;
                }
                let link_first = self.ctx.opts.link && f.digest.is_some_and(|d| self.link_seen.insert(d));
                let job = Job {
                    dir: dir.clone(),
                    name,
                    rel: rel.to_vec(),
                    meta: &e.meta,
                    file: f,
                    siblings,
                    check,
                    link_first,
                };
                self.send(job)?;
            }
            Kind::Symlink(target) => {
                let keep = ex_type == Some(FileType::Symlink)
                    && rd::read_link_at(d, name, &shown)? == *target
                    && ex.as_ref().is_some_and(|s| self.claim(s));
                clear(self, keep)?;
                if !keep {
                    wr::symlink_at(target, d, name, &shown)?;
                }
                meta::apply(ctx, XattrSource::At(d, name), KindCode::Symlink, &e.meta, rel)?;
                self.others += 1;
            }
            Kind::Char(dev) | Kind::Block(dev) => {
                let (ty, code) = if matches!(e.kind, Kind::Char(_)) {
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
                    meta::apply(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, &e.meta, rel)?;
                    ctx.not_applied(
                        NotAppliedKind::Device,
                        rel,
                        format!("{} {}:{}", code.name(), dev.major, dev.minor),
                    );
                } else {
                    let want = rustix::fs::makedev(dev.major, dev.minor);
                    let keep = ex_type == Some(ty)
                        && ex.as_ref().is_some_and(|s| s.st_rdev == want)
                        && ex.as_ref().is_some_and(|s| self.claim(s));
                    clear(self, keep)?;
                    if !keep {
                        wr::mknod_at(d, name, ty, 0o600, (dev.major, dev.minor), &shown)
                            .map_err(|e| if e.errno == Errno::PERM { UnpackError::NoMknod(e) } else { e.into() })?;
                    }
                    meta::apply(ctx, XattrSource::At(d, name), code, &e.meta, rel)?;
                }
                self.others += 1;
            }
            Kind::Fifo => {
                let keep = ex_type == Some(FileType::Fifo) && ex.as_ref().is_some_and(|s| self.claim(s));
                clear(self, keep)?;
                if !keep {
                    wr::mknod_at(d, name, FileType::Fifo, 0o600, (0, 0), &shown)?;
                }
                meta::apply(ctx, XattrSource::At(d, name), KindCode::Fifo, &e.meta, rel)?;
                self.others += 1;
            }
            Kind::Socket => {
                clear(self, ex_type == Some(FileType::Socket))?;
                ctx.not_applied(NotAppliedKind::Socket, rel, "not created".into());
            }
            Kind::Hardlink(target) => {
                let first = self.manifest.get(target).map(|t| &t.kind);
                if let Some(Kind::Socket) = first {
                    // its first name is not created either
                    clear(self, ex_type == Some(FileType::Socket))?;
                    let detail = format!("hardlink to {}, not created", path_display(target));
                    ctx.not_applied(NotAppliedKind::Socket, rel, detail);
                    return Ok(());
                }
                let Some(ty) = first.and_then(|k| disk_type(k, ctx.rootless)) else {
                    let what = format!("hardlink to {} names no file, symlink, device or fifo", path_display(target));
                    let e = manifest::DecodeError { offset: None, path: Some(path_display(rel)), what };
                    return Err(e.into());
                };
                if let (true, Some(k @ (Kind::Char(dev) | Kind::Block(dev)))) = (ctx.rootless, first) {
                    let (name, shown_target) = (k.code().name(), path_display(target));
                    let detail = format!("{name} {}:{}, hardlink to {shown_target}", dev.major, dev.minor);
                    ctx.not_applied(NotAppliedKind::Device, rel, detail);
                }
                // anything else here is compared by inode once links are made
                if ex_type == Some(FileType::Directory) {
                    clear(self, false)?;
                }
                self.links.push((rel.to_vec(), target.clone(), ty));
            }
        }
        Ok(())
    }
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
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
fn remove_entry(ctx: &Ctx<'_>, dir: BorrowedFd<'_>, name: &[u8], rel: &[u8]) -> Result<(), UnpackError> {
    let shown = || ctx.shown(rel);
    let st = rd::stat_at(dir, name, &shown)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        // iterative: an existing tree may be deeper than any stack
        let mut stack: Vec<(OwnedFd, Vec<u8>)> = Vec::new();
        if st.st_mode & 0o700 != 0o700 && st.st_uid == rustix::process::geteuid().as_raw() {
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
                            if cst.st_mode & 0o700 != 0o700 && cst.st_uid == rustix::process::geteuid().as_raw() {
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

/// One regular file: in `update`, keep it if its content matches; otherwise
/// write it under a temporary name, verify, apply metadata, rename.
fn write_file(ctx: &Ctx<'_>, job: &Job<'_>, buf: &mut Vec<u8>) -> Result<(), UnpackError> {
    let d = job.dir.as_fd();
    let shown = || ctx.shown(&job.rel);
    if job.check {
        match rd::open_file_at(d, job.name, &shown) {
            Ok(fd) => {
                let st = rd::stat_fd(fd.as_fd(), &shown)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && content::same_content(fd.as_fd(), job.file, &shown, buf)?
                {
                    meta::apply(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, job.meta, &job.rel)?;
                    ctx.files_kept.fetch_add(1, Ordering::Relaxed);
                    if let Some(pb) = &ctx.progress {
                        pb.inc(job.file.size);
                    }
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
        let n = content::fill(ctx, &job.rel, job.file, fd.as_fd(), buf)?;
        meta::apply(ctx, XattrSource::Fd(fd.as_fd()), KindCode::File, job.meta, &job.rel)?;
        wr::rename_at(d, &tmp, job.name, !ctx.update, &shown)?;
        Ok(n)
    })();
    match res {
        Ok(n) => {
            ctx.files_written.fetch_add(1, Ordering::Relaxed);
            ctx.bytes_written.fetch_add(n, Ordering::Relaxed);
            if let Some(pb) = &ctx.progress {
                pb.inc(job.file.size);
            }
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
    let Some(digest) = job.file.digest else { return Ok(false) };
    let d = job.dir.as_fd();
    let shown = || ctx.shown(&job.rel);
    // one name per blob, the first in manifest order: a second name would
    // make two files of the manifest one inode, which the tree must not show
    if !job.link_first {
        return Ok(false);
    }
    // the blob takes this file's mode: one its owner cannot read would stop
    // the other files of this content being copied from it (rootless)
    if job.meta.mode & 0o400 == 0 {
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
        if !ctx.opts.store_verified && !content::same_content(blob.as_fd(), job.file, &shown, buf)? {
            return Ok(false);
        }
        meta::apply(ctx, XattrSource::Fd(blob.as_fd()), KindCode::File, job.meta, &job.rel)?;
    }
    let tmp = loop {
        let n = ctx.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".ocix-tmp.{}.{n}", std::process::id()).into_bytes();
        if !job.siblings.contains_key(&tmp) {
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
    if let Some(pb) = &ctx.progress {
        pb.inc(job.file.size);
    }
    Ok(true)
}

fn create_temp(ctx: &Ctx<'_>, job: &Job<'_>) -> Result<(Vec<u8>, OwnedFd), UnpackError> {
    let pid = std::process::id();
    for _ in 0..1000 {
        let n = ctx.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".ocix-tmp.{pid}.{n}").into_bytes();
        if job.siblings.contains_key(&tmp) {
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

fn parent_of(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}

/// Opens the directory at `rel` (relative, `/`-joined) one component at a
/// time from the root, never following a symlink.
fn open_dir_rel(ctx: &Ctx<'_>, root: &OwnedFd, rel: &[u8]) -> Result<OwnedFd, UnpackError> {
    let mut cur = rustix::io::dup(root).map_err(|e| SysError::new("dup", ctx.dest.clone(), e))?;
    let mut sofar = Vec::new();
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        sofar = join(&sofar, comp);
        cur = rd::open_dir_at(cur.as_fd(), comp, &|| ctx.shown(&sofar))?;
    }
    Ok(cur)
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
fn disk_type(kind: &Kind, rootless: bool) -> Option<FileType> {
    Some(match kind {
        Kind::File(_) => FileType::RegularFile,
        Kind::Symlink(_) => FileType::Symlink,
        Kind::Char(_) | Kind::Block(_) if rootless => FileType::RegularFile,
        Kind::Char(_) => FileType::CharacterDevice,
        Kind::Block(_) => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
        Kind::Dir(_) | Kind::Hardlink(_) | Kind::Socket => return None,
    })
}

/// Makes the hardlink at `rel` to the first name `target`, which the walk
/// made as an entry of type `ty` (anything else there now is refused); in
/// `update`, an existing entry that is already that inode is kept, any other
/// is removed first (then the result is true).
fn make_link(ctx: &Ctx<'_>, root: &OwnedFd, rel: &[u8], target: &[u8], ty: FileType) -> Result<bool, UnpackError> {
    let (tdir, tname) = split_last(target);
    let (ldir, lname) = split_last(rel);
    let tfd = open_dir_rel(ctx, root, tdir)?;
    let lfd = open_dir_rel(ctx, root, ldir)?;
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
    name: &[u8],
    rel: &mut Vec<u8>,
    e: &Entry,
    grand: &BTreeMap<Name, Entry>,
) -> Result<(), UnpackError> {
    let shown = ctx.shown(rel);
    let fd = rd::open_dir_at(dir, name, &|| shown.clone())?;
    finish_dirs(ctx, fd.as_fd(), rel, grand)?;
    let known = ctx.fresh.map(|f| f.dir()).unwrap_or_default();
    meta::apply_known(ctx, XattrSource::Fd(fd.as_fd()), KindCode::Dir, &e.meta, rel, known)
}

/// Applies directory metadata below `dir`, children before parents.
fn finish_dirs(
    ctx: &Ctx<'_>,
    dir: BorrowedFd<'_>,
    rel: &mut Vec<u8>,
    children: &BTreeMap<Name, Entry>,
) -> Result<(), UnpackError> {
    for (name, e) in children {
        let Kind::Dir(grand) = &e.kind else { continue };
        let base = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        let r = finish_dir(ctx, dir, name, rel, e, grand);
        rel.truncate(base);
        r?;
    }
    Ok(())
}
