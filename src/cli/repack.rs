//! `ocix repack --image LAYOUT:NEWTAG BUNDLE`: a bundle's changes since
//! `ocix unpack --image` -> one new layer on its image, as `umoci repack`.

use super::Global;
use super::export::{LayerArgs, layout_and_tag};
use crate::export::repack::{RepackOptions, repack};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Add the changes made in BUNDLE/rootfs since `ocix unpack --image
/// LAYOUT:TAG BUNDLE` (or the last repack) to that image as one new layer,
/// and tag the result NEWTAG in LAYOUT: added and changed entries (a change
/// of metadata alone included), whiteouts for removed ones (an opaque
/// whiteout where every old entry of a directory is gone). BUNDLE/ocix.cbor
/// is brought up to date, so the next repack adds only the next change.
/// A rootless bundle's owners are read from user.rootlesscontainers.
///
/// Files whose size and mtime match BUNDLE/ocix.cbor and whose inode has
/// not changed (ctime) since that record was written are not read again;
/// --rehash reads every file.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The bundle, as `ocix unpack --image` made it.
    pub bundle: PathBuf,
    /// The layout holding the bundle's image, and the tag for the new image.
    #[arg(long, value_name = "LAYOUT:NEWTAG")]
    pub image: String,
    /// Replace the tag if it exists.
    #[arg(long)]
    pub force: bool,
    /// Read owners from user.rootlesscontainers even if the bundle was not
    /// unpacked rootless.
    #[arg(long)]
    pub rootless: bool,
    /// Read and hash every file, trusting no recorded content.
    #[arg(long)]
    pub rehash: bool,
    /// Hashing and compressing threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let (layout, tag) = layout_and_tag(&a.image, "--image")?;
    let opts = RepackOptions {
        compression: a.layer.compress,
        threads: a.threads,
        force: a.force,
        rootless: a.rootless,
        rehash: a.rehash,
    };
    let r = repack(&a.bundle, &layout, &tag, &opts)
        .map_err(|e| {
            let hint = super::export_hint(&e);
            super::hinted(e, hint)
        })
        .with_context(|| format!("repacking {} into {}", a.bundle.display(), a.image))?;
    g.info(&format!(
        "{}: {} entries written, {} removed, {} files read; layer {} ({} bytes)",
        a.image, r.changed, r.removed, r.hashed, r.image.layer.digest, r.image.layer.size
    ));
    if !g.quiet {
        println!("{}", r.image.manifest.digest);
    }
    Ok(ExitCode::SUCCESS)
}
