//! Blobs over the network: a manifest and its blobs moved between a local
//! [`Store`](crate::store::Store) and an OCI distribution registry
//! (`docker://HOST/REPO:TAG`) or a static HTTP(S) store
//! (`https://host/prefix/` serving `blobs/sha256/<hex>`). A remote is one
//! more blob source feeding the store ahead of unpack, and a sink for push:
//! sources -> manifest + store -> sinks.
//!
//! - [`reference`]: parsing `docker://...` and `http(s)://...` locations.
//! - [`auth`]: auth.json credentials and the `WWW-Authenticate` flow.
//! - [`client`]: HTTP requests against a registry (reqwest, rustls with
//!   the ring provider): blobs, manifests, uploads, retries.
//! - [`image`]: an ordinary OCI/Docker image imported from a registry,
//!   its layers streamed through the layout import's pipeline.
//! - [`artifact`]: the OCI manifest that carries an ocix manifest.
//! - [`pack`]: small blobs grouped into packs, fetched by byte range.
//! - [`wire`]: zstd on the wire, decoded as it arrives.
//! - [`pull`] and [`push`]: whole transfers, with bounded concurrency.
//!
//! Every blob fetched is streamed into a store temporary file and named by
//! its digest only once its sha256 and size match; nothing received is held
//! whole in memory except manifests (bounded by [`MAX_MANIFEST`]).

pub mod artifact;
pub mod auth;
pub mod client;
pub mod image;
pub mod pack;
pub mod pull;
pub mod push;
pub mod reference;
pub mod wire;

pub use client::{Client, Remote};
pub use pull::{PullOptions, PullReport, pull, pull_with};
pub use push::{PushOptions, PushReport, push};
pub use reference::Reference;

use crate::manifest::{DecodeError, Digest};
use crate::store::StoreError;
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
    /// The registry's manifest is not an ocix artifact or is malformed.
    #[error("{url}: {why}")]
    Artifact {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The tag names an ordinary image, not an ocix artifact.
    #[error("{url}: {why}")]
    NotOcix {
        /// The URL.
        url: String,
        /// What the registry holds instead.
        why: String,
    },
    /// The ocix manifest fetched does not decode.
    #[error("{url}: invalid OCIX manifest: {source}")]
    Manifest {
        /// The URL.
        url: String,
        /// The decoder's complaint.
        source: DecodeError,
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
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("starting the network runtime: {0}")]
    Runtime(std::io::Error),
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
