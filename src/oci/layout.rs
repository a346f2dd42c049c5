//! Reading an OCI image layout's documents: `oci-layout`, `index.json`,
//! nested indexes, the image manifest and its config; choosing the image by
//! tag and platform. Every blob is read by its checked digest only
//! (`blobs/sha256/<hex>`, opened without following symlinks), with its size
//! and digest verified before it is parsed. Choosing the image and checking
//! its documents ([`choose_image`]) is shared with registries, which supply
//! the documents through [`Documents`].

use super::{ImportError, media};
use crate::manifest::Digest;
use crate::store::{Store, Verifier};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest `index.json`, image index, image manifest or config accepted.
pub const MAX_DOCUMENT: u64 = 16 << 20;
/// Deepest chain of nested indexes followed.
pub const MAX_INDEX_DEPTH: usize = 8;
/// The annotation that names a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What is wrong with a layout's structure or an image's documents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A layout file or blob is not a regular file (a planted fifo or
    /// device is refused, not read).
    #[error("{}: not a regular file", .0.display())]
    NotRegular(PathBuf),
    /// A layout file exceeds its limit.
    #[error("{}: larger than {limit} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// `oci-layout` names a version other than 1.x.
    #[error("{}: imageLayoutVersion {found:?} is not 1.x", .path.display())]
    Version {
        /// The `oci-layout` file.
        path: PathBuf,
        /// The version it names, if any.
        found: Option<String>,
    },
    /// `index.json` has a media type other than an OCI index's.
    #[error("index.json: mediaType {0}, expected {OCI_INDEX}", OCI_INDEX = media::OCI_INDEX)]
    IndexMediaType(String),
    /// A document's `schemaVersion` is missing or not 2.
    #[error("{what}: {}", match .found { Some(n) => format!("schemaVersion {n}, expected 2"), None => "no schemaVersion".to_string() })]
    Schema {
        /// The document.
        what: String,
        /// Its `schemaVersion`, if it has one.
        found: Option<i64>,
    },
    /// Indexes nest deeper than [`MAX_INDEX_DEPTH`].
    #[error("indexes nested deeper than {MAX_INDEX_DEPTH} levels at {0}")]
    TooDeep(Digest),
    /// The config's `rootfs.type` is not `layers`.
    #[error("{config}: rootfs.type {found:?}, expected \"layers\"")]
    RootfsType {
        /// The config.
        config: String,
        /// The type it names.
        found: String,
    },
    /// The config lists another number of diff_ids than the manifest has
    /// layers.
    #[error("{config}: {diff_ids} diff_ids for {layers} layers")]
    DiffIdCount {
        /// The config.
        config: String,
        /// How many diff_ids it lists.
        diff_ids: usize,
        /// How many layers the manifest lists.
        layers: usize,
    },
    /// A diff_id is not a sha256 digest.
    #[error("{config}: rootfs.diff_ids[{index}] {found:?} is not sha256:<64 lowercase hex>")]
    DiffId {
        /// The config.
        config: String,
        /// Its position.
        index: usize,
        /// What it says.
        found: String,
    },
}

/// What is wrong with a descriptor, or between it and its document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// A digest of another algorithm, or not a digest.
    #[error("digest {0:?} is not sha256:<64 lowercase hex> (only sha256 is supported)")]
    NotSha256(String),
    /// A sha256 digest that does not parse.
    #[error("{0}")]
    Digest(crate::manifest::DigestParseError),
    /// A size that is not a non-negative integer.
    #[error("size {0} is not a non-negative integer")]
    Size(String),
    /// A document larger than [`MAX_DOCUMENT`].
    #[error("size {0} exceeds the limit of {MAX_DOCUMENT} bytes for a document")]
    TooLarge(u64),
    /// The document's `mediaType` is not the descriptor's.
    #[error("media type mismatch: the descriptor says {descriptor} but the document's mediaType is {document}")]
    MediaType {
        /// The descriptor's.
        descriptor: String,
        /// The document's.
        document: String,
    },
    /// The descriptor says image manifest but the document is an index.
    #[error("media type mismatch: the descriptor says {0} but the document is an index")]
    IsIndex(String),
    /// A config whose media type is not an image config's.
    #[error("media type {0} is not an image config: not a container image")]
    NotAConfig(String),
    /// A layer of a media type ocix does not read.
    #[error("unsupported layer media type {0} (expected an OCI or Docker tar, tar+gzip or tar+zstd layer)")]
    LayerMediaType(String),
}

/// Why no single image could be chosen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No entry of `index.json` carries the tag.
    #[error("no image tagged {tag:?} in {}", .index.display())]
    NoTag {
        /// The tag.
        tag: String,
        /// The `index.json`.
        index: PathBuf,
    },
    /// `index.json` lists nothing.
    #[error("{} lists no image", .0.display())]
    Empty(PathBuf),
    /// The entries chosen lead to no image manifest.
    #[error("no image manifest{} in {within} (only other media types)", .tag.as_ref().map(|t| format!(" tagged {t:?}")).unwrap_or_default())]
    NoManifest {
        /// The tag asked for.
        tag: Option<String>,
        /// Where the entries came from (an `index.json`, a reference).
        within: String,
    },
    /// The only image is for another platform than the one asked for.
    #[error("the image is for {found}, not {wanted}")]
    Platform {
        /// The image's platform.
        found: Box<Platform>,
        /// The platform asked for.
        wanted: Box<Platform>,
    },
    /// The image's config names another platform than the one asked for.
    #[error("the image's config is for {found}, not {wanted}")]
    ConfigPlatform {
        /// The config's platform.
        found: Box<Platform>,
        /// The platform asked for.
        wanted: Box<Platform>,
    },
    /// Several images, none for the platform.
    #[error("no image for platform {0}")]
    NoPlatform(Platform),
    /// Several images for the platform.
    #[error("{count} images match platform {wanted}")]
    Ambiguous {
        /// How many match.
        count: usize,
        /// The platform.
        wanted: Platform,
    },
    /// What a registry's reference names is not an image manifest or index.
    #[error(
        "{reference}: the registry's manifest (Content-Type {content_type:?}) is not an OCI or Docker image \
         manifest or index"
    )]
    NotAnImage {
        /// The reference.
        reference: String,
        /// The `Content-Type` the registry answered with.
        content_type: String,
    },
}

/// How a layer is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` if the media type is
    /// not a layer type ocix reads.
    pub fn of_media_type(mt: &str) -> Option<Compression> {
        Some(match mt {
            media::OCI_LAYER | media::OCI_LAYER_NONDIST | media::DOCKER_LAYER => Compression::None,
            media::OCI_LAYER_GZIP
            | media::OCI_LAYER_NONDIST_GZIP
            | media::DOCKER_LAYER_GZIP
            | media::DOCKER_FOREIGN_LAYER_GZIP => Compression::Gzip,
            media::OCI_LAYER_ZSTD | media::OCI_LAYER_NONDIST_ZSTD => Compression::Zstd,
            _ => return None,
        })
    }
}

/// A descriptor as it appears in JSON, unchecked.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: serde_json::Number,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A checked descriptor: clean sha256 digest, non-negative size.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// Media type as given.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Platform, for entries of an index.
    pub platform: Option<Platform>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

impl RawDescriptor {
    fn check(self, what: &str) -> Result<Descriptor, ImportError> {
        let bad = |err: DescriptorError| ImportError::Descriptor { what: what.to_string(), err };
        let Some(hex) = self.digest.strip_prefix("sha256:") else {
            return Err(bad(DescriptorError::NotSha256(self.digest)));
        };
        let digest = Digest::parse(&format!("sha256:{hex}")).map_err(|e| bad(DescriptorError::Digest(e)))?;
        let size = match self.size.as_u64() {
            Some(s) => s,
            None => return Err(bad(DescriptorError::Size(self.size.to_string()))),
        };
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size,
            platform: self.platform,
            annotations: self.annotations,
        })
    }
}

/// An image platform.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture, Go names (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?.to_string();
        let architecture = it.next().filter(|x| !x.is_empty())?.to_string();
        let variant = it.next().map(str::to_string);
        if it.next().is_some() || variant.as_deref() == Some("") {
            return None;
        }
        Some(Platform { os, architecture, variant })
    }

    /// The machine this runs on, in OCI's (Go's) names.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform { os: std::env::consts::OS.to_string(), architecture: arch.to_string(), variant: None }
    }

    /// Whether `self` (a wanted platform) accepts `other`; a variant is only
    /// compared when wanted.
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// A layer to apply.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The layer blob.
    pub desc: Descriptor,
    /// Its compression, from the media type.
    pub compression: Compression,
    /// The sha256 of its uncompressed tar, from the config.
    pub diff_id: Digest,
}

/// An image chosen from a layout, its documents read and verified.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image manifest's descriptor.
    pub manifest_desc: Descriptor,
    /// The image manifest, parsed.
    pub manifest: serde_json::Value,
    /// The config's descriptor.
    pub config_desc: Descriptor,
    /// The config blob as stored (for typed parsing, e.g. with oci-spec's
    /// `ImageConfiguration`, by the bundle writer).
    pub config_raw: Vec<u8>,
    /// The config, parsed.
    pub config: serde_json::Value,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
}

impl Compression {
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Opens a blob of the layout for reading; it must be a regular file (a
/// fifo or device planted in a layout is refused, not read).
pub fn open_blob_file(store: &Store, d: &Digest) -> Result<std::fs::File, ImportError> {
    let f = std::fs::File::from(store.open_blob(d)?);
    let meta = f.metadata().map_err(|e| ImportError::Io { path: store.blob_path(d), err: e })?;
    if !meta.is_file() {
        return Err(LayoutError::NotRegular(store.blob_path(d)).into());
    }
    Ok(f)
}

/// Reads a layout file (`oci-layout`, `index.json`) of at most `limit`
/// bytes; it must be a regular file, opened without blocking.
pub(crate) fn read_small(p: &Path, limit: u64) -> Result<Vec<u8>, ImportError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| ImportError::Io { path: p.to_path_buf(), err: e };
    let f = std::fs::OpenOptions::new().read(true).custom_flags(crate::sys::O_NONBLOCK).open(p).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(LayoutError::NotRegular(p.to_path_buf()).into());
    }
    let mut data = Vec::new();
    f.take(limit + 1).read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 > limit {
        return Err(LayoutError::TooLarge { path: p.to_path_buf(), limit }.into());
    }
    Ok(data)
}

/// Reads a small document: size checked against the limit before any
/// allocation, digest and size verified before it is parsed.
fn read_doc(docs: &dyn Documents, d: &Descriptor, what: &str) -> Result<Vec<u8>, ImportError> {
    if d.size > MAX_DOCUMENT {
        return Err(ImportError::Descriptor { what: what.into(), err: DescriptorError::TooLarge(d.size) });
    }
    let data = docs.fetch(d, what)?;
    let mut v = Verifier::new(d.digest, d.size);
    v.update(&data);
    v.finish(&format!("{} ({what})", docs.shown(d)))?;
    Ok(data)
}

fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T, ImportError> {
    serde_json::from_slice(data).map_err(|e| {
        // a value of the wrong shape: name the field it is in
        let what = match e.classify() {
            serde_json::error::Category::Data => match json_path_at(data, e.line(), e.column()) {
                Some(p) if !p.is_empty() => format!("{what}: field {p}"),
                _ => what.to_string(),
            },
            _ => what.to_string(),
        };
        ImportError::Json { what, err: e }
    })
}

/// The path (`manifests[0].mediaType`) of the value the JSON text `data`
/// has at `line`:`column` (1-based, as serde_json counts), or `None` if the
/// position is outside the text.
fn json_path_at(data: &[u8], line: usize, column: usize) -> Option<String> {
    enum Level {
        Object { key: Option<String>, in_key: bool },
        Array { index: usize },
    }
    // byte offset of the position
    let mut at = None;
    let (mut l, mut c) = (1usize, 0usize);
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' {
            l += 1;
            c = 0;
        } else {
            c += 1;
        }
        if l == line && c >= column.max(1) {
            at = Some(i);
            break;
        }
    }
    let at = at?;
    let mut stack: Vec<Level> = Vec::new();
    let mut i = 0;
    while i < at {
        match data[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < data.len() && data[i] != b'"' {
                    if data[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if let Some(Level::Object { key, in_key: in_key @ true }) = stack.last_mut() {
                    *key = Some(String::from_utf8_lossy(&data[start..i.min(data.len())]).into_owned());
                    *in_key = false;
                }
            }
            b'{' => stack.push(Level::Object { key: None, in_key: true }),
            b'[' => stack.push(Level::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Level::Object { in_key, .. }) => *in_key = true,
                Some(Level::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    let mut out = String::new();
    for level in &stack {
        match level {
            Level::Object { key: Some(k), .. } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Level::Object { key: None, .. } => {}
            Level::Array { index } => out.push_str(&format!("[{index}]")),
        }
    }
    Some(out)
}

/// A descriptor's media type that differs from its document's.
fn media_type_mismatch(descriptor: &str, document: &str) -> DescriptorError {
    DescriptorError::MediaType { descriptor: descriptor.to_string(), document: document.to_string() }
}

fn check_schema(v: Option<i64>, what: &str) -> Result<(), ImportError> {
    match v {
        Some(2) => Ok(()),
        found => Err(LayoutError::Schema { what: what.to_string(), found }.into()),
    }
}

/// A manifest found while descending indexes, with the platform its index
/// entry declared.
struct Candidate {
    desc: Descriptor,
    platform: Option<Platform>,
}

/// Opens the layout, chooses the image and reads its manifest and config.
pub fn open_image(
    layout: &Path,
    tag: Option<&str>,
    platform: Option<&Platform>,
) -> Result<(Store, Image), ImportError> {
    let lp = layout.join("oci-layout");
    let data = read_small(&lp, 4096)?;
    let v: serde_json::Value = parse_json(&data, &lp.display().to_string())?;
    match v.get("imageLayoutVersion").and_then(|x| x.as_str()) {
        Some(s) if s.starts_with("1.") => {}
        other => return Err(LayoutError::Version { path: lp, found: other.map(str::to_string) }.into()),
    }
    let store = Store::open(layout)?;

    let ip = layout.join("index.json");
    let data = read_small(&ip, MAX_DOCUMENT)?;
    let index: RawIndex = parse_json(&data, &ip.display().to_string())?;
    check_schema(index.schema_version, "index.json")?;
    if let Some(mt) = &index.media_type {
        if mt != media::OCI_INDEX {
            return Err(LayoutError::IndexMediaType(mt.clone()).into());
        }
    }
    let mut top = Vec::new();
    for (i, d) in index.manifests.into_iter().enumerate() {
        top.push(d.check(&format!("index.json manifests[{i}]"))?);
    }
    let chosen: Vec<Descriptor> = match tag {
        Some(t) => top.into_iter().filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t)).collect(),
        None => top,
    };
    if chosen.is_empty() {
        return Err(match tag {
            Some(t) => SelectError::NoTag { tag: t.to_string(), index: ip },
            None => SelectError::Empty(ip),
        }
        .into());
    }
    let image = choose_image(&LayoutDocuments(&store), chosen, tag, platform, &ip.display().to_string())?;
    Ok((store, image))
}

/// Where an image's documents (indexes, manifests, configs) come from: the
/// blobs of a layout or a registry. The choice of the image and every check
/// of what is read is [`choose_image`]'s, whatever the source.
pub trait Documents {
    /// The bytes of the document `d` describes, at most `d.size + 1` of
    /// them (the caller checks size and digest); `what` names it in errors.
    fn fetch(&self, d: &Descriptor, what: &str) -> Result<Vec<u8>, ImportError>;
    /// Where the document lives (a path, a URL), for errors.
    fn shown(&self, d: &Descriptor) -> String;
}

/// A layout's blobs as [`Documents`].
pub(crate) struct LayoutDocuments<'a>(pub(crate) &'a Store);

impl Documents for LayoutDocuments<'_> {
    fn fetch(&self, d: &Descriptor, _what: &str) -> Result<Vec<u8>, ImportError> {
        let f = open_blob_file(self.0, &d.digest)?;
        let mut data = Vec::with_capacity(d.size as usize);
        f.take(d.size + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImportError::Io { path: self.0.blob_path(&d.digest), err: e })?;
        Ok(data)
    }
    fn shown(&self, d: &Descriptor) -> String {
        self.0.blob_path(&d.digest).display().to_string()
    }
}

/// Chooses the image among `top` (descriptors of manifests or indexes, as
/// an `index.json` lists them, already filtered by `tag`): nested indexes
/// are followed, a single image is taken if its platform is acceptable,
/// several are narrowed to the one for `platform` (default: this
/// machine's). Reads and checks its manifest and config. `source` names
/// where `top` came from in errors.
pub fn choose_image(
    docs: &dyn Documents,
    top: Vec<Descriptor>,
    tag: Option<&str>,
    platform: Option<&Platform>,
    source: &str,
) -> Result<Image, ImportError> {
    let mut cands = Vec::new();
    for d in top {
        let p = d.platform.clone();
        collect(docs, d, p, 0, &mut cands)?;
    }
    if cands.is_empty() {
        return Err(SelectError::NoManifest { tag: tag.map(str::to_string), within: source.to_string() }.into());
    }
    let want = platform.cloned().unwrap_or_else(Platform::host);
    let pick = if cands.len() == 1 {
        let c = cands.pop().expect("one");
        if let (Some(w), Some(p)) = (platform, &c.platform) {
            if !w.accepts(p) {
                return Err(SelectError::Platform { found: Box::new(p.clone()), wanted: Box::new(w.clone()) }.into());
            }
        }
        c
    } else {
        let mut m: Vec<Candidate> =
            cands.into_iter().filter(|c| c.platform.as_ref().is_some_and(|p| want.accepts(p))).collect();
        match m.len() {
            1 => m.pop().expect("one"),
            0 => {
                return Err(SelectError::NoPlatform(want).into());
            }
            n => {
                return Err(SelectError::Ambiguous { count: n, wanted: want }.into());
            }
        }
    };
    read_image(docs, pick.desc, platform)
}

/// Descends an index (or takes a manifest) collecting image manifests.
fn collect(
    docs: &dyn Documents,
    d: Descriptor,
    platform: Option<Platform>,
    depth: usize,
    out: &mut Vec<Candidate>,
) -> Result<(), ImportError> {
    match d.media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            out.push(Candidate { desc: d, platform });
            Ok(())
        }
        media::OCI_INDEX | media::DOCKER_LIST => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(LayoutError::TooDeep(d.digest).into());
            }
            let what = format!("image index {}", d.digest);
            let data = read_doc(docs, &d, &what)?;
            let idx: RawIndex = parse_json(&data, &what)?;
            check_schema(idx.schema_version, &what)?;
            if let Some(mt) = &idx.media_type {
                if *mt != d.media_type {
                    return Err(ImportError::Descriptor { what, err: media_type_mismatch(&d.media_type, mt) });
                }
            }
            for (i, c) in idx.manifests.into_iter().enumerate() {
                let c = c.check(&format!("{what} manifests[{i}]"))?;
                let p = c.platform.clone().or_else(|| platform.clone());
                collect(docs, c, p, depth + 1, out)?;
            }
            Ok(())
        }
        // Artifacts and other documents in an index are not images.
        _ => Ok(()),
    }
}

fn read_image(docs: &dyn Documents, desc: Descriptor, platform: Option<&Platform>) -> Result<Image, ImportError> {
    let what = format!("image manifest {}", desc.digest);
    let data = read_doc(docs, &desc, &what)?;
    let manifest_json: serde_json::Value = parse_json(&data, &what)?;
    if manifest_json.get("manifests").is_some() && manifest_json.get("config").is_none() {
        return Err(ImportError::Descriptor { what, err: DescriptorError::IsIndex(desc.media_type) });
    }
    let m: RawManifest = parse_json(&data, &what)?;
    check_schema(m.schema_version, &what)?;
    if let Some(mt) = &m.media_type {
        if *mt != desc.media_type {
            return Err(ImportError::Descriptor { what, err: media_type_mismatch(&desc.media_type, mt) });
        }
    }
    let config_desc = m.config.check(&format!("{what} config"))?;
    if config_desc.media_type != media::OCI_CONFIG && config_desc.media_type != media::DOCKER_CONFIG {
        return Err(ImportError::Descriptor {
            what: format!("{what} config"),
            err: DescriptorError::NotAConfig(config_desc.media_type),
        });
    }
    let cwhat = format!("image config {}", config_desc.digest);
    let config_raw = read_doc(docs, &config_desc, &cwhat)?;
    let config: serde_json::Value = parse_json(&config_raw, &cwhat)?;
    let rc: RawConfig = parse_json(&config_raw, &cwhat)?;
    if let Some(w) = platform {
        if let (Some(os), Some(arch)) = (&rc.os, &rc.architecture) {
            let p = Platform { os: os.clone(), architecture: arch.clone(), variant: rc.variant.clone() };
            if !w.accepts(&p) {
                return Err(SelectError::ConfigPlatform { found: Box::new(p), wanted: Box::new(w.clone()) }.into());
            }
        }
    }
    if rc.rootfs.kind != "layers" {
        return Err(LayoutError::RootfsType { config: cwhat, found: rc.rootfs.kind }.into());
    }
    if rc.rootfs.diff_ids.len() != m.layers.len() {
        return Err(LayoutError::DiffIdCount {
            config: cwhat,
            diff_ids: rc.rootfs.diff_ids.len(),
            layers: m.layers.len(),
        }
        .into());
    }
    let mut layers = Vec::new();
    for (i, (l, diff)) in m.layers.into_iter().zip(rc.rootfs.diff_ids).enumerate() {
        let lwhat = format!("{what} layers[{i}]");
        let desc = l.check(&lwhat)?;
        let compression = Compression::of_media_type(&desc.media_type).ok_or_else(|| ImportError::Descriptor {
            what: lwhat.clone(),
            err: DescriptorError::LayerMediaType(desc.media_type.clone()),
        })?;
        let diff_id = match diff.strip_prefix("sha256:") {
            Some(h) => Digest::parse(&format!("sha256:{h}")).ok(),
            None => None,
        }
        .ok_or_else(|| {
            ImportError::from(LayoutError::DiffId { config: cwhat.clone(), index: i, found: diff.clone() })
        })?;
        layers.push(Layer { desc, compression, diff_id });
    }
    Ok(Image { manifest_desc: desc, manifest: manifest_json, config_desc, config_raw, config, layers })
}
