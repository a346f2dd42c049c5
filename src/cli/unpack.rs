//! `ocix unpack M --store STORE DEST`: materialize a manifest into a rootfs;
//! `ocix unpack --image LAYOUT[:TAG] BUNDLE`: an OCI image into a runtime
//! bundle (import, then unpack, then the runtime config), as `umoci unpack`;
//! the image may be `docker://HOST/REPO:TAG` in a registry, its layers
//! streamed.

use super::Global;
use crate::materialize::{IdMap, UnpackError, UnpackOptions, unpack};
use crate::oci::ImportOptions;
use crate::pipeline::{self, Brought, ImageUnpackOptions, PullMountOptions, PullUnpackOptions, RunError};
use crate::remote::PullOptions;
use crate::store::Store;
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Create every entry of the manifest under DEST: contents from the store
/// (each verified by sha256 while written), owners, modes, xattrs, mtimes,
/// hardlinks, devices, fifos; zero runs become holes. DEST must be absent or
/// empty unless --update. Without root (or with --rootless) owners are kept
/// in the user.rootlesscontainers xattr and devices become empty files; one
/// summary lists everything that could not be applied.
///
/// With --image LAYOUT[:TAG], the one path is a runtime BUNDLE (absent or
/// empty): the image is imported (every layer verified and applied in
/// memory), its tree written to BUNDLE/rootfs, its manifest kept as
/// BUNDLE/ocix.cbor (so `ocix diff BUNDLE` audits drift later) and
/// BUNDLE/config.json written from the image config, like `umoci unpack`.
/// The image may be docker://HOST[:PORT]/REPO[:TAG|@DIGEST], an ordinary
/// image in a registry, whose layers are streamed (no skopeo needed).
///
/// MANIFEST may be docker://HOST/REPO:TAG, an ocix manifest pushed by
/// `ocix push`: only the blobs --store lacks are fetched, and each file is
/// written as soon as its blob has arrived and been verified. Without
/// --store the blobs go into a temporary store beside DEST and become the
/// files themselves (no second copy). A docker:// tag that names an
/// ordinary OCI/Docker image is imported (layers streamed, as `ocix
/// import`) and its tree unpacked into DEST, as a plain rootfs.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// MANIFEST DEST, or with --image only BUNDLE. MANIFEST may be
    /// docker://HOST/REPO:TAG.
    #[arg(value_name = "PATHS", num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
    /// An OCI image layout and tag (or a docker://HOST/REPO[:TAG] image in
    /// a registry) to unpack into a runtime bundle.
    #[arg(long, value_name = "LAYOUT[:TAG]|docker://...")]
    pub image: Option<String>,
    /// With --image: the platform to pick from a multi-platform index
    /// (OS/ARCH[/VARIANT]; default this machine's).
    #[arg(long, requires = "image")]
    pub platform: Option<String>,
    /// With --image (or a docker:// MANIFEST naming an ordinary image): as
    /// `umoci unpack --keep-dirlinks`, a directory entry that meets a
    /// symlink leading to a directory (followed inside the root, never out
    /// of it) keeps the symlink, so what a later layer puts beneath that
    /// name lands in the directory it leads to; the symlink takes the
    /// entry's owner, mtime and xattrs. Without it the directory replaces
    /// the symlink. A dangling or looping symlink, or one leading to a
    /// non-directory, is replaced either way. An ocix manifest is already
    /// a tree: there it changes nothing.
    #[arg(long)]
    pub keep_dirlinks: bool,
    /// The blob store holding the manifest's file contents. With --image:
    /// a store to keep the image's contents in (default: the contents stay
    /// in one unnamed file inside BUNDLE for this run only).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Bring an existing tree to the manifest: remove extra entries, fix
    /// metadata, rewrite only files whose content differs.
    #[arg(long)]
    pub update: bool,
    /// Unpack without privilege even as root (implied when not root).
    #[arg(long)]
    pub rootless: bool,
    /// Shift uids, container:host:size (repeatable), as root.
    #[arg(long, value_name = "MAP")]
    pub uid_map: Vec<IdMap>,
    /// Shift gids, container:host:size (repeatable), as root.
    #[arg(long, value_name = "MAP")]
    pub gid_map: Vec<IdMap>,
    /// Make regular files hardlinks of their blobs (an ostree-style
    /// checkout, no data copied) where that keeps the tree exact: a blob no
    /// other name links yet takes the metadata of the first file with its
    /// content and becomes that file; other files are copied. For users who
    /// accept shared inodes: editing a linked file in place edits the store.
    #[arg(long)]
    pub link: bool,
    /// Write xattrs in overlayfs's namespace (trusted.overlay.*,
    /// user.overlay.*) that the manifest holds, e.g. one scanned from an
    /// overlay's upper directory. Without it such a manifest is refused
    /// before anything is written: an overlay that later uses DEST as a
    /// layer would obey them. Images never bring them: import drops them
    /// from layers.
    #[arg(long)]
    pub allow_overlay_xattrs: bool,
    /// Mount the tree instead of writing it (`ocix mount`; no file data is
    /// copied; needs root). With --image: BUNDLE/rootfs is an overlay of
    /// the manifest's EROFS metadata image over the blob store, writable
    /// into BUNDLE/upper; the blobs stay in --store (default BUNDLE/store);
    /// `ocix umount BUNDLE/rootfs` before removing the bundle. With a
    /// docker:// MANIFEST: every blob is pulled into --store (required),
    /// then DEST (created if absent) is a read-only mount.
    #[arg(long, conflicts_with_all = ["rootless", "link", "update", "prefetch"])]
    pub mount: bool,
    /// With --image docker://... (an ocix artifact) and --mount: mount at
    /// once and fetch each file's blob when it is first read (`ocix mount
    /// docker://...`, served by a daemon until `ocix umount
    /// BUNDLE/rootfs`); runc can start the bundle before the image is down.
    #[arg(long, requires = "mount")]
    pub lazy: bool,
    /// With --lazy: fetch blobs only when read (no background prefetch).
    #[arg(long, requires = "lazy")]
    pub no_background: bool,
    /// Writer threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// With a docker:// MANIFEST: also write the manifest pulled to this
    /// file (for `ocix diff` later).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With a docker:// MANIFEST: a file of paths (one a line) whose blobs
    /// are fetched, and so written, first.
    #[arg(long, value_name = "PATHS-FILE")]
    pub prefetch: Option<PathBuf>,
    /// Registry connection flags (docker:// only).
    #[command(flatten)]
    pub net: super::pull::RemoteArgs,
}

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let opts = UnpackOptions {
        update: a.update,
        rootless: a.rootless,
        uid_map: a.uid_map.clone(),
        gid_map: a.gid_map.clone(),
        threads: a.threads,
        progress: g.progress(),
        link: a.link,
        allow_overlay_xattrs: a.allow_overlay_xattrs,
    };
    if let Some(image) = &a.image {
        let [bundle] = a.paths.as_slice() else { bail!("with --image, give only the BUNDLE directory") };
        return unpack_image(image, bundle, &a, &opts, g);
    }
    let [manifest, dest] = a.paths.as_slice() else { bail!("give MANIFEST and DEST (or --image LAYOUT[:TAG] BUNDLE)") };
    if a.lazy {
        bail!("--lazy is for --image docker://... BUNDLE --mount (or `ocix mount docker://... MNT`)");
    }
    if let Some(src) = manifest.to_str().filter(|s| s.starts_with("docker://")) {
        if a.mount {
            return mount_remote(src, dest, &a, g);
        }
        return unpack_remote(src, dest, &a, &opts, g);
    }
    if a.mount {
        bail!("--mount is for --image or a docker:// MANIFEST; mount a manifest file with `ocix mount`");
    }
    if a.output.is_some() || a.prefetch.is_some() {
        bail!("-o and --prefetch are for a docker:// MANIFEST");
    }
    if a.keep_dirlinks {
        bail!("--keep-dirlinks is for an image's layers (--image, or a docker:// image); a manifest is already a tree");
    }
    let Some(store) = &a.store else { bail!("--store is required to unpack a manifest") };
    let m = super::read_compact(manifest)?;
    let store = Store::open(store)?;
    let r = unpack(&m, &store, dest, &opts).map_err(|e| unpack_failed(dest, e))?;
    report(&r, g);
    Ok(ExitCode::SUCCESS)
}

/// An unpack's error, naming DEST, with the flag that helps where there is
/// one.
fn unpack_failed(dest: &Path, e: UnpackError) -> anyhow::Error {
    let h = hint(&e, true);
    super::hinted(e, h).context(format!("unpacking into {}", dest.display()))
}

/// The flag that allows what `e` refused, or does what it could not, as a
/// tail for its message (empty where there is none). `update`: whether
/// `--update` may be offered.
fn hint(e: &UnpackError, update: bool) -> String {
    match e {
        UnpackError::OverlayXattr { .. } => " (--allow-overlay-xattrs)".into(),
        UnpackError::DestNotEmpty(_) if update => " (use --update to bring an existing tree to the manifest)".into(),
        UnpackError::Unmapped { what, .. } => format!(" (--{what}-map)"),
        UnpackError::NoChangeId { what, .. } => format!(" (check the --{what}-map ranges)"),
        UnpackError::NoMknod(_) => "; unpack with --rootless to write devices as empty files instead".into(),
        _ => String::new(),
    }
}

/// A run's error as the user sees it: the unpack's with its flag, a tree
/// left partly unpacked with the way to complete it. `bundle`: the run
/// wrote a bundle (which `--update` does not apply to).
pub(super) fn run_failed(e: RunError, bundle: bool) -> anyhow::Error {
    match e {
        RunError::Partly { dest, error } => run_failed(*error, bundle)
            .context(format!("{}: partly unpacked; rerun with --update to complete it", dest.display())),
        RunError::Dest(e) => {
            let h = hint(&e, !bundle);
            super::hinted(e, h)
        }
        RunError::Unpack { dest, error } => unpack_failed(&dest, error),
        RunError::Pull { src, error } => {
            let h = super::remote_hint(&error);
            super::hinted(error, h).context(format!("pulling {src}"))
        }
        RunError::Import { src, error } => {
            let h = super::import_hint(&error);
            super::hinted(error, h).context(format!("importing {src}"))
        }
        RunError::Mount { src, dest, error } => {
            super::mount_failed(*error).context(format!("mounting {src} at {}", dest.display()))
        }
        RunError::LeftMounted { rootfs, error } => {
            super::mount_failed(*error).context(format!("{}: left mounted", rootfs.display()))
        }
        e => anyhow::Error::new(e),
    }
}

fn report(r: &crate::materialize::UnpackReport, g: Global) {
    let lines = r.summary(if g.verbose > 0 { usize::MAX } else { 3 });
    if !lines.is_empty() {
        g.warn(&format!("not everything could be applied{}:", if r.rootless { " (rootless)" } else { "" }));
        for l in lines {
            g.warn(&format!("  {l}"));
        }
    }
    g.info(&format!(
        "{} dirs, {} files written ({} bytes), {} linked to blobs, {} kept, {} hardlinks, {} other entries, {} removed",
        r.dirs, r.files_written, r.bytes_written, r.files_linked, r.files_kept, r.hardlinks, r.others, r.removed
    ));
}

/// `docker://... DEST`: pulled and unpacked at once (see
/// [`pipeline::pull_unpack`]); an ordinary image is imported, then
/// unpacked. `-o` keeps the manifest.
fn unpack_remote(src: &str, dest: &Path, a: &Args, opts: &UnpackOptions, g: Global) -> anyhow::Result<ExitCode> {
    let prefetch = super::pull::read_prefetch(a.prefetch.as_deref())?;
    let run = PullUnpackOptions {
        pull: PullOptions {
            remote: a.net.options(),
            jobs: a.net.jobs,
            prefetch,
            manifest: None,
            progress: g.progress(),
            cancel: None,
        },
        unpack: opts.clone(),
        store: a.store.clone(),
        import: ImportOptions { keep_dirlinks: a.keep_dirlinks, ..Default::default() },
    };
    let done = pipeline::pull_unpack(src, dest, &run).map_err(|e| run_failed(e, false))?;
    let manifest = match &done.brought {
        Brought::Pulled(r) => {
            super::pull::report(r, g);
            r.manifest_bytes.clone()
        }
        Brought::Imported(imported) => {
            g.info(&format!("{src}: an ordinary image, {} layers imported", imported.image.layers.len()));
            super::import::report_dropped(imported, src, g);
            imported.manifest.to_bytes()?
        }
    };
    report(&done.unpack, g);
    if let Some(o) = &a.output {
        super::write_output(Some(o), &manifest)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `docker://... DEST --mount` (see [`pipeline::pull_mount`]).
fn mount_remote(src: &str, dest: &Path, a: &Args, g: Global) -> anyhow::Result<ExitCode> {
    let Some(store) = &a.store else { bail!("--mount needs --store: the mount reads its blobs from there") };
    let run = PullMountOptions {
        pull: PullOptions {
            remote: a.net.options(),
            jobs: a.net.jobs,
            progress: g.progress(),
            ..PullOptions::default()
        },
        store: store.clone(),
        import: ImportOptions { keep_dirlinks: a.keep_dirlinks, ..Default::default() },
    };
    let done = pipeline::pull_mount(src, dest, &run).map_err(|e| run_failed(e, false))?;
    match &done.brought {
        Brought::Pulled(r) => super::pull::report(r, g),
        Brought::Imported(imported) => super::import::report_dropped(imported, src, g),
    }
    if let Some(o) = &a.output {
        super::write_output(Some(o), &done.manifest)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--image LAYOUT[:TAG] BUNDLE` (see [`pipeline::image_bundle`]).
fn unpack_image(image: &str, bundle: &Path, a: &Args, opts: &UnpackOptions, g: Global) -> anyhow::Result<ExitCode> {
    if a.update {
        bail!("--update is for a manifest and DEST; a bundle is unpacked fresh");
    }
    let platform = match &a.platform {
        Some(p) => Some(
            crate::oci::Platform::parse(p).with_context(|| format!("--platform {p:?}: expected OS/ARCH[/VARIANT]"))?,
        ),
        None => None,
    };
    let run = ImageUnpackOptions {
        import: ImportOptions { platform, keep_dirlinks: a.keep_dirlinks, ..ImportOptions::default() },
        remote: a.net.options(),
        unpack: opts.clone(),
        store: a.store.clone(),
    };
    if a.lazy {
        return super::mount::lazy_bundle(image, bundle, a, g);
    }
    if a.mount {
        return mount_image(image, bundle, &run, g);
    }
    let done = pipeline::image_bundle(image, bundle, &run).map_err(|e| run_failed(e, true))?;
    super::import::report_dropped(&done.imported, image, g);
    report(&done.unpack, g);
    Ok(ExitCode::SUCCESS)
}

/// `--image IMAGE BUNDLE --mount` (see [`pipeline::image_mount_bundle`]).
fn mount_image(image: &str, bundle: &Path, run: &ImageUnpackOptions, g: Global) -> anyhow::Result<ExitCode> {
    let done = pipeline::image_mount_bundle(image, bundle, run).map_err(|e| run_failed(e, true))?;
    super::import::report_dropped(&done.imported, image, g);
    Ok(ExitCode::SUCCESS)
}
