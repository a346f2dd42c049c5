//! `ocix scan DIR`: describe a tree as a manifest.

use super::Global;
use crate::store::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `ocix scan`; the long help is [`LONG_HELP`].
#[derive(clap::Args, Debug)]
#[command(after_long_help = LONG_HELP)]
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
    /// How the tree is read.
    #[command(flatten)]
    pub tree: super::TreeArgs,
    /// Hashing threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Shown by `ocix scan --help`.
pub const LONG_HELP: &str = "\
Walks DIR without following symlinks (DIR itself may be a symlink to a
directory) and without crossing mount points unless --cross-mounts, and writes
its canonical OCIX manifest: the same tree gives the same bytes whatever the
filesystem, inode numbers or directory order.

With --store, every file's content also goes into STORE/blobs/sha256/<hex>:
written to a temporary file and linked under its digest only when complete,
zero blocks left as holes; blobs already present are kept; the store is
synced once at the end.

Fatal (exit 2, no manifest written, every failing path listed): an unreadable
entry, an entry replaced or changed (size, mtime, ctime) while it is read, a
file that grows or shrinks while hashed, an invalid user.rootlesscontainers
value under --rootless. Warnings (the scan goes on): an entry that vanishes
between listing its directory and reading it (left out); a mount point
(recorded as a directory, not descended into).

--rootless also lets the unprivileged owner read its own entries that deny
it (a file of mode 0000, a directory of mode 0311): owner read permission is
lent for the moment of opening and the mode restored at once, as umoci does;
only their ctime changes.

Sockets are recorded (unpack does not create them). Hardlinked entries of
every type but directories (files, symlinks, devices, fifos, sockets) are
grouped by device and inode: the first name in manifest order carries the
content and metadata, the others link to it. A progress line is drawn on a terminal.

Examples:
  ocix scan /srv/rootfs -o rootfs.ocix --store /var/lib/ocix
  ocix scan . --exclude '*.pyc' --exclude /proc -o - | ocix digest -";

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let store = match &a.store {
        Some(p) => Some(Store::create(p)?),
        None => None,
    };
    let opts = a.tree.scan_options(a.threads, g);
    let scan = super::scan_tree(&a.dir, store.as_ref(), &opts, g)?;
    let (len, _) = super::write_manifest(&a.output, &scan.manifest)?;
    g.info(&format!("{} files, {} bytes hashed, manifest {len} bytes", scan.files, scan.bytes));
    Ok(ExitCode::SUCCESS)
}
