//! `ocix digest M`: the manifest's identity.

use super::Global;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Print the sha256 digest of a manifest's bytes, after checking that it is a
/// valid canonical manifest.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The manifest (`-` for standard input).
    pub manifest: PathBuf,
}

/// Runs the subcommand.
pub fn run(a: Args, _g: Global) -> anyhow::Result<ExitCode> {
    let data = super::read_input(&a.manifest)?;
    crate::manifest::Manifest::from_bytes(&data)
        .with_context(|| format!("{}: invalid OCIX manifest", a.manifest.display()))?;
    println!("{}", crate::manifest::Digest::of(&data));
    Ok(ExitCode::SUCCESS)
}
