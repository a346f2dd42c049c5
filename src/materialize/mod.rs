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
//!
//! Files: this one holds the options, the errors and the run's phases;
//! `dest` checks and opens the destination (also for callers with work to
//! do first, see [`check_dest`]); `walk` is phase 1 with `update`'s
//! reconciliation, and phases 3 and 4; `write` is phase 2's writers, with
//! `content` (blob to file), `fresh` (a fresh destination) and `meta`
//! (metadata); `report` is what the unpack did. A store still being filled
//! while the unpack reads it is the caller's: the unpack only tells it,
//! through [`Filler`], that it failed (see [`unpack_filled`]).

mod cache;
mod content;
mod dest;
mod fresh;
mod idmap;
mod meta;
mod report;
mod walk;
mod write;

pub use dest::check_dest;
pub use idmap::{IdMap, map_id};
pub use report::{NotApplied, NotAppliedKind, UnpackReport};

use dest::{open_dest, strip_trailing_slashes};
use walk::{LinkDirs, Walker, finish_dirs, make_link};
use write::write_file;

use crate::manifest::compact::FileRef;
use crate::manifest::{self, Compact, Digest, KindCode, Node, path_display};
use crate::progress::{Progress, Task, Work};
use crate::store::{Store, StoreError};
use crate::sys::read::{self as rd, XattrSource};
use crate::sys::{Errno, SysError, write as wr};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
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
    /// Where the bytes written are reported.
    pub progress: Progress,
    /// Make regular files hardlinks of their blobs (an ostree-style
    /// checkout, no data copied) where that keeps the tree exact: a blob no
    /// other name links yet is verified, takes the owner, mode, mtime and
    /// xattrs of the first file with its content, and becomes that file;
    /// every other file is copied (two files of the manifest never share an
    /// inode), as is a file whose mode denies its owner reading (the blob
    /// must stay readable for the copies). Editing a linked file in place edits the store (readers then
    /// report the blob as corrupt).
    pub link: bool,
    /// Write xattrs in overlayfs's namespace
    /// ([`manifest::is_overlay_xattr`]) as the manifest gives them. Off by
    /// default: a manifest holding one is refused before anything is
    /// written ([`UnpackError::OverlayXattr`]).
    pub allow_overlay_xattrs: bool,
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
    #[error("{0}: destination is not empty")]
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
    #[error("{path}: {what} {id} is outside every {what} map range")]
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
    /// namespace. A rootless unpack writes devices as empty files instead.
    #[error("{0}: creating device nodes needs CAP_MKNOD (in the initial user namespace)")]
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
         not an id"
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
    /// Told of the bytes written, until the writers are done.
    progress: Option<Box<dyn Task>>,
    /// Told when the unpack fails.
    filler: &'a dyn Filler,
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

    fn host_ids(&self, rel: &[u8], m: Node<'_>) -> Result<(u32, u32), UnpackError> {
        // the path is formatted only for an error: this runs for every entry
        let (m_uid, m_gid) = (m.uid(), m.gid());
        let uid = map_id(&self.opts.uid_map, m_uid).ok_or_else(|| UnpackError::Unmapped {
            path: self.shown(rel),
            what: "uid",
            id: m_uid,
        })?;
        let gid = map_id(&self.opts.gid_map, m_gid).ok_or_else(|| UnpackError::Unmapped {
            path: self.shown(rel),
            what: "gid",
            id: m_gid,
        })?;
        for (what, id, host) in [("uid", m_uid, uid), ("gid", m_gid, gid)] {
            if host == manifest::NO_CHANGE_ID {
                return Err(UnpackError::NoChangeId { path: self.shown(rel), what, id });
            }
        }
        Ok((uid, gid))
    }

    fn fail(&self, e: UnpackError) {
        self.abort.store(true, Ordering::SeqCst);
        self.filler.stop();
        let mut g = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    /// `n` more bytes of files written (or kept, or linked).
    fn advance(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.advance(n);
        }
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// What every temporary name starts with (`.ocix-tmp.<pid>.<n>`).
const TMP_PREFIX: &[u8] = b".ocix-tmp.";

/// A regular file for the writer threads.
struct Job<'m> {
    dir: Arc<OwnedFd>,
    name: &'m [u8],
    rel: Vec<u8>,
    /// The entry: its metadata.
    node: Node<'m>,
    file: FileRef<'m>,
    /// The directory, when one of its entries has a name like a temporary
    /// one (`.ocix-tmp.`...): the temporary name must avoid its children.
    /// `None` (nearly always): no name needs checking.
    tmp_siblings: Option<Node<'m>>,
    /// `update`: an existing regular file to check before rewriting.
    check: bool,
    /// `--link`: the first file with its content in manifest order, the one
    /// that may become its blob.
    link_first: bool,
}

/// Whoever fills the store while the unpack reads it (a pull; see
/// [`Store::with_arrivals`]). A writer may be waiting for a blob when the
/// unpack fails: the filler is told at once, so that it stops fetching
/// instead of bringing the rest first.
pub trait Filler: Sync {
    /// The unpack has failed: no more blobs are needed.
    fn stop(&self);
}

/// A flag set when the unpack fails.
impl Filler for AtomicBool {
    fn stop(&self) {
        self.store(true, Ordering::SeqCst);
    }
}

/// A store nobody is filling.
struct Filled;

impl Filler for Filled {
    fn stop(&self) {}
}

/// Unpacks `m` into `dest`, reading file contents from `store`. `dest` must
/// be absent (it is created, with missing parents) or an empty directory,
/// unless `opts.update`. Stops at the first error, leaving a partial tree
/// that a rerun with `update` completes.
pub fn unpack(m: &Compact, store: &Store, dest: &Path, opts: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    unpack_filled(m, store, dest, opts, &Filled)
}

/// [`unpack`] from a store `filler` is still filling: `filler` hears as
/// soon as the unpack fails.
pub fn unpack_filled(
    m: &Compact,
    store: &Store,
    dest: &Path,
    opts: &UnpackOptions,
    filler: &dyn Filler,
) -> Result<UnpackReport, UnpackError> {
    // the same checks the decoder makes (a model built in code may break
    // them): every name one valid component, hardlinks to earlier entries
    m.validate()?;
    if !opts.allow_overlay_xattrs {
        check_overlay_xattrs(m)?;
    }
    let rootless = opts.rootless || crate::sys::euid() != 0;
    crate::sys::raise_fd_limit();
    let dest = strip_trailing_slashes(dest);
    let (root, created) = open_dest(&dest, opts.update)?;
    if rootless {
        // children are added to the destination itself before its final
        // mode is applied: its owner (us) needs rwx meanwhile
        let shown = || dest.display().to_string();
        let st = rd::stat_fd(root.as_fd(), &shown)?;
        if st.st_mode & 0o700 != 0o700 && st.st_uid == crate::sys::euid() {
            wr::fchmod(root.as_fd(), 0o700, &shown)?;
        }
    }
    let fresh = if opts.update {
        None
    } else {
        Some(fresh::Fresh::probe(root.as_fd(), created, &|| dest.display().to_string())?)
    };
    let root = Arc::new(root);
    // one pass over the entries: the bytes to write (for progress), the
    // directories (for the descriptor table) and the small contents (for
    // the cache, in a fresh destination read from a store of blob files)
    let caching = !opts.update && !store.spills();
    let (mut total, mut dirs, mut small) = (0u64, 0usize, Vec::new());
    for n in m.nodes() {
        match n.file() {
            Some(f) => {
                total += f.size;
                if let Some(d) = f.digest.filter(|_| caching && f.size as usize <= cache::MAX_BLOB) {
                    small.push(d);
                }
            }
            None => dirs += usize::from(n.code() == KindCode::Dir),
        }
    }
    let progress = Some(opts.progress.start(Work::Unpack, Some(total)));
    let mut ctx = Ctx {
        store,
        dest: dest.display().to_string(),
        rootless,
        update: opts.update,
        opts,
        not_applied: Mutex::new(Vec::new()),
        abort: AtomicBool::new(false),
        first_error: Mutex::new(None),
        progress,
        filler,
        fresh,
        cache: cache::BlobCache::for_digests(small.into_iter()),
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
    let top = m.root();

    // Phases 1 and 2: the walk creates, the writers write.
    let mut links = Vec::new();
    let mut dir_fds = walk::DirFds::new();
    // directories kept open from the walk to phase 4 (saves opening and
    // closing each again), within a share of the descriptor limit
    let fd_budget = (crate::sys::fd_limit() / 4).saturating_sub(256) as usize;
    let jobs = crate::queue::Queue::new(2 * threads + 2);
    // the directories kept open, and a margin for the writers' files and
    // the hardlinks' directories
    crate::sys::reserve_fds(root.as_fd(), dirs.min(fd_budget) as u64 + 64 + 4 * threads as u64);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (ctx, jobs) = (&ctx, &jobs);
            s.spawn(move || {
                // a writer that panics must not leave the walk waiting
                let _close = crate::queue::CloseOnDrop(jobs);
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
            let _close = crate::queue::CloseOnDrop(&jobs);
            let mut w = Walker {
                ctx: &ctx,
                first_names: hardlink_targets(m),
                jobs: &jobs,
                batch: Vec::new(),
                batch_bytes: 0,
                links: Vec::new(),
                claimed: HashSet::new(),
                link_seen: HashSet::new(),
                dir_fds: HashMap::new(),
                fd_budget,
                dirs: 1,
                others: 0,
                removed: 0,
            };
            if let Err(e) = w.walk(&root, &mut Vec::new(), top).and_then(|()| w.flush()) {
                ctx.fail(e);
            }
            (w.links, w.dirs, w.others, w.removed, w.dir_fds)
        });
        match walker {
            Ok(h) => match h.join() {
                Ok((l, d, o, r, f)) => {
                    links = l;
                    dir_fds = f;
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
    ctx.progress = None;
    if let Some(e) = ctx.first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    // Phase 3: hardlinks.
    let mut link_dirs = LinkDirs::default();
    for link in &links {
        if make_link(&ctx, &root, &mut link_dirs, &dir_fds, link)? {
            report.removed += 1;
        }
        report.hardlinks += 1;
    }
    drop(link_dirs);
    // Phase 4: directory metadata, deepest first; the root last.
    let big_stack = std::thread::Builder::new().stack_size(256 << 20);
    let res = std::thread::scope(|s| {
        let h = big_stack.spawn_scoped(s, || -> Result<(), UnpackError> {
            finish_dirs(&ctx, root.as_fd(), &mut Vec::new(), top, &dir_fds)?;
            meta::apply(&ctx, XattrSource::Fd(root.as_fd()), KindCode::Dir, top, b"")
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

/// The paths hardlinks name (their first names), each with no entry yet:
/// the walk records the entry when it meets it.
fn hardlink_targets(m: &Compact) -> HashMap<&[u8], Option<(Node<'_>, usize)>> {
    m.nodes().filter(|n| n.code() == KindCode::Hardlink).filter_map(|n| n.target()).map(|t| (t, None)).collect()
}

/// Refuses a manifest holding an xattr in overlayfs's namespace; names the
/// first, in manifest order, and counts the others.
fn check_overlay_xattrs(m: &Compact) -> Result<(), UnpackError> {
    let mut first = None;
    let mut others = 0u64;
    let mut cur = m.cursor();
    while let Some((rel, n)) = cur.next_entry() {
        for (name, _) in n.xattrs().iter().filter(|(k, _)| manifest::is_overlay_xattr(k)) {
            if first.is_none() {
                first = Some((path_display(rel), manifest::xattr_display(name)));
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
