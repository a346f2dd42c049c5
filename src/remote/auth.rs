//! Registry credentials and the `WWW-Authenticate` challenge: where a user's
//! login comes from (the auth.json files podman, skopeo and docker write) and
//! how a 401 answer is turned into an `Authorization` header (basic, or a
//! bearer token from the realm the registry names).

use base64::Engine as _;
use std::path::{Path, PathBuf};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// The auth files consulted, in order: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.config/containers/auth.json`, `~/.docker/config.json`.
pub fn auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        v.push(Path::new(&p).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(Path::new(&h).join(".config/containers/auth.json"));
        v.push(Path::new(&h).join(".docker/config.json"));
    }
    v
}

/// Looks `host` (`host[:port]`) up in the first of `files` that names it.
/// Unreadable or malformed files are skipped: they are the user's other
/// tools' business, and a missing login shows up as a 401 anyway.
pub fn lookup(files: &[PathBuf], host: &str) -> Option<Credentials> {
    files.iter().find_map(|f| {
        let meta = std::fs::metadata(f).ok()?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        let data = std::fs::read(f).ok()?;
        lookup_in(&data, host)
    })
}

/// Looks `host` up in the bytes of one auth.json / config.json.
pub fn lookup_in(json: &[u8], host: &str) -> Option<Credentials> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let hub = host == "registry-1.docker.io";
    auths.iter().find_map(|(key, entry)| {
        let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        let k = k.split('/').next().unwrap_or(k);
        let matches = k == host || (hub && (k == "docker.io" || k == "index.docker.io"));
        if !matches {
            return None;
        }
        if let Some(a) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD.decode(a.trim()).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some(Credentials { username: u.to_string(), password: p.to_string() });
        }
        let u = entry.get("username")?.as_str()?;
        let p = entry.get("password")?.as_str()?;
        Some(Credentials { username: u.to_string(), password: p.to_string() })
    })
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Challenge {
    /// `Basic realm=...`: send the credentials directly.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: get a token from the realm.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if any.
        service: Option<String>,
        /// `scope` parameter, if any.
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` value. Returns `None`
/// for schemes other than Basic and Bearer, or a Bearer without a realm.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `k=v` or `k="v"` pairs separated by commas; commas inside quotes kept.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => val.extend(chars.next()),
                    _ => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), val.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn auth_json_forms() {
        let j = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "127.0.0.1:5000":{"auth":"dTpwOmNvbG9u"},
            "reg.example":{"username":"x","password":"y"}}}"#;
        let c = lookup_in(j, "127.0.0.1:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:colon"));
        let c = lookup_in(j, "registry-1.docker.io").unwrap();
        assert_eq!(c.username, "hub");
        assert_eq!(lookup_in(j, "reg.example").unwrap().password, "y");
        assert!(lookup_in(j, "other").is_none());
        assert!(lookup_in(b"not json", "x").is_none());
        assert_eq!(Credentials { username: "u".into(), password: "p".into() }.basic(), "Basic dTpw");
    }
}
