//! Every media type ocix reads or writes, in one place: the OCI and Docker
//! image documents and layers an import understands, and the types of the
//! artifact that carries an ocix manifest and its blobs in a registry (see
//! [`crate::remote::artifact`]).

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI empty descriptor's content (`{}`), an artifact's config.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer, uncompressed tar (deprecated by OCI, still
/// read).
pub const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable layer, gzip.
pub const OCI_LAYER_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable layer, zstd.
pub const OCI_LAYER_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, uncompressed tar.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker layer, gzip.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker foreign layer, gzip.
pub const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// An encoded ocix manifest (defined with the format, in
/// [`crate::manifest`]).
pub use crate::manifest::MEDIA_TYPE as OCIX_MANIFEST;
/// A file blob listed as a layer of an ocix artifact.
pub const OCIX_FILE: &str = "application/vnd.ocix.file.v1";
/// A file blob compressed with zstd, as a layer.
pub const OCIX_FILE_ZSTD: &str = "application/vnd.ocix.file.v1+zstd";
/// A pack of small file blobs, as a layer.
pub const OCIX_PACK: &str = "application/vnd.ocix.pack.v1";
/// A pack whose members are zstd frames, as a layer.
pub const OCIX_PACK_ZSTD: &str = "application/vnd.ocix.pack.v1+zstd";
/// `artifactType` of the extra manifests of an ocix artifact that only list
/// file blobs.
pub const OCIX_BLOBS: &str = "application/vnd.ocix.blobs.v1";
/// The lazy index of an ocix manifest, zstd-compressed: its tree without
/// file digests, each file's blob by index, and the digest table's chunk
/// digests (see [`crate::remote::lazyidx`]).
pub const OCIX_LAZY: &str = "application/vnd.ocix.lazy.v1+zstd";
/// The digest table of an ocix manifest: its distinct file blobs' sha256s,
/// 32 raw bytes each, in manifest order, fetched by `Range` in chunks.
pub const OCIX_DIGESTS: &str = "application/vnd.ocix.digests.v1";
