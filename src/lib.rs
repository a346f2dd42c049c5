//! ocix moves container filesystems between three forms: OCI images, canonical
//! OCIX manifests (one CBOR document describing a whole tree, with file
//! contents named by sha256 and kept as blobs in a content-addressed store),
//! and real root filesystems.
//!
//! Data flows one way, sources -> manifest -> sinks:
//! - [`manifest`]: the model and its canonical encoding (depends on nothing).
//! - [`store`]: the content-addressed blob store.
//! - [`scan`]: a directory tree -> manifest (+ blobs).
//! - [`oci`]: an OCI image layout -> manifest (+ blobs), layers applied in memory.
//! - [`diff`]: manifest vs manifest -> typed drift findings.
//! - [`mount`]: manifest + store -> an overlay mount of an EROFS metadata
//!   image, no file data copied.
//! - [`remote`]: blobs over the network (registries, static HTTP stores).
//! - [`bundle`]: rootfs + image config -> OCI runtime bundle config.json.
//! - [`render`]: manifest -> text, JSON, BSD mtree spec.
//! - [`sys`]: the thin layer over filesystem syscalls, with errors that name
//!   the call and the path.
//! - [`cli`]: the `ocix` command line.

pub mod bundle;
pub mod cli;
pub mod diff;
pub mod manifest;
pub mod materialize;
pub mod mount;
pub mod oci;
pub mod remote;
pub mod render;
pub mod rootless;
pub mod scan;
pub mod store;
pub mod sys;
