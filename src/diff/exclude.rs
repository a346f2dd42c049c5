//! Path masks for the drift audit: glob patterns that take paths (and all
//! their descendants) out of the comparison.

use super::DiffError;
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Compiled exclude patterns, matched the way `ocix scan --exclude` matches:
/// a pattern without `/` matches an entry's name at any depth (`*.pyc`,
/// `__pycache__`); a pattern with `/` matches the whole path relative to the
/// root (`var/cache/*`, `usr/**/*.a`; a leading `/` or `./` is ignored), and
/// there `*` and `?` do not match `/` while `**` matches any number of
/// components. `\` escapes the next character. Matching is on raw bytes.
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
    patterns: Vec<String>,
}

impl Excludes {
    /// Compiles the patterns; fails on the first invalid one.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, DiffError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n_names, mut n_paths) = (0, 0);
        for p in patterns {
            let p = p.as_ref();
            let bad = |e: globset::Error| DiffError::Pattern { pattern: p.to_string(), reason: e.kind().to_string() };
            if p.is_empty() {
                return Err(DiffError::Pattern { pattern: String::new(), reason: "empty pattern".into() });
            }
            if p.contains('/') {
                let rel = p.strip_prefix("./").unwrap_or(p).trim_start_matches('/');
                let g = GlobBuilder::new(rel).literal_separator(true).backslash_escape(true).build().map_err(bad)?;
                paths.add(g);
                n_paths += 1;
            } else {
                let g = GlobBuilder::new(p).literal_separator(true).backslash_escape(true).build().map_err(bad)?;
                names.add(g);
                n_names += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize, what: &str| -> Result<Option<GlobSet>, DiffError> {
            if n == 0 {
                return Ok(None);
            }
            b.build().map(Some).map_err(|e| DiffError::Pattern { pattern: what.to_string(), reason: e.to_string() })
        };
        Ok(Excludes {
            names: build(names, n_names, "(name patterns)")?,
            paths: build(paths, n_paths, "(path patterns)")?,
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the entry at `path` (relative to the root, `/`-joined; empty
    /// for the root, which is never excluded) is excluded itself. Callers
    /// skip an excluded directory's descendants without asking.
    pub fn is_excluded(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return false;
        }
        if let Some(names) = &self.names {
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            if names.is_match_candidate(&Candidate::new(Path::new(OsStr::from_bytes(name)))) {
                return true;
            }
        }
        if let Some(paths) = &self.paths {
            if paths.is_match_candidate(&Candidate::new(Path::new(OsStr::from_bytes(path)))) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_path_patterns() {
        let x = Excludes::new(&["*.pyc", "var/cache/*", "/tmp", "usr/**/*.a"]).unwrap();
        assert!(x.is_excluded(b"a.pyc"));
        assert!(x.is_excluded(b"usr/lib/x/y.pyc"));
        assert!(x.is_excluded(b"var/cache/apt"));
        assert!(!x.is_excluded(b"var/cache/apt/deep"), "* does not cross /");
        assert!(!x.is_excluded(b"var/cache"));
        assert!(x.is_excluded(b"tmp"));
        assert!(!x.is_excluded(b"x/tmp"), "a path pattern is anchored at the root");
        assert!(x.is_excluded(b"usr/lib/libc.a"));
        assert!(x.is_excluded(b"usr/libc.a"));
        assert!(!x.is_excluded(b""));
        assert!(x.is_excluded(b"odd\xff.pyc"), "non-UTF-8 names match too");
    }

    #[test]
    fn bad_pattern_is_named() {
        let e = Excludes::new(&["ok", "a[b"]).unwrap_err();
        assert!(e.to_string().contains("a[b"), "{e}");
    }
}
