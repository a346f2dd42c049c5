//! `ocix export M --store S --image LAYOUT:TAG`: a manifest and its blobs
//! -> a one-layer OCI image in an image layout.

use super::Global;
use crate::export::{ConfigOptions, ExportOptions, export};
use crate::oci::{Compression, split_ref};
use crate::store::Store;
use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::process::ExitCode;

/// Write the tree of manifest M (file contents from --store) as an OCI
/// image whose single layer holds exactly that tree, tagged TAG in the
/// image layout LAYOUT (created if absent; its other blobs and tags are
/// kept). The layer is a canonical tar: the same manifest gives the same
/// layer, diff_id, config and manifest digests on any machine. Zero runs
/// of files become zeros in the tar (most readers cannot read sparse tar
/// entries). Blobs are written first, index.json last and atomically. A
/// socket cannot be put in a tar: a manifest with one is refused.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The manifest (`-` for standard input).
    pub manifest: PathBuf,
    /// The blob store holding the manifest's file contents.
    #[arg(long)]
    pub store: PathBuf,
    /// Where to write: an OCI image layout and the tag to give the image.
    #[arg(long, value_name = "LAYOUT:TAG")]
    pub image: String,
    /// Replace the tag if it exists (the old image's blobs stay).
    #[arg(long)]
    pub force: bool,
    /// Take the image config (Entrypoint, Cmd, Env, ...) and platform of an
    /// existing image; the --config.* flags change it further.
    #[arg(long, value_name = "LAYOUT:TAG")]
    pub from: Option<String>,
    /// Compressing threads (default: one per CPU; the output is the same).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// How a layer is written, shared by `export` and `repack`.
#[derive(clap::Args, Debug, Clone)]
pub struct LayerArgs {
    /// The layer's compression: gzip (read by every consumer), zstd
    /// (faster, smaller) or none.
    #[arg(long, value_name = "gzip|zstd|none", default_value = "gzip", value_parser = parse_compression)]
    pub compress: Compression,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "gzip" => Ok(Compression::Gzip),
        "zstd" => Ok(Compression::Zstd),
        "none" => Ok(Compression::None),
        _ => Err(format!("{s:?}: expected gzip, zstd or none")),
    }
}

/// Image config settings, as `umoci config` names them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Entrypoint, one argument per flag (repeatable).
    #[arg(long = "config.entrypoint", value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Cmd, one argument per flag (repeatable).
    #[arg(long = "config.cmd", value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// An environment entry KEY=VALUE (repeatable; replaces the same KEY).
    #[arg(long = "config.env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// WorkingDir.
    #[arg(long = "config.workingdir", value_name = "DIR")]
    pub working_dir: Option<String>,
    /// User (NAME, UID, NAME:GROUP, UID:GID).
    #[arg(long = "config.user", value_name = "USER")]
    pub user: Option<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "config.label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
}

impl ConfigArgs {
    /// The library's options.
    pub fn options(&self) -> anyhow::Result<ConfigOptions> {
        let labels = self
            .label
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--config.label {l:?}: expected KEY=VALUE"))
            })
            .collect::<anyhow::Result<_>>()?;
        for e in &self.env {
            if !e.contains('=') {
                bail!("--config.env {e:?}: expected KEY=VALUE");
            }
        }
        Ok(ConfigOptions {
            entrypoint: (!self.entrypoint.is_empty()).then(|| self.entrypoint.clone()),
            cmd: (!self.cmd.is_empty()).then(|| self.cmd.clone()),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            user: self.user.clone(),
            labels,
        })
    }
}

/// Splits `LAYOUT:TAG`, which must name a tag.
pub fn layout_and_tag(s: &str, flag: &str) -> anyhow::Result<(PathBuf, String)> {
    let (layout, tag) = split_ref(s);
    let Some(tag) = tag else { bail!("{flag} {s:?}: expected LAYOUT:TAG") };
    if layout.is_empty() {
        bail!("{flag} {s:?}: expected LAYOUT:TAG");
    }
    Ok((PathBuf::from(layout), tag.to_string()))
}

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let (layout, tag) = layout_and_tag(&a.image, "--image")?;
    let m = super::read_manifest(&a.manifest)?;
    let store = Store::open(&a.store)?;
    let from = a.from.as_deref().map(|f| {
        let (l, t) = split_ref(f);
        (PathBuf::from(l), t.map(str::to_string))
    });
    let opts = ExportOptions {
        compression: a.layer.compress,
        threads: a.threads,
        force: a.force,
        config: a.config.options()?,
        from,
    };
    let e = export(&m, &store, &layout, &tag, &opts)
        .map_err(|e| {
            let hint = super::export_hint(&e);
            super::hinted(e, hint)
        })
        .with_context(|| format!("exporting to {}", a.image))?;
    g.info(&format!(
        "{}: {} entries, layer {} ({} bytes, diff_id {}), manifest {}",
        a.image, e.entries, e.layer.digest, e.layer.size, e.diff_id, e.manifest.digest
    ));
    if !g.quiet {
        println!("{}", e.manifest.digest);
    }
    Ok(ExitCode::SUCCESS)
}
