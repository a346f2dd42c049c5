//! Source: an OCI image layout -> manifest (+ blobs in a store). Layers are
//! applied to an in-memory tree ([`tree`]), never to disk. The same
//! pipeline ([`import_layers`], with [`layout::choose_image`] for the
//! documents) imports an image streamed from a registry
//! (`crate::remote::image`, which supplies the documents and layer streams
//! and boxes its own errors into [`ImportError::Fetch`]); only where the
//! bytes come from differs.
//!
//! Pipeline for each layer, all streaming, on two threads: one reads the
//! blob (its size and digest verified as it is read), decompresses it
//! (gzip/zstd) and hashes the uncompressed stream for the config's
//! `rootfs.diff_ids`; it hands 256 KiB chunks over a bounded channel to the
//! calling thread, which parses the [`tar`] stream, sends each regular
//! file's content straight into the store ([`content`]) and each entry into
//! the tree. Nothing is buffered by layer or file size. Layers are applied
//! one after the other, in order.
//!
//! What the result is (whiteouts, hardlinks, symlinks in parent paths, the
//! root) is described in [`tree`]; the manifest equals what `ocix scan`
//! records for `umoci unpack`'s tree of the same image (as root), except
//! that directories an image implies without listing them get mtime 0 here
//! where umoci gives them the time of extraction.
//!
//! Two kinds of xattrs from a layer's PAX records never reach the manifest
//! (umoci drops both too): overlayfs's own ([`DropReason::Overlay`]: an
//! image must not steer an overlay mount that later uses its tree as a
//! layer) and host-specific labels ([`IGNORED_XATTRS`]). Each one dropped is
//! returned in [`Imported::dropped`], for the caller to report.
//!
//! Limits (memory and disk stay bounded whatever the image claims):
//! - documents (`index.json`, indexes, manifests, configs): [`MAX_DOCUMENT`]
//!   bytes each, [`MAX_INDEX_DEPTH`] nested indexes, serde_json's nesting
//!   limit (128) inside a document; layout files that are not regular files
//!   (a planted fifo or device) are refused;
//! - PAX headers and GNU long names: [`tar::MAX_SPECIAL`] bytes; sparse
//!   maps: [`tar::MAX_SPARSE_ENTRIES`] entries;
//! - zstd frames: a window of at most 2^[`ZSTD_WINDOW_LOG_MAX`] bytes;
//! - total uncompressed bytes over all layers: [`ImportOptions::max_bytes`]
//!   (a decompression bomb stops there with an error); the holes of sparse
//!   files, hashed as zeros, count against the same limit separately;
//! - between the threads: 8 chunks of 256 KiB;
//! - all-zero 4 KiB blocks of file contents are stored as holes, so zeros
//!   cost no disk; other content costs its size in the store, once per
//!   distinct content (contents that a later layer hides are stored too: the
//!   import is one pass).
//!
//! Memory grows with the number of entries in the image and the length of
//! their names (the tree), not with the size of any layer or file. An import
//! that fails leaves no manifest; blobs it already stored stay (they are
//! valid, content-addressed).

pub mod content;
pub mod layout;
pub mod media;
pub mod tar;
pub mod tree;

pub use layout::{
    Compression, Descriptor, DescriptorError, Documents, Image, Layer, LayoutError, Platform, SelectError,
    choose_image, open_image,
};

use crate::manifest::{Compact, Dev, Digest, Meta, path_display};
use crate::store::{Store, StoreError};
use content::Content;
use sha2::{Digest as _, Sha256};
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tar::{EntryType, TarError, TarReader};
use tree::{NewKind, Tree, TreeError};

pub use layout::{MAX_DOCUMENT, MAX_INDEX_DEPTH};

/// Largest zstd window accepted, as a power of two (128 MiB, zstd's own
/// default for decoders).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Default for [`ImportOptions::max_bytes`]: 256 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 30;
/// Extended attributes dropped on import, as umoci drops them: host-specific
/// labels that an image cannot meaningfully carry.
pub const IGNORED_XATTRS: &[&[u8]] = &[b"security.selinux", b"system.nfs4_acl"];
/// Most dropped xattrs an import lists one by one in [`Dropped::listed`];
/// the rest are only counted.
pub const MAX_DROPPED_LISTED: usize = 10_000;

/// Why an import dropped an xattr from a layer entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum DropReason {
    /// In overlayfs's namespace ([`crate::manifest::is_overlay_xattr`]): an
    /// image must not steer an overlay mount that later uses its tree.
    Overlay,
    /// Host-specific ([`IGNORED_XATTRS`]): meaningful only on the host that
    /// set it.
    HostSpecific,
}

impl DropReason {
    /// The reason `name` is dropped on import, if it is.
    pub fn of(name: &[u8]) -> Option<DropReason> {
        if crate::manifest::is_overlay_xattr(name) {
            Some(DropReason::Overlay)
        } else if IGNORED_XATTRS.contains(&name) {
            Some(DropReason::HostSpecific)
        } else {
            None
        }
    }

    /// Short description for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::Overlay => "overlayfs xattrs dropped (an image may not set them)",
            DropReason::HostSpecific => "host-specific xattrs dropped (security.selinux, system.nfs4_acl)",
        }
    }
}

/// One xattr dropped from a layer entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DroppedXattr {
    /// Why.
    pub reason: DropReason,
    /// The layer.
    pub layer: Digest,
    /// The entry, relative to the root (`/`-joined components).
    pub path: Vec<u8>,
    /// The xattr's name.
    pub name: Vec<u8>,
}

/// The xattrs an import dropped from its layers (each time an entry carried
/// one, in every layer, including entries a later layer hides).
#[derive(Clone, Debug, Default)]
pub struct Dropped {
    /// The first [`MAX_DROPPED_LISTED`], in layer order.
    pub listed: Vec<DroppedXattr>,
    /// How many were dropped, listed or not, by reason.
    pub counts: std::collections::BTreeMap<DropReason, u64>,
}

impl Dropped {
    fn push(&mut self, d: DroppedXattr) {
        *self.counts.entry(d.reason).or_default() += 1;
        if self.listed.len() < MAX_DROPPED_LISTED {
            self.listed.push(d);
        }
    }

    /// How many xattrs were dropped for `reason`.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// One line per reason: the count and the first `first` entries with
    /// the xattr. Empty when nothing was dropped.
    pub fn summary(&self, first: usize) -> Vec<String> {
        self.counts
            .iter()
            .map(|(&reason, &n)| {
                let shown: Vec<String> = self
                    .listed
                    .iter()
                    .filter(|d| d.reason == reason)
                    .take(first)
                    .map(|d| format!("{} ({})", path_display(&d.path), crate::manifest::xattr_display(&d.name)))
                    .collect();
                let rest = n - shown.len() as u64;
                let more = if rest > 0 { format!(", and {rest} more") } else { String::new() };
                format!("{n} {}: {}{more}", reason.describe(), shown.join(", "))
            })
            .collect()
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file of the layout could not be read.
    #[error("{}: {err}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A blob is missing, corrupt, or the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A document is not valid JSON of the expected shape.
    #[error("{what}: invalid JSON: {err}")]
    Json {
        /// The document.
        what: String,
        /// The parser's error.
        err: serde_json::Error,
    },
    /// The layout's structure is wrong.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A descriptor is invalid or disagrees with its blob.
    #[error("{what}: {err}")]
    Descriptor {
        /// Which descriptor.
        what: String,
        /// What is wrong.
        err: DescriptorError,
    },
    /// No image, or more than one, matches the tag and platform.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// The image's tree cannot be recorded in a manifest.
    #[error("the image's tree cannot be recorded: {0}")]
    Tree(TreeError),
    /// Fetching a document or layer from where the image lives (a
    /// registry) failed; the source's own error.
    #[error("{0}")]
    Fetch(Box<dyn std::error::Error + Send + Sync>),
    /// A layer's content is wrong; names the layer and, when known, the entry.
    #[error("layer {layer}{}: {err}", .entry.as_ref().map(|e| format!(" entry {}", member_display(e))).unwrap_or_default())]
    Layer {
        /// The layer's digest.
        layer: Digest,
        /// The entry: the member's name as the archive has it.
        entry: Option<Vec<u8>>,
        /// What is wrong.
        err: Box<LayerError>,
    },
}

/// What is wrong with a layer blob, its stream or one of its entries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The archive is malformed.
    #[error("{0}")]
    Tar(TarError),
    /// The archive is malformed after an entry that was read whole.
    #[error("after entry {}: {err}", member_display(.entry))]
    AfterEntry {
        /// The last entry read.
        entry: Vec<u8>,
        /// What is wrong.
        err: TarError,
    },
    /// A file's content could not be read from the archive.
    #[error("reading content: {0}")]
    Content(TarError),
    /// The entry cannot be applied to the tree.
    #[error("{0}")]
    Tree(TreeError),
    /// An xattr name that is empty or too long.
    #[error("xattr name of {0} bytes")]
    XattrName(usize),
    /// An xattr value that is too long.
    #[error("xattr {} value of {len} bytes exceeds {}", String::from_utf8_lossy(.name), crate::manifest::MAX_XATTR_VALUE)]
    XattrValue {
        /// The xattr's name.
        name: Vec<u8>,
        /// The value's length.
        len: usize,
    },
    /// A symlink or hardlink target that is empty or too long.
    #[error("{what} target of {len} bytes (must be 1..={})", crate::manifest::MAX_TARGET)]
    Target {
        /// `symlink` or `hardlink`.
        what: &'static str,
        /// The target's length.
        len: usize,
    },
    /// The holes of sparse files exceed the import's limit.
    #[error("sparse file of {size} bytes: the holes of sparse files exceed the limit of {limit} bytes")]
    Holes {
        /// The sparse file's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The blob's first bytes could not be read.
    #[error("reading: {0}")]
    Read(io::Error),
    /// The content is not compressed as the media type says.
    #[error("media type {media_type} says {} but the content is {}", .declared.name(), .found.name())]
    MediaType {
        /// The descriptor's media type.
        media_type: String,
        /// The compression it names.
        declared: Compression,
        /// The compression of the content.
        found: Compression,
    },
    /// The stream past the end-of-archive marker could not be read.
    #[error("after the end of the archive: {0}")]
    AfterEnd(io::Error),
    /// The decompressing thread panicked.
    #[error("the decompressing thread panicked")]
    Panicked,
    /// The decompressor stopped before the end of the stream.
    #[error("decompression stopped early")]
    Stopped,
    /// The uncompressed stream is not the one the config names.
    #[error("uncompressed content has digest {actual}, the config's diff_id is {expected}")]
    DiffId {
        /// What the stream hashes to.
        actual: Digest,
        /// The config's diff_id.
        expected: Digest,
    },
    /// Reading the blob failed (the bytes could not be had).
    #[error("reading the blob: {0}")]
    ReadBlob(io::Error),
    /// Decoding failed and the blob does not match its descriptor, which
    /// explains the failure better.
    #[error("blob does not match its descriptor (size {size}, digest {digest}); while reading: {err}")]
    Mismatch {
        /// The descriptor's size.
        size: u64,
        /// The descriptor's digest.
        digest: Digest,
        /// The decoder's error.
        err: io::Error,
    },
    /// The compressed stream is malformed (or asks for too large a window).
    #[error("decompressing: {err}{}", .note.as_ref().map(|n| format!(": {n}")).unwrap_or_default())]
    Decompress {
        /// The decoder's error.
        err: io::Error,
        /// For a zstd window above the limit, what was asked and allowed.
        note: Option<String>,
    },
    /// Reading the rest of the blob after the decoder finished failed.
    #[error("{0}")]
    Drain(io::Error),
    /// The blob's size is not its descriptor's.
    #[error("blob is {got} bytes, its descriptor says {declared}")]
    BlobSize {
        /// Bytes read.
        got: u64,
        /// The descriptor's size.
        declared: u64,
    },
    /// The blob's digest is not its descriptor's.
    #[error("blob content has digest {0}")]
    BlobDigest(Digest),
}

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The tag (`org.opencontainers.image.ref.name`); `None` takes the only
    /// image of the layout (or the one for the platform).
    pub tag: Option<String>,
    /// The platform wanted when an index holds several images; `None` means
    /// this machine's.
    pub platform: Option<Platform>,
    /// Most uncompressed bytes read over all layers; also, apart, the most
    /// bytes of holes in sparse files (hashed as zeros).
    pub max_bytes: u64,
    /// A directory entry over a symlink to a directory keeps the symlink
    /// (`umoci unpack --keep-dirlinks`; see [`Tree::keep_dirlinks`]).
    pub keep_dirlinks: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { tag: None, platform: None, max_bytes: DEFAULT_MAX_BYTES, keep_dirlinks: false }
    }
}

/// A finished import.
#[derive(Debug)]
pub struct Imported {
    /// The image's tree.
    pub manifest: Compact,
    /// The image's documents (manifest, config) as read.
    pub image: Image,
    /// Regular file contents read (all layers, including later-hidden ones).
    pub files: u64,
    /// Uncompressed layer bytes read.
    pub bytes: u64,
    /// xattrs dropped from layer entries: overlayfs's own and host-specific
    /// labels, never recorded in the manifest.
    pub dropped: Dropped,
}

/// Splits `LAYOUT[:TAG]`: the part after the last `:` is a tag if it has no
/// `/` and is not empty.
pub fn split_ref(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((l, t)) if !l.is_empty() && !t.is_empty() && !t.contains('/') => (l, Some(t)),
        _ => (s, None),
    }
}

/// Imports the chosen image of the layout at `layout`: every file's content
/// goes into `store` (when given; otherwise contents are only hashed).
pub fn import_image(layout: &Path, store: Option<&Store>, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let (blobs, image) = open_image(layout, opts.tag.as_deref(), opts.platform.as_ref())?;
    import_layers(image, store, opts, |layer| layout::open_blob_file(&blobs, &layer.desc.digest))
}

/// Applies the layers of `image`, bottom first, each read from the stream
/// `open` gives for it (a layout's blob file, a registry download): every
/// blob verified against its descriptor as it streams, decompressed, its
/// diff_id checked. File contents go into `store` when given.
pub fn import_layers<R: Read + Send>(
    image: Image,
    store: Option<&Store>,
    opts: &ImportOptions,
    mut open: impl FnMut(&Layer) -> Result<R, ImportError>,
) -> Result<Imported, ImportError> {
    let mut tree = Tree::default();
    tree.keep_dirlinks(opts.keep_dirlinks);
    let mut stats = Stats { files: 0, bytes: 0, max_bytes: opts.max_bytes, dropped: Dropped::default(), holes: 0 };
    for layer in &image.layers {
        tree.begin_layer();
        let blob = BlobReader::new(open(layer)?, &layer.desc);
        apply_layer(&mut tree, blob, layer, store, &mut stats)?;
    }
    let manifest = tree.into_manifest().map_err(ImportError::Tree)?;
    Ok(Imported { manifest, image, files: stats.files, bytes: stats.bytes, dropped: stats.dropped })
}

struct Stats {
    files: u64,
    bytes: u64,
    max_bytes: u64,
    dropped: Dropped,
    /// Holes of sparse files so far: read as zeros and hashed like data, so
    /// they count against `max_bytes` too (apart from `bytes`).
    holes: u64,
}

/// The layer blob, verified against its descriptor while read: reading past
/// the declared size fails at once; [`finish`](Self::finish) checks the rest.
struct BlobReader<R> {
    f: R,
    hasher: Sha256,
    len: u64,
    size: u64,
    /// The stream itself failed (a read error, a download cut): the bytes
    /// could not be had, which is not the same as bad bytes.
    failed: bool,
}

impl<R: Read> BlobReader<R> {
    /// Wraps the blob stream of `d`.
    fn new(f: R, d: &Descriptor) -> Self {
        BlobReader { f, hasher: Sha256::new(), len: 0, size: d.size, failed: false }
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read(buf).inspect_err(|e| self.failed |= e.kind() != io::ErrorKind::Interrupted)?;
        self.len += n as u64;
        if self.len > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob is larger than its descriptor's size {}", self.size),
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The uncompressed stream: hashed for the diff_id (unless it is the blob
/// itself, already hashed as read), counted against the limit.
struct DiffReader<R> {
    r: R,
    len: u64,
    limit: u64,
}

impl<R: Read> Read for DiffReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.len += n as u64;
        if self.len > self.limit {
            return Err(io::Error::other(format!(
                "uncompressed layers exceed the limit of {} bytes (possible decompression bomb)",
                self.limit
            )));
        }
        Ok(n)
    }
}

fn drain<R: Read>(r: &mut R) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Applies one layer read from `blob` (its compressed stream, from a layout
/// or a registry): verified, decompressed and diff_id-checked as it streams.
fn apply_layer<R: Read + Send>(
    tree: &mut Tree,
    mut blob: BlobReader<R>,
    layer: &Layer,
    store: Option<&Store>,
    stats: &mut Stats,
) -> Result<(), ImportError> {
    let d = &layer.desc;
    let lerr = |err: LayerError| ImportError::Layer { layer: d.digest, entry: None, err: Box::new(err) };
    // Check the compression against the media type before decoding; the
    // bytes sniffed are counted and hashed, and handed to the decoder first.
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = match blob.read(&mut head[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(lerr(LayerError::Read(e))),
        };
        if n == 0 {
            break;
        }
        got += n;
    }
    let sniffed = if got >= 2 && head[..2] == [0x1f, 0x8b] {
        Compression::Gzip
    } else if got >= 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
        Compression::Zstd
    } else {
        Compression::None
    };
    if sniffed != layer.compression {
        return Err(lerr(LayerError::MediaType {
            media_type: d.media_type.clone(),
            declared: layer.compression,
            found: sniffed,
        }));
    }
    let limit = stats.max_bytes.saturating_sub(stats.bytes);
    // One thread reads, verifies and decompresses the blob; this one parses
    // the tar and stores contents. Between them, at most CHANNEL chunks.
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
    let (parsed, decoded) = std::thread::scope(|s| {
        let h = s.spawn(move || decode_layer(blob, &head[..got], layer, limit, tx));
        let mut reader = ChanReader { rx, cur: Arc::new(Vec::new()), pos: 0 };
        let r = read_entries(tree, &mut reader, store, stats, d.digest).and_then(|()| {
            // The diff_id covers the whole uncompressed stream, also past the
            // end-of-archive marker.
            drain(&mut reader).map_err(|e| lerr(LayerError::AfterEnd(e)))
        });
        drop(reader);
        (r, h.join())
    });
    let decoded = decoded.map_err(|_| lerr(LayerError::Panicked))?;
    match (parsed, decoded) {
        // A bad blob or stream explains a parse failure better than the parser.
        (_, Err(Decode::Failed(err))) => Err(lerr(err)),
        (Err(e), _) => Err(e),
        (Ok(()), Err(Decode::Cancelled)) => Err(lerr(LayerError::Stopped)),
        (Ok(()), Ok((diff_id, len))) => {
            stats.bytes += len;
            if diff_id != layer.diff_id {
                return Err(lerr(LayerError::DiffId { actual: diff_id, expected: layer.diff_id }));
            }
            Ok(())
        }
    }
}

/// Uncompressed bytes per message between the threads.
const CHUNK: usize = 256 << 10;
/// Messages in flight between the threads.
const CHANNEL: usize = 8;

enum Decode {
    /// The parser stopped listening (it failed).
    Cancelled,
    /// The blob or its compressed stream is bad.
    Failed(LayerError),
}

/// Reads the blob, verifies it against its descriptor, decompresses it and
/// sends the uncompressed stream on; returns its digest and length.
fn decode_layer<R: Read>(
    blob: BlobReader<R>,
    head: &[u8],
    layer: &Layer,
    limit: u64,
    tx: crossbeam_channel::Sender<io::Result<Arc<Vec<u8>>>>,
) -> Result<(Digest, u64), Decode> {
    // The diff_id of a compressed layer is hashed by a thread of its own:
    // decompressing, hashing the uncompressed stream and hashing each file
    // (the parser's work) are then spread over the cores, not two of them
    // on one thread.
    let hashed = layer.compression != Compression::None;
    let (htx, hrx) = crossbeam_channel::bounded::<Arc<Vec<u8>>>(CHANNEL);
    std::thread::scope(|s| {
        let hasher = hashed.then(|| {
            s.spawn(move || {
                let mut h = Sha256::new();
                for chunk in hrx {
                    h.update(&chunk[..]);
                }
                Digest(h.finalize().into())
            })
        });
        let r = decode_stream(blob, head, layer, limit, tx, hashed.then_some(&htx));
        drop(htx);
        let diff_id = match hasher.map(|h| h.join()) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(_)) => return Err(Decode::Failed(LayerError::Panicked)),
        };
        let (blob_digest, len) = r?;
        Ok((diff_id.unwrap_or(blob_digest), len))
    })
}

/// [`decode_layer`]'s stream: sends the uncompressed chunks to the parser
/// (and to `hash`, the diff_id's thread), then checks the blob; returns the
/// blob's digest and the uncompressed length.
fn decode_stream<R: Read>(
    mut blob: BlobReader<R>,
    head: &[u8],
    layer: &Layer,
    limit: u64,
    tx: crossbeam_channel::Sender<io::Result<Arc<Vec<u8>>>>,
    hash: Option<&crossbeam_channel::Sender<Arc<Vec<u8>>>>,
) -> Result<(Digest, u64), Decode> {
    let d = &layer.desc;
    // the start of the zstd stream, to say what window its frame asks for
    let first = std::cell::RefCell::new(Vec::new());
    let streamed = (|| -> io::Result<Result<u64, Decode>> {
        let buffered = io::BufReader::with_capacity(
            64 << 10,
            Prefix { r: head.chain(&mut blob), keep: ZSTD_HEADER_MAX, first: &first },
        );
        let decoder: Box<dyn Read + '_> = match layer.compression {
            Compression::None => Box::new(buffered),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => {
                let mut z = zstd::stream::read::Decoder::with_buffer(buffered)?;
                z.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Box::new(z)
            }
        };
        // an uncompressed layer is its own diff: its digest is the blob's,
        // which the blob reader computes
        let mut diff = DiffReader { r: decoder, len: 0, limit };
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                match diff.read(&mut chunk[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                return Ok(Ok(diff.len));
            }
            chunk.truncate(n);
            let chunk = Arc::new(chunk);
            if let Some(h) = hash
                && h.send(Arc::clone(&chunk)).is_err()
            {
                return Ok(Err(Decode::Failed(LayerError::Panicked)));
            }
            if tx.send(Ok(chunk)).is_err() {
                return Ok(Err(Decode::Cancelled));
            }
        }
    })();
    let decoded = match streamed {
        Ok(Ok(x)) => x,
        Ok(Err(c)) => return Err(c),
        Err(e) => {
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            if blob.failed {
                return Err(Decode::Failed(LayerError::ReadBlob(e)));
            }
            // A blob that is the wrong size or digest explains a decoding
            // failure better than the decoder does.
            if drain(&mut blob).is_err()
                || blob.len != d.size
                || Digest(blob.hasher.clone().finalize().into()) != d.digest
            {
                return Err(Decode::Failed(LayerError::Mismatch { size: d.size, digest: d.digest, err: e }));
            }
            let note = match layer.compression {
                Compression::Zstd => zstd_window_note(&e, &first.borrow(), ZSTD_WINDOW_LOG_MAX),
                _ => None,
            };
            return Err(Decode::Failed(LayerError::Decompress { err: e, note }));
        }
    };
    drop(tx);
    // The blob itself, to its end, whatever the decoder left.
    drain(&mut blob).map_err(|e| Decode::Failed(LayerError::Drain(e)))?;
    if blob.len != d.size {
        return Err(Decode::Failed(LayerError::BlobSize { got: blob.len, declared: d.size }));
    }
    let actual = Digest(blob.hasher.finalize().into());
    if actual != d.digest {
        return Err(Decode::Failed(LayerError::BlobDigest(actual)));
    }
    Ok((actual, decoded))
}

/// Longest zstd frame header: magic, descriptor, window byte, dictionary
/// id, content size.
const ZSTD_HEADER_MAX: usize = 18;

/// A reader that keeps a copy of the first `keep` bytes read through it.
struct Prefix<'a, R> {
    r: R,
    keep: usize,
    first: &'a std::cell::RefCell<Vec<u8>>,
}

impl<R: Read> Read for Prefix<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        let mut first = self.first.borrow_mut();
        let room = self.keep.saturating_sub(first.len()).min(n);
        first.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// The window a zstd frame asks for, from its header (`None` if the bytes
/// are not a complete frame header).
pub fn zstd_frame_window(h: &[u8]) -> Option<u64> {
    if h.len() < 5 || h[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let fhd = h[4];
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *h.get(5)?;
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    // a single segment: the window is the content size
    let dict = [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs = [1, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + dict;
    let b = h.get(at..at + fcs)?;
    let mut v = 0u64;
    for (i, &x) in b.iter().enumerate() {
        v |= u64::from(x) << (8 * i);
    }
    Some(if fcs == 2 { v + 256 } else { v })
}

/// For a zstd "too much memory" error: the window the frame asks for and
/// the limit, from the stream's first bytes.
pub fn zstd_window_note(e: &dyn std::fmt::Display, first: &[u8], limit_log: u32) -> Option<String> {
    if !e.to_string().contains("too much memory") {
        return None;
    }
    let limit = 1u64 << limit_log;
    Some(match zstd_frame_window(first) {
        Some(w) if w > limit => {
            format!("the frame asks for a window of {w} bytes; the limit is {limit} bytes (2^{limit_log})")
        }
        _ => format!("a frame asks for a window larger than the limit of {limit} bytes (2^{limit_log})"),
    })
}

/// The receiving end of the uncompressed stream.
struct ChanReader {
    rx: crossbeam_channel::Receiver<io::Result<Arc<Vec<u8>>>>,
    cur: Arc<Vec<u8>>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cur = self.fill_buf()?;
        let n = buf.len().min(cur.len());
        buf[..n].copy_from_slice(&cur[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// The chunks as they came, lent without a copy (file contents go from
/// them straight to the store).
impl io::BufRead for ChanReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender is gone: the end of the stream (or its failure,
                // which the sender reports itself).
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.cur.len());
    }
}

/// Applies one uncompressed layer tar to `tree` (call
/// [`Tree::begin_layer`] first); `layer` names the layer in errors. Returns
/// the number of regular files read. This is the core of [`import_image`]
/// without the layout, the blob checks and the decompression (xattrs are
/// dropped as there, without the list of [`Imported::dropped`]).
pub fn apply_tar<R: Read>(tree: &mut Tree, r: R, store: Option<&Store>, layer: Digest) -> Result<u64, ImportError> {
    let mut stats = Stats { files: 0, bytes: 0, max_bytes: u64::MAX, dropped: Dropped::default(), holes: 0 };
    read_entries(tree, io::BufReader::with_capacity(256 << 10, r), store, &mut stats, layer)?;
    Ok(stats.files)
}

/// A layer member's name for messages: `/`-prefixed like every path ocix
/// shows, once (a member named `/tmp/x` is shown `/tmp/x`, not `//tmp/x`).
fn member_display(name: &[u8]) -> String {
    let start = name.iter().position(|&b| b != b'/').unwrap_or(name.len());
    path_display(&name[start..])
}

fn read_entries<R: io::BufRead>(
    tree: &mut Tree,
    r: R,
    store: Option<&Store>,
    stats: &mut Stats,
    layer: Digest,
) -> Result<(), ImportError> {
    let mut tr = TarReader::new(r);
    let mut buf = vec![0u8; 256 << 10];
    // the last entry's raw name (shown only in errors), its buffer reused
    let mut last_name: Option<Vec<u8>> = None;
    loop {
        let terr = |e: TarError, name: &Option<Vec<u8>>| match (e, name) {
            (TarError::Entry { path, msg }, _) => {
                let entry = Some(path.clone());
                ImportError::Layer { layer, entry, err: Box::new(LayerError::Tar(TarError::Entry { path, msg })) }
            }
            (err, Some(n)) => ImportError::Layer {
                layer,
                entry: None,
                err: Box::new(LayerError::AfterEntry { entry: n.clone(), err }),
            },
            (e, None) => ImportError::Layer { layer, entry: None, err: Box::new(LayerError::Tar(e)) },
        };
        let mut h = match tr.next_header() {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => return Err(terr(e, &last_name)),
        };
        let mut xattrs = std::mem::take(&mut h.xattrs);
        let h = h;
        let eerr = |err: LayerError| ImportError::Layer { layer, entry: Some(h.path.clone()), err: Box::new(err) };
        let last = last_name.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&h.path);
        let comps = tree::clean(&h.path).map_err(|e| eerr(LayerError::Tree(e)))?;
        if let Some(last) = comps.last() {
            if last.starts_with(b".wh.") {
                tree.whiteout(&comps).map_err(|e| eerr(LayerError::Tree(e)))?;
                continue;
            }
        }
        xattrs.retain(|k, _| {
            let Some(reason) = DropReason::of(k) else { return true };
            stats.dropped.push(DroppedXattr { reason, layer, path: comps.join(&b'/'), name: k.clone() });
            false
        });
        for (k, v) in &xattrs {
            if k.is_empty() || k.len() > crate::manifest::MAX_NAME {
                return Err(eerr(LayerError::XattrName(k.len())));
            }
            if v.len() > crate::manifest::MAX_XATTR_VALUE {
                return Err(eerr(LayerError::XattrValue { name: k.clone(), len: v.len() }));
            }
        }
        let meta = Meta { mode: h.mode, uid: h.uid, gid: h.gid, mtime: h.mtime, xattrs, uname: None, gname: None };
        let target = |what: &'static str| -> Result<Vec<u8>, ImportError> {
            if h.link.is_empty() || h.link.len() > crate::manifest::MAX_TARGET {
                return Err(eerr(LayerError::Target { what, len: h.link.len() }));
            }
            Ok(h.link.clone())
        };
        let kind = match h.kind {
            EntryType::Dir => NewKind::Dir,
            EntryType::Symlink => NewKind::Symlink(target("symlink")?),
            EntryType::Link => NewKind::Link(target("hardlink")?),
            EntryType::Char => NewKind::Char(Dev { major: h.dev.0, minor: h.dev.1 }),
            EntryType::Block => NewKind::Block(Dev { major: h.dev.0, minor: h.dev.1 }),
            EntryType::Fifo => NewKind::Fifo,
            EntryType::File => {
                let mut c = Content::new(store, h.size)?;
                let terr2 = |e: TarError| eerr(LayerError::Content(e));
                match &h.sparse {
                    None => loop {
                        let b = tr.data_buf().map_err(terr2)?;
                        if b.is_empty() {
                            break;
                        }
                        let n = b.len();
                        c.write(b)?;
                        tr.consume_data(n);
                    },
                    Some(map) => {
                        // a tiny layer may claim a file of exabytes of holes:
                        // hashing them is work the limit must bound
                        let data: u64 = map.iter().map(|&(_, len)| len).sum();
                        stats.holes = stats.holes.saturating_add(h.size - data);
                        if stats.holes > stats.max_bytes {
                            return Err(eerr(LayerError::Holes { size: h.size, limit: stats.max_bytes }));
                        }
                        for &(off, len) in map {
                            c.write_zeros(off - c.len())?;
                            let mut left = len;
                            while left > 0 {
                                let k = left.min(buf.len() as u64) as usize;
                                tr.read_data_exact(&mut buf[..k]).map_err(terr2)?;
                                c.write(&buf[..k])?;
                                left -= k as u64;
                            }
                        }
                        c.write_zeros(h.size - c.len())?;
                    }
                }
                stats.files += 1;
                NewKind::File(c.finish()?)
            }
        };
        tree.add(&comps, meta, kind).map_err(|e| eerr(LayerError::Tree(e)))?;
    }
}
