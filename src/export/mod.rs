//! Sink: manifest + store -> an OCI image in an image layout, the way back
//! from ocix to the container world; the reverse of [`crate::oci`], sharing
//! its media types and descriptors.
//!
//! [`export`] writes a whole tree as one layer: the manifest's entries in
//! manifest order through the canonical [`tar`] writer, compressed on every
//! core ([`compress`]), hashed twice on the way (the tar for the config's
//! `diff_ids`, the compressed blob for its descriptor), then the config, the
//! image manifest and the tag ([`layout`]: blobs first, `index.json` last
//! and atomically). The same manifest gives the same layer, diff_id, config
//! and manifest on any machine: nothing depends on time, host names, the
//! order of a directory on disk or the number of cores.
//!
//! [`repack`] writes one layer on top of the image a bundle was unpacked
//! from, holding only what changed in its rootfs since.

pub mod compress;
pub mod layout;
pub mod repack;
pub mod tar;

use crate::manifest::{Digest, Entry, File, Kind, Manifest, path_display};
use crate::oci::media;
use crate::oci::{Compression, Descriptor};
use crate::store::{BlobWriter, Store, StoreError};
use layout::{LayoutWriter, descriptor_json};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tar::{TarWriteError, TarWriter};

/// Why an export or repack failed. Each names the file, directory or
/// value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file of the layout or the bundle could not be read or written.
    #[error("{}: {err}", .path.display())]
    Io {
        /// Its path.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The layout's blob store failed, or a blob is missing or corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the layout is not what an OCI image layout holds.
    #[error("{}: {problem}", .path.display())]
    Layout {
        /// The layout's file (`oci-layout`, `index.json`).
        path: PathBuf,
        /// What is wrong with it.
        problem: LayoutProblem,
    },
    /// The layout to repack into is not one (it must hold the bundle's
    /// image).
    #[error("{}: not an OCI image layout (it must hold the image {image} that {} was unpacked from)", .layout.display(), .bundle.display())]
    NotALayout {
        /// The layout given.
        layout: PathBuf,
        /// The image the bundle was unpacked from.
        image: Digest,
        /// The bundle.
        bundle: PathBuf,
    },
    /// The layout does not hold the image the bundle was unpacked from.
    #[error("the image {image} that {} was unpacked from is not in {}", .bundle.display(), .layout.display())]
    ImageMissing {
        /// The layout given.
        layout: PathBuf,
        /// The image the bundle was unpacked from.
        image: Digest,
        /// The bundle.
        bundle: PathBuf,
    },
    /// The base image's config or manifest lacks a part a new layer is
    /// added to.
    #[error("the image {0} has no {1}")]
    BaseImage(&'static str, &'static str),
    /// The tag is taken.
    #[error("{}: tag {tag:?} exists", .layout.display())]
    TagExists {
        /// The layout.
        layout: PathBuf,
        /// The tag.
        tag: String,
    },
    /// A tag that the OCI layout's tag grammar refuses.
    #[error("tag {0:?} is not valid: letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'")]
    BadTag(String),
    /// An environment setting that is not `KEY=VALUE`.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// A layer of a Docker image compressed with zstd, which Docker images
    /// cannot hold.
    #[error("the image is a Docker image, whose layers cannot be zstd")]
    DockerZstd,
    /// An entry cannot be written as tar, or its content is wrong.
    #[error(transparent)]
    Tar(#[from] TarWriteError),
    /// Reading an image (the base of a repack, `--from`) failed.
    #[error(transparent)]
    Import(#[from] crate::oci::ImportError),
    /// A record of the bundle is missing or damaged.
    #[error("{}: {problem}", .path.display())]
    Bundle {
        /// The record (`ocix-image.json`, `ocix.cbor`).
        path: PathBuf,
        /// What is wrong with it.
        problem: BundleProblem,
    },
    /// The bundle's owners were shifted by id maps when it was unpacked;
    /// repacking them is not supported.
    #[error("{}: unpacked with id maps; repacking shifted owners is not supported", .0.display())]
    IdMapped(PathBuf),
    /// The bundle's rootfs could not be opened.
    #[error(transparent)]
    Sys(#[from] crate::sys::SysError),
    /// Scanning the bundle's rootfs failed.
    #[error(transparent)]
    Scan(#[from] crate::scan::ScanError),
    /// A file of the manifest has no digest.
    #[error("{0}: no digest")]
    NoDigest(String),
    /// The scanned manifest could not be encoded.
    #[error("the scanned tree: {0}")]
    Manifest(crate::manifest::DecodeError),
}

/// What is wrong with a file of an OCI image layout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutProblem {
    /// It does not parse.
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// `oci-layout` names another version.
    #[error("imageLayoutVersion {0:?} is not 1.x")]
    Version(Option<String>),
    /// `index.json` is not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `index.json` has no `manifests` array.
    #[error("no manifests array")]
    NoManifests,
    /// `index.json` is not of schema version 2.
    #[error("schemaVersion is not 2")]
    SchemaVersion,
    /// The path exists and is not a directory.
    #[error("exists and is not a directory")]
    NotADirectory,
    /// A directory with other things in it and no `oci-layout`.
    #[error("not an OCI image layout (no oci-layout file) and not empty")]
    NotEmpty,
}

/// What is wrong with a record of a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleProblem {
    /// The record is absent: the bundle was not made by an image unpack.
    #[error("missing: the bundle was not made by an image unpack (or by an older ocix)")]
    Missing,
    /// It does not parse.
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// A field is missing or malformed.
    #[error("{0}")]
    Field(&'static str),
    /// The manifest record is not an OCIX manifest.
    #[error("invalid OCIX manifest: {0}")]
    Manifest(crate::manifest::DecodeError),
}

/// Settings of the image config, as `umoci config` takes them; each given
/// one replaces what the base config (`--from`) has.
#[derive(Clone, Debug, Default)]
pub struct ConfigOptions {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env` entries `KEY=VALUE`, replacing one of the same KEY.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Labels` `KEY=VALUE`.
    pub labels: Vec<(String, String)>,
}

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The layer's compression.
    pub compression: Compression,
    /// Compressing threads; 0 means one per CPU.
    pub threads: usize,
    /// Replace a tag that exists.
    pub force: bool,
    /// Config settings.
    pub config: ConfigOptions,
    /// An image (layout, tag) whose config is the base of the new one.
    pub from: Option<(std::path::PathBuf, Option<String>)>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            compression: Compression::Gzip,
            threads: 0,
            force: false,
            config: ConfigOptions::default(),
            from: None,
        }
    }
}

/// A written image.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The image manifest.
    pub manifest: Descriptor,
    /// The config.
    pub config: Descriptor,
    /// The new layer.
    pub layer: Descriptor,
    /// The sha256 of the new layer's tar.
    pub diff_id: Digest,
    /// Entries written to the layer (whiteouts included).
    pub entries: u64,
}

/// The media type of a layer compressed as `c` (OCI).
pub fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => media::OCI_LAYER,
        Compression::Gzip => media::OCI_LAYER_GZIP,
        Compression::Zstd => media::OCI_LAYER_ZSTD,
    }
}

/// Writes the tree of `m`, file contents from `store`, as a one-layer image
/// tagged `tag` in the layout at `layout` (created if absent).
pub fn export(
    m: &Manifest,
    store: &Store,
    layout: &Path,
    tag: &str,
    opts: &ExportOptions,
) -> Result<Exported, ExportError> {
    check_tag_name(tag)?;
    // the base config first: a bad --from fails before anything is written
    let base = match &opts.from {
        Some((l, t)) => {
            let (_, img) = crate::oci::open_image(l, t.as_deref(), None)?;
            Some(img.config)
        }
        None => None,
    };
    if let Some((path, e)) = m.walk().find(|(_, e)| matches!(e.kind, Kind::Socket)) {
        let _ = e;
        return Err(TarWriteError::Unrepresentable {
            path: path_display(&path),
            msg: "a socket cannot be put in a tar archive".into(),
        }
        .into());
    }
    let mut lw = LayoutWriter::open(layout)?;
    lw.check_tag(tag, opts.force)?;
    let (layer, diff_id, entries) = write_layer(&lw.store, opts.compression, opts.threads, |tw| {
        let mut n = 0;
        for (path, e) in m.walk() {
            let mut src = match &e.kind {
                Kind::File(f) if f.size > 0 => Some(StoreContent::open(store, f, &path)?),
                _ => None,
            };
            tw.entry(&path, &with_link_meta(m, e), src.as_mut().map(|s| s as &mut dyn Read))?;
            n += 1;
        }
        Ok(n)
    })?;
    let mut config = new_config(base.as_ref());
    apply_config(&mut config, &opts.config)?;
    config.insert("rootfs".into(), json!({"type": "layers", "diff_ids": [diff_id.to_string()]}));
    config.insert("history".into(), json!([{"created_by": "ocix export"}]));
    let config_data = serde_json::to_vec(&Value::Object(config)).expect("JSON values serialize");
    let config_desc = lw.put_document(media::OCI_CONFIG, &config_data)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor_json(&config_desc),
        "layers": [descriptor_json(&layer)],
    });
    let manifest_data = serde_json::to_vec(&manifest).expect("JSON values serialize");
    let manifest_desc = lw.put_document(media::OCI_MANIFEST, &manifest_data)?;
    lw.tag(&manifest_desc, tag)?;
    Ok(Exported { manifest: manifest_desc, config: config_desc, layer, diff_id, entries })
}

/// A hardlink entry given its first name's metadata (for its tar header);
/// any other entry as it is.
pub fn with_link_meta<'a>(m: &Manifest, e: &'a Entry) -> std::borrow::Cow<'a, Entry> {
    match &e.kind {
        Kind::Hardlink(t) => match m.get(t) {
            Some(first) => std::borrow::Cow::Owned(Entry { meta: first.meta.clone(), kind: Kind::Hardlink(t.clone()) }),
            None => std::borrow::Cow::Borrowed(e),
        },
        _ => std::borrow::Cow::Borrowed(e),
    }
}

/// Refuses a tag OCI does not allow: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`,
/// what skopeo and umoci accept as a layout's tag.
pub fn check_tag_name(tag: &str) -> Result<(), ExportError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(ExportError::BadTag(tag.to_string())) }
}

/// A new config: the base's `config`, `architecture`, `os`, `variant`
/// (this machine's platform without one), nothing else of it.
fn new_config(base: Option<&Value>) -> Map<String, Value> {
    let host = crate::oci::Platform::host();
    let mut c = Map::new();
    let get = |k: &str| base.and_then(|b| b.get(k)).cloned();
    c.insert("architecture".into(), get("architecture").unwrap_or(json!(host.architecture)));
    c.insert("os".into(), get("os").unwrap_or(json!("linux")));
    if let Some(v) = get("variant") {
        c.insert("variant".into(), v);
    }
    c.insert("config".into(), get("config").filter(Value::is_object).unwrap_or(json!({})));
    c
}

/// Applies the settings to `config.config`.
fn apply_config(config: &mut Map<String, Value>, o: &ConfigOptions) -> Result<(), ExportError> {
    let Some(Value::Object(c)) = config.get_mut("config") else { unreachable!("set by new_config") };
    if let Some(v) = &o.entrypoint {
        c.insert("Entrypoint".into(), json!(v));
    }
    if let Some(v) = &o.cmd {
        c.insert("Cmd".into(), json!(v));
    }
    if let Some(v) = &o.working_dir {
        c.insert("WorkingDir".into(), json!(v));
    }
    if let Some(v) = &o.user {
        c.insert("User".into(), json!(v));
    }
    if !o.env.is_empty() {
        let mut env: Vec<String> = match c.get("Env") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        for e in &o.env {
            let Some((k, _)) = e.split_once('=') else {
                return Err(ExportError::BadEnv(e.clone()));
            };
            env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
            env.push(e.clone());
        }
        c.insert("Env".into(), json!(env));
    }
    if !o.labels.is_empty() {
        let labels = c.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        for (k, v) in &o.labels {
            labels[k] = json!(v);
        }
    }
    Ok(())
}

/// Writes one layer blob into `store`: `f` writes the tar's entries; the
/// end of the archive, compression and hashing are done here. Returns the
/// layer's descriptor, its diff_id and what `f` returned.
pub fn write_layer<T>(
    store: &Store,
    c: Compression,
    threads: usize,
    f: impl FnOnce(&mut TarWriter<&mut Tee<'_>>) -> Result<T, ExportError>,
) -> Result<(Descriptor, Digest, T), ExportError> {
    let mut blob = BlobOut(store.writer()?);
    let (t, diff_id) = compress::compressed(c, threads, &mut blob, |w| {
        let mut tee = Tee { inner: w, hash: Sha256::new() };
        let mut tw = TarWriter::new(&mut tee);
        let t = f(&mut tw)?;
        tw.finish()?;
        let diff_id = Digest(tee.hash.finalize().into());
        Ok::<_, ExportError>((t, diff_id))
    })?;
    let size = blob.0.len();
    let digest = blob.0.finish(None)?;
    let desc = Descriptor {
        media_type: layer_media_type(c).to_string(),
        digest,
        size,
        platform: None,
        annotations: Default::default(),
    };
    Ok((desc, diff_id, t))
}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        ExportError::Tar(TarWriteError::Io(e))
    }
}

/// The uncompressed tar on its way to the compressor, hashed for the
/// diff_id.
pub struct Tee<'a> {
    inner: &'a mut dyn Write,
    hash: Sha256,
}

impl Write for Tee<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A blob being written, as `Write`.
struct BlobOut<'s>(BlobWriter<'s>);

impl Write for BlobOut<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(data).map_err(io::Error::other)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file's content read from a blob store, its size and sha256 checked:
/// the read that reaches the size fails if the digest differs.
pub struct StoreContent {
    f: std::fs::File,
    left: u64,
    expected: Digest,
    hash: Sha256,
    shown: String,
}

impl StoreContent {
    /// Opens the blob of `f` (the entry at `path`).
    pub fn open(store: &Store, f: &File, path: &[u8]) -> Result<StoreContent, ExportError> {
        let d = f.digest.ok_or_else(|| ExportError::NoDigest(path_display(path)))?;
        let fd = store
            .open_blob(&d)
            .map_err(|e| TarWriteError::Content { path: path_display(path), msg: format!("content: {e}") })?;
        Ok(StoreContent {
            f: std::fs::File::from(fd),
            left: f.size,
            expected: d,
            hash: Sha256::new(),
            shown: store.blob_path(&d).display().to_string(),
        })
    }
}

impl Read for StoreContent {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        checked_read(&mut self.f, buf, &mut self.left, &mut self.hash, &self.expected, &self.shown)
    }
}

/// Reads at most `left` bytes, hashing them; at the end compares the hash
/// with `expected` (`shown` names the source in the error).
pub fn checked_read(
    r: &mut dyn Read,
    buf: &mut [u8],
    left: &mut u64,
    hash: &mut Sha256,
    expected: &Digest,
    shown: &str,
) -> io::Result<usize> {
    if *left == 0 {
        return Ok(0);
    }
    let want = buf.len().min((*left).min(usize::MAX as u64) as usize);
    let n = r.read(&mut buf[..want])?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{shown}: shorter than its size")));
    }
    hash.update(&buf[..n]);
    *left -= n as u64;
    if *left == 0 {
        let actual = Digest(std::mem::take(hash).finalize().into());
        if actual != *expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{shown}: content has digest {actual}, expected {expected}"),
            ));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_media_types_are_the_ones_import_reads() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(Compression::of_media_type(layer_media_type(c)), Some(c));
        }
    }

    #[test]
    fn tags_are_checked() {
        assert!(check_tag_name("v1.0_rc-2").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", "ü", &"x".repeat(129)] {
            assert!(check_tag_name(bad).is_err(), "{bad:?}");
        }
    }
}
