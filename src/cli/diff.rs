//! `ocix diff TARGET [MANIFEST]`: the drift audit.

use super::Global;
use crate::diff::{DiffOptions, Excludes, Field, Finding, diff_each, diff_read};
use crate::manifest::Compact;
use crate::manifest::compact::{StreamPlan, plan_read};
use anyhow::{Context as _, bail};
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `ocix diff`; the long help is [`LONG_HELP`].
#[derive(clap::Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// The actual tree: a directory to scan, a manifest file (`-` for
    /// standard input), or a bundle directory (see --help).
    pub target: PathBuf,
    /// The expected manifest (`-` for standard input). Required unless
    /// TARGET is a bundle.
    pub manifest: Option<PathBuf>,
    /// Print the findings as a JSON array of objects ({"path", "what":
    /// "missing"|"extra"|"changed", "field", "xattr", "expected", "actual"}).
    #[arg(long)]
    pub json: bool,
    /// Do not compare this field (repeatable, or comma-separated): type,
    /// link, mode, uid, gid, size, digest, zeros, target, rdev, xattr (all
    /// xattrs), xattr:NAME (one xattr, e.g. xattr:security.selinux), mtime.
    #[arg(long, value_name = "FIELD", value_delimiter = ',')]
    pub ignore: Vec<String>,
    /// Also compare the advisory user and group names (uname, gname).
    #[arg(long)]
    pub names: bool,
    /// How a directory TARGET is read.
    #[command(flatten)]
    pub tree: super::TreeArgs,
}

/// Shown after the options by `ocix diff --help`.
pub const LONG_HELP: &str = "\
TARGET is the actual tree: a directory (scanned now, read-only, without a
blob store) or a manifest file. MANIFEST is the expected tree. Forms:

  ocix diff DIR MANIFEST      scan DIR, compare it with MANIFEST
  ocix diff ACTUAL MANIFEST   compare two manifests
  ocix diff BUNDLE            a bundle written by `ocix unpack --image`:
                              compare BUNDLE/rootfs with BUNDLE/ocix.cbor

Output: one line per finding, in manifest order (depth first, children by
name):
  missing /p                  expected, not there
  extra /p                    there, not expected
  /p: FIELD EXPECTED -> ACTUAL
  /p: xattr NAME added|removed|changed
A missing or extra directory is reported once, not with everything inside
it. When the type changed, type-specific fields are not compared and the
entry is not descended into. Every name of a hardlinked inode (a file,
symlink, device, fifo or socket) shows the inode's fields; `link` is the
first name of its hardlink group (`/b: link /a -> (none)`: b no longer
shares its inode with a). Paths are
escaped to stay on one line (`\\\\`, `\\n`, `\\xNN` for bytes that are not UTF-8).

Fields: type, link, mode, uid, gid, uname, gname, size, digest (content),
zeros (zero runs, i.e. holes), target (symlink), rdev (device numbers),
xattr, mtime (seconds and nanoseconds). uname and gname are advisory and
only compared with --names.

Exit status: 0 no drift, 1 drift found, 2 error.";

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let mut opts = DiffOptions {
        excludes: Excludes::new(&a.tree.exclude).context("invalid --exclude pattern")?,
        ..DiffOptions::default()
    };
    for spec in &a.ignore {
        opts.ignore_spec(spec)?;
    }
    if a.names {
        opts.compare(Field::Uname);
        opts.compare(Field::Gname);
    }
    if a.target == Path::new("-") && a.manifest.as_deref() == Some(Path::new("-")) {
        bail!("only one of TARGET and MANIFEST can be standard input");
    }

    let is_dir = a.target != Path::new("-")
        && std::fs::metadata(&a.target).with_context(|| format!("{}: cannot access", a.target.display()))?.is_dir();
    let (expected, actual) = match (&a.manifest, is_dir) {
        (Some(m), true) => (expected(m)?, scan(&a.target, &a, g)?),
        (Some(m), false) => (expected(m)?, super::read_compact(&a.target)?),
        (None, true) => {
            let cbor = a.target.join("ocix.cbor");
            let rootfs = a.target.join("rootfs");
            if !cbor.is_file() || !rootfs.is_dir() {
                bail!(
                    "{}: no MANIFEST given and this is not a bundle (BUNDLE/ocix.cbor and BUNDLE/rootfs/)",
                    a.target.display()
                );
            }
            g.info(&format!("bundle: comparing {} with {}", rootfs.display(), cbor.display()));
            (expected(&cbor)?, scan(&rootfs, &a, g)?)
        }
        (None, false) => bail!("{}: a manifest needs the expected MANIFEST to compare with", a.target.display()),
    };

    // findings go out as they are found; after a write fails they are
    // still counted, for the exit status
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut failed: Option<std::io::Error> = None;
    let mut first = true;
    let json = a.json;
    let mut emit = |f: Finding| {
        if failed.is_some() {
            return;
        }
        let r = if json {
            let sep: &[u8] = if first { b"[\n" } else { b",\n" };
            out.write_all(sep).and_then(|()| serde_json::to_writer(&mut out, &f).map_err(std::io::Error::other))
        } else {
            writeln!(out, "{f}")
        };
        first = false;
        if let Err(e) = r {
            failed = Some(e);
        }
    };
    let found = match expected {
        Expected::Whole(expected) => diff_each(&expected, &actual, &opts, &mut emit),
        Expected::Stream { mut file, len, plan, path } => {
            let r = file.rewind().with_context(|| format!("{}: cannot read", path.display())).and_then(|()| {
                diff_read(&mut file, len, &plan, &actual, &opts, &mut emit)
                    .with_context(|| format!("{}: invalid OCIX manifest", super::shown(&path)))
            });
            match r {
                Ok(n) => n,
                Err(e) => {
                    // what was found before the fault still goes out
                    let _ = out.flush();
                    return Err(e);
                }
            }
        }
    };
    if failed.is_none() {
        let end: &[u8] = if !json {
            b""
        } else if first {
            b"[\n]\n"
        } else {
            b"\n]\n"
        };
        if let Err(e) = out.write_all(end).and_then(|()| out.flush()) {
            failed = Some(e);
        }
    }
    drop(out);
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("writing standard output"));
        }
        _ => {}
    }
    g.info(&format!("{found} findings"));
    Ok(if found == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The expected manifest: a regular file is read as a stream (checked
/// once through, then compared entry by entry, never held whole); standard
/// input or a pipe is decoded whole.
enum Expected {
    Whole(Compact),
    Stream { file: std::fs::File, len: u64, plan: StreamPlan, path: PathBuf },
}

fn expected(path: &Path) -> anyhow::Result<Expected> {
    if path != Path::new("-") {
        let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let md = file.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
        if md.is_file() {
            let len = md.len();
            let plan =
                plan_read(&mut file, len).with_context(|| format!("{}: invalid OCIX manifest", super::shown(path)))?;
            return Ok(Expected::Stream { file, len, plan, path: path.to_path_buf() });
        }
    }
    Ok(Expected::Whole(super::read_compact(path)?))
}

fn scan(dir: &Path, a: &Args, g: Global) -> anyhow::Result<Compact> {
    let opts = a.tree.scan_options(0, g);
    let scan = super::scan_tree(dir, None, &opts, g)?;
    Ok(scan.manifest)
}
