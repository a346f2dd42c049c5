//! The network tests' harness (tests/remote.rs pulls, tests/remote_push.rs
//! pushes): a real HTTP/1.1 server on 127.0.0.1 whose every answer the test
//! decides, so it can misbehave on demand (answer 500, cut a body short,
//! never answer), and a bounded run of the ocix binary with a clean
//! credential environment.

use sha2::Digest as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as the server read it, body included.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    /// The first header named `k` (any case).
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
pub enum Reply {
    /// Status, extra headers, body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Declares the whole body's length, sends only the first n bytes, closes.
    Cut(u16, Vec<(String, String)>, Vec<u8>, usize),
    /// Never answers.
    Stall,
}

/// 200 with `body`.
pub fn ok(body: Vec<u8>) -> Reply {
    Reply::Full(200, Vec::new(), body)
}

fn status_text(s: u16) -> &'static str {
    match s {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Other",
    }
}

/// 206 with the asked part for `Range: bytes=a-` or `bytes=a-b` (an end
/// past the body clamped to it), else 200 with everything.
pub fn range_reply(req: &Req, bytes: &[u8]) -> Reply {
    let Some((a, b)) = req.header("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-'))
    else {
        return ok(bytes.to_vec());
    };
    let a: usize = a.parse().unwrap();
    let b: usize = if b.is_empty() { bytes.len() - 1 } else { b.parse::<usize>().unwrap().min(bytes.len() - 1) };
    let cr = format!("bytes {a}-{b}/{}", bytes.len());
    Reply::Full(206, vec![("Content-Range".into(), cr)], bytes[a..=b].to_vec())
}

/// A running server: its port and every request it has read, in order.
pub struct Server {
    pub port: u16,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

/// Starts a server on 127.0.0.1 whose answers `handler` decides; threads are
/// detached and end with the test process. A handler that must tell one
/// request from the next counts them itself.
pub fn serve(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log: Arc<Mutex<Vec<Req>>> = Arc::default();
    let handler = Arc::new(handler);
    let log2 = log.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let (h, log) = (handler.clone(), log2.clone());
            std::thread::spawn(move || connection(conn, &*h, &log));
        }
    });
    Server { port, log }
}

fn connection(conn: TcpStream, handler: &dyn Fn(&Req) -> Reply, log: &Mutex<Vec<Req>>) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut req = Req { method, path, headers, body: Vec::new() };
        if let Some(n) = req.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut body = vec![0; n];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            req.body = body;
        }
        log.lock().unwrap().push(req.clone());
        let head = |status: u16, hs: &[(String, String)], len: usize| {
            let mut s = format!("HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\n", status_text(status));
            for (k, v) in hs {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
            s.push_str("\r\n");
            s
        };
        match handler(&req) {
            Reply::Full(status, hs, body) => {
                let h = head(status, &hs, body.len());
                if out.write_all(h.as_bytes()).is_err() || (req.method != "HEAD" && out.write_all(&body).is_err()) {
                    return;
                }
            }
            Reply::Cut(status, hs, body, n) => {
                let h = head(status, &hs, body.len());
                let _ = out.write_all(h.as_bytes());
                let _ = out.write_all(&body[..n]);
                let _ = out.flush();
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::Stall => {
                std::thread::sleep(Duration::from_secs(300));
                return;
            }
        }
    }
}

/// Runs ocix with `args` and a clean credential environment; kills it and
/// fails the test after 60 s. Returns (exit code, stderr).
pub fn ocix(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> (i32, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let err = dir.join(format!("stderr-{}", N.fetch_add(1, Ordering::Relaxed)));
    let mut cmd = super::ocix();
    cmd.args(args)
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("REGISTRY_AUTH_FILE", dir.join("no-auth.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ocix {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), std::fs::read_to_string(&err).unwrap())
}

/// An OCI artifact carrying the ocix manifest `manifest` (its first
/// layer), as `ocix push` writes one: then `more` layers, and the manifest
/// annotations `annotations` (JSON null for none).
pub fn artifact_json(manifest: &[u8], more: Vec<serde_json::Value>, annotations: serde_json::Value) -> Vec<u8> {
    let mut layers = vec![serde_json::json!({"mediaType": "application/vnd.ocix.manifest.v1+cbor",
        "digest": digest_of(manifest), "size": manifest.len()})];
    layers.extend(more);
    let mut art = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.ocix.manifest.v1+cbor",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": layers,
    });
    if !annotations.is_null() {
        art["annotations"] = annotations;
    }
    serde_json::to_vec(&art).unwrap()
}

/// `ocix scan DIR/tree --store DIR/store -o DIR/m.ocix`, which must
/// succeed: (store, manifest path).
pub fn scan_tree(dir: &Path) -> (PathBuf, PathBuf) {
    let (tree, store, m) = (dir.join("tree"), dir.join("store"), dir.join("m.ocix"));
    let args = ["scan", tree.to_str().unwrap(), "--store", store.to_str().unwrap(), "-o", m.to_str().unwrap()];
    let (rc, err) = ocix(dir, &args, &[]);
    assert_eq!(rc, 0, "{err}");
    (store, m)
}

/// The sha256 of `data`, in hex.
pub fn hex_of(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The sha256 of `data` as a digest: `sha256:<hex>`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex_of(data))
}
