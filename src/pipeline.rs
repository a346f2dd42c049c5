//! Whole runs from a source into a sink, with the store between them:
//!
//! ```text
//! sources: remote (pull), oci (import)  ->  manifest + store  ->  sinks: materialize, bundle
//!          \_______________________________ pipeline ________________________________/
//! ```
//!
//! Downstream of both ends: it uses the sources and the sinks and nothing
//! uses it but the command line. What it adds is what a single stage cannot
//! know: a store of its own (temporary, beside the destination, so its
//! blobs can become the files without a copy, and removed afterwards), the
//! threads of a pull that feeds an unpack still running, and the cleanup
//! after a failure (a destination this run created is removed, one that
//! existed is said to be partly unpacked).
//!
//! - [`pull_unpack`]: `docker://` ocix manifest -> rootfs; each file is
//!   written as soon as its blob has arrived and been verified. A tag that
//!   names an ordinary image is imported instead, then unpacked.
//! - [`image_unpack`]: an image (OCI layout, or a registry) imported into a
//!   store, then its tree unpacked.
//! - [`image_bundle`]: the same into `BUNDLE/rootfs`, with `BUNDLE/ocix.cbor`
//!   and the runtime `BUNDLE/config.json`, as `umoci unpack` makes.
//! - [`pull_mount`]: `docker://` ocix manifest (or ordinary image) pulled
//!   into a store, then mounted read-only (see [`crate::mount`]).
//! - [`image_mount_bundle`]: an image imported into a store, then a bundle
//!   whose rootfs is a writable mount of its tree.
//! - [`lazy_mount`]: a `docker://` ocix artifact mounted before any file
//!   blob is fetched; each is fetched into the store when first read.
//!
//! Every run first checks its destination as the unpack will (see
//! [`check_dest`]): a destination the unpack would refuse costs no
//! network traffic and no import.

use crate::bundle::{self, BundleError};
use crate::export::repack::{IMAGE_RECORD, ImageRecord};
use crate::manifest::compact::WriteError;
use crate::manifest::{Compact, DecodeError};
use crate::materialize::{self, IdMap, UnpackError, UnpackOptions, UnpackReport, check_dest};
use crate::mount::{self, MountError, MountOptions, MountReport};
use crate::oci::{self, ImportError, ImportOptions, Imported};
use crate::progress::Progress;
use crate::remote::{self, PullOptions, PullReport, Reference, Remote, RemoteError, RemoteOptions};
use crate::store::{Arrivals, Filled, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Why a run failed. Each names the source or the destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The destination is one the unpack refuses; nothing was fetched,
    /// imported or written.
    #[error(transparent)]
    Dest(UnpackError),
    /// The store (given or temporary) could not be created or opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A directory or file of the run could not be made.
    #[error("{}: {what}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// The source location does not parse.
    #[error(transparent)]
    Location(RemoteError),
    /// The pull failed.
    #[error("pulling {src}: {error}")]
    Pull {
        /// The source, as given.
        src: String,
        /// Why.
        error: RemoteError,
    },
    /// The pull ended without handing over its manifest.
    #[error("pulling {src}: {why}")]
    PullLost {
        /// The source, as given.
        src: String,
        /// What happened to it.
        why: &'static str,
    },
    /// The image could not be imported.
    #[error("importing {src}: {error}")]
    Import {
        /// The image, as given.
        src: String,
        /// Why.
        error: ImportError,
    },
    /// The unpack failed.
    #[error("unpacking into {}: {error}", dest.display())]
    Unpack {
        /// The destination.
        dest: PathBuf,
        /// Why.
        error: UnpackError,
    },
    /// The manifest could not be encoded (a model that breaks the format).
    #[error("invalid manifest: {0}")]
    Manifest(DecodeError),
    /// The runtime bundle's config could not be made.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The tree could not be mounted.
    #[error("mounting {src} at {}: {error}", dest.display())]
    Mount {
        /// The source, as given.
        src: String,
        /// The mount point.
        dest: PathBuf,
        /// Why.
        error: Box<MountError>,
    },
    /// A run that failed after mounting could not unmount again.
    #[error("{}: left mounted: {error}", rootfs.display())]
    LeftMounted {
        /// The mount point.
        rootfs: PathBuf,
        /// Why the unmount failed.
        error: Box<MountError>,
    },
    /// The run failed after writing into a destination that existed before
    /// it: what is there is neither the old tree nor the new one. An
    /// unpack with `update` completes it.
    #[error("{}: partly unpacked: {error}", dest.display())]
    Partly {
        /// The destination.
        dest: PathBuf,
        /// Why the run failed.
        error: Box<RunError>,
    },
}

/// How [`pull_unpack`] runs.
#[derive(Clone, Debug, Default)]
pub struct PullUnpackOptions {
    /// The pull. Its `cancel` is replaced by the run's own: an unpack that
    /// fails stops the pull.
    pub pull: PullOptions,
    /// The unpack. Its progress is not reported (the pull's is).
    pub unpack: UnpackOptions,
    /// The store to keep the blobs in (created if absent; a rerun fetches
    /// only what it lacks). `None`: a temporary store beside the
    /// destination, whose blobs become the files themselves (no second
    /// copy), removed afterwards.
    pub store: Option<PathBuf>,
    /// For a source that names an ordinary image rather than an ocix
    /// manifest: how its layers are imported (`tag` is ignored).
    pub import: ImportOptions,
}

/// What brought the tree.
#[derive(Debug)]
#[non_exhaustive]
pub enum Brought {
    /// An ocix manifest and its blobs, pulled.
    Pulled(Box<PullReport>),
    /// An ordinary image, its layers imported.
    Imported(Box<Imported>),
}

/// A finished run.
#[derive(Debug)]
pub struct Unpacked {
    /// What the source brought.
    pub brought: Brought,
    /// What the unpack did.
    pub unpack: UnpackReport,
}

/// Pulls `src` (`docker://...`, see [`Remote::parse`]) and unpacks it into
/// `dest` at the same time: the pull runs on its own thread and the unpack
/// starts as soon as the manifest is in; a writer that needs a blob not yet
/// fetched waits for it (see [`Store::with_arrivals`]). Whichever fails
/// first stops the other. A `dest` this run created is removed on failure;
/// the blobs fetched stay in `opts.store`, so a rerun fetches only the
/// rest.
pub fn pull_unpack(src: &str, dest: &Path, opts: &PullUnpackOptions) -> Result<Unpacked, RunError> {
    let remote = Remote::parse(src).map_err(|e| RunError::Location(e.into()))?;
    let existed = check_dest(dest, opts.unpack.update).map_err(RunError::Dest)?;
    let (store, temp) = run_store(opts.store.as_deref(), dest)?;
    let arrivals = Arc::new(new_arrivals(&temp));
    let store = store.with_arrivals(arrivals.clone());
    let cancel = Arc::new(AtomicBool::new(false));
    let popts = PullOptions { cancel: Some(cancel.clone()), ..opts.pull.clone() };
    // a fresh store of our own holds only blobs the pull has just verified
    // (the store knows them, see `Store::fetched_here`): they can become
    // the files without being read again
    let uopts =
        UnpackOptions { progress: Progress::silent(), link: opts.unpack.link || temp.is_some(), ..opts.unpack.clone() };
    let (pulled, unpacked) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let puller = s.spawn(|| {
            // readers must never wait for a pull that is gone, even one
            // that panicked
            let close = CloseOnDrop(&arrivals);
            let r = remote::pull_with(&remote, &store, &popts, move |m| {
                let _ = tx.send(m.clone());
            });
            close.0.close(match &r {
                Ok(_) => Filled::Complete,
                Err(e) => Filled::Stopped(e.to_string()),
            });
            r
        });
        // an unpack that fails stops the pull at once, even while a
        // writer still waits for a blob
        let unpacked = rx.recv().ok().map(|m| materialize::unpack_filled(&m, &store, dest, &uopts, &*cancel));
        (puller.join(), unpacked)
    });
    // refused before anything was written: `dest` is as it was
    let untouched = matches!(unpacked, Some(Err(UnpackError::OverlayXattr { .. })));
    let result = (|| {
        let pulled = pulled.map_err(|_| RunError::PullLost { src: src.into(), why: "the pull thread panicked" })?;
        if let (Err(RemoteError::NotOcix { .. }), Remote::Registry(reference)) = (&pulled, &remote) {
            // an ordinary image: imported layer by layer into the store
            // instead, then unpacked (as `image_unpack`)
            let iopts = ImportOptions { tag: None, ..opts.import.clone() };
            let imported = remote::image::import_remote(reference, Some(&store), &iopts, &opts.pull.remote)
                .map_err(|error| RunError::Import { src: src.into(), error })?;
            let unpack = materialize::unpack(&imported.manifest, &store, dest, &uopts)
                .map_err(|error| RunError::Unpack { dest: dest.into(), error })?;
            return Ok(Unpacked { brought: Brought::Imported(Box::new(imported)), unpack });
        }
        let pulled = match (pulled, unpacked) {
            // the pull was stopped because the unpack failed: say why
            (Err(RemoteError::Cancelled { .. }), Some(Err(error))) => {
                return Err(RunError::Unpack { dest: dest.into(), error });
            }
            (Err(error), _) => return Err(RunError::Pull { src: src.into(), error }),
            (Ok(_), None) => return Err(RunError::PullLost { src: src.into(), why: "the manifest never arrived" }),
            (Ok(r), Some(u)) => (r, u),
        };
        let unpack = pulled.1.map_err(|error| RunError::Unpack { dest: dest.into(), error })?;
        Ok(Unpacked { brought: Brought::Pulled(Box::new(pulled.0)), unpack })
    })();
    drop(store);
    drop(temp);
    result.map_err(|e| failed(e, dest, existed, opts.unpack.update || untouched))
}

/// How [`image_unpack`] and [`image_bundle`] run.
#[derive(Clone, Debug, Default)]
pub struct ImageUnpackOptions {
    /// The import (`tag` is ignored: the image names it, as
    /// `LAYOUT:TAG` or in its reference).
    pub import: ImportOptions,
    /// How to reach a registry.
    pub remote: RemoteOptions,
    /// The unpack (`update` is ignored by [`image_bundle`]: a bundle is
    /// unpacked fresh).
    pub unpack: UnpackOptions,
    /// The store to keep the image's contents in (created if absent).
    /// `None`: a temporary store beside the destination, whose blobs become
    /// the files themselves (no second copy), removed afterwards.
    pub store: Option<PathBuf>,
}

/// Imports `image` (`LAYOUT[:TAG]`, or `docker://HOST/REPO[:TAG|@DIGEST]`
/// whose layers are streamed) into a store, then unpacks its tree into
/// `dest`. A `dest` this run created is removed on failure.
pub fn image_unpack(image: &str, dest: &Path, opts: &ImageUnpackOptions) -> Result<Unpacked, RunError> {
    let existed = check_dest(dest, opts.unpack.update).map_err(RunError::Dest)?;
    match import_unpack(image, dest, opts) {
        Ok((imported, unpack, release)) => {
            release.wait();
            Ok(Unpacked { brought: Brought::Imported(Box::new(imported)), unpack })
        }
        Err(e) => Err(failed(e, dest, existed, opts.unpack.update)),
    }
}

/// An image unpacked into a runtime bundle.
#[derive(Debug)]
pub struct Bundled {
    /// The image, imported.
    pub imported: Imported,
    /// What the unpack of `BUNDLE/rootfs` did.
    pub unpack: UnpackReport,
}

/// [`image_unpack`] into a runtime bundle, as `umoci unpack` makes one:
/// the tree into `BUNDLE/rootfs`, its manifest kept as `BUNDLE/ocix.cbor`
/// (so the bundle can be compared with it later), and `BUNDLE/config.json`
/// from the image config (the rootless variant when the unpack ran
/// rootless). `bundle` must be absent or an empty directory; one this run
/// created is removed on failure.
pub fn image_bundle(image: &str, bundle: &Path, opts: &ImageUnpackOptions) -> Result<Bundled, RunError> {
    let existed = check_dest(bundle, false).map_err(RunError::Dest)?;
    let opts = ImageUnpackOptions { unpack: UnpackOptions { update: false, ..opts.unpack.clone() }, ..opts.clone() };
    if !existed {
        std::fs::create_dir(bundle)
            .map_err(|e| RunError::Io { path: bundle.into(), what: format!("cannot create bundle: {e}") })?;
    }
    let r = (|| {
        let rootfs = bundle.join("rootfs");
        let (imported, unpack, release) = import_unpack(image, &rootfs, &opts)?;
        let cbor = bundle.join("ocix.cbor");
        // written after the unpack (and the removal of a temporary store,
        // which changes the files' link counts), so that ocix.cbor is
        // younger than every change of the tree: repack relies on that to
        // skip unchanged files; streamed, never whole in memory beside the
        // manifest
        write_manifest(&imported.manifest, &cbor)?;
        let record = ImageRecord {
            manifest: imported.image.manifest_desc.clone(),
            rootless: unpack.rootless,
            id_mapped: !opts.unpack.uid_map.is_empty() || !opts.unpack.gid_map.is_empty(),
        };
        let rec = bundle.join(IMAGE_RECORD);
        std::fs::write(&rec, record.to_json())
            .map_err(|e| RunError::Io { path: rec, what: format!("cannot write: {e}") })?;
        write_runtime_config(bundle, &rootfs, &imported.image, &opts.unpack, unpack.rootless)?;
        release.wait();
        Ok(Bundled { imported, unpack })
    })();
    if r.is_err() && !existed {
        // nothing half-made is left behind under a name this run created
        let _ = std::fs::remove_dir_all(bundle);
    }
    r
}

/// Writes `m`'s canonical bytes to the new file `path`, in chunks; a
/// manifest that breaks a rule leaves no file.
fn write_manifest(m: &Compact, path: &Path) -> Result<(), RunError> {
    use std::io::Write;
    let io = |e: std::io::Error| RunError::Io { path: path.into(), what: format!("cannot write: {e}") };
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(256 << 10, f);
    match m.write_to(&mut w) {
        Ok(_) => w.flush().map_err(io),
        Err(WriteError::Invalid(e)) => {
            drop(w);
            let _ = std::fs::remove_file(path);
            Err(RunError::Manifest(e))
        }
        Err(WriteError::Io(e)) => Err(io(e)),
    }
}

/// The import and the unpack of [`image_unpack`], without the cleanup of
/// `dest`; the run's store is being released when it returns (see
/// [`Release`]).
fn import_unpack(
    image: &str,
    dest: &Path,
    opts: &ImageUnpackOptions,
) -> Result<(Imported, UnpackReport, Release), RunError> {
    let (mut store, temp) = run_store(opts.store.as_deref(), dest)?;
    // a store of our own is read once and removed: its blobs go into one
    // unnamed file (the spill), each hashed as it is written, rather than
    // a file each
    if temp.is_some() && !opts.unpack.link {
        store = store.with_spill();
    }
    // otherwise the store knows the blobs this import verifies (see
    // `Store::fetched_here`); in a store of our own that could not spill,
    // they simply become the files
    let arrivals = Arc::new(new_arrivals(&temp));
    if !store.spills() {
        store = store.with_arrivals(arrivals.clone());
    }
    let imported = import_into(image, &store, opts)?;
    store.seal().map_err(|e| RunError::Import { src: image.into(), error: e.into() })?;
    arrivals.close(Filled::Complete);
    let link = opts.unpack.link || (temp.is_some() && !store.spills());
    let uopts = UnpackOptions { link, ..opts.unpack.clone() };
    let unpack = materialize::unpack(&imported.manifest, &store, dest, &uopts)
        .map_err(|error| RunError::Unpack { dest: dest.into(), error })?;
    // a spill is released beside the work that follows (freeing its pages
    // was a twentieth of a node image's unpack, on one core); a store whose
    // blobs became the files is removed first: that changes their link
    // counts, which the bundle's manifest must be younger than
    let release = if store.spills() {
        Release(std::thread::Builder::new().spawn(move || drop((store, temp))).ok())
    } else {
        drop(store);
        drop(temp);
        Release(None)
    };
    Ok((imported, unpack, release))
}

/// A run's store being released on a thread of its own; waited for when
/// dropped, so that no run returns (or fails) before it is gone.
#[must_use]
struct Release(Option<std::thread::JoinHandle<()>>);

impl Release {
    fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.join();
    }
}

/// Imports `image` (`LAYOUT[:TAG]` or `docker://HOST/REPO[:TAG|@DIGEST]`)
/// into `store`: its layers applied in memory, file contents as blobs.
pub fn import_into(image: &str, store: &Store, opts: &ImageUnpackOptions) -> Result<Imported, RunError> {
    if image.starts_with("docker://") {
        let r = Reference::parse(image).map_err(|e| RunError::Location(e.into()))?;
        let iopts = ImportOptions { tag: None, ..opts.import.clone() };
        remote::image::import_remote(&r, Some(store), &iopts, &opts.remote)
    } else {
        let (layout, tag) = oci::split_ref(image);
        let iopts = ImportOptions { tag: tag.map(str::to_string), ..opts.import.clone() };
        oci::import_image(Path::new(layout), Some(store), &iopts)
    }
    .map_err(|error| RunError::Import { src: image.into(), error })
}

/// `BUNDLE/config.json` from the image config, as `umoci unpack` writes it;
/// the rootless variant when the rootfs was unpacked rootless.
pub fn write_runtime_config(
    bundle: &Path,
    rootfs: &Path,
    image: &oci::Image,
    opts: &UnpackOptions,
    rootless: bool,
) -> Result<(), BundleError> {
    let config = bundle::parse_image_config(&image.config_raw)?;
    let maps =
        |m: &[IdMap]| m.iter().map(|m| bundle::id_mapping(m.container, m.host, m.size)).collect::<Result<Vec<_>, _>>();
    let bopts = bundle::BundleOptions {
        rootless,
        uid_mappings: maps(&opts.uid_map)?,
        gid_mappings: maps(&opts.gid_map)?,
        ..Default::default()
    };
    bundle::write_bundle_config(bundle, &bundle::runtime_config(&config, rootfs, &bopts)?)
}

/// How [`pull_mount`] runs.
#[derive(Clone, Debug, Default)]
pub struct PullMountOptions {
    /// The pull.
    pub pull: PullOptions,
    /// The store every blob is pulled into (created if absent); the mount
    /// reads its files from there, so it must outlive the mount.
    pub store: PathBuf,
    /// For a source that names an ordinary image rather than an ocix
    /// manifest: how its layers are imported (`tag` is ignored).
    pub import: ImportOptions,
}

/// A finished mount run.
#[derive(Debug)]
pub struct Mounted {
    /// What the source brought.
    pub brought: Brought,
    /// The manifest mounted, encoded.
    pub manifest: Vec<u8>,
    /// What the mount did.
    pub mount: MountReport,
}

/// Pulls `src` (`docker://...`) into `opts.store`, every blob, then mounts
/// its tree read-only at `dest` (created if absent). A tag that names an
/// ordinary image is imported into the store instead.
pub fn pull_mount(src: &str, dest: &Path, opts: &PullMountOptions) -> Result<Mounted, RunError> {
    let store = Store::create(&opts.store)?;
    let remote = Remote::parse(src).map_err(|e| RunError::Location(e.into()))?;
    let (brought, manifest) = match remote::pull(&remote, &store, &opts.pull) {
        Ok(r) => {
            let bytes = r.manifest_bytes.clone();
            (Brought::Pulled(Box::new(r)), bytes)
        }
        Err(RemoteError::NotOcix { .. }) => {
            let reference = Reference::parse(src).map_err(|e| RunError::Location(e.into()))?;
            let iopts = ImportOptions { tag: None, ..opts.import.clone() };
            let imported = remote::image::import_remote(&reference, Some(&store), &iopts, &opts.pull.remote)
                .map_err(|error| RunError::Import { src: src.into(), error })?;
            let bytes = imported.manifest.to_bytes().map_err(RunError::Manifest)?;
            (Brought::Imported(Box::new(imported)), bytes)
        }
        Err(error) => return Err(RunError::Pull { src: src.into(), error }),
    };
    // the erofs writer takes the compact form
    let m = match &brought {
        Brought::Pulled(r) => &*r.manifest,
        Brought::Imported(i) => &i.manifest,
    };
    if !dest.exists() {
        std::fs::create_dir(dest)
            .map_err(|e| RunError::Io { path: dest.into(), what: format!("cannot create: {e}") })?;
    }
    let report = mount::mount(m, &crate::manifest::Digest::of(&manifest), &store, dest, &MountOptions::default())
        .map_err(|error| RunError::Mount { src: src.into(), dest: dest.into(), error: Box::new(error) })?;
    Ok(Mounted { brought, manifest, mount: report })
}

/// An image mounted as a runtime bundle's rootfs.
#[derive(Debug)]
pub struct MountedBundle {
    /// The image, imported.
    pub imported: Imported,
    /// The mount point, `BUNDLE/rootfs`.
    pub rootfs: PathBuf,
    /// What the mount did.
    pub mount: MountReport,
}

/// [`image_bundle`] with a mount for a rootfs: `image` imported into the
/// store (`opts.store`, or `BUNDLE/store`), its manifest kept as
/// `BUNDLE/ocix.cbor`, `BUNDLE/rootfs` a writable mount of its tree with
/// the changes in `BUNDLE/upper` (work directory `BUNDLE/work`), and
/// `BUNDLE/config.json` from the image config. `bundle` must be absent or
/// an empty directory; on failure the rootfs is unmounted and a bundle this
/// run created removed.
pub fn image_mount_bundle(image: &str, bundle: &Path, opts: &ImageUnpackOptions) -> Result<MountedBundle, RunError> {
    let existed = check_dest(bundle, false).map_err(RunError::Dest)?;
    let io =
        |path: &Path, what: &str, e: std::io::Error| RunError::Io { path: path.into(), what: format!("{what}: {e}") };
    if !existed {
        std::fs::create_dir(bundle).map_err(|e| io(bundle, "cannot create bundle", e))?;
    }
    let store_path = opts.store.clone().unwrap_or_else(|| bundle.join("store"));
    let rootfs = bundle.join("rootfs");
    let mut mounted = false;
    let result = (|| {
        let store = Store::create(&store_path)?;
        let imported = import_into(image, &store, opts)?;
        let bytes = imported.manifest.to_bytes().map_err(RunError::Manifest)?;
        let cbor = bundle.join("ocix.cbor");
        std::fs::write(&cbor, &bytes).map_err(|e| io(&cbor, "cannot write", e))?;
        let (upper, work) = (bundle.join("upper"), bundle.join("work"));
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir(d).map_err(|e| io(d, "cannot create", e))?;
        }
        let mopts = MountOptions { upper: Some(upper), work: Some(work), verify: false };
        let digest = crate::manifest::Digest::of(&bytes);
        let report = mount::mount(&imported.manifest, &digest, &store, &rootfs, &mopts)
            .map_err(|error| RunError::Mount { src: image.into(), dest: rootfs.clone(), error: Box::new(error) })?;
        mounted = true;
        write_runtime_config(bundle, &rootfs, &imported.image, &opts.unpack, false)?;
        Ok(MountedBundle { imported, rootfs: rootfs.clone(), mount: report })
    })();
    if result.is_err() && mounted {
        // never remove a bundle through its mounted rootfs
        mount::umount(&rootfs)
            .map_err(|error| RunError::LeftMounted { rootfs: rootfs.clone(), error: Box::new(error) })?;
    }
    if result.is_err() && !existed {
        // nothing half-made is left behind under a name this run created
        let _ = std::fs::remove_dir_all(bundle);
    }
    result
}

/// After a failed run: a `dest` this run created is removed (nothing
/// half-made is left under a name it created); one that existed is said to
/// be partly unpacked, unless the run was an update (whose rerun completes
/// it, as its caller knows) or never wrote into it (`kept`).
fn failed(e: RunError, dest: &Path, existed: bool, kept: bool) -> RunError {
    if !existed {
        let _ = std::fs::remove_dir_all(dest);
        e
    } else if kept {
        e
    } else {
        RunError::Partly { dest: dest.into(), error: Box::new(e) }
    }
}

/// The run's store: `given` (created if absent), or a new temporary one
/// beside `dest`, removed when the guard returned with it is dropped.
fn run_store(given: Option<&Path>, dest: &Path) -> Result<(Store, Option<Temporary>), RunError> {
    let (path, temp) = match given {
        Some(p) => (p.to_path_buf(), None),
        None => {
            let p = beside(dest, "ocix-store")?;
            (p.clone(), Some(Temporary(p)))
        }
    };
    // on failure the guard removes the temporary directory
    Ok((Store::create(&path)?, temp))
}

/// The arrivals of a run's store: a temporary one is filled fresh, so it
/// keeps no record of each blob (see [`Arrivals::fresh`]).
fn new_arrivals(temp: &Option<Temporary>) -> Arrivals {
    if temp.is_some() { Arrivals::fresh() } else { Arrivals::new() }
}

/// A directory of this run's own, removed (with everything in it) when
/// dropped.
#[derive(Debug)]
struct Temporary(PathBuf);

impl Drop for Temporary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Closes the arrivals with an error if the pull ends without closing them.
struct CloseOnDrop<'a>(&'a Arrivals);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(Filled::Stopped("the pull stopped".into()));
    }
}

/// A new hidden directory beside `path` (same directory, so the same
/// filesystem), created here: `.NAME.WHAT.PID[.N]`. A name left by a killed
/// run (with the same pid) is never reused: what is in it is not known.
fn beside(path: &Path, what: &str) -> Result<PathBuf, RunError> {
    let io = |path: &Path, what: String| RunError::Io { path: path.into(), what };
    let name =
        path.file_name().ok_or_else(|| io(path, "needs a final path component".into()))?.to_string_lossy().into_owned();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, format!("cannot create: {e}")))?;
    let base = format!(".{name}.{what}.{}", std::process::id());
    for n in 0..100 {
        let p = parent.join(if n == 0 { base.clone() } else { format!("{base}.{n}") });
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&p, format!("cannot create: {e}"))),
        }
    }
    Err(io(path, "no free name for a temporary store beside it".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_store_never_reuses_a_name_left_behind() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("rootfs");
        let left = t.path().join(format!(".rootfs.ocix-store.{}", std::process::id()));
        std::fs::create_dir_all(left.join("blobs/sha256")).unwrap();
        std::fs::write(left.join("blobs/sha256/stale"), b"from a killed run").unwrap();
        let fresh = beside(&dest, "ocix-store").unwrap();
        assert_ne!(fresh, left);
        assert!(fresh.starts_with(t.path()) && fresh.is_dir());
        assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
        assert_eq!(std::fs::read(left.join("blobs/sha256/stale")).unwrap(), b"from a killed run");
        assert_ne!(beside(&dest, "ocix-store").unwrap(), fresh);
    }
}

/// How [`lazy_mount`] runs.
pub struct LazyMountOptions {
    /// Connection settings, and paths to fetch first.
    pub pull: PullOptions,
    /// The store blobs are fetched into (created if absent).
    pub store: PathBuf,
    /// Background prefetch with this many blobs at once; `None`: blobs are
    /// fetched only when read.
    pub background: Option<usize>,
    /// Write the paths of the files read, in first-access order, here.
    pub record_access: Option<PathBuf>,
    /// Threads serving the data layer (so a slow blob does not hold up
    /// reads of others).
    pub threads: usize,
    /// The overlay: read-only, or writable into `upper`.
    pub mount: MountOptions,
    /// Where errors and progress of the data layer are told.
    pub log: Box<dyn Fn(&str) + Send + Sync>,
    /// Fetch the manifest before mounting even when the artifact has a
    /// lazy index (which a mount otherwise fetches instead, see
    /// [`remote::lazyidx`]).
    pub full_manifest: bool,
}

/// A lazy mount in place (given to [`lazy_mount`]'s `ready`).
#[derive(Debug)]
pub struct LazyMounted {
    /// The manifest's digest.
    pub manifest_digest: crate::manifest::Digest,
    /// The manifest, encoded (empty when the mount started from the lazy
    /// index: the manifest is then rebuilt and kept in the store once the
    /// background prefetch has brought every blob).
    pub manifest: Vec<u8>,
    /// What the mount did.
    pub mount: MountReport,
}

/// What a lazy mount fetched while it lived.
#[derive(Debug)]
pub struct LazyEnded {
    /// Blobs fetched.
    pub fetched: usize,
    /// Bytes received for them.
    pub bytes: u64,
    /// Whether the store then held every blob of the manifest.
    pub complete: bool,
}

/// Mounts `src` (`docker://...`, an ocix artifact) at `dest` (created if
/// absent) with no file blob fetched yet: the manifest's EROFS image over
/// a FUSE data layer ([`remote::lazyfs`]) that fetches each blob into
/// `opts.store` on its first open (verified before it is served), with a
/// background prefetch of the rest unless `opts.background` is `None`.
/// Calls `ready` once mounted, then serves until the mount is unmounted
/// (`ocix umount`), and returns what was fetched. A failure before `ready`
/// leaves nothing mounted.
pub fn lazy_mount(
    src: &str,
    dest: &Path,
    opts: LazyMountOptions,
    ready: impl FnOnce(&LazyMounted),
) -> Result<LazyEnded, RunError> {
    use remote::lazy::{Lazy, LazyOptions};
    use rustix::fd::AsFd as _;
    let store = Store::create(&opts.store)?;
    let remote = Remote::parse(src).map_err(|e| RunError::Location(e.into()))?;
    let io =
        |path: &Path, what: &str, e: std::io::Error| RunError::Io { path: path.into(), what: format!("{what}: {e}") };
    let record_access = match &opts.record_access {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| io(p, "cannot create", e))?),
        None => None,
    };
    let lazy_opts =
        LazyOptions { pull: opts.pull.clone(), log: opts.log, record_access, full_manifest: opts.full_manifest };
    let lazy = Lazy::open(&remote, store, lazy_opts).map_err(|error| RunError::Pull { src: src.into(), error })?;
    let lazy = Arc::new(lazy);
    if !dest.exists() {
        std::fs::create_dir(dest).map_err(|e| io(dest, "cannot create", e))?;
    }
    let mount_err = |error: MountError| RunError::Mount { src: src.into(), dest: dest.into(), error: Box::new(error) };
    let (dev, data) = crate::sys::mount::fuse_detached("ocix-lazy").map_err(|e| {
        mount_err(match e.errno {
            crate::sys::Errno::PERM | crate::sys::Errno::ACCESS => MountError::Unsupported {
                what: "a lazy mount needs root (CAP_SYS_ADMIN): the kernel mounts EROFS only for root".into(),
                source: e,
            },
            crate::sys::Errno::NODEV | crate::sys::Errno::NOENT => {
                MountError::Unsupported { what: "the kernel has no FUSE (/dev/fuse)".into(), source: e }
            }
            _ => MountError::Sys(e),
        })
    })?;
    let mut config = fuser::Config::default();
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    let session =
        fuser::Session::from_fd(remote::lazyfs::LazyFs::new(lazy.clone()), dev, fuser::SessionACL::All, config)
            .map_err(|e| io(Path::new("/dev/fuse"), "starting the FUSE session", e))?;
    let served = session.spawn().map_err(|e| io(Path::new("/dev/fuse"), "starting the FUSE session", e))?;
    let source = format!("{}{}", mount::LAZY_SOURCE, std::process::id());
    let digest = *lazy.manifest_digest();
    let key = lazy.image_key();
    let report = mount::mount_with_data(lazy.manifest(), &key, lazy.store(), dest, &opts.mount, data.as_fd(), &source);
    // the overlay holds the data layer now; without it (a failed mount)
    // the FUSE filesystem goes away and its session ends
    drop(data);
    let report = match report {
        Ok(r) => r,
        Err(error) => {
            let _ = served.join();
            return Err(mount_err(error));
        }
    };
    ready(&LazyMounted { manifest_digest: digest, manifest: lazy.manifest_bytes().to_vec(), mount: report });
    let stop = Arc::new(AtomicBool::new(false));
    let read_ahead = lazy.read_ahead();
    let prefetch = opts.background.map(|jobs| {
        let (lazy, stop) = (lazy.clone(), stop.clone());
        std::thread::spawn(move || lazy.background(jobs, &stop))
    });
    // returns once the overlay is unmounted and the kernel ends the session
    let ended = served.join();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    lazy.end_read_ahead();
    let _ = read_ahead.join();
    if let Some(p) = prefetch {
        let _ = p.join();
    }
    ended.map_err(|e| io(Path::new("/dev/fuse"), "serving the FUSE session", e))?;
    let (bytes, fetched) = lazy.fetched();
    Ok(LazyEnded { fetched, bytes, complete: lazy.complete() })
}
