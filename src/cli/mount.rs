//! `ocix mount M --store S MNT`: a manifest as a mounted tree, no file data
//! copied; `ocix umount MNT`.

use super::Global;
use crate::manifest::{Digest, Manifest};
use crate::mount::{MountOptions, mount, umount};
use crate::store::Store;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Mount MANIFEST at MNT as an overlay whose files read their blobs from
/// --store directly: no file data is copied, and the page cache of a blob
/// is shared by every mount naming it. The tree's metadata becomes an EROFS
/// image, made once per manifest and cached in STORE/.ocix-mount/. Every
/// blob must be present with the right size before anything is mounted;
/// digests are checked once and remembered (--verify checks them again).
/// Read-only unless --upper and --work are given. Needs root, Linux 6.12
/// or later (EROFS image files, overlay data-only layers) and a store on a
/// disk filesystem (the kernel cannot mount an image file on tmpfs);
/// `ocix unpack` writes the tree out instead.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The manifest.
    pub manifest: PathBuf,
    /// The blob store holding the manifest's file contents.
    #[arg(long)]
    pub store: PathBuf,
    /// Where to mount (an existing directory).
    pub target: PathBuf,
    /// Make the mount writable: changes go into this directory.
    #[arg(long, requires = "work")]
    pub upper: Option<PathBuf>,
    /// overlay's work directory: empty, on the same filesystem as --upper.
    #[arg(long, requires = "upper")]
    pub work: Option<PathBuf>,
    /// Hash every blob again, even those an earlier mount checked.
    #[arg(long)]
    pub verify: bool,
}

/// Unmount a tree `ocix mount` made (anything else mounted there is left
/// alone).
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    pub target: PathBuf,
}

/// Runs `ocix mount`.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let bytes = super::read_input(&a.manifest)?;
    let m = Manifest::from_bytes(&bytes).with_context(|| format!("{}: invalid OCIX manifest", a.manifest.display()))?;
    let store = Store::open(&a.store)?;
    let opts = MountOptions { upper: a.upper.clone(), work: a.work.clone(), verify: a.verify };
    let r = mount(&m, &Digest::of(&bytes), &store, &a.target, &opts)
        .map_err(super::mount_failed)
        .with_context(|| format!("mounting {} at {}", a.manifest.display(), a.target.display()))?;
    g.info(&format!(
        "{} mounted at {} ({}, image {} {}; {} blobs, {} hashed)",
        a.manifest.display(),
        a.target.display(),
        if a.upper.is_some() { "writable" } else { "read-only" },
        r.image.display(),
        if r.image_written { "written" } else { "cached" },
        r.blobs,
        r.blobs_hashed
    ));
    Ok(ExitCode::SUCCESS)
}

/// Runs `ocix umount`.
pub fn run_umount(a: UmountArgs, _g: Global) -> anyhow::Result<ExitCode> {
    umount(&a.target).map_err(super::mount_failed)?;
    Ok(ExitCode::SUCCESS)
}
