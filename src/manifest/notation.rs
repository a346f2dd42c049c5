//! How manifest values are written for people: escaped names, RFC 3339
//! times, octal modes, and hardlinks resolved to the inode they share. One
//! notation for every listing and report (`ocix show`, `ocix diff`).

use super::compact::{Compact, Node};
use super::{KindCode, Manifest, Time, path_display};
use std::borrow::Cow;
use std::collections::HashMap;

/// Escapes raw bytes (a name, a symlink target, an xattr name) into one line
/// of text, losslessly: `\` becomes `\\`, control characters their Rust
/// escapes (`\n`, `\t`, `\u{1b}`...), bytes that are not UTF-8 `\xNN`;
/// everything else is kept. This is [`path_display`] without its leading `/`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = path_display(bytes);
    s.remove(0);
    s
}

/// Formats a time as RFC 3339 UTC with nanoseconds, e.g.
/// `2020-01-01T00:00:00.123456789Z`. Years outside 0..=9999 are written with
/// as many digits as they need (and a sign when negative).
pub fn format_time(t: Time) -> String {
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs % 3600 / 60, secs % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:09}Z", t.nsec)
}

/// Permission bits as four octal digits (`0644`, `4755`).
pub fn format_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Year, month (1..=12), day (1..=31) of a count of days since 1970-01-01 in
/// the proleptic Gregorian calendar (the usual era-based conversion: 400-year
/// eras of 146097 days starting on March 1st).
fn civil_from_days(days: i64) -> (i128, u32, u32) {
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i128::from(m <= 2);
    (y, m, d)
}

/// A manifest in either form, for the readers that work on the compact
/// one ([`crate::render`], [`crate::diff`]): a [`Compact`] is read as it
/// is, a tree is converted first.
pub trait AsCompact {
    /// The compact form, borrowed when it is one already.
    ///
    /// # Panics
    /// For a tree the compact form cannot hold (a name longer than 255
    /// bytes, mode bits outside 07777, device numbers Linux cannot
    /// represent), which no decoded or scanned manifest is.
    fn as_compact(&self) -> Cow<'_, Compact>;
}

impl AsCompact for Compact {
    fn as_compact(&self) -> Cow<'_, Compact> {
        Cow::Borrowed(self)
    }
}

impl AsCompact for Manifest {
    fn as_compact(&self) -> Cow<'_, Compact> {
        match Compact::from_tree(self) {
            Ok(c) => Cow::Owned(c),
            Err(e) => panic!("a tree the compact form cannot hold: {e}"),
        }
    }
}

/// The entries hardlinks name, found once for a whole [`Compact`]
/// manifest: a map from each path some hardlink names to that entry and
/// the number of names its inode has. It holds one slot per distinct path
/// named, so it stays small however many entries the manifest has.
pub struct Links<'a> {
    c: &'a Compact,
    /// Path named (clean: components joined by one `/`) -> (index of the
    /// entry there or `u32::MAX`, names of the inode).
    named: HashMap<Cow<'a, [u8]>, (u32, u64)>,
}

/// An entry as shown: a hardlink resolved to the first name of its inode,
/// whose metadata and content it shares.
#[derive(Clone, Copy, Debug)]
pub struct ResolvedNode<'a> {
    /// The inode's entry (the first name's, for a hardlink).
    pub node: Node<'a>,
    /// For a hardlink, the path of the first name it links to.
    pub link: Option<&'a [u8]>,
}

/// A hardlink path as [`Manifest::get`] reads it: empty components
/// dropped.
fn clean(p: &[u8]) -> Cow<'_, [u8]> {
    let dirty = p.first() == Some(&b'/') || p.last() == Some(&b'/') || p.windows(2).any(|w| w == b"//");
    if !dirty {
        return Cow::Borrowed(p);
    }
    let parts: Vec<&[u8]> = p.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    Cow::Owned(parts.join(&b'/'))
}

impl<'a> Links<'a> {
    /// Finds every entry a hardlink of `c` names (two passes over the
    /// manifest when it has hardlinks, one when it has none).
    pub fn new(c: &'a Compact) -> Self {
        let mut named: HashMap<Cow<'a, [u8]>, (u32, u64)> = HashMap::new();
        for n in c.nodes() {
            if n.code() == KindCode::Hardlink {
                let t = n.target().unwrap_or_default();
                named.entry(clean(t)).or_insert((u32::MAX, 1)).1 += 1;
            }
        }
        if !named.is_empty() {
            let mut cur = c.cursor();
            while let Some((path, n)) = cur.next_entry() {
                if let Some(slot) = named.get_mut(path) {
                    slot.0 = n.index() as u32;
                }
            }
        }
        Links { c, named }
    }

    /// Resolves a hardlink to its first name, of whatever type; any other
    /// entry (and a hardlink to a missing entry, a directory or another
    /// hardlink, which a valid manifest never has) stands for itself.
    pub fn resolve(&self, n: Node<'a>) -> ResolvedNode<'a> {
        if n.code() == KindCode::Hardlink {
            let t = n.target().unwrap_or_default();
            let found = self.named.get(&*clean(t)).and_then(|&(i, _)| self.c.node(i as usize));
            if let Some(first) = found.filter(|f| !matches!(f.code(), KindCode::Dir | KindCode::Hardlink)) {
                return ResolvedNode { node: first, link: Some(t) };
            }
        }
        ResolvedNode { node: n, link: None }
    }

    /// How many names the inode whose first name is at `path` has: 1 plus
    /// the hardlinks to it.
    pub fn names(&self, path: &[u8]) -> u64 {
        self.named.get(&*clean(path)).map_or(1, |&(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(Time { sec: 0, nsec: 0 }), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_time(Time { sec: 1_577_836_800, nsec: 123_456_789 }), "2020-01-01T00:00:00.123456789Z");
        assert_eq!(format_time(Time { sec: 951_782_400, nsec: 1 }), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(format_time(Time { sec: -1, nsec: 500_000_000 }), "1969-12-31T23:59:59.500000000Z");
        assert_eq!(format_time(Time { sec: 4_102_444_799, nsec: 0 }), "2099-12-31T23:59:59.000000000Z");
        // Extremes do not panic.
        let _ = format_time(Time { sec: i64::MAX, nsec: 999_999_999 });
        let _ = format_time(Time { sec: i64::MIN, nsec: 0 });
    }

    #[test]
    fn escape_is_one_line() {
        assert_eq!(escape(b"a b\n\\\xff"), "a b\\n\\\\\\xff");
        assert_eq!(format_mode(0o4755), "4755");
        assert_eq!(format_mode(0o644), "0644");
    }
}
