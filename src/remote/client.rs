//! HTTP requests against a remote: an OCI distribution registry
//! (`/v2/<repo>/blobs/...`, `/v2/<repo>/manifests/...`, uploads) or a static
//! store (`<base>blobs/sha256/<hex>`). Authentication answers the registry's
//! challenge on the first 401; idempotent requests are retried with backoff
//! on timeouts, connection errors and 5xx; a blob download interrupted
//! midway resumes with a `Range` request. What the bytes are (packs, zstd
//! on the wire) is [`fetch`](super::fetch)'s business, not the client's.

use super::auth::{self, Challenge, Credentials};
use super::reference::{Reference, Remote};
use super::{MAX_MANIFEST, ProtocolError, RemoteError, RemoteOptions, transport};
use crate::manifest::Digest;
use crate::oci::media;
use crate::store::{Store, Verifier};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::sync::Mutex;
use std::time::Duration;

/// Blobs up to this size are uploaded in one PUT; larger ones in PATCH
/// chunks of this size. Also the most memory one upload holds.
pub const UPLOAD_CHUNK: u64 = 8 << 20;

/// A connection pool to one remote, with its authentication state.
pub struct Client {
    http: reqwest::Client,
    opts: RemoteOptions,
    remote: Remote,
    /// `scheme://host` of a registry (empty for a static store).
    origin: String,
    creds: Option<Credentials>,
    auth: Mutex<Option<String>>,
    push: bool,
    /// Whether any answer came over HTTP/2.
    http2: std::sync::atomic::AtomicBool,
}

impl Client {
    /// A client for `remote`; `push` asks for push rights when a token is
    /// needed. Registries are spoken to in HTTPS (HTTP/2 when offered; CA
    /// certificates from the system, or `SSL_CERT_FILE`), in plain HTTP
    /// with `opts.insecure`; a registry on loopback gets plain HTTP if it
    /// does not speak TLS (see [`resolve_scheme`](Self::resolve_scheme)).
    pub fn new(remote: Remote, opts: RemoteOptions, push: bool) -> Result<Client, RemoteError> {
        let (origin, creds) = match &remote {
            Remote::Registry(r) => {
                let scheme = if opts.insecure { "http" } else { "https" };
                (format!("{scheme}://{}", r.host), auth::lookup(&opts.auth_files, &r.host))
            }
            Remote::Http(base) => {
                let host = base.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or("");
                (String::new(), auth::lookup(&opts.auth_files, host))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(opts.timeout)
            .read_timeout(opts.timeout)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("ocix/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| transport("setting up", "HTTP client", e, opts.timeout))?;
        Ok(Client {
            http,
            opts,
            remote,
            origin,
            creds,
            auth: Mutex::new(None),
            push,
            http2: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// For a registry on loopback reached over HTTPS: asks `/v2/` once and
    /// falls back to plain HTTP when the server does not speak TLS (as
    /// docker does for localhost). A certificate the system does not trust
    /// is not a reason to fall back: that error is kept for the user.
    pub async fn resolve_scheme(&mut self) {
        let Remote::Registry(r) = &self.remote else { return };
        if !r.is_loopback() || !self.origin.starts_with("https://") {
            return;
        }
        let url = format!("{}/v2/", self.origin);
        if let Err(e) = self.http.get(&url).send().await {
            let mut chain = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(x) = src {
                chain.push_str(&x.to_string());
                src = x.source();
            }
            if !chain.to_ascii_lowercase().contains("certificate") {
                self.origin = format!("http://{}", r.host);
            }
        }
    }

    /// Whether the server answered over HTTP/2 (negotiated by TLS ALPN).
    pub fn used_http2(&self) -> bool {
        self.http2.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The remote this client speaks to.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The remote as the user wrote it, for messages.
    pub fn remote_name(&self) -> String {
        match &self.remote {
            Remote::Registry(r) => format!("docker://{}/{}", r.host, r.repo),
            Remote::Http(base) => base.clone(),
        }
    }

    /// The URL a blob is fetched from.
    pub fn blob_url(&self, d: &Digest) -> String {
        match &self.remote {
            Remote::Registry(r) => format!("{}/v2/{}/blobs/{d}", self.origin, r.repo),
            Remote::Http(base) => format!("{base}blobs/sha256/{}", d.hex()),
        }
    }

    fn manifest_url(&self, r: &Reference, target: &str) -> String {
        format!("{}/v2/{}/manifests/{target}", self.origin, r.repo)
    }

    fn registry(&self) -> Result<&Reference, RemoteError> {
        match &self.remote {
            Remote::Registry(r) => Ok(r),
            Remote::Http(base) => Err(RemoteError::Protocol { url: base.clone(), why: ProtocolError::StaticStore }),
        }
    }

    /// Sends a request built by `build` (called again for a retry), with
    /// authentication: on a 401 the challenge is answered once and the
    /// request resent. Any other status is returned for the caller to judge.
    async fn send(
        &self,
        op: &str,
        url: &str,
        build: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RemoteError> {
        let mut answered = false;
        loop {
            let mut rb = build();
            // credentials go only to the registry itself, never to an
            // upload Location on another host
            let auth = self.auth.lock().map(|a| a.clone()).unwrap_or_default();
            if let Some(a) = auth.as_ref().filter(|_| same_origin(url, &self.origin)) {
                rb = rb.header(header::AUTHORIZATION, a);
            }
            let resp = rb.send().await.map_err(|e| transport(op, url, e, self.opts.timeout))?;
            if resp.version() == reqwest::Version::HTTP_2 {
                self.http2.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if answered {
                let detail = match &self.creds {
                    Some(c) => format!("the registry refused the credentials of user {:?}", c.username),
                    None => self.no_creds(),
                };
                return Err(RemoteError::Unauthorized { url: url.to_string(), detail });
            }
            answered = true;
            let challenge =
                resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let value = self.answer(url, challenge.as_deref()).await?;
            if let Ok(mut a) = self.auth.lock() {
                *a = Some(value);
            }
        }
    }

    fn no_creds(&self) -> String {
        let host = match &self.remote {
            Remote::Registry(r) => r.host.clone(),
            Remote::Http(b) => b.clone(),
        };
        let files: Vec<String> = self.opts.auth_files.iter().map(|p| p.display().to_string()).collect();
        format!("no credentials for {host} in any of: {}", files.join(", "))
    }

    /// Turns a `WWW-Authenticate` challenge into an `Authorization` value.
    async fn answer(&self, url: &str, challenge: Option<&str>) -> Result<String, RemoteError> {
        let unauthorized = |detail: String| RemoteError::Unauthorized { url: url.to_string(), detail };
        match challenge.and_then(auth::parse_challenge) {
            None => Err(unauthorized(format!(
                "unsupported challenge {:?}",
                challenge.unwrap_or("(no WWW-Authenticate header)")
            ))),
            Some(Challenge::Basic) => match &self.creds {
                Some(c) => Ok(c.basic()),
                None => Err(unauthorized(format!("the registry asks for a login; {}", self.no_creds()))),
            },
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scope = scope.or_else(|| {
                    let Remote::Registry(r) = &self.remote else { return None };
                    Some(format!("repository:{}:{}", r.repo, if self.push { "pull,push" } else { "pull" }))
                });
                let mut q: Vec<(&str, String)> = Vec::new();
                if let Some(s) = service {
                    q.push(("service", s));
                }
                if let Some(s) = scope {
                    q.push(("scope", s));
                }
                let mut rb = self.http.get(&realm).query(&q);
                if let Some(c) = &self.creds {
                    rb = rb.header(header::AUTHORIZATION, c.basic());
                }
                let op = "GET token";
                let resp = rb.send().await.map_err(|e| transport(op, &realm, e, self.opts.timeout))?;
                if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                    let why = match &self.creds {
                        Some(c) => format!("the token service {realm} refused user {:?}", c.username),
                        None => format!("the token service {realm} refused anonymous access; {}", self.no_creds()),
                    };
                    return Err(unauthorized(why));
                }
                let resp = check(op, &realm, resp, &[StatusCode::OK]).await?;
                let body = read_limited(&realm, resp, 1 << 20, self.opts.timeout).await?;
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| unauthorized(format!("token answer from {realm} is not JSON: {e}")))?;
                let tok = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| unauthorized(format!("token answer from {realm} has no token")))?;
                Ok(format!("Bearer {tok}"))
            }
        }
    }

    /// [`send`](Self::send) with retries (backoff) on transient failures.
    async fn send_retry(
        &self,
        op: &str,
        url: &str,
        ok: &[StatusCode],
        build: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RemoteError> {
        let mut attempt = 0;
        loop {
            let r = match self.send(op, url, build).await {
                Ok(resp) => check(op, url, resp, ok).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.transient() && attempt < self.opts.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                r => return r,
            }
        }
    }

    /// Whether the remote has a blob (HEAD).
    pub async fn has_blob(&self, d: &Digest) -> Result<bool, RemoteError> {
        let url = self.blob_url(d);
        let ok = [StatusCode::OK, StatusCode::NOT_FOUND];
        let resp = self.send_retry("HEAD", &url, &ok, &|| self.http.head(&url)).await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Fetches a manifest (tag or digest), at most [`MAX_MANIFEST`] bytes,
    /// accepting OCI manifests and indexes. Returns its bytes, media type
    /// and digest; the digest is checked against `Docker-Content-Digest` and
    /// against the reference when that is a digest.
    pub async fn get_manifest(&self, target: &str) -> Result<(Vec<u8>, String, Digest), RemoteError> {
        self.get_manifest_as(target, &[media::OCI_MANIFEST, media::OCI_INDEX]).await
    }

    /// [`get_manifest`](Self::get_manifest) accepting the media types
    /// `accept` (e.g. Docker's manifest and manifest list too).
    pub async fn get_manifest_as(
        &self,
        target: &str,
        accept: &[&str],
    ) -> Result<(Vec<u8>, String, Digest), RemoteError> {
        let r = self.registry()?;
        let url = self.manifest_url(r, target);
        let accept = accept.join(", ");
        let resp = self
            .send_retry("GET", &url, &[StatusCode::OK], &|| self.http.get(&url).header(header::ACCEPT, &accept))
            .await?;
        let media = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        let claimed = content_digest(resp.headers());
        let body = read_limited(&url, resp, MAX_MANIFEST, self.opts.timeout).await?;
        let d = Digest::of(&body);
        if let Ok(want) = Digest::parse(target) {
            if want != d {
                return Err(RemoteError::Corrupt { url, expected: want, actual: d });
            }
        }
        if let Some(c) = claimed {
            if Digest::parse(&c).ok() != Some(d) {
                return Err(RemoteError::DigestHeader { url, got: c, expected: d });
            }
        }
        Ok((body, media, d))
    }

    /// Uploads a manifest under `target` (a tag or its digest); returns its
    /// digest, cross-checked with the registry's `Docker-Content-Digest`.
    pub async fn put_manifest(&self, target: &str, media_type: &str, bytes: &[u8]) -> Result<Digest, RemoteError> {
        let r = self.registry()?;
        let url = self.manifest_url(r, target);
        let d = Digest::of(bytes);
        let resp = self
            .send_retry("PUT", &url, &[StatusCode::CREATED, StatusCode::OK], &|| {
                self.http.put(&url).header(header::CONTENT_TYPE, media_type).body(bytes.to_vec())
            })
            .await?;
        if let Some(c) = content_digest(resp.headers()) {
            if Digest::parse(&c).ok() != Some(d) {
                return Err(RemoteError::DigestHeader { url, got: c, expected: d });
            }
        }
        Ok(d)
    }

    /// Fetches a blob of unknown size into memory, at most `limit` bytes,
    /// and checks its digest.
    pub async fn get_blob_bytes(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let url = self.blob_url(d);
        let mut attempt = 0;
        loop {
            let r = async {
                let resp = self.send_retry("GET", &url, &[StatusCode::OK], &|| self.http.get(&url)).await?;
                read_limited(&url, resp, limit, self.opts.timeout).await
            }
            .await;
            match r {
                Err(e) if e.transient() && attempt < self.opts.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
                Ok(body) => {
                    let actual = Digest::of(&body);
                    if actual != *d {
                        return Err(RemoteError::Corrupt { url, expected: *d, actual });
                    }
                    return Ok(body);
                }
            }
        }
    }

    /// The URL of the manifest `target` (a tag or digest) of a registry.
    pub fn manifest_url_of(&self, target: &str) -> Result<String, RemoteError> {
        Ok(self.manifest_url(self.registry()?, target))
    }

    /// Streams blob `d` of `size` bytes into `tx` as it arrives, in the
    /// server's chunks: never more than `size` bytes in all, resumed with a
    /// `Range` request after a transient failure (from the first byte not
    /// yet sent). The receiver verifies the digest. Stops quietly when the
    /// receiver has gone away.
    pub async fn stream_blob(
        &self,
        d: &Digest,
        size: u64,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    ) -> Result<(), RemoteError> {
        let url = self.blob_url(d);
        let mut sent = 0u64;
        let mut attempt = 0;
        loop {
            match self.stream_once(&url, size, tx, &mut sent).await {
                Err(e) if e.transient() && attempt < self.opts.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                r => return r,
            }
        }
    }

    /// GET of a blob from byte `off` on (a `Range` request past 0); the
    /// answer is 200 or 206, which the caller tells apart.
    pub(super) async fn get_from(&self, url: &str, off: u64) -> Result<Response, RemoteError> {
        let range = format!("bytes={off}-");
        let build = || {
            let rb = self.http.get(url);
            if off > 0 { rb.header(header::RANGE, &range) } else { rb }
        };
        let ok = [StatusCode::OK, StatusCode::PARTIAL_CONTENT];
        check("GET", url, self.send("GET", url, &build).await?, &ok).await
    }

    /// GET of the byte range `range` (`bytes=A-B`) of `url`; the answer is
    /// 200 (the server ignored the range) or 206, which the caller tells
    /// apart (see [`range_skip`]).
    pub(super) async fn get_range(&self, url: &str, range: &str) -> Result<Response, RemoteError> {
        let build = || self.http.get(url).header(header::RANGE, range);
        let ok = [StatusCode::OK, StatusCode::PARTIAL_CONTENT];
        check("GET", url, self.send("GET", url, &build).await?, &ok).await
    }

    /// Retries of a request after a transient failure.
    pub(super) fn retries(&self) -> u32 {
        self.opts.retries
    }

    /// The connect and read timeout, for messages.
    pub(super) fn timeout(&self) -> Duration {
        self.opts.timeout
    }

    async fn stream_once(
        &self,
        url: &str,
        size: u64,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
        sent: &mut u64,
    ) -> Result<(), RemoteError> {
        let off = *sent;
        if off == size && size > 0 {
            return Ok(());
        }
        let mut resp = self.get_from(url, off).await?;
        // bytes of the answer to skip: all already sent when a server
        // ignored the Range and starts from the beginning again
        let skip = range_skip(&resp, url, off)?;
        let mut at = off - skip;
        loop {
            let chunk = resp.chunk().await.map_err(|e| transport("GET", url, e, self.opts.timeout))?;
            let Some(chunk) = chunk else { break };
            let end = at + chunk.len() as u64;
            if end > size {
                return Err(RemoteError::WrongSize { url: url.to_string(), expected: size, got: end });
            }
            if end > *sent {
                let from = (*sent - at) as usize;
                if tx.send(Ok(chunk[from..].to_vec())).await.is_err() {
                    return Ok(());
                }
                *sent = end;
            }
            at = end;
        }
        if *sent < size {
            return Err(RemoteError::Transport {
                op: "GET".into(),
                url: url.to_string(),
                detail: format!("body ended after {sent} of {size} bytes"),
                transient: true,
            });
        }
        Ok(())
    }

    /// Uploads blob `d` of `size` bytes read from `store` (one PUT up to
    /// [`UPLOAD_CHUNK`], else PATCH chunks then a closing PUT), retried from
    /// the start on transient failures.
    pub async fn upload_blob(&self, d: &Digest, size: u64, src: Upload<'_>) -> Result<(), RemoteError> {
        let mut attempt = 0;
        loop {
            match self.upload_once(d, size, src).await {
                Err(e) if e.transient() && attempt < self.opts.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                r => return r,
            }
        }
    }

    async fn upload_once(&self, d: &Digest, size: u64, src: Upload<'_>) -> Result<(), RemoteError> {
        let r = self.registry()?;
        let start_url = format!("{}/v2/{}/blobs/uploads/", self.origin, r.repo);
        let file = match src {
            Upload::Store(store) => Some((std::fs::File::from(store.open_blob(d)?), store.blob_path(d))),
            Upload::File(f, name) => Some((
                f.try_clone().map_err(|e| RemoteError::Io { path: name.to_string(), err: e })?,
                std::path::PathBuf::from(name),
            )),
            Upload::Bytes(_) => None,
        };
        let read = |off: u64, len: u64| -> Result<Vec<u8>, RemoteError> {
            use std::os::unix::fs::FileExt as _;
            match (&file, src) {
                (Some((f, path)), _) => {
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact_at(&mut buf, off)
                        .map_err(|e| RemoteError::Io { path: path.display().to_string(), err: e })?;
                    Ok(buf)
                }
                (None, Upload::Bytes(b)) => {
                    let r = usize::try_from(off).ok().zip(usize::try_from(off + len).ok());
                    r.and_then(|(a, z)| b.get(a..z)).map(<[u8]>::to_vec).ok_or_else(|| RemoteError::Io {
                        path: format!("blob {d} in memory"),
                        err: std::io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                (None, Upload::Store(_) | Upload::File(..)) => unreachable!("a file upload has its file open"),
            }
        };
        // what is sent is checked against the digest it is sent under, and
        // the upload is never closed with bytes that do not match: a corrupt
        // store blob stops the push here, naming its path (a registry may
        // not check, and then every pull would fail on it)
        let name = match &file {
            Some((_, path)) => path.display().to_string(),
            None => format!("{d} (in memory)"),
        };
        let mut body = Vec::new();
        if size <= UPLOAD_CHUNK {
            body = read(0, size)?;
            let mut verify = Verifier::new(*d, size);
            verify.update(&body);
            verify.finish(&name)?;
        }
        let resp = self.send("POST", &start_url, &|| self.http.post(&start_url)).await?;
        let resp = check("POST", &start_url, resp, &[StatusCode::ACCEPTED]).await?;
        let mut loc = self.location(&start_url, resp.headers())?;
        if size > UPLOAD_CHUNK {
            let mut verify = Verifier::new(*d, size);
            let mut off = 0;
            while off < size {
                let len = UPLOAD_CHUNK.min(size - off);
                let chunk = read(off, len)?;
                verify.update(&chunk);
                let range = format!("{off}-{}", off + len - 1);
                let resp = self
                    .send("PATCH", &loc, &|| {
                        self.http
                            .patch(&loc)
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_RANGE, &range)
                            .body(chunk.clone())
                    })
                    .await?;
                let resp = check("PATCH", &loc, resp, &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT]).await?;
                loc = self.location(&loc, resp.headers())?;
                off += len;
            }
            verify.finish(&name)?;
        }
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{loc}{sep}digest={d}");
        let resp = self
            .send("PUT", &put_url, &|| {
                self.http
                    .request(Method::PUT, &put_url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        let resp = check("PUT", &put_url, resp, &[StatusCode::CREATED, StatusCode::OK, StatusCode::NO_CONTENT]).await?;
        if let Some(c) = content_digest(resp.headers()) {
            if Digest::parse(&c).ok() != Some(*d) {
                return Err(RemoteError::DigestHeader { url: put_url, got: c, expected: *d });
            }
        }
        Ok(())
    }

    /// The upload `Location`, made absolute.
    fn location(&self, url: &str, h: &HeaderMap) -> Result<String, RemoteError> {
        let loc = h
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RemoteError::Protocol { url: url.to_string(), why: ProtocolError::NoLocation })?;
        if loc.starts_with("http://") || loc.starts_with("https://") {
            Ok(loc.to_string())
        } else if loc.starts_with('/') {
            Ok(format!("{}{loc}", self.origin))
        } else {
            Err(RemoteError::Protocol { url: url.to_string(), why: ProtocolError::BadLocation(loc.to_string()) })
        }
    }
}

/// Where an upload's bytes come from.
#[derive(Clone, Copy)]
pub enum Upload<'a> {
    /// The blob of that digest in this store.
    Store(&'a Store),
    /// These bytes.
    Bytes(&'a [u8]),
    /// The content of this file, named in errors by the string.
    File(&'a std::fs::File, &'a str),
}

/// Whether `url` is on `origin` (`scheme://host[:port]`; empty matches all).
fn same_origin(url: &str, origin: &str) -> bool {
    origin.is_empty() || url.strip_prefix(origin).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Exponential backoff: 250 ms, 500 ms, 1 s, 2 s, then 4 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.saturating_sub(1).min(4))
}

fn content_digest(h: &HeaderMap) -> Option<String> {
    h.get("docker-content-digest").and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned)
}

/// Passes a response whose status is in `ok`; otherwise an error carrying
/// the registry's error codes and messages (first 4 KiB of the body).
async fn check(op: &str, url: &str, resp: Response, ok: &[StatusCode]) -> Result<Response, RemoteError> {
    let status = resp.status();
    if ok.contains(&status) {
        return Ok(resp);
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while body.len() < 4096 {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(c))) => body.extend_from_slice(&c[..c.len().min(4096 - body.len())]),
            _ => break,
        }
    }
    let detail = registry_errors(&body);
    Err(RemoteError::Status { op: op.to_string(), url: url.to_string(), status, detail })
}

/// `": CODE message; ..."` from an OCI error body, or empty.
fn registry_errors(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return String::new() };
    let Some(errs) = v.get("errors").and_then(|e| e.as_array()) else { return String::new() };
    let parts: Vec<String> = errs
        .iter()
        .take(4)
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            format!("{code} {msg}").trim().to_string()
        })
        .collect();
    if parts.is_empty() { String::new() } else { format!(": {}", parts.join("; ")) }
}

/// Reads a whole body of at most `limit` bytes.
async fn read_limited(url: &str, mut resp: Response, limit: u64, timeout: Duration) -> Result<Vec<u8>, RemoteError> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(RemoteError::TooLarge { url: url.to_string(), limit });
    }
    let mut body = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| transport("GET", url, e, timeout))? {
        if body.len() as u64 + c.len() as u64 > limit {
            return Err(RemoteError::TooLarge { url: url.to_string(), limit });
        }
        body.extend_from_slice(&c);
    }
    Ok(body)
}

/// The answer to a request for bytes from `from`: 0 bytes to skip when it
/// is the 206 asked for, `from` when the server ignored the Range (200,
/// everything from the start), an error when it sent another range.
pub(super) fn range_skip(resp: &reqwest::Response, url: &str, from: u64) -> Result<u64, RemoteError> {
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Ok(from);
    }
    let got = range_start(resp);
    if got != Some(from) {
        return Err(RemoteError::Protocol { url: url.to_string(), why: ProtocolError::WrongRange { from, got } });
    }
    Ok(0)
}

/// The first byte a 206 answer says it carries (`Content-Range: bytes N-...`).
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_summarized() {
        let b = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_errors(b), ": MANIFEST_UNKNOWN manifest unknown");
        assert_eq!(registry_errors(b"<html>"), "");
    }

    #[test]
    fn credentials_stay_on_origin() {
        assert!(same_origin("http://127.0.0.1:5000/v2/x", "http://127.0.0.1:5000"));
        assert!(!same_origin("http://127.0.0.1:50001/v2/x", "http://127.0.0.1:5000"));
        assert!(!same_origin("https://storage.example/upload", "https://reg.example"));
        assert!(!same_origin("https://reg.example.evil/x", "https://reg.example"));
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(50), Duration::from_secs(4));
    }
}
