//! Repack: a runtime bundle's drift -> one new layer on top of the image it
//! was unpacked from, as `umoci repack` does.
//!
//! `ocix unpack --image` leaves two records in the bundle: `ocix.cbor`, the
//! manifest of the tree it wrote to `rootfs/`, and [`IMAGE_RECORD`], the
//! descriptor of the image manifest it came from and whether the tree was
//! written rootless. [`repack`] scans `rootfs/` (owners from
//! `user.rootlesscontainers` when rootless, as umoci reads them), compares
//! it with `ocix.cbor` and writes a layer of only what differs, in a fixed
//! order, through the canonical tar writer:
//! - each directory's own entry when its metadata changed, then an opaque
//!   whiteout (`.wh..wh..opq`) when every one of its old children (two or
//!   more) is gone, else a `.wh.NAME` for each name gone, then its changed
//!   children, by name, depth first;
//! - an entry added, or changed in type, content or metadata, whole (a new
//!   directory with everything below it; a non-directory replacing a
//!   directory replaces all of it, as every unpacker does);
//! - a hardlink whose first name is written again is written again too (the
//!   first name is a new inode in the new layer).
//!
//! The image becomes the old one plus that layer (config `rootfs.diff_ids`
//! and `history`, manifest, index entry under the new tag), and the bundle's
//! records are brought up to date, so a second repack adds only the next
//! change.
//!
//! Unchanged files are not read (see [`crate::scan::Reuse`]): a regular file
//! whose size and mtime match `ocix.cbor` and whose ctime is older than the
//! record is taken as recorded. The record's own mtime is the moment the
//! tree last matched it: `unpack --image` writes `ocix.cbor` after the
//! whole tree, and repack sets the new record's mtime to the moment its
//! scan began (taken from the filesystem's clock), so whatever changed
//! during a repack is read by the next one. Touching `ocix.cbor` by hand
//! breaks that rule; `rehash` reads every file.
//!
//! Rootless bundles hold what an unprivileged unpack could not write:
//! devices as empty files and no `security.*`/`trusted.*` xattrs. Where the
//! record has a device and the tree an empty regular file, and where the
//! record has such xattrs that the tree lacks, the record is kept, so the
//! image keeps them.
//!
//! Files that change between the scan and the writing of the layer are
//! caught by their sha256 (the layer is then not tagged).

use super::layout::{LayoutWriter, descriptor_json, write_atomic};
use super::tar::{TarWriteError, TarWriter};
use super::{BundleProblem, ExportError, Exported, check_tag_name, checked_read, write_layer};
use crate::manifest::{Compact, Digest, Entry, File, Kind, Manifest, Name, Time, path_display};
use crate::oci::Compression;
use crate::oci::layout::{LayoutDocuments, choose_image};
use crate::oci::media;
use crate::scan::{Reuse, ScanOptions, scan_dir};
use crate::sys::read as rd;
use rustix::fd::{AsFd, OwnedFd};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

/// The bundle's record of the manifest its rootfs was written from.
pub const MANIFEST_RECORD: &str = "ocix.cbor";
/// The bundle's record of the image it came from: `{"manifest":
/// DESCRIPTOR, "rootless": BOOL, "idMapped": BOOL}`.
pub const IMAGE_RECORD: &str = "ocix-image.json";

/// How to repack.
#[derive(Clone, Debug)]
pub struct RepackOptions {
    /// The new layer's compression.
    pub compression: Compression,
    /// Threads for hashing and compressing; 0 means one per CPU.
    pub threads: usize,
    /// Replace a tag that exists.
    pub force: bool,
    /// Read owners from `user.rootlesscontainers` even if the bundle's
    /// record does not say it was unpacked rootless.
    pub rootless: bool,
    /// Read every file, trusting no recorded content.
    pub rehash: bool,
}

impl Default for RepackOptions {
    fn default() -> Self {
        RepackOptions { compression: Compression::Gzip, threads: 0, force: false, rootless: false, rehash: false }
    }
}

/// A finished repack.
#[derive(Clone, Debug)]
pub struct Repacked {
    /// The new image.
    pub image: Exported,
    /// Entries added or changed (written whole).
    pub changed: u64,
    /// Whiteouts written (opaque ones included).
    pub removed: u64,
    /// Regular files read and hashed by the scan.
    pub hashed: u64,
}

/// The image record of a bundle.
#[derive(Clone, Debug)]
pub struct ImageRecord {
    /// The image manifest's descriptor.
    pub manifest: crate::oci::Descriptor,
    /// Whether the rootfs was written rootless.
    pub rootless: bool,
    /// Whether owners were shifted by id maps.
    pub id_mapped: bool,
}

impl ImageRecord {
    /// The record as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "manifest": descriptor_json(&self.manifest),
            "rootless": self.rootless,
            "idMapped": self.id_mapped,
        }))
        .expect("JSON values serialize")
    }

    /// Reads `BUNDLE/ocix-image.json`.
    pub fn read(bundle: &Path) -> Result<ImageRecord, ExportError> {
        let p = bundle.join(IMAGE_RECORD);
        let data = read_small(&p, 1 << 20)?;
        let bad = |problem| ExportError::Bundle { path: p.clone(), problem };
        let field = |what| bad(BundleProblem::Field(what));
        let v: Value = serde_json::from_slice(&data).map_err(|e| bad(BundleProblem::Json(e)))?;
        let d = v.get("manifest").ok_or_else(|| field("no manifest descriptor"))?;
        let digest = d
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|s| Digest::parse(s).ok())
            .ok_or_else(|| field("manifest.digest is not sha256:<64 lowercase hex>"))?;
        let size = d.get("size").and_then(Value::as_u64).ok_or_else(|| field("manifest.size is not a number"))?;
        let media_type = d
            .get("mediaType")
            .and_then(Value::as_str)
            .ok_or_else(|| field("manifest.mediaType is missing"))?
            .to_string();
        Ok(ImageRecord {
            manifest: crate::oci::Descriptor {
                media_type,
                digest,
                size,
                platform: None,
                annotations: Default::default(),
            },
            rootless: v.get("rootless").and_then(Value::as_bool).unwrap_or(false),
            id_mapped: v.get("idMapped").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// Reads a record of the bundle; its absence means the bundle is not one
/// `ocix unpack --image` made.
fn read_small(p: &Path, limit: u64) -> Result<Vec<u8>, ExportError> {
    super::layout::read_limited(p, limit)?
        .ok_or_else(|| ExportError::Bundle { path: p.into(), problem: BundleProblem::Missing })
}

/// The time the filesystem holding `dir` gives a file made now (its own
/// clock, with its granularity).
fn fs_now(dir: &Path) -> Result<Time, ExportError> {
    let p = dir.join(format!(".ocix-stamp-{}", std::process::id()));
    let io = |e: io::Error| ExportError::Io { path: p.clone(), err: e };
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&p).map_err(io)?;
    let md = f.metadata();
    let _ = std::fs::remove_file(&p);
    let md = md.map_err(io)?;
    use std::os::unix::fs::MetadataExt;
    Ok(Time { sec: md.mtime(), nsec: md.mtime_nsec() as u32 })
}

/// Repacks `bundle` into the layout at `layout` under `tag`.
pub fn repack(bundle: &Path, layout: &Path, tag: &str, opts: &RepackOptions) -> Result<Repacked, ExportError> {
    check_tag_name(tag)?;
    let record = ImageRecord::read(bundle)?;
    if record.id_mapped {
        return Err(ExportError::IdMapped(bundle.into()));
    }
    let rootless = opts.rootless || record.rootless;
    let mp = bundle.join(MANIFEST_RECORD);
    let data = read_small(&mp, 1 << 30)?;
    let old_compact = Compact::from_bytes(&data)
        .map_err(|e| ExportError::Bundle { path: mp.clone(), problem: BundleProblem::Manifest(e) })?;
    drop(data);
    let old = old_compact.to_tree();
    let recorded = {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(&mp).map_err(|e| ExportError::Io { path: mp.clone(), err: e })?;
        Time { sec: md.mtime(), nsec: md.mtime_nsec() as u32 }
    };
    if !layout.join("oci-layout").is_file() {
        return Err(ExportError::NotALayout {
            layout: layout.into(),
            image: record.manifest.digest,
            bundle: bundle.into(),
        });
    }
    let mut lw = LayoutWriter::open(layout)?;
    lw.check_tag(tag, opts.force)?;
    let image = choose_image(
        &LayoutDocuments(&lw.store),
        vec![record.manifest.clone()],
        None,
        None,
        &bundle.join(IMAGE_RECORD).display().to_string(),
    )
    .map_err(|e| match e {
        crate::oci::ImportError::Store(crate::store::StoreError::Missing { .. }) => {
            ExportError::ImageMissing { layout: layout.into(), image: record.manifest.digest, bundle: bundle.into() }
        }
        e => e.into(),
    })?;
    let docker = image.manifest_desc.media_type == media::DOCKER_MANIFEST;
    let layer_type = match (docker, opts.compression) {
        (false, c) => super::layer_media_type(c),
        (true, Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        (true, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (true, Compression::Zstd) => {
            return Err(ExportError::DockerZstd);
        }
    };

    let rootfs = bundle.join("rootfs");
    let started = fs_now(bundle)?;
    let sopts = ScanOptions {
        rootless,
        threads: opts.threads,
        reuse: (!opts.rehash).then(|| Arc::new(Reuse { manifest: old_compact, changed_before: recorded })),
        ..ScanOptions::default()
    };
    let scan = scan_dir(&rootfs, None, &sopts)?;
    drop(sopts);
    let mut new = scan.manifest.to_tree();
    if rootless {
        keep_what_rootless_cannot_write(&old.root, &mut new.root);
    }
    let hashed = scan.files - scan.reused;

    let root_fd = rd::open_dir_path(&rootfs)?;
    let (mut layer, diff_id, (changed, removed)) = write_layer(&lw.store, opts.compression, opts.threads, |tw| {
        let mut w = Drift {
            tw,
            new: &new,
            src: RootfsFiles { root: root_fd, dir: None, rootfs: &rootfs },
            emitted: HashSet::new(),
            changed: 0,
            removed: 0,
        };
        if old.root.meta != new.root.meta {
            w.write(b"", &new.root)?;
        }
        let (Kind::Dir(oc), Kind::Dir(nc)) = (&old.root.kind, &new.root.kind) else {
            unreachable!("roots are directories")
        };
        w.children(oc, nc, &mut Vec::new())?;
        Ok((w.changed, w.removed))
    })?;
    layer.media_type = layer_type.to_string();

    // the image: the old one plus the layer
    let mut config = image.config.clone();
    match config.pointer_mut("/rootfs/diff_ids") {
        Some(Value::Array(ids)) => ids.push(json!(diff_id.to_string())),
        _ => return Err(ExportError::BaseImage("config", "rootfs.diff_ids")),
    }
    if let Some(Value::Array(h)) = config.get_mut("history") {
        h.push(json!({"created_by": "ocix repack"}));
    }
    let config_data = serde_json::to_vec(&config).expect("JSON values serialize");
    let config_desc = lw.put_document(&image.config_desc.media_type, &config_data)?;
    let mut manifest = image.manifest.clone();
    manifest["config"] = descriptor_json(&config_desc);
    match manifest.get_mut("layers") {
        Some(Value::Array(l)) => l.push(descriptor_json(&layer)),
        _ => return Err(ExportError::BaseImage("manifest", "layers")),
    }
    let manifest_data = serde_json::to_vec(&manifest).expect("JSON values serialize");
    let manifest_desc = lw.put_document(&image.manifest_desc.media_type, &manifest_data)?;
    lw.tag(&manifest_desc, tag)?;

    // the bundle's records: the tree as it was when the scan began
    let cbor = new.to_bytes().map_err(ExportError::Manifest)?;
    write_stamped(&mp, &cbor, started)?;
    let rec = ImageRecord { manifest: manifest_desc.clone(), rootless, id_mapped: false };
    write_atomic(&bundle.join(IMAGE_RECORD), &rec.to_json())?;
    let entries = changed + removed;
    Ok(Repacked {
        image: Exported { manifest: manifest_desc, config: config_desc, layer, diff_id, entries },
        changed,
        removed,
        hashed,
    })
}

/// Writes `p` atomically with the mtime `t`.
fn write_stamped(p: &Path, data: &[u8], t: Time) -> Result<(), ExportError> {
    use std::io::Write;
    let tmp = p.with_file_name(format!(".{MANIFEST_RECORD}.ocix-tmp-{}", std::process::id()));
    let io = |e: io::Error| ExportError::Io { path: tmp.clone(), err: e };
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(data).map_err(io)?;
        let when = if t.sec >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::new(t.sec as u64, t.nsec)
        } else {
            std::time::UNIX_EPOCH
        };
        f.set_modified(when).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, p).map_err(|e| ExportError::Io { path: p.into(), err: e })
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Rootless: keeps the record's devices where the tree has the empty file
/// that stands for one, and the record's `security.*`/`trusted.*` xattrs
/// that the tree lacks.
fn keep_what_rootless_cannot_write(old: &Entry, new: &mut Entry) {
    let device = matches!(old.kind, Kind::Char(_) | Kind::Block(_));
    if device && matches!(&new.kind, Kind::File(f) if f.size == 0) {
        *new = old.clone();
        return;
    }
    if old.kind.code() == new.kind.code() {
        for (k, v) in &old.meta.xattrs {
            if (k.starts_with(b"security.") || k.starts_with(b"trusted.")) && !new.meta.xattrs.contains_key(k) {
                new.meta.xattrs.insert(k.clone(), v.clone());
            }
        }
    }
    if let (Kind::Dir(oc), Kind::Dir(nc)) = (&old.kind, &mut new.kind) {
        for (name, n) in nc.iter_mut() {
            if let Some(o) = oc.get(name) {
                stacker::maybe_grow(64 * 1024, 1024 * 1024, || keep_what_rootless_cannot_write(o, n));
            }
        }
    }
}

/// Writes the drift between two trees.
struct Drift<'t, 'r, W: std::io::Write> {
    tw: &'t mut TarWriter<W>,
    /// The tree being written (for the metadata of hardlinks).
    new: &'t Manifest,
    src: RootfsFiles<'r>,
    /// Non-directory entries written, by path (for their hardlinks).
    emitted: HashSet<Vec<u8>>,
    changed: u64,
    removed: u64,
}

impl<W: std::io::Write> Drift<'_, '_, W> {
    fn write(&mut self, path: &[u8], e: &Entry) -> Result<(), ExportError> {
        let mut content = match &e.kind {
            Kind::File(f) if f.size > 0 => Some(self.src.open(path, f)?),
            _ => None,
        };
        let e = super::with_link_meta(self.new, e);
        self.tw.entry(path, &e, content.as_mut().map(|c| c as &mut dyn Read))?;
        if !matches!(e.kind, Kind::Dir(_)) {
            self.emitted.insert(path.to_vec());
        }
        self.changed += 1;
        Ok(())
    }

    /// Writes `e` and everything below it.
    fn whole(&mut self, path: &mut Vec<u8>, e: &Entry) -> Result<(), ExportError> {
        self.write(path, e)?;
        if let Kind::Dir(c) = &e.kind {
            let base = path.len();
            for (name, child) in c {
                join(path, base, name);
                stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.whole(path, child))?;
            }
            path.truncate(base);
        }
        Ok(())
    }

    fn children(
        &mut self,
        old: &BTreeMap<Name, Entry>,
        new: &BTreeMap<Name, Entry>,
        path: &mut Vec<u8>,
    ) -> Result<(), ExportError> {
        let gone: Vec<&Name> = old.keys().filter(|n| !new.contains_key(*n)).collect();
        if gone.len() >= 2 && gone.len() == old.len() {
            self.tw.whiteout(path, b".wh..opq")?;
            self.removed += 1;
        } else {
            for n in gone {
                self.tw.whiteout(path, n)?;
                self.removed += 1;
            }
        }
        let base = path.len();
        for (name, ne) in new {
            join(path, base, name);
            let oe = old.get(name);
            match (oe.map(|o| &o.kind), &ne.kind) {
                (Some(Kind::Dir(oc)), Kind::Dir(nc)) => {
                    if oe.is_some_and(|o| o.meta != ne.meta) {
                        self.write(path, ne)?;
                    }
                    stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.children(oc, nc, path))?;
                }
                (Some(_), Kind::Hardlink(t)) if oe == Some(ne) && !self.emitted.contains(t) => {}
                (Some(_), Kind::Hardlink(_)) if oe == Some(ne) => self.whole(path, ne)?,
                (Some(_), _) if oe == Some(ne) => {}
                _ => self.whole(path, ne)?,
            }
        }
        path.truncate(base);
        Ok(())
    }
}

fn join(path: &mut Vec<u8>, base: usize, name: &[u8]) {
    path.truncate(base);
    if base > 0 {
        path.push(b'/');
    }
    path.extend_from_slice(name);
}

/// Files of the rootfs, opened one name at a time without following a
/// symlink; the directory of the last file stays open for the next.
struct RootfsFiles<'r> {
    root: OwnedFd,
    dir: Option<(Vec<u8>, OwnedFd)>,
    rootfs: &'r Path,
}

impl RootfsFiles<'_> {
    fn open(&mut self, path: &[u8], f: &File) -> Result<RootfsContent, ExportError> {
        let shown = format!("{}{}", self.rootfs.display(), path_display(path));
        let sh = || shown.clone();
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let fail = |e: crate::sys::SysError| TarWriteError::Content { path: path_display(path), msg: e.to_string() };
        if self.dir.as_ref().is_none_or(|(p, _)| p != parent) {
            let mut fd: Option<OwnedFd> = None;
            for comp in parent.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
                let at = fd.as_ref().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
                fd = Some(rd::open_dir_at(at, comp, &sh).map_err(fail)?);
            }
            let fd = match fd {
                Some(f) => f,
                None => rustix::io::dup(&self.root).map_err(|e| fail(crate::sys::SysError::new("dup", sh(), e)))?,
            };
            self.dir = Some((parent.to_vec(), fd));
        }
        let (_, dir) = self.dir.as_ref().expect("set above");
        let fd = rd::open_file_at(dir.as_fd(), name, &sh).map_err(fail)?;
        let expected = f.digest.ok_or_else(|| ExportError::NoDigest(shown.clone()))?;
        Ok(RootfsContent { f: std::fs::File::from(fd), left: f.size, expected, hash: Sha256::new(), shown })
    }
}

/// A file of the rootfs being written to the layer, checked against the
/// sha256 the scan found.
struct RootfsContent {
    f: std::fs::File,
    left: u64,
    expected: Digest,
    hash: Sha256,
    shown: String,
}

impl Read for RootfsContent {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        checked_read(&mut self.f, buf, &mut self.left, &mut self.hash, &self.expected, &self.shown)
            .map_err(|e| io::Error::new(e.kind(), format!("{e} (changed since it was scanned: repack again)")))
    }
}
