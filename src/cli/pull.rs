//! `ocix pull REMOTE --store STORE [-o M]`: fetch a manifest and the blobs
//! the store lacks from a registry or a static HTTP store.

use super::Global;
use crate::manifest::Digest;
use crate::remote::{self, PullOptions, Remote, RemoteOptions};
use crate::store::Store;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Connection flags of every command that talks to a registry.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Speak plain HTTP to the registry. Without it HTTPS is used (CA
    /// certificates from the system or SSL_CERT_FILE), except that a
    /// registry on localhost/127.0.0.1/[::1] that does not speak TLS gets
    /// plain HTTP.
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to wait for a connection or for any read before the request
    /// counts as failed (then retried).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    /// Retries of a request after a timeout, connection error or 5xx, with
    /// backoff from 250 ms to 4 s.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,
    /// An auth.json to look credentials up in before the usual ones
    /// ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// Connection flags and the transfer's concurrency, for pull, push and
/// unpack.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Blobs transferred at once.
    #[arg(long, short = 'j', default_value_t = 16, value_name = "N")]
    pub jobs: usize,
}

impl RemoteArgs {
    /// The library's connection options.
    pub fn options(&self) -> RemoteOptions {
        self.conn.options()
    }
}

impl ConnArgs {
    /// The library's connection options.
    pub fn options(&self) -> RemoteOptions {
        let mut auth_files = remote::auth::auth_files();
        if let Some(f) = &self.authfile {
            auth_files.insert(0, f.clone());
        }
        RemoteOptions {
            insecure: self.insecure,
            timeout: Duration::from_secs(self.timeout.max(1)),
            retries: self.retries,
            auth_files,
        }
    }
}

/// Arguments of `ocix pull`; the long help is [`LONG_HELP`].
#[derive(clap::Args, Debug)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// docker://HOST[:PORT]/REPO[:TAG|@DIGEST], or http(s)://HOST[:PORT]/PREFIX/
    /// (a static store serving PREFIX/blobs/sha256/<hex>; needs --manifest).
    pub source: String,
    /// The local blob store (created if missing).
    #[arg(long)]
    pub store: PathBuf,
    /// Where to write the manifest (`-` for standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The manifest's digest, for a static HTTP store.
    #[arg(long, value_name = "DIGEST")]
    pub manifest: Option<String>,
    /// A file of paths (one a line, relative to the root) whose blobs are
    /// fetched first.
    #[arg(long, value_name = "PATHS-FILE")]
    pub prefetch: Option<PathBuf>,
    /// Connection flags.
    #[command(flatten)]
    pub net: RemoteArgs,
}

/// Shown by `ocix pull --help`.
pub const LONG_HELP: &str = "\
Finds the ocix manifest (a registry tag names an OCI artifact whose first
layer is the manifest blob; a static store is asked for the blob named by
--manifest), checks that it decodes, and keeps it in the store. Then fetches
every file blob the store does not have yet, --jobs at a time, the
--prefetch paths' blobs first. Small blobs that `ocix push` grouped into
packs come with one Range request per run of missing ones (the whole pack
into an empty store). Each blob is streamed into a temporary file
of the store and named by its digest only when its size and sha256 match;
wrong bytes are reported and never stored. Timeouts, connection errors and
5xx answers are retried with backoff; a blob cut off midway resumes with a
Range request. If blobs still fail, those fetched are kept: a rerun fetches
only the rest. -v prints the blobs fetched and skipped and the bytes.

A static store is any web server publishing a store directory, with the
manifest kept in it as a blob too, e.g.
  cp m.ocix STORE/blobs/sha256/$(ocix digest m.ocix | cut -d: -f2)

Credentials: anonymous, or basic / bearer token as the registry's challenge
asks, with the login found in auth.json (see --authfile).

Examples:
  ocix pull docker://127.0.0.1:5000/ocix/debian:12 --store /var/lib/ocix -o debian.ocix
  ocix pull https://blobs.example/ocix/ --manifest sha256:... --store S -o m.ocix";

/// Runs the subcommand.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    let m = pull_to_store(&a, g)?;
    if let Some(o) = &a.output {
        super::write_output(Some(o), &m)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn pull_to_store(a: &Args, g: Global) -> anyhow::Result<Vec<u8>> {
    let remote = Remote::parse(&a.source)?;
    let manifest = a.manifest.as_deref().map(Digest::parse).transpose()?;
    let prefetch = read_prefetch(a.prefetch.as_deref())?;
    let opts = PullOptions {
        remote: a.net.options(),
        jobs: a.net.jobs,
        prefetch,
        manifest,
        progress: g.progress(),
        cancel: None,
    };
    Ok(run_pull(&remote, &a.store, &opts, &a.source, g)?.1)
}

/// The paths of a `--prefetch` file: one a line, relative to the root (a
/// leading `/` is dropped).
pub fn read_prefetch(path: Option<&Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    let Some(p) = path else { return Ok(Vec::new()) };
    Ok(super::read_input(p)?
        .split(|&b| b == b'\n')
        .map(|l| l.strip_prefix(b"/").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect())
}

fn run_pull(
    remote: &Remote,
    store: &Path,
    opts: &PullOptions,
    shown: &str,
    g: Global,
) -> anyhow::Result<(std::sync::Arc<crate::manifest::Compact>, Vec<u8>)> {
    let store = Store::create(store)?;
    let r = remote::pull(remote, &store, opts)
        .map_err(|e| {
            let hint = super::remote_hint(&e);
            super::hinted(e, hint)
        })
        .with_context(|| format!("pulling {shown}"))?;
    report(&r, g);
    Ok((r.manifest, r.manifest_bytes))
}

/// Tells what a pull did: unknown prefetch paths, and with -v the counts.
pub fn report(r: &remote::PullReport, g: Global) {
    for p in &r.prefetch_unknown {
        g.warn(&format!("prefetch: {} is no file with content in the manifest", crate::manifest::path_display(p)));
    }
    g.info(&format!(
        "manifest {}: {} blobs, {} fetched ({} bytes), {} already in the store, over {}",
        r.manifest_digest,
        r.blobs,
        r.fetched,
        r.bytes,
        r.skipped,
        if r.http2 { "HTTP/2" } else { "HTTP/1.1" }
    ));
}
