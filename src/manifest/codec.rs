//! Manifest <-> canonical CBOR, per `ocix.cddl`.
//!
//! Entry keys (small unsigned integers, ascending, defaults omitted):
//! 0 name, 1 type, 2 mode, 3 uid, 4 gid, 5 mtime seconds, 6 mtime nanoseconds,
//! 7 size, 8 digest, 9 zero runs, 10 target, 11 rdev, 12 xattrs, 13 children,
//! 14 uname, 15 gname. A value equal to its default must be omitted, so every
//! tree has exactly one encoding; the decoder rejects an explicit default.

use super::cbor::{CborError, Major, Reader, Writer};
use super::compact::{
    BuildError, Builder, Compact, EntryView, FileRef, Leaf, MetaIn, Node, StreamPlan, Visit, Xattr, Xattrs,
};
use super::{
    BLOCK, Dev, Digest, KindCode, MAX_TARGET, MAX_XATTR_VALUE, Manifest, OCIX_TAG, Time, VERSION, check_depth,
    check_name, path_display,
};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt;

const K_NAME: u64 = 0;
const K_TYPE: u64 = 1;
const K_MODE: u64 = 2;
const K_UID: u64 = 3;
const K_GID: u64 = 4;
const K_MTIME: u64 = 5;
const K_NSEC: u64 = 6;
const K_SIZE: u64 = 7;
const K_DIGEST: u64 = 8;
const K_ZEROS: u64 = 9;
const K_TARGET: u64 = 10;
const K_RDEV: u64 = 11;
const K_XATTRS: u64 = 12;
const K_CHILDREN: u64 = 13;
const K_UNAME: u64 = 14;
const K_GNAME: u64 = 15;

const FIELD_NAMES: [&str; 16] = [
    "name",
    "type",
    "mode",
    "uid",
    "gid",
    "mtime",
    "mtime-nsec",
    "size",
    "digest",
    "zeros",
    "target",
    "rdev",
    "xattrs",
    "children",
    "uname",
    "gname",
];

/// A manifest that breaks the format: where (byte offset and/or entry path)
/// and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// Byte offset in the encoded manifest, when decoding.
    pub offset: Option<usize>,
    /// Path of the entry concerned, `/`-prefixed and escaped.
    pub path: Option<String>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.offset, &self.path) {
            (Some(o), Some(p)) => write!(f, "at byte {o}, entry {p}: {}", self.what),
            (Some(o), None) => write!(f, "at byte {o}: {}", self.what),
            (None, Some(p)) => write!(f, "entry {p}: {}", self.what),
            (None, None) => f.write_str(&self.what),
        }
    }
}

pub(crate) fn invalid(path: &[u8], what: impl Into<String>) -> DecodeError {
    DecodeError { offset: None, path: Some(path_display(path)), what: what.into() }
}

// ---------------------------------------------------------------- encoding

/// Encodes a manifest to its canonical bytes, after checking every rule the
/// decoder checks.
pub fn encode(m: &Manifest) -> Result<Vec<u8>, DecodeError> {
    Compact::from_tree(m)?.to_bytes()
}

/// [`Compact::to_bytes`].
pub(crate) fn encode_compact(c: &Compact) -> Result<Vec<u8>, DecodeError> {
    c.validate()?;
    let mut v = Vec::with_capacity(c.len().saturating_mul(16));
    encode_valid(c, &mut v).map_err(|e| DecodeError { offset: None, path: None, what: e.to_string() })?;
    Ok(v)
}

/// Writes the canonical bytes of a validated manifest to `out` in chunks of
/// about [`CHUNK`] bytes; returns their length and sha256.
pub(crate) fn encode_valid(c: &Compact, out: &mut dyn std::io::Write) -> std::io::Result<(u64, Digest)> {
    let mut o = Out { w: Writer::default(), out, hash: Sha256::new(), len: 0, err: None };
    o.w.buf.reserve(CHUNK + CHUNK / 4);
    o.w.head(Major::Tag, OCIX_TAG);
    o.w.head(Major::Map, 2);
    o.w.uint(0);
    o.w.uint(VERSION);
    o.w.uint(1);
    encode_node(&mut o, c.root(), true);
    o.spill(0);
    match o.err {
        Some(e) => Err(e),
        None => Ok((o.len, Digest(o.hash.finalize().into()))),
    }
}

/// Bytes gathered before they are handed to the output.
const CHUNK: usize = 256 * 1024;

/// The encoder's output: a buffer handed on, and hashed, once it holds
/// `CHUNK` bytes; the first write error stops further writes.
struct Out<'o> {
    w: Writer,
    out: &'o mut dyn std::io::Write,
    hash: Sha256,
    len: u64,
    err: Option<std::io::Error>,
}

impl Out<'_> {
    /// Hands the buffer on once it holds more than `min` bytes.
    fn spill(&mut self, min: usize) {
        if self.w.buf.len() <= min {
            return;
        }
        if self.err.is_none() {
            self.hash.update(&self.w.buf);
            self.len += self.w.buf.len() as u64;
            if let Err(e) = self.out.write_all(&self.w.buf) {
                self.err = Some(e);
            }
        }
        self.w.buf.clear();
    }
}

fn encode_node(o: &mut Out<'_>, n: Node<'_>, is_root: bool) {
    let code = n.code();
    let (mode, uid, gid, mtime) = (n.mode(), n.uid(), n.gid(), n.mtime());
    let file = n.file();
    let xattrs = n.xattrs();
    let children = n.children();
    let mut fields: Vec<u64> = Vec::with_capacity(8);
    if !is_root {
        fields.push(K_NAME);
    }
    if code != KindCode::File {
        fields.push(K_TYPE);
    }
    if code != KindCode::Hardlink {
        if mode != code.default_mode() {
            fields.push(K_MODE);
        }
        if uid != 0 {
            fields.push(K_UID);
        }
        if gid != 0 {
            fields.push(K_GID);
        }
        if mtime.sec != 0 {
            fields.push(K_MTIME);
        }
        if mtime.nsec != 0 {
            fields.push(K_NSEC);
        }
    }
    if let Some(f) = &file {
        if f.size != 0 {
            fields.push(K_SIZE);
        }
        if f.digest.is_some() {
            fields.push(K_DIGEST);
        }
        if !f.zeros.is_empty() {
            fields.push(K_ZEROS);
        }
    }
    match code {
        KindCode::Symlink | KindCode::Hardlink => fields.push(K_TARGET),
        KindCode::Char | KindCode::Block => fields.push(K_RDEV),
        _ => {}
    }
    if code != KindCode::Hardlink && !xattrs.is_empty() {
        fields.push(K_XATTRS);
    }
    if !children.is_empty() {
        fields.push(K_CHILDREN);
    }
    if code != KindCode::Hardlink {
        if n.uname().is_some() {
            fields.push(K_UNAME);
        }
        if n.gname().is_some() {
            fields.push(K_GNAME);
        }
    }
    o.w.head(Major::Map, fields.len() as u64);
    for k in fields {
        o.w.uint(k);
        match k {
            K_NAME => o.w.bytes(n.name()),
            K_TYPE => o.w.uint(code as u64),
            K_MODE => o.w.uint(mode as u64),
            K_UID => o.w.uint(uid as u64),
            K_GID => o.w.uint(gid as u64),
            K_MTIME => o.w.int(mtime.sec),
            K_NSEC => o.w.uint(mtime.nsec as u64),
            K_SIZE | K_DIGEST | K_ZEROS => {
                let f = file.unwrap_or(FileRef { size: 0, digest: None, zeros: &[] });
                match k {
                    K_SIZE => o.w.uint(f.size),
                    K_DIGEST => o.w.bytes(&f.digest.map(|d| d.0).unwrap_or_default()),
                    _ => {
                        o.w.head(Major::Array, 2 * f.zeros.len() as u64);
                        for (s, n) in f.zeros {
                            o.w.uint(*s);
                            o.w.uint(*n);
                        }
                    }
                }
            }
            K_TARGET => o.w.bytes(n.target().unwrap_or_default()),
            K_RDEV => {
                let d = n.dev().unwrap_or_default();
                o.w.head(Major::Array, 2);
                o.w.uint(d.major as u64);
                o.w.uint(d.minor as u64);
            }
            K_XATTRS => {
                // Canonical map order: by the encoded key, i.e. shorter names
                // first, then bytewise.
                let mut pairs: Vec<(&[u8], &[u8])> = xattrs.iter().collect();
                pairs.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(b.0)));
                o.w.head(Major::Map, pairs.len() as u64);
                for (k, v) in pairs {
                    o.w.bytes(k);
                    o.w.bytes(v);
                }
            }
            K_CHILDREN => {
                o.w.head(Major::Array, children.count() as u64);
                for child in children {
                    stacker::maybe_grow(64 * 1024, 1024 * 1024, || encode_node(o, child, false));
                    o.spill(CHUNK);
                }
            }
            K_UNAME => o.w.text(n.uname().unwrap_or_default()),
            K_GNAME => o.w.text(n.gname().unwrap_or_default()),
            _ => unreachable!(),
        }
    }
}

// ---------------------------------------------------------------- decoding

fn at_path(path: &[u8], e: CborError) -> DecodeError {
    DecodeError { offset: Some(e.offset), path: Some(path_display(path)), what: e.what }
}

/// Why a [`Sink`] refused an entry.
pub(crate) enum SinkError {
    /// What the model cannot hold; reported at the entry's offset.
    Build(BuildError),
    /// A finished error, reported as it is.
    Stop(DecodeError),
}

impl From<BuildError> for SinkError {
    fn from(e: BuildError) -> Self {
        SinkError::Build(e)
    }
}

/// Where the decoder puts the entries it reads, in manifest order: a
/// [`Builder`] (a whole [`Compact`]), or a reader that looks at each entry
/// once and keeps nothing (see [`stream_read`]). `path` is always the
/// entry's own path (the directory's for `close_dir` and `set_meta`).
pub(crate) trait Sink {
    /// An entry's xattrs, in raw name order; returns what `MetaIn::xattrs`
    /// holds for them (0 for none).
    fn xattrs(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<u32, SinkError>;
    /// A directory: opened before its children when it has some (its owner
    /// names, which follow the children, are not known yet and come with
    /// `set_meta`), else once complete and closed at once. Returns a handle
    /// for `set_meta`.
    fn open_dir(&mut self, path: &[u8], name: &[u8], meta: &MetaIn<'_>) -> Result<usize, SinkError>;
    /// The directory opened last ends.
    fn close_dir(&mut self, path: &[u8]) -> Result<(), SinkError>;
    /// The whole metadata of a directory that had children.
    fn set_meta(&mut self, handle: usize, path: &[u8], meta: &MetaIn<'_>) -> Result<(), SinkError>;
    /// A non-directory entry.
    fn push(&mut self, path: &[u8], name: &[u8], meta: &MetaIn<'_>, leaf: Leaf<'_>) -> Result<usize, SinkError>;
}

impl Sink for Builder {
    fn xattrs(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<u32, SinkError> {
        Ok(self.intern_xattrs(pairs.iter().map(|(k, v)| (&k[..], &v[..]))).map_err(BuildError::TooLarge)?)
    }

    fn open_dir(&mut self, _: &[u8], name: &[u8], meta: &MetaIn<'_>) -> Result<usize, SinkError> {
        Ok(Builder::open_dir(self, name, meta)?)
    }

    fn close_dir(&mut self, _: &[u8]) -> Result<(), SinkError> {
        Builder::close_dir(self);
        Ok(())
    }

    fn set_meta(&mut self, handle: usize, _: &[u8], meta: &MetaIn<'_>) -> Result<(), SinkError> {
        Ok(Builder::set_meta(self, handle, meta)?)
    }

    fn push(&mut self, _: &[u8], name: &[u8], meta: &MetaIn<'_>, leaf: Leaf<'_>) -> Result<usize, SinkError> {
        Ok(Builder::push(self, name, meta, leaf)?)
    }
}

struct Decoder<'a, S: Sink> {
    r: Reader<'a>,
    path: Vec<u8>,
    b: S,
}

impl<'a, S: Sink> Decoder<'a, S> {
    fn err(&self, e: CborError) -> DecodeError {
        at_path(&self.path, e)
    }

    fn fail<T>(&self, offset: usize, what: impl Into<String>) -> Result<T, DecodeError> {
        Err(DecodeError { offset: Some(offset), path: Some(path_display(&self.path)), what: what.into() })
    }

    fn built<T>(&self, at: usize, r: Result<T, SinkError>) -> Result<T, DecodeError> {
        r.or_else(|e| {
            let e = match e {
                SinkError::Build(e) => e,
                SinkError::Stop(e) => return Err(e),
            };
            self.fail(
                at,
                match e {
                    BuildError::NameTooLong => "invalid name: name longer than 255 bytes".to_string(),
                    BuildError::Mode(m) => format!("mode {m:o} has bits outside 07777"),
                    BuildError::Device(why) => why.to_string(),
                    BuildError::TooLarge(t) => t.to_string(),
                },
            )
        })
    }

    fn uint_max(&mut self, field: &str, max: u64) -> Result<u64, DecodeError> {
        let at = self.r.offset();
        let v = self.r.uint().map_err(|e| self.err(e))?;
        if v > max {
            return self.fail(at, format!("{field} {v} is larger than {max}"));
        }
        Ok(v)
    }

    /// Decodes one entry (and its subtree) into the builder; returns its
    /// name's start in `self.path` (its last component when this returns).
    fn entry(&mut self, depth: usize, is_root: bool) -> Result<Option<usize>, DecodeError> {
        if let Err(why) = check_depth(depth, false) {
            return self.fail(self.r.offset(), why.to_string());
        }
        let start = self.r.offset();
        let n = self.r.map().map_err(|e| self.err(e))?;
        let mut name: Option<usize> = None;
        let mut code = KindCode::File;
        let mut seen = [false; 16];
        let mut mode: Option<u32> = None;
        let (mut uid, mut gid, mut mtime) = (0u32, 0u32, Time::default());
        let mut uname: Option<String> = None;
        let mut gname: Option<String> = None;
        let mut xattrs = 0u32;
        let mut size = 0u64;
        let mut digest: Option<Digest> = None;
        let mut zeros: Vec<(u64, u64)> = Vec::new();
        let mut target: Option<Vec<u8>> = None;
        let mut rdev: Option<Dev> = None;
        // the directory's index once its children began
        let mut opened: Option<usize> = None;
        let mut last: Option<u64> = None;
        let parent_len = self.path.len();
        for _ in 0..n {
            let kat = self.r.offset();
            let key = self.r.uint().map_err(|e| self.err(e))?;
            if let Some(l) = last {
                if key <= l {
                    return self.fail(kat, format!("map key {key} after {l}: keys must be unique and ascending"));
                }
            }
            last = Some(key);
            if key > K_GNAME {
                return self.fail(kat, format!("unknown field {key}"));
            }
            seen[key as usize] = true;
            let vat = self.r.offset();
            let fname = FIELD_NAMES[key as usize];
            match key {
                K_NAME => {
                    if is_root {
                        return self.fail(kat, "the root entry has no name");
                    }
                    let b = self.r.bytes().map_err(|e| at_path(&self.path, e))?;
                    // the path shown in later errors includes this name
                    if parent_len > 0 {
                        self.path.push(b'/');
                    }
                    let s = self.path.len();
                    self.path.extend_from_slice(b);
                    if let Err(why) = check_name(&self.path[s..]) {
                        return self.fail(vat, format!("invalid name: {why}"));
                    }
                    name = Some(s);
                }
                K_TYPE => {
                    let v = self.r.uint().map_err(|e| self.err(e))?;
                    code = match KindCode::from_u64(v) {
                        Some(KindCode::File) => {
                            return self.fail(vat, "type 0 (file) is the default and must be omitted");
                        }
                        Some(c) => c,
                        None => return self.fail(vat, format!("unknown type {v}")),
                    };
                }
                K_MODE => mode = Some(self.uint_max(fname, 0o7777)? as u32),
                K_UID => uid = self.id(fname)?,
                K_GID => gid = self.id(fname)?,
                K_MTIME => {
                    mtime.sec = self.r.int().map_err(|e| self.err(e))?;
                    if mtime.sec == 0 {
                        return self.fail(vat, "mtime 0 is the default and must be omitted");
                    }
                }
                K_NSEC => mtime.nsec = self.uint_nonzero(fname, 999_999_999)? as u32,
                K_SIZE => size = self.uint_nonzero(fname, i64::MAX as u64)?,
                K_DIGEST => {
                    let b = self.r.bytes().map_err(|e| at_path(&self.path, e))?;
                    let Ok(arr) = <[u8; 32]>::try_from(b) else {
                        let what = format!("digest must be 32 bytes, found {}", b.len());
                        return self.fail(vat, what);
                    };
                    digest = Some(Digest(arr));
                }
                K_ZEROS => {
                    let cnt = self.r.array().map_err(|e| self.err(e))?;
                    if cnt == 0 || cnt % 2 != 0 {
                        return self.fail(vat, "zero runs must be a non-empty array of (start, count) pairs");
                    }
                    zeros.reserve(cnt / 2);
                    for _ in 0..cnt / 2 {
                        let s = self.r.uint().map_err(|e| self.err(e))?;
                        let c = self.r.uint().map_err(|e| self.err(e))?;
                        zeros.push((s, c));
                    }
                }
                K_TARGET => {
                    target = Some(self.r.bytes().map_err(|e| at_path(&self.path, e))?.to_vec());
                }
                K_RDEV => {
                    let cnt = self.r.array().map_err(|e| self.err(e))?;
                    if cnt != 2 {
                        return self.fail(vat, "rdev must be [major, minor]");
                    }
                    let major = self.r.uint().map_err(|e| self.err(e))?;
                    let minor = self.r.uint().map_err(|e| self.err(e))?;
                    if let Err(why) = super::check_dev(major, minor) {
                        return self.fail(vat, why.to_string());
                    }
                    rdev = Some(Dev { major: major as u32, minor: minor as u32 });
                }
                K_XATTRS => {
                    let cnt = self.r.map().map_err(|e| self.err(e))?;
                    if cnt == 0 {
                        return self.fail(vat, "empty xattr map must be omitted");
                    }
                    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                    for _ in 0..cnt {
                        let at = self.r.offset();
                        let k = self.r.bytes().map_err(|e| at_path(&self.path, e))?.to_vec();
                        if let Some((p, _)) = pairs.last() {
                            if (p.len(), p) >= (k.len(), &k) {
                                return self.fail(at, "xattr names must be unique and in canonical order");
                            }
                        }
                        let v = self.r.bytes().map_err(|e| at_path(&self.path, e))?.to_vec();
                        pairs.push((k, v));
                    }
                    // kept in raw name order
                    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    let r = self.b.xattrs(&pairs);
                    xattrs = self.built(vat, r)?;
                }
                K_CHILDREN => {
                    if code != KindCode::Dir {
                        return self.fail(kat, format!("children under a non-directory ({})", code.name()));
                    }
                    if let Err(why) = check_depth(depth, true) {
                        return self.fail(kat, why.to_string());
                    }
                    let cnt = self.r.array().map_err(|e| self.err(e))?;
                    if cnt == 0 {
                        return self.fail(vat, "empty children array must be omitted");
                    }
                    // owner names follow the children: set at the end
                    let meta = MetaIn {
                        mode: mode.unwrap_or(0o755),
                        uid,
                        gid,
                        mtime,
                        xattrs,
                        uname: uname.as_deref(),
                        gname: gname.as_deref(),
                    };
                    let nm: &[u8] = match name {
                        Some(s) => &self.path[s..],
                        None => b"",
                    };
                    let r = self.b.open_dir(&self.path, nm, &meta);
                    opened = Some(self.built(kat, r)?);
                    let here = self.path.len();
                    // the previous child's name, once there is one
                    let mut prev: Option<Vec<u8>> = None;
                    for _ in 0..cnt {
                        let at = self.r.offset();
                        // deep trees recurse deeply: grow the stack on demand
                        let cname = stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.entry(depth + 1, false))?;
                        // the path is here the child's own path, below its directory
                        let Some(s) = cname else {
                            self.path.truncate(here);
                            return self.fail(at, "child entry without a name");
                        };
                        let cname = &self.path[s..];
                        if let Some(p) = &prev {
                            if p.as_slice() >= cname {
                                let what = if p == cname {
                                    "duplicate name".to_string()
                                } else {
                                    let mut after = self.path[..s].to_vec();
                                    after.extend_from_slice(p);
                                    format!("children not sorted by name (comes after {})", path_display(&after))
                                };
                                return self.fail(at, what);
                            }
                        }
                        let p = prev.get_or_insert_with(Vec::new);
                        p.clear();
                        p.extend_from_slice(cname);
                        self.path.truncate(here);
                    }
                    let r = self.b.close_dir(&self.path);
                    self.built(kat, r)?;
                }
                K_UNAME | K_GNAME => {
                    let s = self.r.text().map_err(|e| at_path(&self.path, e))?.to_owned();
                    if key == K_UNAME {
                        uname = Some(s);
                    } else {
                        gname = Some(s);
                    }
                }
                _ => unreachable!(),
            }
        }
        if !is_root && name.is_none() {
            return self.fail(start, "entry without a name");
        }
        // Fields that do not belong to the type.
        let allowed: &[u64] = match code {
            KindCode::File => &[K_SIZE, K_DIGEST, K_ZEROS],
            KindCode::Dir => &[K_CHILDREN],
            KindCode::Symlink => &[K_TARGET],
            KindCode::Hardlink => &[K_TARGET],
            KindCode::Char | KindCode::Block => &[K_RDEV],
            KindCode::Fifo | KindCode::Socket => &[],
        };
        for k in [K_SIZE, K_DIGEST, K_ZEROS, K_TARGET, K_RDEV, K_CHILDREN] {
            if seen[k as usize] && !allowed.contains(&k) {
                return self
                    .fail(start, format!("field {} is not allowed on a {}", FIELD_NAMES[k as usize], code.name()));
            }
        }
        if code == KindCode::Hardlink {
            for k in [K_MODE, K_UID, K_GID, K_MTIME, K_NSEC, K_XATTRS, K_UNAME, K_GNAME] {
                if seen[k as usize] {
                    return self.fail(
                        start,
                        format!("a hardlink carries no {}: its first name does", FIELD_NAMES[k as usize]),
                    );
                }
            }
        }
        let mode = match mode {
            Some(m) if m == code.default_mode() => {
                return self
                    .fail(start, format!("mode {m:o} is the default for a {} and must be omitted", code.name()));
            }
            Some(m) => m,
            None => code.default_mode(),
        };
        let meta = MetaIn { mode, uid, gid, mtime, xattrs, uname: uname.as_deref(), gname: gname.as_deref() };
        let nm: &[u8] = match name {
            Some(s) => &self.path[s..],
            None => b"",
        };
        let leaf = match code {
            KindCode::Dir => {
                let r = match opened {
                    Some(i) => self.b.set_meta(i, &self.path, &meta),
                    None => self.b.open_dir(&self.path, nm, &meta).and_then(|_| self.b.close_dir(&self.path)),
                };
                self.built(start, r)?;
                return Ok(name);
            }
            KindCode::File => Leaf::File { size, digest, zeros: &zeros },
            KindCode::Symlink => Leaf::Symlink(self.need(target.as_deref(), start, "target")?),
            KindCode::Hardlink => Leaf::Hardlink(self.need(target.as_deref(), start, "target")?),
            KindCode::Char => Leaf::Char(self.need(rdev, start, "rdev")?),
            KindCode::Block => Leaf::Block(self.need(rdev, start, "rdev")?),
            KindCode::Fifo => Leaf::Fifo,
            KindCode::Socket => Leaf::Socket,
        };
        let r = self.b.push(&self.path, nm, &meta, leaf);
        self.built(start, r)?;
        Ok(name)
    }

    fn uint_nonzero(&mut self, field: &str, max: u64) -> Result<u64, DecodeError> {
        let at = self.r.offset();
        let v = self.uint_max(field, max)?;
        if v == 0 {
            return self.fail(at, format!("{field} 0 is the default and must be omitted"));
        }
        Ok(v)
    }

    /// A uid or gid: not 0 (the default), not chown's "no change" value.
    fn id(&mut self, field: &str) -> Result<u32, DecodeError> {
        let at = self.r.offset();
        let v = self.uint_nonzero(field, u32::MAX as u64)?;
        if let Err(why) = super::check_id(field, v) {
            return self.fail(at, why.to_string());
        }
        Ok(v as u32)
    }

    fn need<T>(&self, v: Option<T>, at: usize, field: &str) -> Result<T, DecodeError> {
        match v {
            Some(v) => Ok(v),
            None => self.fail(at, format!("missing required field {field}")),
        }
    }
}

/// Decodes canonical CBOR into a manifest, rejecting anything that is not the
/// one canonical encoding of a valid tree.
pub fn decode(data: &[u8]) -> Result<Manifest, DecodeError> {
    Ok(decode_compact(data)?.to_tree())
}

/// [`Compact::from_bytes`].
pub(crate) fn decode_compact(data: &[u8]) -> Result<Compact, DecodeError> {
    decode_from(Reader::new(data))
}

/// [`Compact::read_from`].
pub(crate) fn decode_read(src: &mut dyn std::io::Read, len: u64) -> Result<Compact, DecodeError> {
    let Ok(len) = usize::try_from(len) else {
        return Err(DecodeError { offset: None, path: None, what: format!("{len} bytes is too large") });
    };
    decode_from(Reader::from_read(Box::new(src), len))
}

fn decode_from(r: Reader<'_>) -> Result<Compact, DecodeError> {
    let c = decode_into(r, Builder::new())?.finish();
    c.validate()?;
    Ok(c)
}

/// Reads the manifest `r` holds into `sink`, checking everything the
/// encoding itself must satisfy (the rules that span entries are
/// [`validate_compact`]'s); returns the sink.
fn decode_into<S: Sink>(r: Reader<'_>, sink: S) -> Result<S, DecodeError> {
    let mut d = Decoder { r, path: Vec::new(), b: sink };
    let top = |e: CborError| DecodeError { offset: Some(e.offset), path: None, what: e.what };
    let tag =
        d.r.expect(Major::Tag)
            .map_err(|e| DecodeError { what: format!("not an OCIX manifest: {}", e.what), ..top(e) })?;
    if tag != OCIX_TAG {
        return Err(DecodeError {
            offset: Some(0),
            path: None,
            what: format!("not an OCIX manifest: tag {tag}, expected {OCIX_TAG}"),
        });
    }
    let at = d.r.offset();
    let n = d.r.map().map_err(top)?;
    if n != 2 {
        return Err(DecodeError {
            offset: Some(at),
            path: None,
            what: format!("manifest map must have 2 fields (version, root), found {n}"),
        });
    }
    let at = d.r.offset();
    let k = d.r.uint().map_err(top)?;
    if k != 0 {
        return Err(DecodeError {
            offset: Some(at),
            path: None,
            what: format!("expected field 0 (version), found {k}"),
        });
    }
    let at = d.r.offset();
    let v = d.r.uint().map_err(top)?;
    if v != VERSION {
        return Err(DecodeError {
            offset: Some(at),
            path: None,
            what: format!("unsupported manifest version {v} (this ocix reads version {VERSION})"),
        });
    }
    let at = d.r.offset();
    let k = d.r.uint().map_err(top)?;
    if k != 1 {
        return Err(DecodeError { offset: Some(at), path: None, what: format!("expected field 1 (root), found {k}") });
    }
    d.entry(0, true)?;
    d.r.finish().map_err(top)?;
    Ok(d.b)
}

// ---------------------------------------------------------------- streaming

fn reader<'r>(src: &'r mut dyn std::io::Read, len: u64) -> Result<Reader<'r>, DecodeError> {
    let Ok(len) = usize::try_from(len) else {
        return Err(DecodeError { offset: None, path: None, what: format!("{len} bytes is too large") });
    };
    Ok(Reader::from_read(Box::new(src), len))
}

/// [`super::compact::plan_read`].
pub(crate) fn plan_read(src: &mut dyn std::io::Read, len: u64) -> Result<StreamPlan, DecodeError> {
    let mut plan = decode_into(reader(src, len)?, StreamPlan::default())?;
    plan.owner_index = HashMap::new();
    Ok(plan)
}

impl StreamPlan {
    fn intern_owners(&mut self, meta: &MetaIn<'_>) -> u32 {
        if meta.uname.is_none() && meta.gname.is_none() {
            return 0;
        }
        if self.owners.is_empty() {
            self.owners.push((None, None));
        }
        let key = (meta.uname.map(Box::from), meta.gname.map(Box::from));
        if let Some(&i) = self.owner_index.get(&key) {
            return i;
        }
        let i = self.owners.len() as u32;
        self.owners.push(key.clone());
        self.owner_index.insert(key, i);
        i
    }

    /// The owner names of the `n`th directory in manifest order.
    fn dir_owner(&self, n: usize) -> (Option<&str>, Option<&str>) {
        match self.dir_owners.get(n).and_then(|&i| self.owners.get(i as usize)) {
            Some((u, g)) => (u.as_deref(), g.as_deref()),
            None => (None, None),
        }
    }
}

/// The first read: directories' owner names and the paths hardlinks name.
impl Sink for StreamPlan {
    fn xattrs(&mut self, _: &[(Vec<u8>, Vec<u8>)]) -> Result<u32, SinkError> {
        Ok(0)
    }

    fn open_dir(&mut self, _: &[u8], _: &[u8], meta: &MetaIn<'_>) -> Result<usize, SinkError> {
        let o = self.intern_owners(meta);
        self.dir_owners.push(o);
        Ok(self.dir_owners.len() - 1)
    }

    fn close_dir(&mut self, _: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }

    fn set_meta(&mut self, handle: usize, _: &[u8], meta: &MetaIn<'_>) -> Result<(), SinkError> {
        let o = self.intern_owners(meta);
        self.dir_owners[handle] = o;
        Ok(())
    }

    fn push(&mut self, _: &[u8], _: &[u8], _: &MetaIn<'_>, leaf: Leaf<'_>) -> Result<usize, SinkError> {
        if let Leaf::Hardlink(t) = leaf {
            if !self.named.contains(t) {
                self.named.insert(t.to_vec());
            }
        }
        Ok(0)
    }
}

/// The second read: checks what [`validate_compact`] checks, entry by
/// entry, and hands each entry on.
struct Streamer<'p, 'v> {
    plan: &'p StreamPlan,
    visit: &'v mut dyn Visit,
    /// The xattrs read last, for the entry that follows.
    xattrs: Vec<Xattr>,
    /// Directories opened so far.
    dirs: usize,
    /// The last directory opened, while none of its children came.
    fresh: Option<(usize, OwnerNames)>,
    /// Type of each path a hardlink names, once reached.
    seen: HashMap<Vec<u8>, KindCode>,
    /// A hardlink found not to name an earlier first name: its path and
    /// target, and what is at the target once the rest was read.
    broken: Option<(Vec<u8>, Vec<u8>, Option<KindCode>)>,
}

/// A directory's owner and group names.
type OwnerNames = (Option<Box<str>>, Option<Box<str>>);

fn changed(path: &[u8]) -> SinkError {
    SinkError::Stop(invalid(path, "the manifest changed between its two reads"))
}

impl Streamer<'_, '_> {
    /// Checks and hands on one entry; after a broken hardlink, only looks
    /// for its target.
    fn entry(&mut self, path: &[u8], e: &EntryView<'_>) -> Result<(), SinkError> {
        if let Some((_, t, there)) = &mut self.broken {
            if path == t.as_slice() {
                *there = Some(e.code);
            }
            return Ok(());
        }
        if path.is_empty() && e.code != KindCode::Dir {
            return Err(SinkError::Stop(invalid(b"", "the root must be a directory")));
        }
        check_own(path, e).map_err(SinkError::Stop)?;
        if let Some(t) = e.target.filter(|_| e.code == KindCode::Hardlink) {
            match self.seen.get(t) {
                Some(&c) if c != KindCode::Dir && c != KindCode::Hardlink => {}
                Some(&c) => return Err(SinkError::Stop(unlinkable(path, t, Some(c)))),
                None => {
                    // what is at the target decides the words: read on
                    self.broken = Some((path.to_vec(), t.to_vec(), None));
                    return Ok(());
                }
            }
        }
        if self.plan.named.contains(path) {
            self.seen.insert(path.to_vec(), e.code);
        }
        self.visit.entry(path, e);
        Ok(())
    }
}

/// An entry as the decoder passes it: `xattrs` are the ones read last,
/// the entry's own unless it has none.
fn view<'a>(code: KindCode, meta: &MetaIn<'a>, xattrs: &'a [Xattr]) -> EntryView<'a> {
    let xattrs: &[Xattr] = if meta.xattrs == 0 { &[] } else { xattrs };
    EntryView {
        code,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mtime: meta.mtime,
        uname: meta.uname,
        gname: meta.gname,
        xattrs: Xattrs::from_pairs(xattrs),
        file: None,
        target: None,
        dev: None,
    }
}

impl Sink for Streamer<'_, '_> {
    fn xattrs(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<u32, SinkError> {
        self.xattrs.clear();
        self.xattrs.extend(pairs.iter().map(|(k, v)| (k[..].into(), v[..].into())));
        Ok(1)
    }

    fn open_dir(&mut self, path: &[u8], _: &[u8], meta: &MetaIn<'_>) -> Result<usize, SinkError> {
        let n = self.dirs;
        self.dirs += 1;
        if n >= self.plan.dir_owners.len() {
            return Err(changed(path));
        }
        self.fresh = Some((n, (meta.uname.map(Box::from), meta.gname.map(Box::from))));
        // the owner names follow the children: the first read has them
        let (uname, gname) = self.plan.dir_owner(n);
        let meta = MetaIn { uname, gname, ..*meta };
        let xattrs = std::mem::take(&mut self.xattrs);
        let e = view(KindCode::Dir, &meta, &xattrs);
        let r = self.entry(path, &e);
        self.xattrs = xattrs;
        r.map(|()| n)
    }

    fn close_dir(&mut self, path: &[u8]) -> Result<(), SinkError> {
        // a directory without children: its owner names were read with it
        if let Some((n, (u, g))) = self.fresh.take() {
            if self.plan.dir_owner(n) != (u.as_deref(), g.as_deref()) {
                return Err(changed(path));
            }
        }
        if self.broken.is_none() {
            self.visit.end_dir(path);
        }
        Ok(())
    }

    fn set_meta(&mut self, handle: usize, path: &[u8], meta: &MetaIn<'_>) -> Result<(), SinkError> {
        if self.plan.dir_owner(handle) != (meta.uname, meta.gname) {
            return Err(changed(path));
        }
        Ok(())
    }

    fn push(&mut self, path: &[u8], _: &[u8], meta: &MetaIn<'_>, leaf: Leaf<'_>) -> Result<usize, SinkError> {
        self.fresh = None;
        if let Leaf::Hardlink(t) = leaf {
            if !self.plan.named.contains(t) {
                return Err(changed(path));
            }
        }
        let xattrs = std::mem::take(&mut self.xattrs);
        let digest = match leaf {
            Leaf::File { digest, .. } => digest,
            _ => None,
        };
        let code = leaf.code();
        let mut e = view(code, meta, &xattrs);
        match leaf {
            Leaf::File { size, zeros, .. } => e.file = Some(FileRef { size, digest: digest.as_ref(), zeros }),
            Leaf::Symlink(t) | Leaf::Hardlink(t) => e.target = Some(t),
            Leaf::Char(d) | Leaf::Block(d) => e.dev = Some(d),
            Leaf::Fifo | Leaf::Socket => {}
        }
        let r = self.entry(path, &e);
        self.xattrs = xattrs;
        r.map(|()| 0)
    }
}

/// [`super::compact::stream_read`].
pub(crate) fn stream_read(
    src: &mut dyn std::io::Read,
    len: u64,
    plan: &StreamPlan,
    visit: &mut dyn Visit,
) -> Result<(), DecodeError> {
    let s = Streamer { plan, visit, xattrs: Vec::new(), dirs: 0, fresh: None, seen: HashMap::new(), broken: None };
    let s = decode_into(reader(src, len)?, s)?;
    if let Some((path, t, there)) = s.broken {
        return Err(unlinkable(&path, &t, there));
    }
    if s.dirs != plan.dir_owners.len() {
        return Err(invalid(b"", "the manifest changed between its two reads"));
    }
    Ok(())
}

// ---------------------------------------------------------------- validation

/// Checks the rules that span entries or values: names, zero runs, digests,
/// targets, xattrs, depth, and hardlinks (which must name, by a clean path,
/// an entry earlier in manifest order that is neither a directory nor a
/// hardlink).
pub fn validate(m: &Manifest) -> Result<(), DecodeError> {
    Compact::from_tree(m)?.validate()
}

/// [`Compact::validate`].
pub(crate) fn validate_compact(c: &Compact) -> Result<(), DecodeError> {
    if !c.root().is_dir() {
        return Err(invalid(b"", "the root must be a directory"));
    }
    // paths a hardlink may name: every earlier non-directory first name
    // (kept only for the paths some hardlink names)
    let named: HashSet<&[u8]> =
        c.nodes().filter(|n| n.code() == KindCode::Hardlink).filter_map(|n| n.target()).collect();
    let mut linkable: HashSet<Vec<u8>> = HashSet::new();
    let mut cur = c.cursor();
    while let Some((path, n)) = cur.next_entry() {
        let level = if path.is_empty() { 0 } else { 1 + path.iter().filter(|&&b| b == b'/').count() };
        let code = n.code();
        check_depth(level, code == KindCode::Dir).map_err(|why| invalid(path, why.to_string()))?;
        // each child name by itself: a joined path cannot show a name that
        // contains "/" or is empty; children strictly in name order
        let mut prev: Option<&[u8]> = None;
        for child in n.children() {
            let name = child.name();
            check_name(name).map_err(|w| invalid(path, format!("invalid child name {}: {w}", path_display(name))))?;
            if prev.is_some_and(|p| p >= name) {
                return Err(invalid(path, format!("children not in name order at {}", path_display(name))));
            }
            prev = Some(name);
        }
        check_own(path, &n.view())?;
        if let Some(t) = n.target().filter(|_| code == KindCode::Hardlink) {
            if !linkable.contains(t) {
                return Err(unlinkable(path, t, c.get(t).map(|x| x.code())));
            }
        }
        if code != KindCode::Dir && code != KindCode::Hardlink && named.contains(path) {
            linkable.insert(path.to_vec());
        }
    }
    Ok(())
}

/// The rules [`validate_compact`] checks on one entry by itself (all but
/// where a hardlink points), in its order.
fn check_own(path: &[u8], n: &EntryView<'_>) -> Result<(), DecodeError> {
    if n.code != KindCode::Hardlink {
        if n.mtime.nsec >= 1_000_000_000 {
            return Err(invalid(path, "mtime nanoseconds out of range"));
        }
        for (what, id) in [("uid", n.uid), ("gid", n.gid)] {
            super::check_id(what, id.into()).map_err(|why| invalid(path, why.to_string()))?;
        }
        for (k, v) in n.xattrs.iter() {
            if k.is_empty() || k.contains(&0) || k.len() > 255 {
                return Err(invalid(path, format!("invalid xattr name {:?}", String::from_utf8_lossy(k))));
            }
            if v.len() > MAX_XATTR_VALUE {
                return Err(invalid(path, "xattr value larger than 64 KiB"));
            }
        }
    }
    match n.code {
        KindCode::File => {
            let f = n.file.unwrap_or(FileRef { size: 0, digest: None, zeros: &[] });
            if f.size > i64::MAX as u64 {
                return Err(invalid(path, "size out of range"));
            }
            if (f.size == 0) != f.digest.is_none() {
                return Err(invalid(path, "a digest is required exactly when size is not 0"));
            }
            check_zeros(path, f.size, f.zeros)?;
        }
        KindCode::Symlink => {
            let t = n.target.unwrap_or_default();
            if t.is_empty() || t.contains(&0) || t.len() > MAX_TARGET {
                return Err(invalid(path, "symlink target must be 1 to 4095 bytes without NUL"));
            }
        }
        KindCode::Hardlink => {
            let t = n.target.unwrap_or_default();
            if t.is_empty() || t.len() > MAX_TARGET {
                return Err(invalid(path, "hardlink path must be 1 to 4095 bytes"));
            }
            for comp in t.split(|&b| b == b'/') {
                check_name(comp).map_err(|w| invalid(path, format!("hardlink path {}: {w}", path_display(t))))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The error for a hardlink at `path` to `t`, which is not an earlier
/// non-directory first name; `there` is the type of the entry at `t`.
fn unlinkable(path: &[u8], t: &[u8], there: Option<KindCode>) -> DecodeError {
    let why = match there {
        None => "names no entry",
        Some(KindCode::Dir) => "must not name a directory",
        Some(KindCode::Hardlink) => "must name the first name of its inode, not another hardlink",
        Some(_) => "must name an entry earlier in manifest order",
    };
    invalid(path, format!("hardlink to {} {why}", path_display(t)))
}

fn check_zeros(path: &[u8], size: u64, zeros: &[(u64, u64)]) -> Result<(), DecodeError> {
    let blocks = size / BLOCK; // whole blocks inside the file
    let mut end: Option<u64> = None;
    for &(s, n) in zeros {
        if n == 0 {
            return Err(invalid(path, "zero run of 0 blocks"));
        }
        if let Some(e) = end {
            if s <= e {
                return Err(invalid(path, "zero runs must be ascending, disjoint and not adjacent"));
            }
        }
        let stop = s.checked_add(n).filter(|&x| x <= blocks);
        let Some(stop) = stop else {
            return Err(invalid(
                path,
                format!("zero run at block {s} of {n} blocks goes past the last whole block ({blocks})"),
            ));
        };
        end = Some(stop);
    }
    Ok(())
}
