//! Push: an ocix manifest and its blobs from a local store to a registry
//! tag. Each file blob is asked for first (HEAD) and uploaded only when
//! missing, with bounded concurrency; then the ocix manifest blob, the
//! empty config, and the OCI manifest(s) described in [`artifact`].

use super::artifact::{self, Descriptor};
use super::client::{Client, Remote, Upload};
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
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            remote: RemoteOptions::default(),
            jobs: 16,
            layers_per_manifest: artifact::LAYERS_PER_MANIFEST,
            progress: false,
        }
    }
}

/// What a push did.
#[derive(Debug)]
pub struct PushReport {
    /// Distinct file blobs the manifest names.
    pub blobs: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub present: usize,
    /// Bytes of blobs uploaded.
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
    let client = Client::new(Remote::Registry(target.clone()), opts.remote.clone(), true)?;
    rt.block_on(async {
        let (uploaded, present, bytes) = push_blobs(&client, store, &files, opts).await?;
        let ocix = Descriptor::new(MEDIA_TYPE, &manifest_digest, manifest_bytes.len() as u64);
        for (d, data) in
            [(manifest_digest, manifest_bytes), (Digest::of(artifact::EMPTY_CONFIG), artifact::EMPTY_CONFIG)]
        {
            if !client.has_blob(&d).await? {
                client.upload_blob(&d, data.len() as u64, Upload::Bytes(data)).await?;
            }
        }
        let (first, top) = artifact::build(&ocix, &files, opts.layers_per_manifest);
        for doc in &first {
            client.put_manifest(&Digest::of(&doc.bytes).to_string(), doc.media_type, &doc.bytes).await?;
        }
        let tag_digest = client.put_manifest(&tag, top.media_type, &top.bytes).await?;
        Ok(PushReport {
            blobs: files.len(),
            uploaded,
            present,
            bytes,
            manifest_digest,
            tag_digest,
            index: !first.is_empty(),
        })
    })
}

async fn push_blobs(
    client: &Client,
    store: &Store,
    files: &[(Digest, u64)],
    opts: &PushOptions,
) -> Result<(usize, usize, u64), RemoteError> {
    let total: u64 = files.iter().map(|f| f.1).sum();
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
    let results: Vec<Result<Option<(bool, u64)>, RemoteError>> = futures_util::stream::iter(files.iter().copied())
        .map(|(d, size)| {
            let (stop, pb) = (&stop, &pb);
            async move {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let r = async {
                    if client.has_blob(&d).await? {
                        return Ok((false, size));
                    }
                    client.upload_blob(&d, size, Upload::Store(store)).await?;
                    Ok((true, size))
                }
                .await;
                match &r {
                    Err(_) => stop.store(true, Ordering::Relaxed),
                    Ok(_) => {
                        if let Some(pb) = pb {
                            pb.inc(size);
                        }
                    }
                }
                r.map(Some)
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
    for r in results {
        match r {
            Ok(Some((true, s))) => {
                uploaded += 1;
                bytes += s;
            }
            Ok(Some((false, _))) => present += 1,
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
            missing: files.len() - uploaded - present,
            first: Box::new(e),
        }),
        None => Ok((uploaded, present, bytes)),
    }
}
