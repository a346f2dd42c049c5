//! `ocix scan DIR`: describe a tree as a manifest.

use super::Global;
use crate::scan::{ScanOptions, scan_dir};
use crate::store::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// Walk DIR (never following symlinks, staying on one filesystem unless asked)
/// and write its canonical manifest. Fatal: an unreadable entry, an entry that
/// changes while it is read, a file that grows while hashed (no manifest is
/// written). Warned and skipped: an entry that vanishes between listing and
/// reading.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The directory to describe.
    pub dir: PathBuf,
    /// Where to write the manifest (`-` for standard output).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// Also put every file's content into this blob store
    /// (STORE/blobs/sha256/<hex>; created if missing).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Leave out paths matching this glob (repeatable). Without `/` it matches
    /// a name at any depth; with `/`, the path relative to DIR.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// The tree was unpacked without privilege: take owners from the
    /// user.rootlesscontainers xattr instead of the files' real owners.
    #[arg(long)]
    pub rootless: bool,
    /// Descend into mount points below DIR.
    #[arg(long)]
    pub cross_mounts: bool,
    /// Hashing threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let store = match &a.store {
        Some(p) => Some(Store::create(p)?),
        None => None,
    };
    let opts = ScanOptions {
        excludes: a.exclude.clone(),
        rootless: a.rootless,
        cross_mounts: a.cross_mounts,
        threads: a.threads,
        progress: g.progress(),
    };
    let scan =
        scan_dir(&a.dir, store.as_ref(), &opts).map_err(|e| anyhow::anyhow!("scanning {}: {e}", a.dir.display()))?;
    for w in &scan.warnings {
        g.warn(w);
    }
    let bytes = scan.manifest.to_bytes()?;
    super::write_output(Some(&a.output), &bytes)?;
    g.info(&format!("{} files, {} bytes hashed, manifest {} bytes", scan.files, scan.bytes, bytes.len()));
    Ok(ExitCode::SUCCESS)
}
