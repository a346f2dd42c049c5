//! `ocix show M`: list a manifest as text, JSON or a BSD mtree spec.

use super::Global;
use crate::render::{write_json, write_mtree, write_text};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `ocix show`; the long help is [`LONG_HELP`].
#[derive(clap::Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// The manifest (`-` for standard input).
    pub manifest: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "mtree")]
    pub json: bool,
    /// Print a BSD mtree specification instead of text.
    #[arg(long)]
    pub mtree: bool,
    /// Write to this file instead of standard output (`-` for standard
    /// output).
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
}

/// Shown after the options by `ocix show --help`.
pub const LONG_HELP: &str = "\
Every entry is listed in manifest order (depth first, children by name).

Text (the default): one line per entry with type, mode, uid:gid, size,
mtime (UTC), path, and where they apply `-> target` (symlink), `=> path`
(hardlink: the first name of its inode, whose metadata the line shows), the
content digest, zeros=N (zero runs), xattrs=N and dev=MAJ,MIN. Paths are
escaped so each stays on one line (`\\\\`, `\\n`, `\\xNN`).

--json: a JSON array, one object per entry and line: path, type, mode (octal
string), uid, gid, uname, gname, mtime {sec, nsec}, xattrs {name: hex
value}, size, digest, zeros [[first block, count]], target, link (for a
hardlink, the only other key), rdev {major, minor}.

--mtree: a BSD mtree specification (`./path` lines, octal-escaped names,
keywords type, mode, uid, gid, time, size, nlink, sha256digest, link,
device) to check a real tree with `mtree -f SPEC -p DIR`. mtree has no
keywords for xattrs or zero runs; those are not checked that way.";

/// Runs the subcommand.
pub fn run(a: Args, _g: Global) -> anyhow::Result<ExitCode> {
    let m = super::read_compact(&a.manifest)?;
    let render = |out: &mut dyn std::io::Write| -> std::io::Result<()> {
        if a.json {
            write_json(&m, out)
        } else if a.mtree {
            write_mtree(&m, out)
        } else {
            write_text(&m, out)
        }
    };
    if a.output.as_deref().is_none_or(|p| p == std::path::Path::new("-")) {
        // standard output: streamed, not held whole
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        return match render(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
            Err(e) => Err(anyhow::Error::new(e).context("writing standard output")),
        };
    }
    let mut buf = Vec::new();
    render(&mut buf)?;
    super::write_output(a.output.as_ref(), &buf)?;
    Ok(ExitCode::SUCCESS)
}
