//! The `ocix` command line: clap definitions, one file per subcommand. This
//! is the only code that prints or picks exit codes; everything it does is a
//! call into the library.

mod diff;
mod digest;
mod export;
mod import;
mod mount;
mod progress;
mod pull;
mod push;
mod repack;
mod scan;
mod show;
mod unpack;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// ocix: move container filesystems between OCI images, canonical OCIX
/// manifests with content-addressed blobs, and real root filesystems.
#[derive(Parser, Debug)]
#[command(name = "ocix", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a directory tree as a manifest (like `mtree -c`), optionally
    /// storing every file's content as a blob.
    Scan(scan::Args),
    /// Print a manifest's digest (the sha256 of its bytes).
    Digest(digest::Args),
    /// Turn an image of an OCI image layout into a manifest, its file
    /// contents into blobs (layers applied in memory, nothing unpacked).
    Import(import::Args),
    /// List a manifest as text, JSON or a BSD mtree spec.
    Show(show::Args),
    /// Compare a tree (directory, bundle or manifest) against the manifest it
    /// should match; exit 1 on drift.
    Diff(diff::Args),
    /// Materialize a manifest and its blobs into an exact rootfs.
    Unpack(unpack::Args),
    /// Fetch a manifest and the blobs the store lacks from a registry or a
    /// static HTTP store.
    Pull(pull::Args),
    /// Upload a manifest and the blobs a registry lacks, as a tagged OCI
    /// artifact.
    Push(push::Args),
    /// Write a manifest's tree as a one-layer OCI image into an image layout.
    Export(export::Args),
    /// Add a bundle's changes since `unpack --image` to its image as a layer.
    Repack(repack::Args),
    /// Mount a manifest read-only (or writable with --upper) with no file
    /// data copied: an EROFS metadata image over the blob store.
    Mount(mount::Args),
    /// Unmount a tree `ocix mount` made.
    Umount(mount::UmountArgs),
}

/// How a directory tree is read, shared by `scan` and `diff`.
#[derive(clap::Args, Debug, Clone)]
pub struct TreeArgs {
    /// Leave out paths matching this glob (repeatable). Without `/` it matches
    /// a name at any depth; with `/`, the path relative to the directory
    /// (`*` stops at `/`, `**` does not).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// The tree was unpacked without privilege: take owners from the
    /// user.rootlesscontainers xattr instead of the files' real owners.
    #[arg(long)]
    pub rootless: bool,
    /// Descend into mount points below the directory.
    #[arg(long)]
    pub cross_mounts: bool,
}

impl TreeArgs {
    /// The scan options these arguments ask for.
    pub fn scan_options(&self, threads: usize, g: Global) -> crate::scan::ScanOptions {
        crate::scan::ScanOptions {
            excludes: self.exclude.clone(),
            rootless: self.rootless,
            cross_mounts: self.cross_mounts,
            threads,
            progress: g.progress(),
            reuse: None,
        }
    }
}

/// Options every subcommand sees.
#[derive(Clone, Copy, Debug)]
pub struct Global {
    /// `-q`.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Global {
    /// Progress bars on stderr when they may be drawn (stderr is a
    /// terminal, not quiet); otherwise nowhere.
    pub fn progress(&self) -> crate::progress::Progress {
        if !self.quiet && std::io::stderr().is_terminal() {
            crate::progress::Progress::to(std::sync::Arc::new(progress::Bars))
        } else {
            crate::progress::Progress::silent()
        }
    }

    /// Prints a warning unless quiet.
    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!("ocix: warning: {msg}");
        }
    }

    /// Prints an informational line when verbose.
    pub fn info(&self, msg: &str) {
        if self.verbose > 0 {
            eprintln!("ocix: {msg}");
        }
    }
}

/// Runs the command line; exit 0 on success, 2 on error (diff uses 1 for
/// drift).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = Global { quiet: cli.quiet, verbose: cli.verbose };
    let res = match cli.command {
        Command::Scan(a) => scan::run(a, g),
        Command::Digest(a) => digest::run(a, g),
        Command::Import(a) => import::run(a, g),
        Command::Show(a) => show::run(a, g),
        Command::Diff(a) => diff::run(a, g),
        Command::Unpack(a) => unpack::run(a, g),
        Command::Pull(a) => pull::run(a, g),
        Command::Push(a) => push::run(a, g),
        Command::Export(a) => export::run(a, g),
        Command::Repack(a) => repack::run(a, g),
        Command::Mount(a) => mount::run(a, g),
        Command::Umount(a) => mount::run_umount(a, g),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ocix: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads a whole manifest file (`-` is stdin) and decodes it; errors name the
/// file.
pub fn read_manifest(path: &Path) -> anyhow::Result<crate::manifest::Manifest> {
    let data = read_input(path)?;
    crate::manifest::Manifest::from_bytes(&data).with_context(|| format!("{}: invalid OCIX manifest", shown(path)))
}

/// Reads a whole manifest file (`-` is stdin) into the compact form; errors
/// name the file.
///
/// A regular file is decoded as it is read, through a bounded window, so
/// its bytes are never held whole; standard input and other files are read
/// whole first.
pub fn read_compact(path: &Path) -> anyhow::Result<crate::manifest::Compact> {
    use crate::manifest::Compact;
    if path != Path::new("-") {
        let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let md = f.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
        if md.is_file() {
            return Compact::read_from(&mut f, md.len())
                .with_context(|| format!("{}: invalid OCIX manifest", shown(path)));
        }
    }
    let data = read_input(path)?;
    Compact::from_bytes(&data).with_context(|| format!("{}: invalid OCIX manifest", shown(path)))
}

/// Reads a file or stdin (`-`).
pub fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).context("reading standard input")?;
        Ok(v)
    } else {
        std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
    }
}

/// Writes bytes to stdout (`-` or no path), to a new or regular file
/// (atomically: a temporary file beside it, then rename), or into anything
/// else that exists (a device such as /dev/null, a fifo, a symlink's target)
/// by opening it for writing, so such a path is never replaced.
pub fn write_output(path: Option<&PathBuf>, data: &[u8]) -> anyhow::Result<()> {
    write_output_with(path, &mut |w| w.write_all(data)).map(|_| ())
}

/// Writes the canonical bytes of a manifest where [`write_output`] writes,
/// in chunks as they are encoded; returns their length and digest.
pub fn write_manifest(path: &PathBuf, m: &crate::manifest::Compact) -> anyhow::Result<(u64, crate::manifest::Digest)> {
    // a manifest that breaks a rule fails before anything is written
    m.validate()?;
    let mut done = None;
    write_output_with(Some(path), &mut |w| {
        done = Some(m.write_to(w).map_err(|e| match e {
            crate::manifest::WriteError::Io(e) => e,
            e => std::io::Error::other(e),
        })?);
        Ok(())
    })?;
    done.context("manifest not written")
}

/// Writes what `write` produces to stdout (`-` or no path), to a new or
/// regular file (atomically), or into anything else that exists; see
/// [`write_output`].
fn write_output_with(
    path: Option<&PathBuf>,
    write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    match path {
        None => write_stdout(write),
        Some(p) if p == Path::new("-") => write_stdout(write),
        Some(p) => {
            match std::fs::symlink_metadata(p) {
                Ok(md) if !md.file_type().is_file() && !md.is_dir() => {
                    // O_TRUNC: a symlink's target file is rewritten whole; a
                    // device or fifo ignores it
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(p)
                        .with_context(|| format!("{}: cannot open for writing", p.display()))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut f);
                    return write(&mut w)
                        .and_then(|_| w.flush())
                        .with_context(|| format!("{}: cannot write", p.display()));
                }
                _ => {}
            }
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let name = p.file_name().with_context(|| format!("{}: not a file name", p.display()))?;
            let tmp = dir.join(format!(".{}.ocix-tmp-{}", name.to_string_lossy(), std::process::id()));
            let written = std::fs::File::create(&tmp).and_then(|f| {
                let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
                write(&mut w)?;
                w.flush()
            });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("{}: cannot write", tmp.display()));
            }
            std::fs::rename(&tmp, p).with_context(|| {
                let _ = std::fs::remove_file(&tmp);
                format!("{}: cannot write", p.display())
            })
        }
    }
}

fn write_stdout(write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("writing standard output"),
    }
}

fn shown(p: &Path) -> String {
    if p == Path::new("-") { "standard input".to_string() } else { p.display().to_string() }
}

/// A library error with the command-line flag (or command) that helps
/// appended to its message: the library describes the problem, only the
/// command line knows its flags. The error is kept as it is (a caller may
/// downcast to `Hinted<E>`); its message already holds its causes' (the
/// library's errors name their causes in their messages), so no cause is
/// printed after it again.
#[derive(Debug)]
struct Hinted<E> {
    error: E,
    hint: String,
}

impl<E: std::fmt::Display> std::fmt::Display for Hinted<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.error, self.hint)
    }
}

impl<E: std::error::Error> std::error::Error for Hinted<E> {}

/// `error` as an [`anyhow::Error`], with `hint` (empty for none) after its
/// message.
fn hinted<E: std::error::Error + Send + Sync + 'static>(error: E, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Hinted { error, hint: hint.into() })
}

/// The flag that helps with an import's error (empty where there is none).
fn import_hint(e: &crate::oci::ImportError) -> &'static str {
    use crate::oci::{ImportError, SelectError};
    match e {
        ImportError::Select(SelectError::NoPlatform(_)) => " (use --platform OS/ARCH[/VARIANT])",
        ImportError::Select(SelectError::Ambiguous { .. }) => "; give a tag or a more precise --platform",
        _ => "",
    }
}

/// The flag or command that helps with an export's or a repack's error
/// (empty where there is none).
fn export_hint(e: &crate::export::ExportError) -> &'static str {
    use crate::export::{BundleProblem, ExportError};
    match e {
        ExportError::TagExists { .. } => " (use --force to replace it)",
        ExportError::IdMapped(_) => " (--uid-map/--gid-map)",
        ExportError::DockerZstd => ": use --compress gzip",
        ExportError::Bundle { problem: BundleProblem::Missing, .. } => " (`ocix unpack --image` makes it)",
        ExportError::Import(e) => import_hint(e),
        ExportError::Scan(e) => scan_hint(e),
        _ => "",
    }
}

/// The flag that helps with a scan's error (empty where there is none).
fn scan_hint(e: &crate::scan::ScanError) -> &'static str {
    match e {
        crate::scan::ScanError::Pattern(_) => " (--exclude)",
        _ => "",
    }
}

/// Scans `dir` (see [`crate::scan::scan_dir`]), its warnings printed with
/// the flag that changes them.
fn scan_tree(
    dir: &Path,
    store: Option<&crate::store::Store>,
    opts: &crate::scan::ScanOptions,
    g: Global,
) -> anyhow::Result<crate::scan::Scan> {
    use crate::scan::ScanWarning;
    let scan = crate::scan::scan_dir(dir, store, opts)
        .map_err(|e| {
            let hint = scan_hint(&e);
            hinted(e, hint)
        })
        .with_context(|| format!("scanning {}", dir.display()))?;
    for w in &scan.warnings {
        match w {
            ScanWarning::MountPoint(_) => g.warn(&format!("{w} (use --cross-mounts)")),
            _ => g.warn(&w.to_string()),
        }
    }
    Ok(scan)
}

/// The flag or command that helps with a pull's error (empty where there
/// is none).
fn remote_hint(e: &crate::remote::RemoteError) -> &'static str {
    use crate::remote::{ProtocolError, RemoteError};
    match e {
        RemoteError::Protocol { why: ProtocolError::NoManifestDigest, .. } => " (--manifest sha256:...)",
        RemoteError::NotOcix { .. } => {
            "; an ordinary image is read by `ocix import`, `ocix unpack docker://...` or `ocix unpack --image`"
        }
        _ => "",
    }
}

/// The command that helps with a mount's error (empty where there is none).
fn mount_hint(e: &crate::mount::MountError) -> &'static str {
    use crate::mount::{MountError, erofs::ImageError};
    match e {
        MountError::Unsupported { .. } => "; `ocix unpack` materializes the tree without it",
        MountError::Image(ImageError::Unrepresentable { .. }) => " (`ocix unpack` can)",
        MountError::NotOurs { .. } => "; `ocix umount` refuses what is not a mount made by `ocix mount`",
        _ => "",
    }
}

/// A mount's error, with its hint, as an [`anyhow::Error`].
fn mount_failed(e: crate::mount::MountError) -> anyhow::Error {
    let hint = mount_hint(&e);
    hinted(e, hint)
}
