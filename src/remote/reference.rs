//! Parsing of remote locations: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`
//! (an OCI distribution registry) and `http(s)://HOST[:PORT]/PREFIX/` (a
//! static store serving `blobs/sha256/<hex>`).

use crate::manifest::Digest;
use std::fmt;

/// The host Docker Hub names resolve to.
const DOCKER_HUB: &str = "registry-1.docker.io";

/// A reference to a manifest in a registry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reference {
    /// `host` or `host:port` as written (`docker.io` mapped to the Hub's API
    /// host); also the key looked up in auth.json.
    pub host: String,
    /// Repository path, e.g. `library/debian`.
    pub repo: String,
    /// Tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// Digest; when present it is what is fetched, and the tag only names it.
    pub digest: Option<Digest>,
}

/// A string that is not a valid reference, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid reference {input:?}: {why}")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub why: &'static str,
}

impl Reference {
    /// Parses `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`. The first path
    /// component is always the host (no implicit Docker Hub): `docker.io`
    /// is accepted and means the Hub, where a one-component repository gets
    /// the `library/` prefix.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |why| ReferenceError { input: input.to_string(), why };
        let rest = input.strip_prefix("docker://").ok_or_else(|| err("expected docker://HOST/REPO[:TAG|@DIGEST]"))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| err("no repository after the host"))?;
        check_host(host).map_err(err)?;
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => (p, Some(Digest::parse(d).map_err(|_| err("digest is not sha256:<64 hex digits>"))?)),
            None => (path, None),
        };
        // a tag is after the last ':' that follows the last '/'
        let last = path.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match path[last..].find(':') {
            Some(i) => (&path[..last + i], Some(path[last + i + 1..].to_string())),
            None => (path, None),
        };
        check_repo(repo).map_err(err)?;
        if let Some(t) = &tag {
            check_tag(t).map_err(err)?;
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        let (host, repo) = if host == "docker.io" || host == "index.docker.io" {
            let repo = if repo.contains('/') { repo.to_string() } else { format!("library/{repo}") };
            (DOCKER_HUB.to_string(), repo)
        } else {
            (host.to_string(), repo.to_string())
        };
        Ok(Reference { host, repo, tag, digest })
    }

    /// What the manifest endpoint is asked for: the digest if given, else the
    /// tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// Whether the host is the loopback interface (`localhost`, `127.x`,
    /// `[::1]`), where plain HTTP is allowed without `--insecure`.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `host[:port]` names the loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost" || name == "::1" || name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("empty host");
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) {
        return Err("host may only hold letters, digits, '-', '.', ':' and [IPv6]");
    }
    Ok(())
}

/// OCI distribution: path components of `[a-z0-9]+` joined by `.`, `_`,
/// `__` or runs of `-`, separated by `/`.
fn check_repo(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() || repo.len() > 255 {
        return Err("repository must be 1 to 255 characters");
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err("repository components must start and end with [a-z0-9]");
        }
        if !b.iter().all(|&c| alnum(c) || b"._-".contains(&c)) {
            return Err("repository may only hold [a-z0-9], '.', '_', '-' and '/'");
        }
        if comp.contains("..") || comp.contains("___") || comp.contains(".-") || comp.contains("-.") {
            return Err("repository has an invalid run of separators");
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let b = tag.as_bytes();
    if b.is_empty() || b.len() > 128 {
        return Err("tag must be 1 to 128 characters");
    }
    if !(b[0].is_ascii_alphanumeric() || b[0] == b'_')
        || !b.iter().all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    {
        return Err("tag may only hold [A-Za-z0-9_.-] and must not start with '.' or '-'");
    }
    Ok(())
}

/// Where blobs come from or go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// An OCI distribution registry.
    Registry(Reference),
    /// A static store: `BASE` ends with `/` and `BASEblobs/sha256/<hex>`
    /// serves each blob.
    Http(String),
}

impl Remote {
    /// Parses `docker://...` or `http(s)://HOST[:PORT]/[PREFIX/]`.
    pub fn parse(s: &str) -> Result<Remote, ReferenceError> {
        if s.starts_with("docker://") {
            return Ok(Remote::Registry(Reference::parse(s)?));
        }
        if let Some(rest) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) {
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() || host.contains(['@', '?', '#']) || s.contains(['?', '#']) {
                return Err(ReferenceError { input: s.to_string(), why: "expected http(s)://HOST[:PORT]/[PREFIX/]" });
            }
            let mut base = s.to_string();
            if !base.ends_with('/') {
                base.push('/');
            }
            return Ok(Remote::Http(base));
        }
        Err(ReferenceError {
            input: s.to_string(),
            why: "expected docker://HOST/REPO[:TAG|@DIGEST] or http(s)://HOST/PREFIX/",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_repo_tag() {
        let r = Reference::parse("docker://127.0.0.1:5000/ocix/corpus:v1").unwrap();
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repo, "ocix/corpus");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.digest.is_none());
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/ocix/corpus:v1");
    }

    #[test]
    fn default_tag_and_digest() {
        let r = Reference::parse("docker://localhost/a").unwrap();
        assert_eq!(r.target(), "latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("docker://example.com/a/b@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.target(), d);
        assert!(!r.is_loopback());
    }

    #[test]
    fn docker_hub_gets_library_prefix() {
        let r = Reference::parse("docker://docker.io/debian:12").unwrap();
        assert_eq!(r.host, DOCKER_HUB);
        assert_eq!(r.repo, "library/debian");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "127.0.0.1:5000/a:b",
            "docker://host",
            "docker:///repo",
            "docker://host/Upper",
            "docker://host/a:-bad",
            "docker://host/a@sha256:12",
            "docker://host/a//b",
            "docker://ho st/a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("127.0.0.2"));
        assert!(is_loopback_host("[::1]:80"));
        assert!(!is_loopback_host("registry.example:5000"));
        assert!(!is_loopback_host("10.0.0.1"));
    }

    #[test]
    fn remote_kinds() {
        assert!(matches!(Remote::parse("docker://h/r:t").unwrap(), Remote::Registry(_)));
        assert_eq!(Remote::parse("http://127.0.0.1:8000/s").unwrap(), Remote::Http("http://127.0.0.1:8000/s/".into()));
        assert!(Remote::parse("ftp://x/").is_err());
        assert!(Remote::parse("http:///x").is_err());
        assert!(Remote::parse("/local/path").is_err());
    }
}
