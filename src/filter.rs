//! Path filters shared by the stages that walk a tree: `scan` leaves
//! excluded paths out of the manifest it builds, `diff` leaves them out of
//! both sides. Pure: patterns and `/`-joined relative paths, no filesystem.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Why exclude patterns could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A pattern is not a valid glob.
    #[error("{pattern:?}: {err}")]
    Glob {
        /// The pattern as given.
        pattern: String,
        /// The glob parser's complaint.
        err: globset::Error,
    },
    /// The patterns, each valid, could not be combined into one matcher.
    #[error("{0}")]
    Set(globset::Error),
}

/// Exclude patterns (`--exclude`), compiled.
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    any: bool,
}

impl Excludes {
    /// Compiles patterns: without `/`, matched against a name at any depth;
    /// with `/`, against the whole path relative to the root (a leading `/`
    /// is ignored).
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let (set, pat) =
                if p.contains('/') { (&mut paths, p.trim_start_matches('/')) } else { (&mut names, p.as_str()) };
            let g = GlobBuilder::new(pat)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|err| PatternError::Glob { pattern: p.clone(), err })?;
            set.add(g);
        }
        Ok(Excludes {
            names: names.build().map_err(PatternError::Set)?,
            paths: paths.build().map_err(PatternError::Set)?,
            any: !patterns.is_empty(),
        })
    }

    /// Whether the entry at `path` (relative, `/`-joined) is excluded.
    pub fn is_excluded(&self, path: &[u8]) -> bool {
        if !self.any || path.is_empty() {
            return false;
        }
        // globset matches on OsStr; raw bytes keep non-UTF-8 names exact
        use std::os::unix::ffi::OsStrExt;
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        self.names.is_match(std::ffi::OsStr::from_bytes(name)) || self.paths.is_match(std::ffi::OsStr::from_bytes(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_pattern_is_named() {
        let pats = ["ok".to_string(), "x[".to_string()];
        match Excludes::new(&pats) {
            Err(e @ PatternError::Glob { .. }) => assert!(e.to_string().starts_with("\"x[\": "), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_match_at_any_depth_paths_from_the_root() {
        let e = Excludes::new(&["*.pyc".to_string(), "/usr/share".to_string()]).unwrap();
        assert!(e.is_excluded(b"a/b/c.pyc"));
        assert!(e.is_excluded(b"usr/share"));
        assert!(!e.is_excluded(b"x/usr/share"));
        assert!(!e.is_excluded(b""));
        assert!(!Excludes::default().is_excluded(b"a"));
    }
}
