//! The runs of `ocix::pipeline`, called as a library: a pull from a mock
//! registry unpacked while it runs, an OCI layout imported and unpacked,
//! a runtime bundle; and what each leaves behind when it fails.

mod common;

use common::net::{Req, Server, hex_of, ok};
use common::progress::Tally;
use common::registry::{State, registry_with};
use ocix::manifest::Manifest;
use ocix::materialize::UnpackError;
use ocix::pipeline::{
    Brought, ImageUnpackOptions, PullUnpackOptions, RunError, image_bundle, image_unpack, pull_unpack,
};
use ocix::progress::{Progress, Work};
use ocix::remote::{PullOptions, RemoteOptions};
use ocix::scan::{ScanOptions, scan_dir};
use ocix::store::Store;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// A tree scanned into a store: its manifest (encoded) and its blobs.
struct Source {
    dir: tempfile::TempDir,
    manifest: Vec<u8>,
    store: PathBuf,
}

fn source() -> Source {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("etc/small"), b"small file\n").unwrap();
    std::fs::write(tree.join("etc/zbig"), common::noise(300_000, 7)).unwrap();
    std::fs::write(tree.join("bin/tool"), common::noise(5000, 8)).unwrap();
    let store = dir.path().join("store");
    let s = Store::create(&store).unwrap();
    let manifest = scan_dir(&tree, Some(&s), &ScanOptions::default()).unwrap().manifest.to_bytes().unwrap();
    Source { dir, manifest, store }
}

impl Source {
    fn blob(&self, data: &[u8]) -> String {
        hex_of(data)
    }
}

/// An anonymous registry serving `src` as the ocix artifact `ocix/x:v1`;
/// the blob `bad` (hex), when given, is served with one byte changed.
fn registry(src: &Source, bad: Option<String>) -> Server {
    let m = Manifest::from_bytes(&src.manifest).unwrap();
    let layers = ocix::remote::file_blobs(&m)
        .into_iter()
        .map(|(d, size)| serde_json::json!({"mediaType": "application/vnd.ocix.file.v1", "digest": d.to_string(), "size": size}))
        .collect();
    let mut state = State::default();
    state.add_store(&src.store);
    state.add_artifact("v1", &src.manifest, layers, serde_json::Value::Null);
    let state = Arc::new(Mutex::new(state));
    let st = state.clone();
    let flip = move |req: &Req| {
        let bad = format!("sha256:{}", bad.as_deref()?);
        if req.method != "GET" || !req.path.ends_with(&format!("/blobs/{bad}")) {
            return None;
        }
        let mut b = st.lock().unwrap().blobs.get(&bad)?.clone();
        b[0] ^= 1;
        Some(ok(b))
    };
    registry_with(state, Box::new(flip), None).server
}

fn pull_opts(store: Option<PathBuf>) -> PullUnpackOptions {
    let remote = RemoteOptions { retries: 0, auth_files: Vec::new(), ..RemoteOptions::default() };
    PullUnpackOptions { pull: PullOptions { remote, ..PullOptions::default() }, store, ..Default::default() }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The manifest of the tree at `dir`.
fn rescan(dir: &Path) -> Vec<u8> {
    scan_dir(dir, None, &ScanOptions::default()).unwrap().manifest.to_bytes().unwrap()
}

#[test]
fn a_pull_unpacked_without_a_store_leaves_only_the_tree() {
    let src = source();
    let s = registry(&src, None);
    let out = src.dir.path().join("out");
    let dest = out.join("rootfs");
    let tally = Arc::new(Tally::default());
    let mut opts = pull_opts(None);
    opts.pull.progress = Progress::to(tally.clone());
    opts.unpack.progress = Progress::to(tally.clone());
    let url = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let done = pull_unpack(&url, &dest, &opts).unwrap();
    let Brought::Pulled(r) = &done.brought else { panic!("not pulled: {:?}", done.brought) };
    assert_eq!((r.blobs, r.fetched), (3, 3));
    assert_eq!(done.unpack.files_linked + done.unpack.files_written, 3);
    // the temporary store beside DEST is gone; the files are the blobs,
    // now each a file of its own
    assert_eq!(names(&out), ["rootfs"]);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(dest.join("etc/zbig")).unwrap().nlink(), 1);
    assert_eq!(rescan(&dest), src.manifest);
    // the pull reports, the unpack under it does not
    assert_eq!(tally.of(Work::Pull).len(), 1);
    assert!(tally.of(Work::Unpack).is_empty());
    assert_eq!(tally.of(Work::Pull)[0].done.load(Ordering::Relaxed), 300_000 + 5000 + 11);
}

#[test]
fn a_blob_that_fails_verification_leaves_no_dest_and_no_temporary_store() {
    let src = source();
    let big = src.blob(&std::fs::read(src.dir.path().join("tree/etc/zbig")).unwrap());
    let s = registry(&src, Some(big.clone()));
    let url = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let out = src.dir.path().join("out");
    let dest = out.join("rootfs");
    let e = pull_unpack(&url, &dest, &pull_opts(None)).unwrap_err();
    assert!(matches!(&e, RunError::Pull { .. }), "{e:?}");
    assert!(e.to_string().contains(&big), "{e}");
    // nothing this run created is left: not DEST, not its store
    assert!(names(&out).is_empty(), "{:?}", names(&out));

    // with a store of the caller's: what was verified stays there for a
    // rerun, the bad blob never got a name
    let cache = src.dir.path().join("cache");
    pull_unpack(&url, &dest, &pull_opts(Some(cache.clone()))).unwrap_err();
    assert!(!dest.exists());
    assert!(cache.join("blobs/sha256").join(hex_of(b"small file\n")).exists());
    assert!(!cache.join("blobs/sha256").join(&big).exists());
}

#[test]
fn a_dest_the_unpack_would_refuse_is_refused_before_any_request() {
    let src = source();
    let s = registry(&src, None);
    let url = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let dest = src.dir.path().join("full");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), b"mine").unwrap();
    let e = pull_unpack(&url, &dest, &pull_opts(None)).unwrap_err();
    assert!(matches!(e, RunError::Dest(UnpackError::DestNotEmpty(_))), "{e:?}");
    std::os::unix::fs::symlink(&dest, src.dir.path().join("link")).unwrap();
    let e = pull_unpack(&url, &src.dir.path().join("link"), &pull_opts(None)).unwrap_err();
    assert!(matches!(e, RunError::Dest(UnpackError::DestSymlink(_))), "{e:?}");
    assert!(s.requests().is_empty(), "{:?}", s.requests());
    assert_eq!(names(&dest), ["keep"]);
    assert!(!names(src.dir.path()).iter().any(|n| n.contains("ocix-store")));
}

/// A run that fails after writing into a DEST that existed (empty) says
/// so and leaves it for an update to complete; one refused before writing
/// (an overlay xattr) does not.
#[test]
fn a_failure_in_an_existing_dest_is_partly_unpacked() {
    let src = source();
    let big = src.blob(&std::fs::read(src.dir.path().join("tree/etc/zbig")).unwrap());
    let s = registry(&src, Some(big));
    let url = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let dest = src.dir.path().join("empty");
    std::fs::create_dir(&dest).unwrap();
    let e = pull_unpack(&url, &dest, &pull_opts(None)).unwrap_err();
    assert!(matches!(&e, RunError::Partly { error, .. } if matches!(**error, RunError::Pull { .. })), "{e:?}");
    assert!(dest.is_dir());
    assert!(!names(src.dir.path()).iter().any(|n| n.contains("ocix-store")));
    let mut upd = pull_opts(None);
    upd.unpack.update = true;
    let e = pull_unpack(&url, &dest, &upd).unwrap_err();
    assert!(matches!(e, RunError::Pull { .. }), "{e:?}");
}

// ------------------------------------------------------------ an OCI layout

/// An OCI image layout holding `files` (path, content) as one layer,
/// tagged `v1`.
fn layout(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let l = dir.join("layout");
    std::fs::create_dir_all(l.join("blobs/sha256")).unwrap();
    std::fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let layer = common::tar_of(files);
    let put = |d: &[u8], mt: &str| {
        std::fs::write(l.join("blobs/sha256").join(hex_of(d)), d).unwrap();
        serde_json::json!({"mediaType": mt, "digest": format!("sha256:{}", hex_of(d)), "size": d.len()})
    };
    let config = serde_json::json!({"architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex_of(&layer))]}});
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": put(&serde_json::to_vec(&config).unwrap(), "application/vnd.oci.image.config.v1+json"),
        "layers": [put(&layer, "application/vnd.oci.image.layer.v1.tar")]});
    let mut desc = put(&serde_json::to_vec(&manifest).unwrap(), "application/vnd.oci.image.manifest.v1+json");
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(l.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    l
}

const FILES: &[(&str, &[u8])] = &[("etc/hostname", b"box\n"), ("usr/lib/data", &[7u8; 20_000])];

#[test]
fn a_layout_image_is_unpacked_and_its_temporary_store_removed() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), FILES);
    let out = t.path().join("out");
    let dest = out.join("rootfs");
    let tally = Arc::new(Tally::default());
    let mut opts = ImageUnpackOptions::default();
    opts.unpack.progress = Progress::to(tally.clone());
    let done = image_unpack(&format!("{}:v1", l.display()), &dest, &opts).unwrap();
    let Brought::Imported(imported) = &done.brought else { panic!("not imported: {:?}", done.brought) };
    assert_eq!(imported.image.layers.len(), 1);
    assert_eq!(std::fs::read(dest.join("etc/hostname")).unwrap(), b"box\n");
    assert_eq!(std::fs::read(dest.join("usr/lib/data")).unwrap(), vec![7u8; 20_000]);
    assert_eq!(names(&out), ["rootfs"]);
    let unpacks = tally.of(Work::Unpack);
    assert_eq!(unpacks.len(), 1);
    assert_eq!(unpacks[0].done.load(Ordering::Relaxed), 20_004);
}

#[test]
fn every_kind_of_content_comes_out_exact_through_the_runs_own_store() {
    // small and large blobs, the same content twice, zero blocks (holes in
    // the run's store) inside and at the end, many small files in a row
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut holes = vec![0u8; 1 << 20];
    holes.extend_from_slice(b"after a megabyte of zeros");
    holes.resize(3 << 20, 0);
    let small: Vec<(String, Vec<u8>)> =
        (0..300).map(|i| (format!("many/f{i}"), format!("file {i}\n").into_bytes())).collect();
    let mut files: Vec<(&str, &[u8])> =
        vec![("a/one", b"same"), ("b/two", b"same"), ("big", &big), ("holes", &holes), ("zeros", &[0u8; 70_000])];
    files.extend(small.iter().map(|(p, c)| (p.as_str(), c.as_slice())));
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), &files);
    let out = t.path().join("out");
    let dest = out.join("rootfs");
    image_unpack(&format!("{}:v1", l.display()), &dest, &ImageUnpackOptions::default()).unwrap();
    for (p, c) in &files {
        let got = std::fs::read(dest.join(p)).unwrap();
        assert!(got == *c, "{p}: {} bytes, expected {}", got.len(), c.len());
        let md = std::fs::metadata(dest.join(p)).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&md), 1, "{p} shares its inode");
    }
    assert_eq!(names(&out), ["rootfs"]);
}

#[test]
fn a_layer_that_fails_verification_leaves_no_dest_and_no_temporary_store() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), FILES);
    // the layer blob (the largest) damaged on disk
    let blobs = l.join("blobs/sha256");
    let layer =
        std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().path()).max_by_key(|p| p.metadata().unwrap().len());
    let layer = layer.unwrap();
    let mut b = std::fs::read(&layer).unwrap();
    b[600] ^= 1;
    std::fs::write(&layer, b).unwrap();
    let out = t.path().join("out");
    let dest = out.join("rootfs");
    let e = image_unpack(&format!("{}:v1", l.display()), &dest, &ImageUnpackOptions::default()).unwrap_err();
    assert!(matches!(e, RunError::Import { .. }), "{e:?}");
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    // and into a bundle: the bundle this run created is gone too
    let bundle = out.join("bundle");
    image_bundle(&format!("{}:v1", l.display()), &bundle, &ImageUnpackOptions::default()).unwrap_err();
    assert!(names(&out).is_empty(), "{:?}", names(&out));
}

#[test]
fn a_bundle_holds_the_rootfs_its_manifest_and_its_config() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path(), FILES);
    let bundle = t.path().join("bundle");
    let done = image_bundle(&format!("{}:v1", l.display()), &bundle, &ImageUnpackOptions::default()).unwrap();
    assert_eq!(names(&bundle), ["config.json", "ocix-image.json", "ocix.cbor", "rootfs"]);
    assert_eq!(std::fs::read(bundle.join("ocix.cbor")).unwrap(), done.imported.manifest.to_bytes().unwrap());
    assert_eq!(rescan(&bundle.join("rootfs")), done.imported.manifest.to_bytes().unwrap());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["sh"]));
    // a bundle that is not empty is refused, untouched
    let e = image_bundle(&format!("{}:v1", l.display()), &bundle, &ImageUnpackOptions::default()).unwrap_err();
    assert!(matches!(e, RunError::Dest(UnpackError::DestNotEmpty(_))), "{e:?}");
    assert_eq!(names(&bundle), ["config.json", "ocix-image.json", "ocix.cbor", "rootfs"]);
}
