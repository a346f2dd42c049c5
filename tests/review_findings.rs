//! Defects found in review of `unpack docker://` (blobs arriving while the
//! unpack writes) and zstd on the wire, each shown by a test.

mod common;

use ocix::manifest::{BLOCK, Digest, Entry, File, Kind, Manifest};
use ocix::materialize::{UnpackOptions, unpack};
use ocix::store::{Arrivals, Filled, Store};
use std::collections::BTreeMap;
use std::sync::Arc;

fn manifest(children: Vec<(&[u8], Entry)>) -> Manifest {
    Manifest {
        root: Entry::new(Kind::Dir(children.into_iter().map(|(n, e)| (n.to_vec(), e)).collect::<BTreeMap<_, _>>())),
    }
}

/// A blob the pull has just verified is trusted by the unpack (not hashed
/// again), but the manifest's zero runs are only a claim about that
/// content: a run declared over non-zero bytes makes the file zeros there,
/// and only the digest check catches it. Trusting the blob must not
/// trust the claim: the unpack has to fail (as it does for a blob it did
/// not fetch), never write a file whose content is not the digest's.
#[test]
fn false_zero_runs_over_a_freshly_fetched_blob_are_not_trusted() {
    let t = tempfile::tempdir().unwrap();
    let a = Arc::new(Arrivals::new());
    let store = Store::create(&t.path().join("store")).unwrap().with_arrivals(a.clone());
    let mut content = vec![b'x'; BLOCK as usize];
    content.extend_from_slice(b"tail");
    // as the pull names it: through the store being filled
    let d = store.put_bytes(&content).unwrap();
    assert!(store.fetched_here(&d));
    a.close(Filled::Complete);
    // the first block claimed all-zero, which it is not
    let f = File { size: content.len() as u64, digest: Some(d), zeros: vec![(0, 1)] };
    let m = manifest(vec![(b"victim", Entry::new(Kind::File(f)))]);
    let dest = t.path().join("dest");
    let r = unpack(&m, &store, &dest, &UnpackOptions::default());
    match r {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("victim") && msg.contains(&d.to_string()), "{msg}");
        }
        Ok(_) => {
            let got = std::fs::read(dest.join("victim")).unwrap();
            panic!(
                "unpack wrote a file named by {d} whose content hashes to {} ({} zero bytes first)",
                Digest::of(&got),
                got.iter().take_while(|&&b| b == 0).count()
            );
        }
    }
}

/// A registry serving one ocix manifest as `ocix/x:v1` (no packs, every
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
    use common::net::{Reply, artifact_json, hex_of, ok, serve};
    let mhex = hex_of(&manifest);
    let mut layers = Vec::new();
    for b in &blobs {
        layers.push(serde_json::json!({"mediaType": "application/vnd.ocix.file.v1",
            "digest": format!("sha256:{}", hex_of(b)), "size": b.len()}));
    }
    layers.extend(extra);
    let art = artifact_json(&manifest, layers, serde_json::Value::Null);
    serve(move |req| {
        if req.path == "/v2/" {
            return ok(b"{}".to_vec());
        }
        if req.path == "/v2/ocix/x/manifests/v1" {
            return Reply::Full(
                200,
                vec![
                    ("Content-Type".into(), "application/vnd.oci.image.manifest.v1+json".into()),
                    ("Docker-Content-Digest".into(), format!("sha256:{}", hex_of(&art))),
                ],
                art.clone(),
            );
        }
        if let Some(hex) = req.path.strip_prefix("/v2/ocix/x/blobs/sha256:") {
            if hex == mhex {
                return ok(manifest.clone());
            }
            if let Some(b) = blobs.iter().find(|b| hex_of(b) == hex) {
                hold(hex);
                return ok(b.clone());
            }
        }
        Reply::Full(404, vec![], vec![])
    })
}

fn file_entry(content: &[u8]) -> Entry {
    Entry::new(Kind::File(File { size: content.len() as u64, digest: Some(Digest::of(content)), zeros: vec![] }))
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

/// A gate one thread waits at (at most a minute) until another opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    fn wait(&self) {
        let g = self.0.0.lock().unwrap();
        let _ = self.0.1.wait_timeout_while(g, std::time::Duration::from_secs(60), |open| !*open).unwrap();
    }
}

/// Just enough of the distribution API for a push to `ocix/x` (blobs up
/// to one PUT): `at_head` runs at the first blob HEAD.
fn push_registry(at_head: impl Fn() + Send + Sync + 'static) -> common::net::Server {
    use common::net::{Reply, digest_of, ok, serve};
    use std::collections::HashMap;
    let blobs: std::sync::Mutex<HashMap<String, Vec<u8>>> = Default::default();
    let heads = std::sync::atomic::AtomicUsize::new(0);
    serve(move |req| {
        let (path, query) = req.path.split_once('?').unwrap_or((req.path.as_str(), ""));
        let Some(rest) = path.strip_prefix("/v2/ocix/x/") else {
            return if path == "/v2/" { ok(b"{}".to_vec()) } else { Reply::Full(404, vec![], vec![]) };
        };
        match req.method.as_str() {
            "HEAD" if rest.starts_with("blobs/sha256:") => {
                if heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    at_head();
                }
                match blobs.lock().unwrap().get(&rest["blobs/".len()..]) {
                    Some(b) => Reply::Full(200, vec![], vec![0; b.len()]),
                    None => Reply::Full(404, vec![], vec![]),
                }
            }
            "POST" => Reply::Full(202, vec![("Location".into(), "/v2/ocix/x/blobs/uploads/u".into())], vec![]),
            "PUT" if rest.starts_with("blobs/uploads/") => {
                let d = digest_of(&req.body);
                if query.replace("%3A", ":") != format!("digest={d}") {
                    return Reply::Full(400, vec![], vec![]);
                }
                blobs.lock().unwrap().insert(d.clone(), req.body.clone());
                Reply::Full(201, vec![("Docker-Content-Digest".into(), d)], vec![])
            }
            "PUT" if rest.starts_with("manifests/") => {
                Reply::Full(201, vec![("Docker-Content-Digest".into(), digest_of(&req.body))], vec![])
            }
            _ => Reply::Full(404, vec![], vec![]),
        }
    })
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
