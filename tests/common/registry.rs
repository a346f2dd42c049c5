//! A registry for the network tests, on the server of net.rs: honest
//! unless told otherwise, speaking the parts of the distribution API a
//! pull, an import and a push use, for any repository name: GET and HEAD
//! of blobs (with Range), GET of manifests by tag or digest, uploads by
//! POST, PATCH and PUT (the PUT checks the digest), and PUT of manifests
//! (refused when they name a blob it does not hold). A test seeds its
//! [`State`] and injects faults: a hook that may answer any request first.

use super::net::{Reply, Req, Server, artifact_json, digest_of, ok, range_reply, serve};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the registry holds.
#[derive(Default)]
pub struct State {
    /// Blobs by digest (`sha256:...`).
    pub blobs: HashMap<String, Vec<u8>>,
    /// Open uploads by id, with the bytes received so far.
    pub uploads: HashMap<String, Vec<u8>>,
    pub next: usize,
    /// Manifests by tag and by digest: (media type, bytes).
    pub manifests: HashMap<String, (String, Vec<u8>)>,
}

impl State {
    /// Adds a blob; returns its digest.
    pub fn add_blob(&mut self, data: Vec<u8>) -> String {
        let d = digest_of(&data);
        self.blobs.insert(d.clone(), data);
        d
    }

    /// Adds every blob of the store at `store`.
    pub fn add_store(&mut self, store: &Path) {
        for e in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
            self.add_blob(std::fs::read(e.unwrap().path()).unwrap());
        }
    }

    /// Adds a manifest of media type `media`, under its digest and `tag`;
    /// returns its digest.
    pub fn add_manifest(&mut self, media: &str, data: Vec<u8>, tag: Option<&str>) -> String {
        let d = digest_of(&data);
        if let Some(t) = tag {
            self.manifests.insert(t.to_string(), (media.to_string(), data.clone()));
        }
        self.manifests.insert(d.clone(), (media.to_string(), data));
        d
    }

    /// Tags as `tag` the OCI artifact of the ocix manifest `manifest` (a
    /// blob too) with `more` layers and `annotations` (JSON null for none),
    /// as `ocix push` writes one. The layers' blobs are the caller's to add.
    pub fn add_artifact(
        &mut self,
        tag: &str,
        manifest: &[u8],
        more: Vec<serde_json::Value>,
        annotations: serde_json::Value,
    ) {
        self.add_blob(manifest.to_vec());
        let art = artifact_json(manifest, more, annotations);
        self.add_manifest("application/vnd.oci.image.manifest.v1+json", art, Some(tag));
    }
}

/// A fault: given a request, a reply that replaces the registry's own.
pub type Fault = Box<dyn Fn(&Req) -> Option<Reply> + Send + Sync>;

/// A running registry: its server (port, requests) and what it holds.
pub struct Registry {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
}

impl Registry {
    /// Requests with this method whose path contains `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.server.requests().iter().filter(|r| r.method == method && r.path.contains(part)).count()
    }
    pub fn manifest_puts(&self) -> Vec<Req> {
        self.server.requests().into_iter().filter(|r| r.method == "PUT" && r.path.contains("/manifests/")).collect()
    }
    pub fn has(&self, digest: &str) -> bool {
        self.state.lock().unwrap().blobs.contains_key(digest)
    }
}

/// An empty registry with `fault`.
pub fn registry(fault: impl Fn(&Req) -> Option<Reply> + Send + Sync + 'static) -> Registry {
    registry_with(Arc::default(), Box::new(fault), None)
}

/// A registry over `state`; upload Locations are relative, or absolute
/// under `upload_origin` (`http://host:port`) when given.
pub fn registry_with(state: Arc<Mutex<State>>, fault: Fault, upload_origin: Option<String>) -> Registry {
    let st = state.clone();
    let server = serve(move |req| {
        if let Some(r) = fault(req) {
            return r;
        }
        answer(&st, req, upload_origin.as_deref().unwrap_or(""))
    });
    Registry { server, state }
}

/// A registry error body: `{"errors":[{"code":..,"message":..}]}`.
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"errors": [{"code": code, "message": message}]})).unwrap()
}

/// The distribution API over `state`, for any repository.
pub fn answer(state: &Mutex<State>, req: &Req, upload_origin: &str) -> Reply {
    let mut st = state.lock().unwrap();
    let (path, query) = req.path.split_once('?').unwrap_or((req.path.as_str(), ""));
    if path == "/v2/" {
        return ok(b"{}".to_vec());
    }
    let Some(repo) = path.strip_prefix("/v2/") else { return Reply::Full(404, vec![], vec![]) };
    let Some(i) = ["/blobs/", "/manifests/"].iter().filter_map(|k| repo.find(k)).min() else {
        return Reply::Full(404, vec![], vec![]);
    };
    let (name, rest) = (&repo[..i], &repo[i + 1..]);
    let blob_unknown = || Reply::Full(404, vec![], error_body("BLOB_UNKNOWN", "blob unknown to registry"));
    let loc = |id: &str| vec![("Location".to_string(), format!("{upload_origin}/v2/{name}/blobs/uploads/{id}"))];
    match (req.method.as_str(), rest) {
        ("HEAD", _) if rest.starts_with("blobs/sha256:") => match st.blobs.get(&rest["blobs/".len()..]) {
            Some(b) => Reply::Full(200, vec![], vec![0; b.len()]),
            None => blob_unknown(),
        },
        ("GET", _) if rest.starts_with("blobs/sha256:") => match st.blobs.get(&rest["blobs/".len()..]) {
            Some(b) => range_reply(req, b),
            None => blob_unknown(),
        },
        ("GET", _) if rest.starts_with("manifests/") => match st.manifests.get(&rest["manifests/".len()..]) {
            Some((media, b)) => Reply::Full(
                200,
                vec![("Content-Type".into(), media.clone()), ("Docker-Content-Digest".into(), digest_of(b))],
                b.clone(),
            ),
            None => Reply::Full(404, vec![], error_body("MANIFEST_UNKNOWN", "manifest unknown")),
        },
        ("POST", "blobs/uploads/") => {
            st.next += 1;
            let id = format!("u{}", st.next);
            st.uploads.insert(id.clone(), Vec::new());
            Reply::Full(202, loc(&id), vec![])
        }
        ("PATCH", _) if rest.starts_with("blobs/uploads/") => {
            let id = &rest["blobs/uploads/".len()..];
            let Some(u) = st.uploads.get_mut(id) else { return blob_unknown() };
            u.extend_from_slice(&req.body);
            Reply::Full(202, loc(id), vec![])
        }
        ("PUT", _) if rest.starts_with("blobs/uploads/") => {
            let id = &rest["blobs/uploads/".len()..];
            let Some(mut data) = st.uploads.remove(id) else { return blob_unknown() };
            data.extend_from_slice(&req.body);
            let want = query.strip_prefix("digest=").unwrap_or("").replace("%3A", ":");
            let got = digest_of(&data);
            if got != want {
                return Reply::Full(400, vec![], error_body("DIGEST_INVALID", &format!("content is {got}")));
            }
            st.blobs.insert(got.clone(), data);
            Reply::Full(201, vec![("Docker-Content-Digest".into(), got)], vec![])
        }
        ("PUT", _) if rest.starts_with("manifests/") => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
                return Reply::Full(400, vec![], error_body("MANIFEST_INVALID", "not JSON"));
            };
            let mut named: Vec<&serde_json::Value> = v["layers"].as_array().into_iter().flatten().collect();
            named.push(&v["config"]);
            for d in named {
                let digest = d["digest"].as_str().unwrap_or("");
                if !st.blobs.contains_key(digest) {
                    return Reply::Full(400, vec![], error_body("MANIFEST_BLOB_UNKNOWN", digest));
                }
            }
            let media = req.header("content-type").unwrap_or("").to_string();
            let d = digest_of(&req.body);
            st.manifests.insert(rest["manifests/".len()..].to_string(), (media.clone(), req.body.clone()));
            st.manifests.insert(d.clone(), (media, req.body.clone()));
            Reply::Full(201, vec![("Docker-Content-Digest".into(), d)], vec![])
        }
        _ => Reply::Full(404, vec![], vec![]),
    }
}
