//! Pull: a remote's ocix manifest and the file blobs the local store lacks.
//! The manifest is found (registry tag -> OCI artifact -> ocix manifest
//! blob, or a static store's blob by digest), decoded, kept in the store;
//! then the missing blobs are fetched concurrently, the `--prefetch` paths'
//! blobs first, each verified before it is named.

use super::artifact::{self, ArtifactError, Found};
use super::client::Client;
use super::fetch::{fetch_blob, fetch_run};
use super::pack::{self, Member, PackLayer};
use super::reference::Remote;
use super::wire::Coding;
use super::{MAX_MANIFEST, ProtocolError, RemoteError, RemoteOptions, file_blobs_compact, runtime};
use crate::manifest::{Compact, Digest, KindCode};
use crate::progress::{Progress, Work};
use crate::store::Store;
use futures_util::StreamExt as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Connection settings.
    pub remote: RemoteOptions,
    /// Blobs fetched at once.
    pub jobs: usize,
    /// Paths (relative to the root, `/`-separated) whose blobs come first.
    pub prefetch: Vec<Vec<u8>>,
    /// For a static HTTP store: the ocix manifest's digest.
    pub manifest: Option<Digest>,
    /// Where the bytes and blobs fetched are reported.
    pub progress: Progress,
    /// Set by another thread to stop the pull early (no new blob is
    /// started; those done are kept).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            remote: RemoteOptions::default(),
            jobs: 16,
            prefetch: Vec::new(),
            manifest: None,
            progress: Progress::default(),
            cancel: None,
        }
    }
}

/// What a pull did.
#[derive(Debug)]
pub struct PullReport {
    /// The decoded manifest, in compact form (shared with what
    /// [`pull_with`]'s caller was given).
    pub manifest: Arc<Compact>,
    /// Its encoded bytes, as fetched (also in the store).
    pub manifest_bytes: Vec<u8>,
    /// Their digest.
    pub manifest_digest: Digest,
    /// Distinct file blobs the manifest names.
    pub blobs: usize,
    /// Blobs fetched.
    pub fetched: usize,
    /// Blobs already in the store.
    pub skipped: usize,
    /// Bytes received for blobs (more than their sizes if a server ignored a
    /// `Range` on resume).
    pub bytes: u64,
    /// Prefetch paths that name no regular file with content.
    pub prefetch_unknown: Vec<Vec<u8>>,
    /// Whether the server answered over HTTP/2.
    pub http2: bool,
}

/// Pulls into `store` (which must exist; see [`Store::create`]).
pub fn pull(remote: &Remote, store: &Store, opts: &PullOptions) -> Result<PullReport, RemoteError> {
    pull_with(remote, store, opts, |_| {})
}

/// [`pull`], calling `on_manifest` with the decoded manifest (kept in the
/// store) before any file blob is fetched: an unpack can start on it while
/// the blobs arrive (see [`Store::with_arrivals`]).
pub fn pull_with(
    remote: &Remote,
    store: &Store,
    opts: &PullOptions,
    on_manifest: impl FnOnce(&Arc<Compact>) + Send,
) -> Result<PullReport, RemoteError> {
    let rt = runtime()?;
    let mut client = Client::new(remote.clone(), opts.remote.clone(), false)?;
    rt.block_on(async {
        client.resolve_scheme().await;
        pull_async(&client, store, opts, on_manifest).await
    })
}

/// The ocix manifest and how the artifact carries its blobs.
pub(crate) struct Fetched {
    pub(crate) bytes: Vec<u8>,
    pub(crate) digest: Digest,
    pub(crate) threshold: u64,
    pub(crate) packs: Vec<PackLayer>,
    /// Compressed file blobs: content digest -> (registry digest, size).
    pub(crate) zstd: HashMap<Digest, (Digest, u64)>,
    /// The artifact's access list: paths, in the order a first run read
    /// them.
    pub(crate) access: Vec<Vec<u8>>,
    /// When asked for and the artifact has one: the lazy index (its
    /// digest and its bytes, checked against it) and the digest table's
    /// layer, instead of the manifest (then `bytes` is empty).
    pub(crate) lazy: Option<LazyLayers>,
}

/// The layers a lazy mount reads instead of the manifest (see
/// [`lazyidx`](super::lazyidx)).
pub(crate) struct LazyLayers {
    pub(crate) index: Digest,
    pub(crate) index_bytes: Vec<u8>,
    pub(crate) table: (Digest, u64),
}

/// The paths of an access list: one a line, relative to the root (a
/// leading `/` is dropped), empty lines skipped.
pub fn parse_paths(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|&b| b == b'\n').map(|l| l.strip_prefix(b"/").unwrap_or(l).to_vec()).filter(|l| !l.is_empty()).collect()
}

pub(crate) async fn fetch_manifest(
    client: &Client,
    store: &Store,
    opts: &PullOptions,
    want_lazy: bool,
) -> Result<Fetched, RemoteError> {
    let mut zmanifest = None;
    let mut lazy = None;
    let (d, size, threshold, packs, zstd, access) = match client.remote() {
        Remote::Http(base) => {
            let d = opts
                .manifest
                .ok_or_else(|| RemoteError::Protocol { url: base.clone(), why: ProtocolError::NoManifestDigest })?;
            (d, None, 0, Vec::new(), Vec::new(), None)
        }
        Remote::Registry(r) => {
            let mut target = r.target();
            let mut lists = Vec::new();
            let layout = loop {
                let (bytes, media, _) = client.get_manifest(&target).await?;
                let url = format!("{}@{target}", client.remote_name());
                let found = artifact::find(&bytes, &media).map_err(|err| match err {
                    why @ ArtifactError::NotOcix { .. } => RemoteError::NotOcix { url, why },
                    err => RemoteError::Format { url, err },
                })?;
                match found {
                    Found::Ocix(l) => break l,
                    Found::Index { ocix, lists: l } if lists.is_empty() && target == r.target() => {
                        lists = l;
                        target = ocix.to_string();
                    }
                    Found::Index { .. } => {
                        let err = ArtifactError::NestedIndex;
                        return Err(RemoteError::Format { url: client.remote_name(), err });
                    }
                }
            };
            let mut zstd = layout.zstd;
            for l in lists {
                let (bytes, _, _) = client.get_manifest(&l.to_string()).await?;
                let url = format!("{}@{l}", client.remote_name());
                zstd.extend(artifact::blob_list(&bytes).map_err(|err| RemoteError::Format { url, err })?);
            }
            zmanifest = layout.manifest_zstd;
            lazy = layout.lazy.filter(|_| want_lazy);
            (layout.manifest, Some(layout.size), layout.threshold, layout.packs, zstd, layout.access)
        }
    };
    let url = client.blob_url(&d);
    if size.is_some_and(|s| s > MAX_MANIFEST) {
        return Err(RemoteError::TooLarge { url, limit: MAX_MANIFEST });
    }
    let limit = size.unwrap_or(MAX_MANIFEST);
    let access = match access {
        Some((a, n)) if n > artifact::MAX_ACCESS => {
            return Err(RemoteError::TooLarge { url: client.blob_url(&a), limit: artifact::MAX_ACCESS });
        }
        Some((a, n)) => parse_paths(&client.get_blob_bytes(&a, n).await?),
        None => Vec::new(),
    };
    let mut map = HashMap::new();
    for (content, wire, size) in zstd {
        map.entry(content).or_insert((wire, size));
    }
    if let Some(((index, n), table)) = lazy {
        if n > MAX_MANIFEST {
            return Err(RemoteError::TooLarge { url: client.blob_url(&index), limit: MAX_MANIFEST });
        }
        let index_bytes = client.get_blob_bytes(&index, n).await?;
        let lazy = Some(LazyLayers { index, index_bytes, table });
        return Ok(Fetched { bytes: Vec::new(), digest: d, threshold, packs, zstd: map, access, lazy });
    }
    let bytes = match zmanifest {
        Some((z, n)) if n <= MAX_MANIFEST => {
            let wire = client.get_blob_bytes(&z, n).await?;
            // at most the plain blob's size; anything else than the
            // manifest named is not used (the plain blob is fetched)
            match zstd::bulk::decompress(&wire, limit as usize) {
                Ok(b) if Digest::of(&b) == d => b,
                _ => client.get_blob_bytes(&d, limit).await?,
            }
        }
        _ => client.get_blob_bytes(&d, limit).await?,
    };
    store.put_bytes(&bytes)?;
    Ok(Fetched { bytes, digest: d, threshold, packs, zstd: map, access, lazy: None })
}

/// One unit of work: a blob on its own (by its own digest, or by the
/// digest of its zstd form), or a run of adjacent members of a pack
/// fetched with one request.
enum Item {
    Single(Digest, u64, Option<(Digest, u64)>),
    Run(Digest, Coding, Vec<Member>),
}

impl Item {
    fn blobs(&self) -> usize {
        match self {
            Item::Single(..) => 1,
            Item::Run(_, _, m) => m.len(),
        }
    }

    /// Bytes on the wire.
    fn wire(&self) -> u64 {
        match self {
            Item::Single(_, s, None) => *s,
            Item::Single(_, _, Some((_, s))) => *s,
            Item::Run(_, _, m) => m.iter().map(|x| x.len).sum(),
        }
    }
}

async fn pull_async(
    client: &Client,
    store: &Store,
    opts: &PullOptions,
    on_manifest: impl FnOnce(&Arc<Compact>),
) -> Result<PullReport, RemoteError> {
    let Fetched { bytes: manifest_bytes, digest: manifest_digest, threshold, packs, zstd, access, .. } =
        fetch_manifest(client, store, opts, false).await?;
    let manifest = Compact::from_bytes(&manifest_bytes)
        .map_err(|err| RemoteError::Manifest { url: client.blob_url(&manifest_digest), err })?;
    let manifest = Arc::new(manifest);
    on_manifest(&manifest);
    let all = file_blobs_compact(&manifest);
    let packed = if packs.is_empty() {
        Vec::new()
    } else {
        pack::members(&all, threshold, &packs).map_err(|err| RemoteError::Packs { url: client.remote_name(), err })?
    };
    // the caller's paths first, then the artifact's access list
    let (mut first, prefetch_unknown) = prefetch_blobs_compact(&manifest, &opts.prefetch);
    first.extend(prefetch_blobs_compact(&manifest, &access).0);
    // rank: prefetch position first, then manifest order
    let mut rank: HashMap<Digest, usize> = HashMap::new();
    for (i, (d, _)) in first.iter().enumerate() {
        rank.entry(*d).or_insert(i);
    }
    for (i, (d, _)) in all.iter().enumerate() {
        rank.entry(*d).or_insert(first.len() + i);
    }
    let in_pack: HashSet<Digest> = packed.iter().flat_map(|(_, _, m)| m.iter().map(|x| x.digest)).collect();
    let mut items: Vec<(usize, Item)> = Vec::new();
    for &(d, size) in &all {
        if !in_pack.contains(&d) && !store.has(&d) {
            items.push((rank[&d], Item::Single(d, size, zstd.get(&d).copied())));
        }
    }
    for (pd, coding, members) in &packed {
        let mut run: Vec<Member> = Vec::new();
        let rank_of = |run: &[Member]| run.iter().map(|x| rank[&x.digest]).min().unwrap_or(0);
        for &m in members {
            if store.has(&m.digest) {
                if !run.is_empty() {
                    items.push((rank_of(&run), Item::Run(*pd, *coding, std::mem::take(&mut run))));
                }
            } else {
                run.push(m);
            }
        }
        if !run.is_empty() {
            items.push((rank_of(&run), Item::Run(*pd, *coding, run)));
        }
    }
    items.sort_by_key(|(r, _)| *r);
    let missing_blobs: usize = items.iter().map(|(_, i)| i.blobs()).sum();
    // a compressed blob's wire size is the artifact's say (any u64)
    let total: u64 = items.iter().fold(0, |t, (_, i)| t.saturating_add(i.wire()));
    let order: Vec<Item> = items.into_iter().map(|(_, i)| i).collect();
    let wanted: Vec<Digest> = order
        .iter()
        .flat_map(|i| match i {
            Item::Single(d, _, _) => vec![*d],
            Item::Run(_, _, m) => m.iter().map(|x| x.digest).collect(),
        })
        .collect();
    let skipped = all.len() - missing_blobs;
    let pb = opts.progress.start(Work::Pull, Some(total));
    pb.items(0, Some(missing_blobs as u64));
    let stop = AtomicBool::new(false);
    let n = missing_blobs;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = |k: u64| {
        pb.advance(k);
    };
    let results: Vec<Result<Option<(usize, u64)>, RemoteError>> = futures_util::stream::iter(order)
        .map(|item| {
            let (stop, done, pb, tick) = (&stop, &done, &*pb, &tick);
            let cancel = opts.cancel.as_deref();
            async move {
                if stop.load(Ordering::Relaxed) || cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Ok(None);
                }
                let r = match &item {
                    Item::Single(d, size, via) => fetch_blob(client, d, *size, *via, store, tick).await.map(|b| (1, b)),
                    Item::Run(p, c, m) => fetch_run(client, p, *c, m, store, tick).await.map(|b| (m.len(), b)),
                };
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                let k = done.fetch_add(item.blobs(), Ordering::Relaxed) + item.blobs();
                pb.items(k as u64, Some(n as u64));
                r.map(Some)
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    drop(pb);
    let mut fetched = 0;
    let mut bytes = 0;
    let mut failed = 0;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(Some((k, b))) => {
                fetched += k;
                bytes += b;
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    if fetched > 0 {
        store.sync()?;
    }
    if first_err.is_none() && opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
        let missing = wanted.iter().filter(|d| !store.has(d)).count();
        if missing > 0 {
            return Err(RemoteError::Cancelled { fetched, missing });
        }
    }
    if let Some(first) = first_err {
        if fetched == 0 && !first.transient() {
            return Err(first);
        }
        // a run that failed midway kept the members it had verified
        let missing = wanted.iter().filter(|d| !store.has(d)).count();
        let fetched = n - missing;
        return Err(RemoteError::Incomplete { failed, fetched, missing, first: Box::new(first) });
    }
    Ok(PullReport {
        manifest,
        manifest_bytes,
        manifest_digest,
        blobs: all.len(),
        fetched,
        skipped,
        bytes,
        prefetch_unknown,
        http2: client.used_http2(),
    })
}

/// The blobs of the prefetch paths (hardlinks followed to their file), in
/// the list's order, and the paths that name no file with content: the
/// paths looked up in one walk (and the hardlinks among them followed in
/// another).
pub(crate) fn prefetch_blobs_compact(m: &Compact, paths: &[Vec<u8>]) -> (Vec<(Digest, u64)>, Vec<Vec<u8>>) {
    let refs: Vec<&[u8]> = paths.iter().map(|p| &p[..]).collect();
    let mut found = m.get_many(&refs);
    let links: Vec<(usize, &[u8])> = found
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((i, n.filter(|n| n.code() == KindCode::Hardlink)?.target()?)))
        .collect();
    if !links.is_empty() {
        let targets: Vec<&[u8]> = links.iter().map(|l| l.1).collect();
        for ((i, _), t) in links.iter().zip(m.get_many(&targets)) {
            found[*i] = t;
        }
    }
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (p, n) in paths.iter().zip(found) {
        match n.and_then(|n| n.file()) {
            Some(f) => out.extend(f.digest.map(|d| (*d, f.size))),
            None => unknown.push(p.clone()),
        }
    }
    (out, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, File, Kind, Manifest};
    use std::collections::BTreeMap;

    #[test]
    fn prefetch_finds_files_through_hardlinks_and_names_what_it_cannot() {
        let file = |size: u64, d: u8| {
            Entry::new(Kind::File(File { size, digest: (size > 0).then_some(Digest([d; 32])), zeros: Vec::new() }))
        };
        let mut sub = BTreeMap::new();
        sub.insert(b"f".to_vec(), file(3, 1));
        sub.insert(b"empty".to_vec(), file(0, 0));
        let mut root = BTreeMap::new();
        root.insert(b"d".to_vec(), Entry::new(Kind::Dir(sub)));
        root.insert(b"g".to_vec(), file(5, 2));
        root.insert(b"link".to_vec(), Entry::new(Kind::Hardlink(b"d/f".to_vec())));
        root.insert(b"sym".to_vec(), Entry::new(Kind::Symlink(b"g".to_vec())));
        let m = Manifest { root: Entry::new(Kind::Dir(root)) };
        let c = Compact::from_tree(&m).unwrap();
        let paths: Vec<Vec<u8>> =
            [&b"g"[..], b"link", b"d/empty", b"d", b"sym", b"nope", b"/d/f", b"g"].iter().map(|p| p.to_vec()).collect();
        let (d1, d2) = (Digest([1; 32]), Digest([2; 32]));
        let (found, unknown) = prefetch_blobs_compact(&c, &paths);
        // an empty file has no blob and is no unknown path either
        assert_eq!(found, vec![(d2, 5), (d1, 3), (d1, 3), (d2, 5)]);
        assert_eq!(unknown, vec![b"d".to_vec(), b"sym".to_vec(), b"nope".to_vec()]);
    }
}
