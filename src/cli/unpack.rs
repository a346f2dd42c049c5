//! `ocix unpack M --store STORE DEST`: materialize a manifest into a rootfs.

use super::Global;
use crate::materialize::{IdMap, UnpackOptions, unpack};
use crate::store::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// Create every entry of the manifest under DEST: contents from the store
/// (each verified by sha256 while written), owners, modes, xattrs, mtimes,
/// hardlinks, devices, fifos; zero runs become holes. DEST must be absent or
/// empty unless --update. Without root (or with --rootless) owners are kept
/// in the user.rootlesscontainers xattr and devices become empty files; one
/// summary lists everything that could not be applied.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The manifest (`-` for standard input).
    pub manifest: PathBuf,
    /// The destination directory (created if absent).
    pub dest: PathBuf,
    /// The blob store holding the manifest's file contents.
    #[arg(long)]
    pub store: PathBuf,
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
    /// Writer threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let m = super::read_manifest(&a.manifest)?;
    let store = Store::open(&a.store)?;
    let opts = UnpackOptions {
        update: a.update,
        rootless: a.rootless,
        uid_map: a.uid_map,
        gid_map: a.gid_map,
        threads: a.threads,
        progress: g.progress(),
    };
    let r =
        unpack(&m, &store, &a.dest, &opts).map_err(|e| anyhow::anyhow!("unpacking into {}: {e}", a.dest.display()))?;
    let lines = r.summary(if g.verbose > 0 { usize::MAX } else { 3 });
    if !lines.is_empty() {
        g.warn(&format!("not everything could be applied{}:", if r.rootless { " (rootless)" } else { "" }));
        for l in lines {
            g.warn(&format!("  {l}"));
        }
    }
    g.info(&format!(
        "{} dirs, {} files written ({} bytes), {} kept, {} hardlinks, {} other entries, {} removed",
        r.dirs, r.files_written, r.bytes_written, r.files_kept, r.hardlinks, r.others, r.removed
    ));
    Ok(ExitCode::SUCCESS)
}
