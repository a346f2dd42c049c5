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
//! - [`materialize`]: manifest + store -> a real root filesystem (`unpack`,
//!   and `--update` bringing a drifted tree back to the manifest).
//! - [`rootless`]: the `user.rootlesscontainers` payload that keeps owners
//!   an unprivileged unpack cannot set.
//! - [`export`]: manifest + blobs -> an OCI image in a layout; a bundle's
//!   drift -> a new layer on its image.
//! - [`diff`]: manifest vs manifest -> typed drift findings.
//! - [`filter`]: exclude patterns, shared by [`scan`] and [`diff`].
//! - [`mount`]: manifest + store -> an overlay mount of an EROFS metadata
//!   image, no file data copied.
//! - [`remote`]: blobs over the network (registries, static HTTP stores).
//! - [`bundle`]: rootfs + image config -> OCI runtime bundle config.json.
//! - [`render`]: manifest -> text, JSON, BSD mtree spec.
//! - [`pipeline`]: whole runs joining a source to a sink (pull while
//!   unpacking, image to rootfs or bundle, either mounted), downstream of
//!   both.
//! - [`progress`]: how long work reports its progress; the library never
//!   draws it.
//! - [`sys`]: the thin layer over filesystem syscalls, with errors that name
//!   the call and the path.
//! - [`cli`]: the `ocix` command line.
//!
//! ocix holds no `unsafe` code, and the crate forbids it: raw syscalls go
//! through rustix's safe calls, and only in [`sys`]. A call that ever needs
//! `unsafe` belongs in [`sys`], with the crate-wide `forbid` turned into one
//! per module for every other module.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod cli;
pub mod diff;
pub mod export;
pub mod filter;
pub mod manifest;
pub mod materialize;
pub mod mount;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub(crate) mod queue;
pub mod remote;
pub mod render;
pub mod rootless;
pub mod scan;
pub mod store;
pub mod sys;
