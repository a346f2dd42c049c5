//! `ocix pull` and `ocix unpack docker://` against small HTTP servers (on
//! the harness in tests/common/net.rs), real TCP servers on 127.0.0.1 that
//! misbehave on purpose in ways a real registry or web
//! server cannot be made to on demand: a server that accepts and never
//! answers, one that answers 500, bytes that do not match their digest, a
//! body cut off midway (resumed with Range), a Range ignored, a body too
//! long, a wrong Docker-Content-Digest, and the bearer-token challenge flow.
//! (tests/common/registry.rs is the registry; integration/t-registry.sh
//! runs the real docker-registry.) Every ocix run
//! is bounded: killed and failed if it takes over 60 s.

mod common;

use base64::Engine as _;
use common::Gate;
use common::net::{Reply, Req, Server, artifact_json, hex_of, ocix, ok, range_reply, scan_tree, serve};
use common::registry::State;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small tree scanned into a store: (tempdir, store, manifest bytes,
/// manifest hex, big file content, its hex).
struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
    manifest: Vec<u8>,
    mhex: String,
    big: Vec<u8>,
    bhex: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(tree.join("etc/zbig"), &big).unwrap();
    std::fs::write(tree.join("etc/small"), b"small file\n").unwrap();
    let (store, m) = scan_tree(dir.path());
    let manifest = std::fs::read(&m).unwrap();
    let mhex = hex_of(&manifest);
    let bhex = hex_of(&big);
    Fixture { dir, store, manifest, mhex, big, bhex }
}

/// A static store server: the fixture's blobs and its manifest, with
/// `special` deciding first for the big blob (given the request and its
/// count of requests for that blob).
fn static_store(f: &Fixture, special: impl Fn(&Req, usize) -> Option<Reply> + Send + Sync + 'static) -> Server {
    let store = f.store.clone();
    let (manifest, mhex, bhex) = (f.manifest.clone(), f.mhex.clone(), f.bhex.clone());
    let big_hits = Arc::new(Mutex::new(0usize));
    serve(move |req| {
        let Some(hex) = req.path.strip_prefix("/blobs/sha256/") else { return Reply::Full(404, vec![], vec![]) };
        if hex == mhex {
            return ok(manifest.clone());
        }
        if hex == bhex {
            let n = {
                let mut h = big_hits.lock().unwrap();
                *h += 1;
                *h
            };
            if let Some(r) = special(req, n) {
                return r;
            }
        }
        match std::fs::read(store.join("blobs/sha256").join(hex)) {
            Ok(b) => ok(b),
            Err(_) => Reply::Full(404, vec![], vec![]),
        }
    })
}

fn pull_static(f: &Fixture, s: &Server, dest: &str) -> (i32, String, PathBuf) {
    let store = f.dir.path().join(dest);
    let md = format!("sha256:{}", f.mhex);
    let (rc, err) = ocix(
        f.dir.path(),
        &[
            "pull",
            "-v",
            &s.url(),
            "--manifest",
            &md,
            "--store",
            store.to_str().unwrap(),
            "--timeout",
            "5",
            "--retries",
            "2",
        ],
        &[],
    );
    (rc, err, store)
}

#[test]
fn static_store_pull_fetches_every_blob() {
    let f = fixture();
    let s = static_store(&f, |_, _| None);
    let (rc, err, store) = pull_static(&f, &s, "out");
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("2 blobs, 2 fetched"), "{err}");
    assert_eq!(std::fs::read(store.join("blobs/sha256").join(&f.bhex)).unwrap(), f.big);
}

#[test]
fn wrong_bytes_are_rejected_and_not_stored() {
    let f = fixture();
    let mut bad = f.big.clone();
    bad[1000] ^= 0xff;
    let s = static_store(&f, move |_, _| Some(ok(bad.clone())));
    let (rc, err, store) = pull_static(&f, &s, "out");
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains(&format!("expected sha256:{} (not stored)", f.bhex)), "{err}");
    assert!(!store.join("blobs/sha256").join(&f.bhex).exists());
    // wrong bytes are not a transient failure: asked for once
    assert_eq!(s.requests().iter().filter(|r| r.path.contains(&f.bhex)).count(), 1);
}

#[test]
fn body_too_long_is_rejected() {
    let f = fixture();
    let mut long = f.big.clone();
    long.extend_from_slice(b"trailing");
    let s = static_store(&f, move |_, _| Some(ok(long.clone())));
    let (rc, err, store) = pull_static(&f, &s, "out");
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains(&format!("expected {}", f.big.len())), "{err}");
    assert!(!store.join("blobs/sha256").join(&f.bhex).exists());
}

#[test]
fn cut_body_resumes_with_range() {
    let f = fixture();
    let big = f.big.clone();
    let half = big.len() / 2;
    let s = static_store(&f, move |req, n| {
        if n == 1 {
            return Some(Reply::Cut(200, vec![], big.clone(), half));
        }
        let from: usize = req.header("range")?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()?;
        let cr = format!("bytes {from}-{}/{}", big.len() - 1, big.len());
        Some(Reply::Full(206, vec![("Content-Range".into(), cr)], big[from..].to_vec()))
    });
    let (rc, err, store) = pull_static(&f, &s, "out");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::read(store.join("blobs/sha256").join(&f.bhex)).unwrap(), f.big);
    let ranges: Vec<String> = s
        .requests()
        .iter()
        .filter(|r| r.path.contains(&f.bhex))
        .map(|r| r.header("range").unwrap_or("-").to_string())
        .collect();
    assert_eq!(ranges, vec!["-".to_string(), format!("bytes={half}-")]);
    // bytes received: the half, then the rest, not the whole blob twice
    assert!(err.contains(&format!("({} bytes)", f.big.len() + "small file\n".len())), "{err}");
}

#[test]
fn ignored_range_restarts_the_blob() {
    let f = fixture();
    let big = f.big.clone();
    let s = static_store(&f, move |_, n| {
        Some(if n == 1 { Reply::Cut(200, vec![], big.clone(), 1000) } else { ok(big.clone()) })
    });
    let (rc, err, store) = pull_static(&f, &s, "out");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::read(store.join("blobs/sha256").join(&f.bhex)).unwrap(), f.big);
}

#[test]
fn stalled_server_fails_within_the_timeout() {
    let s = serve(|_| Reply::Stall);
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let store = dir.path().join("s");
    let (rc, err) =
        ocix(dir.path(), &["pull", &src, "--store", store.to_str().unwrap(), "--timeout", "1", "--retries", "1"], &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("timed out (no answer within 1 s)"), "{err}");
    assert_eq!(s.requests().len(), 2, "one try and one retry");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn server_error_is_retried_then_reported() {
    let s = serve(|_| Reply::Full(500, vec![], br#"{"errors":[{"code":"UNKNOWN","message":"boom"}]}"#.to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let store = dir.path().join("s");
    let (rc, err) = ocix(dir.path(), &["pull", &src, "--store", store.to_str().unwrap(), "--retries", "2"], &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("500 Internal Server Error: UNKNOWN boom"), "{err}");
    assert_eq!(s.requests().len(), 3, "one try and two retries");
}

#[test]
fn not_found_is_not_retried() {
    let s = serve(|_| Reply::Full(404, vec![], vec![]));
    let dir = tempfile::tempdir().unwrap();
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let store = dir.path().join("s");
    let (rc, err) = ocix(dir.path(), &["pull", &src, "--store", store.to_str().unwrap()], &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("/v2/ocix/x/manifests/v1: 404 Not Found"), "{err}");
    assert_eq!(s.requests().len(), 1);
}

/// The OCI artifact that tags an ocix manifest (as `ocix push` writes it),
/// with a Docker-Content-Digest header that tells the truth unless
/// `wrong_digest_header`.
fn artifact_reply(manifest: &[u8], wrong_digest_header: bool) -> Reply {
    let body = artifact_json(manifest, Vec::new(), serde_json::Value::Null);
    let d = if wrong_digest_header { hex_of(b"other") } else { hex_of(&body) };
    Reply::Full(
        200,
        vec![
            ("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()),
            ("Docker-Content-Digest".into(), format!("sha256:{d}")),
        ],
        body,
    )
}

/// The registry of tests/common/registry.rs serving the fixture as
/// `ocix/x:v1` behind bearer-token auth; `wrong_digest_header` makes it lie
/// about the manifest's digest.
fn token_registry(f: &Fixture, wrong_digest_header: bool) -> Server {
    let mut st = State::default();
    st.add_store(&f.store);
    st.add_artifact("v1", &f.manifest, Vec::new(), serde_json::Value::Null);
    let manifest = f.manifest.clone();
    let port = Arc::new(Mutex::new(0u16));
    let port2 = port.clone();
    let auth = move |req: &Req| {
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:pw"));
        if req.path.starts_with("/token?") {
            return Some(if req.header("authorization") == Some(basic.as_str()) {
                ok(br#"{"token":"tok-123"}"#.to_vec())
            } else {
                Reply::Full(401, vec![], vec![])
            });
        }
        if req.header("authorization") != Some("Bearer tok-123") {
            let realm = format!(
                r#"Bearer realm="http://127.0.0.1:{}/token",service="test-registry",scope="repository:ocix/x:pull""#,
                port2.lock().unwrap()
            );
            return Some(Reply::Full(401, vec![("WWW-Authenticate".into(), realm)], vec![]));
        }
        (wrong_digest_header && req.path == "/v2/ocix/x/manifests/v1").then(|| artifact_reply(&manifest, true))
    };
    let s = common::registry::registry_with(Arc::new(Mutex::new(st)), Box::new(auth), None).server;
    *port.lock().unwrap() = s.port;
    s
}

#[test]
fn bearer_token_flow_with_auth_json() {
    let f = fixture();
    let s = token_registry(&f, false);
    let auth = f.dir.path().join("auth.json");
    let host = format!("127.0.0.1:{}", s.port);
    let enc = base64::engine::general_purpose::STANDARD.encode("alice:pw");
    std::fs::write(&auth, format!(r#"{{"auths":{{"{host}":{{"auth":"{enc}"}}}}}}"#)).unwrap();
    let src = format!("docker://{host}/ocix/x:v1");
    let store = f.dir.path().join("pulled");
    let out = f.dir.path().join("m2.ocix");
    let args = ["pull", "-v", &src, "--store", store.to_str().unwrap(), "-o", out.to_str().unwrap()];
    let (rc, err) = ocix(f.dir.path(), &args, &[("REGISTRY_AUTH_FILE", &auth)]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), f.manifest);
    assert!(err.contains("2 blobs, 2 fetched"), "{err}");
    let tokens: Vec<Req> = s.requests().into_iter().filter(|r| r.path.starts_with("/token?")).collect();
    assert!(!tokens.is_empty());
    assert!(tokens[0].path.contains("service=test-registry"), "{}", tokens[0].path);
    assert!(tokens[0].path.contains("scope=repository%3Aocix%2Fx%3Apull"), "{}", tokens[0].path);

    // no credentials: the token service refuses, and the error says where
    // credentials were looked for
    let (rc, err) = ocix(f.dir.path(), &["pull", &src, "--store", f.dir.path().join("anon").to_str().unwrap()], &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("401 Unauthorized: the token service"), "{err}");
    assert!(err.contains("refused anonymous access; no credentials for"), "{err}");
    assert!(err.contains("no-auth.json"), "{err}");
}

#[test]
fn lying_digest_header_is_caught() {
    let f = fixture();
    let s = token_registry(&f, true);
    let auth = f.dir.path().join("auth.json");
    let host = format!("127.0.0.1:{}", s.port);
    std::fs::write(&auth, format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"pw"}}}}}}"#)).unwrap();
    let src = format!("docker://{host}/ocix/x:v1");
    let store = f.dir.path().join("pulled");
    let (rc, err) =
        ocix(f.dir.path(), &["pull", &src, "--store", store.to_str().unwrap()], &[("REGISTRY_AUTH_FILE", &auth)]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains(&format!("Docker-Content-Digest sha256:{}", hex_of(b"other"))), "{err}");
}

#[test]
fn prefetch_paths_come_first() {
    let f = fixture();
    let s = static_store(&f, |_, _| None);
    let list = f.dir.path().join("prefetch");
    std::fs::write(&list, "/etc/zbig\nno/such/file\n").unwrap();
    let store = f.dir.path().join("out");
    let md = format!("sha256:{}", f.mhex);
    let args = [
        "pull",
        &s.url(),
        "--manifest",
        &md,
        "--store",
        store.to_str().unwrap(),
        "--jobs",
        "1",
        "--prefetch",
        list.to_str().unwrap(),
    ];
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("prefetch: /no/such/file is no file with content"), "{err}");
    let blobs: Vec<String> = s.requests().iter().map(|r| r.path.clone()).filter(|p| !p.contains(&f.mhex)).collect();
    assert_eq!(blobs.len(), 2);
    assert!(blobs[0].ends_with(&f.bhex), "{blobs:?}");
}

/// A tree of 60 files of 1000 bytes each, pushed as packs: the server
/// serves an artifact with pack layers built by the library's own plan.
/// A pack: its hex digest, its bytes, its members (hex digest, size).
type PackBlob = (String, Vec<u8>, Vec<(String, u64)>);

struct PackFixture {
    f: Fixture,
    packs: Vec<PackBlob>,
}

fn pack_fixture() -> PackFixture {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..60u32 {
        let data: Vec<u8> = (0..1000u32).map(|j| (i * 7 + j) as u8).collect();
        std::fs::write(tree.join(format!("f{i:03}")), data).unwrap();
    }
    let (store, m) = scan_tree(dir.path());
    let manifest = std::fs::read(&m).unwrap();
    let parsed = ocix::manifest::Manifest::from_bytes(&manifest).unwrap();
    let files = ocix::remote::file_blobs(&parsed);
    let (plan, singles) = ocix::remote::pack::plan(&files, ocix::remote::pack::DEFAULT_THRESHOLD);
    assert!(singles.is_empty());
    let packs = plan
        .iter()
        .map(|p| {
            let mut bytes = Vec::new();
            for (d, _) in p {
                bytes.extend(std::fs::read(store.join("blobs/sha256").join(d.hex())).unwrap());
            }
            (hex_of(&bytes), bytes, p.iter().map(|(d, s)| (d.hex(), *s)).collect())
        })
        .collect();
    let mhex = hex_of(&manifest);
    PackFixture { f: Fixture { dir, store, manifest, mhex, big: Vec::new(), bhex: String::new() }, packs }
}

/// Serves the pack artifact; `mangle` may replace the first pack's reply
/// (given the request, the count of requests for it, and its bytes).
fn pack_registry(
    p: &PackFixture,
    mangle: impl Fn(&Req, usize, &[u8]) -> Option<Reply> + Send + Sync + 'static,
) -> Server {
    let mut st = State::default();
    let mut layers = Vec::new();
    for (h, b, m) in &p.packs {
        layers.push(serde_json::json!({"mediaType": "application/vnd.ocix.pack.v1",
            "digest": format!("sha256:{h}"), "size": b.len(),
            "annotations": {"io.ocix.pack.count": m.len().to_string()}}));
        st.add_blob(b.clone());
    }
    st.add_artifact("v1", &p.f.manifest, layers, serde_json::json!({"io.ocix.pack.threshold": "262144"}));
    let first = format!("/v2/ocix/p/blobs/sha256:{}", p.packs[0].0);
    let bytes = p.packs[0].1.clone();
    let hits = Arc::new(Mutex::new(0usize));
    let fault = move |req: &Req| {
        if req.path != first {
            return None;
        }
        let n = {
            let mut h = hits.lock().unwrap();
            *h += 1;
            *h
        };
        mangle(req, n, &bytes)
    };
    common::registry::registry_with(Arc::new(Mutex::new(st)), Box::new(fault), None).server
}

fn pull_packs(p: &PackFixture, s: &Server) -> (i32, String, PathBuf) {
    let store = p.f.dir.path().join("pulled");
    let src = format!("docker://127.0.0.1:{}/ocix/p:v1", s.port);
    let args = ["pull", "-v", &src, "--store", store.to_str().unwrap(), "--timeout", "5", "--retries", "2"];
    let (rc, err) = ocix(p.f.dir.path(), &args, &[]);
    (rc, err, store)
}

#[test]
fn pack_cut_midway_resumes_at_the_first_unfinished_member() {
    let p = pack_fixture();
    let s = pack_registry(&p, |req, n, bytes| {
        (n == 1).then(|| {
            let mut r = range_reply(req, bytes);
            if let Reply::Full(st, h, b) = r {
                r = Reply::Cut(st, h, b, 10_500);
            }
            r
        })
    });
    let (rc, err, store) = pull_packs(&p, &s);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("60 blobs, 60 fetched"), "{err}");
    let first = &p.packs[0];
    let ranges: Vec<String> = s
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&first.0))
        .map(|r| r.header("range").unwrap_or("-").to_string())
        .collect();
    let end = first.1.len() - 1;
    // the cut fell inside member 10 (1000 bytes each): resume at its start
    assert_eq!(ranges, vec![format!("bytes=0-{end}"), format!("bytes=10000-{end}")]);
    for (hex, _) in &first.2 {
        assert!(store.join("blobs/sha256").join(hex).exists());
    }
}

#[test]
fn pack_member_with_wrong_bytes_is_rejected() {
    let p = pack_fixture();
    let s = pack_registry(&p, |req, _, bytes| {
        let mut b = bytes.to_vec();
        b[5_500] ^= 0xff;
        Some(range_reply(req, &b))
    });
    let (rc, err, store) = pull_packs(&p, &s);
    assert_eq!(rc, 2, "{err}");
    let members = &p.packs[0].2;
    assert!(err.contains("(bytes 5000..6000): content has digest"), "{err}");
    assert!(err.contains(&format!("expected sha256:{} (not stored)", members[5].0)), "{err}");
    assert!(!store.join("blobs/sha256").join(&members[5].0).exists());
    // the members before it were whole and verified: kept
    for (hex, _) in &members[..5] {
        assert!(store.join("blobs/sha256").join(hex).exists());
    }
    // a rerun against a repaired server fetches only the rest, with Range
    let s2 = pack_registry(&p, |_, _, _| None);
    let (rc, err, _) = pull_packs(&p, &s2);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("60 blobs, 55 fetched"), "{err}");
    let r = s2.requests().into_iter().find(|r| r.path.ends_with(&p.packs[0].0)).unwrap();
    assert_eq!(r.header("range").map(str::to_owned), Some(format!("bytes=5000-{}", members.len() * 1000 - 1)));
}

/// An anonymous registry serving the fixture as `ocix/x:v1`; `big` decides
/// first for the big blob (given the request).
fn plain_registry(f: &Fixture, big: impl Fn(&Req) -> Option<Reply> + Send + Sync + 'static) -> Server {
    let mut st = State::default();
    st.add_store(&f.store);
    st.add_artifact("v1", &f.manifest, Vec::new(), serde_json::Value::Null);
    let big_path = format!("/v2/ocix/x/blobs/sha256:{}", f.bhex);
    let fault = move |req: &Req| if req.path == big_path { big(req) } else { None };
    common::registry::registry_with(Arc::new(Mutex::new(st)), Box::new(fault), None).server
}

/// Whether `ocix diff` finds `dest` identical to the manifest `m`.
fn diff_clean(dir: &Path, dest: &Path, m: &Path) -> bool {
    let (rc, err) = ocix(dir, &["diff", dest.to_str().unwrap(), m.to_str().unwrap()], &[]);
    assert!(rc == 0 || rc == 1, "{err}");
    rc == 0
}

#[test]
fn unpack_writes_files_while_blobs_are_still_arriving() {
    let f = fixture();
    let gate = Gate::default();
    let g2 = gate.clone();
    let s = plain_registry(&f, move |_| {
        g2.wait();
        None
    });
    let dest = f.dir.path().join("dest");
    let store = f.dir.path().join("cache");
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let err = f.dir.path().join("unpack.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocix"))
        .args(["unpack", "-v", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap()])
        .env("HOME", f.dir.path().join("home"))
        .env("REGISTRY_AUTH_FILE", f.dir.path().join("no-auth.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // the small file must appear, with its content, under its final name
    // while the big blob is still held back by the server
    let start = Instant::now();
    let small = dest.join("etc/small");
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(30) {
        if std::fs::read(&small).is_ok_and(|b| b == b"small file\n") {
            seen = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let early_big = dest.join("etc/zbig").exists();
    gate.open();
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "{err}");
    assert!(seen, "etc/small was not written before the big blob arrived: {err}");
    assert!(!early_big, "etc/zbig existed before its blob was sent");
    assert_eq!(std::fs::read(dest.join("etc/zbig")).unwrap(), f.big);
    assert!(err.contains("2 blobs, 2 fetched"), "{err}");
    let m = f.dir.path().join("m.ocix");
    assert!(diff_clean(f.dir.path(), &dest, &m));
}

#[test]
fn unpack_without_a_store_leaves_no_store_and_no_shared_inodes() {
    let f = fixture();
    let s = plain_registry(&f, |_| None);
    let parent = f.dir.path().join("out");
    let dest = parent.join("rootfs");
    let saved = f.dir.path().join("pulled.ocix");
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let (rc, err) = ocix(f.dir.path(), &["unpack", &src, dest.to_str().unwrap(), "-o", saved.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    // the temporary store beside DEST is gone; only DEST is left
    let names: Vec<_> = std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("rootfs")]);
    assert_eq!(std::fs::read(&saved).unwrap(), f.manifest);
    use std::os::unix::fs::MetadataExt as _;
    for p in ["etc/small", "etc/zbig"] {
        assert_eq!(std::fs::metadata(dest.join(p)).unwrap().nlink(), 1, "{p}");
    }
    assert_eq!(std::fs::read(dest.join("etc/zbig")).unwrap(), f.big);
    assert!(diff_clean(f.dir.path(), &dest, &saved));
}

#[test]
fn unpack_stops_when_a_blob_cannot_be_fetched_and_the_rerun_fetches_only_the_rest() {
    let f = fixture();
    let missing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let m2 = missing.clone();
    let s = plain_registry(&f, move |_| {
        m2.load(std::sync::atomic::Ordering::SeqCst).then(|| Reply::Full(404, vec![], vec![]))
    });
    let dest = f.dir.path().join("dest");
    let store = f.dir.path().join("cache");
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let args = ["unpack", "-v", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap(), "--retries", "0"];
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains(&format!("pulling {src}")), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(err.contains(&f.bhex), "{err}");
    // DEST did not exist before: nothing half-made is left under it; the
    // small blob fetched is kept, the big one never stored
    assert!(!dest.exists(), "{err}");
    assert!(store.join("blobs/sha256").join(hex_of(b"small file\n")).exists());
    assert!(!store.join("blobs/sha256").join(&f.bhex).exists());

    missing.store(false, std::sync::atomic::Ordering::SeqCst);
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("2 blobs, 1 fetched"), "{err}");
    assert!(diff_clean(f.dir.path(), &dest, &f.dir.path().join("m.ocix")));
}

#[test]
fn unpack_refuses_a_non_empty_dest_before_any_request() {
    let f = fixture();
    let s = plain_registry(&f, |_| None);
    let dest = f.dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), b"mine").unwrap();
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let (rc, err) = ocix(f.dir.path(), &["unpack", &src, dest.to_str().unwrap()], &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("destination is not empty"), "{err}");
    assert!(s.requests().is_empty(), "{:?}", s.requests());
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"mine");
    let stray: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("ocix-store"))
        .collect();
    assert!(stray.is_empty());
}

/// `unpack --update docker://` on a tree that drifted: the blobs the store
/// already has are not fetched again, the changed file is rewritten from
/// the pulled blob, an extra file removed, and the tree matches again.
#[test]
fn unpack_update_from_a_registry_repairs_drift() {
    let f = fixture();
    let s = plain_registry(&f, |_| None);
    let dest = f.dir.path().join("dest");
    let store = f.dir.path().join("cache");
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let args = ["unpack", "-v", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap()];
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    std::fs::write(dest.join("etc/zbig"), b"edited").unwrap();
    std::fs::write(dest.join("etc/extra"), b"not in the manifest").unwrap();
    let m = f.dir.path().join("m.ocix");
    assert!(!diff_clean(f.dir.path(), &dest, &m));
    // without --update the drifted tree is refused, untouched
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("destination is not empty"), "{err}");
    assert_eq!(std::fs::read(dest.join("etc/extra")).unwrap(), b"not in the manifest");
    let before = s.requests().len();
    let mut upd = args.to_vec();
    upd.push("--update");
    let (rc, err) = ocix(f.dir.path(), &upd, &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("2 blobs, 0 fetched"), "{err}");
    assert!(s.requests()[before..].iter().all(|r| !r.path.contains("/blobs/") || r.path.contains(&f.mhex)));
    assert!(!dest.join("etc/extra").exists());
    assert!(diff_clean(f.dir.path(), &dest, &m));
}

// ---------------------------------------------------------------- xattr policy: overlay xattrs

/// `unpack docker://` of a pushed manifest holding an overlay xattr (a scan
/// of an overlay's upper directory): refused before DEST is touched, an
/// existing empty DEST is left as it was and not called partly unpacked;
/// `--allow-overlay-xattrs` writes it.
#[test]
fn unpack_from_a_registry_refuses_overlay_xattrs_before_writing() {
    assert!(rustix::process::geteuid().is_root(), "trusted.* xattrs need root");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(tree.join("etc/zbig"), &big).unwrap();
    std::fs::write(tree.join("etc/small"), b"small file\n").unwrap();
    rustix::fs::setxattr(tree.join("etc"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).unwrap();
    let (store, m) = scan_tree(dir.path());
    let manifest = std::fs::read(&m).unwrap();
    let f = Fixture { mhex: hex_of(&manifest), bhex: hex_of(&big), dir, store, manifest, big };
    let s = plain_registry(&f, |_| None);
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let absent = f.dir.path().join("absent");
    let empty = f.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for dest in [&absent, &empty] {
        let (rc, err) = ocix(f.dir.path(), &["unpack", &src, dest.to_str().unwrap()], &[]);
        assert_eq!(rc, 2, "{err}");
        assert!(err.contains("entry /etc: xattr trusted.overlay.opaque"), "{err}");
        assert!(err.contains("--allow-overlay-xattrs") && !err.contains("partly unpacked"), "{err}");
    }
    assert!(!absent.exists());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    let stray: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("ocix-store"))
        .collect();
    assert!(stray.is_empty());
    let (rc, err) = ocix(f.dir.path(), &["unpack", &src, absent.to_str().unwrap(), "--allow-overlay-xattrs"], &[]);
    assert_eq!(rc, 0, "{err}");
    let mut buf = [0u8; 16];
    let n = rustix::fs::lgetxattr(absent.join("etc"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert_eq!(std::fs::read(absent.join("etc/zbig")).unwrap(), f.big);
}

// ---------------------------------------------------------------- unpack docker:// while blobs arrive

use common::{file_entry, manifest};
use ocix::manifest::{Entry, Kind};

/// The registry serving one ocix manifest as `ocix/x:v1` (no packs, every
/// file blob a layer of its own, served from `blobs`); `hold` runs before a
/// blob is answered (given its hex).
fn registry(
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    hold: impl Fn(&str) + Send + Sync + 'static,
) -> common::net::Server {
    registry_with(manifest, blobs, Vec::new(), hold)
}

/// [`registry`] with `extra` layers listed after the blobs'.
fn registry_with(
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    extra: Vec<serde_json::Value>,
    hold: impl Fn(&str) + Send + Sync + 'static,
) -> common::net::Server {
    let mut st = State::default();
    let mut layers = Vec::new();
    let mut held = Vec::new();
    for b in blobs {
        layers.push(serde_json::json!({"mediaType": "application/vnd.ocix.file.v1",
            "digest": format!("sha256:{}", hex_of(&b)), "size": b.len()}));
        held.push(hex_of(&b));
        st.add_blob(b);
    }
    layers.extend(extra);
    st.add_artifact("v1", &manifest, layers, serde_json::Value::Null);
    let fault = move |req: &Req| {
        let hex = req.path.strip_prefix("/v2/ocix/x/blobs/sha256:")?;
        if held.iter().any(|h| h == hex) {
            hold(hex);
        }
        None
    };
    common::registry::registry_with(Arc::new(Mutex::new(st)), Box::new(fault), None).server
}

/// When the unpack fails while the pull still has blobs to start, the pull
/// is cancelled and returns `Cancelled`; the error the user sees must still
/// be the unpack's (what is actually wrong), not only "stopped: N blob(s)
/// transferred".
#[test]
fn an_unpack_failure_is_reported_not_hidden_behind_the_cancelled_pull() {
    assert!(common::is_root(), "a user.* xattr on a symlink fails only as root");
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let (one, two) = (vec![b'1'; 5000], vec![b'2'; 6000]);
    // "a" fails the unpack (root cannot set user.* on a symlink) before the
    // files are reached
    let mut l = Entry::new(Kind::Symlink(b"target".to_vec()));
    l.meta.xattrs.insert(b"user.x".to_vec(), b"v".to_vec());
    let m = manifest(vec![(b"a", l), (b"b", file_entry(&one)), (b"c", file_entry(&two))]);
    let first = common::net::hex_of(&one);
    let d2 = dest.clone();
    // the first blob is held until the unpack has started (DEST made) and
    // had time to fail; the second is asked for only after it (--jobs 1)
    let s = registry(m.to_bytes().unwrap(), vec![one.clone(), two.clone()], move |hex| {
        if hex == first {
            while !d2.exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let store = t.path().join("cache");
    let (rc, err) = common::net::ocix(
        t.path(),
        &["unpack", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap(), "--jobs", "1"],
        &[],
    );
    assert_ne!(rc, 0, "{err}");
    assert!(err.contains("user.x"), "the unpack's error is not reported: {err}");
}

/// Without --store the blobs become the files (`--link` on a temporary
/// store): the first file with a content takes its blob, and its metadata.
/// A second file with the same content is copied from that blob; if the
/// first one's mode denies reading (0o000), a rootless unpack can no longer
/// read the blob and fails on a tree it unpacks fine with --store.
#[test]
fn rootless_unpack_without_a_store_copes_with_an_unreadable_first_copy() {
    assert!(common::is_root(), "drops privileges with setpriv");
    let t = tempfile::tempdir().unwrap();
    common::chmod(t.path(), 0o777);
    let x = vec![b'x'; 5000];
    let mut a = file_entry(&x);
    a.meta.mode = 0o000;
    let mut b = file_entry(&x);
    b.meta.mode = 0o644;
    let m = manifest(vec![(b"a", a), (b"b", b)]);
    let s = registry(m.to_bytes().unwrap(), vec![x.clone()], |_| {});
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    for store in [true, false] {
        let dest = t.path().join(format!("dest-{store}"));
        let cache = t.path().join("cache");
        let mut args = vec!["unpack".to_string(), src.clone(), dest.display().to_string(), "--threads=1".into()];
        if store {
            args.extend(["--store".into(), cache.display().to_string()]);
        }
        let out = common::ocix_as_nobody()
            .args(&args)
            .env("HOME", t.path().join("home"))
            .env("REGISTRY_AUTH_FILE", t.path().join("no-auth.json"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "with store {store}: {err}");
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), x, "with store {store}");
    }
}

/// The registry size of a compressed file blob is the artifact's say, any
/// u64: two of them claiming u64::MAX must give an error naming the blob,
/// not an overflow (a panic in the pull thread) while adding up the bytes
/// to fetch.
#[test]
fn huge_compressed_sizes_in_the_artifact_are_an_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let (one, two) = (vec![b'1'; 5000], vec![b'2'; 6000]);
    let m = manifest(vec![(b"b", file_entry(&one)), (b"c", file_entry(&two))]);
    let z = |content: &[u8]| {
        let frame = zstd::bulk::compress(content, 3).unwrap();
        serde_json::json!({"mediaType": "application/vnd.ocix.file.v1+zstd",
            "digest": common::net::digest_of(&frame), "size": u64::MAX,
            "annotations": {"io.ocix.file.digest": common::net::digest_of(content)}})
    };
    let s = registry_with(m.to_bytes().unwrap(), vec![], vec![z(&one), z(&two)], |_| {});
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let dest = t.path().join("dest");
    let store = t.path().join("cache");
    let (rc, err) = common::net::ocix(
        t.path(),
        &["unpack", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap(), "--retries", "0"],
        &[],
    );
    assert_ne!(rc, 0, "{err}");
    assert!(!err.contains("panic"), "{err}");
    assert!(err.contains("/v2/ocix/x/blobs/sha256:"), "the error names no blob URL: {err}");
}

/// `unpack_remote` says "A DEST this run created is removed on failure";
/// with --update on an absent DEST it was left half-made (and without the
/// "partly unpacked" hint either).
#[test]
fn a_dest_created_by_a_failed_update_run_is_removed() {
    let t = tempfile::tempdir().unwrap();
    let (one, two) = (vec![b'1'; 5000], vec![b'2'; 6000]);
    let m = manifest(vec![(b"b", file_entry(&one)), (b"c", file_entry(&two))]);
    // the second blob is not served: 404
    let s = registry(m.to_bytes().unwrap(), vec![one.clone()], |_| {});
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let dest = t.path().join("dest");
    let store = t.path().join("cache");
    let args =
        ["unpack", "--update", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap(), "--retries", "0"];
    let (rc, err) = common::net::ocix(t.path(), &args, &[]);
    assert_ne!(rc, 0, "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(!dest.exists(), "a DEST this run created was left after it failed: {err}");
    // the blob fetched stays in --store for the rerun
    assert!(store.join("blobs/sha256").join(common::net::hex_of(&one)).exists());
}

/// "Whichever fails first stops the other": an unpack that fails while a
/// writer waits for a blob must stop the pull then, not once that blob
/// has arrived. Here the writer waits for the blob fetched last (the
/// others are --prefetch'ed); the unpack fails during the first fetch, so
/// no later blob may be asked for.
#[test]
fn an_unpack_failure_stops_the_pull_while_a_writer_waits() {
    assert!(common::is_root(), "a user.* xattr on a symlink fails only as root");
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let (a, b, c) = (vec![b'a'; 5000], vec![b'b'; 6000], vec![b'c'; 7000]);
    let mut l = Entry::new(Kind::Symlink(b"target".to_vec()));
    l.meta.xattrs.insert(b"user.x".to_vec(), b"v".to_vec());
    let m = manifest(vec![(b"a", file_entry(&a)), (b"b", file_entry(&b)), (b"c", file_entry(&c)), (b"z", l)]);
    let first = common::net::hex_of(&b);
    let d2 = dest.clone();
    let s = registry(m.to_bytes().unwrap(), vec![a.clone(), b.clone(), c.clone()], move |hex| {
        if hex == first {
            while !d2.exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    let prefetch = t.path().join("prefetch");
    std::fs::write(&prefetch, "b\nc\n").unwrap();
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let store = t.path().join("cache");
    let args = [
        "unpack",
        &src,
        dest.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--jobs",
        "1",
        "--threads",
        "1",
        "--prefetch",
        prefetch.to_str().unwrap(),
    ];
    let (rc, err) = common::net::ocix(t.path(), &args, &[]);
    assert_ne!(rc, 0, "{err}");
    assert!(err.contains("user.x"), "{err}");
    let late: Vec<String> = s
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.ends_with(&common::net::hex_of(&c)) || p.ends_with(&common::net::hex_of(&a)))
        .collect();
    assert!(late.is_empty(), "blobs still fetched after the unpack failed: {late:?}");
}

// ---------------------------------------------------------------- unpack --mount

/// `unpack docker://... DEST --store S --mount`: every blob pulled into
/// the store, then DEST a read-only mount of the manifest (root only).
#[test]
fn unpack_mount_from_a_registry() {
    if !common::is_root() {
        eprintln!("SKIP: mounting needs root");
        return;
    }
    let f = fixture();
    let s = plain_registry(&f, |_| None);
    let dest = f.dir.path().join("dest");
    let store = f.dir.path().join("cache");
    let src = format!("docker://127.0.0.1:{}/ocix/x:v1", s.port);
    let args = ["unpack", &src, dest.to_str().unwrap(), "--store", store.to_str().unwrap(), "--mount"];
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    let mounted = rc == 0;
    let clean = mounted && diff_clean(f.dir.path(), &dest, &f.dir.path().join("m.ocix"));
    let read_only = mounted && std::fs::write(dest.join("new"), b"x").is_err();
    if mounted {
        ocix::mount::umount(&dest).unwrap();
    }
    assert_eq!(rc, 0, "{err}");
    assert!(clean && read_only);
    // --mount needs a store to read from
    let args = ["unpack", &src, dest.to_str().unwrap(), "--mount"];
    let (rc, err) = ocix(f.dir.path(), &args, &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("--mount needs --store"), "{err}");
}
