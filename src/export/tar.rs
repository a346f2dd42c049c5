//! The canonical tar writer: entries of a manifest (or of a change set) ->
//! one uncompressed layer tar, the same bytes for the same entries on any
//! machine.
//!
//! Every member is a POSIX ustar header with fixed fields: no user or group
//! names, no access or change times, the mode as permission bits only
//! (setuid, setgid, sticky included, no file type bits), numbers as
//! zero-padded octal, the checksum as 6 octal digits, NUL, space. A PAX
//! extended header (named `././@PaxHeader`, mode 0644, owner 0:0, mtime 0)
//! comes before a member only when the ustar fields cannot hold it, with
//! its records in bytewise order of their keys:
//! - `path` for a name that does not fit the 100 + 155 bytes of the name and
//!   prefix fields (split at the last `/` that fits), `linkpath` for a link
//!   target longer than 100 bytes;
//! - `uid`, `gid` above 2097151 (7 octal digits), `size` of 8 GiB or more;
//! - `mtime` when the time has nanoseconds or lies before 1970 or beyond
//!   the 11 octal digits (the header then holds the whole seconds, or 0);
//! - `SCHILY.xattr.NAME` for each xattr, as GNU tar, bsdtar, Go and umoci
//!   write them.
//!
//! Names: the root is `./`, every other entry its path relative to the root
//! without a leading `./`, directories with a trailing `/`. Hardlinks are
//! tar hardlinks (type `1`) naming the first name, with its metadata; devices carry their
//! numbers in the devmajor/devminor fields; fifos are type `6`. A regular
//! file's content is written whole: zero runs become zeros (most readers of
//! layers cannot read sparse tar entries). The archive ends with two zero
//! blocks, nothing more.
//!
//! What tar cannot hold is refused before a byte of the member is written:
//! a socket, an xattr whose name contains `=` (a PAX record splits at the
//! first one).

use crate::manifest::{Entry, File, Kind, Meta};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Largest value of a 7-digit octal field (uid, gid, mode, device numbers).
const MAX_OCTAL7: u64 = 0o7777777;
/// Largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL11: u64 = 0o77777777777;
/// The name of every PAX extended header member.
const PAX_NAME: &[u8] = b"././@PaxHeader";

/// Why an entry cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum TarWriteError {
    /// The output or a content source failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The entry has no tar form.
    #[error("{path}: {msg}")]
    Unrepresentable {
        /// The entry, as shown.
        path: String,
        /// Why.
        msg: String,
    },
    /// A file's content is not what the manifest says.
    #[error("{path}: {msg}")]
    Content {
        /// The entry, as shown.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// Writes members one after the other to `W`.
pub struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    /// A writer into `out`.
    pub fn new(out: W) -> Self {
        TarWriter { out, buf: vec![0u8; 256 << 10] }
    }

    /// Writes one entry at `path` (relative to the root, `/`-joined, empty
    /// for the root). A hardlink's header carries the metadata given with
    /// it: pass its first name's (see [`super::with_link_meta`]), as GNU tar
    /// writes it, since some unpackers apply it to the inode. A regular file with content reads it from `content`,
    /// which must give exactly `size` bytes (checked by the caller's
    /// reader, which may also verify the digest).
    pub fn entry(&mut self, path: &[u8], e: &Entry, content: Option<&mut dyn Read>) -> Result<(), TarWriteError> {
        let shown = || crate::manifest::path_display(path);
        let unrep = |msg: &str| TarWriteError::Unrepresentable { path: shown(), msg: msg.to_string() };
        let mut name = if path.is_empty() { b"./".to_vec() } else { path.to_vec() };
        let mut h = Head { size: 0, flag: b'0', link: Vec::new(), dev: (0, 0) };
        match &e.kind {
            Kind::Dir(_) => {
                if !path.is_empty() {
                    name.push(b'/');
                }
                h.flag = b'5';
            }
            Kind::File(f) => h.size = f.size,
            Kind::Symlink(t) => {
                h.flag = b'2';
                h.link = t.clone();
            }
            Kind::Hardlink(t) => {
                h.flag = b'1';
                h.link = t.clone();
            }
            Kind::Char(d) => {
                h.flag = b'3';
                h.dev = (d.major, d.minor);
            }
            Kind::Block(d) => {
                h.flag = b'4';
                h.dev = (d.major, d.minor);
            }
            Kind::Fifo => h.flag = b'6',
            Kind::Socket => return Err(unrep("a socket cannot be put in a tar archive")),
        }
        if e.meta.xattrs.keys().any(|k| k.contains(&b'=')) {
            return Err(unrep("an xattr name contains '=', which a PAX record cannot hold"));
        }
        self.member(&name, &e.meta, &h)?;
        if let (Kind::File(f), true) = (&e.kind, h.size > 0) {
            let r = content.ok_or_else(|| TarWriteError::Content { path: shown(), msg: "no content given".into() })?;
            self.content(r, f).map_err(|e| match e {
                TarWriteError::Content { msg, .. } => TarWriteError::Content { path: shown(), msg },
                e => e,
            })?;
        }
        Ok(())
    }

    /// Writes a whiteout member (`.wh.NAME` or `.wh..wh..opq` inside the
    /// directory `dir`): an empty regular file, mode 0, owner 0:0, mtime 0.
    pub fn whiteout(&mut self, dir: &[u8], name: &[u8]) -> Result<(), TarWriteError> {
        let mut p = dir.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name);
        let meta = Meta::default();
        self.member(&p, &meta, &Head { size: 0, flag: b'0', link: Vec::new(), dev: (0, 0) })?;
        Ok(())
    }

    /// Ends the archive (two zero blocks) and gives back the output.
    pub fn finish(mut self) -> Result<W, TarWriteError> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }

    fn content(&mut self, r: &mut dyn Read, f: &File) -> Result<(), TarWriteError> {
        let mut left = f.size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match r.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(TarWriteError::Content {
                        path: String::new(),
                        msg: format!("content ends {left} bytes short of its size {}", f.size),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarWriteError::Content { path: String::new(), msg: e.to_string() }),
            };
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        let pad = (BLOCK - (f.size % BLOCK as u64) as usize) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// Writes the PAX header (if needed) and the ustar header of a member.
    fn member(&mut self, name: &[u8], meta: &Meta, h: &Head) -> io::Result<()> {
        let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut b = [0u8; BLOCK];
        match split_name(name) {
            Some((prefix, rest)) => {
                b[..rest.len()].copy_from_slice(rest);
                b[345..345 + prefix.len()].copy_from_slice(prefix);
            }
            None => {
                pax.insert(b"path".to_vec(), name.to_vec());
                // the name field keeps as much of the name as fits, for
                // readers that ignore PAX
                let cut = name.len().min(100);
                b[..cut].copy_from_slice(&name[..cut]);
            }
        }
        octal(&mut b[100..108], u64::from(meta.mode & 0o7777));
        for (field, id, key) in [(108..116, meta.uid, &b"uid"[..]), (116..124, meta.gid, &b"gid"[..])] {
            if u64::from(id) > MAX_OCTAL7 {
                pax.insert(key.to_vec(), id.to_string().into_bytes());
                octal(&mut b[field], 0);
            } else {
                octal(&mut b[field], u64::from(id));
            }
        }
        if h.size > MAX_OCTAL11 {
            pax.insert(b"size".to_vec(), h.size.to_string().into_bytes());
            octal(&mut b[124..136], 0);
        } else {
            octal(&mut b[124..136], h.size);
        }
        let t = meta.mtime;
        let in_range = t.sec >= 0 && (t.sec as u64) <= MAX_OCTAL11;
        if t.nsec != 0 || !in_range {
            pax.insert(b"mtime".to_vec(), pax_time(t.sec, t.nsec).into_bytes());
        }
        octal(&mut b[136..148], if in_range { t.sec as u64 } else { 0 });
        b[156] = h.flag;
        if h.link.len() > 100 {
            pax.insert(b"linkpath".to_vec(), h.link.clone());
            b[157..257].copy_from_slice(&h.link[..100]);
        } else {
            b[157..157 + h.link.len()].copy_from_slice(&h.link);
        }
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        if matches!(h.flag, b'3' | b'4') {
            octal(&mut b[329..337], u64::from(h.dev.0));
            octal(&mut b[337..345], u64::from(h.dev.1));
        }
        for (k, v) in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.insert(key, v.clone());
        }
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut data, k, v);
            }
            let mut p = [0u8; BLOCK];
            p[..PAX_NAME.len()].copy_from_slice(PAX_NAME);
            octal(&mut p[100..108], 0o644);
            octal(&mut p[108..116], 0);
            octal(&mut p[116..124], 0);
            octal(&mut p[124..136], data.len() as u64);
            octal(&mut p[136..148], 0);
            p[156] = b'x';
            p[257..263].copy_from_slice(b"ustar\0");
            p[263..265].copy_from_slice(b"00");
            checksum(&mut p);
            self.out.write_all(&p)?;
            self.out.write_all(&data)?;
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.out.write_all(&[0u8; BLOCK][..pad])?;
        }
        checksum(&mut b);
        self.out.write_all(&b)
    }
}

/// The type-specific part of a member's header.
struct Head {
    size: u64,
    flag: u8,
    link: Vec<u8>,
    dev: (u32, u32),
}

/// Splits a name into the ustar prefix and name fields: the whole name if
/// it fits the name field, else at the last `/` that leaves at most 155
/// bytes before it and 1 to 100 after. `None` if no split fits.
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    // a directory's trailing `/` is part of the last component
    let body = name.strip_suffix(b"/").unwrap_or(name);
    (0..body.len().min(156)).rev().filter(|&i| body[i] == b'/').find_map(|i| {
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        (i > 0 && rest.len() <= 100 && prefix.len() <= 155).then_some((prefix, rest))
    })
}

/// Writes `v` as zero-padded octal filling the field but its last byte,
/// which is NUL.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn checksum(b: &mut [u8; BLOCK]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let s = format!("{sum:06o}");
    b[148..154].copy_from_slice(s.as_bytes());
    b[154] = 0;
    b[155] = b' ';
}

/// `LEN KEY=VALUE\n`, LEN counting the whole record, its own digits too.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: `SEC[.NANOS]`, negative times as `-SEC.NANOS` counting back
/// from the epoch, trailing zeros of the fraction dropped.
fn pax_time(sec: i64, nsec: u32) -> String {
    let (neg, whole, frac) = if sec < 0 && nsec > 0 {
        (true, (-(sec + 1)) as u64, 1_000_000_000 - nsec)
    } else if sec < 0 {
        (true, sec.unsigned_abs(), 0)
    } else {
        (false, sec as u64, nsec)
    };
    let mut s = format!("{}{whole}", if neg { "-" } else { "" });
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", &[b'a'; 92]);
        assert_eq!(v.len(), 102);
        assert!(v.starts_with(b"102 path="));
        let mut v = Vec::new();
        pax_record(&mut v, b"k", b"");
        assert_eq!(v, b"5 k=\n");
    }

    #[test]
    fn pax_times_read_back() {
        assert_eq!(pax_time(1, 500_000_000), "1.5");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(-3, 0), "-3");
        assert_eq!(pax_time(12, 123_456_789), "12.123456789");
    }

    #[test]
    fn names_split_at_the_last_slash_that_fits() {
        let long = [&[b'a'; 120][..], b"/", &[b'b'; 50][..]].concat();
        assert_eq!(split_name(&long), Some((&long[..120], &long[121..])));
        assert_eq!(split_name(&[b'c'; 101]), None);
        let dir = [&[b'a'; 60][..], b"/", &[b'b'; 100][..], b"/"].concat();
        assert_eq!(split_name(&dir), None);
        let dir = [&[b'a'; 60][..], b"/", &[b'b'; 99][..], b"/"].concat();
        assert_eq!(split_name(&dir).map(|(p, _)| p.len()), Some(60));
    }
}
