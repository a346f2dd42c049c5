//! Lazy mounts (`ocix mount docker://... MNT --store S`) against a real
//! docker-registry on 127.0.0.1: a first read fetches only what it reads;
//! a blob with wrong bytes in the registry gives EIO and stores nothing,
//! and a later read retries; a registry that stops gives EIO, then reads
//! succeed once it is back; a killed daemon leaves only verified blobs and
//! a new mount reuses them; the access record lists the files read and,
//! pushed with `--prefetch`, has its blobs fetched at once after mounting
//! and keeps a demand fetch to the blobs it names;
//! background prefetch completes the store; the manifest travels as its
//! zstd layer; `ocix umount` ends the daemon;
//! `unpack --image docker://... --mount --lazy` makes a bundle.
//! Mounting needs root, /dev/fuse and docker-registry: elsewhere each test
//! says it was skipped.

mod common;

use common::net::{hex_of, ocix};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn can_run() -> bool {
    if !common::is_root() {
        return common::skip("lazy mounts need root");
    }
    if !Path::new("/dev/fuse").exists() {
        return common::skip("no /dev/fuse");
    }
    if Command::new("docker-registry").arg("--version").output().is_err() {
        return common::skip("docker-registry is not installed");
    }
    true
}

/// A docker-registry serving `DIR/data` on a port of its own, stopped on
/// drop.
struct Registry {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Registry { dir: dir.to_path_buf(), port, child: None };
        r.resume();
        r
    }

    /// Starts it again on the same port and data (after [`stop`]).
    fn resume(&mut self) {
        let (dir, port) = (&self.dir, self.port);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            assert!(start.elapsed() < Duration::from_secs(20), "registry did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && &buf[9..12] == b"200"
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, tag: &str) -> String {
        format!("docker://127.0.0.1:{}/ocix/lazy:{tag}", self.port)
    }

    /// The file the registry keeps blob `hex` in.
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Unmounts on drop (and so ends the daemon), so a failed assertion
/// leaves nothing mounted.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = common::ocix().arg("umount").arg(&self.0).output();
    }
}

/// Content of `n` bytes, different for each `seed`.
fn content(n: usize, seed: u64) -> Vec<u8> {
    common::noise(n, seed)
}

/// A tree of big files (each a registry blob of its own) and small ones
/// (packed), scanned and pushed as `ocix/lazy:v1`: (dir, big contents by
/// name, small contents by name).
struct Fixture {
    t: tempfile::TempDir,
    reg: Registry,
    big: Vec<(&'static str, Vec<u8>)>,
    small: Vec<(String, Vec<u8>)>,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("big")).unwrap();
    std::fs::create_dir_all(tree.join("small")).unwrap();
    let big: Vec<(&str, Vec<u8>)> =
        ["a", "b", "c", "d"].iter().enumerate().map(|(i, n)| (*n, content(400_000 + i * 1000, i as u64 + 1))).collect();
    for (n, c) in &big {
        std::fs::write(tree.join("big").join(n), c).unwrap();
    }
    let small: Vec<(String, Vec<u8>)> =
        (0..40).map(|i| (format!("f{i:02}"), content(3000 + i, 100 + i as u64))).collect();
    for (n, c) in &small {
        std::fs::write(tree.join("small").join(n), c).unwrap();
    }
    let (store, m) = common::net::scan_tree(t.path());
    let reg = Registry::start(&t.path().join("registry"));
    let (rc, err) = ocix(
        t.path(),
        &["push", m.to_str().unwrap(), "--store", store.to_str().unwrap(), &reg.url("v1"), "--compress", "none"],
        &[],
    );
    assert_eq!(rc, 0, "{err}");
    Fixture { t, reg, big, small }
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }

    /// `ocix mount URL MNT --store STORE ARGS...`, which must succeed.
    fn mount(&self, tag: &str, mnt: &str, store: &str, args: &[&str]) -> Mounted {
        mount_at(self.t.path(), &self.reg.url(tag), &self.path(mnt), &self.path(store), args)
    }
}

/// `ocix mount URL MNT --store STORE ARGS...` run in `dir`, which must
/// succeed; MNT is made first. The mount ends when the result is dropped.
fn mount_at(dir: &Path, url: &str, mnt: &Path, store: &Path, args: &[&str]) -> Mounted {
    std::fs::create_dir_all(mnt).unwrap();
    let mut all = vec!["mount", url, mnt.to_str().unwrap(), "--store", store.to_str().unwrap()];
    all.extend(args);
    let (rc, err) = ocix(dir, &all, &[]);
    assert_eq!(rc, 0, "{err}");
    Mounted(mnt.to_path_buf())
}

/// The blobs (hex names) in a store, the ocix manifest's excepted.
fn file_blobs(store: &Path, manifest_hex: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != manifest_hex)
        .collect();
    v.sort();
    v
}

fn manifest_hex(f: &Fixture) -> String {
    hex_of(&std::fs::read(f.path("m.ocix")).unwrap())
}

/// Every blob of a store hashes to its name.
fn all_verified(store: &Path) {
    for e in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        assert_eq!(hex_of(&std::fs::read(e.path()).unwrap()), e.file_name().to_str().unwrap());
    }
}

/// The pid serving the lazy mount at `mnt` (its overlay's source).
fn daemon_pid(mnt: &Path) -> u32 {
    let canon = std::fs::canonicalize(mnt).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = format!(" {} ", canon.display());
    let line = info.lines().rfind(|l| l.contains(&want)).expect("mounted");
    let src = line.split(" - ").nth(1).unwrap().split(' ').nth(1).unwrap();
    src.strip_prefix("ocix-lazy:").expect("a lazy mount").parse().unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
}

/// The newest daemon log under a store.
fn last_log(store: &Path) -> String {
    let dir = store.join(".ocix-mount/lazy");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    logs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    std::fs::read_to_string(logs.last().unwrap()).unwrap()
}

fn read_err(p: &Path) -> Option<i32> {
    std::fs::read(p).err().map(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn a_first_read_fetches_only_what_it_reads_and_umount_ends_the_daemon() {
    if !can_run() {
        return;
    }
    let f = fixture();
    let mnt = f.mount("v1", "mnt", "s2", &["--no-background"]);
    let s2 = f.path("s2");
    assert!(file_blobs(&s2, &manifest_hex(&f)).is_empty(), "mounting fetched file blobs");
    // listing and stat fetch nothing
    assert_eq!(std::fs::read_dir(mnt.0.join("big")).unwrap().count(), 4);
    assert_eq!(std::fs::metadata(mnt.0.join("big/a")).unwrap().len(), f.big[0].1.len() as u64);
    assert!(file_blobs(&s2, &manifest_hex(&f)).is_empty(), "stat fetched file blobs");
    assert_eq!(std::fs::read(mnt.0.join("big/a")).unwrap(), f.big[0].1);
    assert_eq!(file_blobs(&s2, &manifest_hex(&f)), vec![hex_of(&f.big[0].1)]);
    // a small file comes with a bounded run of its pack's neighbours
    assert_eq!(std::fs::read(mnt.0.join("small/f05")).unwrap(), f.small[5].1);
    let got = file_blobs(&s2, &manifest_hex(&f));
    assert!(got.contains(&hex_of(&f.small[5].1)));
    assert!(!got.contains(&hex_of(&f.big[1].1)), "an unread big file was fetched");
    all_verified(&s2);
    let pid = daemon_pid(&mnt.0);
    assert!(alive(pid));
    let (rc, err) = ocix(f.t.path(), &["umount", mnt.0.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(!alive(pid), "the daemon outlived umount");
    assert!(last_log(&s2).contains("unmounted"), "{}", last_log(&s2));
}

#[test]
fn a_blob_with_wrong_bytes_is_eio_and_not_stored_and_a_later_read_retries() {
    if !can_run() {
        return;
    }
    let f = fixture();
    let hex = hex_of(&f.big[1].1);
    let file = f.reg.blob_file(&hex);
    let mut bad = f.big[1].1.clone();
    bad[1000] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    let mnt = f.mount("v1", "mnt", "s2", &["--no-background", "--retries", "0"]);
    let s2 = f.path("s2");
    assert_eq!(read_err(&mnt.0.join("big/b")), Some(5), "wrong bytes must be EIO");
    assert!(!s2.join("blobs/sha256").join(&hex).exists(), "wrong bytes were stored");
    let log = last_log(&s2);
    assert!(log.contains(&hex) && log.contains("big/b"), "{log}");
    // the other files still read
    assert_eq!(std::fs::read(mnt.0.join("big/a")).unwrap(), f.big[0].1);
    std::fs::write(&file, &f.big[1].1).unwrap();
    assert_eq!(std::fs::read(mnt.0.join("big/b")).unwrap(), f.big[1].1);
    all_verified(&s2);
}

#[test]
fn a_registry_that_stops_gives_eio_then_reads_succeed_once_it_is_back() {
    if !can_run() {
        return;
    }
    let mut f = fixture();
    let mnt = f.mount("v1", "mnt", "s2", &["--no-background", "--retries", "0", "--timeout", "5"]);
    assert_eq!(std::fs::read(mnt.0.join("big/a")).unwrap(), f.big[0].1);
    f.reg.stop();
    assert_eq!(read_err(&mnt.0.join("big/c")), Some(5), "a read with the registry gone must be EIO");
    // what was fetched is still served
    assert_eq!(std::fs::read(mnt.0.join("big/a")).unwrap(), f.big[0].1);
    f.reg.resume();
    assert_eq!(std::fs::read(mnt.0.join("big/c")).unwrap(), f.big[2].1);
    all_verified(&f.path("s2"));
}

#[test]
fn a_killed_daemon_leaves_only_verified_blobs_and_a_new_mount_reuses_them() {
    if !can_run() {
        return;
    }
    let f = fixture();
    let s2 = f.path("s2");
    {
        let mnt = f.mount("v1", "mnt", "s2", &["--no-background"]);
        assert_eq!(std::fs::read(mnt.0.join("big/d")).unwrap(), f.big[3].1);
        assert_eq!(std::fs::read(mnt.0.join("small/f30")).unwrap(), f.small[30].1);
        let pid = daemon_pid(&mnt.0);
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid));
    }
    all_verified(&s2);
    let had = file_blobs(&s2, &manifest_hex(&f));
    assert!(had.contains(&hex_of(&f.big[3].1)));
    let mnt = f.mount("v1", "mnt2", "s2", &["--no-background"]);
    // a pack member stored before is not fetched again, though its chunk
    // of the digest table is not known yet (no read has needed it)
    assert_eq!(std::fs::read(mnt.0.join("small/f30")).unwrap(), f.small[30].1);
    let log = last_log(&s2);
    assert!(!log.contains("small/f30"), "a stored pack member was fetched again: {log}");
    for (n, c) in &f.big {
        assert_eq!(&std::fs::read(mnt.0.join("big").join(n)).unwrap(), c);
    }
    let log = last_log(&s2);
    assert!(
        !log.contains(&format!("fetched blob sha256:{}", hex_of(&f.big[3].1))),
        "a stored blob was fetched again: {log}"
    );
    assert!(log.contains(&format!("fetched blob sha256:{}", hex_of(&f.big[0].1))), "{log}");
    assert_eq!(std::fs::read(mnt.0.join("small/f02")).unwrap(), f.small[2].1);
    assert!(last_log(&s2).contains("small/f0"), "{}", last_log(&s2));
}

#[test]
fn the_access_record_pushed_with_prefetch_keeps_demand_fetches_to_what_it_names() {
    if !can_run() {
        return;
    }
    let f = fixture();
    let rec = f.path("access.txt");
    let read = ["small/f07", "big/b", "small/f20"];
    {
        let mnt = f.mount("v1", "mnt", "s2", &["--no-background", "--record-access", rec.to_str().unwrap()]);
        for p in read {
            std::fs::read(mnt.0.join(p)).unwrap();
        }
        // written as it goes
        assert_eq!(std::fs::read_to_string(&rec).unwrap(), "small/f07\nbig/b\nsmall/f20\n");
        std::fs::read(mnt.0.join("small/f07")).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&rec).unwrap(), "small/f07\nbig/b\nsmall/f20\n");
    let (m, s) = (f.path("m.ocix"), f.path("store"));
    let (rc, err) = ocix(
        f.t.path(),
        &[
            "push",
            m.to_str().unwrap(),
            "--store",
            s.to_str().unwrap(),
            &f.reg.url("v2"),
            "--prefetch",
            rec.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(rc, 0, "{err}");
    // pushed compressed (the default), the manifest travels as its zstd
    // layer: the plain blob is not even read
    let plain = f.reg.blob_file(&manifest_hex(&f));
    let mut spoiled = std::fs::read(&plain).unwrap();
    spoiled[0] ^= 1;
    std::fs::write(&plain, spoiled).unwrap();
    let mnt = f.mount("v2", "mnt2", "s3", &["--no-background"]);
    let mut want: Vec<String> = vec![hex_of(&f.small[7].1), hex_of(&f.big[1].1), hex_of(&f.small[20].1)];
    want.sort();
    // the blobs the list names come at once, before any read
    let start = Instant::now();
    while file_blobs(&f.path("s3"), &manifest_hex(&f)) != want {
        let got = file_blobs(&f.path("s3"), &manifest_hex(&f));
        assert!(got.iter().all(|b| want.contains(b)), "fetched a blob the list does not name: {got:?}");
        assert!(start.elapsed() < Duration::from_secs(30), "the listed blobs were not fetched: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in read {
        std::fs::read(mnt.0.join(p)).unwrap();
    }
    assert_eq!(
        file_blobs(&f.path("s3"), &manifest_hex(&f)),
        want,
        "a demand fetch brought blobs the list does not name"
    );
    drop(mnt);
    // a pull of v2 works and brings everything
    let (rc, err) = ocix(f.t.path(), &["pull", &f.reg.url("v2"), "--store", f.path("s4").to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(file_blobs(&f.path("s4"), &manifest_hex(&f)).len(), 44);
}

#[test]
fn background_prefetch_completes_the_store_and_the_mount_diffs_clean() {
    if !can_run() {
        return;
    }
    let f = fixture();
    let mnt = f.mount("v1", "mnt", "s2", &["-j", "2"]);
    let s2 = f.path("s2");
    let start = Instant::now();
    while file_blobs(&s2, &manifest_hex(&f)).len() < 44 {
        assert!(start.elapsed() < Duration::from_secs(60), "background prefetch did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    all_verified(&s2);
    let diff = common::ocix().arg("diff").arg(&mnt.0).arg(f.path("m.ocix")).output().unwrap();
    assert_eq!(diff.status.code(), Some(0), "{}", String::from_utf8_lossy(&[diff.stdout, diff.stderr].concat()));
}

#[test]
fn unpack_lazy_makes_a_bundle_whose_rootfs_is_a_lazy_mount() {
    if !can_run() {
        return;
    }
    let f = fixture();
    let b = f.path("bundle");
    let (rc, err) = ocix(
        f.t.path(),
        &["unpack", "--image", &f.reg.url("v1"), b.to_str().unwrap(), "--mount", "--lazy", "--no-background"],
        &[],
    );
    assert_eq!(rc, 0, "{err}");
    let rootfs = b.join("rootfs");
    let _m = Mounted(rootfs.clone());
    assert!(b.join("config.json").is_file() && b.join("ocix.cbor").is_file());
    assert_eq!(std::fs::read(rootfs.join("big/c")).unwrap(), f.big[2].1);
    std::fs::write(rootfs.join("new"), b"x").unwrap();
    assert!(b.join("upper/new").is_file());
    let pid = daemon_pid(&rootfs);
    let (rc, err) = ocix(f.t.path(), &["umount", rootfs.to_str().unwrap()], &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(!alive(pid));
}

/// A slow blob holds up only its own reader: while the registry holds
/// back one blob (the small registry of tests/common/registry.rs, which
/// can be told to; a gate the test opens), other files are read; then the
/// held one arrives whole.
#[test]
fn a_slow_blob_holds_up_only_its_own_reader() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let slow = content(500_000, 7);
    let others: Vec<Vec<u8>> = (0..3).map(|i| content(300_000 + i, 20 + i as u64)).collect();
    std::fs::write(tree.join("slow"), &slow).unwrap();
    for (i, c) in others.iter().enumerate() {
        std::fs::write(tree.join(format!("other{i}")), c).unwrap();
    }
    let (store, m) = common::net::scan_tree(t.path());
    let gate = common::Gate::default();
    let held = format!("/blobs/sha256:{}", hex_of(&slow));
    let g = gate.clone();
    let reg = common::registry::registry(move |req| {
        if req.method == "GET" && req.path.ends_with(&held) {
            g.wait();
        }
        None
    });
    let url = format!("docker://127.0.0.1:{}/ocix/slow:v1", reg.server.port);
    let (rc, err) = ocix(t.path(), &["push", m.to_str().unwrap(), "--store", store.to_str().unwrap(), &url], &[]);
    assert_eq!(rc, 0, "{err}");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let s2 = t.path().join("s2");
    let args = ["mount", &url, mnt.to_str().unwrap(), "--store", s2.to_str().unwrap(), "--no-background"];
    let (rc, err) = ocix(t.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    let _m = Mounted(mnt.clone());
    let p = mnt.join("slow");
    let reader = std::thread::spawn(move || std::fs::read(p).unwrap());
    // the slow blob's request is under way (or about to be)
    let start = Instant::now();
    while reg.count("GET", &hex_of(&slow)) == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the slow blob was never asked for");
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, c) in others.iter().enumerate() {
        assert_eq!(&std::fs::read(mnt.join(format!("other{i}"))).unwrap(), c);
    }
    assert!(!reader.is_finished(), "the held blob arrived before the gate opened");
    gate.open();
    assert_eq!(reader.join().unwrap(), slow);
}

/// A tree of small files (packed) and one big one pushed to the small
/// registry of tests/common/registry.rs as `ocix/idx:v1` (with a lazy
/// index, the default): (dir, registry, contents by path, URL of a tag).
fn index_fixture() -> (tempfile::TempDir, common::registry::Registry, Vec<(String, Vec<u8>)>) {
    index_fixture_with(|_| None)
}

/// [`index_fixture`] on a registry that answers a request with `fault`'s
/// reply when it gives one.
fn index_fixture_with(
    fault: impl Fn(&common::net::Req) -> Option<common::net::Reply> + Send + Sync + 'static,
) -> (tempfile::TempDir, common::registry::Registry, Vec<(String, Vec<u8>)>) {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("small")).unwrap();
    let mut files: Vec<(String, Vec<u8>)> =
        (0..300).map(|i| (format!("small/f{i:03}"), content(2000 + i, 500 + i as u64))).collect();
    files.push(("big".into(), content(400_000, 9)));
    for (p, c) in &files {
        std::fs::write(tree.join(p), c).unwrap();
    }
    let (store, m) = common::net::scan_tree(t.path());
    let reg = common::registry::registry(fault);
    let url = format!("docker://127.0.0.1:{}/ocix/idx:v1", reg.server.port);
    let (rc, err) = ocix(t.path(), &["push", m.to_str().unwrap(), "--store", store.to_str().unwrap(), &url], &[]);
    assert_eq!(rc, 0, "{err}");
    (t, reg, files)
}

/// The layer of media type `mt` of the artifact tagged `tag`: (digest,
/// the artifact's JSON).
fn layer(reg: &common::registry::Registry, tag: &str, mt: &str) -> (String, serde_json::Value) {
    let st = reg.state.lock().unwrap();
    let art: serde_json::Value = serde_json::from_slice(&st.manifests[tag].1).unwrap();
    let l = art["layers"].as_array().unwrap().iter().find(|l| l["mediaType"] == mt).expect("layer").clone();
    (l["digest"].as_str().unwrap().to_string(), art)
}

fn mounted(p: &Path) -> bool {
    let canon = std::fs::canonicalize(p).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&format!(" {} ", canon.display()))
}

/// With a lazy index, a mount fetches neither the manifest nor the digest
/// table whole: a read brings one chunk of the table and the file's data,
/// and the background prefetch ends with the manifest rebuilt, its digest
/// checked and kept.
#[test]
fn a_mount_from_the_lazy_index_fetches_one_digest_chunk_and_rebuilds_the_manifest() {
    if !can_run() {
        return;
    }
    let (t, reg, files) = index_fixture();
    let (table, _) = layer(&reg, "v1", "application/vnd.ocix.digests.v1");
    let manifest = std::fs::read(t.path().join("m.ocix")).unwrap();
    let url = format!("docker://127.0.0.1:{}/ocix/idx:v1", reg.server.port);
    let (mnt, s2) = (t.path().join("mnt"), t.path().join("s2"));
    std::fs::create_dir(&mnt).unwrap();
    let args = ["mount", &url, mnt.to_str().unwrap(), "--store", s2.to_str().unwrap(), "--no-background"];
    let (rc, err) = ocix(t.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    let m = Mounted(mnt.clone());
    assert_eq!(reg.count("GET", &hex_of(&manifest)), 0, "the manifest was fetched");
    assert_eq!(std::fs::read(mnt.join(&files[200].0)).unwrap(), files[200].1);
    assert_eq!(std::fs::read(mnt.join("big")).unwrap(), files[300].1);
    let ranges: Vec<String> = reg
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&table))
        .map(|r| r.header("range").unwrap_or("whole").to_string())
        .collect();
    // 128 digests a chunk: the small file (blob 201) is in the second,
    // big (blob 0, first in manifest order) in the first
    assert_eq!(ranges, vec!["bytes=4096-8191".to_string(), "bytes=0-4095".to_string()]);
    all_verified(&s2);
    drop(m);
    // with the background prefetch: every blob, then the manifest
    let (mnt, s3) = (t.path().join("mnt3"), t.path().join("s3"));
    std::fs::create_dir(&mnt).unwrap();
    let args = ["mount", &url, mnt.to_str().unwrap(), "--store", s3.to_str().unwrap()];
    let (rc, err) = ocix(t.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    let _m = Mounted(mnt.clone());
    let start = Instant::now();
    while !s3.join("blobs/sha256").join(hex_of(&manifest)).exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no manifest rebuilt: {}", last_log(&s3));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(last_log(&s3).contains("rebuilt from the lazy index and the digest table, its digest checked"));
    assert_eq!(file_blobs(&s3, &hex_of(&manifest)).len(), files.len());
    all_verified(&s3);
    let diff = common::ocix().arg("diff").arg(&mnt).arg(t.path().join("m.ocix")).output().unwrap();
    assert_eq!(diff.status.code(), Some(0), "{}", String::from_utf8_lossy(&[diff.stdout, diff.stderr].concat()));
    // an artifact pushed without the index mounts the old way
    let old = format!("docker://127.0.0.1:{}/ocix/idx:old", reg.server.port);
    let (m, store) = (t.path().join("m.ocix"), t.path().join("store"));
    let push = ["push", m.to_str().unwrap(), "--store", store.to_str().unwrap(), &old, "--no-lazy-index"];
    let (rc, err) = ocix(t.path(), &push, &[]);
    assert_eq!(rc, 0, "{err}");
    let (mnt, s4) = (t.path().join("mnt4"), t.path().join("s4"));
    std::fs::create_dir(&mnt).unwrap();
    let args = ["mount", &old, mnt.to_str().unwrap(), "--store", s4.to_str().unwrap(), "--no-background"];
    let (rc, err) = ocix(t.path(), &args, &[]);
    assert_eq!(rc, 0, "{err}");
    let _m4 = Mounted(mnt.clone());
    assert!(s4.join("blobs/sha256").join(hex_of(&manifest)).exists(), "no manifest fetched without an index");
    assert_eq!(std::fs::read(mnt.join(&files[7].0)).unwrap(), files[7].1);
}

/// A digest chunk served with a wrong byte: the read is EIO, the log names
/// the digest chunk and its URL, no file blob is stored; served right
/// again, the same read succeeds.
#[test]
fn a_digest_chunk_with_a_wrong_byte_is_eio_and_serves_nothing() {
    if !can_run() {
        return;
    }
    let (t, reg, files) = index_fixture();
    let (table, _) = layer(&reg, "v1", "application/vnd.ocix.digests.v1");
    let good = reg.state.lock().unwrap().blobs[&table].clone();
    let mut bad = good.clone();
    bad[4096 + 100] ^= 1;
    reg.state.lock().unwrap().blobs.insert(table.clone(), bad);
    let url = format!("docker://127.0.0.1:{}/ocix/idx:v1", reg.server.port);
    let (mnt, s2) = (t.path().join("mnt"), t.path().join("s2"));
    let _m = mount_at(t.path(), &url, &mnt, &s2, &["--no-background", "--retries", "0"]);
    assert_eq!(read_err(&mnt.join(&files[200].0)), Some(5), "a wrong digest chunk must be EIO");
    let log = last_log(&s2);
    assert!(log.contains("digest chunk 1") && log.contains(&format!("/blobs/{table}")), "{log}");
    assert!(file_blobs(&s2, "").is_empty(), "a blob was stored under a digest from a wrong chunk");
    // a file whose chunk is right still reads
    assert_eq!(std::fs::read(mnt.join(&files[3].0)).unwrap(), files[3].1);
    reg.state.lock().unwrap().blobs.insert(table, good);
    assert_eq!(std::fs::read(mnt.join(&files[200].0)).unwrap(), files[200].1);
    all_verified(&s2);
}

/// A lazy index whose bytes are not the layer's, or one that is
/// well-formed zstd but truncated inside: the mount fails naming the
/// layer's URL, and nothing is mounted.
#[test]
fn a_corrupt_or_truncated_lazy_index_fails_the_mount_naming_the_layer() {
    if !can_run() {
        return;
    }
    let (t, reg, _) = index_fixture();
    let (index, art) = layer(&reg, "v1", "application/vnd.ocix.lazy.v1+zstd");
    let good = reg.state.lock().unwrap().blobs[&index].clone();
    // a truncated index, pushed under its own digest as tag v2
    let raw = zstd::decode_all(&good[..]).unwrap();
    let short = zstd::encode_all(&raw[..raw.len() - 40], 3).unwrap();
    let short_digest = common::net::digest_of(&short);
    let mut art2 = art.clone();
    for l in art2["layers"].as_array_mut().unwrap() {
        if l["digest"] == index.as_str() {
            l["digest"] = short_digest.clone().into();
            l["size"] = short.len().into();
        }
    }
    {
        let mut st = reg.state.lock().unwrap();
        st.add_blob(short);
        st.add_manifest("application/vnd.oci.image.manifest.v1+json", serde_json::to_vec(&art2).unwrap(), Some("v2"));
        // and v1's index with a wrong byte
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        st.blobs.insert(index.clone(), bad);
    }
    for (tag, digest, what) in [("v1", &index, "content has digest"), ("v2", &short_digest, "lazy index: truncated")] {
        let url = format!("docker://127.0.0.1:{}/ocix/idx:{tag}", reg.server.port);
        let (mnt, s) = (t.path().join(format!("mnt-{tag}")), t.path().join(format!("s-{tag}")));
        std::fs::create_dir(&mnt).unwrap();
        let args = ["mount", &url, mnt.to_str().unwrap(), "--store", s.to_str().unwrap(), "--retries", "0"];
        let (rc, err) = ocix(t.path(), &args, &[]);
        let _m = Mounted(mnt.clone());
        assert_ne!(rc, 0, "a mount of {tag} succeeded");
        assert!(err.contains(&format!("/blobs/{digest}")) && err.contains(what), "{tag}: {err}");
        assert!(!mounted(&mnt), "{tag}: something is mounted");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// An artifact whose lazy index rebuilds another manifest than the one it
/// names (here: the index of the same files with one mode changed): the
/// background prefetch stops with an error naming both digests, before
/// any file blob is fetched, and keeps no manifest; reads still serve
/// verified blobs.
#[test]
fn a_lazy_index_that_rebuilds_another_manifest_stops_the_background_with_an_error() {
    if !can_run() {
        return;
    }
    let (t, reg, files) = index_fixture();
    let tree = t.path().join("tree");
    let f0 = tree.join(&files[0].0);
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&f0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (store, m2) = (t.path().join("store"), t.path().join("m2.ocix"));
    let scan = ["scan", tree.to_str().unwrap(), "--store", store.to_str().unwrap(), "-o", m2.to_str().unwrap()];
    let (rc, err) = ocix(t.path(), &scan, &[]);
    assert_eq!(rc, 0, "{err}");
    let other = format!("docker://127.0.0.1:{}/ocix/idx:other", reg.server.port);
    let (rc, err) = ocix(t.path(), &["push", m2.to_str().unwrap(), "--store", store.to_str().unwrap(), &other], &[]);
    assert_eq!(rc, 0, "{err}");
    let lazy_mt = "application/vnd.ocix.lazy.v1+zstd";
    let (index, art) = layer(&reg, "v1", lazy_mt);
    let (other_index, other_art) = layer(&reg, "other", lazy_mt);
    assert_ne!(index, other_index);
    // v1's artifact with the other index, annotated as v1's
    let mut mixed = art.clone();
    let theirs = other_art["layers"].as_array().unwrap().iter().find(|l| l["mediaType"] == lazy_mt).unwrap().clone();
    for l in mixed["layers"].as_array_mut().unwrap() {
        if l["mediaType"] == lazy_mt {
            l["digest"] = theirs["digest"].clone();
            l["size"] = theirs["size"].clone();
        }
    }
    reg.state.lock().unwrap().add_manifest(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&mixed).unwrap(),
        Some("mixed"),
    );
    let manifest = std::fs::read(t.path().join("m.ocix")).unwrap();
    let rebuilt = std::fs::read(&m2).unwrap();
    let url = format!("docker://127.0.0.1:{}/ocix/idx:mixed", reg.server.port);
    let (mnt, s) = (t.path().join("mnt"), t.path().join("s"));
    let _m = mount_at(t.path(), &url, &mnt, &s, &["--retries", "0"]);
    let start = Instant::now();
    while !last_log(&s).contains("background prefetch stopped") {
        assert!(start.elapsed() < Duration::from_secs(60), "the background did not stop: {}", last_log(&s));
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = last_log(&s);
    let named = |bytes: &[u8]| format!("sha256:{}", hex_of(bytes));
    assert!(log.contains(&named(&manifest)) && log.contains(&named(&rebuilt)), "{log}");
    assert!(log.contains(&other_index), "{log}");
    assert!(!log.contains("background prefetch done"), "{log}");
    assert!(file_blobs(&s, "").is_empty(), "the background fetched file blobs");
    assert!(!s.join("blobs/sha256").join(hex_of(&manifest)).exists(), "a manifest was kept");
    // a read is still served, verified
    assert_eq!(std::fs::read(mnt.join(&files[5].0)).unwrap(), files[5].1);
    all_verified(&s);
}

/// The packs of the artifact tagged `tag`, by digest.
fn packs(reg: &common::registry::Registry, tag: &str) -> Vec<String> {
    let st = reg.state.lock().unwrap();
    let art: serde_json::Value = serde_json::from_slice(&st.manifests[tag].1).unwrap();
    let layers = art["layers"].as_array().unwrap();
    let packs = layers.iter().filter(|l| l["mediaType"].as_str().unwrap().starts_with("application/vnd.ocix.pack."));
    packs.map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

/// A pack with a wrong byte: reading the files of its members (a run a
/// request, with their digest chunks), only the member holding the byte
/// is EIO, the log names it and the pack's URL, and its neighbours in the
/// same run are served; a later read of it retries and, the pack right
/// again, succeeds.
#[test]
fn a_pack_member_with_wrong_bytes_is_eio_alone_and_a_later_read_retries() {
    if !can_run() {
        return;
    }
    let (t, reg, files) = index_fixture();
    let pack = packs(&reg, "v1")[0].clone();
    let good = reg.state.lock().unwrap().blobs[&pack].clone();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    reg.state.lock().unwrap().blobs.insert(pack.clone(), bad);
    let url = format!("docker://127.0.0.1:{}/ocix/idx:v1", reg.server.port);
    let (mnt, s) = (t.path().join("mnt"), t.path().join("s"));
    let _m = mount_at(t.path(), &url, &mnt, &s, &["--no-background", "--retries", "0"]);
    let mut failed = Vec::new();
    for (p, c) in &files[..300] {
        match std::fs::read(mnt.join(p)) {
            Ok(got) => assert!(&got == c, "{p}: wrong content served"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(5), "{p}: {e}");
                failed.push(p.clone());
            }
        }
    }
    assert_eq!(failed.len(), 1, "one member holds the wrong byte, these failed: {failed:?}");
    let log = last_log(&s);
    assert!(log.contains(&format!("/blobs/{pack}")) && log.contains(&failed[0]), "{log}");
    all_verified(&s);
    // read again: fetched again, still wrong
    let before = reg.count("GET", &pack);
    assert_eq!(read_err(&mnt.join(&failed[0])), Some(5));
    assert!(reg.count("GET", &pack) > before, "a later read did not fetch again");
    reg.state.lock().unwrap().blobs.insert(pack, good);
    let want = &files.iter().find(|(p, _)| *p == failed[0]).unwrap().1;
    assert_eq!(&std::fs::read(mnt.join(&failed[0])).unwrap(), want);
    all_verified(&s);
}

/// A registry that stops in the middle of a pack run: the read is EIO and
/// nothing of the run is stored; once the registry serves again, the same
/// read succeeds.
#[test]
fn a_registry_that_stops_inside_a_pack_run_gives_eio_then_the_read_succeeds() {
    if !can_run() {
        return;
    }
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = cut.clone();
    let (t, reg, files) = index_fixture_with(move |req| {
        let on = c.load(std::sync::atomic::Ordering::SeqCst);
        // a body that ends after 100 of the bytes it announced
        (on && req.method == "GET" && req.path.contains("/blobs/"))
            .then(|| common::net::Reply::Cut(200, vec![], vec![7; 200_000], 100))
    });
    let pack = packs(&reg, "v1")[0].clone();
    let url = format!("docker://127.0.0.1:{}/ocix/idx:v1", reg.server.port);
    let (mnt, s) = (t.path().join("mnt"), t.path().join("s"));
    let _m = mount_at(t.path(), &url, &mnt, &s, &["--no-background", "--retries", "0"]);
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(read_err(&mnt.join(&files[10].0)), Some(5), "a read from a registry that stops must be EIO");
    assert!(reg.count("GET", &pack) > 0, "the pack was not asked for");
    assert!(file_blobs(&s, "").is_empty(), "a cut run stored blobs");
    assert!(last_log(&s).contains(&files[10].0), "{}", last_log(&s));
    cut.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(std::fs::read(mnt.join(&files[10].0)).unwrap(), files[10].1);
    assert_eq!(std::fs::read(mnt.join(&files[11].0)).unwrap(), files[11].1);
    all_verified(&s);
}

/// A registry that fails while the background prefetch asks for the
/// digest table: the prefetch logs it and asks again, and once the
/// registry serves again it brings every blob and keeps the manifest.
#[test]
fn the_background_prefetch_waits_out_a_registry_that_fails_and_completes() {
    if !can_run() {
        return;
    }
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let table_path = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (f, p) = (failing.clone(), table_path.clone());
    let (t, reg, files) = index_fixture_with(move |req| {
        let path = p.lock().unwrap().clone();
        let on = f.load(std::sync::atomic::Ordering::SeqCst) && !path.is_empty() && req.path.ends_with(&path);
        on.then(|| common::net::Reply::Full(503, vec![], b"unavailable".to_vec()))
    });
    let (table, _) = layer(&reg, "v1", "application/vnd.ocix.digests.v1");
    *table_path.lock().unwrap() = table.clone();
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let manifest = std::fs::read(t.path().join("m.ocix")).unwrap();
    let url = format!("docker://127.0.0.1:{}/ocix/idx:v1", reg.server.port);
    let (mnt, s) = (t.path().join("mnt"), t.path().join("s"));
    let _m = mount_at(t.path(), &url, &mnt, &s, &["--retries", "0"]);
    let start = Instant::now();
    while !last_log(&s).contains("fetching the digest table (try 1") {
        assert!(start.elapsed() < Duration::from_secs(30), "no failed table fetch logged: {}", last_log(&s));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(file_blobs(&s, "").is_empty(), "file blobs fetched without the table");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    while !s.join("blobs/sha256").join(hex_of(&manifest)).exists() {
        assert!(start.elapsed() < Duration::from_secs(90), "the background did not complete: {}", last_log(&s));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(file_blobs(&s, &hex_of(&manifest)).len(), files.len());
    all_verified(&s);
}

/// A reader going through the packed files in order: after two demand
/// fetches that follow each other, the runs after them are read ahead
/// while it reads, so most of its files come without a fetch of its own;
/// every byte is still checked.
#[test]
fn a_reader_going_through_a_pack_in_order_is_read_ahead_of() {
    if !can_run() {
        return;
    }
    let f = fixture();
    {
        let mnt = f.mount("v1", "mnt", "s2", &["--no-background"]);
        for (n, c) in &f.small {
            assert_eq!(&std::fs::read(mnt.0.join("small").join(n)).unwrap(), c, "small/{n}");
        }
    }
    let log = last_log(&f.path("s2"));
    let by_reader = log.lines().filter(|l| l.contains("on first read")).count();
    let ahead = log.lines().filter(|l| l.contains(" read ahead, with ")).count();
    assert!(ahead >= 1, "nothing was read ahead:\n{log}");
    assert!(by_reader <= 2, "{by_reader} demand fetches for 40 files read in order:\n{log}");
    assert!(!log.contains("error"), "{log}");
    let got = file_blobs(&f.path("s2"), &manifest_hex(&f));
    assert!(f.small.iter().all(|(_, c)| got.contains(&hex_of(c))));
    assert!(!got.contains(&hex_of(&f.big[0].1)), "a big file no one read was fetched");
    all_verified(&f.path("s2"));
}
