//! `ocix export`: a manifest and its blobs -> an OCI image, checked by
//! importing it back (the manifest must come back byte for byte), by
//! exporting twice, and against bad layouts, tags and stores.

mod common;

use common::*;
use ocix::manifest::{Digest, Entry, File, Kind, Manifest};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Adds what the sample tree lacks: names and targets too long for the
/// ustar fields, a path deeper than 255 bytes, big ids, a long xattr
/// value, a file with zero runs and no holes, and a hardlinked symlink.
fn add_extras(root: &Path) {
    let j = |s: &str| root.join(s);
    let long = "n".repeat(150);
    std::fs::create_dir_all(j(&format!("deep/{long}/{long}"))).unwrap();
    write(&j(&format!("deep/{long}/{long}/{}", "f".repeat(200))), b"deep\n");
    write(&j(&format!("deep/{}", "x".repeat(101))), b"x\n");
    std::os::unix::fs::symlink("t".repeat(300), j("deep/longlink")).unwrap();
    std::fs::hard_link(j("deep/longlink"), j("deep/longlink-2")).unwrap();
    let mut zeros = noise(4096, 3);
    zeros.extend(vec![0u8; 3 * 4096]);
    zeros.extend(noise(100, 4));
    write(&j("deep/zeros"), &zeros);
    rustix::fs::setxattr(j("deep/zeros"), "user.long", &noise(3000, 5), rustix::fs::XattrFlags::empty()).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(j("deep/zeros"), Some(3_000_000), Some(4_000_000)).unwrap();
    }
    set_mtime(&j("deep/zeros"), 1_600_000_000, 7);
}

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    manifest: PathBuf,
    store: PathBuf,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    make_tree(&tree, false);
    add_extras(&tree);
    let manifest = dir.join("m.ocix");
    let store = dir.join("store");
    let o = run(&[os("scan"), tree.as_os_str(), os("--store"), store.as_os_str(), os("-o"), manifest.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Fixture { _t: t, dir, manifest, store }
}

fn export(f: &Fixture, manifest: &Path, image: &str, extra: &[&str]) -> std::process::Output {
    let mut c = ocix();
    c.arg("export").arg(manifest).arg("--store").arg(&f.store).arg("--image").arg(image).args(extra);
    c.output().unwrap()
}

fn export_ok(f: &Fixture, image: &str, extra: &[&str]) -> String {
    let o = export(f, &f.manifest, image, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn import_bytes(image: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("imported.ocix");
    let store = dir.join("store2");
    let o = run(&[os("import"), os(image), os("--store"), store.as_os_str(), os("-o"), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn export_then_import_gives_the_manifest_byte_for_byte() {
    let f = fixture();
    let want = std::fs::read(&f.manifest).unwrap();
    for c in ["gzip", "zstd", "none"] {
        let layout = f.dir.join(format!("layout-{c}"));
        let image = format!("{}:t", layout.display());
        export_ok(&f, &image, &["--compress", c]);
        let got = import_bytes(&image, &f.dir);
        assert!(got == want, "{c}: the imported manifest differs from the exported one");
        assert_eq!(std::fs::read(layout.join("oci-layout")).unwrap(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    }
}

#[test]
fn exporting_twice_gives_the_same_digests() {
    let f = fixture();
    for c in ["gzip", "zstd"] {
        let a = export_ok(&f, &format!("{}:a", f.dir.join("one").display()), &["--compress", c]);
        let b = export_ok(&f, &format!("{}:b", f.dir.join("two").display()), &["--compress", c, "--threads", "1"]);
        assert_eq!(a, b, "{c}");
        assert!(a.starts_with("sha256:"));
        // the same blobs, byte for byte, whatever the thread count
        let list = |l: &str| {
            let mut v: Vec<_> = std::fs::read_dir(f.dir.join(l).join("blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(list("one"), list("two"));
        std::fs::remove_dir_all(f.dir.join("one")).unwrap();
        std::fs::remove_dir_all(f.dir.join("two")).unwrap();
    }
}

#[test]
fn a_layer_of_several_gzip_members_and_zstd_frames_reads_back() {
    // more than one chunk of each: the parallel compressors' seams
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write(&tree.join("big"), &noise(9 << 20, 11));
    write(&tree.join("text"), &b"all work and no play\n".repeat(400_000));
    let f = Fixture { dir: t.path().to_path_buf(), manifest: t.path().join("m"), store: t.path().join("s"), _t: t };
    let o = run(&[os("scan"), tree.as_os_str(), os("--store"), f.store.as_os_str(), os("-o"), f.manifest.as_os_str()]);
    assert!(o.status.success());
    for c in ["gzip", "zstd"] {
        let image = format!("{}:{c}", f.dir.join("l").display());
        export_ok(&f, &image, &["--compress", c]);
        assert!(import_bytes(&image, &f.dir) == std::fs::read(&f.manifest).unwrap(), "{c}");
    }
}

#[test]
fn tags_and_blobs_already_there_are_kept_and_a_taken_tag_is_refused() {
    let f = fixture();
    let layout = f.dir.join("layout");
    let first = export_ok(&f, &format!("{}:one", layout.display()), &[]);
    let second = export_ok(&f, &format!("{}:two", layout.display()), &["--config.cmd", "/bin/sh"]);
    assert_ne!(first, second);
    let index_before = std::fs::read(layout.join("index.json")).unwrap();
    let o = export(&f, &f.manifest, &format!("{}:one", layout.display()), &["--config.cmd", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tag \"one\" exists (use --force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index_before);
    let third = export_ok(&f, &format!("{}:one", layout.display()), &["--force", "--config.cmd", "x"]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let tags: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap().to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(tags, vec![("two".to_string(), second.clone()), ("one".to_string(), third)]);
    // the replaced image's blobs stay
    assert!(layout.join("blobs/sha256").join(first.trim_start_matches("sha256:")).is_file());
}

#[test]
fn config_settings_and_from_an_image() {
    let f = fixture();
    let layout = f.dir.join("layout");
    export_ok(
        &f,
        &format!("{}:base", layout.display()),
        &[
            "--config.entrypoint",
            "/bin/sh",
            "--config.entrypoint",
            "-c",
            "--config.cmd",
            "echo hi",
            "--config.env",
            "A=1",
            "--config.env",
            "PATH=/bin",
            "--config.workingdir",
            "/tmp",
            "--config.user",
            "1000:1000",
            "--config.label",
            "k=v",
        ],
    );
    let image = format!("{}:derived", layout.display());
    export_ok(&f, &image, &["--from", &format!("{}:base", layout.display()), "--config.env", "A=2"]);
    let (_, img) = ocix::oci::open_image(&layout, Some("derived"), None).unwrap();
    let c = &img.config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo hi"]));
    assert_eq!(c["Env"], serde_json::json!(["PATH=/bin", "A=2"]));
    assert_eq!(c["WorkingDir"], "/tmp");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["k"], "v");
    assert_eq!(img.config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].desc.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    // a --from that is not there fails before anything is written
    let o = export(&f, &f.manifest, &format!("{}:x", f.dir.join("new").display()), &["--from", "/nonexistent:t"]);
    assert!(!o.status.success());
    assert!(!f.dir.join("new").exists());
}

#[test]
fn a_directory_that_is_not_a_layout_is_refused() {
    let f = fixture();
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make, &str)> = vec![
        ("other", Box::new(|d: &Path| write(&d.join("README"), b"mine")), "not an OCI image layout"),
        (
            "version",
            Box::new(|d: &Path| write(&d.join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#)),
            "is not 1.x",
        ),
        (
            "index",
            Box::new(|d: &Path| {
                write(&d.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);
                write(&d.join("index.json"), b"[1, 2");
            }),
            "index.json: invalid JSON",
        ),
        (
            "fifo",
            Box::new(|d: &Path| {
                write(&d.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    d.join("index.json"),
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .unwrap();
            }),
            "not a regular file",
        ),
    ];
    for (name, make, want) in cases {
        let d = f.dir.join(name);
        std::fs::create_dir(&d).unwrap();
        make(&d);
        let o = export(&f, &f.manifest, &format!("{}:t", d.display()), &[]);
        assert!(!o.status.success(), "{name}");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
        assert!(!d.join("blobs").exists(), "{name}: blobs written into a layout that is not one");
    }
    // a file where the layout should be
    let file = f.dir.join("file");
    write(&file, b"x");
    let o = export(&f, &f.manifest, &format!("{}:t", file.display()), &[]);
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    // bad tags
    for tag in ["-x", "a b", ".."] {
        let o = export(&f, &f.manifest, &format!("{}:{tag}", f.dir.join("l").display()), &[]);
        assert!(!o.status.success() && stderr(&o).contains("is not valid"), "{tag}: {}", stderr(&o));
    }
    let o = export(&f, &f.manifest, &f.dir.join("l").display().to_string(), &[]);
    assert!(stderr(&o).contains("expected LAYOUT:TAG"), "{}", stderr(&o));
}

fn entry(kind: Kind) -> Entry {
    Entry::new(kind)
}

fn manifest_of(children: Vec<(&[u8], Entry)>) -> Manifest {
    let mut m = Manifest::default();
    let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
    for (n, e) in children {
        c.insert(n.to_vec(), e);
    }
    m
}

#[test]
fn a_missing_or_corrupt_blob_fails_and_tags_nothing() {
    let f = fixture();
    let layout = f.dir.join("layout");
    export_ok(&f, &format!("{}:ok", layout.display()), &[]);
    let index_before = std::fs::read(layout.join("index.json")).unwrap();
    let missing = Digest::of(b"never stored");
    let m =
        manifest_of(vec![(b"gone", entry(Kind::File(File { size: 12, digest: Some(missing), zeros: Vec::new() })))]);
    let mp = f.dir.join("missing.ocix");
    std::fs::write(&mp, m.to_bytes().unwrap()).unwrap();
    let o = export(&f, &mp, &format!("{}:bad", layout.display()), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/gone") && stderr(&o).contains(&missing.hex()), "{}", stderr(&o));
    assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index_before);

    // a blob whose content is not its name
    let liar = Digest::of(b"the truth");
    write(&f.store.join("blobs/sha256").join(liar.hex()), b"the lies!");
    let m = manifest_of(vec![(b"liar", entry(Kind::File(File { size: 9, digest: Some(liar), zeros: Vec::new() })))]);
    std::fs::write(&mp, m.to_bytes().unwrap()).unwrap();
    let o = export(&f, &mp, &format!("{}:bad", layout.display()), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/liar") && stderr(&o).contains("expected"), "{}", stderr(&o));
    // a blob shorter than the file
    let short = Digest::of(b"0123456789");
    write(&f.store.join("blobs/sha256").join(short.hex()), b"0123");
    let m = manifest_of(vec![(b"short", entry(Kind::File(File { size: 10, digest: Some(short), zeros: Vec::new() })))]);
    std::fs::write(&mp, m.to_bytes().unwrap()).unwrap();
    let o = export(&f, &mp, &format!("{}:bad", layout.display()), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/short") && stderr(&o).contains("short"), "{}", stderr(&o));
    assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index_before);
}

#[test]
fn entries_tar_cannot_hold_are_refused() {
    let f = fixture();
    let mut sock = entry(Kind::Socket);
    sock.meta.mode = 0o755;
    let mut eq = entry(Kind::Fifo);
    eq.meta.xattrs.insert(b"user.a=b".to_vec(), b"v".to_vec());
    for (name, e, want) in [(&b"sock"[..], sock, "socket"), (b"eq", eq, "'='")] {
        let m = manifest_of(vec![(name, e)]);
        let mp = f.dir.join("m2.ocix");
        std::fs::write(&mp, m.to_bytes().unwrap()).unwrap();
        let layout = f.dir.join("layout");
        let o = export(&f, &mp, &format!("{}:t", layout.display()), &[]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(want) && e.contains(&format!("/{}", String::from_utf8_lossy(name))), "{e}");
        assert!(
            !layout.join("index.json").exists()
                || !std::fs::read_to_string(layout.join("index.json")).unwrap().contains("\"t\"")
        );
    }
}

/// A manifest built in code (no file system times in it), exported
/// uncompressed: the tar's digest is pinned, so any change of the canonical
/// form shows here; GNU tar and bsdtar read it without a complaint.
#[test]
fn the_tar_of_a_fixed_manifest_is_pinned() {
    use ocix::manifest::{Dev, Time};
    let t = tempfile::tempdir().unwrap();
    let store = ocix::store::Store::create(&t.path().join("s")).unwrap();
    let d = store.put_bytes(b"hello\n").unwrap();
    let mut m = manifest_of(vec![]);
    m.root.meta.mtime = Time { sec: 1_700_000_000, nsec: 0 };
    let mut f = entry(Kind::File(File { size: 6, digest: Some(d), zeros: Vec::new() }));
    f.meta.xattrs.insert(b"user.x".to_vec(), b"1".to_vec());
    f.meta.mtime = Time { sec: 1_600_000_000, nsec: 250_000_000 };
    f.meta.uid = 3_000_000;
    let mut dir = Entry::empty_dir();
    let Kind::Dir(c) = &mut dir.kind else { unreachable!() };
    c.insert(b"f".to_vec(), f);
    c.insert(b"l".to_vec(), entry(Kind::Symlink(b"f".to_vec())));
    c.insert(vec![b'n'; 120], entry(Kind::File(File::default())));
    let Kind::Dir(root) = &mut m.root.kind else { unreachable!() };
    root.insert(b"a".to_vec(), dir);
    root.insert(b"c".to_vec(), entry(Kind::Char(Dev { major: 1, minor: 3 })));
    root.insert(b"h".to_vec(), entry(Kind::Hardlink(b"a/f".to_vec())));
    root.insert(b"p".to_vec(), entry(Kind::Fifo));
    let opts = ocix::export::ExportOptions { compression: ocix::oci::Compression::None, ..Default::default() };
    let layout = t.path().join("l");
    let e = ocix::export::export(&m, &store, &layout, "t", &opts).unwrap();
    assert_eq!(e.layer.digest, e.diff_id);
    let blob = layout.join("blobs/sha256").join(e.diff_id.hex());
    for tool in ["tar", "bsdtar"] {
        let o = std::process::Command::new(tool).arg("-tvf").arg(&blob).output().unwrap();
        assert!(o.status.success() && o.stderr.is_empty(), "{tool}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 8, "{tool}");
    }
    assert_eq!(e.diff_id.to_string(), "sha256:53d6edc3a7ed431b9144e374789f04495a51d29cfc3f00deea45b8021c9e56ff");
}
