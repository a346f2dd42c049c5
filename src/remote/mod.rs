//! Blobs over the network: a manifest and its blobs moved between a local
//! [`Store`](crate::store::Store) and an OCI distribution registry
//! (`docker://HOST/REPO:TAG`) or a static HTTP(S) store
//! (`https://host/prefix/` serving `blobs/sha256/<hex>`). A remote is one
//! more blob source feeding the store ahead of unpack, and a sink for push:
//! sources -> manifest + store -> sinks.
//!
//! - [`mod@reference`]: parsing `docker://...` and `http(s)://...` locations.
//! - [`auth`]: auth.json credentials and the `WWW-Authenticate` flow.
//! - [`client`]: HTTP requests against a registry or static store
//!   (reqwest, rustls with the ring provider): blobs, manifests, uploads,
//!   retries, resumption.
//! - [`fetch`]: file blobs into a store, one by one or as runs of pack
//!   members, decoded from their wire form.
//! - [`image`]: an ordinary OCI/Docker image imported from a registry,
//!   its layers streamed through the layout import's pipeline.
//! - [`lazy`] and [`lazyfs`]: blobs fetched when first read, served by a
//!   FUSE data layer under a lazy mount (`ocix mount docker://...`).
//! - [`artifact`]: the OCI manifest that carries an ocix manifest.
//! - [`pack`]: small blobs grouped into packs, fetched by byte range.
//! - [`wire`]: zstd on the wire, decoded as it arrives.
//! - [`mod@pull`] and [`mod@push`]: whole transfers, with bounded concurrency.
//!
//! Every blob fetched is streamed into a store temporary file and named by
//! its digest only once its sha256 and size match; nothing received is held
//! whole in memory except manifests (bounded by [`MAX_MANIFEST`]).

pub mod artifact;
pub mod auth;
pub mod client;
pub mod fetch;
pub mod image;
pub mod lazy;
pub mod lazyfs;
pub mod lazyidx;
pub mod pack;
pub mod pull;
pub mod push;
pub mod reference;
pub mod wire;

pub use client::Client;
pub use pull::{PullOptions, PullReport, pull, pull_with};
pub use push::{PushOptions, PushReport, push};
pub use reference::{Reference, Remote};

use crate::manifest::{DecodeError, Digest, Kind, Manifest};
use crate::store::StoreError;
use std::collections::HashSet;
use std::time::Duration;

/// Largest manifest (OCI or ocix) accepted from a remote, in bytes.
pub const MAX_MANIFEST: u64 = 64 << 20;

/// How to talk to a remote.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Use plain HTTP even for a host that is not loopback.
    pub insecure: bool,
    /// Connect timeout, and the longest wait for any read.
    pub timeout: Duration,
    /// Retries of a request after a timeout, a connection error or a 5xx
    /// (with exponential backoff from 250 ms, capped at 4 s).
    pub retries: u32,
    /// auth.json files to look credentials up in (see
    /// [`auth::auth_files`]).
    pub auth_files: Vec<std::path::PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions { insecure: false, timeout: Duration::from_secs(30), retries: 4, auth_files: auth::auth_files() }
    }
}

/// What can go wrong talking to a remote.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The location does not parse.
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    /// The request could not be made or its answer not read (connection
    /// refused, reset, timeout, TLS).
    #[error("{op} {url}: {detail}")]
    Transport {
        /// Method and what was asked for.
        op: String,
        /// The URL.
        url: String,
        /// The cause, with its chain.
        detail: String,
        /// Whether a retry may help.
        transient: bool,
    },
    /// The server answered with an unexpected status.
    #[error("{op} {url}: {status}{detail}")]
    Status {
        /// Method and what was asked for.
        op: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The registry's error message, if it sent one (with a leading
        /// `": "`).
        detail: String,
    },
    /// Authentication failed or was needed and no credentials were found.
    #[error("{url}: 401 Unauthorized: {detail}")]
    Unauthorized {
        /// The URL.
        url: String,
        /// What was tried.
        detail: String,
    },
    /// The server said one digest and meant another.
    #[error("{url}: Docker-Content-Digest {got} but expected {expected}")]
    DigestHeader {
        /// The URL.
        url: String,
        /// What the header said.
        got: String,
        /// What was expected.
        expected: Digest,
    },
    /// Content did not match its digest (nothing was stored under it).
    #[error("{url}: content has digest {actual}, expected {expected} (not stored)")]
    Corrupt {
        /// The URL.
        url: String,
        /// Expected digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Wire bytes that do not decode to the blob (nothing was stored).
    #[error("{url}: blob {digest}: {why} (not stored)")]
    Content {
        /// The URL.
        url: String,
        /// The blob's content digest.
        digest: Digest,
        /// What is wrong.
        why: String,
    },
    /// The server sent more or fewer bytes than the blob has.
    #[error("{url}: {got} bytes, expected {expected} (not stored)")]
    WrongSize {
        /// The URL.
        url: String,
        /// Expected size.
        expected: u64,
        /// Bytes received (at least this many when too long).
        got: u64,
    },
    /// A manifest or token answer exceeds its limit.
    #[error("{url}: answer larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The remote cannot do what was asked, or answered in a way ocix
    /// cannot use.
    #[error("{url}: {why}")]
    Protocol {
        /// The URL (or the remote).
        url: String,
        /// What is wrong.
        why: ProtocolError,
    },
    /// The registry's manifest is not a readable ocix artifact.
    #[error("{url}: {err}")]
    Format {
        /// The URL.
        url: String,
        /// What is wrong.
        err: artifact::ArtifactError,
    },
    /// A lazy index layer that does not decode, or does not fit the
    /// artifact.
    #[error("{url}: lazy index: {err}")]
    LazyIndex {
        /// The layer's URL.
        url: String,
        /// What is wrong.
        err: lazyidx::IndexError,
    },
    /// A chunk of the digest table whose bytes are not the ones the lazy
    /// index names (nothing of it was used).
    #[error("{url}: {why}")]
    DigestChunk {
        /// The digest table's URL.
        url: String,
        /// Which chunk, and its digests.
        why: Box<lazyidx::ChunkMismatch>,
    },
    /// The artifact's packs do not fit the ocix manifest it carries.
    #[error("{url}: {err}")]
    Packs {
        /// The remote.
        url: String,
        /// What is wrong.
        err: pack::PackError,
    },
    /// The tag names an ordinary image, not an ocix artifact.
    #[error("{url}: {why}")]
    NotOcix {
        /// The URL.
        url: String,
        /// What the registry holds instead.
        why: artifact::ArtifactError,
    },
    /// The ocix manifest fetched does not decode.
    #[error("{url}: invalid OCIX manifest: {err}")]
    Manifest {
        /// The URL.
        url: String,
        /// The decoder's complaint.
        err: DecodeError,
    },
    /// Some blobs could not be fetched or uploaded; those done are kept.
    #[error(
        "{failed} blob(s) failed, {fetched} transferred, {missing} still missing (rerun to transfer only those): {first}"
    )]
    Incomplete {
        /// Blobs that failed.
        failed: usize,
        /// Blobs transferred before the transfer stopped.
        fetched: usize,
        /// Blobs still to transfer.
        missing: usize,
        /// The first failure.
        first: Box<RemoteError>,
    },
    /// The pull was stopped by its caller (an unpack that failed).
    #[error("stopped: {fetched} blob(s) transferred, {missing} still missing")]
    Cancelled {
        /// Blobs transferred before the stop.
        fetched: usize,
        /// Blobs not transferred.
        missing: usize,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading a local file (prefetch list) failed.
    #[error("{path}: {err}")]
    Io {
        /// The file, as named in messages (a store blob may be named with
        /// what it stands for).
        path: String,
        /// The error.
        err: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("starting the network runtime: {0}")]
    Runtime(std::io::Error),
}

/// What a remote cannot do, or answered that ocix cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A manifest or upload asked of a static HTTP store.
    #[error("a static HTTP store has no manifests or uploads (name the manifest by digest)")]
    StaticStore,
    /// A pull from a static HTTP store without the manifest's digest.
    #[error("a static HTTP store needs the manifest's digest")]
    NoManifestDigest,
    /// An upload answer without a `Location`.
    #[error("upload answer has no Location header")]
    NoLocation,
    /// An upload `Location` that is neither a URL nor an absolute path.
    #[error("unusable upload Location {0:?}")]
    BadLocation(String),
    /// A 206 answer for another range than the one asked for.
    #[error("asked for bytes from {from}, got Content-Range {got:?}")]
    WrongRange {
        /// The first byte asked for.
        from: u64,
        /// The first byte the answer says it carries.
        got: Option<u64>,
    },
}

impl RemoteError {
    /// Whether retrying the same request may succeed (timeouts, connection
    /// errors, 5xx, 429, 408).
    pub fn transient(&self) -> bool {
        match self {
            RemoteError::Transport { transient, .. } => *transient,
            RemoteError::Status { status, .. } => {
                status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
            }
            _ => false,
        }
    }
}

/// A runtime for one transfer: a few workers for the connections; the
/// transfer itself is one task driving bounded concurrent futures.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, RemoteError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(RemoteError::Runtime)
}

/// The distinct file blobs of a manifest, `(digest, size)` in manifest order.
pub fn file_blobs(m: &Manifest) -> Vec<(Digest, u64)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (_, e) in m.walk() {
        if let Kind::File(f) = &e.kind {
            if let Some(d) = f.digest {
                if seen.insert(d) {
                    out.push((d, f.size));
                }
            }
        }
    }
    out
}

/// [`file_blobs`] of a compact manifest.
pub fn file_blobs_compact(m: &crate::manifest::Compact) -> Vec<(Digest, u64)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in m.nodes() {
        if let Some(f) = n.file()
            && let Some(&d) = f.digest
            && seen.insert(d)
        {
            out.push((d, f.size));
        }
    }
    out
}

/// A reqwest error as one line with its causes, timeouts said plainly.
pub(crate) fn transport(op: &str, url: &str, e: reqwest::Error, timeout: Duration) -> RemoteError {
    let mut detail = if e.is_timeout() {
        format!("timed out (no answer within {} s)", timeout.as_secs_f64())
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        String::new()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        let t = s.to_string();
        if !detail.contains(&t) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&t);
        }
        src = s.source();
    }
    if detail.is_empty() {
        detail = e.to_string();
    }
    let transient = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() || e.is_decode();
    RemoteError::Transport { op: op.to_string(), url: url.to_string(), detail, transient }
}
