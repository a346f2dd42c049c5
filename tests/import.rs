//! `ocix import`: OCI image layouts built in the test (tar bytes written by
//! hand or with the `tar` crate), normal and hostile, through the library and
//! the command line.

mod common;

use common::{gzip, lgetxattr};
use ocix::manifest::{Dev, Digest, Kind, Manifest, Time};
use ocix::oci::apply_tar;
use ocix::oci::tree::Tree;
use ocix::oci::{ImportError, ImportOptions, Platform, import_image};
use ocix::store::Store;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::Path;

// ---------------------------------------------------------------- tar bytes

/// A tar archive written by hand, any bytes allowed.
#[derive(Default, Clone)]
struct Tar(Vec<u8>);

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
}

/// Header fields for [`Tar::raw`].
#[derive(Clone)]
struct H<'a> {
    name: &'a [u8],
    flag: u8,
    size: u64,
    link: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    dev: (u64, u64),
}

fn h(name: &[u8], flag: u8) -> H<'_> {
    H { name, flag, size: 0, link: b"", mode: 0o644, uid: 0, gid: 0, mtime: 1_000_000, dev: (0, 0) }
}

impl Tar {
    fn header(&mut self, f: &H) {
        let mut b = [0u8; 512];
        assert!(f.name.len() <= 100 && f.link.len() <= 100, "use pax for long names");
        b[..f.name.len()].copy_from_slice(f.name);
        octal(&mut b[100..108], f.mode as u64);
        octal(&mut b[108..116], f.uid);
        octal(&mut b[116..124], f.gid);
        octal(&mut b[124..136], f.size);
        octal(&mut b[136..148], f.mtime);
        b[156] = f.flag;
        b[157..157 + f.link.len()].copy_from_slice(f.link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[265..269].copy_from_slice(b"user");
        b[297..302].copy_from_slice(b"group");
        octal(&mut b[329..337], f.dev.0);
        octal(&mut b[337..345], f.dev.1);
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| x as u64).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&b);
    }

    fn data(&mut self, d: &[u8]) {
        self.0.extend_from_slice(d);
        let pad = (512 - d.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
    }

    /// An entry whose header claims `f.size` and whose data is `d`.
    fn raw(mut self, f: H, d: &[u8]) -> Self {
        self.header(&f);
        self.data(d);
        self
    }

    fn file(self, name: &str, d: &[u8]) -> Self {
        self.raw(H { size: d.len() as u64, ..h(name.as_bytes(), b'0') }, d)
    }

    fn dir(self, name: &str) -> Self {
        self.raw(H { mode: 0o755, ..h(name.as_bytes(), b'5') }, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(H { link: target.as_bytes(), ..h(name.as_bytes(), b'2') }, b"")
    }

    fn link(self, name: &str, target: &str) -> Self {
        self.raw(H { link: target.as_bytes(), ..h(name.as_bytes(), b'1') }, b"")
    }

    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = 1 + k.len() + 1 + v.len() + 1; // ' ' k '=' v '\n'
            let mut n = rest + 1;
            while n.to_string().len() + rest != n {
                n += 1;
            }
            body.extend_from_slice(format!("{n} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.raw(H { size: body.len() as u64, ..h(b"PaxHeaders/x", b'x') }, &body)
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

// ---------------------------------------------------------------- layouts

const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(d)))
}

fn zstd(d: &[u8]) -> Vec<u8> {
    zstd::encode_all(d, 3).unwrap()
}

/// An image layout being built in a temporary directory.
struct Layout {
    dir: tempfile::TempDir,
}

/// One layer: blob bytes, media type, and the diff_id the config claims.
struct L {
    blob: Vec<u8>,
    media_type: String,
    diff_id: String,
}

impl L {
    fn tar(t: Vec<u8>) -> L {
        L { diff_id: sha(&t), blob: t, media_type: OCI_LAYER.into() }
    }
    fn gz(t: Vec<u8>) -> L {
        L { diff_id: sha(&t), blob: gzip(&t), media_type: OCI_GZIP.into() }
    }
    fn zst(t: Vec<u8>) -> L {
        L { diff_id: sha(&t), blob: zstd(&t), media_type: OCI_ZSTD.into() }
    }
}

impl Layout {
    fn new() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        self.path().join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Stores a blob; returns its descriptor JSON pieces (digest, size).
    fn put(&self, d: &[u8]) -> (String, usize) {
        let dg = sha(d);
        std::fs::write(self.blob_path(&dg), d).unwrap();
        (dg, d.len())
    }

    fn desc(&self, mt: &str, d: &[u8]) -> serde_json::Value {
        let (dg, n) = self.put(d);
        serde_json::json!({"mediaType": mt, "digest": dg, "size": n})
    }

    /// Writes config + manifest for these layers; returns the manifest's
    /// descriptor (not yet in index.json).
    fn image(&self, layers: Vec<L>, platform: Option<(&str, &str)>) -> serde_json::Value {
        let (os, arch) = platform.unwrap_or(("linux", "amd64"));
        let config = serde_json::json!({
            "architecture": arch, "os": os,
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = self.desc("application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
        let layers: Vec<_> = layers.iter().map(|l| self.desc(&l.media_type, &l.blob)).collect();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers});
        let mut d = self.desc(OCI_MANIFEST, &serde_json::to_vec(&m).unwrap());
        if let Some((os, arch)) = platform {
            d["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        d
    }

    /// index.json listing these descriptors, each tagged as given.
    fn index(&self, entries: Vec<(serde_json::Value, Option<&str>)>) {
        let ms: Vec<_> = entries
            .into_iter()
            .map(|(mut d, tag)| {
                if let Some(t) = tag {
                    d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": t});
                }
                d
            })
            .collect();
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": ms});
        std::fs::write(self.path().join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    }

    /// A layout with one image tagged "t".
    fn with(layers: Vec<L>) -> Layout {
        let l = Layout::new();
        let d = l.image(layers, None);
        l.index(vec![(d, Some("t"))]);
        l
    }
}

fn opts(tag: &str) -> ImportOptions {
    ImportOptions { tag: Some(tag.into()), ..ImportOptions::default() }
}

fn import(l: &Layout) -> Result<Manifest, ImportError> {
    import_image(l.path(), None, &opts("t")).map(|i| i.manifest.to_tree())
}

fn import_layers(layers: Vec<L>) -> Result<Manifest, ImportError> {
    import(&Layout::with(layers))
}

fn ok(layers: Vec<L>) -> Manifest {
    import_layers(layers).unwrap_or_else(|e| panic!("import failed: {e}"))
}

fn err(layers: Vec<L>) -> String {
    match import_layers(layers) {
        Ok(m) => panic!("accepted a bad image: {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn content(m: &Manifest, path: &str) -> ocix::manifest::File {
    match &m.get(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing")).kind {
        Kind::File(f) => f.clone(),
        k => panic!("{path} is {k:?}"),
    }
}

fn exists(m: &Manifest, path: &str) -> bool {
    m.get(path.as_bytes()).is_some()
}

// ---------------------------------------------------------------- normal images

#[test]
fn gzip_zstd_and_plain_layers_apply_in_order() {
    let l1 = Tar::default().dir("etc").file("etc/a", b"one").file("etc/b", b"bee").end();
    let l2 = Tar::default().file("etc/a", b"two").end();
    let l3 = Tar::default().file("etc/.wh.b", b"").file("etc/c", b"sea").end();
    let m = ok(vec![L::gz(l1), L::zst(l2), L::tar(l3)]);
    assert_eq!(content(&m, "etc/a").digest, Some(Digest::of(b"two")));
    assert!(!exists(&m, "etc/b"));
    assert_eq!(content(&m, "etc/c").size, 3);
    // the manifest is valid and canonical
    Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap();
}

#[test]
fn metadata_pax_xattrs_mtime_and_ids() {
    let bin = [0u8, 0xff, b'=', b'\n', 0];
    let t = Tar::default()
        .pax(&[
            ("mtime", b"1700000000.123456789"),
            ("uid", b"5000000000"), // too big for the uid field's range
        ])
        .file("bad-uid", b"x")
        .end();
    let e = layer_err(t);
    assert!(e.contains("uid") && e.contains("entry /bad-uid"), "{e}");
    let t = Tar::default()
        .pax(&[
            ("mtime", b"1700000000.123456789"),
            ("uid", b"100000"),
            ("gid", b"70000"),
            ("uname", b"somebody"),
            ("SCHILY.xattr.user.bin", &bin),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
            ("SCHILY.xattr.security.selinux", b"system_u:object_r:etc_t:s0"),
        ])
        .raw(H { mode: 0o4755, size: 2, ..h(b"f", b'0') }, b"hi")
        .raw(H { mtime: 0o77777777777, ..h(b"dev", b'3') }, b"")
        .raw(H { dev: (7, 3), ..h(b"blk", b'4') }, b"")
        .raw(h(b"fifo", b'6'), b"")
        .end();
    let m = ok(vec![L::tar(t)]);
    let e = m.get(b"f").unwrap();
    assert_eq!(e.meta.mtime, Time { sec: 1_700_000_000, nsec: 123_456_789 });
    assert_eq!((e.meta.uid, e.meta.gid, e.meta.mode), (100_000, 70_000, 0o4755));
    assert_eq!(e.meta.uname, None, "names are not recorded (scan records none)");
    assert_eq!(e.meta.xattrs.get(&b"user.bin"[..]).map(Vec::as_slice), Some(&bin[..]));
    assert!(e.meta.xattrs.contains_key(&b"security.capability"[..]));
    assert!(!e.meta.xattrs.contains_key(&b"security.selinux"[..]), "selinux labels are dropped, as umoci does");
    assert_eq!(m.get(b"dev").unwrap().meta.mtime.sec, 0o77777777777);
    assert_eq!(m.get(b"blk").unwrap().kind, Kind::Block(Dev { major: 7, minor: 3 }));
    assert_eq!(m.get(b"fifo").unwrap().kind, Kind::Fifo);
}

#[test]
fn long_names_pax_and_gnu() {
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(200));
    // PAX path and linkpath
    let t = Tar::default()
        .pax(&[("path", long.as_bytes())])
        .file("short-name-ignored", b"pax")
        .pax(&[("linkpath", long.as_bytes())])
        .symlink("sym", "ignored")
        .end();
    let m = ok(vec![L::tar(t)]);
    assert_eq!(content(&m, &long).digest, Some(Digest::of(b"pax")));
    assert_eq!(m.get(b"sym").unwrap().kind, Kind::Symlink(long.clone().into_bytes()));
    assert!(!exists(&m, "short-name-ignored"));
    // GNU long names, written by the tar crate
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_size(3);
    hd.set_mode(0o600);
    hd.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut hd, &long, &b"gnu"[..]).unwrap();
    let mut hl = tar::Header::new_gnu();
    hl.set_entry_type(tar::EntryType::Link);
    hl.set_size(0);
    b.append_link(&mut hl, "hard", &long).unwrap();
    let t = b.into_inner().unwrap();
    let m = ok(vec![L::tar(t)]);
    assert_eq!(content(&m, &long).digest, Some(Digest::of(b"gnu")));
    assert_eq!(m.get(long.as_bytes()).unwrap().meta.mode, 0o600);
    // "ddd..." sorts before "hard": the long name carries the content, "hard" links to it
    assert_eq!(m.get(b"hard").unwrap().kind, Kind::Hardlink(long.into_bytes()));
}

#[test]
fn pax_size_wins_over_header_size() {
    // The header says 0 bytes, PAX says 600: the 600 bytes are content, and
    // the entry after them is read from the right place.
    let body = vec![b'p'; 600];
    let mut t = Tar::default().pax(&[("size", b"600")]);
    t.header(&H { size: 0, ..h(b"smuggled", b'0') });
    t.data(&body);
    let t = t.file("after", b"ok").end();
    let m = ok(vec![L::tar(t)]);
    assert_eq!(content(&m, "smuggled").size, 600);
    assert_eq!(content(&m, "after").digest, Some(Digest::of(b"ok")));
    // and the reverse: the header claims 600, PAX says 0
    let mut t = Tar::default().pax(&[("size", b"0")]);
    t.header(&H { size: 600, ..h(b"empty", b'0') });
    let t = t.file("after", b"ok").end();
    let m = ok(vec![L::tar(t)]);
    assert_eq!(content(&m, "empty").size, 0);
    assert!(exists(&m, "after"));
}

#[test]
fn header_only_types_carry_no_data() {
    // A symlink whose size field is non-zero: nothing follows it (as Go's
    // reader treats it), so the next header is right after.
    let mut t = Tar::default();
    t.header(&H { size: 512, link: b"target", ..h(b"sym", b'2') });
    let t = t.file("next", b"n").end();
    let m = ok(vec![L::tar(t)]);
    assert!(exists(&m, "next"));
}

#[test]
fn hardlinks_within_and_across_layers() {
    // within a layer: the link comes before its target in manifest order
    let l1 = Tar::default().file("z/data", b"shared").link("a/link", "z/data").link("b", "/z/data").end();
    // next layer: a link to a lower-layer file
    let l2 = Tar::default().link("c", "z/data").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert_eq!(
        content(&m, "a/link").digest,
        Some(Digest::of(b"shared")),
        "first name in manifest order carries content"
    );
    assert_eq!(m.get(b"b").unwrap().kind, Kind::Hardlink(b"a/link".to_vec()));
    assert_eq!(m.get(b"c").unwrap().kind, Kind::Hardlink(b"a/link".to_vec()));
    assert_eq!(m.get(b"z/data").unwrap().kind, Kind::Hardlink(b"a/link".to_vec()));
    // a later layer deletes the primary: the next name takes over
    let l2 = Tar::default().dir("a").file("a/.wh.link", b"").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert!(!exists(&m, "a/link"));
    assert_eq!(content(&m, "b").digest, Some(Digest::of(b"shared")));
    assert_eq!(m.get(b"z/data").unwrap().kind, Kind::Hardlink(b"b".to_vec()));
    // a later layer replaces the primary with a new file: it leaves the group
    let l2 = Tar::default().file("a/link", b"new").end();
    let m = ok(vec![L::tar(l1), L::tar(l2)]);
    assert_eq!(content(&m, "a/link").digest, Some(Digest::of(b"new")));
    assert_eq!(content(&m, "b").digest, Some(Digest::of(b"shared")));
    assert_eq!(m.get(b"z/data").unwrap().kind, Kind::Hardlink(b"b".to_vec()));
}

#[test]
fn whiteouts_and_opaque_hide_lower_layers_only() {
    let l1 = Tar::default().dir("d").file("d/old", b"1").dir("d/sub").file("d/sub/x", b"2").file("keep", b"k").end();
    // opaque marker after this layer's own entries in the same directory
    let l2 = Tar::default().dir("d").file("d/new", b"3").file("d/sub/y", b"4").file("d/.wh..wh..opq", b"").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert!(exists(&m, "d/new"));
    assert!(!exists(&m, "d/old"));
    assert!(exists(&m, "d/sub/y"), "created by this layer");
    assert!(!exists(&m, "d/sub/x"), "lower content of a kept directory is hidden");
    assert!(exists(&m, "keep"));
    // a whiteout after the same layer re-created the path does not remove it
    let l2 = Tar::default().file("keep", b"again").file(".wh.keep", b"").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert_eq!(content(&m, "keep").digest, Some(Digest::of(b"again")));
    // whiteout of a missing path, and under a file: nothing happens
    let l2 = Tar::default().file(".wh.nothing", b"").file("keep/.wh.x", b"").end();
    ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    // whiteout of a whole directory
    let l2 = Tar::default().file(".wh.d", b"").end();
    let m = ok(vec![L::tar(l1), L::tar(l2)]);
    assert!(!exists(&m, "d"));
}

#[test]
fn type_changes_across_layers() {
    let l1 = Tar::default().dir("p").file("p/child", b"c").end();
    let l2 = Tar::default().file("p", b"now a file").end();
    let l3 = Tar::default().dir("p").end();
    let l4 = Tar::default().symlink("p", "/etc").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2.clone())]);
    assert_eq!(content(&m, "p").size, 10);
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2.clone()), L::tar(l3.clone())]);
    assert_eq!(m.get(b"p").unwrap().children().unwrap().len(), 0, "file -> dir: no children come back");
    let m = ok(vec![L::tar(l1), L::tar(l2), L::tar(l3), L::tar(l4)]);
    assert_eq!(m.get(b"p").unwrap().kind, Kind::Symlink(b"/etc".to_vec()));
    // a dir over a dir keeps the children and takes the new metadata
    let l1 = Tar::default().dir("q").file("q/child", b"c").end();
    let l2 = Tar::default().raw(H { mode: 0o700, uid: 9, ..h(b"q", b'5') }, b"").end();
    let m = ok(vec![L::tar(l1), L::tar(l2)]);
    assert!(exists(&m, "q/child"));
    assert_eq!((m.get(b"q").unwrap().meta.mode, m.get(b"q").unwrap().meta.uid), (0o700, 9));
}

#[test]
fn duplicate_entries_later_wins() {
    let t = Tar::default().file("f", b"first").file("f", b"second").symlink("s", "a").symlink("s", "b").end();
    let m = ok(vec![L::tar(t)]);
    assert_eq!(content(&m, "f").digest, Some(Digest::of(b"second")));
    assert_eq!(m.get(b"s").unwrap().kind, Kind::Symlink(b"b".to_vec()));
}

#[test]
fn implicit_parents_get_default_metadata() {
    let t = Tar::default().file("a/b/c", b"x").end();
    let m = ok(vec![L::tar(t)]);
    let a = m.get(b"a").unwrap();
    assert_eq!((a.meta.mode, a.meta.uid, a.meta.mtime), (0o755, 0, Time::default()));
}

#[test]
fn absolute_names_are_relative_to_the_root() {
    let t = Tar::default().file("/etc/abs", b"x").file("./rel/./x", b"y").end();
    let m = ok(vec![L::tar(t)]);
    assert!(exists(&m, "etc/abs"));
    assert!(exists(&m, "rel/x"));
}

#[test]
fn parent_symlinks_resolve_inside_the_root() {
    let l1 = Tar::default()
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .symlink("escape", "../../../../../tmp")
        .symlink("abs", "/usr")
        .end();
    let l2 = Tar::default().file("lib/libx.so", b"x").file("escape/owned", b"y").file("abs/lib/z", b"z").end();
    let m = ok(vec![L::tar(l1), L::tar(l2)]);
    assert!(exists(&m, "usr/lib/libx.so"));
    assert!(exists(&m, "tmp/owned"), "a .. in a symlink stops at the root");
    assert!(exists(&m, "usr/lib/z"));
    assert_eq!(m.get(b"lib").unwrap().kind, Kind::Symlink(b"usr/lib".to_vec()));
}

#[test]
fn symlink_loop_in_a_parent_is_an_error() {
    let t = Tar::default().symlink("a", "b").symlink("b", "a").file("a/x", b"").end();
    assert!(err(vec![L::tar(t)]).contains("symlinks"));
}

// ---------------------------------------------------------------- hostile entries

fn layer_err(t: Vec<u8>) -> String {
    let dg = sha(&t);
    let e = err(vec![L::tar(t)]);
    assert!(e.contains(&dg), "error does not name the layer {dg}: {e}");
    e
}

#[test]
fn dotdot_names_are_rejected_with_layer_and_entry() {
    let e = layer_err(Tar::default().file("../../etc/passwd", b"x").end());
    assert!(e.contains("/../../etc/passwd") && e.contains(".."), "{e}");
    let e = layer_err(Tar::default().file("a/../../b", b"x").end());
    assert!(e.contains("a/../../b"), "{e}");
    // whiteouts with ..
    let e = layer_err(Tar::default().file("../.wh.etc", b"").end());
    assert!(e.contains(".."), "{e}");
    let e = layer_err(Tar::default().file("a/.wh...", b"").end());
    assert!(e.contains("whiteout of . or .."), "{e}");
    // hardlink target with ..
    let e = layer_err(Tar::default().file("f", b"").link("l", "../f").end());
    assert!(e.contains("/l") && e.contains(".."), "{e}");
}

#[test]
fn bad_whiteouts_are_rejected() {
    let e = layer_err(Tar::default().file("dir/.wh.", b"").end());
    assert!(e.contains("empty name") && e.contains("dir/.wh."), "{e}");
}

#[test]
fn root_cannot_change_type() {
    for t in [
        Tar::default().symlink(".", "/etc").end(),
        Tar::default().symlink("./", "/").end(),
        Tar::default().file("/", b"x").end(),
    ] {
        let e = layer_err(t);
        assert!(e.contains("root"), "{e}");
    }
    // a directory entry for the root sets its metadata
    let m = ok(vec![L::tar(Tar::default().raw(H { mode: 0o700, ..h(b"./", b'5') }, b"").end())]);
    assert_eq!(m.root.meta.mode, 0o700);
}

#[test]
fn hardlink_to_missing_or_directory_is_rejected() {
    let e = layer_err(Tar::default().link("l", "nowhere").end());
    assert!(e.contains("missing") && e.contains("/l"), "{e}");
    let e = layer_err(Tar::default().dir("d").link("l", "d").end());
    assert!(e.contains("directory"), "{e}");
    // the link's own path is removed first: a self-link has no target
    let e = layer_err(Tar::default().file("f", b"").link("f", "f").end());
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn entry_under_a_non_directory_is_rejected() {
    let e = layer_err(Tar::default().file("a", b"").file("a/b", b"").end());
    assert!(e.contains("/a/b") && e.contains("not a directory"), "{e}");
    // across layers: a dir replaced by a file, then children added
    let l1 = Tar::default().dir("p").end();
    let l2 = Tar::default().file("p", b"").file("p/c", b"").end();
    assert!(err(vec![L::tar(l1), L::tar(l2)]).contains("not a directory"));
}

#[test]
fn huge_pax_header_is_refused_before_reading_it() {
    // The header claims 1 TiB of PAX records; the stream holds none.
    let mut t = Tar::default();
    t.header(&H { size: 0o77777777777, ..h(b"PaxHeaders/x", b'x') });
    let e = layer_err(t.end());
    assert!(e.contains("PAX header") && e.contains("limit"), "{e}");
    // a real 2 MiB one
    let big = vec![b'a'; 2 << 20];
    let e = layer_err(Tar::default().pax(&[("comment", &big)]).file("f", b"").end());
    assert!(e.contains("limit"), "{e}");
    // a huge GNU long name claim
    let mut t = Tar::default();
    t.header(&H { size: 0o77777777777, ..h(b"././@LongLink", b'L') });
    assert!(layer_err(t.end()).contains("long name"));
}

#[test]
fn malformed_headers_are_rejected() {
    // bad checksum
    let mut t = Tar::default().file("f", b"x").end();
    t[0] = b'g';
    assert!(layer_err(t).contains("checksum"));
    // unknown type
    assert!(layer_err(Tar::default().raw(h(b"v", b'V'), b"").end()).contains("unsupported entry type 'V'"));
    // PAX record with a length past its end
    let mut t = Tar::default();
    let body = b"99 path=x\n";
    t.header(&H { size: body.len() as u64, ..h(b"x", b'x') });
    t.data(body);
    assert!(layer_err(t.file("f", b"").end()).contains("PAX record"));
    // bad PAX mtime
    assert!(layer_err(Tar::default().pax(&[("mtime", b"12x")]).file("f", b"").end()).contains("mtime"));
    // empty symlink target
    assert!(layer_err(Tar::default().symlink("s", "").end()).contains("symlink target"));
}

#[test]
fn truncated_layers_fail() {
    let full = Tar::default().file("f", &[7u8; 3000]).end();
    for cut in [100, 512, 1500, 512 + 3000] {
        let t = full[..cut].to_vec();
        let e = layer_err(t.clone());
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
        // compressed and truncated: the blob itself is cut
        let gz = gzip(&full);
        let l = L { blob: gz[..gz.len() / 2].to_vec(), media_type: OCI_GZIP.into(), diff_id: sha(&full) };
        assert!(!err(vec![l]).is_empty());
    }
}

/// An old-GNU sparse entry named "sparse", built by hand.
fn gnu_sparse(real: u64, chunks: &[(u64, &[u8])]) -> Tar {
    let stored: Vec<u8> = chunks.iter().flat_map(|c| c.1.to_vec()).collect();
    let mut b = [0u8; 512];
    b[..6].copy_from_slice(b"sparse");
    octal(&mut b[100..108], 0o644);
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    octal(&mut b[124..136], stored.len() as u64);
    octal(&mut b[136..148], 1);
    b[156] = b'S';
    b[257..265].copy_from_slice(b"ustar  \0");
    for (i, (off, d)) in chunks.iter().enumerate() {
        octal(&mut b[386 + i * 24..398 + i * 24], *off);
        octal(&mut b[398 + i * 24..410 + i * 24], d.len() as u64);
    }
    octal(&mut b[483..495], real);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| x as u64).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut t = Tar(b.to_vec());
    t.data(&stored);
    t
}

#[test]
fn gnu_and_pax_sparse_entries() {
    // Old GNU sparse: 3 chunks in a 3 MiB file.
    let real: u64 = 3 << 20;
    let chunks: [(u64, &[u8]); 3] = [(0, b"head"), (1 << 20, &[9u8; 5000]), (real - 3, b"end")];
    let m = ok(vec![L::tar(gnu_sparse(real, &chunks).end())]);
    let mut want = vec![0u8; real as usize];
    for (off, d) in chunks {
        want[off as usize..off as usize + d.len()].copy_from_slice(d);
    }
    let f = content(&m, "sparse");
    assert_eq!(f.size, real);
    assert_eq!(f.digest, Some(Digest::of(&want)));
    // block 0 has data; 256 (1 MiB) and 257 hold the 5000 bytes; the last block has "end"
    assert_eq!(f.zeros, vec![(1, 255), (258, 509)]);

    // PAX 1.0 sparse, the map inside the data
    let map = format!("2\n0\n4\n{}\n3\n", real - 3);
    let mut data = map.clone().into_bytes();
    data.resize(512, 0);
    data.extend_from_slice(b"headend");
    let t = Tar::default()
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"pax-sparse"),
            ("GNU.sparse.realsize", real.to_string().as_bytes()),
        ])
        .raw(H { size: data.len() as u64, ..h(b"GNUSparseFile.0/pax-sparse", b'0') }, &data)
        .end();
    let m = ok(vec![L::tar(t)]);
    let f = content(&m, "pax-sparse");
    let mut want = vec![0u8; real as usize];
    want[..4].copy_from_slice(b"head");
    want[real as usize - 3..].copy_from_slice(b"end");
    assert_eq!(f.digest, Some(Digest::of(&want)));
    assert_eq!(f.zeros, vec![(1, 766)]);
    // a map that claims more data than stored is rejected
    let t = Tar::default()
        .pax(&[("GNU.sparse.map", b"0,10"), ("GNU.sparse.size", b"100")])
        .raw(H { size: 5, ..h(b"s", b'0') }, b"12345")
        .end();
    assert!(layer_err(t).contains("sparse map"));
}

/// GNU tar's own sparse archives (both formats), compared with a scan of
/// the tree they were made from.
#[test]
fn gnu_tar_sparse_archives_match_a_scan() {
    if std::process::Command::new("tar").arg("--version").output().is_err() {
        eprintln!("SKIP: no tar on PATH");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let f = src.path().join("holey");
    {
        let fh = std::fs::File::create(&f).unwrap();
        fh.set_len(40 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        fh.write_all_at(b"data at 8 MiB", 8 << 20).unwrap();
        fh.write_all_at(&[1u8; 10000], 20 << 20).unwrap();
    }
    std::fs::write(src.path().join("plain"), b"plain").unwrap();
    for p in ["holey", "plain", "."] {
        std::process::Command::new("touch").args(["-h", "-d", "@1600000000"]).arg(src.path().join(p)).status().unwrap();
    }
    let scan = ocix::scan::scan_dir(src.path(), None, &ocix::scan::ScanOptions::default()).unwrap().manifest.to_tree();
    for format in ["gnu", "posix:0.0", "posix:0.1", "posix:1.0"] {
        let (fmt, version) = format.split_once(':').unwrap_or((format, "1.0"));
        let out = std::process::Command::new("tar")
            .args(["--sparse", "--numeric-owner", &format!("--format={fmt}")])
            .args(if fmt == "posix" { vec![format!("--sparse-version={version}")] } else { vec![] })
            .arg("-C")
            .arg(src.path())
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        assert!(out.status.success());
        let m = ok(vec![L::tar(out.stdout)]);
        let f = content(&m, "holey");
        assert_eq!(f.size, 40 << 20);
        assert!(f.zeros.len() >= 2, "{format}: {:?}", f.zeros);
        assert_eq!(m, scan, "{format}: import of the tar differs from a scan of its tree");
    }
}

// ---------------------------------------------------------------- bombs and limits

#[test]
fn gzip_bomb_stops_at_the_limit() {
    // 64 MiB of zeros in one file compresses to ~64 KiB.
    let mut t = Tar::default();
    t.header(&H { size: 64 << 20, ..h(b"bomb", b'0') });
    t.data(&vec![0u8; 64 << 20]);
    let t = t.end();
    let l = Layout::with(vec![L::gz(t.clone())]);
    let o = ImportOptions { max_bytes: 1 << 20, ..opts("t") };
    let e = import_image(l.path(), None, &o).unwrap_err().to_string();
    assert!(e.contains("limit") && e.contains("bomb"), "{e}");
    // within the limit it streams, and the blob costs no disk (holes)
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::create(store_dir.path()).unwrap();
    let imp = import_image(l.path(), Some(&store), &opts("t")).unwrap();
    let f = content(&imp.manifest.to_tree(), "bomb");
    assert_eq!(f.zeros, vec![(0, 16384)]);
    let meta = std::fs::metadata(store.blob_path(&f.digest.unwrap())).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "zero blob takes {} blocks", meta.blocks());
}

#[test]
fn zstd_bomb_and_huge_window() {
    let mut t = Tar::default();
    t.header(&H { size: 32 << 20, ..h(b"bomb", b'0') });
    t.data(&vec![b'a'; 32 << 20]);
    let t = t.end();
    let l = Layout::with(vec![L::zst(t)]);
    let o = ImportOptions { max_bytes: 4 << 20, ..opts("t") };
    assert!(import_image(l.path(), None, &o).unwrap_err().to_string().contains("limit"));
    // a frame asking for a 1 GiB window is refused
    let data = Tar::default().file("f", b"x").end();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(30)).unwrap();
    enc.write_all(&data).unwrap();
    let blob = enc.finish().unwrap();
    let e = err(vec![L { blob, media_type: OCI_ZSTD.into(), diff_id: sha(&data) }]);
    assert!(e.to_lowercase().contains("window") || e.contains("memory"), "{e}");
}

// ---------------------------------------------------------------- blobs and documents

#[test]
fn blob_digest_and_size_mismatches() {
    let t = Tar::default().file("f", b"x").end();
    // corrupt the layer blob in place
    let l = Layout::with(vec![L::gz(t.clone())]);
    let gz = gzip(&t);
    let p = l.blob_path(&sha(&gz));
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 5] ^= 1; // in the gzip trailer: decoding may or may not notice
    std::fs::write(&p, &bad).unwrap();
    let e = import(&l).unwrap_err().to_string();
    assert!(e.contains(&sha(&gz)), "{e}");
    // an uncompressed layer whose content changed but is still a valid tar
    let l2 = Layout::with(vec![L::tar(t.clone())]);
    let mut changed = t.clone();
    changed[512] = b'y';
    std::fs::write(l2.blob_path(&sha(&t)), &changed).unwrap();
    let e = import(&l2).unwrap_err().to_string();
    assert!(e.contains("blob content has digest"), "{e}");
    // size: the blob has an extra byte
    let mut longer = gz.clone();
    longer.push(0);
    std::fs::write(&p, &longer).unwrap();
    assert!(import(&l).unwrap_err().to_string().contains("size"));
    // diff_id disagrees
    let e = err(vec![L { diff_id: sha(b"other"), ..L::gz(t.clone()) }]);
    assert!(e.contains("diff_id"), "{e}");
    // also for an uncompressed layer, whose diff_id is its blob's digest
    let e = err(vec![L { diff_id: sha(b"other"), ..L::tar(t.clone()) }]);
    assert!(e.contains(&format!("uncompressed content has digest {}", sha(&t))), "{e}");
    // missing blob
    std::fs::remove_file(&p).unwrap();
    assert!(import(&l).unwrap_err().to_string().contains("missing"));
}

#[test]
fn media_type_must_match_content() {
    let t = Tar::default().file("f", b"x").end();
    // gzip media type, plain content
    let e = err(vec![L { media_type: OCI_GZIP.into(), ..L::tar(t.clone()) }]);
    assert!(e.contains("says gzip but the content is uncompressed tar"), "{e}");
    // plain media type, zstd content
    let e = err(vec![L { media_type: OCI_LAYER.into(), ..L::zst(t.clone()) }]);
    assert!(e.contains("content is zstd"), "{e}");
    // unknown layer media type
    let e = err(vec![L { media_type: "application/vnd.example.squashfs".into(), ..L::tar(t.clone()) }]);
    assert!(e.contains("unsupported layer media type"), "{e}");
    // Docker media types are read
    ok(vec![L { media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(), ..L::gz(t.clone()) }]);
    // the manifest document says it is an index
    let l = Layout::new();
    let mut d = l.image(vec![L::tar(t)], None);
    d["mediaType"] = OCI_INDEX.into();
    l.index(vec![(d, Some("t"))]);
    assert!(import(&l).is_err());
}

#[test]
fn image_references_and_platforms_parse() {
    use ocix::oci::split_ref;
    assert_eq!(split_ref("dir:tag"), ("dir", Some("tag")));
    assert_eq!(split_ref("dir"), ("dir", None));
    assert_eq!(split_ref("/a:b/layout"), ("/a:b/layout", None));
    assert_eq!(split_ref("/a:b/layout:v1.2"), ("/a:b/layout", Some("v1.2")));
    assert_eq!(split_ref("dir:"), ("dir:", None));
    let p = Platform::parse("linux/arm/v7").unwrap();
    assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm", Some("v7")));
    assert!(Platform::parse("linux").is_none());
    assert!(Platform::parse("linux/arm/v7/x").is_none());
    assert!(Platform::parse("linux//v7").is_none());
}

fn with_index(json: &[u8]) -> String {
    let l = Layout::with(vec![L::tar(Tar::default().end())]);
    std::fs::write(l.path().join("index.json"), json).unwrap();
    import(&l).unwrap_err().to_string()
}

#[test]
fn bad_index_json() {
    assert!(with_index(b"not json").contains("invalid JSON"));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(with_index(deep.as_bytes()).contains("invalid JSON"));
    let deep = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, "{\"a\":".repeat(50_000));
    assert!(with_index(deep.as_bytes()).contains("invalid JSON"));
    let e = with_index(
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../../../etc/passwd","size":1}]}"#,
    );
    assert!(e.contains("digest"), "{e}");
    let up = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"sha256:{}","size":1}}]}}"#,
        "A".repeat(64)
    );
    assert!(with_index(up.as_bytes()).contains("digest"));
    let e = with_index(br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha512:00","size":1}]}"#);
    assert!(e.contains("sha256"), "{e}");
    let neg = format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{}","size":-1}}]}}"#, sha(b""));
    assert!(with_index(neg.as_bytes()).contains("size -1"));
    let frac = format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{}","size":1.5}}]}}"#, sha(b""));
    assert!(with_index(frac.as_bytes()).contains("size"));
    assert!(with_index(br#"{"schemaVersion":1,"manifests":[]}"#).contains("schemaVersion"));
}

#[test]
fn wrong_size_in_a_document_descriptor() {
    let l = Layout::new();
    let mut d = l.image(vec![L::tar(Tar::default().end())], None);
    d["size"] = (d["size"].as_u64().unwrap() + 1).into();
    l.index(vec![(d, Some("t"))]);
    let e = import(&l).unwrap_err().to_string();
    assert!(e.contains("bytes, expected"), "{e}");
}

#[test]
fn tags_platforms_and_nested_indexes() {
    let l = Layout::new();
    let amd = l.image(vec![L::tar(Tar::default().file("amd", b"").end())], Some(("linux", "amd64")));
    let arm = l.image(vec![L::tar(Tar::default().file("arm", b"").end())], Some(("linux", "arm64")));
    let other = l.image(vec![L::tar(Tar::default().file("other", b"").end())], None);
    // a nested index: index -> index -> manifests
    let inner = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm]});
    let inner = l.desc(OCI_INDEX, &serde_json::to_vec(&inner).unwrap());
    let outer = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [inner]});
    let outer = l.desc(OCI_INDEX, &serde_json::to_vec(&outer).unwrap());
    l.index(vec![(outer, Some("multi")), (other, Some("other"))]);
    let pick = |tag: &str, p: Option<&str>| {
        let o = ImportOptions {
            tag: Some(tag.into()),
            platform: p.map(|p| Platform::parse(p).unwrap()),
            ..Default::default()
        };
        import_image(l.path(), None, &o).map(|i| i.manifest.to_tree())
    };
    assert!(exists(&pick("multi", Some("linux/arm64")).unwrap(), "arm"));
    assert!(exists(&pick("multi", Some("linux/amd64")).unwrap(), "amd"));
    let host = Platform::host();
    if host.architecture == "amd64" || host.architecture == "arm64" {
        assert!(exists(&pick("multi", None).unwrap(), if host.architecture == "amd64" { "amd" } else { "arm" }));
    }
    assert!(pick("multi", Some("linux/s390x")).unwrap_err().to_string().contains("no image for platform linux/s390x"));
    assert!(exists(&pick("other", None).unwrap(), "other"));
    assert!(pick("nope", None).unwrap_err().to_string().contains("no image tagged"));
    // no tag, several images: the platform decides among those that declare one
    let any = |p: &str| ImportOptions { platform: Platform::parse(p), ..Default::default() };
    assert!(exists(&import_image(l.path(), None, &any("linux/arm64")).unwrap().manifest.to_tree(), "arm"));
    assert!(import_image(l.path(), None, &any("windows/amd64")).is_err());
    // the config's platform is checked when one is asked for
    assert!(pick("other", Some("linux/arm64")).unwrap_err().to_string().contains("config is for linux/amd64"));
}

#[test]
fn nested_indexes_deeper_than_the_limit() {
    let l = Layout::new();
    let mut d = l.image(vec![L::tar(Tar::default().end())], None);
    for _ in 0..12 {
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": [d]});
        d = l.desc(OCI_INDEX, &serde_json::to_vec(&idx).unwrap());
    }
    l.index(vec![(d, Some("t"))]);
    assert!(import(&l).unwrap_err().to_string().contains("nested deeper"));
}

#[test]
fn store_gets_each_content_once_and_cli_writes_the_manifest() {
    let t = Tar::default().file("a", b"same").file("b", b"same").file("c", b"other").file("empty", b"").end();
    let l = Layout::with(vec![L::gz(t)]);
    let s = tempfile::tempdir().unwrap();
    let out = s.path().join("m.cbor");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .arg("import")
        .arg(format!("{}:t", l.path().display()))
        .arg("-o")
        .arg(&out)
        .arg("--store")
        .arg(s.path().join("store"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = Manifest::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    let blobs: Vec<_> =
        std::fs::read_dir(s.path().join("store/blobs/sha256")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    let store = Store::open(&s.path().join("store")).unwrap();
    assert_eq!(std::fs::read(store.blob_path(&content(&m, "a").digest.unwrap())).unwrap(), b"same");
    // errors go to stderr with exit 2
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .arg("import")
        .arg(format!("{}:missing-tag", l.path().display()))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no image tagged \"missing-tag\""));
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
}

#[test]
fn fifos_planted_in_a_layout_are_refused_not_read() {
    // index.json as a fifo: opening it must not block
    let l = Layout::with(vec![L::tar(Tar::default().end())]);
    std::fs::remove_file(l.path().join("index.json")).unwrap();
    mkfifo(&l.path().join("index.json"));
    assert!(import(&l).unwrap_err().to_string().contains("not a regular file"));
    // a layer blob as a fifo
    let t = Tar::default().file("f", b"x").end();
    let l = Layout::with(vec![L::tar(t.clone())]);
    let p = l.blob_path(&sha(&t));
    std::fs::remove_file(&p).unwrap();
    mkfifo(&p);
    assert!(import(&l).unwrap_err().to_string().contains("not a regular file"));
}

#[test]
fn tag_naming_something_other_than_an_image() {
    let l = Layout::new();
    let d = l.desc("application/vnd.example.artifact", b"{}");
    l.index(vec![(d, Some("t"))]);
    let e = import(&l).unwrap_err().to_string();
    assert!(e.contains("no image manifest tagged \"t\""), "{e}");
}

#[test]
fn early_entry_error_stops_decompression_of_a_big_layer() {
    // The bad entry comes first; 48 MiB follow. The error is the entry's,
    // and the import returns without reading the rest.
    let mut t = Tar::default().file("../x", b"");
    t.header(&H { size: 48 << 20, ..h(b"big", b'0') });
    t.data(&vec![1u8; 48 << 20]);
    let e = err(vec![L::gz(t.end())]);
    assert!(e.contains("/../x") && e.contains(".."), "{e}");
}

/// A layer with every kind of entry and extension header.
fn sample_layer() -> Vec<u8> {
    let mut t = gnu_sparse(20000, &[(100, b"abc"), (9000, b"xyz")])
        .pax(&[("path", "long/".repeat(30).as_bytes()), ("SCHILY.xattr.user.k", b"v\0v"), ("mtime", b"5.5")])
        .file("short", b"data")
        .dir("d")
        .file("d/f", b"ff")
        .link("d/hl", "d/f")
        .symlink("d/s", "../short")
        .raw(H { dev: (1, 3), ..h(b"d/null", b'3') }, b"")
        .raw(h(b"d/fifo", b'6'), b"")
        .file("d/.wh.gone", b"")
        .file("d/.wh..wh..opq", b"");
    t.header(&H { size: 0, ..h(b"last", b'0') });
    t.end()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Damaged layers give an error or a valid manifest, never a panic.
    #[test]
    fn damaged_layers_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let clean = sample_layer();
        let mut bad = clean.clone();
        for (i, b) in &flips {
            let i = i.index(bad.len());
            bad[i] = *b;
        }
        if let Some(c) = cut {
            bad.truncate(c.index(bad.len()));
        }
        let mut tree = Tree::default();
        tree.begin_layer();
        apply_tar(&mut tree, &clean[..], None, Digest::of(b"lower")).unwrap();
        tree.begin_layer();
        match apply_tar(&mut tree, &bad[..], None, Digest::of(b"upper")) {
            Ok(_) => {
                if let Ok(m) = tree.to_manifest() {
                    let bytes = m.to_bytes().unwrap_or_else(|e| panic!("import made an unencodable manifest: {e}"));
                    Manifest::from_bytes(&bytes).unwrap();
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("layer sha256:")),
        }
    }
}

// ---------------------------------------------------------------- xattr policy: overlay and host labels

/// A layer whose PAX records carry overlayfs's xattrs (both namespaces, and
/// the escaped spelling), host labels, and ordinary xattrs beside them.
fn overlay_layer() -> Vec<u8> {
    Tar::default()
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.user.keep", b"1")])
        .dir("etc")
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.overlay.origin", b"\x00\xfb"),
            ("SCHILY.xattr.trusted.overlay.overlay.opaque", b"y"),
            // not overlay's: the prefix ends with a dot
            ("SCHILY.xattr.trusted.overlayx", b"kept"),
            ("SCHILY.xattr.user.overlay", b"kept"),
        ])
        .dir("d")
        .pax(&[("SCHILY.xattr.security.selinux", b"system_u:object_r:etc_t:s0"), ("SCHILY.xattr.user.k", b"v")])
        .file("etc/f", b"x")
        .end()
}

fn xattr_names(m: &Manifest, path: &str) -> Vec<String> {
    m.get(path.as_bytes()).unwrap().meta.xattrs.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
}

#[test]
fn overlay_and_host_label_xattrs_in_layers_are_dropped_and_listed() {
    use ocix::oci::DropReason;
    let t = overlay_layer();
    let l = Layout::with(vec![
        L::gz(t.clone()),
        L::tar(Tar::default().pax(&[("SCHILY.xattr.user.overlay.x", b"")]).file("etc/f", b"y").end()),
    ]);
    let imp = import_image(l.path(), None, &opts("t")).unwrap();
    let m = &imp.manifest.to_tree();
    assert_eq!(xattr_names(m, "etc"), ["user.keep"]);
    assert_eq!(xattr_names(m, "d"), ["trusted.overlayx", "user.overlay"]);
    assert!(xattr_names(m, "etc/f").is_empty(), "{:?}", xattr_names(m, "etc/f"));
    let got: Vec<(DropReason, String, String)> = imp
        .dropped
        .listed
        .iter()
        .map(|d| {
            (d.reason, String::from_utf8_lossy(&d.path).into_owned(), String::from_utf8_lossy(&d.name).into_owned())
        })
        .collect();
    let want = [
        (DropReason::Overlay, "etc", "trusted.overlay.opaque"),
        (DropReason::Overlay, "d", "trusted.overlay.overlay.opaque"),
        (DropReason::Overlay, "d", "trusted.overlay.redirect"),
        (DropReason::Overlay, "d", "user.overlay.origin"),
        (DropReason::HostSpecific, "etc/f", "security.selinux"),
        (DropReason::Overlay, "etc/f", "user.overlay.x"),
    ]
    .map(|(r, p, n)| (r, p.to_string(), n.to_string()));
    assert_eq!(got, want);
    assert_eq!(imp.dropped.listed[5].layer, imp.image.layers[1].desc.digest);
    assert_eq!((imp.dropped.count(DropReason::Overlay), imp.dropped.count(DropReason::HostSpecific)), (5, 1));
    let s = imp.dropped.summary(2);
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s[0].starts_with("5 overlayfs xattrs dropped") && s[0].contains("/etc (trusted.overlay.opaque)"), "{s:?}");
    assert!(s[0].ends_with(", and 3 more"), "{s:?}");
    assert!(s[1].contains("/etc/f (security.selinux)"), "{s:?}");
}

#[test]
fn hostile_overlay_xattr_names_print_on_one_line() {
    let t = Tar::default().pax(&[("SCHILY.xattr.trusted.overlay.\x1b[2J\nx", b"y")]).dir("e\nvil").end();
    let imp = import_image(Layout::with(vec![L::tar(t)]).path(), None, &opts("t")).unwrap();
    assert!(imp.manifest.get(b"e\nvil").unwrap().xattrs().is_empty());
    let s = imp.dropped.summary(3);
    assert_eq!(s.len(), 1);
    assert!(!s[0].contains('\n') && !s[0].contains('\x1b'), "{s:?}");
}

#[test]
fn cli_import_warns_of_each_dropped_xattr() {
    let l = Layout::with(vec![L::tar(overlay_layer())]);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("m.cbor");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .arg("import")
        .arg(format!("{}:t", l.path().display()))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("warning") && err.contains("4 overlayfs xattrs dropped"), "{err}");
    assert!(err.contains("/etc (trusted.overlay.opaque)") && err.contains("/d (trusted.overlay.redirect)"), "{err}");
    assert!(err.contains("1 host-specific xattrs dropped") && err.contains("/etc/f (security.selinux)"), "{err}");
    let m = Manifest::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    assert!(m.walk().all(|(_, e)| e.meta.xattrs.keys().all(|k| !ocix::manifest::is_overlay_xattr(k))));
    // -v lists every one
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .args(["-v", "import"])
        .arg(format!("{}:t", l.path().display()))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("/d (user.overlay.origin)") && !err.contains("more"), "{err}");
}

#[test]
fn cli_unpack_image_never_writes_overlay_xattrs_root_or_rootless() {
    assert!(rustix::process::geteuid().is_root(), "tests run as root");
    let l = Layout::with(vec![L::tar(overlay_layer())]);
    for rootless in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let bundle = t.path().join("bundle");
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"));
        c.arg("unpack").arg("--image").arg(format!("{}:t", l.path().display())).arg(&bundle);
        if rootless {
            c.arg("--rootless");
        }
        let r = c.output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{err}");
        assert!(err.contains("overlayfs xattrs dropped") && err.contains("/etc (trusted.overlay.opaque)"), "{err}");
        let rootfs = bundle.join("rootfs");
        for (p, n) in [
            ("etc", "trusted.overlay.opaque"),
            ("d", "trusted.overlay.redirect"),
            ("d", "user.overlay.origin"),
            ("d", "trusted.overlay.overlay.opaque"),
            ("etc/f", "security.selinux"),
        ] {
            assert_eq!(lgetxattr(&rootfs.join(p), n), None, "{p} {n} (rootless {rootless})");
        }
        assert_eq!(lgetxattr(&rootfs.join("etc"), "user.keep").as_deref(), Some(&b"1"[..]));
        assert_eq!(lgetxattr(&rootfs.join("d"), "user.overlay").as_deref(), Some(&b"kept"[..]));
    }
}

#[test]
fn dropped_xattrs_are_listed_up_to_the_limit_then_only_counted() {
    use ocix::oci::{DropReason, MAX_DROPPED_LISTED};
    let mut t = Tar::default();
    for _ in 0..=MAX_DROPPED_LISTED {
        t = t.pax(&[("SCHILY.xattr.security.selinux", b"l")]).file("f", b"");
    }
    let imp = import_image(Layout::with(vec![L::gz(t.end())]).path(), None, &opts("t")).unwrap();
    assert_eq!(imp.dropped.listed.len(), MAX_DROPPED_LISTED);
    assert_eq!(imp.dropped.count(DropReason::HostSpecific), MAX_DROPPED_LISTED as u64 + 1);
    assert_eq!(imp.dropped.count(DropReason::Overlay), 0);
    let s = imp.dropped.summary(usize::MAX);
    assert_eq!(s.len(), 1);
    assert!(s[0].ends_with(", and 1 more"), "{}", &s[0][s[0].len() - 40..]);
}

// ---------------------------------------------------------------- --keep-dirlinks

/// Imports the layers with `keep_dirlinks` as given.
fn ok_dirlinks(layers: Vec<L>, keep: bool) -> Manifest {
    let l = Layout::with(layers);
    let o = ImportOptions { keep_dirlinks: keep, ..opts("t") };
    import_image(l.path(), None, &o).unwrap_or_else(|e| panic!("import failed: {e}")).manifest.to_tree()
}

/// Both ways: (without the option, with it).
fn both_dirlinks(layers: impl Fn() -> Vec<L>) -> (Manifest, Manifest) {
    (ok_dirlinks(layers(), false), ok_dirlinks(layers(), true))
}

fn kind(m: &Manifest, path: &str) -> Kind {
    m.get(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing")).kind.clone()
}

fn names(m: &Manifest, path: &str) -> Vec<String> {
    let e = m.get(path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
    let ch = e.children().unwrap_or_else(|| panic!("{path} is not a directory"));
    ch.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
}

fn symlink_to(t: &str) -> Kind {
    Kind::Symlink(t.as_bytes().to_vec())
}

/// A directory entry with metadata unlike the lower layer's.
fn dir_entry(t: Tar, name: &str) -> Tar {
    t.raw(H { mode: 0o700, uid: 5, gid: 6, mtime: 2_000_000, ..h(name.as_bytes(), b'5') }, b"")
}

#[test]
fn keep_dirlinks_a_dir_entry_keeps_a_symlink_to_a_dir() {
    let (plain, keep) = both_dirlinks(|| {
        let l1 = Tar::default().dir("d1").file("d1/a", b"a").symlink("l1", "d1").end();
        let l2 = dir_entry(Tar::default().pax(&[("SCHILY.xattr.trusted.t", b"v")]), "l1/").file("l1/b", b"b").end();
        vec![L::tar(l1), L::tar(l2)]
    });
    // without: the directory replaces the symlink, and takes what follows
    assert!(matches!(kind(&plain, "l1"), Kind::Dir(_)));
    assert_eq!(names(&plain, "l1"), ["b"]);
    assert_eq!(names(&plain, "d1"), ["a"]);
    let l1 = &plain.get(b"l1").unwrap().meta;
    assert_eq!((l1.mode, l1.uid, l1.gid, l1.mtime.sec), (0o700, 5, 6, 2_000_000));
    // with: the symlink stays and takes the entry's owner, mtime and xattrs
    // (mode stays 0777); the directory it leads to keeps its own metadata
    assert_eq!(kind(&keep, "l1"), symlink_to("d1"));
    assert_eq!(names(&keep, "d1"), ["a", "b"]);
    let l1 = &keep.get(b"l1").unwrap().meta;
    assert_eq!((l1.mode, l1.uid, l1.gid, l1.mtime.sec), (0o777, 5, 6, 2_000_000));
    assert_eq!(l1.xattrs.get(&b"trusted.t"[..]).map(Vec::as_slice), Some(&b"v"[..]));
    let d1 = &keep.get(b"d1").unwrap().meta;
    assert_eq!((d1.mode, d1.uid, d1.gid, d1.mtime.sec), (0o755, 0, 0, 1_000_000));
    assert!(d1.xattrs.is_empty());
}

#[test]
fn keep_dirlinks_metadata_reaches_every_name_of_a_hardlinked_symlink() {
    // `a` and `z` are one symlink inode; a directory entry through the second
    // name changes the inode, so the first name (which carries the metadata
    // in the manifest) shows it
    let l1 = Tar::default().dir("d").symlink("a", "d").link("z", "a").end();
    let l2 = dir_entry(Tar::default(), "z/").end();
    let m = ok_dirlinks(vec![L::tar(l1), L::tar(l2)], true);
    assert_eq!(kind(&m, "a"), symlink_to("d"));
    assert_eq!(kind(&m, "z"), Kind::Hardlink(b"a".to_vec()));
    let a = &m.get(b"a").unwrap().meta;
    assert_eq!((a.mode, a.uid, a.gid, a.mtime.sec), (0o777, 5, 6, 2_000_000));
}

#[test]
fn keep_dirlinks_replaces_the_symlinks_metadata_entirely() {
    // the symlink's own xattrs go, as umoci clears them before setting the
    // entry's; the same layer may hold both the symlink and the entry
    let t = Tar::default().dir("d").pax(&[("SCHILY.xattr.trusted.old", b"1")]).symlink("l", "d").dir("l").end();
    let m = ok_dirlinks(vec![L::tar(t)], true);
    assert_eq!(kind(&m, "l"), symlink_to("d"));
    let l = &m.get(b"l").unwrap().meta;
    assert!(l.xattrs.is_empty(), "{l:?}");
    assert_eq!((l.mode, l.mtime.sec), (0o777, 1_000_000));
}

#[test]
fn keep_dirlinks_follows_a_chain_of_symlinks_and_parent_symlinks() {
    let (plain, keep) = both_dirlinks(|| {
        let l1 = Tar::default()
            .dir("d1")
            .symlink("l1", "d1")
            .symlink("l2", "l1")
            .dir("sub")
            .symlink("sub/up", "../l2")
            .symlink("p", "sub")
            .end();
        let l2 = dir_entry(Tar::default(), "l2").file("l2/b", b"b");
        let l2 = dir_entry(l2, "p/up/").file("p/up/c", b"c").end();
        vec![L::tar(l1), L::tar(l2)]
    });
    assert_eq!(kind(&keep, "l2"), symlink_to("l1"));
    assert_eq!(kind(&keep, "l1"), symlink_to("d1"));
    assert_eq!(kind(&keep, "sub/up"), symlink_to("../l2"), "resolved from where the symlink is");
    assert_eq!(names(&keep, "d1"), ["b", "c"]);
    assert_eq!(keep.get(b"sub/up").unwrap().meta.uid, 5);
    assert_eq!(names(&plain, "l2"), ["b"]);
    assert_eq!(names(&plain, "sub/up"), ["c"]);
    assert_eq!(names(&plain, "d1"), Vec::<String>::new());
}

#[test]
fn keep_dirlinks_replaces_symlinks_that_lead_to_no_directory() {
    let links = [
        ("lf", "file"),
        ("ldang", "missing"),
        ("labs", "/nonexistent"),
        ("lloop", "lloop"),
        ("lthrough", "file/x"),
        ("lcycle", "lcycle2"),
        ("lcycle2", "lcycle/x"),
    ];
    let (plain, keep) = both_dirlinks(|| {
        let mut l1 = Tar::default().file("file", b"f");
        let mut l2 = Tar::default();
        for (l, t) in links {
            l1 = l1.symlink(l, t);
            l2 = dir_entry(l2, l).file(&format!("{l}/b"), b"b");
        }
        vec![L::tar(l1.end()), L::tar(l2.end())]
    });
    for m in [&plain, &keep] {
        for (l, _) in links {
            assert_eq!(names(m, l), ["b"], "{l}");
            assert_eq!(m.get(l.as_bytes()).unwrap().meta.mode, 0o700, "{l}");
        }
        assert_eq!(content(m, "file").size, 1);
        assert!(!exists(m, "missing") && !exists(m, "nonexistent"));
    }
}

#[test]
fn keep_dirlinks_never_leaves_the_root() {
    let (plain, keep) = both_dirlinks(|| {
        let l1 = Tar::default()
            .dir("etc")
            .file("etc/passwd", b"p")
            .symlink("lup", "../..")
            .symlink("letc", "/etc")
            .symlink("lescape", "../../../../etc")
            .symlink("lroot", "/")
            .end();
        let mut l2 = Tar::default();
        for (l, f) in [("lup", "b"), ("letc", "c"), ("lescape", "d"), ("lroot", "e")] {
            l2 = dir_entry(l2, l).file(&format!("{l}/{f}"), f.as_bytes());
        }
        vec![L::tar(l1), L::tar(l2.end())]
    });
    for l in ["lup", "letc", "lescape", "lroot"] {
        assert!(matches!(kind(&keep, l), Kind::Symlink(_)), "{l}");
        assert!(matches!(kind(&plain, l), Kind::Dir(_)), "{l}");
    }
    // through the symlinks into the root's own names: root for .. and /,
    // the root's etc for /etc and ../../../../etc
    assert_eq!(content(&keep, "b").digest, Some(Digest::of(b"b")));
    assert_eq!(content(&keep, "e").digest, Some(Digest::of(b"e")));
    assert_eq!(names(&keep, "etc"), ["c", "d", "passwd"]);
    assert_eq!(names(&plain, "etc"), ["passwd"]);
    assert!(!exists(&plain, "b") && !exists(&plain, "e"));
    // the root keeps its metadata
    assert_eq!(keep.root.meta.uid, 0);
}

#[test]
fn keep_dirlinks_whiteouts_beneath_the_symlink() {
    let (plain, keep) = both_dirlinks(|| {
        let mut l1 = Tar::default();
        for d in ["d2", "d3", "d4", "d5"] {
            l1 = l1.dir(d).file(&format!("{d}/x"), b"x").file(&format!("{d}/y"), b"y");
        }
        let l1 = l1.symlink("lw", "d2").symlink("lo", "d3").symlink("lw2", "d4").symlink("lo2", "d5").end();
        let l2 = dir_entry(Tar::default(), "lw").file("lw/.wh.x", b"");
        let l2 = dir_entry(l2, "lo").file("lo/.wh..wh..opq", b"").file("lo/b", b"b");
        // no directory entry: whiteouts go through the symlink either way
        let l2 = l2.file("lw2/.wh.x", b"").file("lo2/.wh..wh..opq", b"").end();
        vec![L::tar(l1), L::tar(l2)]
    });
    assert_eq!(names(&keep, "d2"), ["y"]);
    assert_eq!(names(&keep, "d3"), ["b"]);
    assert_eq!(kind(&keep, "lw"), symlink_to("d2"));
    assert_eq!(kind(&keep, "lo"), symlink_to("d3"));
    // without: new empty directories hide nothing below
    assert_eq!(names(&plain, "lw"), Vec::<String>::new());
    assert_eq!(names(&plain, "lo"), ["b"]);
    assert_eq!(names(&plain, "d2"), ["x", "y"]);
    assert_eq!(names(&plain, "d3"), ["x", "y"]);
    for m in [&plain, &keep] {
        assert_eq!(names(m, "d4"), ["y"]);
        assert_eq!(names(m, "d5"), Vec::<String>::new());
        assert_eq!(kind(m, "lw2"), symlink_to("d4"));
        assert_eq!(kind(m, "lo2"), symlink_to("d5"));
    }
}

#[test]
fn keep_dirlinks_entries_beneath_a_symlink_without_a_dir_entry() {
    let (plain, keep) = both_dirlinks(|| {
        let l1 = Tar::default().dir("d4").file("d4/a", b"a").symlink("lnb", "d4").end();
        let l2 = Tar::default().file("lnb/b", b"b").file("lnb/new/c", b"c").end();
        vec![L::tar(l1), L::tar(l2)]
    });
    for m in [&plain, &keep] {
        assert_eq!(kind(m, "lnb"), symlink_to("d4"));
        assert_eq!(names(m, "d4"), ["a", "b", "new"]);
        assert_eq!(m.get(b"lnb").unwrap().meta.mtime.sec, 1_000_000);
    }
}

#[test]
fn keep_dirlinks_only_directory_entries_keep_a_symlink() {
    let (plain, keep) = both_dirlinks(|| {
        let l1 = Tar::default().dir("d").file("d/a", b"a").symlink("f", "d").symlink("s", "d").dir("real").end();
        let l1b = Tar::default().file("real/child", b"c").end();
        let l2 = Tar::default().file("f", b"now a file").symlink("s", "elsewhere");
        let l2 = dir_entry(l2, "real").end();
        vec![L::tar(l1), L::tar(l1b), L::tar(l2)]
    });
    for m in [&plain, &keep] {
        assert_eq!(content(m, "f").size, 10);
        assert_eq!(kind(m, "s"), symlink_to("elsewhere"));
        assert_eq!(names(m, "d"), ["a"]);
        // a directory over a directory: unchanged by the option
        assert_eq!(names(m, "real"), ["child"]);
        assert_eq!(m.get(b"real").unwrap().meta.uid, 5);
    }
}

#[test]
fn keep_dirlinks_on_the_command_line() {
    let l1 = Tar::default().dir("d1").symlink("l1", "d1").end();
    let l2 = Tar::default().dir("l1").file("l1/b", b"b").end();
    let l = Layout::with(vec![L::tar(l1), L::tar(l2)]);
    let s = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
            .args(args)
            .arg(format!("{}:t", l.path().display()))
            .output()
            .unwrap()
    };
    let out = s.path().join("m.cbor");
    let r = run(&["import", "--keep-dirlinks", "-o", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = Manifest::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(kind(&m, "l1"), symlink_to("d1"));
    assert_eq!(names(&m, "d1"), ["b"]);
    let r = run(&["import", "-o", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = Manifest::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(names(&m, "l1"), ["b"]);
    // unpack --image takes it (the bundle's own manifest shows the tree)
    let bundle = s.path().join("bundle");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .args(["unpack", "--keep-dirlinks", "--rootless", "--image"])
        .arg(format!("{}:t", l.path().display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = Manifest::from_bytes(&std::fs::read(bundle.join("ocix.cbor")).unwrap()).unwrap();
    assert_eq!(kind(&m, "l1"), symlink_to("d1"));
    assert!(bundle.join("rootfs/d1/b").is_file());
    assert!(bundle.join("rootfs/l1").symlink_metadata().unwrap().file_type().is_symlink());
    // a manifest is already a tree: the option is refused there
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .args(["unpack", "--keep-dirlinks", "--store"])
        .arg(s.path().join("store"))
        .arg(&out)
        .arg(s.path().join("dest"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--keep-dirlinks"));
}

/// A name of the small alphabet the dirlink property test plays with.
fn dirlink_name() -> impl Strategy<Value = String> {
    let part = prop::sample::select(vec!["a", "b", "l", "m"]);
    proptest::collection::vec(part, 1..4).prop_map(|v| v.join("/"))
}

/// `a/b/c` -> `a/b/.wh.c`.
fn whiteout_of(name: &str) -> String {
    match name.rsplit_once('/') {
        Some((d, n)) => format!("{d}/.wh.{n}"),
        None => format!(".wh.{name}"),
    }
}

/// An entry: 0 dir, 1 file, 2 symlink, 3 whiteout, 4 opaque whiteout.
fn dirlink_entry() -> impl Strategy<Value = (u8, String, &'static str)> {
    let target = prop::sample::select(vec!["a", "l", "../..", "/", "/a/b", "m/../a", "missing", "a/b/../..", "l/l"]);
    (0u8..5, dirlink_name(), target)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Layers of directories, files, symlinks (to each other, up, out,
    /// in loops) and whiteouts over the same few names: with the option on,
    /// every layer applies or fails with an error naming the entry, never
    /// a panic, and the tree always makes a valid manifest.
    #[test]
    fn keep_dirlinks_never_panics(
        layers in proptest::collection::vec(proptest::collection::vec(dirlink_entry(), 1..8), 1..4),
    ) {
        let mut tree = Tree::default();
        tree.keep_dirlinks(true);
        for (i, entries) in layers.iter().enumerate() {
            let mut t = Tar::default();
            for (k, name, target) in entries {
                t = match k {
                    0 => t.dir(name),
                    1 => t.file(name, b"x"),
                    2 => t.symlink(name, target),
                    3 => t.file(&whiteout_of(name), b""),
                    _ => t.file(&format!("{name}/.wh..wh..opq"), b""),
                };
            }
            tree.begin_layer();
            if let Err(e) = apply_tar(&mut tree, &t.end()[..], None, Digest::of(&[i as u8])) {
                prop_assert!(e.to_string().contains("entry /"), "{}", e);
                break;
            }
        }
        let m = tree.to_manifest().unwrap();
        Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap();
    }
}

// ------------------------------------------- hardlinks to symlinks, fifos, devices

/// One layer: a symlink, a fifo, a char and a block device, each with tar
/// hardlinks (one of them absolute, one with header metadata of its own,
/// one that sorts before its target).
fn special_links_layer() -> Vec<u8> {
    Tar::default()
        .symlink("symlink", "target")
        .link("tmp/symlink_hard", "symlink")
        .raw(H { mode: 0o640, ..h(b"fifo", b'6') }, b"")
        .link("a-fifo", "fifo")
        .raw(H { mode: 0o666, dev: (1, 3), ..h(b"dev/null", b'3') }, b"")
        .link("dev/null2", "dev/null")
        .link("z/null3", "/dev/null")
        .raw(H { mode: 0o660, gid: 6, dev: (7, 0), ..h(b"loop0", b'4') }, b"")
        .raw(H { link: b"loop0", mode: 0o600, uid: 5, ..h(b"loop0-hard", b'1') }, b"")
        .end()
}

#[test]
fn hardlinks_to_symlinks_fifos_and_devices_share_the_inode() {
    let m = ok(vec![L::tar(special_links_layer())]);
    let kind = |p: &str| m.get(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing")).kind.clone();
    let link = |p: &str| Kind::Hardlink(p.as_bytes().to_vec());
    assert_eq!(kind("symlink"), Kind::Symlink(b"target".to_vec()));
    assert_eq!(kind("tmp/symlink_hard"), link("symlink"));
    // a-fifo sorts first: it carries the fifo and its metadata
    assert_eq!(kind("a-fifo"), Kind::Fifo);
    assert_eq!(m.get(b"a-fifo").unwrap().meta.mode, 0o640);
    assert_eq!(kind("fifo"), link("a-fifo"));
    assert_eq!(kind("dev/null"), Kind::Char(Dev { major: 1, minor: 3 }));
    assert_eq!(kind("dev/null2"), link("dev/null"));
    assert_eq!(kind("z/null3"), link("dev/null"));
    // the link header's own mode and owner are ignored
    assert_eq!(kind("loop0"), Kind::Block(Dev { major: 7, minor: 0 }));
    assert_eq!(kind("loop0-hard"), link("loop0"));
    let l0 = &m.get(b"loop0").unwrap().meta;
    assert_eq!((l0.mode, l0.uid, l0.gid), (0o660, 0, 6));
    Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap();
}

#[test]
fn hardlinked_symlink_groups_follow_later_layers() {
    let l1 = Tar::default().symlink("s", "t").link("s2", "s").end();
    // a link to a lower layer's link joins the same inode
    let l2 = Tar::default().link("s3", "s2").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert_eq!(m.get(b"s2").unwrap().kind, Kind::Hardlink(b"s".to_vec()));
    assert_eq!(m.get(b"s3").unwrap().kind, Kind::Hardlink(b"s".to_vec()));
    // the first name whited out: the next one carries the symlink
    let l2 = Tar::default().file(".wh.s", b"").link("s3", "s2").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert_eq!(m.get(b"s2").unwrap().kind, Kind::Symlink(b"t".to_vec()));
    assert_eq!(m.get(b"s3").unwrap().kind, Kind::Hardlink(b"s2".to_vec()));
    // the first name replaced by a new symlink: it leaves the group
    let l2 = Tar::default().symlink("s", "new").end();
    let m = ok(vec![L::tar(l1.clone()), L::tar(l2)]);
    assert_eq!(m.get(b"s").unwrap().kind, Kind::Symlink(b"new".to_vec()));
    assert_eq!(m.get(b"s2").unwrap().kind, Kind::Symlink(b"t".to_vec()));
    // two separate symlinks with the same target stay two inodes
    let t = Tar::default().symlink("x", "t").symlink("y", "t").end();
    let m = ok(vec![L::tar(t)]);
    assert_eq!(m.get(b"y").unwrap().kind, Kind::Symlink(b"t".to_vec()));
}

#[test]
fn unpack_image_keeps_one_inode_for_hardlinked_specials() {
    use std::os::unix::fs::MetadataExt;
    let l = Layout::with(vec![L::tar(special_links_layer())]);
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", l.path().display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = |p: &str| std::fs::symlink_metadata(bundle.join("rootfs").join(p)).unwrap();
    for group in [
        &["symlink", "tmp/symlink_hard"][..],
        &["fifo", "a-fifo"],
        &["dev/null", "dev/null2", "z/null3"],
        &["loop0", "loop0-hard"],
    ] {
        let first = st(group[0]);
        for p in group {
            let s = st(p);
            assert_eq!((s.ino(), s.nlink()), (first.ino(), group.len() as u64), "{p} in {group:?}");
        }
    }
    assert!(st("symlink").file_type().is_symlink());
    assert_eq!(std::fs::read_link(bundle.join("rootfs/tmp/symlink_hard")).unwrap(), Path::new("target"));
}

// ---------------------------------------------------------------- numbers the kernel cannot take

impl Tar {
    /// Appends the header `f` (no data) with the field at `range` replaced
    /// by `bytes` (say, a GNU base-256 number), checksum recomputed.
    fn with_field(mut self, f: H, range: std::ops::Range<usize>, bytes: &[u8]) -> Self {
        self.header(&f);
        let n = self.0.len();
        let b = &mut self.0[n - 512..];
        b[range.clone()].fill(0);
        b[range.start..range.start + bytes.len()].copy_from_slice(bytes);
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| x as u64).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self
    }
}

/// GNU base-256 form of `v` in an 8-byte field.
fn b256(v: u64) -> [u8; 8] {
    let mut f = v.to_be_bytes();
    f[0] = 0x80;
    f
}

#[test]
fn device_numbers_linux_cannot_represent_are_refused_at_import() {
    for (flag, dev) in [(b'3', (4097, 1)), (b'3', (1, 1_048_577)), (b'4', (4096, 1_048_576))] {
        let e = layer_err(Tar::default().raw(H { dev, ..h(b"dev/mem", flag) }, b"").end());
        assert!(e.contains(&format!("{}:{}", dev.0, dev.1)) && e.contains("entry /dev/mem"), "{e}");
        assert!(e.contains("4095") && e.contains("1048575"), "the limits are named: {e}");
    }
    // base-256 numbers in the device fields
    let t = Tar::default().with_field(h(b"mem", b'3'), 329..337, &b256(u32::MAX as u64)).end();
    let e = layer_err(t);
    assert!(e.contains("4294967295:0") && e.contains("entry /mem"), "{e}");
    // star/libarchive PAX device numbers are read, and checked
    let t = Tar::default().pax(&[("SCHILY.devmajor", b"4097")]).raw(H { dev: (1, 1), ..h(b"mem", b'3') }, b"").end();
    let e = layer_err(t);
    assert!(e.contains("4097:1") && e.contains("entry /mem"), "{e}");
    let t = Tar::default()
        .pax(&[("SCHILY.devmajor", b"4095"), ("SCHILY.devminor", b"1048575")])
        .raw(H { dev: (1, 1), ..h(b"big", b'4') }, b"")
        .end();
    assert_eq!(ok(vec![L::tar(t)]).get(b"big").unwrap().kind, Kind::Block(Dev { major: 4095, minor: 1_048_575 }));
    // the largest numbers Linux keeps are fine
    let m = ok(vec![L::tar(Tar::default().raw(H { dev: (4095, 1_048_575), ..h(b"c", b'3') }, b"").end())]);
    assert_eq!(m.get(b"c").unwrap().kind, Kind::Char(Dev { major: 4095, minor: 1_048_575 }));
}

#[test]
fn owner_4294967295_is_refused_at_import() {
    let no_change = b256(u32::MAX as u64);
    for range in [108..116, 116..124] {
        let t = Tar::default().with_field(H { mode: 0o4755, ..h(b"su", b'0') }, range, &no_change).end();
        let e = layer_err(t);
        assert!(e.contains("4294967295") && e.contains("chown") && e.contains("entry /su"), "{e}");
    }
    for key in ["uid", "gid"] {
        let t = Tar::default().pax(&[(key, b"4294967295")]).raw(H { mode: 0o4755, ..h(b"su", b'0') }, b"").end();
        let e = layer_err(t);
        assert!(e.contains("4294967295") && e.contains("chown") && e.contains("entry /su"), "{e}");
        let t = Tar::default().pax(&[(key, b"4294967294")]).raw(h(b"f", b'0'), b"").end();
        let m = ok(vec![L::tar(t)]);
        let meta = &m.get(b"f").unwrap().meta;
        assert_eq!(if key == "uid" { meta.uid } else { meta.gid }, 4_294_967_294);
    }
}

#[test]
fn mode_bits_beyond_type_and_permissions_are_refused() {
    // file type bits, as Go and Docker writers set them, are accepted and dropped
    let m = ok(vec![L::tar(Tar::default().raw(H { mode: 0o104755, ..h(b"f", b'0') }, b"").end())]);
    assert_eq!(m.get(b"f").unwrap().meta.mode, 0o4755);
    // anything above them is not a mode
    let e = layer_err(Tar::default().raw(H { mode: 0o1000644, ..h(b"f", b'0') }, b"").end());
    assert!(e.contains("mode 1000644") && e.contains("entry /f"), "{e}");
    let t = Tar::default().with_field(h(b"f", b'0'), 100..108, &[0xff; 8]).end();
    let e = layer_err(t);
    assert!(e.contains("mode -1") && e.contains("entry /f"), "{e}");
}

#[test]
fn sparse_holes_count_against_the_limit() {
    // 4 bytes of data in a file of 64 MiB: the holes are hashed as zeros,
    // so they are work the limit bounds, like data
    let layer = |real: u64| {
        Tar::default()
            .pax(&[("GNU.sparse.map", b"0,4"), ("GNU.sparse.size", real.to_string().as_bytes())])
            .raw(H { size: 4, ..h(b"s", b'0') }, b"head")
            .end()
    };
    let limited = ImportOptions { max_bytes: 16 << 20, ..opts("t") };
    let l = Layout::with(vec![L::tar(layer(64 << 20))]);
    let e = import_image(l.path(), None, &limited).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("entry /s") && e.contains("holes") && e.contains("16777216"), "{e}");
    // within the limit it imports
    let l = Layout::with(vec![L::tar(layer(8 << 20))]);
    let m = import_image(l.path(), None, &limited).unwrap().manifest.to_tree();
    assert_eq!(content(&m, "s").size, 8 << 20);
    // a size no file can have is refused by the reader, whatever the limit
    let l = Layout::with(vec![L::tar(layer(1 << 63))]);
    let e = import_image(l.path(), None, &ImportOptions { max_bytes: u64::MAX, ..opts("t") })
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry /s") && e.contains("9223372036854775808"), "{e}");
}

// ------------------------------------------------------- the nesting limit

/// `levels` components: `d/d/.../d`, then `last` if given.
fn deep_name(levels: usize, last: Option<&str>) -> Vec<u8> {
    let mut p = vec!["d"; levels].join("/");
    if let Some(l) = last {
        p.push('/');
        p.push_str(l);
    }
    p.into_bytes()
}

#[test]
fn nesting_limit_holds_on_both_sides_in_import() {
    let max = ocix::manifest::MAX_DEPTH;
    // the deepest directory, and a file inside it
    let t = Tar(Vec::new())
        .pax(&[("path", &deep_name(max, None))])
        .dir("x")
        .pax(&[("path", &deep_name(max, Some("f")))])
        .file("x", b"inside\n")
        .end();
    let m = ok(vec![L::tar(t)]);
    assert!(exists(&m, std::str::from_utf8(&deep_name(max, Some("f"))).unwrap()));
    let bytes = ocix::manifest::encode(&m).expect("encode");
    assert_eq!(Manifest::from_bytes(&bytes).expect("decode"), m);
    // a directory one level deeper
    let t = Tar(Vec::new()).pax(&[("path", &deep_name(max + 1, None))]).dir("x").end();
    let e = layer_err(t);
    assert!(e.contains("directory nested 1025 levels below the root"), "{e}");
    // a file one level deeper (its parent would be too deep)
    let t = Tar(Vec::new()).pax(&[("path", &deep_name(max + 1, Some("f")))]).file("x", b"").end();
    let e = layer_err(t);
    assert!(e.contains("nested 1026 levels below the root"), "{e}");
}

// ------------------------------------------------- errors that name the fault

#[test]
fn zstd_window_over_the_limit_names_window_and_limit() {
    let data = Tar::default().file("f", b"x").end();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(30)).unwrap();
    enc.write_all(&data).unwrap();
    let blob = enc.finish().unwrap();
    let e = err(vec![L { blob, media_type: OCI_ZSTD.into(), diff_id: sha(&data) }]);
    assert!(e.contains("asks for a window of 1073741824 bytes; the limit is 134217728 bytes (2^27)"), "{e}");
}

#[test]
fn pax_record_length_out_of_bounds_gives_offset_and_claim() {
    let body = b"11 uid=123\n99 path=x\n";
    let t = Tar::default().raw(H { size: body.len() as u64, ..h(b"PaxHeaders/x", b'x') }, body).file("f", b"").end();
    let e = layer_err(t);
    assert!(
        e.contains("record at offset 11") && e.contains("claims 99 bytes") && e.contains("only 10 bytes remain"),
        "{e}"
    );
}

#[test]
fn absolute_member_names_are_shown_with_one_slash() {
    let t = Tar::default().file("/tmp/../../x", b"").end();
    let e = layer_err(t);
    assert!(e.contains("entry /tmp/../../x:") && !e.contains("//tmp"), "{e}");
}

#[test]
fn media_type_mismatch_says_media_type() {
    let t = Tar::default().file("f", b"x").end();
    let l = Layout::new();
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let mut d = l.image(vec![L::tar(t)], None);
    d["mediaType"] = docker.into();
    l.index(vec![(d, Some("t"))]);
    let e = import(&l).unwrap_err().to_string();
    assert!(e.contains("media type mismatch") && e.contains(OCI_MANIFEST) && e.contains(docker), "{e}");
}

#[test]
fn json_of_the_wrong_shape_names_the_field() {
    let e = with_index(br#"{"schemaVersion":2,"manifests":[{"mediaType":[["x"]],"digest":"sha256:00","size":1}]}"#);
    assert!(e.contains("index.json: field manifests[0].mediaType: invalid JSON"), "{e}");
    let e = with_index(br#"{"schemaVersion":2,"manifests":[[{"a":1}]]}"#);
    assert!(e.contains("field manifests[0]"), "{e}");
}

// ---------------------------------------------------------------- typed errors

/// A layer's error is a value: the entry as the member's raw name, and the
/// tree's refusal inside, not text.
#[test]
fn layer_errors_are_typed_and_keep_the_entry() {
    use ocix::oci::LayerError;
    use ocix::oci::tree::TreeError;
    let t = Tar::default().file("a/../b", b"").end();
    let mut tree = Tree::default();
    tree.begin_layer();
    match apply_tar(&mut tree, &t[..], None, Digest::of(b"l")) {
        Err(ImportError::Layer { layer, entry, err }) => {
            assert_eq!(layer, Digest::of(b"l"));
            assert_eq!(entry.as_deref(), Some(&b"a/../b"[..]));
            assert!(matches!(*err, LayerError::Tree(TreeError::DotDot)), "{err:?}");
        }
        other => panic!("{other:?}"),
    }
    // a whiteout under a regular file is a no-op, not the file's error
    let t = Tar::default().file("f", b"x").file("f/.wh.g", b"").end();
    let mut tree = Tree::default();
    tree.begin_layer();
    apply_tar(&mut tree, &t[..], None, Digest::of(b"l")).unwrap();
}
