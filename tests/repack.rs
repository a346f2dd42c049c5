//! `ocix repack`: a bundle unpacked with `ocix unpack --image`, changed, then
//! repacked; importing the new image must give exactly a scan of the
//! changed rootfs, and the new layer must hold only the change.

mod common;

use common::*;
use ocix::manifest::{Kind, Manifest};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    layout: PathBuf,
    bundle: PathBuf,
}

impl Fixture {
    fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
    fn j(&self, p: &str) -> PathBuf {
        self.rootfs().join(p)
    }
    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.layout.display())
    }
    fn repack(&self, tag: &str, extra: &[&str]) -> String {
        let mut c = ocix();
        c.arg("repack").arg("--image").arg(self.image(tag)).args(extra).arg(&self.bundle);
        ok(c.output().unwrap())
    }
    fn import(&self, tag: &str) -> Vec<u8> {
        let out = self.dir.join(format!("{tag}.ocix"));
        ok(run(&[os("import"), os(&self.image(tag)), os("-o"), out.as_os_str()]));
        std::fs::read(out).unwrap()
    }
    fn scan(&self, rootless: bool) -> Vec<u8> {
        let out = self.dir.join("scan.ocix");
        let mut args = vec![os("scan"), self.bundle.as_os_str(), os("-o"), out.as_os_str()];
        let rootfs = self.rootfs();
        args[1] = rootfs.as_os_str();
        if rootless {
            args.push(os("--rootless"));
        }
        ok(run(&args));
        std::fs::read(out).unwrap()
    }
    /// The entries of the image's last layer, names as written.
    fn last_layer(&self, tag: &str) -> Vec<String> {
        let (store, img) = ocix::oci::open_image(&self.layout, Some(tag), None).unwrap();
        let l = img.layers.last().unwrap();
        let f = std::fs::File::open(store.blob_path(&l.desc.digest)).unwrap();
        let mut data = Vec::new();
        flate2::read::MultiGzDecoder::new(f).read_to_end(&mut data).unwrap();
        let mut a = tar::Archive::new(&data[..]);
        a.entries().unwrap().map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned()).collect()
    }
}

/// An image of the sample tree in a layout, unpacked into a bundle.
fn fixture(rootless: bool) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    make_tree(&tree, false);
    let (m, store, layout, bundle) = (dir.join("m"), dir.join("store"), dir.join("layout"), dir.join("bundle"));
    ok(run(&[os("scan"), tree.as_os_str(), os("--store"), store.as_os_str(), os("-o"), m.as_os_str()]));
    let image = format!("{}:base", layout.display());
    ok(run(&[os("export"), m.as_os_str(), os("--store"), store.as_os_str(), os("--image"), os(&image)]));
    let mut args = vec![os("unpack"), os("--image"), os(&image), bundle.as_os_str()];
    if rootless {
        args.push(os("--rootless"));
    }
    ok(run(&args));
    Fixture { _t: t, dir, layout, bundle }
}

/// Every kind of change a repack must carry.
fn change_everything(f: &Fixture) {
    // file removed
    std::fs::remove_file(f.j("names/-dash")).unwrap();
    // directory removed, with what is in it
    std::fs::remove_dir_all(f.j("a/b")).unwrap();
    // directory replaced by a file
    std::fs::remove_dir(f.j("empty")).unwrap();
    write(&f.j("empty"), b"now a file\n");
    // file replaced by a directory
    std::fs::remove_file(f.j("empty-file")).unwrap();
    std::fs::create_dir(f.j("empty-file")).unwrap();
    write(&f.j("empty-file/inside"), b"inside\n");
    // symlink retargeted
    std::fs::remove_file(f.j("link")).unwrap();
    std::os::unix::fs::symlink("names/with space", f.j("link")).unwrap();
    // metadata only
    chmod(&f.j("sparse"), 0o600);
    rustix::fs::setxattr(f.j("fifo"), "user.new", b"x", rustix::fs::XattrFlags::empty()).unwrap_or_else(|_| {
        // user xattrs are not allowed on fifos: change a directory's instead
        rustix::fs::setxattr(f.j("names"), "user.new", b"x", rustix::fs::XattrFlags::empty()).unwrap()
    });
    // hardlink added
    std::fs::hard_link(f.j("names/ünï"), f.j("hl-new")).unwrap();
    // every old entry of a directory gone, a new one there: opaque
    std::fs::remove_file(f.j("perm/setuid")).unwrap();
    std::fs::remove_file(f.j("perm/none")).unwrap();
    std::fs::remove_dir(f.j("perm/sticky")).unwrap();
    write(&f.j("perm/fresh"), b"fresh\n");
}

fn check_repacked(f: &Fixture, tag: &str, rootless: bool) {
    let imported = f.import(tag);
    let record = std::fs::read(f.bundle.join("ocix.cbor")).unwrap();
    assert!(imported == record, "the new image differs from the bundle's record");
    if rootless {
        // devices stay devices in the image, where the rootfs has files
        let m = Manifest::from_bytes(&imported).unwrap();
        assert!(matches!(m.get(b"null").unwrap().kind, Kind::Char(_)));
    } else {
        assert!(imported == f.scan(false), "the new image differs from a scan of the rootfs");
    }
}

#[test]
fn every_kind_of_change_is_carried_root() {
    let f = fixture(false);
    change_everything(&f);
    f.repack("new", &[]);
    check_repacked(&f, "new", false);
    let layer = f.last_layer("new");
    for want in [
        "names/.wh.-dash",
        "a/.wh.b",
        "empty",
        "empty-file/",
        "empty-file/inside",
        "link",
        "sparse",
        "hl-new",
        "perm/.wh..wh..opq",
        "perm/fresh",
    ] {
        assert!(layer.iter().any(|l| l == want), "{want} not in the layer: {layer:?}");
    }
    // what did not change is not there (a/hello and hl-1 are: a/b/hl-2,
    // the first name of their inode, is gone, so a/hello carries it now;
    // names/ünï is a hardlink to the new first name hl-new)
    for not in ["dangling", "fifo", "names/with space", "names/new\nline", "empty-file"] {
        assert!(!layer.iter().any(|l| l == not), "{not} in the layer: {layer:?}");
    }
    // umoci reads it the same way
    let out = f.dir.join("umoci");
    let o =
        std::process::Command::new("umoci").args(["unpack", "--image", &f.image("new")]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = run(&[
        os("diff"),
        out.join("rootfs").as_os_str(),
        f.bundle.join("ocix.cbor").as_os_str(),
        os("--ignore"),
        os("mtime"),
    ]);
    assert!(d.status.success(), "umoci's tree differs: {}", String::from_utf8_lossy(&d.stdout));
}

#[test]
fn every_kind_of_change_is_carried_rootless() {
    let f = fixture(true);
    change_everything(&f);
    f.repack("new", &[]);
    check_repacked(&f, "new", true);
    let layer = f.last_layer("new");
    // the devices that are files in the rootfs are not in the layer
    assert!(!layer.iter().any(|l| l == "null" || l == "loop0"), "{layer:?}");
    assert!(layer.iter().any(|l| l == "perm/fresh"));
}

#[test]
fn a_second_repack_adds_only_the_next_change_and_nothing_is_empty() {
    let f = fixture(false);
    write(&f.j("a/hello"), b"changed!\n");
    // the filesystem clock is coarse (a few ms): let it pass the last
    // change, so that every file of the tree is strictly older than the
    // time repack "one" records, whatever the speed of the build
    clock_past(&f.dir, &f.j("a/hello"));
    f.repack("one", &[]);
    check_repacked(&f, "one", false);
    let one = f.last_layer("one");
    // the file and its other names (a new inode in the layer)
    let mut want = vec!["a/hello".to_string(), "a/b/hl-2".to_string(), "hl-1".to_string()];
    want.sort();
    assert_eq!(sorted_names(&one), want);
    write(&f.j("names/with space"), b"second\n");
    f.repack("two", &[]);
    check_repacked(&f, "two", false);
    assert_eq!(f.last_layer("two"), vec!["names/with space".to_string()]);
    let (_, img) = ocix::oci::open_image(&f.layout, Some("two"), None).unwrap();
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    // nothing changed: an empty layer
    f.repack("three", &[]);
    assert!(f.last_layer("three").is_empty());
}

fn sorted_names(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[test]
fn content_changed_under_the_same_size_and_mtime_is_seen() {
    let f = fixture(false);
    // same size, mtime put back: only the ctime tells
    let p = f.j("names/with space");
    let before = std::fs::symlink_metadata(&p).unwrap();
    use std::os::unix::fs::MetadataExt;
    write(&p, b"S\n");
    set_mtime(&p, before.mtime(), before.mtime_nsec());
    f.repack("new", &[]);
    check_repacked(&f, "new", false);
    assert_eq!(f.last_layer("new"), vec!["names/with space".to_string()]);
}

#[test]
fn bad_bundles_and_tags_are_refused() {
    let f = fixture(false);
    let run_repack = |bundle: &Path, tag: &str, extra: &[&str]| {
        let mut c = ocix();
        c.arg("repack").arg("--image").arg(f.image(tag)).args(extra).arg(bundle);
        c.output().unwrap()
    };
    // the tag exists
    let o = run_repack(&f.bundle, "base", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists (use --force"));
    // no ocix.cbor / no image record
    let empty = f.dir.join("not-a-bundle");
    std::fs::create_dir_all(empty.join("rootfs")).unwrap();
    let o = run_repack(&empty, "x", &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ocix-image.json: missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::copy(f.bundle.join("ocix-image.json"), empty.join("ocix-image.json")).unwrap();
    let o = run_repack(&empty, "x", &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ocix.cbor: missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // a layout without the bundle's image
    let other = f.dir.join("other");
    let o = ocix().arg("repack").arg("--image").arg(format!("{}:x", other.display())).arg(&f.bundle).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not an OCI image layout"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!other.exists(), "a layout was created for a repack that cannot succeed");
    // a layout without the bundle's image
    let tree = f.dir.join("t2");
    std::fs::create_dir(&tree).unwrap();
    let m2 = f.dir.join("m2");
    ok(run(&[os("scan"), tree.as_os_str(), os("--store"), f.dir.join("s2").as_os_str(), os("-o"), m2.as_os_str()]));
    let img2 = format!("{}/layout2:y", f.dir.display());
    ok(run(&[os("export"), m2.as_os_str(), os("--store"), f.dir.join("s2").as_os_str(), os("--image"), os(&img2)]));
    let o = ocix().arg("repack").arg("--image").arg(format!("{}/layout2:x", f.dir.display())).arg(&f.bundle).output();
    let o = o.unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not in"), "{}", String::from_utf8_lossy(&o.stderr));
    // a socket in the rootfs cannot go into a layer
    let sock = f.j("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = run_repack(&f.bundle, "x", &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("socket"), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, img) = ocix::oci::open_image(&f.layout, Some("base"), None).unwrap();
    assert_eq!(img.layers.len(), 1);
    assert!(ocix::oci::open_image(&f.layout, Some("x"), None).is_err(), "a failed repack tagged its image");
}

#[test]
fn unchanged_files_are_not_read_again() {
    let f = fixture(false);
    write(&f.j("a/hello"), b"changed!\n");
    // the filesystem clock is coarse (a few ms): let it pass the last
    // change, so that every file of the tree is strictly older than the
    // time repack "one" records, whatever the speed of the build
    clock_past(&f.dir, &f.j("a/hello"));
    f.repack("one", &[]);
    write(&f.j("names/with space"), b"second\n");
    let o = ocix().arg("-v").arg("repack").arg("--image").arg(f.image("two")).arg(&f.bundle).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    // the file changed, and at most the one changed just before the last
    // repack's scan began, within the filesystem clock's granularity
    let read: u64 = e.split(" files read").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!((1..=2).contains(&read), "{e}");
    // --rehash reads them all, and finds nothing more
    let mut c = ocix();
    c.arg("-v").arg("repack").arg("--rehash").arg("--image").arg(f.image("three")).arg(&f.bundle);
    let o = c.output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    let all: u64 = e.split(" files read").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(o.status.success() && all > 10 && e.contains(" 0 entries written"), "{e}");
}

#[test]
fn an_unprivileged_user_repacks_a_rootless_bundle() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    make_tree(&tree, false);
    let (m, store, layout) = (dir.join("m"), dir.join("store"), dir.join("layout"));
    ok(run(&[os("scan"), tree.as_os_str(), os("--store"), store.as_os_str(), os("-o"), m.as_os_str()]));
    let image = format!("{}:base", layout.display());
    ok(run(&[os("export"), m.as_os_str(), os("--store"), store.as_os_str(), os("--image"), os(&image)]));
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let chown = |p: &Path| {
        let o = std::process::Command::new("chown").arg("-R").arg("65534:65534").arg(p).output().unwrap();
        assert!(o.status.success());
    };
    chown(&layout);
    chown(&work);
    let bundle = work.join("bundle");
    ok(ocix_as_nobody().args(["unpack", "--image", &image]).arg(&bundle).output().unwrap());
    let f = Fixture { _t: t, dir: dir.clone(), layout: layout.clone(), bundle: bundle.clone() };
    std::fs::remove_file(f.j("names/-dash")).unwrap();
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo by-nobody > '{}'", f.j("a/new").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(ocix_as_nobody()
        .args(["repack", "--image", &format!("{}:new", layout.display())])
        .arg(&bundle)
        .output()
        .unwrap());
    let imported = f.import("new");
    assert!(imported == std::fs::read(bundle.join("ocix.cbor")).unwrap());
    let m = Manifest::from_bytes(&imported).unwrap();
    assert!(m.get(b"names/-dash").is_none());
    let new = m.get(b"a/new").unwrap();
    // owned by root in the image: the rootless owner of a new file is 0:0
    assert_eq!((new.meta.uid, new.meta.gid), (0, 0));
    // the owners the rootless tree keeps in xattrs come back
    let orig = Manifest::from_bytes(&std::fs::read(m_path(&dir)).unwrap()).unwrap();
    assert_eq!(m.get(b"names/with space").unwrap().meta.uid, orig.get(b"names/with space").unwrap().meta.uid);
    assert_eq!(m.get(b"loop0").unwrap().kind, orig.get(b"loop0").unwrap().kind);
}

fn m_path(dir: &Path) -> PathBuf {
    dir.join("m")
}

#[test]
fn hostile_bundle_records_are_refused_with_the_file_named() {
    let f = fixture(false);
    let rec = f.bundle.join("ocix-image.json");
    let good = std::fs::read(&rec).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let (_, img) = ocix::oci::open_image(&f.layout, Some("base"), None).unwrap();
    let config = serde_json::json!({"manifest": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": img.config_desc.digest.to_string(), "size": img.config_desc.size}});
    let wrong_size = {
        let mut w = v.clone();
        w["manifest"]["size"] = serde_json::json!(3);
        w
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{".to_vec(), "invalid JSON"),
        (b"{}".to_vec(), "no manifest descriptor"),
        (br#"{"manifest": {"digest": "md5:00", "size": 1, "mediaType": "x"}}"#.to_vec(), "manifest.digest"),
        (serde_json::to_vec(&config).unwrap(), "config"),
        (serde_json::to_vec(&wrong_size).unwrap(), "expected 3"),
        (vec![b' '; (1 << 20) + 1], "larger than"),
    ];
    for (data, want) in cases {
        std::fs::write(&rec, &data).unwrap();
        let o = ocix().arg("repack").arg("--image").arg(f.image("x")).arg(&f.bundle).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{want}: {e}");
        assert!(e.contains(want), "{want}: {e}");
    }
    // a fifo in its place is not waited on
    std::fs::remove_file(&rec).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, &rec, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
    let o = ocix().arg("repack").arg("--image").arg(f.image("x")).arg(&f.bundle).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a regular file"));
    std::fs::remove_file(&rec).unwrap();
    std::fs::write(&rec, &good).unwrap();
    // a record of the tree that is not a manifest
    std::fs::write(f.bundle.join("ocix.cbor"), b"not cbor").unwrap();
    let o = ocix().arg("repack").arg("--image").arg(f.image("x")).arg(&f.bundle).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("ocix.cbor: invalid OCIX manifest"), "{e}");
    assert!(ocix::oci::open_image(&f.layout, Some("x"), None).is_err());
}

/// Waits until a file changed now gets a later ctime than `after` has:
/// the filesystem's clock (the one ctime and repack's records use) has
/// moved past it.
fn clock_past(dir: &Path, after: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ctime = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let t0 = ctime(after);
    let probe = dir.join("clock-probe");
    for _ in 0..10_000 {
        std::fs::write(&probe, b"x").unwrap();
        if ctime(&probe) > t0 {
            std::fs::remove_file(&probe).unwrap();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("the filesystem clock did not move past {}", after.display());
}
