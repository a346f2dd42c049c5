//! Push: an ocix manifest and its blobs from a local store to a registry
//! tag. Each file blob is asked for first (HEAD) and uploaded only when
//! missing, with bounded concurrency; then the ocix manifest blob, the
//! empty config, and the OCI manifest(s) described in [`artifact`].

use super::artifact::{self, Descriptor};
use super::client::{Client, Remote, Upload};
use super::pack;
use super::pull::{file_blobs, runtime};
use super::reference::{Reference, ReferenceError};
use super::{RemoteError, RemoteOptions};
use crate::manifest::{Digest, MEDIA_TYPE, Manifest};
use crate::store::{Store, StoreError};
use futures_util::StreamExt as _;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            remote: RemoteOptions::default(),
            jobs: 16,
            layers_per_manifest: artifact::LAYERS_PER_MANIFEST,
            pack_threshold: pack::DEFAULT_THRESHOLD,
            progress: false,
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
    /// Bytes uploaded.
    pub bytes: u64,
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
        .map_err(|source| RemoteError::Manifest { url: "the manifest to push".into(), source })?;
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
        let mut items: Vec<Item> = packs.into_iter().map(Item::Pack).collect();
        items.extend(singles.iter().map(|&(d, s)| Item::Single(d, s)));
        let (uploaded, present, bytes, descs) = push_blobs(client, store, items, opts).await?;
        let pack_descs: Vec<(Digest, u64, u64)> = descs.iter().zip(&counts).map(|(&(d, s), &c)| (d, s, c)).collect();
        let ocix = Descriptor::new(MEDIA_TYPE, &manifest_digest, manifest_bytes.len() as u64);
        for (d, data) in
            [(manifest_digest, manifest_bytes), (Digest::of(artifact::EMPTY_CONFIG), artifact::EMPTY_CONFIG)]
        {
            if !client.has_blob(&d).await? {
                client.upload_blob(&d, data.len() as u64, Upload::Bytes(data)).await?;
            }
        }
        let (first, top) = artifact::build(&ocix, &pack_descs, opts.pack_threshold, &singles, opts.layers_per_manifest);
        for doc in &first {
            client.put_manifest(&Digest::of(&doc.bytes).to_string(), doc.media_type, &doc.bytes).await?;
        }
        let tag_digest = client.put_manifest(&tag, top.media_type, &top.bytes).await?;
        Ok(PushReport {
            blobs: files.len(),
            packs: pack_descs.len(),
            uploaded,
            present,
            bytes,
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

/// Concatenates a pack's members from the store, checking each one's size
/// and digest: the pack is uploaded under the digest of these bytes, so a
/// registry cannot notice a corrupt member, and a pull would find it only
/// after the tag names it.
fn pack_bytes(store: &Store, members: &pack::Pack) -> Result<Vec<u8>, RemoteError> {
    use std::io::Read as _;
    let mut out = Vec::with_capacity(members.iter().map(|m| m.1).sum::<u64>().min(pack::PACK_MAX * 2) as usize);
    for &(d, size) in members {
        let f = std::fs::File::from(store.open_blob(&d)?);
        let before = out.len();
        f.take(size + 1)
            .read_to_end(&mut out)
            .map_err(|e| RemoteError::Io { path: store.blob_path(&d).display().to_string(), source: e })?;
        let got = (out.len() - before) as u64;
        if got != size {
            return Err(StoreError::WrongSize {
                path: store.blob_path(&d).display().to_string(),
                expected: size,
                actual: got,
            }
            .into());
        }
        let actual = Digest::of(&out[before..]);
        if actual != d {
            return Err(
                StoreError::Corrupt { path: store.blob_path(&d).display().to_string(), expected: d, actual }.into()
            );
        }
    }
    Ok(out)
}

/// Uploads what the registry lacks; returns (uploaded, present, bytes, and
/// each item's registry digest and size, in item order).
async fn push_blobs(
    client: &Client,
    store: &Store,
    items: Vec<Item>,
    opts: &PushOptions,
) -> Result<(usize, usize, u64, Vec<(Digest, u64)>), RemoteError> {
    let total: u64 = items
        .iter()
        .map(|i| match i {
            Item::Pack(m) => m.iter().map(|x| x.1).sum(),
            Item::Single(_, s) => *s,
        })
        .sum();
    let n = items.len();
    let pb = opts.progress.then(|| {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template("push [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    });
    let stop = AtomicBool::new(false);
    // packs are built in memory (up to PACK_MAX plus one blob each): at
    // most `jobs` of them at once
    type Done = Result<Option<(bool, u64, Digest)>, RemoteError>;
    let results: Vec<(usize, Done)> = futures_util::stream::iter(items.into_iter().enumerate())
        .map(|(idx, item)| {
            let (stop, pb) = (&stop, &pb);
            async move {
                if stop.load(Ordering::Relaxed) {
                    return (idx, Ok(None));
                }
                let r = async {
                    match &item {
                        Item::Single(d, size) => {
                            if client.has_blob(d).await? {
                                return Ok((false, *size, *d));
                            }
                            client.upload_blob(d, *size, Upload::Store(store)).await?;
                            Ok((true, *size, *d))
                        }
                        Item::Pack(m) => {
                            let bytes = pack_bytes(store, m)?;
                            let d = Digest::of(&bytes);
                            let size = bytes.len() as u64;
                            if client.has_blob(&d).await? {
                                return Ok((false, size, d));
                            }
                            client.upload_blob(&d, size, Upload::Bytes(&bytes)).await?;
                            Ok((true, size, d))
                        }
                    }
                }
                .await;
                match &r {
                    Err(_) => stop.store(true, Ordering::Relaxed),
                    Ok((_, size, _)) => {
                        if let Some(pb) = pb {
                            pb.inc(*size);
                        }
                    }
                }
                (idx, r.map(Some))
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let (mut uploaded, mut present, mut bytes, mut failed) = (0, 0, 0, 0);
    let mut first = None;
    let mut descs: Vec<Option<(Digest, u64)>> = vec![None; n];
    for (idx, r) in results {
        match r {
            Ok(Some((up, s, d))) => {
                descs[idx] = Some((d, s));
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
