//! `ocix push M --store STORE docker://HOST/REPO:TAG`: upload a manifest and
//! the blobs a registry lacks.

use super::Global;
use super::pull::RemoteArgs;
use crate::remote::{self, PushOptions, Reference, artifact};
use crate::store::Store;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `ocix push`; the long help is [`LONG_HELP`].
#[derive(clap::Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// The manifest (`-` for standard input).
    pub manifest: PathBuf,
    /// docker://HOST[:PORT]/REPO:TAG
    pub target: String,
    /// The blob store holding the manifest's file contents.
    #[arg(long)]
    pub store: PathBuf,
    /// Most file blobs listed in one OCI manifest before the tag names an
    /// index of several.
    #[arg(long, default_value_t = artifact::LAYERS_PER_MANIFEST, hide = true)]
    pub layers_per_manifest: usize,
    /// File blobs of at most this many bytes are grouped into packs (one
    /// registry blob each, fetched by byte range); 0 packs nothing.
    #[arg(long, default_value_t = crate::remote::pack::DEFAULT_THRESHOLD, value_name = "BYTES")]
    pub pack_threshold: u64,
    /// How file blobs and packs travel: `zstd` (compressed where that
    /// saves at least 5%) or `none`.
    #[arg(long, value_name = "zstd|none", default_value = "zstd", value_parser = ["zstd", "none"])]
    pub compress: String,
    /// An access list (paths, one a line, e.g. written by `ocix mount
    /// --record-access`) stored with the artifact: `ocix pull` and a lazy
    /// `ocix mount` fetch those paths' blobs first.
    #[arg(long, value_name = "PATHS-FILE")]
    pub prefetch: Option<PathBuf>,
    /// Store no lazy index (the artifact then mounts lazily only after
    /// its whole manifest is fetched, as with ocix before the index).
    #[arg(long)]
    pub no_lazy_index: bool,
    /// Connection flags.
    #[command(flatten)]
    pub net: RemoteArgs,
}

/// Shown by `ocix push --help`.
pub const LONG_HELP: &str = "\
Asks the registry for each file blob (HEAD) and uploads only the missing
ones, --jobs at a time (one PUT up to 8 MiB, PATCH chunks of 8 MiB beyond).
File blobs of at most --pack-threshold bytes (256 KiB) are concatenated,
in manifest order, into packs of up to 8 MiB (boundaries chosen by the
blobs' digests, so a new version changes only the packs around its changed
files): a registry spends about a millisecond on every request, and a pull
then needs one request per pack, or one per run of missing blobs.
Then uploads the manifest itself as a blob and tags an OCI image manifest
with artifactType application/vnd.ocix.manifest.v1+cbor, the empty config,
and as layers the manifest blob, the packs (application/vnd.ocix.pack.v1,
member count in the annotation io.ocix.pack.count) and every other file
blob (application/vnd.ocix.file.v1), so the registry serves and keeps them.
With --compress zstd (the default) a file blob whose zstd form (level 3)
is at least 5% smaller travels as that form (application/vnd.ocix.file.v1+zstd,
its content digest in the annotation io.ocix.file.digest), and a pack whose
members compress is sent as one zstd frame per member
(application/vnd.ocix.pack.v1+zstd, the frames' lengths in io.ocix.pack.frames),
so a pull can still fetch any run of members by range. A pull decodes as
bytes arrive and keeps only content whose sha256 matches the manifest.
With more than 20000 such layers the tag names an OCI index instead: the
ocix artifact (manifest blob and packs) first, then manifests listing 20000
file blobs each (registries limit one manifest to about 4 MiB).
With --prefetch FILE the access list (paths, one a line, as `ocix mount
--record-access` writes it) travels as a layer of media type
application/vnd.ocix.access.v1: `ocix pull` and a lazy `ocix mount
docker://...` fetch those paths' blobs first, and a lazy mount fetches no
pack neighbour the list does not name.
Unless --no-lazy-index, two more layers (each annotated io.ocix.manifest.digest)
let a lazy `ocix mount docker://...` start without the manifest's per-file
digests: the lazy index (application/vnd.ocix.lazy.v1+zstd: the tree without
file digests, which blob each file holds, and the sha256 of each chunk of
the table) and the digest table (application/vnd.ocix.digests.v1: the
distinct file blobs' sha256s, 32 bytes each in manifest order, fetched by
range a chunk of 128 at a time).

Examples:
  ocix scan /srv/rootfs --store S -o m.ocix
  ocix push m.ocix --store S docker://127.0.0.1:5000/ocix/rootfs:v1";

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let bytes = super::read_input(&a.manifest)?;
    let target = Reference::parse(&a.target)?;
    let store = Store::open(&a.store)?;
    let opts = PushOptions {
        remote: a.net.options(),
        jobs: a.net.jobs,
        layers_per_manifest: a.layers_per_manifest,
        pack_threshold: a.pack_threshold,
        progress: g.progress(),
        compress: a.compress == "zstd",
        access: match &a.prefetch {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        },
        lazy_index: !a.no_lazy_index,
    };
    let r = remote::push(&bytes, &store, &target, &opts).with_context(|| format!("pushing to {target}"))?;
    g.info(&format!(
        "{} file blobs in {} packs + {} on their own: {} uploaded ({} bytes), {} already there, {} compressed; manifest {}; {target} -> {}{}",
        r.blobs,
        r.packs,
        r.uploaded + r.present - r.packs,
        r.uploaded,
        r.bytes,
        r.present,
        r.compressed,
        r.manifest_digest,
        r.tag_digest,
        if r.index { " (index)" } else { "" }
    ));
    Ok(ExitCode::SUCCESS)
}
