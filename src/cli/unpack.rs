//! `ocix unpack M --store STORE DEST`: materialize a manifest into a rootfs;
//! `ocix unpack --image LAYOUT[:TAG] BUNDLE`: an OCI image into a runtime
//! bundle (import, then unpack, then the runtime config), as `umoci unpack`;
//! the image may be `docker://HOST/REPO:TAG` in a registry, its layers
//! streamed.

use super::Global;
use crate::materialize::{IdMap, UnpackError, UnpackOptions, unpack};
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
    /// a store to keep the image's contents in (default: a temporary one
    /// inside BUNDLE, removed afterwards).
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
        store_verified: false,
        failed: None,
        allow_overlay_xattrs: a.allow_overlay_xattrs,
    };
    if let Some(image) = &a.image {
        let [bundle] = a.paths.as_slice() else { bail!("with --image, give only the BUNDLE directory") };
        return unpack_image(image, bundle, &a, &opts, g);
    }
    let [manifest, dest] = a.paths.as_slice() else { bail!("give MANIFEST and DEST (or --image LAYOUT[:TAG] BUNDLE)") };
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
    let m = super::read_manifest(manifest)?;
    let store = Store::open(store)?;
    let r = unpack(&m, &store, dest, &opts).map_err(|e| unpack_failed(dest, &e))?;
    report(&r, g);
    Ok(ExitCode::SUCCESS)
}

/// An unpack's error, naming DEST, with the flag that allows what was
/// refused where there is one.
fn unpack_failed(dest: &Path, e: &UnpackError) -> anyhow::Error {
    let hint = match e {
        UnpackError::OverlayXattr { .. } => " (--allow-overlay-xattrs)",
        _ => "",
    };
    anyhow::anyhow!("unpacking into {}: {e}{hint}", dest.display())
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

/// `docker://... DEST`: the pull runs on its own thread and the unpack
/// starts as soon as the manifest is in; a writer that needs a blob not yet
/// fetched waits for it (see [`Store::with_arrivals`]). Whichever fails
/// first stops the other. A DEST this run created is removed on failure;
/// the blobs fetched stay in --store, so a rerun fetches only the rest.
fn unpack_remote(src: &str, dest: &Path, a: &Args, opts: &UnpackOptions, g: Global) -> anyhow::Result<ExitCode> {
    use crate::remote::{PullOptions, Remote, pull_with};
    use crate::store::Arrivals;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let remote = Remote::parse(src)?;
    let prefetch = super::pull::read_prefetch(a.prefetch.as_deref())?;
    let dest_existed = check_dest(dest, a.update)?;
    let temp_store = a.store.is_none();
    let store_path = match &a.store {
        Some(p) => p.clone(),
        None => beside(dest, "ocix-store")?,
    };
    let arrivals = Arc::new(Arrivals::new());
    let store = match Store::create(&store_path) {
        Ok(s) => s.with_arrivals(arrivals.clone()),
        Err(e) => {
            if temp_store {
                let _ = std::fs::remove_dir_all(&store_path);
            }
            return Err(e.into());
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let popts = PullOptions {
        remote: a.net.options(),
        jobs: a.net.jobs,
        prefetch,
        manifest: None,
        progress: g.progress(),
        cancel: Some(cancel.clone()),
    };
    // a fresh store of our own holds only blobs the pull has just verified:
    // they can become the files without being read again; and an unpack
    // that fails stops the pull at once, even while a writer still waits
    // for a blob
    let opts = UnpackOptions {
        progress: false,
        link: opts.link || temp_store,
        store_verified: temp_store,
        failed: Some(cancel.clone()),
        ..opts.clone()
    };
    let (pulled, unpacked) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let puller = s.spawn(|| {
            // readers must never wait for a pull that is gone, even one
            // that panicked
            let close = CloseOnDrop(&arrivals);
            let r = pull_with(&remote, &store, &popts, move |m| {
                let _ = tx.send(m.clone());
            });
            close.0.close(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            r
        });
        let unpacked = rx.recv().ok().map(|m| {
            let r = unpack(&m, &store, dest, &opts);
            if r.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            r
        });
        let pulled = puller.join().map_err(|_| anyhow::anyhow!("pulling {src}: the pull thread panicked"));
        (pulled, unpacked)
    });
    // refused before anything was written: DEST is as it was
    let untouched = matches!(unpacked, Some(Err(UnpackError::OverlayXattr { .. })));
    let result = (|| -> anyhow::Result<()> {
        if let Ok(Err(crate::remote::RemoteError::NotOcix { .. })) = &pulled {
            // an ordinary image: imported layer by layer into the store
            // instead, then unpacked (as `--image`, without the bundle)
            return unpack_ordinary(src, dest, &store, a, &opts, g);
        }
        let r = match (pulled?, &unpacked) {
            // the pull was stopped because the unpack failed: say why
            (Err(crate::remote::RemoteError::Cancelled { .. }), Some(Err(e))) => return Err(unpack_failed(dest, e)),
            (r, _) => r.map_err(|e| anyhow::anyhow!("pulling {src}: {e}"))?,
        };
        super::pull::report(&r, g);
        let Some(unpacked) = unpacked else { bail!("pulling {src}: the manifest never arrived") };
        let ur = unpacked.map_err(|e| unpack_failed(dest, &e))?;
        report(&ur, g);
        if let Some(o) = &a.output {
            super::write_output(Some(o), &r.manifest_bytes)?;
        }
        Ok(())
    })();
    if temp_store {
        drop(store);
        let _ = std::fs::remove_dir_all(&store_path);
    }
    if let Err(e) = result {
        if !dest_existed {
            // nothing half-made is left under a name this run created
            let _ = std::fs::remove_dir_all(dest);
        } else if !a.update && !untouched {
            return Err(e.context(format!("{}: partly unpacked; rerun with --update to complete it", dest.display())));
        }
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// `unpack docker://...` of an ordinary OCI/Docker image: its layers
/// streamed and applied in memory into `store` (see `import`), then the
/// tree unpacked into `dest`; `-o` keeps the manifest.
fn unpack_ordinary(
    src: &str,
    dest: &Path,
    store: &Store,
    a: &Args,
    opts: &UnpackOptions,
    g: Global,
) -> anyhow::Result<()> {
    let r = crate::remote::Reference::parse(src)?;
    let iopts = crate::oci::ImportOptions { keep_dirlinks: a.keep_dirlinks, ..Default::default() };
    let imported = crate::remote::image::import_remote(&r, Some(store), &iopts, &a.net.options())
        .map_err(|e| anyhow::anyhow!("importing {src}: {e}"))?;
    g.info(&format!("{src}: an ordinary image, {} layers imported", imported.image.layers.len()));
    super::import::report_dropped(&imported, src, g);
    let ur = unpack(&imported.manifest, store, dest, opts).map_err(|e| unpack_failed(dest, &e))?;
    report(&ur, g);
    if let Some(o) = &a.output {
        super::write_output(Some(o), &imported.manifest.to_bytes()?)?;
    }
    Ok(())
}

/// `docker://... DEST --mount`: every blob pulled into --store (an ocix
/// manifest), or the image imported into it (an ordinary image), then DEST
/// mounted read-only.
fn mount_remote(src: &str, dest: &Path, a: &Args, g: Global) -> anyhow::Result<ExitCode> {
    use crate::remote::{PullOptions, Remote, RemoteError, pull};
    let Some(store_path) = &a.store else { bail!("--mount needs --store: the mount reads its blobs from there") };
    let store = Store::create(store_path)?;
    let remote = Remote::parse(src)?;
    let popts =
        PullOptions { remote: a.net.options(), jobs: a.net.jobs, progress: g.progress(), ..PullOptions::default() };
    let (m, bytes) = match pull(&remote, &store, &popts) {
        Ok(r) => {
            super::pull::report(&r, g);
            (r.manifest, r.manifest_bytes)
        }
        Err(RemoteError::NotOcix { .. }) => {
            let r = crate::remote::Reference::parse(src)?;
            let iopts = crate::oci::ImportOptions { keep_dirlinks: a.keep_dirlinks, ..Default::default() };
            let imported = crate::remote::image::import_remote(&r, Some(&store), &iopts, &a.net.options())
                .map_err(|e| anyhow::anyhow!("importing {src}: {e}"))?;
            super::import::report_dropped(&imported, src, g);
            let bytes = imported.manifest.to_bytes()?;
            (imported.manifest, bytes)
        }
        Err(e) => return Err(anyhow::anyhow!("pulling {src}: {e}")),
    };
    if let Some(o) = &a.output {
        super::write_output(Some(o), &bytes)?;
    }
    if !dest.exists() {
        std::fs::create_dir(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    }
    let digest = crate::manifest::Digest::of(&bytes);
    crate::mount::mount(&m, &digest, &store, dest, &Default::default())
        .with_context(|| format!("mounting {src} at {}", dest.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Closes the arrivals with an error if the pull ends without closing them.
struct CloseOnDrop<'a>(&'a crate::store::Arrivals);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(Err("the pull stopped".into()));
    }
}

/// Refuses a DEST the unpack would refuse, before any network traffic:
/// a symlink, a non-directory, or (without `update`) a non-empty directory.
/// Returns whether it exists.
fn check_dest(dest: &Path, update: bool) -> anyhow::Result<bool> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.file_type().is_symlink() => {
            bail!("{}: destination is a symlink (refusing to follow it)", dest.display())
        }
        Ok(md) if !md.is_dir() => bail!("{}: destination exists and is not a directory", dest.display()),
        Ok(_) if !update && std::fs::read_dir(dest)?.next().is_some() => bail!(
            "{}: destination is not empty (use --update to bring an existing tree to the manifest)",
            dest.display()
        ),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{}", dest.display())),
    }
}

/// A new hidden directory beside `path` (same directory, so the same
/// filesystem), created here: `.NAME.WHAT.PID[.N]`. A name left by a killed
/// run (with the same pid) is never reused: what is in it is not known.
fn beside(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: needs a final path component", path.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let base = format!(".{name}.{what}.{}", std::process::id());
    for n in 0..100 {
        let p = parent.join(if n == 0 { base.clone() } else { format!("{base}.{n}") });
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("{}: cannot create", p.display())),
        }
    }
    bail!("{}: no free name for a temporary store beside it", path.display())
}

/// `--image LAYOUT[:TAG] BUNDLE`.
fn unpack_image(image: &str, bundle: &Path, a: &Args, opts: &UnpackOptions, g: Global) -> anyhow::Result<ExitCode> {
    use crate::oci::{ImportOptions, import_image, split_ref};
    if a.update {
        bail!("--update is for a manifest and DEST; a bundle is unpacked fresh");
    }
    let mut created = false;
    match std::fs::symlink_metadata(bundle) {
        Ok(md) if md.file_type().is_symlink() => bail!("{}: bundle is a symlink; refusing", bundle.display()),
        Ok(md) if !md.is_dir() => bail!("{}: exists and is not a directory", bundle.display()),
        Ok(_) if std::fs::read_dir(bundle)?.next().is_some() => {
            bail!("{}: bundle directory is not empty", bundle.display())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(bundle).with_context(|| format!("{}: cannot create bundle", bundle.display()))?;
            created = true;
        }
        Err(e) => return Err(e).with_context(|| format!("{}", bundle.display())),
    }
    let (layout, tag) = split_ref(image);
    let platform = match &a.platform {
        Some(p) => Some(
            crate::oci::Platform::parse(p).with_context(|| format!("--platform {p:?}: expected OS/ARCH[/VARIANT]"))?,
        ),
        None => None,
    };
    let temp_store = a.store.is_none() && !a.mount;
    let store_path = a.store.clone().unwrap_or_else(|| bundle.join(if a.mount { "store" } else { ".ocix-store" }));
    let store = Store::create(&store_path)?;
    let mut mounted = None;
    let iopts = ImportOptions {
        tag: tag.map(str::to_string),
        platform,
        keep_dirlinks: a.keep_dirlinks,
        ..ImportOptions::default()
    };
    let result = (|| -> anyhow::Result<()> {
        let imported = if image.starts_with("docker://") {
            let r = crate::remote::Reference::parse(image)?;
            let iopts = ImportOptions { tag: None, ..iopts };
            crate::remote::image::import_remote(&r, Some(&store), &iopts, &a.net.options())
        } else {
            import_image(Path::new(layout), Some(&store), &iopts)
        }
        .map_err(|e| anyhow::anyhow!("importing {image}: {e}"))?;
        super::import::report_dropped(&imported, image, g);
        if a.mount {
            let bytes = imported.manifest.to_bytes()?;
            super::write_output(Some(&bundle.join("ocix.cbor")), &bytes)?;
            let rootfs = super::mount::mount_bundle_rootfs(&bytes, &imported.manifest, &store, bundle)?;
            mounted = Some(rootfs.clone());
            return write_runtime_config(bundle, &rootfs, &imported.image, opts, false);
        }
        let rootfs = bundle.join("rootfs");
        // a store of our own, about to be removed: its blobs can simply
        // become the files (no second copy of the data)
        let opts = UnpackOptions { link: opts.link || temp_store, store_verified: temp_store, ..opts.clone() };
        let r = unpack(&imported.manifest, &store, &rootfs, &opts).map_err(|e| unpack_failed(&rootfs, &e))?;
        report(&r, g);
        super::write_output(Some(&bundle.join("ocix.cbor")), &imported.manifest.to_bytes()?)?;
        write_runtime_config(bundle, &rootfs, &imported.image, &opts, r.rootless)?;
        Ok(())
    })();
    if temp_store {
        let _ = std::fs::remove_dir_all(&store_path);
    }
    if let (Err(_), Some(rootfs)) = (&result, &mounted) {
        // never remove a bundle through its mounted rootfs
        crate::mount::umount(rootfs).with_context(|| format!("{}: left mounted", rootfs.display()))?;
    }
    if result.is_err() && created {
        // nothing half-made is left behind under a name we created
        let _ = std::fs::remove_dir_all(bundle);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// BUNDLE/config.json from the image config, as `umoci unpack` writes it;
/// the rootless variant when the rootfs was unpacked rootless.
fn write_runtime_config(
    bundle: &Path,
    rootfs: &Path,
    image: &crate::oci::Image,
    opts: &UnpackOptions,
    rootless: bool,
) -> anyhow::Result<()> {
    use crate::bundle::{BundleOptions, id_mapping, parse_image_config, runtime_config, write_bundle_config};
    let config = parse_image_config(&image.config_raw)?;
    let maps = |m: &[IdMap]| m.iter().map(|m| id_mapping(m.container, m.host, m.size)).collect::<Result<Vec<_>, _>>();
    let bopts = BundleOptions {
        rootless,
        uid_mappings: maps(&opts.uid_map)?,
        gid_mappings: maps(&opts.gid_map)?,
        ..Default::default()
    };
    write_bundle_config(bundle, &runtime_config(&config, rootfs, &bopts)?)?;
    Ok(())
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
