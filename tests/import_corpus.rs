//! `ocix import` on the shared corpus image (built by
//! `shared/corpus/make-image.sh DIR`; DIR is `$OCIX_CORPUS`, by default
//! `~/.cache/ocix-corpus`): the imported manifest must equal, byte for byte,
//! the scan of umoci's unpack of the same image (`DIR/rootfs-reference`).
//! When the corpus is absent they fail under `OCIX_REQUIRE_CORPUS=1` (as
//! `make test`, which builds it first, sets), else say "skipped" on stderr.

mod common;

use ocix::manifest::{Kind, Manifest, path_display};
use ocix::scan::{ScanOptions, scan_dir};
use ocix::store::Store;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The corpus with its image and umoci's unpack of it, or None (the test
/// was skipped, and said so).
fn corpus() -> Option<PathBuf> {
    common::corpus("tests/import_corpus.rs", &["image/index.json", "rootfs-reference"])
}

/// Lists the paths where two manifests differ, for a readable failure.
fn differences(a: &Manifest, b: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    let am: std::collections::BTreeMap<_, _> = a.walk().collect();
    let bm: std::collections::BTreeMap<_, _> = b.walk().collect();
    for (p, e) in &am {
        match bm.get(p) {
            None => out.push(format!("{}: only in import", path_display(p))),
            Some(f) => {
                let strip = |e: &ocix::manifest::Entry| match &e.kind {
                    Kind::Dir(_) => (e.meta.clone(), None),
                    k => (e.meta.clone(), Some(k.clone())),
                };
                if strip(e) != strip(f) {
                    out.push(format!("{}: import {:?} / scan {:?}", path_display(p), strip(e), strip(f)));
                }
            }
        }
    }
    for p in bm.keys() {
        if !am.contains_key(p) {
            out.push(format!("{}: only in scan", path_display(p)));
        }
    }
    out
}

#[test]
fn corpus_import_equals_scan_of_umoci_unpack() {
    let Some(dir) = corpus() else { return };
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("import.cbor");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .arg("import")
        .arg(format!("{}:debian", dir.join("image").display()))
        .arg("-o")
        .arg(&out)
        .arg("--store")
        .arg(t.path().join("store"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let imported = Manifest::from_bytes(&bytes).unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let scan = scan_dir(&dir.join("rootfs-reference"), None, &ScanOptions::default()).unwrap().manifest.to_tree();
    let diffs = differences(&imported, &scan);
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    assert!(bytes == scan.to_bytes().unwrap(), "same trees, different bytes");
    let imp = ocix::oci::Imported {
        manifest: ocix::manifest::Compact::from_bytes(&bytes).unwrap(),
        image: ocix::oci::open_image(&dir.join("image"), Some("debian"), None).unwrap().1,
        files: 0,
        bytes: 0,
        dropped: Default::default(),
    };
    assert_eq!(imp.image.layers.len(), 3);

    // Every content is in the store, once, sparse where it has zero runs.
    let tree = imp.manifest.to_tree();
    for (p, e) in tree.walk() {
        if let Kind::File(f) = &e.kind {
            let Some(d) = f.digest else { continue };
            let meta =
                std::fs::metadata(store.blob_path(&d)).unwrap_or_else(|e| panic!("{}: blob: {e}", path_display(&p)));
            assert_eq!(meta.len(), f.size, "{}", path_display(&p));
            let zero_bytes: u64 = f.zeros.iter().map(|r| r.1 * 4096).sum();
            if zero_bytes >= 1 << 20 {
                assert!(
                    meta.blocks() * 512 <= f.size - zero_bytes + (1 << 20),
                    "{}: blob not sparse ({} blocks)",
                    path_display(&p),
                    meta.blocks()
                );
            }
        }
    }
    // Blob bytes equal the reference files (a few, including the big ones).
    for rel in ["srv/ocix-edge/big/random-32M", "srv/ocix-edge/sparse/sparse-64M", "etc/ocix-release", "usr/bin/bash"] {
        let f = match &tree.get(rel.as_bytes()).map(|e| &e.kind) {
            Some(Kind::File(f)) => f.clone(),
            other => panic!("{rel}: {other:?}"),
        };
        let want = std::fs::read(dir.join("rootfs-reference").join(rel)).unwrap();
        assert_eq!(std::fs::read(store.blob_path(&f.digest.unwrap())).unwrap(), want, "{rel}");
    }
}

/// Import, then unpack with ocix, then scan: the same manifest again, and the
/// corpus's sparse files are sparse on disk (umoci writes their holes out).
#[test]
fn corpus_import_unpack_scan_round_trip() {
    let Some(dir) = corpus() else { return };
    let t = tempfile::tempdir().unwrap();
    let ocix = |args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ocix")).args(args).output().unwrap();
        assert!(o.status.success(), "ocix {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let m = t.path().join("m.cbor");
    let store = t.path().join("store");
    let rootfs = t.path().join("rootfs");
    let image = format!("{}:debian", dir.join("image").display());
    ocix(&["import".as_ref(), image.as_ref(), "-o".as_ref(), m.as_os_str(), "--store".as_ref(), store.as_os_str()]);
    ocix(&["unpack".as_ref(), m.as_os_str(), rootfs.as_os_str(), "--store".as_ref(), store.as_os_str()]);
    let again = scan_dir(&rootfs, None, &ScanOptions::default()).unwrap().manifest.to_tree();
    let imported = Manifest::from_bytes(&std::fs::read(&m).unwrap()).unwrap();
    let diffs = differences(&imported, &again);
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    let sparse = std::fs::metadata(rootfs.join("srv/ocix-edge/sparse/sparse-64M")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(sparse.blocks() * 512 < 1 << 20, "sparse-64M has {} blocks", sparse.blocks());
}
