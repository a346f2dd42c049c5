//! Sink: two manifests -> drift findings (`ocix diff`). The expected tree is
//! usually a manifest kept from an image or an earlier scan; the actual tree
//! a fresh scan of a directory on disk. Pure: no filesystem, no network.
//!
//! [`diff`] walks both trees at once in manifest order (depth first, pre-order,
//! children in bytewise name order) and yields one [`Finding`] per difference:
//!
//! - [`What::Missing`]: in the expected tree, absent from the actual one.
//! - [`What::Extra`]: in the actual tree, absent from the expected one.
//! - [`What::Changed`]: present in both, one [`Field`] differs. An entry with
//!   several changed fields gives several findings, in the order of
//!   [`Field::ALL`]; xattrs give one finding per xattr name added, removed or
//!   changed, in bytewise name order.
//!
//! Rules:
//! - A missing or extra directory is one finding: its descendants are not
//!   listed (they are all missing or extra with it).
//! - When the type differs, `type` is reported and the fields that belong to
//!   one type only (`size`, `digest`, `zeros`, `link`, `target`, `rdev`) are
//!   not compared; the common ones (`mode`, `uid`, `gid`, names, xattrs,
//!   `mtime`) still are. A directory that became something else (or the
//!   reverse) is not descended into.
//! - Hardlinks: every name of an inode shows the inode's fields, so a
//!   hardlink entry is compared through the first name it points at (its type
//!   is that entry's: `file`, `symlink`, `char`, ...). The `link` field of a
//!   name (of any type but a directory) is the path of the first name of its
//!   hardlink group, or none for the first name itself and for an inode with
//!   one name. Breaking `b` off from `a` reports `/b: link /a -> (none)`;
//!   linking it reports the reverse.
//! - The advisory user and group names (`uname`, `gname`) are ignored unless
//!   the options ask for them: the numeric ids are what counts, and names
//!   depend on the password database of whoever wrote the manifest.
//! - Excluded paths (see [`Excludes`]) and everything below them are skipped
//!   on both sides.
//!
//! The [`Display`](fmt::Display) of a finding is one line
//! (`/etc/passwd: mode 0644 -> 0600`, `missing /x`, `extra /y`,
//! `/f: xattr user.foo added`), and its `Serialize` form is one JSON object;
//! see [`Finding`] for the shape.
//!
//! [`diff_read`] gives the same findings with the expected manifest read
//! from its encoded bytes entry by entry instead of decoded whole, so that
//! only the actual tree is held in memory (`ocix diff` reads a manifest
//! file so).

/// The exclude patterns, the same matcher `ocix scan --exclude` uses.
pub use crate::filter::Excludes;

use crate::manifest::compact::{Children, EntryView, FileRef, Xattrs};
mod stream;
use crate::manifest::notation::{AsCompact, Links, escape, format_mode, format_time};
use crate::manifest::{Compact, Dev, Digest, KindCode, KindRef, Name, Node, Time, path_display};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
pub use stream::diff_read;

/// A compared property of an entry; also the names accepted by
/// `--ignore`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Field {
    /// Entry type (`file`, `dir`, `symlink`, `char`, `block`, `fifo`,
    /// `socket`; a hardlink counts as the type of its first name).
    Type,
    /// Hardlink group: the first name this name shares its inode with.
    Link,
    /// Permission bits with setuid, setgid, sticky.
    Mode,
    /// Numeric owner.
    Uid,
    /// Numeric group.
    Gid,
    /// Advisory user name (ignored by default).
    Uname,
    /// Advisory group name (ignored by default).
    Gname,
    /// File size.
    Size,
    /// File content (sha256).
    Digest,
    /// Zero runs (the hole map) of a file.
    Zeros,
    /// Symlink target.
    Target,
    /// Device numbers.
    Rdev,
    /// Extended attributes (one finding per name).
    Xattr,
    /// Modification time, seconds and nanoseconds.
    Mtime,
}

impl Field {
    /// Every field, in the order findings for one entry are reported.
    pub const ALL: [Field; 14] = [
        Field::Type,
        Field::Link,
        Field::Mode,
        Field::Uid,
        Field::Gid,
        Field::Uname,
        Field::Gname,
        Field::Size,
        Field::Digest,
        Field::Zeros,
        Field::Target,
        Field::Rdev,
        Field::Xattr,
        Field::Mtime,
    ];

    /// The field's name, as shown and as accepted by `--ignore`.
    pub fn name(self) -> &'static str {
        match self {
            Field::Type => "type",
            Field::Link => "link",
            Field::Mode => "mode",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::Uname => "uname",
            Field::Gname => "gname",
            Field::Size => "size",
            Field::Digest => "digest",
            Field::Zeros => "zeros",
            Field::Target => "target",
            Field::Rdev => "rdev",
            Field::Xattr => "xattr",
            Field::Mtime => "mtime",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Field {
    type Err = DiffError;

    fn from_str(s: &str) -> Result<Self, DiffError> {
        Field::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| DiffError::UnknownField(s.to_string()))
    }
}

/// One side of a change.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    /// Absent: no such xattr, not in a hardlink group.
    None,
    /// An entry type.
    Type(KindCode),
    /// Permission bits.
    Mode(u32),
    /// A numeric uid or gid.
    Id(u32),
    /// An advisory user or group name (`None` when the manifest has none).
    Name(Option<String>),
    /// A size in bytes.
    Size(u64),
    /// A content digest (`None` for an empty file).
    Digest(Option<Digest>),
    /// Zero runs as `(first block, block count)`.
    Zeros(Vec<(u64, u64)>),
    /// A modification time.
    Time(Time),
    /// A symlink target, raw bytes.
    Target(Vec<u8>),
    /// The first name of a hardlink group, a path relative to the root.
    Path(Vec<u8>),
    /// Device numbers.
    Dev(Dev),
    /// An xattr value, raw bytes.
    Bytes(Vec<u8>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("(none)"),
            Value::Type(k) => f.write_str(k.name()),
            Value::Mode(m) => f.write_str(&format_mode(*m)),
            Value::Id(i) => write!(f, "{i}"),
            Value::Name(Some(n)) => f.write_str(&escape(n.as_bytes())),
            Value::Name(None) => f.write_str("(none)"),
            Value::Size(s) => write!(f, "{s}"),
            Value::Digest(Some(d)) => write!(f, "{d}"),
            Value::Digest(None) => f.write_str("(none)"),
            Value::Zeros(z) => {
                const SHOWN: usize = 4;
                f.write_str("[")?;
                for (i, (start, count)) in z.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{start}+{count}")?;
                }
                if z.len() > SHOWN {
                    write!(
                        f,
                        " ... {} runs, {} blocks",
                        z.len(),
                        z.iter().map(|r| r.1).fold(0u64, u64::saturating_add)
                    )?;
                }
                f.write_str("]")
            }
            Value::Time(t) => f.write_str(&format_time(*t)),
            Value::Target(t) => f.write_str(&escape(t)),
            Value::Path(p) => f.write_str(&path_display(p)),
            Value::Dev(d) => write!(f, "{},{}", d.major, d.minor),
            Value::Bytes(b) => write!(f, "{} bytes", b.len()),
        }
    }
}

/// JSON form of a value: `null` for none; type as its name; mode as an octal
/// string (`"0644"`); ids and sizes as numbers; names as strings; digest as
/// `"sha256:<hex>"`; zeros as `[[first, count], ...]`; time as
/// `{"sec": s, "nsec": n}`; a symlink target as an escaped string (see
/// [`escape`]); a hardlink group as a `/`-prefixed escaped path; devices as
/// `{"major": a, "minor": b}`; an xattr value as lowercase hex.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::None | Value::Name(None) | Value::Digest(None) => s.serialize_none(),
            Value::Type(k) => s.serialize_str(k.name()),
            Value::Mode(m) => s.serialize_str(&format_mode(*m)),
            Value::Id(i) => s.serialize_u32(*i),
            Value::Name(Some(n)) => s.serialize_str(n),
            Value::Size(n) => s.serialize_u64(*n),
            Value::Digest(Some(d)) => s.serialize_str(&d.to_string()),
            Value::Zeros(z) => z.serialize(s),
            Value::Time(t) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("sec", &t.sec)?;
                m.serialize_entry("nsec", &t.nsec)?;
                m.end()
            }
            Value::Target(t) => s.serialize_str(&escape(t)),
            Value::Path(p) => s.serialize_str(&path_display(p)),
            Value::Dev(d) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("major", &d.major)?;
                m.serialize_entry("minor", &d.minor)?;
                m.end()
            }
            Value::Bytes(b) => s.serialize_str(&hex::encode(b)),
        }
    }
}

/// What differs at a path.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum What {
    /// In the expected tree, absent from the actual tree.
    Missing,
    /// In the actual tree, absent from the expected tree.
    Extra,
    /// Present in both, one field differs.
    Changed {
        /// Which field.
        field: Field,
        /// For [`Field::Xattr`], the xattr's name.
        xattr: Option<Name>,
        /// Its value in the expected tree.
        expected: Value,
        /// Its value in the actual tree.
        actual: Value,
    },
}

/// One difference between the expected and the actual tree.
///
/// JSON form (one object per finding):
///
/// ```json
/// {"path": "/x", "what": "missing"}
/// {"path": "/y", "what": "extra"}
/// {"path": "/etc/passwd", "what": "changed", "field": "mode", "expected": "0644", "actual": "0600"}
/// {"path": "/f", "what": "changed", "field": "xattr", "xattr": "user.foo", "expected": null, "actual": "6261"}
/// ```
///
/// `path` is `/` followed by the path relative to the root, escaped
/// losslessly as by [`path_display`] (`\\` for a backslash, `\n` and other
/// Rust escapes for control characters, `\xNN` for bytes that are not UTF-8);
/// `xattr` names are escaped the same way (without the `/`); values are as
/// described at [`Value`]'s `Serialize` impl.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Finding {
    /// Path relative to the root, `/`-joined, raw bytes (empty for the root).
    pub path: Vec<u8>,
    /// What differs.
    pub what: What,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = path_display(&self.path);
        match &self.what {
            What::Missing => write!(f, "missing {path}"),
            What::Extra => write!(f, "extra {path}"),
            What::Changed { field: Field::Xattr, xattr, expected, actual } => {
                let name = escape(xattr.as_deref().unwrap_or_default());
                let how = match (expected, actual) {
                    (Value::None, _) => "added",
                    (_, Value::None) => "removed",
                    _ => "changed",
                };
                write!(f, "{path}: xattr {name} {how}")
            }
            What::Changed { field, expected, actual, .. } => write!(f, "{path}: {field} {expected} -> {actual}"),
        }
    }
}

impl Serialize for Finding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("path", &path_display(&self.path))?;
        match &self.what {
            What::Missing => m.serialize_entry("what", "missing")?,
            What::Extra => m.serialize_entry("what", "extra")?,
            What::Changed { field, xattr, expected, actual } => {
                m.serialize_entry("what", "changed")?;
                m.serialize_entry("field", field.name())?;
                if let Some(x) = xattr {
                    m.serialize_entry("xattr", &escape(x))?;
                }
                m.serialize_entry("expected", expected)?;
                m.serialize_entry("actual", actual)?;
            }
        }
        m.end()
    }
}

/// Why diff options could not be built (exclude patterns are compiled by
/// [`Excludes::new`], which names the bad pattern).
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A field name that is not one of [`Field::ALL`].
    #[error(
        "unknown field {0:?}: expected one of type, link, mode, uid, gid, uname, gname, size, digest, zeros, \
         target, rdev, xattr, xattr:NAME, mtime"
    )]
    UnknownField(String),
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// Fields not compared. The default holds [`Field::Uname`] and
    /// [`Field::Gname`] (advisory names); [`Field::Xattr`] ignores every
    /// xattr.
    pub ignore: BTreeSet<Field>,
    /// Single xattrs not compared, by name (e.g. `security.selinux`).
    pub ignore_xattrs: BTreeSet<Name>,
    /// Paths left out on both sides, with their descendants.
    pub excludes: Excludes,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            ignore: [Field::Uname, Field::Gname].into_iter().collect(),
            ignore_xattrs: BTreeSet::new(),
            excludes: Excludes::default(),
        }
    }
}

impl DiffOptions {
    /// Adds one `--ignore` argument: a field name (`mode`), or `xattr:NAME`
    /// to ignore a single xattr.
    pub fn ignore_spec(&mut self, spec: &str) -> Result<(), DiffError> {
        if let Some(name) = spec.strip_prefix("xattr:") {
            if name.is_empty() {
                return Err(DiffError::UnknownField(spec.to_string()));
            }
            self.ignore_xattrs.insert(name.as_bytes().to_vec());
        } else {
            self.ignore.insert(spec.parse()?);
        }
        Ok(())
    }

    /// Compares a field even if ignored by default (used for `uname` and
    /// `gname`).
    pub fn compare(&mut self, field: Field) {
        self.ignore.remove(&field);
    }

    fn checks(&self, f: Field) -> bool {
        !self.ignore.contains(&f)
    }
}

/// Compares `actual` against `expected`; the findings come in manifest order
/// (see the module documentation for the rules). Empty means no drift.
/// Collects what [`diff_each`] finds.
pub fn diff<E: AsCompact + ?Sized, A: AsCompact + ?Sized>(
    expected: &E,
    actual: &A,
    opts: &DiffOptions,
) -> Vec<Finding> {
    let mut out = Vec::new();
    diff_each(&expected.as_compact(), &actual.as_compact(), opts, |f| out.push(f));
    out
}

/// Compares `actual` against `expected` and hands each finding to `sink`
/// as it is found, in manifest order: both manifests are walked once, side
/// by side, and nothing but the hardlinks' first names is held. Returns the
/// number of findings.
pub fn diff_each(expected: &Compact, actual: &Compact, opts: &DiffOptions, mut sink: impl FnMut(Finding)) -> u64 {
    let mut cx = Cx {
        exp: Links::new(expected),
        act: Links::new(actual),
        out: Out { opts, sink: &mut sink, found: 0, path: Vec::new() },
    };
    cx.entry(expected.root(), actual.root());
    cx.out.found
}

/// Where findings go, and the comparison of two entries' own data.
struct Out<'o> {
    opts: &'o DiffOptions,
    sink: &'o mut dyn FnMut(Finding),
    found: u64,
    /// The path of the entry being compared.
    path: Vec<u8>,
}

struct Cx<'a, 'o> {
    exp: Links<'a>,
    act: Links<'a>,
    out: Out<'o>,
}

impl Out<'_> {
    fn push(&mut self, what: What) {
        self.found += 1;
        (self.sink)(Finding { path: self.path.clone(), what });
    }

    /// Reports `field` when it is compared and the values differ; the
    /// values are made only then.
    fn change<T: PartialEq>(&mut self, field: Field, e: T, a: T, value: impl Fn(T) -> Value) {
        if e != a && self.opts.checks(field) {
            self.push(What::Changed { field, xattr: None, expected: value(e), actual: value(a) });
        }
    }

    /// Compares two entries' own data at `self.path`: `ne` and `na` as
    /// shown (a hardlink resolved to its first name, `le` and `la` the path
    /// it links to).
    fn fields(&mut self, ne: &EntryView<'_>, le: Option<&[u8]>, na: &EntryView<'_>, la: Option<&[u8]>) {
        // A resolved hardlink shows its first name's type.
        let (te, ta) = (ne.code, na.code);
        let same_type = te == ta;
        self.change(Field::Type, te, ta, Value::Type);
        if same_type && te != KindCode::Dir {
            self.change(Field::Link, le, la, link_value);
        }
        self.change(Field::Mode, ne.mode, na.mode, Value::Mode);
        self.change(Field::Uid, ne.uid, na.uid, Value::Id);
        self.change(Field::Gid, ne.gid, na.gid, Value::Id);
        let name = |n: Option<&str>| Value::Name(n.map(str::to_string));
        self.change(Field::Uname, ne.uname, na.uname, name);
        self.change(Field::Gname, ne.gname, na.gname, name);
        if same_type {
            self.specific(ne, na);
        }
        if self.opts.checks(Field::Xattr) {
            self.xattrs(ne.xattrs, na.xattrs);
        }
        self.change(Field::Mtime, ne.mtime, na.mtime, Value::Time);
    }

    fn xattrs(&mut self, e: Xattrs<'_>, a: Xattrs<'_>) {
        if e.len() == a.len() && e.iter().eq(a.iter()) {
            return;
        }
        let v = |x: Option<&[u8]>| x.map_or(Value::None, |b| Value::Bytes(b.to_vec()));
        merge(
            e.iter(),
            a.iter(),
            |x| x.0,
            |name, ve, va| {
                let (ve, va) = (ve.map(|x| x.1), va.map(|x| x.1));
                if self.opts.ignore_xattrs.contains(name) || ve == va {
                    return;
                }
                self.push(What::Changed {
                    field: Field::Xattr,
                    xattr: Some(name.to_vec()),
                    expected: v(ve),
                    actual: v(va),
                });
            },
        );
    }

    /// The fields of one type; `e` and `a` have the same type.
    fn specific(&mut self, e: &EntryView<'_>, a: &EntryView<'_>) {
        const EMPTY: FileRef<'static> = FileRef { size: 0, digest: None, zeros: &[] };
        match e.code {
            KindCode::File => {
                let (fe, fa) = (e.file.unwrap_or(EMPTY), a.file.unwrap_or(EMPTY));
                self.change(Field::Size, fe.size, fa.size, Value::Size);
                self.change(Field::Digest, fe.digest, fa.digest, |d| Value::Digest(d.copied()));
                self.change(Field::Zeros, fe.zeros, fa.zeros, |z| Value::Zeros(z.to_vec()));
            }
            KindCode::Symlink => {
                let (te, ta) = (e.target.unwrap_or_default(), a.target.unwrap_or_default());
                self.change(Field::Target, te, ta, |t| Value::Target(t.to_vec()));
            }
            KindCode::Char | KindCode::Block => {
                let (de, da) = (e.dev.unwrap_or_default(), a.dev.unwrap_or_default());
                self.change(Field::Rdev, de, da, Value::Dev);
            }
            // An unresolvable hardlink (only in a manifest that was never
            // validated): compare what it points at.
            KindCode::Hardlink => {
                let (pe, pa) = (e.target.unwrap_or_default(), a.target.unwrap_or_default());
                self.change(Field::Link, pe, pa, |p| Value::Path(p.to_vec()));
            }
            _ => {}
        }
    }
}

impl<'a> Cx<'a, '_> {
    /// Compares two entries at `self.out.path`, then their children.
    fn entry(&mut self, e: Node<'a>, a: Node<'a>) {
        let re = self.exp.resolve(e);
        let ra = self.act.resolve(a);
        self.out.fields(&re.node.view(), re.link, &ra.node.view(), ra.link);
        if let (KindRef::Dir(ce), KindRef::Dir(ca)) = (e.kind(), a.kind()) {
            self.children(ce, ca);
        }
    }

    fn children(&mut self, e: Children<'a>, a: Children<'a>) {
        let base = self.out.path.len();
        merge(
            e,
            a,
            |n| n.name(),
            |name, ce, ca| {
                if base > 0 {
                    self.out.path.push(b'/');
                }
                self.out.path.extend_from_slice(name);
                if !self.out.opts.excludes.is_excluded(&self.out.path) {
                    match (ce, ca) {
                        // deep trees recurse deeply: grow the stack on demand
                        (Some(ce), Some(ca)) => stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.entry(ce, ca)),
                        (Some(_), None) => self.out.push(What::Missing),
                        (None, Some(_)) => self.out.push(What::Extra),
                        (None, None) => {}
                    }
                }
                self.out.path.truncate(base);
            },
        );
    }
}

fn link_value(l: Option<&[u8]>) -> Value {
    l.map_or(Value::None, |p| Value::Path(p.to_vec()))
}

/// Walks two sequences sorted by `key` side by side, calling `f` once per
/// key with each side's item.
fn merge<'k, T: Copy>(
    e: impl Iterator<Item = T>,
    a: impl Iterator<Item = T>,
    key: impl Fn(&T) -> &'k [u8],
    mut f: impl FnMut(&'k [u8], Option<T>, Option<T>),
) {
    let (mut ie, mut ia) = (e.peekable(), a.peekable());
    loop {
        match (ie.peek().copied(), ia.peek().copied()) {
            (None, None) => break,
            (Some(x), None) => {
                f(key(&x), Some(x), None);
                ie.next();
            }
            (None, Some(y)) => {
                f(key(&y), None, Some(y));
                ia.next();
            }
            (Some(x), Some(y)) => match key(&x).cmp(key(&y)) {
                std::cmp::Ordering::Less => {
                    f(key(&x), Some(x), None);
                    ie.next();
                }
                std::cmp::Ordering::Greater => {
                    f(key(&y), None, Some(y));
                    ia.next();
                }
                std::cmp::Ordering::Equal => {
                    f(key(&x), Some(x), Some(y));
                    ie.next();
                    ia.next();
                }
            },
        }
    }
}
