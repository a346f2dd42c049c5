//! Importing an ordinary image from a registry (`ocix import docker://...`)
//! against the small registry of tests/common/registry.rs on 127.0.0.1, for
//! what a real registry cannot be made to do on demand: serve a layer with
//! wrong bytes, cut a layer's body midway (resumed with Range), and serve a
//! Docker manifest list to choose a platform from.
//! (integration/t-import-registry.sh runs the real docker-registry with the
//! corpus image.)

mod common;

use common::net::digest_of as sha;
use common::registry::State;
use common::{gzip, tar_of};
use ocix::manifest::Manifest;
use ocix::oci::{ImportError, ImportOptions, Platform};
use ocix::remote::image::import_remote;
use ocix::remote::{Reference, RemoteOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What the registry serves (as repository `r`).
#[derive(Default)]
struct Repo {
    state: State,
}

impl Repo {
    fn blob(&mut self, mt: &str, data: Vec<u8>) -> serde_json::Value {
        let size = data.len();
        let d = self.state.add_blob(data);
        serde_json::json!({"mediaType": mt, "digest": d, "size": size})
    }
    fn manifest(&mut self, mt: &str, data: Vec<u8>, tag: Option<&str>) -> serde_json::Value {
        let size = data.len();
        let d = self.state.add_manifest(mt, data, tag);
        serde_json::json!({"mediaType": mt, "digest": d, "size": size})
    }
    /// A Docker image with one gzip layer holding `files`, for `arch`;
    /// returns (manifest descriptor, layer digest).
    fn image(&mut self, arch: &str, files: &[(&str, &[u8])], tag: Option<&str>) -> (serde_json::Value, String) {
        let t = tar_of(files);
        let layer = self.blob(DOCKER_GZIP, gzip(&t));
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha(&t)]},
        });
        let config = self.blob(DOCKER_CONFIG, serde_json::to_vec(&config).unwrap());
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config, "layers": [layer.clone()]});
        let mut d = self.manifest(DOCKER_MANIFEST, serde_json::to_vec(&m).unwrap(), tag);
        d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        (d, layer["digest"].as_str().unwrap().to_string())
    }
}

/// How the server misbehaves for one path.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// One byte of the body flipped.
    Flip,
    /// The first answer (without Range) sends half the body and closes.
    CutOnce,
    /// 404, as if the blob were not there.
    Missing,
}

struct Server {
    port: u16,
    inner: common::net::Server,
}

impl Server {
    /// Paths asked for with a `Range`, in order.
    fn ranges(&self) -> Vec<String> {
        self.inner.requests().into_iter().filter(|r| r.header("range").is_some()).map(|r| r.path).collect()
    }
}

/// Serves `repo`, misbehaving as `fault` says for the blob path `faulty`.
fn serve(repo: Repo, faulty: Option<String>, fault: Fault) -> Server {
    use common::net::{Reply, Req, range_reply};
    let state = Arc::new(Mutex::new(repo.state));
    let st = state.clone();
    let misbehave = move |req: &Req| {
        if faulty.as_deref() != Some(req.path.as_str()) {
            return None;
        }
        let mut body = st.lock().unwrap().blobs.get(req.path.rsplit('/').next()?)?.clone();
        match fault {
            Fault::None => None,
            Fault::Missing => Some(Reply::Full(404, vec![], common::registry::error_body("BLOB_UNKNOWN", "no"))),
            Fault::Flip => {
                let i = body.len() / 2;
                body[i] ^= 0xff;
                Some(range_reply(req, &body))
            }
            Fault::CutOnce => req.header("range").is_none().then(|| {
                let half = body.len() / 2;
                Reply::Cut(200, vec![], body, half)
            }),
        }
    };
    let inner = common::registry::registry_with(state, Box::new(misbehave), None).server;
    Server { port: inner.port, inner }
}

fn ropts() -> RemoteOptions {
    RemoteOptions { insecure: true, timeout: Duration::from_secs(20), retries: 2, auth_files: Vec::new() }
}

fn import(s: &Server, target: &str, platform: Option<&str>) -> Result<Manifest, ImportError> {
    let r = Reference::parse(&format!("docker://127.0.0.1:{}/r{target}", s.port)).unwrap();
    let opts = ImportOptions { platform: platform.map(|p| Platform::parse(p).unwrap()), ..ImportOptions::default() };
    import_remote(&r, None, &opts, &ropts()).map(|i| i.manifest.to_tree())
}

/// Incompressible bytes, so a flipped byte is in the deflate stream's data.
fn noise(n: usize) -> Vec<u8> {
    common::noise(n, 1)
}

#[test]
fn docker_manifest_list_is_narrowed_by_platform() {
    let mut repo = Repo::default();
    let (amd, _) = repo.image("amd64", &[("amd", b"x86\n")], None);
    let (arm, _) = repo.image("arm64", &[("arm", b"aarch64\n")], None);
    let list = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [amd, arm]});
    repo.manifest(DOCKER_LIST, serde_json::to_vec(&list).unwrap(), Some("multi"));
    let s = serve(repo, None, Fault::None);
    let m = import(&s, ":multi", Some("linux/arm64")).unwrap();
    assert!(m.get(b"arm").is_some() && m.get(b"amd").is_none(), "{m:?}");
    let m = import(&s, ":multi", Some("linux/amd64")).unwrap();
    assert!(m.get(b"amd").is_some() && m.get(b"arm").is_none(), "{m:?}");
    let e = import(&s, ":multi", Some("linux/s390x")).unwrap_err().to_string();
    assert!(e.contains("no image for platform linux/s390x"), "{e}");
}

#[test]
fn unknown_tag_is_a_clear_error() {
    let mut repo = Repo::default();
    repo.image("amd64", &[("f", b"x")], Some("t"));
    let s = serve(repo, None, Fault::None);
    let e = import(&s, ":nosuch", None).unwrap_err().to_string();
    assert!(e.contains("/v2/r/manifests/nosuch") && e.contains("404"), "{e}");
}

#[test]
fn layer_with_wrong_bytes_is_rejected_naming_it() {
    let mut repo = Repo::default();
    let big = noise(1 << 20);
    let (_, layer) = repo.image("amd64", &[("big", &big)], Some("t"));
    let s = serve(repo, Some(format!("/v2/r/blobs/{layer}")), Fault::Flip);
    let e = import(&s, ":t", Some("linux/amd64")).unwrap_err().to_string();
    assert!(e.contains(&format!("layer {layer}")), "{e}");
}

#[test]
fn missing_layer_is_a_clear_error() {
    let mut repo = Repo::default();
    let (_, layer) = repo.image("amd64", &[("f", b"x")], Some("t"));
    let s = serve(repo, Some(format!("/v2/r/blobs/{layer}")), Fault::Missing);
    let e = import(&s, ":t", Some("linux/amd64")).unwrap_err().to_string();
    assert!(e.contains(&format!("layer {layer}: reading")) && e.contains("404"), "{e}");
}

#[test]
fn layer_cut_midway_resumes_with_range() {
    let mut repo = Repo::default();
    let big = noise(1 << 20);
    let (_, layer) = repo.image("amd64", &[("big", &big)], Some("t"));
    let path = format!("/v2/r/blobs/{layer}");
    let s = serve(repo, Some(path.clone()), Fault::CutOnce);
    let m = import(&s, ":t", Some("linux/amd64")).unwrap();
    assert!(m.get(b"big").is_some());
    assert_eq!(s.ranges(), vec![path], "the rest was not asked for with Range");
}

#[test]
fn registry_import_equals_layout_import() {
    // the same image as a layout on disk
    let t = tar_of(&[("a", b"one\n"), ("b", b"two\n")]);
    let blob = gzip(&t);
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut repo = Repo::default();
    let layer = repo.blob(DOCKER_GZIP, blob.clone());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(&t)]},
    }))
    .unwrap();
    let cdesc = repo.blob(DOCKER_CONFIG, config.clone());
    let m = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": cdesc, "layers": [layer]}),
    )
    .unwrap();
    let mdesc = repo.manifest(DOCKER_MANIFEST, m.clone(), Some("t"));
    for d in [&blob, &config, &m] {
        std::fs::write(blobs.join(&sha(d)[7..]), d).unwrap();
    }
    let mut idx_entry = mdesc.clone();
    idx_entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [idx_entry]});
    std::fs::write(dir.path().join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let opts = ImportOptions { tag: Some("t".into()), platform: Platform::parse("linux/amd64"), ..Default::default() };
    let local = ocix::oci::import_image(dir.path(), None, &opts).unwrap().manifest.to_tree();
    let s = serve(repo, None, Fault::None);
    let remote = import(&s, ":t", Some("linux/amd64")).unwrap();
    assert_eq!(remote.to_bytes().unwrap(), local.to_bytes().unwrap());
}

// ---------------------------------------------------------------- --keep-dirlinks

/// A layer of directories (names ending in `/`), symlinks (`name -> target`)
/// and files.
fn tar_with_links(entries: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        if let Some((name, target)) = e.split_once(" -> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).unwrap();
        } else if e.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            b.append_data(&mut h, e, &[][..]).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(1);
            b.append_data(&mut h, e, &b"x"[..]).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// Every way an ordinary image comes from a registry takes the option:
/// `import docker://`, `unpack --image docker://` and `unpack docker://
/// DEST` (which finds an ordinary image and imports it).
#[test]
fn keep_dirlinks_reaches_every_registry_import() {
    let layers = [tar_with_links(&["d1/", "l1 -> d1"]), tar_with_links(&["l1/", "l1/b"])];
    let mut repo = Repo::default();
    let descs: Vec<_> = layers.iter().map(|t| repo.blob(DOCKER_GZIP, gzip(t))).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|t| sha(t)).collect::<Vec<_>>()},
    });
    let config = repo.blob(DOCKER_CONFIG, serde_json::to_vec(&config).unwrap());
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config, "layers": descs});
    repo.manifest(DOCKER_MANIFEST, serde_json::to_vec(&m).unwrap(), Some("t"));
    let s = serve(repo, None, Fault::None);
    let src = format!("docker://127.0.0.1:{}/r:t", s.port);
    let dir = tempfile::tempdir().unwrap();
    let ocix = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ocix"))
            .current_dir(dir.path())
            .args(args)
            .args(["--insecure", "--retries", "0"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let kept = |rootfs: &str| {
        let r = dir.path().join(rootfs);
        r.join("l1").symlink_metadata().unwrap().file_type().is_symlink() && r.join("d1/b").is_file()
    };
    for keep in [false, true] {
        let flag: &[&str] = if keep { &["--keep-dirlinks"] } else { &[] };
        let n = if keep { "keep" } else { "plain" };
        ocix(&[&["import", &src, "-o", &format!("{n}.cbor")][..], flag].concat());
        let m = Manifest::from_bytes(&std::fs::read(dir.path().join(format!("{n}.cbor"))).unwrap()).unwrap();
        assert_eq!(m.get(b"l1").unwrap().kind == ocix::manifest::Kind::Symlink(b"d1".to_vec()), keep);
        ocix(&[&["unpack", "--image", &src, &format!("bundle-{n}")][..], flag].concat());
        assert_eq!(kept(&format!("bundle-{n}/rootfs")), keep);
        ocix(&[&["unpack", &src, &format!("dest-{n}")][..], flag].concat());
        assert_eq!(kept(&format!("dest-{n}")), keep);
        assert!(dir.path().join(format!("dest-{n}/l1/b")).is_file());
    }
}
