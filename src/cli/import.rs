//! `ocix import LAYOUT[:TAG]` or `ocix import docker://HOST/REPO[:TAG]`: an
//! OCI image (from a layout, or streamed from a registry) -> manifest + blobs.

use super::Global;
use crate::oci::{DEFAULT_MAX_BYTES, ImportOptions, Imported, Platform, import_image, split_ref};
use crate::remote::Reference;
use crate::remote::image::import_remote;
use crate::store::Store;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Read the image LAYOUT:TAG (an OCI image layout directory, as written by
/// `skopeo copy ... oci:DIR:TAG`, umoci or buildah), verify every blob, apply
/// its layers in memory and write the canonical manifest of the resulting
/// tree; file contents go into STORE. Nothing is unpacked to disk.
///
/// The image may also be docker://HOST[:PORT]/REPO[:TAG|@DIGEST], an
/// ordinary OCI or Docker image in a registry: its layers are streamed from
/// the registry (verified as they arrive, never stored whole), with the same
/// result as importing the same image from a layout.
///
/// Two kinds of xattrs in layers are dropped, each named in a warning:
/// overlayfs's own (trusted.overlay.*, user.overlay.*), which would steer
/// an overlay that uses the tree as a layer, and host-specific labels
/// (security.selinux, system.nfs4_acl), as umoci drops them.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image: LAYOUT[:TAG]. Without a tag, the layout's only image (or
    /// the one for the platform). Or docker://HOST[:PORT]/REPO[:TAG|@DIGEST].
    #[arg(value_name = "LAYOUT[:TAG]|docker://...")]
    pub image: String,
    /// Where to write the manifest (`-` for standard output).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// Put every file's content into this blob store (created if missing).
    /// Without it, contents are only hashed.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// The platform to pick from a multi-platform index: OS/ARCH[/VARIANT]
    /// (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Most uncompressed layer bytes to read, over all layers (a guard
    /// against decompression bombs); also, apart, the most bytes of holes
    /// in sparse files.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    /// As `umoci unpack --keep-dirlinks` (GNU tar's
    /// --keep-directory-symlink): a directory entry that meets a symlink
    /// leading to a directory (followed inside the root, never out of it)
    /// keeps the symlink, so what a later layer puts beneath that name
    /// lands in the directory it leads to; the symlink takes the entry's
    /// owner, mtime and xattrs. Without it the directory replaces the
    /// symlink. A dangling or looping symlink, or one leading to a
    /// non-directory, is replaced either way.
    #[arg(long)]
    pub keep_dirlinks: bool,
    /// Registry connection flags (docker:// only).
    #[command(flatten)]
    pub net: super::pull::ConnArgs,
}

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let platform = match &a.platform {
        Some(p) => Some(Platform::parse(p).with_context(|| format!("--platform {p:?}: expected OS/ARCH[/VARIANT]"))?),
        None => None,
    };
    let store = match &a.store {
        Some(p) => Some(Store::create(p)?),
        None => None,
    };
    let imp = if a.image.starts_with("docker://") {
        let r = Reference::parse(&a.image)?;
        let opts = ImportOptions { tag: None, platform, max_bytes: a.max_bytes, keep_dirlinks: a.keep_dirlinks };
        import_remote(&r, store.as_ref(), &opts, &a.net.options())
    } else {
        let (layout, tag) = split_ref(&a.image);
        let opts = ImportOptions {
            tag: tag.map(str::to_string),
            platform,
            max_bytes: a.max_bytes,
            keep_dirlinks: a.keep_dirlinks,
        };
        import_image(Path::new(layout), store.as_ref(), &opts)
    }
    .map_err(|e| {
        let hint = super::import_hint(&e);
        super::hinted(e, hint)
    })
    .with_context(|| format!("importing {}", a.image))?;
    report_dropped(&imp, &a.image, g);
    let (len, _) = super::write_manifest(&a.output, &imp.manifest)?;
    g.info(&format!(
        "image {}: {} layers, {} files read, {} uncompressed bytes, manifest {} bytes",
        imp.image.manifest_desc.digest,
        imp.image.layers.len(),
        imp.files,
        imp.bytes,
        len
    ));
    Ok(ExitCode::SUCCESS)
}

/// Warns about the xattrs the import of `image` dropped from its layers:
/// one line per reason, naming the first entries and their xattr (all of
/// them with -v).
pub fn report_dropped(imp: &Imported, image: &str, g: Global) {
    for l in imp.dropped.summary(if g.verbose > 0 { usize::MAX } else { 3 }) {
        g.warn(&format!("{image}: {l}"));
    }
}
