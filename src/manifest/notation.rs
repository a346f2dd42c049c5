//! How manifest values are written for people: escaped names, RFC 3339
//! times, octal modes, and hardlinks resolved to the inode they share. One
//! notation for every listing and report (`ocix show`, `ocix diff`).

use super::{Entry, Kind, Manifest, Meta, Time, path_display};

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

/// An entry as shown: a hardlink resolved to the first name of its inode,
/// whose metadata and content it shares.
pub struct Resolved<'a> {
    /// Metadata of the inode (the first name's, for a hardlink).
    pub meta: &'a Meta,
    /// Kind of the inode (the first name's, for a hardlink).
    pub kind: &'a Kind,
    /// For a hardlink, the path of the first name it links to.
    pub link: Option<&'a [u8]>,
}

/// Resolves a hardlink entry to its first name, of whatever type; any other
/// entry (and a hardlink to a missing entry, a directory or another
/// hardlink, which a valid manifest never has) stands for itself.
pub fn resolve<'a>(m: &'a Manifest, e: &'a Entry) -> Resolved<'a> {
    if let Kind::Hardlink(p) = &e.kind {
        if let Some(t) = m.get(p) {
            if !matches!(t.kind, Kind::Dir(_) | Kind::Hardlink(_)) {
                return Resolved { meta: &t.meta, kind: &t.kind, link: Some(p) };
            }
        }
    }
    Resolved { meta: &e.meta, kind: &e.kind, link: None }
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
