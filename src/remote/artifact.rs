//! The OCI form of an ocix manifest in a registry.
//!
//! The tag names an OCI image manifest with `artifactType` =
//! [`MEDIA_TYPE`], the empty config
//! (`application/vnd.oci.empty.v1+json`, `{}`), and as layers first the
//! ocix manifest blob (media type [`MEDIA_TYPE`]),
//! then the packs of small file blobs (see [`pack`](super::pack)), then
//! every other distinct file blob it names ([`OCIX_FILE`], or its
//! zstd form, see [`wire`](super::wire)), in manifest order. Listing the blobs makes them part of the image: a
//! registry links them to the repository, serves them, and its garbage
//! collector keeps them while the tag lives.
//!
//! Registries cap a manifest's size (distribution: 4 MiB); a descriptor
//! takes about 140 bytes. So when a tree has more than
//! [`LAYERS_PER_MANIFEST`] distinct blobs, the tag names an OCI image index
//! instead (`artifactType` the ocix media type too) whose first manifest is
//! the ocix artifact carrying the ocix manifest blob and the packs, followed by
//! "blob list" manifests (`artifactType` [`OCIX_BLOBS`]) of at most
//! that many file blobs each. A reader takes the first manifest whose
//! `artifactType` is the ocix media type, and reads the blob lists only for
//! the compressed file blobs they name: every other file blob is fetched by
//! its own digest from the repository.

use super::pack::{ANN_COUNT, ANN_THRESHOLD, PackLayer};
use super::wire::{ANN_CONTENT, ANN_FRAMES, FramesError, frames_annotation, parse_frames};
use crate::manifest::{Digest, DigestParseError, MEDIA_TYPE};
use crate::oci::media::{
    OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, OCIX_BLOBS, OCIX_DIGESTS, OCIX_FILE, OCIX_FILE_ZSTD, OCIX_LAZY, OCIX_PACK,
    OCIX_PACK_ZSTD,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Media type of an access list layer: the paths (one a line, relative
/// to the root) a first run read, in the order it read them, which a pull
/// or a lazy mount fetches first (see `ocix push --prefetch`).
pub const OCIX_ACCESS: &str = "application/vnd.ocix.access.v1";
/// Largest access list accepted from a remote, in bytes.
pub const MAX_ACCESS: u64 = 16 << 20;

/// Media type of the ocix manifest blob compressed with zstd: a layer
/// beside the plain one (which readers that predate it use), named by the
/// plain blob's digest in the annotation [`ANN_MANIFEST`]; a pull fetches
/// it instead, decodes it (at most the plain layer's size) and checks the
/// result against that digest.
pub const OCIX_MANIFEST_ZSTD: &str = "application/vnd.ocix.manifest.v1+cbor+zstd";
/// Annotation of the compressed manifest layer: the plain manifest's
/// digest.
pub const ANN_MANIFEST: &str = "io.ocix.manifest.digest";

/// The empty config's content.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Default most layers in one manifest (about 2.8 MB of JSON).
pub const LAYERS_PER_MANIFEST: usize = 20_000;

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Artifact type (in an index entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Inline content, base64 (the empty config carries `e30=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Annotations (a pack's member count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// A descriptor of `digest`/`size` with `media_type`.
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.to_string(),
            size,
            artifact_type: None,
            data: None,
            annotations: None,
        }
    }

    /// The empty config descriptor.
    pub fn empty() -> Self {
        let mut d = Descriptor::new(OCI_EMPTY, &Digest::of(EMPTY_CONFIG), EMPTY_CONFIG.len() as u64);
        d.data = Some("e30=".into());
        d
    }
}

/// An OCI image manifest (the fields ocix writes and reads).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_MANIFEST`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// What the artifact is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations (the pack threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An OCI image index (the fields ocix writes and reads).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_INDEX`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// What the artifact is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

/// One manifest to upload: its bytes and its media type.
#[derive(Clone, Debug)]
pub struct Doc {
    /// Media type.
    pub media_type: &'static str,
    /// Encoded JSON.
    pub bytes: Vec<u8>,
}

/// A file blob above the pack threshold as a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayer {
    /// Content digest (the ocix manifest's).
    pub digest: Digest,
    /// Content size.
    pub size: u64,
    /// Compressed: the registry digest and size of its zstd form.
    pub zstd: Option<(Digest, u64)>,
}

impl PackLayer {
    fn descriptor(&self) -> Descriptor {
        let mut ann = BTreeMap::from([(ANN_COUNT.to_string(), self.count.to_string())]);
        let media = match &self.frames {
            Some(f) => {
                ann.insert(ANN_FRAMES.to_string(), frames_annotation(f));
                OCIX_PACK_ZSTD
            }
            None => OCIX_PACK,
        };
        let mut p = Descriptor::new(media, &self.digest, self.size);
        p.annotations = Some(ann);
        p
    }
}

impl FileLayer {
    fn descriptor(&self) -> Descriptor {
        match &self.zstd {
            None => Descriptor::new(OCIX_FILE, &self.digest, self.size),
            Some((d, s)) => {
                let mut l = Descriptor::new(OCIX_FILE_ZSTD, d, *s);
                l.annotations = Some(BTreeMap::from([(ANN_CONTENT.to_string(), self.digest.to_string())]));
                l
            }
        }
    }
}

/// Builds what a push uploads after the blobs: the manifests to PUT by
/// digest first (blob lists), then the one to PUT under the tag.
/// `ocix` describes the ocix manifest blob, `packs` the packs of the blobs
/// of at most `threshold` bytes (see [`pack`](super::pack)), `files` the
/// other file blobs in manifest order; `extra` layers (an access list)
/// follow the packs.
pub fn build(
    ocix: &Descriptor,
    packs: &[PackLayer],
    threshold: u64,
    files: &[FileLayer],
    per_manifest: usize,
    extra: &[Descriptor],
) -> (Vec<Doc>, Doc) {
    let per = per_manifest.max(1);
    let manifest = |artifact: &str, layers: Vec<Descriptor>, ann: Option<BTreeMap<String, String>>| Doc {
        media_type: OCI_MANIFEST,
        bytes: to_json(&ImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: Some(artifact.into()),
            config: Descriptor::empty(),
            layers,
            annotations: ann,
        }),
    };
    let mut head = vec![ocix.clone()];
    head.extend(packs.iter().map(PackLayer::descriptor));
    head.extend(extra.iter().cloned());
    let ann = Some(BTreeMap::from([(ANN_THRESHOLD.to_string(), threshold.to_string())]));
    if files.len() + head.len() <= per {
        head.extend(files.iter().map(FileLayer::descriptor));
        return (Vec::new(), manifest(MEDIA_TYPE, head, ann));
    }
    let main = manifest(MEDIA_TYPE, head, ann);
    let parts: Vec<Doc> =
        files.chunks(per).map(|c| manifest(OCIX_BLOBS, c.iter().map(FileLayer::descriptor).collect(), None)).collect();
    let entry = |doc: &Doc, artifact: &str| {
        let mut d = Descriptor::new(doc.media_type, &Digest::of(&doc.bytes), doc.bytes.len() as u64);
        d.artifact_type = Some(artifact.into());
        d
    };
    let mut manifests = vec![entry(&main, MEDIA_TYPE)];
    manifests.extend(parts.iter().map(|p| entry(p, OCIX_BLOBS)));
    let index = Doc {
        media_type: OCI_INDEX,
        bytes: to_json(&Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            artifact_type: Some(MEDIA_TYPE.into()),
            manifests,
        }),
    };
    let mut first = parts;
    first.push(main);
    (first, index)
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("manifest JSON of plain fields")
}

/// Where an ocix artifact keeps its manifest, packs and compressed blobs.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// The ocix manifest blob.
    pub manifest: Digest,
    /// Its size.
    pub size: u64,
    /// The pack threshold (0 when nothing is packed).
    pub threshold: u64,
    /// Packs, in layer order.
    pub packs: Vec<PackLayer>,
    /// File blobs that travel compressed: content digest -> (registry
    /// digest, registry size). Blobs not listed are fetched by their own
    /// digest.
    pub zstd: Vec<(Digest, Digest, u64)>,
    /// The access list blob ([`OCIX_ACCESS`]) and its size, if any.
    pub access: Option<(Digest, u64)>,
    /// The manifest blob's zstd form ([`OCIX_MANIFEST_ZSTD`]) and its
    /// size, if the artifact has one for this manifest.
    pub manifest_zstd: Option<(Digest, u64)>,
    /// The lazy index ([`OCIX_LAZY`]) and the digest table
    /// ([`OCIX_DIGESTS`]) of this manifest, with their sizes, if the
    /// artifact has both.
    pub lazy: Option<((Digest, u64), (Digest, u64))>,
}

/// How [`find`]'s complaint about an ordinary image (not an ocix
/// artifact) begins.
pub const NOT_OCIX: &str = "not an ocix artifact";

/// What a tag's manifest says to do next.
#[derive(Debug, PartialEq, Eq)]
// made once per pull and taken apart at once: its size does not matter
#[allow(clippy::large_enum_variant)]
pub enum Found {
    /// The ocix artifact.
    Ocix(Layout),
    /// An index: fetch the ocix artifact, and the blob lists for the
    /// compressed blobs they name.
    Index {
        /// The ocix artifact's manifest.
        ocix: Digest,
        /// The blob lists.
        lists: Vec<Digest>,
    },
}

/// Why a registry's manifest is not a readable ocix artifact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The manifest is not JSON.
    #[error("manifest is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// An index that does not parse as one.
    #[error("malformed OCI index: {0}")]
    Index(serde_json::Error),
    /// A manifest that does not parse as one.
    #[error("malformed OCI manifest: {0}")]
    Manifest(serde_json::Error),
    /// An index with no ocix artifact in it.
    #[error("an index with no manifest of artifactType {MEDIA_TYPE} (not an ocix artifact)")]
    NoOcixInIndex,
    /// The ocix artifact an index names is itself an index.
    #[error("an index inside an index")]
    NestedIndex,
    /// An ordinary image (or another artifact), not an ocix artifact.
    #[error(
        "{NOT_OCIX} (artifactType {:?}, no layer of media type {MEDIA_TYPE})",
        .artifact_type.as_deref().unwrap_or("none")
    )]
    NotOcix {
        /// The manifest's `artifactType`, if any.
        artifact_type: Option<String>,
    },
    /// A descriptor's digest does not parse.
    #[error("{0}")]
    Digest(DigestParseError),
    /// A compressed file blob without its content digest.
    #[error("compressed blob {0} has no {ANN_CONTENT} annotation")]
    NoContentDigest(String),
    /// A pack without its member count.
    #[error("pack {0} has no {ANN_COUNT} annotation")]
    NoCount(String),
    /// A compressed pack without its frames' lengths.
    #[error("compressed pack {0} has no {ANN_FRAMES} annotation")]
    NoFrames(String),
    /// A compressed pack whose frames' lengths are wrong.
    #[error("pack {pack}: {err}")]
    Frames {
        /// The pack's digest as the descriptor says it.
        pack: String,
        /// What is wrong.
        err: FramesError,
    },
    /// A pack threshold that is not a number.
    #[error("bad {ANN_THRESHOLD} {0:?}")]
    Threshold(String),
    /// Packs but no threshold to find their members by.
    #[error("packs but no {ANN_THRESHOLD} annotation")]
    NoThreshold,
}

fn ann<'a>(a: &'a Option<BTreeMap<String, String>>, k: &str) -> Option<&'a String> {
    a.as_ref().and_then(|a| a.get(k))
}

fn parse_digest(s: &str) -> Result<Digest, ArtifactError> {
    Digest::parse(s).map_err(ArtifactError::Digest)
}

/// The compressed file blobs an artifact's layers name: (content digest,
/// registry digest, registry size).
fn zstd_files(layers: &[Descriptor]) -> Result<Vec<(Digest, Digest, u64)>, ArtifactError> {
    let mut out = Vec::new();
    for l in layers.iter().filter(|l| l.media_type == OCIX_FILE_ZSTD) {
        let c = ann(&l.annotations, ANN_CONTENT).ok_or_else(|| ArtifactError::NoContentDigest(l.digest.clone()))?;
        out.push((parse_digest(c)?, parse_digest(&l.digest)?, l.size));
    }
    Ok(out)
}

/// Reads a blob list of an index (see [`Found::Index`]): the compressed
/// file blobs it names.
pub fn blob_list(bytes: &[u8]) -> Result<Vec<(Digest, Digest, u64)>, ArtifactError> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(ArtifactError::Manifest)?;
    zstd_files(&m.layers)
}

/// Reads a fetched manifest or index and finds the ocix manifest in it.
pub fn find(bytes: &[u8], media_type: &str) -> Result<Found, ArtifactError> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(ArtifactError::NotJson)?;
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or(media_type);
    if mt == OCI_INDEX || v.get("manifests").is_some() {
        let ix: Index = serde_json::from_value(v).map_err(ArtifactError::Index)?;
        let m = ix
            .manifests
            .iter()
            .find(|m| m.artifact_type.as_deref() == Some(MEDIA_TYPE))
            .ok_or(ArtifactError::NoOcixInIndex)?;
        let lists = ix
            .manifests
            .iter()
            .filter(|m| m.artifact_type.as_deref() == Some(OCIX_BLOBS))
            .map(|m| parse_digest(&m.digest))
            .collect::<Result<_, _>>()?;
        return Ok(Found::Index { ocix: parse_digest(&m.digest)?, lists });
    }
    let m: ImageManifest = serde_json::from_value(v).map_err(ArtifactError::Manifest)?;
    let is_ocix = m.artifact_type.as_deref() == Some(MEDIA_TYPE) || m.config.media_type == MEDIA_TYPE;
    let layer = m.layers.iter().find(|l| l.media_type == MEDIA_TYPE);
    match layer {
        Some(l) if is_ocix || m.layers.first() == Some(l) => {
            let mut packs = Vec::new();
            for p in m.layers.iter().filter(|l| l.media_type == OCIX_PACK || l.media_type == OCIX_PACK_ZSTD) {
                let count = ann(&p.annotations, ANN_COUNT)
                    .and_then(|c| c.parse::<u64>().ok())
                    .ok_or_else(|| ArtifactError::NoCount(p.digest.clone()))?;
                let frames = if p.media_type == OCIX_PACK_ZSTD {
                    let f = ann(&p.annotations, ANN_FRAMES).ok_or_else(|| ArtifactError::NoFrames(p.digest.clone()))?;
                    let frames = parse_frames(f, count, p.size);
                    Some(frames.map_err(|err| ArtifactError::Frames { pack: p.digest.clone(), err })?)
                } else {
                    None
                };
                packs.push(PackLayer { digest: parse_digest(&p.digest)?, size: p.size, count, frames });
            }
            let threshold = match ann(&m.annotations, ANN_THRESHOLD) {
                Some(t) => t.parse::<u64>().map_err(|_| ArtifactError::Threshold(t.clone()))?,
                None if packs.is_empty() => 0,
                None => return Err(ArtifactError::NoThreshold),
            };
            Ok(Found::Ocix(Layout {
                manifest: parse_digest(&l.digest)?,
                size: l.size,
                threshold,
                packs,
                zstd: zstd_files(&m.layers)?,
                manifest_zstd: match m.layers.iter().find(|z| {
                    z.media_type == OCIX_MANIFEST_ZSTD && ann(&z.annotations, ANN_MANIFEST) == Some(&l.digest)
                }) {
                    Some(z) => Some((parse_digest(&z.digest)?, z.size)),
                    None => None,
                },
                lazy: {
                    let of = |mt: &str| {
                        m.layers
                            .iter()
                            .find(|z| z.media_type == mt && ann(&z.annotations, ANN_MANIFEST) == Some(&l.digest))
                    };
                    match (of(OCIX_LAZY), of(OCIX_DIGESTS)) {
                        (Some(x), Some(t)) => {
                            Some(((parse_digest(&x.digest)?, x.size), (parse_digest(&t.digest)?, t.size)))
                        }
                        _ => None,
                    }
                },
                access: match m.layers.iter().find(|l| l.media_type == OCIX_ACCESS) {
                    Some(a) => Some((parse_digest(&a.digest)?, a.size)),
                    None => None,
                },
            }))
        }
        _ => Err(ArtifactError::NotOcix { artifact_type: m.artifact_type }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<FileLayer> {
        (0..n).map(|i| FileLayer { digest: Digest::of(&i.to_le_bytes()), size: i as u64, zstd: None }).collect()
    }

    #[test]
    fn small_tree_is_one_manifest() {
        let o = Descriptor::new(MEDIA_TYPE, &Digest::of(b"m"), 1);
        let packs = vec![
            PackLayer { digest: Digest::of(b"p"), size: 7, count: 2, frames: None },
            PackLayer { digest: Digest::of(b"q"), size: 9, count: 2, frames: Some(vec![4, 5]) },
        ];
        let mut f = files(3);
        f[1].zstd = Some((Digest::of(b"z"), 1));
        let (first, top) = build(&o, &packs, 5, &f, 10, &[]);
        assert!(first.is_empty());
        assert_eq!(top.media_type, OCI_MANIFEST);
        let m: ImageManifest = serde_json::from_slice(&top.bytes).unwrap();
        assert_eq!(m.layers.len(), 6);
        assert_eq!(m.layers[2].media_type, OCIX_PACK_ZSTD);
        assert_eq!(m.layers[4].media_type, OCIX_FILE_ZSTD);
        assert_eq!(m.layers[4].digest, Digest::of(b"z").to_string());
        assert_eq!(m.config.digest, "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        let want = Layout {
            manifest: Digest::of(b"m"),
            size: 1,
            threshold: 5,
            packs,
            zstd: vec![(f[1].digest, Digest::of(b"z"), 1)],
            access: None,
            manifest_zstd: None,
            lazy: None,
        };
        assert_eq!(find(&top.bytes, "").unwrap(), Found::Ocix(want));
    }

    #[test]
    fn large_tree_is_an_index_of_parts() {
        let o = Descriptor::new(MEDIA_TYPE, &Digest::of(b"m"), 1);
        let mut f = files(25);
        f[24].zstd = Some((Digest::of(b"z"), 3));
        let (first, top) = build(&o, &[], 0, &f, 10, &[]);
        assert_eq!(first.len(), 4); // 3 parts + the main artifact
        assert_eq!(top.media_type, OCI_INDEX);
        let main = first.last().unwrap();
        let lists: Vec<Digest> = first[..3].iter().map(|d| Digest::of(&d.bytes)).collect();
        assert_eq!(find(&top.bytes, "").unwrap(), Found::Index { ocix: Digest::of(&main.bytes), lists });
        let want = Layout {
            manifest: Digest::of(b"m"),
            size: 1,
            threshold: 0,
            packs: vec![],
            zstd: vec![],
            access: None,
            manifest_zstd: None,
            lazy: None,
        };
        assert_eq!(find(&main.bytes, "").unwrap(), Found::Ocix(want));
        assert_eq!(blob_list(&first[2].bytes).unwrap(), vec![(f[24].digest, Digest::of(b"z"), 3)]);
        let total: usize =
            first[..3].iter().map(|p| serde_json::from_slice::<ImageManifest>(&p.bytes).unwrap().layers.len()).sum();
        assert_eq!(total, 25);
    }

    #[test]
    fn a_compressed_manifest_layer_is_found_only_for_its_manifest() {
        let o = Descriptor::new(MEDIA_TYPE, &Digest::of(b"m"), 1);
        let mut z = Descriptor::new(OCIX_MANIFEST_ZSTD, &Digest::of(b"z"), 9);
        z.annotations = Some(BTreeMap::from([(ANN_MANIFEST.to_string(), Digest::of(b"m").to_string())]));
        let a = Descriptor::new(OCIX_ACCESS, &Digest::of(b"a"), 4);
        let (_, top) = build(&o, &[], 0, &files(2), 10, &[z.clone(), a]);
        let Found::Ocix(l) = find(&top.bytes, "").unwrap() else { panic!("not an artifact") };
        assert_eq!(l.manifest_zstd, Some((Digest::of(b"z"), 9)));
        assert_eq!(l.access, Some((Digest::of(b"a"), 4)));
        assert_eq!(l.lazy, None);
        // the lazy index and digest table: both, of this manifest
        let named = |mt: &str, what: &[u8], of: &[u8]| {
            let mut d = Descriptor::new(mt, &Digest::of(what), 5);
            d.annotations = Some(BTreeMap::from([(ANN_MANIFEST.to_string(), Digest::of(of).to_string())]));
            d
        };
        let (ix, dt) = (named(OCIX_LAZY, b"i", b"m"), named(OCIX_DIGESTS, b"t", b"m"));
        let (_, top) = build(&o, &[], 0, &files(2), 10, &[ix.clone(), dt.clone()]);
        let Found::Ocix(l) = find(&top.bytes, "").unwrap() else { panic!("not an artifact") };
        assert_eq!(l.lazy, Some(((Digest::of(b"i"), 5), (Digest::of(b"t"), 5))));
        for extra in [vec![ix.clone()], vec![ix, named(OCIX_DIGESTS, b"t", b"x")]] {
            let (_, top) = build(&o, &[], 0, &files(2), 10, &extra);
            let Found::Ocix(l) = find(&top.bytes, "").unwrap() else { panic!("not an artifact") };
            assert_eq!(l.lazy, None);
        }
        // one that names another manifest is not used
        z.annotations = Some(BTreeMap::from([(ANN_MANIFEST.to_string(), Digest::of(b"x").to_string())]));
        let (_, top) = build(&o, &[], 0, &files(2), 10, &[z]);
        let Found::Ocix(l) = find(&top.bytes, "").unwrap() else { panic!("not an artifact") };
        assert_eq!(l.manifest_zstd, None);
    }

    #[test]
    fn ordinary_image_is_refused() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:00","size":1}]}"#;
        assert!(find(m, "").unwrap_err().to_string().contains("not an ocix artifact"));
    }

    #[test]
    fn malformed_compression_annotations_are_refused() {
        let o = Descriptor::new(MEDIA_TYPE, &Digest::of(b"m"), 1);
        let packs = [PackLayer { digest: Digest::of(b"q"), size: 9, count: 2, frames: Some(vec![4, 5]) }];
        let mut f = files(2);
        f[1].zstd = Some((Digest::of(b"z"), 1));
        let (_, top) = build(&o, &packs, 5, &f, 10, &[]);
        let good = String::from_utf8(top.bytes).unwrap();
        for (from, to) in [
            ("\"4,5\"", "\"4,6\""),
            ("\"4,5\"", "\"9\""),
            ("\"io.ocix.pack.frames\"", "\"io.ocix.pack.other\""),
            ("\"io.ocix.file.digest\"", "\"io.ocix.file.other\""),
        ] {
            assert!(good.contains(from), "{from}");
            let bad = good.replace(from, to);
            assert!(find(bad.as_bytes(), "").is_err(), "{to} accepted");
        }
    }
}
