//! Adding an image to an OCI image layout: the layout is created if absent
//! (`oci-layout`, `blobs/sha256/`, `index.json`), blobs are written first
//! (each under a temporary name, linked under its digest when complete;
//! blobs already there are kept), and `index.json` last, as a new file
//! renamed over the old one, so a reader sees the old index or the new one
//! and every blob either names. Entries of the index other than the tag
//! being written are kept as they were.

use super::{ExportError, LayoutProblem};
use crate::oci::layout::REF_NAME;
use crate::oci::media;
use crate::oci::{Descriptor, MAX_DOCUMENT};
use crate::store::Store;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `oci-layout` file's content.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A layout open for adding an image.
pub struct LayoutWriter {
    root: PathBuf,
    /// The layout's blobs.
    pub store: Store,
    index: Map<String, Value>,
}

fn io_err(p: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::Io { path: p.into(), err: e }
}

impl LayoutWriter {
    /// Opens the layout at `root`, or creates it if `root` is absent or an
    /// empty directory. Refuses a directory that holds other things but no
    /// `oci-layout`, an `oci-layout` of another version, and an
    /// `index.json` that is not an image index.
    pub fn open(root: &Path) -> Result<LayoutWriter, ExportError> {
        let not = |problem| ExportError::Layout { path: root.into(), problem };
        match std::fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(root).map_err(io_err(root))?;
            }
            Err(e) => return Err(io_err(root)(e)),
            Ok(md) if !md.is_dir() => return Err(not(LayoutProblem::NotADirectory)),
            Ok(_) => {}
        }
        let lp = root.join("oci-layout");
        match read_limited(&lp, 4096)? {
            Some(data) => {
                let v: Value = serde_json::from_slice(&data)
                    .map_err(|e| ExportError::Layout { path: lp.clone(), problem: LayoutProblem::Json(e) })?;
                match v.get("imageLayoutVersion").and_then(Value::as_str) {
                    Some(s) if s.starts_with("1.") => {}
                    other => {
                        let problem = LayoutProblem::Version(other.map(str::to_string));
                        return Err(ExportError::Layout { path: lp, problem });
                    }
                }
            }
            None => {
                if std::fs::read_dir(root).map_err(io_err(root))?.next().is_some() {
                    return Err(not(LayoutProblem::NotEmpty));
                }
                write_atomic(&lp, OCI_LAYOUT)?;
            }
        }
        let ip = root.join("index.json");
        let index = match read_limited(&ip, MAX_DOCUMENT)? {
            Some(data) => {
                let v: Value = serde_json::from_slice(&data)
                    .map_err(|e| ExportError::Layout { path: ip.clone(), problem: LayoutProblem::Json(e) })?;
                let Value::Object(m) = v else {
                    return Err(ExportError::Layout { path: ip, problem: LayoutProblem::NotAnObject });
                };
                if !m.get("manifests").is_some_and(Value::is_array) {
                    return Err(ExportError::Layout { path: ip, problem: LayoutProblem::NoManifests });
                }
                if m.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
                    return Err(ExportError::Layout { path: ip, problem: LayoutProblem::SchemaVersion });
                }
                m
            }
            None => {
                let Value::Object(m) = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": []})
                else {
                    unreachable!("a literal object")
                };
                m
            }
        };
        let store = Store::create(root)?;
        Ok(LayoutWriter { root: root.to_path_buf(), store, index })
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifests(&self) -> &Vec<Value> {
        match self.index.get("manifests") {
            Some(Value::Array(a)) => a,
            _ => unreachable!("checked when opened"),
        }
    }

    /// Whether an entry of the index carries the tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.manifests().iter().any(|d| d.pointer("/annotations").and_then(|a| a.get(REF_NAME)) == Some(&json!(tag)))
    }

    /// Refuses a tag that exists unless `force`.
    pub fn check_tag(&self, tag: &str, force: bool) -> Result<(), ExportError> {
        if !force && self.has_tag(tag) {
            return Err(ExportError::TagExists { layout: self.root.clone(), tag: tag.to_string() });
        }
        Ok(())
    }

    /// Stores a document (manifest, config) as a blob; returns its descriptor.
    pub fn put_document(&self, media_type: &str, data: &[u8]) -> Result<Descriptor, ExportError> {
        let digest = self.store.put_bytes(data)?;
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: data.len() as u64,
            platform: None,
            annotations: Default::default(),
        })
    }

    /// Points `tag` at the image manifest `desc` (replacing an entry with
    /// that tag), after flushing every blob to stable storage; writes
    /// `index.json` atomically.
    pub fn tag(&mut self, desc: &Descriptor, tag: &str) -> Result<(), ExportError> {
        self.store.sync()?;
        let mut entry = descriptor_json(desc);
        entry["annotations"] = json!({ REF_NAME: tag });
        let Some(Value::Array(list)) = self.index.get_mut("manifests") else { unreachable!("checked when opened") };
        list.retain(|d| d.pointer("/annotations").and_then(|a| a.get(REF_NAME)) != Some(&json!(tag)));
        list.push(entry);
        let data = serde_json::to_vec(&self.index).expect("JSON values serialize");
        write_atomic(&self.root.join("index.json"), &data)
    }
}

/// A descriptor as JSON: mediaType, digest, size.
pub fn descriptor_json(d: &Descriptor) -> Value {
    json!({"mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size})
}

/// Reads a layout file of at most `limit` bytes; `Ok(None)` if it is absent.
pub(crate) fn read_limited(p: &Path, limit: u64) -> Result<Option<Vec<u8>>, ExportError> {
    match crate::oci::layout::read_small(p, limit) {
        Ok(d) => Ok(Some(d)),
        Err(crate::oci::ImportError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a file under a temporary name beside it, syncs it and renames it
/// into place.
pub fn write_atomic(p: &Path, data: &[u8]) -> Result<(), ExportError> {
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ocix-tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, p).map_err(io_err(p))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
