//! `ocix push` against the small registry of tests/common/registry.rs: a
//! real TCP server on 127.0.0.1 speaking just enough of the distribution API (HEAD, POST,
//! PATCH, PUT of blobs, PUT of manifests; it checks every blob's digest and
//! that a manifest names only blobs it holds), into which faults are
//! injected on purpose: 500s, a stalled upload, a 401 without credentials,
//! an upload Location on another origin, a manifest refused with a registry
//! error body, and a store missing or holding corrupt blobs. Every ocix run
//! is bounded: killed and failed if it takes over 60 s. (tests/remote.rs
//! holds the pull side, tests/common/net.rs the HTTP server both use and
//! tests/common/registry.rs the registry; integration/t-registry.sh runs a
//! real registry.)

mod common;

use base64::Engine as _;
use common::net::{Reply, Req, digest_of, ocix, scan_tree, serve};
use common::registry::{Registry, State, answer, error_body, registry, registry_with};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The one line a failed ocix run prints: exactly one line, the error, and
/// no panic.
fn error_line(rc: i32, err: &str) -> &str {
    assert_eq!(rc, 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{err}");
    assert!(lines[0].starts_with("ocix: error: pushing to docker://127.0.0.1:"), "{err}");
    lines[0]
}

// ---- what is pushed ----

const BIG: usize = 300_000;

/// A tree of one file above the pack threshold (pushed on its own) and one
/// small file (pushed in a pack), scanned into a store.
struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
    manifest_path: PathBuf,
    manifest: Vec<u8>,
    big: Vec<u8>,
    small: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_big(BIG)
    }

    /// The fixture with a big file of `size` bytes.
    fn with_big(size: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        let big: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let small = b"small file\n".to_vec();
        std::fs::write(tree.join("etc/zbig"), &big).unwrap();
        std::fs::write(tree.join("etc/small"), &small).unwrap();
        let (store, manifest_path) = scan_tree(dir.path());
        let manifest = std::fs::read(&manifest_path).unwrap();
        Fixture { dir, store, manifest_path, manifest, big, small }
    }

    fn blob_path(&self, data: &[u8]) -> PathBuf {
        self.store.join("blobs/sha256").join(&digest_of(data)["sha256:".len()..])
    }

    /// `ocix push` of the fixture to `docker://127.0.0.1:PORT/ocix/x:v1`
    /// with `extra` flags.
    /// Blobs travel as they are, and no lazy index, unless `extra` says
    /// `--compress`: the fault cases count plain uploads.
    fn push(&self, port: u16, extra: &[&str], env: &[(&str, &Path)]) -> (i32, String) {
        let target = format!("docker://127.0.0.1:{port}/ocix/x:v1");
        let mut args =
            vec!["push", self.manifest_path.to_str().unwrap(), "--store", self.store.to_str().unwrap(), &target];
        if !extra.contains(&"--compress") {
            args.extend(["--compress", "none", "--no-lazy-index"]);
        }
        args.extend_from_slice(extra);
        ocix(self.dir.path(), &args, env)
    }
}

fn is_upload_start(r: &Req) -> bool {
    r.method == "POST" && r.path.ends_with("/blobs/uploads/")
}

// ---- the cases ----

/// Nothing goes wrong: every blob is uploaded, then the tag PUT once (the
/// baseline the faults depart from).
#[test]
fn push_uploads_every_missing_blob_then_tags() {
    let f = Fixture::new();
    let reg = registry(|_| None);
    let (rc, err) = f.push(reg.server.port, &[], &[]);
    assert_eq!(rc, 0, "{err}");
    // the pack of the small file is just its bytes
    for b in [&f.big[..], &f.small, &f.manifest, b"{}"] {
        assert!(reg.has(&digest_of(b)), "{} not uploaded", digest_of(b));
    }
    // the big file, the pack with the small one, the manifest, the config
    assert_eq!(reg.count("POST", "/blobs/uploads/"), 4);
    assert_eq!(reg.manifest_puts().len(), 1);
}

#[test]
fn upload_start_failing_every_time_is_retried_then_no_tag() {
    let f = Fixture::new();
    let boom = error_body("UNKNOWN", "boom");
    let reg = registry(move |r| is_upload_start(r).then(|| Reply::Full(500, vec![], boom.clone())));
    let (rc, err) = f.push(reg.server.port, &["--retries", "3", "--jobs", "1"], &[]);
    let line = error_line(rc, &err);
    let url = format!("POST http://127.0.0.1:{}/v2/ocix/x/blobs/uploads/", reg.server.port);
    assert!(line.contains(&format!("{url}: 500 Internal Server Error: UNKNOWN boom")), "{line}");
    // one blob at a time: the first is tried once and retried 3 times, then
    // the push stops before the next
    assert_eq!(reg.count("POST", "/blobs/uploads/"), 4);
    assert!(reg.manifest_puts().is_empty(), "a tag was PUT though its blobs are missing");
}

#[test]
fn upload_start_failing_once_is_retried_and_the_push_completes() {
    let f = Fixture::new();
    let failed = AtomicUsize::new(0);
    let reg = registry(move |r| {
        (is_upload_start(r) && failed.fetch_add(1, Ordering::SeqCst) == 0)
            .then(|| Reply::Full(500, vec![], error_body("UNKNOWN", "once")))
    });
    let (rc, err) = f.push(reg.server.port, &["--retries", "2"], &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // four uploads and the one retried
    assert_eq!(reg.count("POST", "/blobs/uploads/"), 5);
    assert!(reg.has(&digest_of(&f.big)) && reg.has(&digest_of(&f.manifest)));
    assert_eq!(reg.manifest_puts().len(), 1);
}

#[test]
fn stalled_blob_put_times_out() {
    let f = Fixture::new();
    let reg = registry(|r| (r.method == "PUT" && r.path.contains("/blobs/uploads/")).then_some(Reply::Stall));
    let (rc, err) = f.push(reg.server.port, &["--timeout", "2", "--retries", "0"], &[]);
    let line = error_line(rc, &err);
    let put = format!("PUT http://127.0.0.1:{}/v2/ocix/x/blobs/uploads/", reg.server.port);
    assert!(line.contains(&put), "{line}");
    // the URL names the blob being uploaded
    assert!(line.contains("?digest=sha256:"), "{line}");
    assert!(line.contains("timed out (no answer within 2 s)"), "{line}");
    // --retries 0: each blob's PUT is sent once
    let mut puts: Vec<String> = reg
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
        .map(|r| r.path.split_once("digest=").map(|x| x.1.to_string()).unwrap_or_default())
        .collect();
    let n = puts.len();
    puts.dedup();
    assert_eq!(puts.len(), n, "{puts:?}");
    assert!(n >= 1);
    assert!(reg.manifest_puts().is_empty());
}

#[test]
fn login_asked_without_credentials_says_so() {
    let f = Fixture::new();
    let reg = registry(|r| {
        is_upload_start(r)
            .then(|| Reply::Full(401, vec![("WWW-Authenticate".into(), r#"Basic realm="test""#.into())], vec![]))
    });
    let (rc, err) = f.push(reg.server.port, &["--jobs", "1"], &[]);
    let line = error_line(rc, &err);
    let url = format!("http://127.0.0.1:{}/v2/ocix/x/blobs/uploads/", reg.server.port);
    assert!(line.contains(&format!("{url}: 401 Unauthorized")), "{line}");
    assert!(
        line.contains(&format!("the registry asks for a login; no credentials for 127.0.0.1:{} in", reg.server.port)),
        "{line}"
    );
    assert!(line.contains("no-auth.json"), "{line}");
    assert!(reg.manifest_puts().is_empty());
}

#[test]
fn anonymous_token_without_push_rights_says_no_credentials() {
    let f = Fixture::new();
    let port = Arc::new(AtomicUsize::new(0));
    let p = port.clone();
    // a token for anyone, good for HEAD; uploads refused with it
    let reg = registry(move |r| {
        if r.path.starts_with("/token") {
            return Some(Reply::Full(200, vec![], br#"{"token":"anon"}"#.to_vec()));
        }
        let challenge = format!(r#"Bearer realm="http://127.0.0.1:{}/token",service="t""#, p.load(Ordering::SeqCst));
        let refuse = Some(Reply::Full(401, vec![("WWW-Authenticate".into(), challenge)], vec![]));
        if r.header("authorization") != Some("Bearer anon") || is_upload_start(r) { refuse } else { None }
    });
    port.store(reg.server.port as usize, Ordering::SeqCst);
    let (rc, err) = f.push(reg.server.port, &["--jobs", "1"], &[]);
    let line = error_line(rc, &err);
    let url = format!("http://127.0.0.1:{}/v2/ocix/x/blobs/uploads/", reg.server.port);
    assert!(line.contains(&format!("{url}: 401 Unauthorized: no credentials for 127.0.0.1:")), "{line}");
    // the token was asked with push rights
    let tokens: Vec<Req> = reg.server.requests().into_iter().filter(|r| r.path.starts_with("/token")).collect();
    assert!(tokens.iter().any(|t| t.path.contains("scope=repository%3Aocix%2Fx%3Apull%2Cpush")), "{tokens:?}");
    assert!(reg.manifest_puts().is_empty());
}

#[test]
fn blobs_already_there_are_not_uploaded_and_the_artifact_is_valid() {
    let f = Fixture::new();
    let state: Arc<Mutex<State>> = Arc::default();
    {
        // what a push would upload, already in the registry
        let mut st = state.lock().unwrap();
        let pack = f.small.clone(); // one member: the pack is its bytes
        for b in [f.big.clone(), pack, f.manifest.clone(), b"{}".to_vec()] {
            st.blobs.insert(digest_of(&b), b);
        }
    }
    let reg = registry_with(state, Box::new(|_| None), None);
    let (rc, err) = f.push(reg.server.port, &["-v"], &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("0 uploaded (0 bytes), 2 already there"), "{err}");
    let reqs = reg.server.requests();
    assert!(reqs.iter().all(|r| r.method == "HEAD" || r.path.contains("/manifests/")), "{reqs:?}");
    let puts = reg.manifest_puts();
    assert_eq!(puts.len(), 1);
    let put = &puts[0];
    assert_eq!(put.path, "/v2/ocix/x/manifests/v1");
    assert_eq!(put.header("content-type"), Some("application/vnd.oci.image.manifest.v1+json"));
    let v: serde_json::Value = serde_json::from_slice(&put.body).expect("the tagged manifest is JSON");
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(v["artifactType"], "application/vnd.ocix.manifest.v1+cbor");
    assert_eq!(v["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    assert_eq!(v["config"]["digest"], digest_of(b"{}"));
    assert_eq!(v["config"]["size"], 2);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{v}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.ocix.manifest.v1+cbor");
    assert_eq!(layers[0]["digest"], digest_of(&f.manifest));
    assert_eq!(layers[0]["size"], f.manifest.len());
    assert_eq!(layers[1]["mediaType"], "application/vnd.ocix.pack.v1");
    assert_eq!(layers[1]["digest"], digest_of(&f.small));
    assert_eq!(layers[1]["annotations"]["io.ocix.pack.count"], "1");
    assert_eq!(layers[2]["mediaType"], "application/vnd.ocix.file.v1");
    assert_eq!(layers[2]["digest"], digest_of(&f.big));
    assert_eq!(layers[2]["size"], BIG);
}

#[test]
fn credentials_stay_off_an_upload_location_on_another_origin() {
    let f = Fixture::new();
    let state: Arc<Mutex<State>> = Arc::default();
    // the other origin: takes the upload's bytes, asks for no login
    let st = state.clone();
    let other = serve(move |r| answer(&st, r, ""));
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:pw"));
    let b2 = basic.clone();
    let reg = registry_with(
        state,
        Box::new(move |r| {
            (r.header("authorization") != Some(b2.as_str()))
                .then(|| Reply::Full(401, vec![("WWW-Authenticate".into(), r#"Basic realm="t""#.into())], vec![]))
        }),
        Some(format!("http://127.0.0.1:{}", other.port)),
    );
    let auth = f.dir.path().join("auth.json");
    let host = format!("127.0.0.1:{}", reg.server.port);
    std::fs::write(&auth, format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"pw"}}}}}}"#)).unwrap();
    let (rc, err) = f.push(reg.server.port, &[], &[("REGISTRY_AUTH_FILE", &auth)]);
    assert_eq!(rc, 0, "{err}");
    // the bytes went to the other origin, without the registry's login
    let away = other.requests();
    assert_eq!(away.iter().filter(|r| r.method == "PUT").count(), 4, "{away:?}");
    for r in &away {
        assert_eq!(r.header("authorization"), None, "credentials sent to another origin: {r:?}");
    }
    // the registry itself got them, and the tag
    assert!(reg.server.requests().iter().any(|r| is_upload_start(r) && r.header("authorization") == Some(&*basic)));
    let puts = reg.manifest_puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].header("authorization"), Some(&*basic));
}

#[test]
fn refused_manifest_shows_the_registry_message() {
    let f = Fixture::new();
    let reg = registry(|r| {
        (r.method == "PUT" && r.path.contains("/manifests/"))
            .then(|| Reply::Full(400, vec![], error_body("MANIFEST_INVALID", "layer count over quota")))
    });
    let (rc, err) = f.push(reg.server.port, &[], &[]);
    let line = error_line(rc, &err);
    let url = format!("PUT http://127.0.0.1:{}/v2/ocix/x/manifests/v1", reg.server.port);
    assert!(line.contains(&format!("{url}: 400 Bad Request: MANIFEST_INVALID layer count over quota")), "{line}");
    // a 400 is not retried
    assert_eq!(reg.manifest_puts().len(), 1);
}

#[test]
fn blob_missing_from_the_store_stops_before_any_request() {
    let f = Fixture::new();
    std::fs::remove_file(f.blob_path(&f.big)).unwrap();
    let reg = registry(|_| None);
    let (rc, err) = f.push(reg.server.port, &[], &[]);
    let line = error_line(rc, &err);
    assert!(line.contains(&format!("blob {} missing from store {}", digest_of(&f.big), f.store.display())), "{line}");
    assert!(line.contains("1 blob(s) of the manifest missing"), "{line}");
    assert!(reg.server.requests().is_empty(), "{:?}", reg.server.requests());
}

/// Flips one byte of a store blob: same size, other content.
fn corrupt(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    let _ = std::fs::remove_file(path);
    std::fs::write(path, b).unwrap();
}

#[test]
fn corrupt_blob_in_the_store_is_not_uploaded() {
    let f = Fixture::new();
    let path = f.blob_path(&f.big);
    corrupt(&path);
    // sent as it is, or compressed first: either way it is read and checked
    for compress in ["none", "zstd"] {
        let reg = registry(|_| None);
        let before = blob_count(&f.store);
        let (rc, err) = f.push(reg.server.port, &["--jobs", "1", "--compress", compress], &[]);
        let line = error_line(rc, &err);
        assert!(line.contains(&format!("blob {}: content has digest", path.display())), "{line}");
        assert!(line.contains(&format!("expected {}", digest_of(&f.big))), "{line}");
        // its bytes never left: no blob upload closed but the pack's
        let digest = digest_of(&f.big);
        assert!(reg.server.requests().iter().all(|r| !(r.method == "PUT" && r.path.contains(&digest))));
        assert!(!reg.has(&digest));
        let pack_sent = usize::from(reg.has(&digest_of(&f.small)));
        let held = reg.state.lock().unwrap().blobs.len();
        assert_eq!(held, pack_sent, "{compress}");
        assert!(reg.manifest_puts().is_empty());
        assert_eq!(blob_count(&f.store), before, "{compress}: something was left in the store");
    }
}

#[test]
fn corrupt_pack_member_in_the_store_is_not_uploaded() {
    let f = Fixture::new();
    let path = f.blob_path(&f.small);
    corrupt(&path);
    let reg = registry(|_| None);
    let (rc, err) = f.push(reg.server.port, &["--jobs", "1"], &[]);
    let line = error_line(rc, &err);
    assert!(line.contains(&format!("blob {}: content has digest", path.display())), "{line}");
    assert!(line.contains(&format!("expected {}", digest_of(&f.small))), "{line}");
    // the pack was not uploaded: the registry holds no blob with those bytes
    let bad = std::fs::read(&path).unwrap();
    assert!(!reg.has(&digest_of(&bad)));
    assert!(reg.manifest_puts().is_empty());
}

/// Above this a blob goes up in PATCH chunks of this size (ocix's
/// `UPLOAD_CHUNK`).
const CHUNK: usize = 8 << 20;

#[test]
fn large_blob_goes_up_in_chunks() {
    let f = Fixture::with_big(CHUNK + 1000);
    let reg = registry(|_| None);
    let (rc, err) = f.push(reg.server.port, &[], &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(reg.has(&digest_of(&f.big)));
    let ranges: Vec<String> = reg
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.header("content-range").unwrap_or("-").to_string())
        .collect();
    assert_eq!(ranges, vec![format!("0-{}", CHUNK - 1), format!("{CHUNK}-{}", CHUNK + 999)]);
    assert_eq!(reg.manifest_puts().len(), 1);
}

#[test]
fn corrupt_large_blob_upload_is_never_closed() {
    let f = Fixture::with_big(CHUNK + 1000);
    let path = f.blob_path(&f.big);
    corrupt(&path);
    let reg = registry(|_| None);
    let (rc, err) = f.push(reg.server.port, &["--jobs", "1"], &[]);
    let line = error_line(rc, &err);
    assert!(line.contains(&format!("blob {}: content has digest", path.display())), "{line}");
    // the chunks went out (the damage is found once all are read), the
    // closing PUT that would commit them under the digest did not
    assert_eq!(reg.count("PATCH", "/blobs/uploads/"), 2);
    let digest = digest_of(&f.big);
    assert!(reg.server.requests().iter().all(|r| !(r.method == "PUT" && r.path.contains(&digest))));
    assert!(!reg.has(&digest));
    assert!(reg.manifest_puts().is_empty());
}

fn blob_count(store: &Path) -> usize {
    std::fs::read_dir(store.join("blobs/sha256")).unwrap().count()
}

/// The tag's artifact, as pushed.
fn artifact(reg: &Registry) -> serde_json::Value {
    let st = reg.state.lock().unwrap();
    serde_json::from_slice(&st.manifests["v1"].1).unwrap()
}

/// A text-like file compresses: the push sends its zstd form, under the
/// compressed bytes' digest, with the content digest in the annotation;
/// the pack of the small file stays plain (one tiny frame would be larger).
/// The store keeps no compressed copy. A pull decodes it back.
#[test]
fn compressed_push_round_trips_through_a_pull() {
    let f = Fixture::new();
    let reg = registry(|_| None);
    let before = blob_count(&f.store);
    let (rc, err) = f.push(reg.server.port, &["--compress", "zstd", "-v"], &[]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(blob_count(&f.store), before, "a compressed copy was left in the store");
    let art = artifact(&reg);
    let layers = art["layers"].as_array().unwrap();
    let big = layers.iter().find(|l| l["mediaType"] == "application/vnd.ocix.file.v1+zstd").expect("{art}");
    assert_eq!(big["annotations"]["io.ocix.file.digest"], digest_of(&f.big));
    let zd = big["digest"].as_str().unwrap().to_string();
    assert_ne!(zd, digest_of(&f.big));
    let wire = reg.state.lock().unwrap().blobs[&zd].clone();
    assert_eq!(big["size"].as_u64().unwrap(), wire.len() as u64);
    assert!(wire.len() < f.big.len() / 2, "{} bytes", wire.len());
    assert_eq!(zstd::decode_all(&wire[..]).unwrap(), f.big);
    assert!(!reg.has(&digest_of(&f.big)), "the plain form was sent too");
    assert!(layers.iter().any(|l| l["mediaType"] == "application/vnd.ocix.pack.v1"), "{art}");

    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", reg.server.port);
    let dest = f.dir.path().join("dest");
    let (rc, err) = ocix(f.dir.path(), &["unpack", "-v", &src, dest.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::read(dest.join("etc/zbig")).unwrap(), f.big);
    let (rc, err) = ocix(f.dir.path(), &["diff", dest.to_str().unwrap(), f.manifest_path.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
}

/// Small files that compress go in a compressed pack: one frame each, the
/// frames' lengths annotated; a pull fetches members by range and decodes
/// each one.
#[test]
fn compressed_pack_round_trips_through_a_pull() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..40 {
        let text = format!("line {i} of a configuration file that repeats itself\n").repeat(50 + i);
        std::fs::write(tree.join(format!("f{i:02}")), text).unwrap();
    }
    let (store, m) = scan_tree(dir.path());
    let reg = registry(|_| None);
    let target = format!("docker://127.0.0.1:{}/ocix/x:v1", reg.server.port);
    let (rc, err) = ocix(dir.path(), &["push", m.to_str().unwrap(), "--store", store.to_str().unwrap(), &target], &[]);
    assert_eq!(rc, 0, "{err}");
    let art = artifact(&reg);
    let packs: Vec<&serde_json::Value> = art["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.ocix.pack.v1+zstd")
        .collect();
    assert!(!packs.is_empty(), "{art}");
    let frames: Vec<u64> = packs
        .iter()
        .flat_map(|p| p["annotations"]["io.ocix.pack.frames"].as_str().unwrap().split(',').map(|n| n.parse().unwrap()))
        .collect();
    assert_eq!(frames.len(), 40);
    let wire: u64 = packs.iter().map(|p| p["size"].as_u64().unwrap()).sum();
    assert_eq!(frames.iter().sum::<u64>(), wire);

    // half the blobs already local: only their runs are fetched
    let pulled = dir.path().join("pulled");
    std::fs::create_dir_all(pulled.join("blobs/sha256")).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(store.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names.iter().step_by(2) {
        std::fs::copy(p, pulled.join("blobs/sha256").join(p.file_name().unwrap())).unwrap();
    }
    let dest = dir.path().join("dest");
    let args = ["unpack", "-v", &target, dest.to_str().unwrap(), "--store", pulled.to_str().unwrap()];
    let (rc, err) = ocix(dir.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(reg.server.requests().iter().any(|r| r.method == "GET" && r.header("range").is_some()));
    let (rc, err) = ocix(dir.path(), &["diff", dest.to_str().unwrap(), m.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
}

/// The manifest travels compressed beside the plain layer (which readers
/// predating the compressed one use): the compressed layer names the plain
/// manifest's digest, decodes to its bytes, and is compressed as hard as
/// zstd's ordinary levels go (a lazy mount fetches it before anything
/// else; it is compressed once, at push). A pull fetches it, not the
/// plain layer.
#[test]
fn manifest_travels_compressed_beside_the_plain_layer() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for i in 0..400 {
        let d = tree.join(format!("node_modules/pkg{:02}/lib", i % 37));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("module-{i}.js")), format!("module.exports = {i};\n")).unwrap();
    }
    let (store, m) = scan_tree(dir.path());
    let plain = std::fs::read(&m).unwrap();
    let reg = registry(|_| None);
    let target = format!("docker://127.0.0.1:{}/ocix/x:v1", reg.server.port);
    let (rc, err) = ocix(dir.path(), &["push", m.to_str().unwrap(), "--store", store.to_str().unwrap(), &target], &[]);
    assert_eq!(rc, 0, "{err}");
    let art = artifact(&reg);
    let layers = art["layers"].as_array().unwrap();
    assert_eq!(layers[0]["mediaType"], "application/vnd.ocix.manifest.v1+cbor", "{art}");
    assert_eq!(layers[0]["digest"], digest_of(&plain));
    let z = layers
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.ocix.manifest.v1+cbor+zstd")
        .unwrap_or_else(|| panic!("no compressed manifest layer: {art}"));
    assert_eq!(z["annotations"]["io.ocix.manifest.digest"], digest_of(&plain));
    let zd = z["digest"].as_str().unwrap().to_string();
    let wire = reg.state.lock().unwrap().blobs[&zd].clone();
    assert_eq!(z["size"].as_u64().unwrap(), wire.len() as u64);
    assert_eq!(zstd::bulk::decompress(&wire, plain.len()).unwrap(), plain);
    let level19 = zstd::bulk::compress(&plain, 19).unwrap().len();
    assert!(wire.len() <= level19, "{} bytes compressed, level 19 gives {level19}", wire.len());
    // the lazy index and the digest table of the same manifest: the table
    // the distinct blobs' digests in manifest order, the index the tree
    // without them, rebuilding the manifest with them
    let of = |mt: &str| -> Vec<u8> {
        let l = layers.iter().find(|l| l["mediaType"] == mt).unwrap_or_else(|| panic!("no {mt} layer: {art}"));
        assert_eq!(l["annotations"]["io.ocix.manifest.digest"], digest_of(&plain));
        let bytes = reg.state.lock().unwrap().blobs[l["digest"].as_str().unwrap()].clone();
        assert_eq!(l["size"].as_u64().unwrap(), bytes.len() as u64);
        bytes
    };
    let table = of("application/vnd.ocix.digests.v1");
    let index = ocix::remote::lazyidx::Index::parse(&of("application/vnd.ocix.lazy.v1+zstd")).unwrap();
    let m = ocix::manifest::Manifest::from_bytes(&plain).unwrap();
    let blobs = ocix::remote::file_blobs(&m);
    let want: Vec<u8> = blobs.iter().flat_map(|(d, _)| d.0).collect();
    assert_eq!(table, want);
    assert_eq!(index.blobs(), blobs.len());
    let digests: Vec<_> = blobs.iter().map(|(d, _)| *d).collect();
    assert_eq!(ocix::remote::lazyidx::rebuild(&index.tree, &digests).unwrap(), plain);
    assert!(index.tree.nodes().all(|n| n.file().is_none_or(|f| f.digest.is_none_or(|d| !digests.contains(d)))));

    let dest = dir.path().join("dest");
    let (rc, err) = ocix(dir.path(), &["unpack", &target, dest.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    let gets: Vec<String> =
        reg.server.requests().iter().filter(|r| r.method == "GET").map(|r| r.path.clone()).collect();
    assert!(gets.iter().any(|p| p.ends_with(&zd)), "{gets:?}");
    let plain_get = format!("/blobs/{}", digest_of(&plain));
    assert!(!gets.iter().any(|p| p.ends_with(&plain_get)), "{gets:?}");
}

/// The fixture pushed with compression, and the registry digest of the
/// big file's zstd form.
fn pushed_compressed() -> (Fixture, Registry, String) {
    let f = Fixture::new();
    let reg = registry(|_| None);
    let (rc, err) = f.push(reg.server.port, &["--compress", "zstd"], &[]);
    assert_eq!(rc, 0, "{err}");
    let art = artifact(&reg);
    let layers = art["layers"].as_array().unwrap();
    let z = layers.iter().find(|l| l["mediaType"] == "application/vnd.ocix.file.v1+zstd").expect("a zstd layer");
    let zd = z["digest"].as_str().unwrap().to_string();
    (f, reg, zd)
}

/// The compressed blob cut off midway: the pull asks for the rest with a
/// Range from where the body stopped and goes on decoding.
#[test]
fn cut_compressed_blob_resumes_with_range() {
    let (f, reg, zd) = pushed_compressed();
    let wire = reg.state.lock().unwrap().blobs[&zd].clone();
    let cut = wire.len() / 2;
    let hits = AtomicUsize::new(0);
    let zpath = format!("/v2/ocix/x/blobs/{zd}");
    let reg2 = registry_with(
        reg.state.clone(),
        Box::new(move |r| {
            (r.method == "GET" && r.path == zpath && hits.fetch_add(1, Ordering::SeqCst) == 0)
                .then(|| Reply::Cut(200, vec![], wire.clone(), cut))
        }),
        None,
    );
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", reg2.server.port);
    let store = f.dir.path().join("pulled");
    let (rc, err) = ocix(f.dir.path(), &["pull", "-v", &src, "--store", store.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    let gets: Vec<Req> = reg2.server.requests().into_iter().filter(|r| r.path.ends_with(&zd)).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].header("range"), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(std::fs::read(store.join("blobs/sha256").join(&digest_of(&f.big)[7..])).unwrap(), f.big);
}

/// Wire bytes that do not decode to the blob: a flipped byte in a
/// compressed blob held by the registry, and a compressed blob swapped for
/// another valid frame. Refused, named, never stored.
#[test]
fn damaged_compressed_blobs_are_refused() {
    let (f, reg, zd) = pushed_compressed();
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", reg.server.port);
    let good = reg.state.lock().unwrap().blobs[&zd].clone();
    let mut other = f.big.clone();
    other[1000] ^= 0xff;
    let mut swapped = zstd::bulk::compress(&other, 3).unwrap();
    swapped.resize(good.len(), 0); // the size the artifact says, trailing junk
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x55;
    for (k, bad) in [flipped, swapped].into_iter().enumerate() {
        reg.state.lock().unwrap().blobs.insert(zd.clone(), bad);
        let store = f.dir.path().join(format!("bad{k}"));
        let (rc, err) = ocix(f.dir.path(), &["pull", &src, "--store", store.to_str().unwrap(), "--retries", "0"], &[]);
        assert_eq!(rc, 2, "{err}");
        assert!(err.contains(&zd), "{err}");
        assert!(err.contains("not stored"), "{err}");
        assert!(!store.join("blobs/sha256").join(&digest_of(&f.big)[7..]).exists());
        assert!(!err.contains("panicked"), "{err}");
    }
}

// ---- two pushes of one store at once ----

use common::{Gate, file_entry, manifest};
use ocix::store::Store;

/// A registry whose first blob HEAD runs `at_head` before it is answered.
fn push_registry(at_head: impl Fn() + Send + Sync + 'static) -> common::net::Server {
    let heads = AtomicUsize::new(0);
    registry(move |req| {
        if req.method == "HEAD" && req.path.contains("/blobs/sha256:") && heads.fetch_add(1, Ordering::SeqCst) == 0 {
            at_head();
        }
        None
    })
    .server
}

/// Two pushes of one store (to two registries, say) at the same time: the
/// compressed form of a blob is named in the store by the first push and
/// found there by the second, which therefore keeps it; the first then
/// removes it when its upload is done, and the second, about to upload
/// it, finds it gone. A push must not remove a store blob that another
/// user of the store may still rely on.
#[test]
fn two_pushes_of_one_store_at_once_both_complete() {
    use ocix::remote::{PushOptions, Reference, push};
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store")).unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| b"compressible text "[(i % 18) as usize]).collect();
    store.put_bytes(&content).unwrap();
    let m = manifest(vec![(b"a", file_entry(&content))]).to_bytes().unwrap();
    let (p1_at_head, p2_at_head, p1_done) = (Gate::default(), Gate::default(), Gate::default());
    let (a, b) = (p1_at_head.clone(), p2_at_head.clone());
    let r1 = push_registry(move || {
        a.open();
        b.wait();
    });
    let (b, c) = (p2_at_head.clone(), p1_done.clone());
    let r2 = push_registry(move || {
        b.open();
        c.wait();
    });
    let opts = PushOptions { pack_threshold: 0, ..PushOptions::default() };
    let target =
        |s: &common::net::Server| Reference::parse(&format!("docker://127.0.0.1:{}/ocix/x:v1", s.port)).unwrap();
    let (first, second) = std::thread::scope(|sc| {
        let one = sc.spawn(|| {
            let r = push(&m, &store, &target(&r1), &opts);
            p1_done.open();
            r
        });
        // the second starts once the first has compressed (and named) the blob
        p1_at_head.wait();
        let two = sc.spawn(|| push(&m, &store, &target(&r2), &opts));
        (one.join().unwrap(), two.join().unwrap())
    });
    let first = first.unwrap();
    assert_eq!(first.compressed, 1, "the blob was not sent compressed");
    let second = second.map_err(|e| e.to_string());
    assert!(second.is_ok(), "the second push failed: {}", second.unwrap_err());
}
