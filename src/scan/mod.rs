//! Source: a real directory tree -> manifest (+ blobs in a store).
//!
//! (Being written: this file currently holds the API only.)

use crate::manifest::Manifest;
use crate::store::Store;
use std::path::Path;

/// How to scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Glob patterns of paths to leave out. A pattern without `/` matches a
    /// name at any depth; one with `/` matches the path relative to the root.
    pub excludes: Vec<String>,
    /// Read owners from `user.rootlesscontainers` (a tree unpacked without
    /// privilege): the on-disk owner is ignored and the xattr is not recorded.
    pub rootless: bool,
    /// Descend into directories on other filesystems.
    pub cross_mounts: bool,
    /// Hashing threads; 0 means one per CPU.
    pub threads: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// A finished scan.
#[derive(Debug)]
pub struct Scan {
    /// The tree's manifest.
    pub manifest: Manifest,
    /// Non-fatal findings (entries that vanished while scanned, sockets...).
    pub warnings: Vec<String>,
    /// Regular files hashed.
    pub files: u64,
    /// Bytes hashed.
    pub bytes: u64,
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root could not be opened or read.
    #[error(transparent)]
    Root(#[from] crate::sys::SysError),
    /// Entries that could not be read; the manifest is not produced.
    #[error("{} entries could not be scanned:\n  {}", .0.len(), .0.join("\n  "))]
    Entries(Vec<String>),
    /// A blob could not be stored.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An exclude pattern is not a valid glob.
    #[error("invalid --exclude pattern {0}")]
    Pattern(String),
}

/// Scans `dir`; with `store`, also puts every file's content there.
pub fn scan_dir(dir: &Path, store: Option<&Store>, opts: &ScanOptions) -> Result<Scan, ScanError> {
    let _ = (dir, store, opts);
    unimplemented!("scan_dir is being written")
}
