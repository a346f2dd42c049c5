//! Source: an ordinary OCI or Docker image in a registry
//! (`docker://HOST/REPO:TAG`, tar layers) -> manifest (+ file contents in a
//! store), without a layout on disk in between.
//!
//! The tag (or digest) is resolved to a manifest; an OCI index or a Docker
//! manifest list is narrowed to one image by platform, and the manifest and
//! config are checked, all by the same code as for a layout
//! ([`choose_image`]): this module only says where the documents come from.
//! Each layer blob is then streamed from the registry into the layout
//! import's layer pipeline ([`import_layers`]): a download task hands the
//! server's chunks over a bounded channel ([`CHANNEL`] chunks) to the
//! thread that verifies size and digest while decompressing, which feeds
//! the tar parser. Layer blobs are never stored nor held whole in memory;
//! documents are at most [`MAX_DOCUMENT`](crate::oci::MAX_DOCUMENT) bytes.
//! The manifest is the one an import of the same image from a layout gives.

use super::client::Client;
use super::{Reference, Remote, RemoteError, RemoteOptions, runtime};
use crate::oci::{
    Descriptor, Documents, ImportError, ImportOptions, Imported, SelectError, choose_image, import_layers, media,
};
use crate::store::Store;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;

/// Downloaded chunks in flight between the download and the decompressor.
pub const CHANNEL: usize = 8;

/// The manifest media types asked for: OCI and Docker, images and indexes.
const ACCEPT: &[&str] = &[media::OCI_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST, media::DOCKER_LIST];

fn remote_err(e: RemoteError) -> ImportError {
    ImportError::Fetch(Box::new(e))
}

/// Imports the image `reference` names: each layer streamed from the
/// registry, every file's content put into `store` (when given).
/// `opts.tag` is ignored (the reference names the image).
pub fn import_remote(
    reference: &Reference,
    store: Option<&Store>,
    opts: &ImportOptions,
    ropts: &RemoteOptions,
) -> Result<Imported, ImportError> {
    let rt = runtime().map_err(remote_err)?;
    let mut client = Client::new(Remote::Registry(reference.clone()), ropts.clone(), false).map_err(remote_err)?;
    rt.block_on(client.resolve_scheme());
    let client = Arc::new(client);
    let (bytes, content_type, digest) =
        rt.block_on(client.get_manifest_as(&reference.target(), ACCEPT)).map_err(remote_err)?;
    let media_type = media_type_of(&content_type, &bytes).ok_or_else(|| {
        ImportError::from(SelectError::NotAnImage {
            reference: reference.to_string(),
            content_type: content_type.clone(),
        })
    })?;
    let top = Descriptor { media_type, digest, size: bytes.len() as u64, platform: None, annotations: BTreeMap::new() };
    let docs = RegistryDocuments { rt: &rt, client: &client, top: (digest, bytes) };
    let image = choose_image(&docs, vec![top], None, opts.platform.as_ref(), &reference.to_string())?;
    import_layers(image, store, opts, |layer| {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL);
        let (c, d, size) = (Arc::clone(&client), layer.desc.digest, layer.desc.size);
        rt.spawn(async move {
            if let Err(e) = c.stream_blob(&d, size, &tx).await {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        });
        Ok(Download { rx, cur: Vec::new(), pos: 0, failed: None })
    })
}

/// The media type of a fetched manifest: the `Content-Type` when it names
/// a manifest or index, else the document's own `mediaType`.
fn media_type_of(content_type: &str, bytes: &[u8]) -> Option<String> {
    if ACCEPT.contains(&content_type) {
        return Some(content_type.to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mt = v.get("mediaType")?.as_str()?;
    ACCEPT.contains(&mt).then(|| mt.to_string())
}

/// A registry's manifests and blobs as [`Documents`]: the manifest the
/// reference resolved to (already fetched), others by digest from the
/// manifest endpoint, configs from the blob endpoint.
struct RegistryDocuments<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a Client,
    top: (crate::manifest::Digest, Vec<u8>),
}

impl RegistryDocuments<'_> {
    fn is_manifest(d: &Descriptor) -> bool {
        ACCEPT.contains(&d.media_type.as_str())
    }
}

impl Documents for RegistryDocuments<'_> {
    fn fetch(&self, d: &Descriptor, _what: &str) -> Result<Vec<u8>, ImportError> {
        if d.digest == self.top.0 {
            return Ok(self.top.1.clone());
        }
        let r = if Self::is_manifest(d) {
            self.rt.block_on(self.client.get_manifest_as(&d.digest.to_string(), ACCEPT)).map(|(b, _, _)| b)
        } else {
            self.rt.block_on(self.client.get_blob_bytes(&d.digest, d.size + 1))
        };
        r.map_err(remote_err)
    }

    fn shown(&self, d: &Descriptor) -> String {
        if Self::is_manifest(d) {
            self.client.manifest_url_of(&d.digest.to_string()).unwrap_or_else(|_| d.digest.to_string())
        } else {
            self.client.blob_url(&d.digest)
        }
    }
}

/// A layer blob as it downloads: the chunks the download task sends, then
/// its end (the channel closed) or its failure (sent, and kept: every later
/// read fails the same way).
struct Download {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    failed: Option<(io::ErrorKind, String)>,
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((k, m)) = &self.failed {
            return Err(io::Error::new(*k, m.clone()));
        }
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_from_header_or_document() {
        assert_eq!(media_type_of(media::DOCKER_LIST, b"").as_deref(), Some(media::DOCKER_LIST));
        let doc = format!(r#"{{"schemaVersion":2,"mediaType":"{}"}}"#, media::OCI_INDEX);
        assert_eq!(media_type_of("application/json", doc.as_bytes()).as_deref(), Some(media::OCI_INDEX));
        assert_eq!(media_type_of("application/json", b"{}"), None);
        let schema1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#;
        assert_eq!(media_type_of("application/vnd.docker.distribution.manifest.v1+prettyjws", schema1), None);
    }

    #[test]
    fn download_keeps_its_failure() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Ok(b"abc".to_vec())).unwrap();
        tx.try_send(Err(io::Error::other("reset"))).unwrap();
        drop(tx);
        let mut d = Download { rx, cur: Vec::new(), pos: 0, failed: None };
        let mut buf = [0u8; 8];
        assert_eq!(d.read(&mut buf).unwrap(), 3);
        assert!(d.read(&mut buf).unwrap_err().to_string().contains("reset"));
        assert!(d.read(&mut buf).unwrap_err().to_string().contains("reset"));
    }
}
