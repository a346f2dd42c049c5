//! A streaming reader of layer tar archives, the innermost step of OCI import
//! (layer blob -> decompressor -> this reader -> the in-memory tree).
//!
//! It reads ustar, GNU and PAX archives one 512-byte block at a time and never
//! allocates by a length the archive claims: PAX headers and GNU long names
//! are read only up to [`MAX_SPECIAL`] bytes, sparse maps up to
//! [`MAX_SPARSE_ENTRIES`] entries. It follows Go's `archive/tar` (which the
//! usual image tools use) where formats leave room: the PAX `size` wins over
//! the header's, entries of header-only types (links, directories, devices,
//! fifos) carry no data whatever their size field says, a `\0`-typed entry
//! whose name ends in `/` is a directory, global PAX headers are read and
//! ignored, and a header checksum may be the signed or unsigned sum. Unlike
//! Go, it reads the `SCHILY.devmajor`/`SCHILY.devminor` records star and
//! libarchive write for large device numbers. Numbers a system call would
//! change are refused, never truncated: device numbers beyond Linux's 12/20
//! bits, the id 4294967295 (chown's "no change"), mode bits above the file
//! type bits, sizes above `i64::MAX`.
//! Supported sparse formats: old GNU (`S` entries with extension blocks) and
//! PAX 0.0, 0.1 and 1.0.

use crate::manifest::Time;
use std::collections::BTreeMap;
use std::io::{self, Read};

/// Largest PAX header or GNU long name/link accepted (as Go's reader).
pub const MAX_SPECIAL: u64 = 1 << 20;
/// Most sparse map entries accepted for one file.
pub const MAX_SPARSE_ENTRIES: usize = 1 << 20;

const BLOCK: usize = 512;

/// What is wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The underlying stream failed (decompression, digest, truncation).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A header is malformed.
    #[error("{0}")]
    Bad(String),
    /// A member's header is malformed; its name as far as it is known.
    #[error("{msg}")]
    Entry {
        /// The member's name (raw).
        path: Vec<u8>,
        /// What is wrong.
        msg: String,
    },
}

fn bad<T>(msg: impl Into<String>) -> Result<T, TarError> {
    Err(TarError::Bad(msg.into()))
}

/// The type of an entry, after the format's extension headers are applied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EntryType {
    /// Regular file (`0`, `\0`, `7`, GNU sparse `S`).
    File,
    /// Hard link (`1`).
    Link,
    /// Symbolic link (`2`).
    Symlink,
    /// Character device (`3`).
    Char,
    /// Block device (`4`).
    Block,
    /// Directory (`5`).
    Dir,
    /// Fifo (`6`).
    Fifo,
}

/// One archive member's header, extensions applied.
#[derive(Clone, Debug)]
pub struct Header {
    /// Path as stored (raw bytes, not yet cleaned).
    pub path: Vec<u8>,
    /// Link target for hard and symbolic links.
    pub link: Vec<u8>,
    /// Entry type.
    pub kind: EntryType,
    /// Mode bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (PAX sub-seconds kept).
    pub mtime: Time,
    /// Device numbers for devices.
    pub dev: (u32, u32),
    /// Extended attributes from `SCHILY.xattr.*` records.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The file's logical size (the real size for sparse files).
    pub size: u64,
    /// For sparse files, the data chunks `(offset, length)`, ascending; the
    /// stored data is their concatenation and the rest is zeros.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// Reads an archive's members one after the other.
pub struct TarReader<R> {
    r: R,
    /// Data bytes of the current entry not yet read.
    data_left: u64,
    /// Padding after the current entry's data.
    pad_left: u64,
    done: bool,
}

impl<R: Read> TarReader<R> {
    /// Reads from `r` (already decompressed).
    pub fn new(r: R) -> Self {
        TarReader { r, data_left: 0, pad_left: 0, done: false }
    }

    /// Gives back the underlying reader (positioned after the end marker).
    pub fn into_inner(self) -> R {
        self.r
    }

    /// Reads some of the current entry's data; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.data_left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(self.data_left.min(usize::MAX as u64) as usize);
        let got = read_some(&mut self.r, &mut buf[..n])?;
        if got == 0 {
            return Err(truncated());
        }
        self.data_left -= got as u64;
        Ok(got)
    }

    /// Fills `buf` exactly from the current entry's data.
    pub fn read_data_exact(&mut self, mut buf: &mut [u8]) -> Result<(), TarError> {
        while !buf.is_empty() {
            let n = self.read_data(buf)?;
            if n == 0 {
                return Err(truncated());
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Some of the current entry's data, borrowed from the reader's own
    /// buffer (no copy); empty at its end. Hand back what was used with
    /// [`consume_data`](Self::consume_data).
    pub fn data_buf(&mut self) -> Result<&[u8], TarError>
    where
        R: io::BufRead,
    {
        if self.data_left == 0 {
            return Ok(&[]);
        }
        let left = self.data_left;
        // an interrupted fill is tried again; the second call only lends
        // what the first one brought in
        loop {
            match self.r.fill_buf() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => break,
            }
        }
        let b = self.r.fill_buf()?;
        if b.is_empty() {
            return Err(truncated());
        }
        Ok(&b[..b.len().min(left.min(usize::MAX as u64) as usize)])
    }

    /// Marks `n` bytes of what [`data_buf`](Self::data_buf) gave as read.
    pub fn consume_data(&mut self, n: usize)
    where
        R: io::BufRead,
    {
        debug_assert!(n as u64 <= self.data_left);
        self.r.consume(n);
        self.data_left -= n as u64;
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        let mut left = self.data_left + self.pad_left;
        let mut buf = [0u8; 8192];
        while left > 0 {
            let n = (left.min(buf.len() as u64)) as usize;
            let got = read_some(&mut self.r, &mut buf[..n])?;
            if got == 0 {
                return Err(truncated());
            }
            left -= got as u64;
        }
        self.data_left = 0;
        self.pad_left = 0;
        Ok(())
    }

    fn read_block(&mut self, b: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut off = 0;
        while off < BLOCK {
            let n = read_some(&mut self.r, &mut b[off..])?;
            if n == 0 {
                if off == 0 {
                    return Ok(false);
                }
                return Err(truncated());
            }
            off += n;
        }
        Ok(true)
    }

    /// Reads a special member's data (PAX header, long name) in full, within
    /// [`MAX_SPECIAL`].
    fn read_special(&mut self, size: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > MAX_SPECIAL {
            return bad(format!("{what} of {size} bytes exceeds the limit of {MAX_SPECIAL}"));
        }
        self.begin_data(size);
        let mut v = vec![0u8; size as usize];
        self.read_data_exact(&mut v)?;
        self.skip_rest()?;
        Ok(v)
    }

    fn begin_data(&mut self, size: u64) {
        self.data_left = size;
        self.pad_left = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    }

    /// Moves to the next member, skipping what is left of the current one.
    /// `None` at the end-of-archive marker (a zero block) or at a clean end
    /// of stream.
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut b = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut b)? {
                self.done = true;
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(truncated());
                }
                return Ok(None);
            }
            if b.iter().all(|&x| x == 0) {
                self.done = true;
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return bad("end-of-archive marker right after an extension header");
                }
                return Ok(None);
            }
            check_sum(&b)?;
            let flag = b[156];
            let hsize = parse_num(&b[124..136], "size")?;
            if hsize < 0 {
                return bad(format!("negative size {hsize}"));
            }
            let hsize = hsize as u64;
            match flag {
                b'x' => {
                    if pax.is_some() {
                        return bad("two PAX headers for one entry");
                    }
                    let data = self.read_special(hsize, "PAX header")?;
                    pax = Some(Pax::parse(&data)?);
                }
                b'g' => {
                    let data = self.read_special(hsize, "global PAX header")?;
                    Pax::parse(&data)?;
                }
                b'L' => {
                    let data = self.read_special(hsize, "GNU long name")?;
                    long_name = Some(trim_nul(&data).to_vec());
                }
                b'K' => {
                    let data = self.read_special(hsize, "GNU long link name")?;
                    long_link = Some(trim_nul(&data).to_vec());
                }
                _ => {
                    let name = match (pax.as_ref().and_then(|p| p.path.clone()), &long_name) {
                        (Some(p), _) => p,
                        (None, Some(n)) => n.clone(),
                        (None, None) => trim_nul(&b[0..100]).to_vec(),
                    };
                    return match self.member(&b, hsize, pax, long_name, long_link) {
                        Ok(h) => Ok(Some(h)),
                        Err(TarError::Bad(msg)) => Err(TarError::Entry { path: name, msg }),
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    fn member(
        &mut self,
        b: &[u8; BLOCK],
        hsize: u64,
        pax: Option<Pax>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Header, TarError> {
        let flag = b[156];
        let ustar = &b[257..263] == b"ustar\0";
        let gnu = &b[257..265] == b"ustar  \0";
        let mut path = trim_nul(&b[0..100]).to_vec();
        if ustar {
            let prefix = trim_nul(&b[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        let mut link = trim_nul(&b[157..257]).to_vec();
        if let Some(n) = long_name {
            path = n;
        }
        if let Some(l) = long_link {
            link = l;
        }
        let kind = match flag {
            b'0' | b'7' => EntryType::File,
            0 if path.ends_with(b"/") => EntryType::Dir,
            0 => EntryType::File,
            b'S' if gnu => EntryType::File,
            b'1' => EntryType::Link,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::Char,
            b'4' => EntryType::Block,
            b'5' => EntryType::Dir,
            b'6' => EntryType::Fifo,
            f => {
                let shown = if f.is_ascii_graphic() { format!("'{}'", f as char) } else { format!("0x{f:02x}") };
                return bad(format!("unsupported entry type {shown}"));
            }
        };
        let mode = parse_num(&b[100..108], "mode")?;
        // Permission bits, plus the file type bits that Go and Docker writers
        // add (ignored: the type flag says what the entry is); nothing else.
        if !(0..=0o177777).contains(&mode) {
            let shown = if mode < 0 { mode.to_string() } else { format!("{mode:o}") };
            return bad(format!("mode {shown} has bits outside the file type and permission bits"));
        }
        let uid = parse_num(&b[108..116], "uid")?;
        let gid = parse_num(&b[116..124], "gid")?;
        let mtime = parse_num(&b[136..148], "mtime")?;
        let (mut major, mut minor) = (0, 0);
        if matches!(kind, EntryType::Char | EntryType::Block) && (ustar || gnu) {
            major = parse_num(&b[329..337], "device major")?;
            minor = parse_num(&b[337..345], "device minor")?;
        }
        let mut h = Header {
            path,
            link,
            kind,
            mode: (mode & 0o7777) as u32,
            uid: to_id(uid, "uid")?,
            gid: to_id(gid, "gid")?,
            mtime: Time { sec: mtime, nsec: 0 },
            dev: (0, 0),
            xattrs: BTreeMap::new(),
            size: hsize,
            sparse: None,
        };
        let mut stored = hsize;
        let mut data_started = false;
        let mut gnu_sparse = None;
        if flag == b'S' {
            // Old GNU sparse: map in the header, extension blocks follow.
            let real = parse_num(&b[483..495], "sparse real size")?;
            let mut map = Vec::new();
            for i in 0..4 {
                let o = 386 + i * 24;
                push_sparse(&mut map, &b[o..o + 12], &b[o + 12..o + 24])?;
            }
            let mut extended = b[482] != 0;
            let mut e = [0u8; BLOCK];
            while extended {
                if !self.read_block(&mut e)? {
                    return Err(truncated());
                }
                for i in 0..21 {
                    let o = i * 24;
                    push_sparse(&mut map, &e[o..o + 12], &e[o + 12..o + 24])?;
                }
                extended = e[504] != 0;
            }
            if real < 0 {
                return bad(format!("negative sparse real size {real}"));
            }
            gnu_sparse = Some((real as u64, map));
        }
        if let Some(p) = pax {
            if let Some(v) = p.path {
                h.path = v;
            }
            if let Some(v) = p.linkpath {
                h.link = v;
            }
            if let Some(v) = p.uid {
                h.uid = to_id(v, "uid")?;
            }
            if let Some(v) = p.gid {
                h.gid = to_id(v, "gid")?;
            }
            // star and libarchive spell device numbers too large for the
            // header this way
            if matches!(kind, EntryType::Char | EntryType::Block) {
                major = p.devmajor.unwrap_or(major);
                minor = p.devminor.unwrap_or(minor);
            }
            if let Some(t) = p.mtime {
                h.mtime = t;
            }
            if let Some(s) = p.size {
                stored = s;
                h.size = s;
            }
            h.xattrs = p.xattrs;
            if let Some(sp) = p.sparse {
                if h.kind != EntryType::File {
                    return bad("PAX sparse records on an entry that is not a regular file");
                }
                if let Some(name) = sp.name {
                    h.path = name;
                }
                let real = sp
                    .real_size
                    .ok_or_else(|| TarError::Bad("PAX sparse file without GNU.sparse.size or realsize".into()))?;
                match sp.map {
                    SparseMap::InData => gnu_sparse = Some((real, Vec::new())),
                    SparseMap::Given(m) => gnu_sparse = Some((real, m)),
                }
                if matches!(sp.major_minor, Some((1, 0))) {
                    // The map precedes the data, inside the member.
                    self.begin_data(stored);
                    data_started = true;
                    let map = self.read_sparse_1_0()?;
                    stored = self.data_left;
                    gnu_sparse = Some((real, map));
                }
            }
        }
        if matches!(
            h.kind,
            EntryType::Link
                | EntryType::Symlink
                | EntryType::Char
                | EntryType::Block
                | EntryType::Dir
                | EntryType::Fifo
        ) {
            stored = 0;
            h.size = 0;
        }
        for (what, id) in [("uid", h.uid), ("gid", h.gid)] {
            crate::manifest::check_id(what, id.into()).map_err(|e| TarError::Bad(e.to_string()))?;
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.dev = to_dev(major, minor)?;
        }
        if !data_started {
            self.begin_data(stored);
        }
        if let Some((real, map)) = gnu_sparse {
            validate_sparse(&map, real, stored)?;
            h.size = real;
            h.sparse = Some(map);
        }
        if h.size > i64::MAX as u64 {
            return bad(format!("size {} is larger than a file can be ({})", h.size, i64::MAX));
        }
        Ok(h)
    }

    /// PAX sparse 1.0: decimal numbers, one per line: count, then offset and
    /// length pairs, padded to a block.
    fn read_sparse_1_0(&mut self) -> Result<Vec<(u64, u64)>, TarError> {
        let mut consumed = 0u64;
        let mut line = Vec::new();
        let mut next_num = |this: &mut Self, consumed: &mut u64| -> Result<u64, TarError> {
            line.clear();
            loop {
                let mut c = [0u8; 1];
                this.read_data_exact(&mut c)?;
                *consumed += 1;
                if c[0] == b'\n' {
                    break;
                }
                if line.len() >= 20 {
                    return bad("sparse map number too long");
                }
                line.push(c[0]);
            }
            parse_dec(&line).ok_or_else(|| TarError::Bad("malformed sparse map number".into()))
        };
        let count = next_num(self, &mut consumed)?;
        if count > MAX_SPARSE_ENTRIES as u64 {
            return bad(format!("sparse map of {count} entries exceeds the limit of {MAX_SPARSE_ENTRIES}"));
        }
        let mut map = Vec::new();
        for _ in 0..count {
            let o = next_num(self, &mut consumed)?;
            let l = next_num(self, &mut consumed)?;
            map.push((o, l));
        }
        let pad = (BLOCK as u64 - consumed % BLOCK as u64) % BLOCK as u64;
        let mut skip = vec![0u8; pad as usize];
        self.read_data_exact(&mut skip)?;
        Ok(map)
    }
}

fn truncated() -> TarError {
    TarError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "archive is truncated"))
}

fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn check_sum(b: &[u8; BLOCK]) -> Result<(), TarError> {
    let stored = parse_num(&b[148..156], "checksum")?;
    // the whole block summed (two plain loops the compiler vectorizes),
    // then the checksum field counted as eight spaces instead
    // (512 bytes sum to at most 130,560: 32 bits hold it)
    let sum_u = |x: &[u8]| i64::from(x.iter().map(|&c| u32::from(c)).sum::<u32>());
    let sum_s = |x: &[u8]| i64::from(x.iter().map(|&c| i32::from(c as i8)).sum::<i32>());
    let field = &b[148..156];
    let unsigned = sum_u(b) - sum_u(field) + 8 * i64::from(b' ');
    // the signed sum (of some old tars) only when the usual one is not it
    if stored != unsigned && stored != sum_s(b) - sum_s(field) + 8 * i64::from(b' ') {
        return bad(format!("header checksum mismatch (stored {stored}, computed {unsigned})"));
    }
    Ok(())
}

/// Parses a numeric header field: octal text, or GNU base-256 when the first
/// byte has its high bit set.
fn parse_num(f: &[u8], what: &str) -> Result<i64, TarError> {
    if f.first().is_some_and(|&c| c & 0x80 != 0) {
        // Base-256, two's complement when the second-highest bit is set.
        let inv: u8 = if f[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in f.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return bad(format!("{what} out of range"));
            }
            x = (x << 8) | c as u64;
        }
        if x >> 63 != 0 {
            return bad(format!("{what} out of range"));
        }
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    let t = trim_ws_nul(f);
    if t.is_empty() {
        return Ok(0);
    }
    let mut v: i64 = 0;
    for &c in t {
        if !(b'0'..=b'7').contains(&c) {
            return bad(format!("invalid octal {what} field {:?}", String::from_utf8_lossy(f)));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add((c - b'0') as i64))
            .ok_or_else(|| TarError::Bad(format!("{what} out of range")))?;
    }
    Ok(v)
}

fn trim_ws_nul(f: &[u8]) -> &[u8] {
    let start = f.iter().position(|&c| c != b' ' && c != 0).unwrap_or(f.len());
    let f = &f[start..];
    // Octal digits end at the first space or NUL.
    let end = f.iter().position(|&c| c == b' ' || c == 0).unwrap_or(f.len());
    &f[..end]
}

fn to_id(v: i64, what: &str) -> Result<u32, TarError> {
    u32::try_from(v).map_err(|_| TarError::Bad(format!("{what} {v} out of range 0..=4294967294")))
}

/// Device numbers Linux can represent, never truncated.
fn to_dev(major: i64, minor: i64) -> Result<(u32, u32), TarError> {
    if major < 0 || minor < 0 {
        return bad(format!("device {major}:{minor} has a negative number"));
    }
    crate::manifest::check_dev(major as u64, minor as u64).map_err(|e| TarError::Bad(e.to_string()))?;
    Ok((major as u32, minor as u32))
}

fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn push_sparse(map: &mut Vec<(u64, u64)>, off: &[u8], len: &[u8]) -> Result<(), TarError> {
    if trim_ws_nul(off).is_empty() && trim_ws_nul(len).is_empty() && off[0] & 0x80 == 0 {
        return Ok(());
    }
    let o = parse_num(off, "sparse offset")?;
    let l = parse_num(len, "sparse length")?;
    if o < 0 || l < 0 {
        return bad("negative sparse map entry");
    }
    if map.len() >= MAX_SPARSE_ENTRIES {
        return bad(format!("sparse map exceeds the limit of {MAX_SPARSE_ENTRIES} entries"));
    }
    map.push((o as u64, l as u64));
    Ok(())
}

/// Chunks ascending, not overlapping, inside the real size, and their
/// lengths adding up to the stored data.
fn validate_sparse(map: &[(u64, u64)], real: u64, stored: u64) -> Result<(), TarError> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(o, l) in map {
        if o < end {
            return bad("sparse map entries overlap or are not ascending");
        }
        end = o.checked_add(l).ok_or_else(|| TarError::Bad("sparse map entry overflows".into()))?;
        if end > real {
            return bad(format!("sparse map entry ends at {end}, past the file's size {real}"));
        }
        total += l;
    }
    if total != stored {
        return bad(format!("sparse map covers {total} bytes but the entry stores {stored}"));
    }
    Ok(())
}

enum SparseMap {
    InData,
    Given(Vec<(u64, u64)>),
}

struct PaxSparse {
    name: Option<Vec<u8>>,
    real_size: Option<u64>,
    major_minor: Option<(u64, u64)>,
    map: SparseMap,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<i64>,
    gid: Option<i64>,
    devmajor: Option<i64>,
    devminor: Option<i64>,
    mtime: Option<Time>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse: Option<PaxSparse>,
}

impl Pax {
    fn parse(mut data: &[u8]) -> Result<Pax, TarError> {
        let mut p = Pax::default();
        let mut sp_name = None;
        let mut sp_real = None;
        let mut sp_major = None;
        let mut sp_minor = None;
        let mut sp_map: Option<Vec<(u64, u64)>> = None;
        let mut sp_offsets: Vec<(u64, u64)> = Vec::new();
        let mut pending_off: Option<u64> = None;
        let mut any_sparse = false;
        let total = data.len();
        while !data.is_empty() {
            let sp = data
                .iter()
                .position(|&c| c == b' ')
                .ok_or_else(|| TarError::Bad("malformed PAX record (no length)".into()))?;
            let len = parse_dec(&data[..sp]).ok_or_else(|| TarError::Bad("malformed PAX record length".into()))?;
            if len > data.len() as u64 || (len as usize) <= sp + 1 {
                let at = total - data.len();
                let why = if len > data.len() as u64 {
                    format!("only {} bytes remain", data.len())
                } else {
                    "that does not cover its own length field".to_string()
                };
                return bad(format!(
                    "PAX record length out of bounds: the record at offset {at} of the PAX data claims {len} bytes, but {why}"
                ));
            }
            let rec = &data[sp + 1..len as usize];
            data = &data[len as usize..];
            let rec =
                rec.strip_suffix(b"\n").ok_or_else(|| TarError::Bad("PAX record does not end in a newline".into()))?;
            let eq =
                rec.iter().position(|&c| c == b'=').ok_or_else(|| TarError::Bad("PAX record without '='".into()))?;
            let (k, v) = (&rec[..eq], &rec[eq + 1..]);
            if k.contains(&0) {
                return bad("PAX record key contains NUL");
            }
            let text = || std::str::from_utf8(v).ok();
            let num = |what: &str| -> Result<u64, TarError> {
                parse_dec(v)
                    .ok_or_else(|| TarError::Bad(format!("invalid PAX {what} {:?}", String::from_utf8_lossy(v))))
            };
            match k {
                b"path" | b"linkpath" => {
                    if v.contains(&0) {
                        return bad("PAX path contains NUL");
                    }
                    if k == b"path" {
                        p.path = Some(v.to_vec());
                    } else {
                        p.linkpath = Some(v.to_vec());
                    }
                }
                b"size" => p.size = Some(num("size")?),
                b"uid" => p.uid = Some(i64::try_from(num("uid")?).unwrap_or(i64::MAX)),
                b"gid" => p.gid = Some(i64::try_from(num("gid")?).unwrap_or(i64::MAX)),
                b"SCHILY.devmajor" => p.devmajor = Some(i64::try_from(num("device major")?).unwrap_or(i64::MAX)),
                b"SCHILY.devminor" => p.devminor = Some(i64::try_from(num("device minor")?).unwrap_or(i64::MAX)),
                b"mtime" => {
                    p.mtime =
                        Some(text().and_then(parse_pax_time).ok_or_else(|| {
                            TarError::Bad(format!("invalid PAX mtime {:?}", String::from_utf8_lossy(v)))
                        })?)
                }
                b"GNU.sparse.name" => {
                    any_sparse = true;
                    sp_name = Some(v.to_vec());
                }
                b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                    any_sparse = true;
                    sp_real = Some(num("sparse size")?);
                }
                b"GNU.sparse.major" => {
                    any_sparse = true;
                    sp_major = Some(num("sparse major")?);
                }
                b"GNU.sparse.minor" => {
                    any_sparse = true;
                    sp_minor = Some(num("sparse minor")?);
                }
                b"GNU.sparse.map" => {
                    any_sparse = true;
                    let mut m = Vec::new();
                    let parts: Vec<&[u8]> = if v.is_empty() { Vec::new() } else { v.split(|&c| c == b',').collect() };
                    if parts.len() % 2 != 0 {
                        return bad("GNU.sparse.map has an odd number of values");
                    }
                    if parts.len() / 2 > MAX_SPARSE_ENTRIES {
                        return bad("sparse map exceeds the entry limit");
                    }
                    for pair in parts.chunks(2) {
                        let o = parse_dec(pair[0]).ok_or_else(|| TarError::Bad("invalid GNU.sparse.map".into()))?;
                        let l = parse_dec(pair[1]).ok_or_else(|| TarError::Bad("invalid GNU.sparse.map".into()))?;
                        m.push((o, l));
                    }
                    sp_map = Some(m);
                }
                b"GNU.sparse.offset" => {
                    any_sparse = true;
                    pending_off = Some(num("sparse offset")?);
                }
                b"GNU.sparse.numbytes" => {
                    any_sparse = true;
                    let o =
                        pending_off.take().ok_or_else(|| TarError::Bad("GNU.sparse.numbytes without offset".into()))?;
                    if sp_offsets.len() >= MAX_SPARSE_ENTRIES {
                        return bad("sparse map exceeds the entry limit");
                    }
                    sp_offsets.push((o, num("sparse numbytes")?));
                }
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        p.xattrs.insert(name.to_vec(), v.to_vec());
                    }
                }
            }
        }
        if any_sparse {
            let major_minor = match (sp_major, sp_minor) {
                (Some(a), Some(b)) => Some((a, b)),
                (None, None) => None,
                _ => return bad("GNU.sparse.major without minor or the reverse"),
            };
            let map = match major_minor {
                Some((1, 0)) => SparseMap::InData,
                Some((0, 1)) | None => match sp_map {
                    Some(m) => SparseMap::Given(m),
                    None => SparseMap::Given(sp_offsets),
                },
                Some((0, 0)) => SparseMap::Given(sp_offsets),
                Some((a, b)) => return bad(format!("unsupported PAX sparse format {a}.{b}")),
            };
            p.sparse = Some(PaxSparse { name: sp_name, real_size: sp_real, major_minor, map });
        }
        Ok(p)
    }
}

/// PAX time: `[-]seconds[.fraction]`; digits past nanoseconds are dropped.
fn parse_pax_time(s: &str) -> Option<Time> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if secs.is_empty() || !secs.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        ns += (c - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some(Time { sec: secs, nsec: ns });
    }
    if ns == 0 {
        return Some(Time { sec: -secs, nsec: 0 });
    }
    Some(Time { sec: -secs - 1, nsec: 1_000_000_000 - ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_fractions() {
        assert_eq!(parse_pax_time("1.5"), Some(Time { sec: 1, nsec: 500_000_000 }));
        assert_eq!(parse_pax_time("-1.5"), Some(Time { sec: -2, nsec: 500_000_000 }));
        assert_eq!(parse_pax_time("12.1234567891"), Some(Time { sec: 12, nsec: 123_456_789 }));
        assert_eq!(parse_pax_time("-3"), Some(Time { sec: -3, nsec: 0 }));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_num(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(parse_num(b"  644 \0\0", "m").unwrap(), 0o644);
        assert_eq!(parse_num(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "s").unwrap(), 256);
        assert_eq!(parse_num(&[0xff; 12], "t").unwrap(), -1);
        let mut m = [0xffu8; 12];
        m[11] = 0xfe;
        assert_eq!(parse_num(&m, "t").unwrap(), -2);
        assert!(parse_num(b"0000899\0", "m").is_err());
        assert!(parse_num(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "s").is_err());
    }

    #[test]
    fn header_checksum_signed_or_unsigned() {
        // a header with bytes above 127, whose two sums differ
        let mut b = [0u8; BLOCK];
        for (i, x) in b.iter_mut().enumerate() {
            *x = if i % 50 == 7 { 200 } else { (i * 37 % 100) as u8 };
        }
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, &c) in b.iter().enumerate() {
            let c = if (148..156).contains(&i) { b' ' } else { c };
            unsigned += i64::from(c);
            signed += i64::from(c as i8);
        }
        assert_ne!(unsigned, signed);
        for (sum, ok) in [(unsigned, true), (signed, true), (unsigned + 1, false), (signed - 1, false)] {
            b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            assert_eq!(check_sum(&b).is_ok(), ok, "stored {sum}");
        }
    }
}
