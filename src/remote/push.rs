//! Push: an ocix manifest and its blobs from a local store to a registry
//! tag. Each file blob is asked for first (HEAD) and uploaded only when
//! missing, with bounded concurrency; then the ocix manifest blob, the
//! empty config, and the OCI manifest(s) described in [`artifact`].

use super::artifact::{self, Descriptor, FileLayer};
use super::client::{Client, Upload};
use super::lazyidx;
use super::pack::{self, PackLayer};
use super::reference::{Reference, ReferenceError, Remote};
use super::wire;
use super::{RemoteError, RemoteOptions, file_blobs, runtime};
use crate::manifest::{Digest, MEDIA_TYPE, Manifest};
use crate::oci::media::{OCIX_DIGESTS, OCIX_LAZY};
use crate::progress::{Progress, Work};
use crate::store::{Store, StoreError};
use futures_util::StreamExt as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// The zstd level the manifest blob is compressed with. It is
/// compressed once per push and fetched before every lazy mount, so the
/// slowest ordinary level pays: 19 gives the node tree's 4.3 MB manifest
/// some 4% fewer bytes than 12 (about 3 s of one core). Its window
/// (8 MiB at most, never more than the manifest) stays within what any
/// reader decodes by default; long-distance matching finds nothing more
/// since the window already spans the whole manifest.
const MANIFEST_LEVEL: i32 = 19;

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Connection settings.
    pub remote: RemoteOptions,
    /// Blobs checked or uploaded at once.
    pub jobs: usize,
    /// Most file blobs listed in one OCI manifest (see [`artifact`]).
    pub layers_per_manifest: usize,
    /// File blobs of at most this size go into packs (see [`pack`]); 0
    /// packs nothing.
    pub pack_threshold: u64,
    /// Where the bytes sent are reported.
    pub progress: Progress,
    /// Send file blobs and packs zstd-compressed where that saves bytes
    /// (see [`wire`]).
    pub compress: bool,
    /// An access list (paths, one a line, in the order a first run read
    /// them) stored with the artifact as a layer of media type
    /// [`OCIX_ACCESS`](artifact::OCIX_ACCESS): a pull or a lazy mount
    /// fetches those paths' blobs first.
    pub access: Option<Vec<u8>>,
    /// Store a lazy index and a digest table beside the manifest (see
    /// [`lazyidx`]): what a lazy mount fetches instead of the manifest.
    pub lazy_index: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            remote: RemoteOptions::default(),
            jobs: 16,
            layers_per_manifest: artifact::LAYERS_PER_MANIFEST,
            pack_threshold: pack::DEFAULT_THRESHOLD,
            progress: Progress::default(),
            compress: true,
            access: None,
            lazy_index: true,
        }
    }
}

/// What a push did.
#[derive(Debug)]
pub struct PushReport {
    /// Distinct file blobs the manifest names.
    pub blobs: usize,
    /// Packs they were grouped into.
    pub packs: usize,
    /// Registry blobs (packs and unpacked file blobs) uploaded.
    pub uploaded: usize,
    /// Registry blobs the registry already had.
    pub present: usize,
    /// Bytes uploaded (as sent: compressed where they were).
    pub bytes: u64,
    /// Registry blobs sent zstd-compressed (packs and file blobs).
    pub compressed: usize,
    /// Digest of the ocix manifest.
    pub manifest_digest: Digest,
    /// Digest of what the tag now names (OCI manifest or index).
    pub tag_digest: Digest,
    /// Whether the tag names an index (more blobs than one manifest lists).
    pub index: bool,
}

/// Pushes `manifest_bytes` (an encoded ocix manifest) and the blobs it
/// names from `store` to `target`, which must have a tag and no digest.
pub fn push(
    manifest_bytes: &[u8],
    store: &Store,
    target: &Reference,
    opts: &PushOptions,
) -> Result<PushReport, RemoteError> {
    let tag = match (&target.tag, &target.digest) {
        (Some(t), None) => t.clone(),
        _ => {
            return Err(ReferenceError { input: target.to_string(), why: "push needs a tag and no digest" }.into());
        }
    };
    let manifest_digest = Digest::of(manifest_bytes);
    let m = Manifest::from_bytes(manifest_bytes)
        .map_err(|err| RemoteError::Manifest { url: "the manifest to push".into(), err })?;
    let files = file_blobs(&m);
    if let Some((d, _)) = files.iter().find(|(d, _)| !store.has(d)) {
        let n = files.iter().filter(|(d, _)| !store.has(d)).count();
        return Err(RemoteError::Store(StoreError::Missing {
            digest: *d,
            store: format!("{} ({n} blob(s) of the manifest missing)", store.root().display()),
        }));
    }
    let rt = runtime()?;
    let mut client = Client::new(Remote::Registry(target.clone()), opts.remote.clone(), true)?;
    rt.block_on(async {
        client.resolve_scheme().await;
        let client = &client;
        let (packs, singles) = pack::plan(&files, opts.pack_threshold);
        let counts: Vec<u64> = packs.iter().map(|p| p.len() as u64).collect();
        let npacks = packs.len();
        let mut items: Vec<Item> = packs.into_iter().map(Item::Pack).collect();
        items.extend(singles.iter().map(|&(d, s)| Item::Single(d, s)));
        let (uploaded, present, bytes, sent) = push_blobs(client, store, items, opts).await?;
        let compressed = sent.iter().filter(|s| s.zstd).count();
        let mut pack_layers = Vec::with_capacity(npacks);
        let mut file_layers = Vec::with_capacity(singles.len());
        for (k, s) in sent.into_iter().enumerate() {
            if k < npacks {
                pack_layers.push(PackLayer { digest: s.digest, size: s.size, count: counts[k], frames: s.frames });
            } else {
                let (d, size) = singles[k - npacks];
                file_layers.push(FileLayer { digest: d, size, zstd: s.zstd.then_some((s.digest, s.size)) });
            }
        }
        let ocix = Descriptor::new(MEDIA_TYPE, &manifest_digest, manifest_bytes.len() as u64);
        for (d, data) in
            [(manifest_digest, manifest_bytes), (Digest::of(artifact::EMPTY_CONFIG), artifact::EMPTY_CONFIG)]
        {
            if !client.has_blob(&d).await? {
                client.upload_blob(&d, data.len() as u64, Upload::Bytes(data)).await?;
            }
        }
        let mut extra = Vec::new();
        if opts.compress {
            // a lazy mount fetches the manifest before anything else (for
            // a tree of many small files most of what its first command
            // fetches): it travels compressed too, beside the plain blob
            // that readers predating the compressed layer use
            let z = zstd::bulk::compress(manifest_bytes, MANIFEST_LEVEL)
                .map_err(|err| RemoteError::Io { path: "compressing the manifest".into(), err })?;
            if wire::worth_it(z.len() as u64, manifest_bytes.len() as u64) {
                let zd = Digest::of(&z);
                if !client.has_blob(&zd).await? {
                    client.upload_blob(&zd, z.len() as u64, Upload::Bytes(&z)).await?;
                }
                let mut desc = Descriptor::new(artifact::OCIX_MANIFEST_ZSTD, &zd, z.len() as u64);
                desc.annotations = Some(std::collections::BTreeMap::from([(
                    artifact::ANN_MANIFEST.into(),
                    manifest_digest.to_string(),
                )]));
                extra.push(desc);
            }
        }
        if opts.lazy_index && !files.is_empty() {
            // what a lazy mount fetches instead of the manifest: the
            // tree without its file digests, and those digests in a
            // table it fetches a chunk at a time (see lazyidx)
            let (index, table) =
                lazyidx::build(&m).map_err(|err| RemoteError::Manifest { url: "the manifest to push".into(), err })?;
            for (mt, data) in [(OCIX_LAZY, &index), (OCIX_DIGESTS, &table)] {
                let d = Digest::of(data);
                if !client.has_blob(&d).await? {
                    client.upload_blob(&d, data.len() as u64, Upload::Bytes(data)).await?;
                }
                let mut desc = Descriptor::new(mt, &d, data.len() as u64);
                desc.annotations = Some(std::collections::BTreeMap::from([(
                    artifact::ANN_MANIFEST.into(),
                    manifest_digest.to_string(),
                )]));
                extra.push(desc);
            }
        }
        if let Some(list) = &opts.access {
            let d = Digest::of(list);
            if !client.has_blob(&d).await? {
                client.upload_blob(&d, list.len() as u64, Upload::Bytes(list)).await?;
            }
            extra.push(Descriptor::new(artifact::OCIX_ACCESS, &d, list.len() as u64));
        }
        let (first, top) =
            artifact::build(&ocix, &pack_layers, opts.pack_threshold, &file_layers, opts.layers_per_manifest, &extra);
        for doc in &first {
            client.put_manifest(&Digest::of(&doc.bytes).to_string(), doc.media_type, &doc.bytes).await?;
        }
        let tag_digest = client.put_manifest(&tag, top.media_type, &top.bytes).await?;
        Ok(PushReport {
            blobs: files.len(),
            packs: npacks,
            uploaded,
            present,
            bytes,
            compressed,
            manifest_digest,
            tag_digest,
            index: !first.is_empty(),
        })
    })
}

/// A registry blob to push: a pack of small file blobs, or one file blob.
enum Item {
    Pack(pack::Pack),
    Single(Digest, u64),
}

impl Item {
    /// Content bytes (what the progress bar counts).
    fn plain_len(&self) -> u64 {
        match self {
            Item::Pack(m) => m.iter().map(|x| x.1).sum(),
            Item::Single(_, s) => *s,
        }
    }
}

/// Reads a blob of `size` bytes from the store into `out`, checking its
/// size and digest: what is uploaded is named by digests computed here
/// (a pack's, a compressed form's), so a registry cannot notice a corrupt
/// blob, and a pull would find it only after the tag names it.
fn read_verified(store: &Store, d: &Digest, size: u64, out: &mut Vec<u8>) -> Result<(), RemoteError> {
    use std::io::Read as _;
    let f = std::fs::File::from(store.open_blob(d)?);
    let before = out.len();
    f.take(size + 1)
        .read_to_end(out)
        .map_err(|e| RemoteError::Io { path: store.blob_path(d).display().to_string(), err: e })?;
    let got = (out.len() - before) as u64;
    if got != size {
        return Err(StoreError::WrongSize {
            path: store.blob_path(d).display().to_string(),
            expected: size,
            actual: got,
        }
        .into());
    }
    let actual = Digest::of(&out[before..]);
    if actual != *d {
        return Err(StoreError::Corrupt { path: store.blob_path(d).display().to_string(), expected: *d, actual }.into());
    }
    Ok(())
}

/// A pack's bytes: its members concatenated, or with `compress` one zstd
/// frame each when that saves bytes (then also the frames' lengths).
fn pack_bytes(store: &Store, members: &pack::Pack, compress: bool) -> Result<(Vec<u8>, Option<Vec<u64>>), RemoteError> {
    let plain_len: u64 = members.iter().map(|m| m.1).sum();
    let mut out = Vec::with_capacity(plain_len.min(pack::PACK_MAX * 2) as usize);
    if !compress {
        for &(d, size) in members {
            read_verified(store, &d, size, &mut out)?;
        }
        return Ok((out, None));
    }
    let mut frames = Vec::with_capacity(members.len());
    let mut buf = Vec::new();
    for &(d, size) in members {
        buf.clear();
        read_verified(store, &d, size, &mut buf)?;
        let frame = wire::compress_frame(&buf)
            .map_err(|e| RemoteError::Io { path: store.blob_path(&d).display().to_string(), err: e })?;
        frames.push(frame.len() as u64);
        out.extend_from_slice(&frame);
    }
    if wire::worth_it(out.len() as u64, plain_len) {
        return Ok((out, Some(frames)));
    }
    pack_bytes(store, members, false)
}

/// The zstd form of blob `d` (`size` bytes), written to an unnamed
/// scratch file of the store while the content is checked against `d`:
/// the file, its digest and its size. It never takes a name in the store,
/// which other processes (another push of the same blob) share. None when
/// compression would not save bytes.
fn compress_blob(store: &Store, d: &Digest, size: u64) -> Result<Option<(std::fs::File, Digest, u64)>, RemoteError> {
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let path = || store.blob_path(d).display().to_string();
    let io = |e: std::io::Error| RemoteError::Io { path: path(), err: e };
    let f = std::fs::File::from(store.open_blob(d)?);
    let mut enc = zstd::stream::read::Encoder::new(
        Hashing { inner: f.take(size + 1), hash: sha2::Sha256::new(), n: 0 },
        wire::LEVEL,
    )
    .map_err(io)?;
    enc.set_pledged_src_size(Some(size)).map_err(io)?;
    let mut out = store.scratch()?;
    let scratch_io = |e: std::io::Error| RemoteError::Io {
        path: format!("{} (compressed form of {}, unnamed)", store.root().display(), path()),
        err: e,
    };
    let (mut zhash, mut zlen) = (sha2::Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = enc.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(scratch_io)?;
        zhash.update(&buf[..n]);
        zlen += n as u64;
        if !wire::worth_it(zlen, size) {
            // already too large to be worth sending (the scratch file goes
            // when closed)
            return Ok(None);
        }
    }
    let h = enc.finish().into_inner();
    if h.n != size {
        return Err(StoreError::WrongSize { path: path(), expected: size, actual: h.n }.into());
    }
    let actual = Digest(h.hash.finalize().into());
    if actual != *d {
        return Err(StoreError::Corrupt { path: path(), expected: *d, actual }.into());
    }
    if !wire::worth_it(zlen, size) {
        return Ok(None);
    }
    Ok(Some((out, Digest(zhash.finalize().into()), zlen)))
}

/// A reader that hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// How one registry blob was sent (or found present).
struct Sent {
    /// Registry digest.
    digest: Digest,
    /// Registry size.
    size: u64,
    /// Sent as zstd (a file blob's compressed form, or a compressed pack).
    zstd: bool,
    /// A compressed pack's frames.
    frames: Option<Vec<u64>>,
}

/// Uploads what the registry lacks; returns (uploaded, present, bytes, and
/// how each item went, in item order).
async fn push_blobs(
    client: &Client,
    store: &Store,
    items: Vec<Item>,
    opts: &PushOptions,
) -> Result<(usize, usize, u64, Vec<Sent>), RemoteError> {
    let total: u64 = items
        .iter()
        .map(|i| match i {
            Item::Pack(m) => m.iter().map(|x| x.1).sum(),
            Item::Single(_, s) => *s,
        })
        .sum();
    let n = items.len();
    let pb = opts.progress.start(Work::Push, Some(total));
    let stop = AtomicBool::new(false);
    // packs are built in memory (up to PACK_MAX plus one blob each): at
    // most `jobs` of them at once
    type Done = Result<Option<(bool, u64, Sent)>, RemoteError>;
    let results: Vec<(usize, Done)> = futures_util::stream::iter(items.into_iter().enumerate())
        .map(|(idx, item)| {
            let (stop, pb) = (&stop, &*pb);
            async move {
                if stop.load(Ordering::Relaxed) {
                    return (idx, Ok(None));
                }
                let r = async {
                    match &item {
                        Item::Single(d, size) => {
                            let z = if opts.compress {
                                tokio::task::block_in_place(|| compress_blob(store, d, *size))?
                            } else {
                                None
                            };
                            let Some((file, zd, zsize)) = z else {
                                let sent = Sent { digest: *d, size: *size, zstd: false, frames: None };
                                if client.has_blob(d).await? {
                                    return Ok((false, *size, sent));
                                }
                                client.upload_blob(d, *size, Upload::Store(store)).await?;
                                return Ok((true, *size, sent));
                            };
                            let sent = Sent { digest: zd, size: zsize, zstd: true, frames: None };
                            if client.has_blob(&zd).await? {
                                return Ok((false, zsize, sent));
                            }
                            let name = format!("compressed form of {}", store.blob_path(d).display());
                            client.upload_blob(&zd, zsize, Upload::File(&file, &name)).await?;
                            Ok((true, zsize, sent))
                        }
                        Item::Pack(m) => {
                            let (bytes, frames) = tokio::task::block_in_place(|| pack_bytes(store, m, opts.compress))?;
                            let d = Digest::of(&bytes);
                            let size = bytes.len() as u64;
                            let sent = Sent { digest: d, size, zstd: frames.is_some(), frames };
                            if client.has_blob(&d).await? {
                                return Ok((false, size, sent));
                            }
                            client.upload_blob(&d, size, Upload::Bytes(&bytes)).await?;
                            Ok((true, size, sent))
                        }
                    }
                }
                .await;
                match &r {
                    Err(_) => stop.store(true, Ordering::Relaxed),
                    Ok(_) => pb.advance(item.plain_len()),
                }
                (idx, r.map(Some))
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    drop(pb);
    let (mut uploaded, mut present, mut bytes, mut failed) = (0, 0, 0, 0);
    let mut first = None;
    let mut descs: Vec<Option<Sent>> = (0..n).map(|_| None).collect();
    for (idx, r) in results {
        match r {
            Ok(Some((up, s, sent))) => {
                descs[idx] = Some(sent);
                if up {
                    uploaded += 1;
                    bytes += s;
                } else {
                    present += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) if uploaded == 0 && !e.transient() => Err(e),
        Some(e) => Err(RemoteError::Incomplete {
            failed,
            fetched: uploaded,
            missing: n - uploaded - present,
            first: Box::new(e),
        }),
        None => Ok((uploaded, present, bytes, descs.into_iter().flatten().collect())),
    }
}
