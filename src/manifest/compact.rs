//! The compact form of a manifest, shared by every source and sink that
//! handles whole trees: entries in one array in manifest order (depth
//! first, children by name), names and link targets in one byte arena,
//! xattr sets and owner names interned. An entry costs 48 bytes plus its
//! name, a regular file with content 48 bytes more, so a million entries
//! fit in about 100 MB where the tree form ([`Manifest`]) needs several
//! times that.
//!
//! A directory's subtree is the range of entries that follows it, up to
//! its `end`; its children are found by skipping from one child's end to
//! the next. The array is built by appending in manifest order
//! ([`Builder`]); it is read through cheap copyable views ([`Node`]).
//! [`Compact::from_tree`] and [`Compact::to_tree`] convert from and to the
//! tree form, which stays the convenient way to build small manifests.

use super::{Dev, Digest, Entry, File, Kind, KindCode, Manifest, Meta, Time};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `data` of an entry that has none (an empty regular file).
const NONE: u32 = u32::MAX;
/// `flags`: the regular file has a digest.
const HAS_DIGEST: u8 = 1;

/// One entry (48 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    sec: i64,
    /// Offset of the name in `text`.
    name_off: u32,
    /// Index one past the last entry of this entry's subtree.
    end: u32,
    uid: u32,
    gid: u32,
    nsec: u32,
    /// Index into `xattr_sets` (0: none).
    xattrs: u32,
    /// Index into `owners` (0: neither name).
    owner: u32,
    /// Regular file: index into `files` or [`NONE`]; symlink and hardlink:
    /// index into `targets`; devices: major << 20 | minor.
    data: u32,
    name_len: u16,
    mode: u16,
    kind: u8,
    flags: u8,
}

/// A regular file's content (48 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileRec {
    size: u64,
    digest: Digest,
    zeros_off: u32,
    zeros_len: u32,
}

/// One xattr: name and value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);
/// One interned xattr set, names in raw byte order.
type XattrSet = Arc<[Xattr]>;
/// One interned pair of owner names.
type Owners = (Option<Box<str>>, Option<Box<str>>);

/// A whole manifest in compact form. Always holds at least the root, a
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compact {
    recs: Vec<Rec>,
    text: Vec<u8>,
    files: Vec<FileRec>,
    zeros: Vec<(u64, u64)>,
    targets: Vec<(u32, u32)>,
    xattr_sets: Vec<XattrSet>,
    owners: Vec<Owners>,
    /// Whether [`Compact::validate`] has passed on this very model (the
    /// decoder validates what it builds): every sink validates what it is
    /// given, and a manifest passed from sink to sink is checked once.
    checked: Checked,
}

/// A flag that a model passed validation. Not part of the model: two
/// models with the same entries are equal whether or not either was
/// checked; a clone keeps the flag, as it keeps the entries.
#[derive(Debug, Default)]
struct Checked(std::sync::atomic::AtomicBool);

impl Checked {
    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(&self, v: bool) {
        self.0.store(v, std::sync::atomic::Ordering::Release);
    }
}

impl Clone for Checked {
    fn clone(&self) -> Self {
        Checked(std::sync::atomic::AtomicBool::new(self.get()))
    }
}

impl PartialEq for Checked {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Checked {}

/// What a model cannot hold: more than 4 GiB of names and targets, or
/// more than 4 billion entries, files or zero runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the manifest is too large to hold in memory: more than 4 GiB of names or 4 billion {0}")]
pub struct TooLarge(pub &'static str);

fn index(n: usize, what: &'static str) -> Result<u32, TooLarge> {
    u32::try_from(n).ok().filter(|&v| v != NONE).ok_or(TooLarge(what))
}

impl Compact {
    /// Number of entries, the root included.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Never true: a manifest holds at least its root.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// The root directory.
    pub fn root(&self) -> Node<'_> {
        Node { c: self, i: 0 }
    }

    /// The entry at `index` in manifest order, if there is one.
    pub fn node(&self, index: usize) -> Option<Node<'_>> {
        (index < self.recs.len()).then_some(Node { c: self, i: index as u32 })
    }

    /// Every entry in manifest order, without paths.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = Node<'_>> + '_ {
        (0..self.recs.len() as u32).map(|i| Node { c: self, i })
    }

    /// Every entry in manifest order with its path (as
    /// [`Manifest::walk`]); [`Compact::cursor`] does the same without
    /// allocating a path per entry.
    pub fn walk(&self) -> CompactWalk<'_> {
        CompactWalk { cur: self.cursor() }
    }

    /// A walk in manifest order that lends each entry's path.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor { c: self, next: 0, path: Vec::new(), stack: Vec::new() }
    }

    /// Looks up an entry by a `/`-separated path relative to the root
    /// (empty: the root). Does not follow links. Binary search among each
    /// directory's children would need an index; this scans them, so it is
    /// meant for a few lookups, not one per entry.
    pub fn get(&self, path: &[u8]) -> Option<Node<'_>> {
        let mut cur = self.root();
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = cur.children().find(|n| n.name() == comp)?;
        }
        Some(cur)
    }

    /// Looks up many `/`-separated paths (as [`Compact::get`]) in one walk
    /// that enters only the directories on the way to one of them: each
    /// path's entry, in the order given.
    pub fn get_many(&self, paths: &[&[u8]]) -> Vec<Option<Node<'_>>> {
        use std::collections::HashSet;
        let norm: Vec<Vec<u8>> = paths
            .iter()
            .map(|p| p.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect::<Vec<_>>().join(&b'/'))
            .collect();
        // every directory a wanted path lies under, the root's "" among them
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        for p in &norm {
            dirs.insert(b"");
            for (i, &b) in p.iter().enumerate() {
                if b == b'/' {
                    dirs.insert(&p[..i]);
                }
            }
        }
        let wanted: HashSet<&[u8]> = norm.iter().map(|p| &p[..]).collect();
        let mut found: HashMap<Vec<u8>, Node<'_>> = HashMap::new();
        let mut cur = self.cursor();
        while let Some((p, n)) = cur.next_entry() {
            if wanted.contains(p) {
                found.insert(p.to_vec(), n);
            }
            if n.is_dir() && !dirs.contains(p) {
                cur.skip_subtree();
            }
        }
        norm.iter().map(|p| found.get(p).copied()).collect()
    }

    /// Replaces the digest of each regular file that has one, in manifest
    /// order: `f` gets its size and digest and returns the new digest (a
    /// file left without one counts as having none).
    pub fn map_digests<E>(&mut self, mut f: impl FnMut(u64, &Digest) -> Result<Option<Digest>, E>) -> Result<(), E> {
        self.checked.set(false);
        for r in &mut self.recs {
            if r.kind != KindCode::File as u8 || r.data == NONE || r.flags & HAS_DIGEST == 0 {
                continue;
            }
            let file = &mut self.files[r.data as usize];
            match f(file.size, &file.digest)? {
                Some(d) => file.digest = d,
                None => {
                    file.digest = Digest([0; 32]);
                    r.flags &= !HAS_DIGEST;
                }
            }
        }
        Ok(())
    }

    /// The compact form of a tree. Fails only where the tree breaks a rule
    /// the compact form cannot hold (a name longer than 255 bytes, mode
    /// bits outside 07777, device numbers Linux cannot represent), with the
    /// message validation gives, or when it is too large.
    pub fn from_tree(m: &Manifest) -> Result<Self, super::DecodeError> {
        let mut b = Builder::new();
        let mut path = Vec::new();
        b.add_tree(&mut path, b"", &m.root)?;
        Ok(b.finish())
    }

    /// The tree form.
    pub fn to_tree(&self) -> Manifest {
        Manifest { root: self.root().to_entry() }
    }

    /// Decodes and validates canonical CBOR.
    pub fn from_bytes(data: &[u8]) -> Result<Self, super::DecodeError> {
        super::codec::decode_compact(data)
    }

    /// Encodes to canonical CBOR, after checking every rule the decoder
    /// checks.
    pub fn to_bytes(&self) -> Result<Vec<u8>, super::DecodeError> {
        super::codec::encode_compact(self)
    }

    /// Decodes and validates the `len` bytes `src` yields, reading them
    /// through a bounded window rather than holding them whole; a source
    /// that ends before `len` bytes or goes on after them is an error.
    pub fn read_from(src: &mut dyn std::io::Read, len: u64) -> Result<Self, super::DecodeError> {
        super::codec::decode_read(src, len)
    }

    /// Checks every rule the decoder checks, then writes the canonical
    /// bytes to `out` in chunks; returns their length and sha256 (the
    /// manifest's digest). Nothing is written when the check fails.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> Result<(u64, Digest), WriteError> {
        self.validate()?;
        Ok(super::codec::encode_valid(self, out)?)
    }

    /// sha256 of the encoded manifest: its identity.
    pub fn digest(&self) -> Result<Digest, super::DecodeError> {
        self.validate()?;
        let (_, d) = super::codec::encode_valid(self, &mut std::io::sink()).map_err(|e| super::DecodeError {
            offset: None,
            path: None,
            what: e.to_string(),
        })?;
        Ok(d)
    }

    /// Checks the rules that span entries or values (see
    /// [`super::codec::validate`]); once passed, the model is not checked
    /// again.
    pub fn validate(&self) -> Result<(), super::DecodeError> {
        if !self.checked.get() {
            super::codec::validate_compact(self)?;
            self.checked.set(true);
        }
        Ok(())
    }

    /// Bytes of memory the model holds (its arrays' lengths, not their
    /// capacities), for reports.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.recs.len() * size_of::<Rec>()
            + self.text.len()
            + self.files.len() * size_of::<FileRec>()
            + self.zeros.len() * 16
            + self.targets.len() * 8
            + self
                .xattr_sets
                .iter()
                .map(|s| s.iter().map(|(k, v)| k.len() + v.len() + 32).sum::<usize>())
                .sum::<usize>()
    }
}

/// Receives the entries of a manifest read as a stream ([`stream_read`]),
/// one at a time in manifest order.
pub trait Visit {
    /// The entry at `path` (`/`-joined, relative to the root, empty for the
    /// root). A directory comes before its children, with its whole
    /// metadata.
    fn entry(&mut self, path: &[u8], e: &EntryView<'_>);
    /// The directory at `path` ends: all its children came.
    fn end_dir(&mut self, path: &[u8]);
}

/// What a first read of a manifest ([`plan_read`]) learns for the streamed
/// second one ([`stream_read`]): the paths hardlinks name, and the owner
/// names of each directory (which the encoding puts after its children).
/// It holds one slot per directory and per hardlink, nothing per file.
#[derive(Debug, Default)]
pub struct StreamPlan {
    pub(crate) named: std::collections::HashSet<Vec<u8>>,
    /// Per directory in manifest order: index into `owners`.
    pub(crate) dir_owners: Vec<u32>,
    pub(crate) owners: Vec<Owners>,
    pub(crate) owner_index: HashMap<Owners, u32>,
}

impl StreamPlan {
    /// Whether some hardlink names `path`.
    pub fn is_named(&self, path: &[u8]) -> bool {
        self.named.contains(path)
    }
}

/// Reads the `len` bytes of a manifest `src` yields once, checking every
/// rule of the encoding (every error [`Compact::read_from`] gives for a
/// malformed encoding, at the same offset with the same words) without
/// holding the manifest; returns what [`stream_read`] needs.
pub fn plan_read(src: &mut dyn std::io::Read, len: u64) -> Result<StreamPlan, super::DecodeError> {
    super::codec::plan_read(src, len)
}

/// Reads a manifest again after [`plan_read`] (the same bytes) and hands
/// each entry to `visit` in manifest order, holding only the entries
/// hardlinks name. Checks the rules that span entries as
/// [`Compact::read_from`] does, in manifest order: an error comes after
/// `visit` saw the entries before the one at fault, and is then the one
/// `read_from` gives. A manifest whose hardlinks or directories differ from
/// the first read is an error (the manifest changed between the reads).
pub fn stream_read(
    src: &mut dyn std::io::Read,
    len: u64,
    plan: &StreamPlan,
    visit: &mut dyn Visit,
) -> Result<(), super::DecodeError> {
    super::codec::stream_read(src, len, plan, visit)
}

/// One entry of a [`Compact`] manifest: a copyable view.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    c: &'a Compact,
    i: u32,
}

impl std::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("index", &self.i).field("name", &super::notation::escape(self.name())).finish()
    }
}

impl PartialEq for Node<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.c, other.c) && self.i == other.i
    }
}

/// What an entry is, borrowed from a [`Compact`] manifest.
#[derive(Clone, Copy, Debug)]
pub enum KindRef<'a> {
    /// Regular file.
    File(FileRef<'a>),
    /// Directory.
    Dir(Children<'a>),
    /// Symbolic link and its target.
    Symlink(&'a [u8]),
    /// Another name of an earlier regular file, by path.
    Hardlink(&'a [u8]),
    /// Character device.
    Char(Dev),
    /// Block device.
    Block(Dev),
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// A regular file's content, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRef<'a> {
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content; `None` exactly when size is 0.
    pub digest: Option<&'a Digest>,
    /// Zero runs as `(first block, block count)`.
    pub zeros: &'a [(u64, u64)],
}

impl FileRef<'_> {
    /// Bytes of the file that are not in a zero run.
    pub fn data_bytes(&self) -> u64 {
        let z: u64 = self.zeros.iter().map(|(_, n)| n * super::BLOCK).sum();
        self.size - z.min(self.size)
    }

    /// An owned copy.
    pub fn to_file(&self) -> File {
        File { size: self.size, digest: self.digest.copied(), zeros: self.zeros.to_vec() }
    }
}

/// An entry's xattrs, names in raw byte order.
#[derive(Clone, Copy, Debug)]
pub struct Xattrs<'a>(&'a [Xattr]);

impl<'a> Xattrs<'a> {
    /// A view of `(name, value)` pairs already in raw name order, names
    /// unique.
    pub fn from_pairs(pairs: &'a [Xattr]) -> Self {
        Xattrs(pairs)
    }

    /// `(name, value)` pairs, names in raw byte order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.0.iter().map(|(k, v)| (&k[..], &v[..]))
    }

    /// The value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(name)).ok()?;
        Some(&self.0[i].1)
    }

    /// Number of xattrs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No xattrs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An owned copy.
    pub fn to_map(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }
}

/// One entry's own data, borrowed, without its name or children: what a
/// [`Node`] holds and what a streamed read ([`stream_read`]) hands on.
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    /// Entry type.
    pub code: KindCode,
    /// Permission bits.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Time,
    /// Owner's user name.
    pub uname: Option<&'a str>,
    /// Group name.
    pub gname: Option<&'a str>,
    /// Xattrs, names in raw byte order.
    pub xattrs: Xattrs<'a>,
    /// A regular file's content (`Some` exactly for a regular file).
    pub file: Option<FileRef<'a>>,
    /// A symlink's target or the path a hardlink names.
    pub target: Option<&'a [u8]>,
    /// A device's numbers.
    pub dev: Option<Dev>,
}

impl<'a> Node<'a> {
    /// The entry's own data.
    pub fn view(&self) -> EntryView<'a> {
        EntryView {
            code: self.code(),
            mode: self.mode(),
            uid: self.uid(),
            gid: self.gid(),
            mtime: self.mtime(),
            uname: self.uname(),
            gname: self.gname(),
            xattrs: self.xattrs(),
            file: self.file(),
            target: self.target(),
            dev: self.dev(),
        }
    }

    fn rec(&self) -> &'a Rec {
        &self.c.recs[self.i as usize]
    }

    /// Position in manifest order (the root is 0).
    pub fn index(&self) -> usize {
        self.i as usize
    }

    /// Index one past the last entry of this entry's subtree.
    pub fn end(&self) -> usize {
        self.rec().end as usize
    }

    /// The name (empty for the root).
    pub fn name(&self) -> &'a [u8] {
        let r = self.rec();
        &self.c.text[r.name_off as usize..r.name_off as usize + r.name_len as usize]
    }

    /// The type.
    pub fn code(&self) -> KindCode {
        KindCode::from_u64(self.rec().kind.into()).unwrap_or(KindCode::File)
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.code() == KindCode::Dir
    }

    /// Permission bits plus setuid, setgid and sticky.
    pub fn mode(&self) -> u32 {
        self.rec().mode.into()
    }

    /// Numeric owner.
    pub fn uid(&self) -> u32 {
        self.rec().uid
    }

    /// Numeric group.
    pub fn gid(&self) -> u32 {
        self.rec().gid
    }

    /// Modification time.
    pub fn mtime(&self) -> Time {
        let r = self.rec();
        Time { sec: r.sec, nsec: r.nsec }
    }

    /// Extended attributes.
    pub fn xattrs(&self) -> Xattrs<'a> {
        Xattrs(&self.c.xattr_sets[self.rec().xattrs as usize])
    }

    /// The number of the entry's interned xattr set (0: none): entries
    /// whose numbers are equal have equal xattrs.
    pub fn xattr_set(&self) -> usize {
        self.rec().xattrs as usize
    }

    /// Owner's user name, advisory.
    pub fn uname(&self) -> Option<&'a str> {
        self.c.owners[self.rec().owner as usize].0.as_deref()
    }

    /// Group name, advisory.
    pub fn gname(&self) -> Option<&'a str> {
        self.c.owners[self.rec().owner as usize].1.as_deref()
    }

    /// The content of a regular file.
    pub fn file(&self) -> Option<FileRef<'a>> {
        let r = self.rec();
        if r.kind != KindCode::File as u8 {
            return None;
        }
        if r.data == NONE {
            return Some(FileRef { size: 0, digest: None, zeros: &[] });
        }
        let f = &self.c.files[r.data as usize];
        let zeros = &self.c.zeros[f.zeros_off as usize..(f.zeros_off + f.zeros_len) as usize];
        Some(FileRef { size: f.size, digest: (r.flags & HAS_DIGEST != 0).then_some(&f.digest), zeros })
    }

    /// The target of a symlink or the path of a hardlink.
    pub fn target(&self) -> Option<&'a [u8]> {
        let r = self.rec();
        if r.kind != KindCode::Symlink as u8 && r.kind != KindCode::Hardlink as u8 {
            return None;
        }
        let (off, len) = self.c.targets[r.data as usize];
        Some(&self.c.text[off as usize..(off + len) as usize])
    }

    /// Device numbers of a character or block device.
    pub fn dev(&self) -> Option<Dev> {
        let r = self.rec();
        (r.kind == KindCode::Char as u8 || r.kind == KindCode::Block as u8)
            .then_some(Dev { major: r.data >> 20, minor: r.data & ((1 << 20) - 1) })
    }

    /// The children of a directory in name order (none for other types).
    pub fn children(&self) -> Children<'a> {
        let r = self.rec();
        let (next, end) = if r.kind == KindCode::Dir as u8 { (self.i + 1, r.end) } else { (0, 0) };
        Children { c: self.c, next, end }
    }

    /// What the entry is.
    pub fn kind(&self) -> KindRef<'a> {
        match self.code() {
            KindCode::File => KindRef::File(self.file().unwrap_or(FileRef { size: 0, digest: None, zeros: &[] })),
            KindCode::Dir => KindRef::Dir(self.children()),
            KindCode::Symlink => KindRef::Symlink(self.target().unwrap_or_default()),
            KindCode::Hardlink => KindRef::Hardlink(self.target().unwrap_or_default()),
            KindCode::Char => KindRef::Char(self.dev().unwrap_or_default()),
            KindCode::Block => KindRef::Block(self.dev().unwrap_or_default()),
            KindCode::Fifo => KindRef::Fifo,
            KindCode::Socket => KindRef::Socket,
        }
    }

    /// An owned copy of the metadata.
    pub fn meta(&self) -> Meta {
        Meta {
            mode: self.mode(),
            uid: self.uid(),
            gid: self.gid(),
            mtime: self.mtime(),
            xattrs: self.xattrs().to_map(),
            uname: self.uname().map(str::to_string),
            gname: self.gname().map(str::to_string),
        }
    }

    /// An owned copy of the entry and, for a directory, its whole subtree.
    pub fn to_entry(&self) -> Entry {
        let kind = match self.kind() {
            KindRef::File(f) => Kind::File(f.to_file()),
            KindRef::Dir(children) => {
                let list: Vec<(Vec<u8>, Entry)> = children
                    .map(|n| {
                        let e = stacker::maybe_grow(64 * 1024, 1024 * 1024, || n.to_entry());
                        (n.name().to_vec(), e)
                    })
                    .collect();
                Kind::Dir(list.into_iter().collect())
            }
            KindRef::Symlink(t) => Kind::Symlink(t.to_vec()),
            KindRef::Hardlink(t) => Kind::Hardlink(t.to_vec()),
            KindRef::Char(d) => Kind::Char(d),
            KindRef::Block(d) => Kind::Block(d),
            KindRef::Fifo => Kind::Fifo,
            KindRef::Socket => Kind::Socket,
        };
        Entry { meta: self.meta(), kind }
    }
}

/// The children of a directory, in name order.
#[derive(Clone, Copy, Debug)]
pub struct Children<'a> {
    c: &'a Compact,
    next: u32,
    end: u32,
}

impl Children<'_> {
    /// No children.
    pub fn is_empty(&self) -> bool {
        self.next >= self.end
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        if self.next >= self.end {
            return None;
        }
        let n = Node { c: self.c, i: self.next };
        self.next = n.rec().end;
        Some(n)
    }
}

/// A walk in manifest order that lends each entry's path (`/`-joined,
/// relative to the root, empty for the root) without allocating one per
/// entry.
pub struct Cursor<'a> {
    c: &'a Compact,
    next: u32,
    path: Vec<u8>,
    /// Open directories: (subtree end, path length before its name).
    stack: Vec<(u32, usize)>,
}

impl<'a> Cursor<'a> {
    /// The next entry and its path.
    pub fn next_entry(&mut self) -> Option<(&[u8], Node<'a>)> {
        let i = self.next;
        if i as usize >= self.c.recs.len() {
            return None;
        }
        while let Some(&(end, len)) = self.stack.last() {
            if i < end {
                break;
            }
            self.path.truncate(len);
            self.stack.pop();
        }
        let n = Node { c: self.c, i };
        let base = self.path.len();
        if i > 0 {
            if base > 0 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(n.name());
        }
        if n.is_dir() {
            self.stack.push((n.rec().end, base));
        } else {
            // a leaf's name is removed before the next entry
            self.stack.push((i + 1, base));
        }
        self.next = i + 1;
        Some((&self.path, n))
    }

    /// How deep the last entry lies (components of its path; the root 0).
    pub fn depth(&self) -> usize {
        self.stack.len().saturating_sub(1)
    }

    /// Skips the rest of the last entry's subtree.
    pub fn skip_subtree(&mut self) {
        if let Some(&(end, _)) = self.stack.last() {
            self.next = self.next.max(end);
        }
    }
}

/// [`Compact::walk`]: every entry with an owned path.
pub struct CompactWalk<'a> {
    cur: Cursor<'a>,
}

impl<'a> Iterator for CompactWalk<'a> {
    type Item = (Vec<u8>, Node<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (p, n) = self.cur.next_entry()?;
        Some((p.to_vec(), n))
    }
}

/// A non-directory entry's type and data, for [`Builder::push`].
#[derive(Clone, Copy, Debug)]
pub enum Leaf<'a> {
    /// Regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// sha256 of the content, `None` exactly when size is 0.
        digest: Option<Digest>,
        /// Zero runs.
        zeros: &'a [(u64, u64)],
    },
    /// Symbolic link and its target.
    Symlink(&'a [u8]),
    /// Another name of an earlier regular file.
    Hardlink(&'a [u8]),
    /// Character device.
    Char(Dev),
    /// Block device.
    Block(Dev),
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl<'a> Leaf<'a> {
    /// The leaf of a tree entry (`None` for a directory).
    pub fn of(kind: &'a Kind) -> Option<Self> {
        Some(match kind {
            Kind::File(f) => Leaf::File { size: f.size, digest: f.digest, zeros: &f.zeros },
            Kind::Dir(_) => return None,
            Kind::Symlink(t) => Leaf::Symlink(t),
            Kind::Hardlink(t) => Leaf::Hardlink(t),
            Kind::Char(d) => Leaf::Char(*d),
            Kind::Block(d) => Leaf::Block(*d),
            Kind::Fifo => Leaf::Fifo,
            Kind::Socket => Leaf::Socket,
        })
    }

    pub(super) fn code(&self) -> KindCode {
        match self {
            Leaf::File { .. } => KindCode::File,
            Leaf::Symlink(_) => KindCode::Symlink,
            Leaf::Hardlink(_) => KindCode::Hardlink,
            Leaf::Char(_) => KindCode::Char,
            Leaf::Block(_) => KindCode::Block,
            Leaf::Fifo => KindCode::Fifo,
            Leaf::Socket => KindCode::Socket,
        }
    }
}

/// Why [`Compact::write_to`] failed: the manifest breaks a rule, or the
/// output refused the bytes.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The manifest breaks a rule of the format.
    #[error(transparent)]
    Invalid(#[from] super::DecodeError),
    /// Writing the bytes failed.
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

/// Metadata for [`Builder`], borrowed: what every entry but a hardlink
/// carries.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaIn<'a> {
    /// Permission bits, at most 07777.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Time,
    /// Xattrs in raw name order, names unique (an interned set, see
    /// [`Builder::intern_xattrs`]; 0 is the empty set).
    pub xattrs: u32,
    /// Owner's user name.
    pub uname: Option<&'a str>,
    /// Group name.
    pub gname: Option<&'a str>,
}

/// Builds a [`Compact`] manifest by appending entries in manifest order:
/// the root first (an `open_dir` with an empty name), each directory's
/// children in name order between its `open_dir` and `close_dir`.
/// Appending out of order is not detected here; [`Compact::validate`]
/// (which encoding runs) catches it.
pub struct Builder {
    c: Compact,
    open: Vec<u32>,
    xattr_index: HashMap<XattrSet, u32>,
    owner_index: HashMap<Owners, u32>,
    last_owner: u32,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a [`Builder`] refused an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// A name longer than 255 bytes.
    NameTooLong,
    /// Mode bits outside 07777.
    Mode(u32),
    /// Device numbers Linux cannot represent.
    Device(super::LimitError),
    /// Past the model's limits.
    TooLarge(TooLarge),
}

impl From<TooLarge> for BuildError {
    fn from(e: TooLarge) -> Self {
        BuildError::TooLarge(e)
    }
}

/// Filling in an entry appended before all of it was known: a scan
/// appends each regular file in manifest order as it meets it and learns
/// its content and xattrs later, from the threads that hash it.
impl Builder {
    /// Sets the content of the regular file at index `at`. Does nothing to
    /// an entry of another type.
    pub fn set_file(
        &mut self,
        at: usize,
        size: u64,
        digest: Option<Digest>,
        zeros: &[(u64, u64)],
    ) -> Result<(), TooLarge> {
        let Some(r) = self.c.recs.get(at) else { return Ok(()) };
        if r.kind != KindCode::File as u8 {
            return Ok(());
        }
        let (data, flags) = if size == 0 && digest.is_none() && zeros.is_empty() {
            (NONE, 0)
        } else {
            let (zeros_off, zeros_len) = if zeros.is_empty() {
                (0, 0)
            } else {
                let off = index(self.c.zeros.len(), "zero runs")?;
                index(self.c.zeros.len() + zeros.len(), "zero runs")?;
                self.c.zeros.extend_from_slice(zeros);
                (off, zeros.len() as u32)
            };
            let rec = FileRec { size, digest: digest.unwrap_or(Digest([0; 32])), zeros_off, zeros_len };
            let f = match r.data {
                NONE => {
                    let f = index(self.c.files.len(), "files")?;
                    self.c.files.push(rec);
                    f
                }
                f => {
                    self.c.files[f as usize] = rec;
                    f
                }
            };
            (f, if digest.is_some() { HAS_DIGEST } else { 0 })
        };
        let r = &mut self.c.recs[at];
        r.data = data;
        r.flags = flags;
        Ok(())
    }

    /// Sets the xattrs (an interned set, see [`Builder::intern_xattrs`])
    /// of the entry at `index`.
    pub fn set_xattrs(&mut self, index: usize, xattrs: u32) {
        if let Some(r) = self.c.recs.get_mut(index) {
            r.xattrs = xattrs;
        }
    }

    /// Sets the numeric owner and group of the entry at `index`.
    pub fn set_ids(&mut self, index: usize, uid: u32, gid: u32) {
        if let Some(r) = self.c.recs.get_mut(index) {
            r.uid = uid;
            r.gid = gid;
        }
    }
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        let c = Compact {
            recs: Vec::new(),
            text: Vec::new(),
            files: Vec::new(),
            zeros: Vec::new(),
            targets: Vec::new(),
            xattr_sets: vec![Arc::from(Vec::new())],
            owners: vec![(None, None)],
            checked: Checked::default(),
        };
        Builder { c, open: Vec::new(), xattr_index: HashMap::new(), owner_index: HashMap::new(), last_owner: 0 }
    }

    /// Entries appended so far.
    pub fn len(&self) -> usize {
        self.c.recs.len()
    }

    /// No entry yet.
    pub fn is_empty(&self) -> bool {
        self.c.recs.is_empty()
    }

    /// Interns an xattr set (pairs in raw name order, names unique) and
    /// returns its number for [`MetaIn::xattrs`].
    pub fn intern_xattrs<'k>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'k [u8], &'k [u8])>,
    ) -> Result<u32, TooLarge> {
        let set: Vec<Xattr> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        if set.is_empty() {
            return Ok(0);
        }
        let set: XattrSet = set.into();
        if let Some(&i) = self.xattr_index.get(&set) {
            return Ok(i);
        }
        let i = index(self.c.xattr_sets.len(), "xattr sets")?;
        self.c.xattr_sets.push(set.clone());
        self.xattr_index.insert(set, i);
        Ok(i)
    }

    fn owner(&mut self, uname: Option<&str>, gname: Option<&str>) -> Result<u32, TooLarge> {
        let (u, g) = &self.c.owners[self.last_owner as usize];
        if u.as_deref() == uname && g.as_deref() == gname {
            return Ok(self.last_owner);
        }
        let key: Owners = (uname.map(Box::from), gname.map(Box::from));
        let i = match self.owner_index.get(&key) {
            Some(&i) => i,
            None => {
                let i = index(self.c.owners.len(), "owner names")?;
                self.c.owners.push(key.clone());
                self.owner_index.insert(key, i);
                i
            }
        };
        self.last_owner = i;
        Ok(i)
    }

    fn text(&mut self, b: &[u8]) -> Result<u32, TooLarge> {
        let off = index(self.c.text.len(), "bytes of names")?;
        index(self.c.text.len() + b.len(), "bytes of names")?;
        self.c.text.extend_from_slice(b);
        Ok(off)
    }

    fn append(&mut self, name: &[u8], meta: &MetaIn<'_>, code: KindCode) -> Result<u32, BuildError> {
        if name.len() > super::MAX_NAME {
            return Err(BuildError::NameTooLong);
        }
        let Ok(mode) = u16::try_from(meta.mode).map_err(|_| ()).and_then(|m| if m > 0o7777 { Err(()) } else { Ok(m) })
        else {
            return Err(BuildError::Mode(meta.mode));
        };
        let i = index(self.c.recs.len(), "entries")?;
        let name_off = self.text(name)?;
        let owner = self.owner(meta.uname, meta.gname)?;
        self.c.recs.push(Rec {
            sec: meta.mtime.sec,
            name_off,
            end: i + 1,
            uid: meta.uid,
            gid: meta.gid,
            nsec: meta.mtime.nsec,
            xattrs: meta.xattrs,
            owner,
            data: NONE,
            name_len: name.len() as u16,
            mode,
            kind: code as u8,
            flags: 0,
        });
        Ok(i)
    }

    /// Appends a directory and opens it: the entries appended until its
    /// `close_dir` are its subtree. Returns its index.
    pub fn open_dir(&mut self, name: &[u8], meta: &MetaIn<'_>) -> Result<usize, BuildError> {
        let i = self.append(name, meta, KindCode::Dir)?;
        self.open.push(i);
        Ok(i as usize)
    }

    /// Closes the directory opened last.
    pub fn close_dir(&mut self) {
        if let Some(i) = self.open.pop() {
            self.c.recs[i as usize].end = self.c.recs.len() as u32;
        }
    }

    /// Sets the metadata of the entry at `index` (a directory whose
    /// metadata is known only after its children, as when decoding).
    pub fn set_meta(&mut self, index: usize, meta: &MetaIn<'_>) -> Result<(), BuildError> {
        let Ok(mode) = u16::try_from(meta.mode) else { return Err(BuildError::Mode(meta.mode)) };
        if mode > 0o7777 {
            return Err(BuildError::Mode(meta.mode));
        }
        let owner = self.owner(meta.uname, meta.gname)?;
        let r = &mut self.c.recs[index];
        r.sec = meta.mtime.sec;
        r.nsec = meta.mtime.nsec;
        r.uid = meta.uid;
        r.gid = meta.gid;
        r.mode = mode;
        r.xattrs = meta.xattrs;
        r.owner = owner;
        Ok(())
    }

    /// Appends a non-directory entry. Returns its index.
    pub fn push(&mut self, name: &[u8], meta: &MetaIn<'_>, leaf: Leaf<'_>) -> Result<usize, BuildError> {
        let i = self.append(name, meta, leaf.code())?;
        let (data, flags) = match leaf {
            Leaf::File { size, digest, zeros } => {
                if size == 0 && digest.is_none() && zeros.is_empty() {
                    (NONE, 0)
                } else {
                    let zeros_off = index(self.c.zeros.len(), "zero runs")?;
                    let zeros_len = index(zeros.len(), "zero runs")?;
                    index(self.c.zeros.len() + zeros.len(), "zero runs")?;
                    self.c.zeros.extend_from_slice(zeros);
                    let f = index(self.c.files.len(), "files")?;
                    self.c.files.push(FileRec {
                        size,
                        digest: digest.unwrap_or(Digest([0; 32])),
                        zeros_off,
                        zeros_len,
                    });
                    (f, if digest.is_some() { HAS_DIGEST } else { 0 })
                }
            }
            Leaf::Symlink(t) | Leaf::Hardlink(t) => {
                let off = self.text(t)?;
                let n = index(self.c.targets.len(), "links")?;
                self.c.targets.push((off, t.len() as u32));
                (n, 0)
            }
            Leaf::Char(d) | Leaf::Block(d) => {
                super::check_dev(d.major.into(), d.minor.into()).map_err(BuildError::Device)?;
                (d.major << 20 | d.minor, 0)
            }
            Leaf::Fifo | Leaf::Socket => (NONE, 0),
        };
        let r = &mut self.c.recs[i as usize];
        r.data = data;
        r.flags = flags;
        Ok(i as usize)
    }

    /// The manifest built. Directories still open are closed.
    pub fn finish(mut self) -> Compact {
        while !self.open.is_empty() {
            self.close_dir();
        }
        if self.c.recs.is_empty() {
            // an empty root directory
            let meta = MetaIn { mode: KindCode::Dir.default_mode(), ..MetaIn::default() };
            let _ = self.open_dir(b"", &meta);
            self.close_dir();
        }
        let mut c = self.c;
        c.recs.shrink_to_fit();
        c.text.shrink_to_fit();
        c.files.shrink_to_fit();
        c.zeros.shrink_to_fit();
        c.targets.shrink_to_fit();
        c
    }

    /// Appends a tree entry and its subtree.
    fn add_tree(&mut self, path: &mut Vec<u8>, name: &[u8], e: &Entry) -> Result<(), super::DecodeError> {
        let base = path.len();
        let xattrs = self
            .intern_xattrs(e.meta.xattrs.iter().map(|(k, v)| (&k[..], &v[..])))
            .map_err(|t| super::DecodeError { offset: None, path: None, what: t.to_string() })?;
        let meta = MetaIn {
            mode: e.meta.mode,
            uid: e.meta.uid,
            gid: e.meta.gid,
            mtime: e.meta.mtime,
            xattrs,
            uname: e.meta.uname.as_deref(),
            gname: e.meta.gname.as_deref(),
        };
        let here = |path: &[u8], err: BuildError, name: &[u8]| -> super::DecodeError {
            let what = match err {
                BuildError::NameTooLong => {
                    return super::codec::invalid(
                        &path[..base],
                        format!("invalid child name {}: name longer than 255 bytes", super::path_display(name)),
                    );
                }
                BuildError::Mode(m) => format!("mode {m:o} has bits outside 07777"),
                BuildError::Device(why) => why.to_string(),
                BuildError::TooLarge(t) => t.to_string(),
            };
            super::codec::invalid(path, what)
        };
        if !name.is_empty() {
            if base > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
        }
        match &e.kind {
            Kind::Dir(children) => {
                self.open_dir(name, &meta).map_err(|err| here(path, err, name))?;
                for (n, child) in children {
                    stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.add_tree(path, n, child))?;
                }
                self.close_dir();
            }
            kind => {
                let leaf = Leaf::of(kind).unwrap_or(Leaf::Fifo);
                self.push(name, &meta, leaf).map_err(|err| here(path, err, name))?;
            }
        }
        path.truncate(base);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_model_is_validated_once_and_again_after_a_change() {
        // a hardlink to a path nothing has: invalid, and it stays so
        let mut m = Manifest::default();
        if let Kind::Dir(children) = &mut m.root.kind {
            children.insert(b"l".to_vec(), Entry::new(Kind::Hardlink(b"nothing".to_vec())));
        }
        let bad = Compact::from_tree(&m).unwrap();
        assert!(bad.validate().is_err());
        assert!(bad.validate().is_err(), "a failed check is not remembered as passed");
        assert!(!bad.checked.get());

        let good = Compact::from_tree(&Manifest::default()).unwrap();
        assert!(!good.checked.get());
        good.validate().unwrap();
        assert!(good.checked.get());
        let mut copy = good.clone();
        assert!(copy.checked.get(), "a clone of a checked model is checked");
        assert_eq!(copy, Compact::from_tree(&Manifest::default()).unwrap(), "the flag is not part of equality");
        copy.map_digests(|_, d| Ok::<_, ()>(Some(*d))).unwrap();
        assert!(!copy.checked.get(), "a changed model is checked again");
        let decoded = Compact::from_bytes(&good.to_bytes().unwrap()).unwrap();
        assert!(decoded.checked.get(), "the decoder validated it");
    }

    use super::*;

    fn file(size: u64, d: u8) -> Entry {
        Entry::new(Kind::File(File { size, digest: (size > 0).then_some(Digest([d; 32])), zeros: Vec::new() }))
    }

    /// A source that yields at most `step` bytes a read, to cross the
    /// window's refills at every offset.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn streamed_bytes_match_whole_bytes_both_ways() {
        let mut dir = BTreeMap::new();
        for i in 0..5000u32 {
            let mut e = file(i as u64, i as u8);
            if i % 7 == 0 {
                e.meta.xattrs.insert(format!("user.k{i}").into_bytes(), vec![b'v'; (i % 300) as usize]);
                e.meta.uname = Some(format!("u{i}"));
            }
            dir.insert(format!("name-{i:05}").into_bytes(), e);
        }
        dir.insert(b"zz-link".to_vec(), Entry::new(Kind::Symlink(vec![b't'; 4000])));
        let mut root = BTreeMap::new();
        root.insert(b"d".to_vec(), Entry::new(Kind::Dir(dir)));
        let m = Manifest { root: Entry::new(Kind::Dir(root)) };
        let c = Compact::from_tree(&m).unwrap();
        let whole = c.to_bytes().unwrap();
        assert!(whole.len() > 300 * 1024, "crosses a chunk: {}", whole.len());
        let mut out = Vec::new();
        let (len, d) = c.write_to(&mut out).unwrap();
        assert_eq!(out, whole);
        assert_eq!((len, d), (whole.len() as u64, Digest::of(&whole)));
        assert_eq!(c.digest().unwrap(), Digest::of(&whole));
        for step in [1, 7, 4096, usize::MAX] {
            let back = Compact::read_from(&mut Trickle(&whole, step), whole.len() as u64).unwrap();
            assert_eq!(back.to_bytes().unwrap(), whole, "step {step}");
        }
        // a source that ends early or goes on is refused, with the offset
        let e = Compact::read_from(&mut Trickle(&whole[..whole.len() - 10], 4096), whole.len() as u64).unwrap_err();
        assert!(e.to_string().contains("input ended"), "{e}");
        let mut longer = whole.clone();
        longer.push(0);
        let e = Compact::read_from(&mut Trickle(&longer, 4096), whole.len() as u64).unwrap_err();
        assert!(e.to_string().contains("bytes after the manifest"), "{e}");
        // errors carry the same offset and words as decoding the whole bytes
        let cut = &whole[..whole.len() / 2];
        let a = Compact::from_bytes(cut).unwrap_err();
        let b = Compact::read_from(&mut Trickle(cut, 999), cut.len() as u64).unwrap_err();
        assert_eq!(a, b);
    }

    #[test]
    fn records_stay_small() {
        assert_eq!(std::mem::size_of::<Rec>(), 48);
        assert_eq!(std::mem::size_of::<FileRec>(), 48);
    }

    #[test]
    fn tree_round_trips_and_walks_in_order() {
        let mut sub = BTreeMap::new();
        sub.insert(b"b".to_vec(), file(3, 1));
        sub.insert(b"a".to_vec(), Entry::new(Kind::Symlink(b"../x".to_vec())));
        let mut root = BTreeMap::new();
        root.insert(b"d".to_vec(), Entry::new(Kind::Dir(sub)));
        root.insert(b"e".to_vec(), file(0, 0));
        root.insert(b"c".to_vec(), Entry::new(Kind::Char(Dev { major: 4095, minor: (1 << 20) - 1 })));
        let mut m = Manifest { root: Entry::new(Kind::Dir(root)) };
        m.root.meta.xattrs.insert(b"user.x".to_vec(), b"1".to_vec());
        m.root.meta.uname = Some("root".into());
        let c = Compact::from_tree(&m).unwrap();
        assert_eq!(c.to_tree(), m);
        let paths: Vec<Vec<u8>> = c.walk().map(|(p, _)| p).collect();
        let want: Vec<Vec<u8>> = m.walk().map(|(p, _)| p).collect();
        assert_eq!(paths, want);
        assert_eq!(c.get(b"d/b").unwrap().file().unwrap().size, 3);
        assert_eq!(c.get(b"d/a").unwrap().target(), Some(&b"../x"[..]));
        assert_eq!(c.get(b"c").unwrap().dev(), Some(Dev { major: 4095, minor: (1 << 20) - 1 }));
        assert!(c.get(b"d/zz").is_none());
        assert_eq!(
            c.root().children().map(|n| n.name().to_vec()).collect::<Vec<_>>(),
            vec![b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
        );
        assert_eq!(c.root().xattrs().get(b"user.x"), Some(&b"1"[..]));
        assert_eq!(c.to_bytes().unwrap(), m.to_bytes().unwrap());
    }

    #[test]
    fn get_many_finds_what_get_finds() {
        let mut deep = BTreeMap::new();
        deep.insert(b"f".to_vec(), file(2, 4));
        let mut sub = BTreeMap::new();
        sub.insert(b"in".to_vec(), file(1, 2));
        sub.insert(b"deep".to_vec(), Entry::new(Kind::Dir(deep)));
        let mut root = BTreeMap::new();
        root.insert(b"a".to_vec(), Entry::new(Kind::Dir(sub)));
        root.insert(b"a-b".to_vec(), file(1, 3));
        root.insert(b"l".to_vec(), Entry::new(Kind::Symlink(b"a".to_vec())));
        let c = Compact::from_tree(&Manifest { root: Entry::new(Kind::Dir(root)) }).unwrap();
        let paths: Vec<&[u8]> =
            vec![b"a/deep/f", b"/a-b", b"a//in", b"", b"a/deep", b"l/in", b"a/nope", b"a-b/x", b"a/deep/f"];
        let got: Vec<Option<usize>> = c.get_many(&paths).iter().map(|n| n.map(|n| n.index())).collect();
        let want: Vec<Option<usize>> = paths.iter().map(|p| c.get(p).map(|n| n.index())).collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 6);
        assert!(c.get_many(&[]).is_empty());
    }

    #[test]
    fn map_digests_visits_files_with_digests_in_order() {
        let mut root = BTreeMap::new();
        root.insert(b"a".to_vec(), file(1, 1));
        root.insert(b"b".to_vec(), file(0, 0));
        root.insert(b"c".to_vec(), file(2, 2));
        let m = Manifest { root: Entry::new(Kind::Dir(root)) };
        let mut c = Compact::from_tree(&m).unwrap();
        let mut seen = Vec::new();
        c.map_digests(|size, d| {
            seen.push((size, d.0[0]));
            Ok::<_, ()>(Some(Digest([d.0[0] + 10; 32])))
        })
        .unwrap();
        assert_eq!(seen, vec![(1, 1), (2, 2)]);
        assert_eq!(c.get(b"c").unwrap().file().unwrap().digest, Some(&Digest([12; 32])));
        assert_eq!(c.map_digests(|_, _| Err("stop")), Err("stop"));
        c.map_digests(|_, _| Ok::<_, ()>(None)).unwrap();
        assert_eq!(c.get(b"a").unwrap().file().unwrap().digest, None);
    }

    #[test]
    fn cursor_skips_subtrees() {
        let mut sub = BTreeMap::new();
        sub.insert(b"in".to_vec(), file(1, 2));
        let mut root = BTreeMap::new();
        root.insert(b"a".to_vec(), Entry::new(Kind::Dir(sub)));
        root.insert(b"b".to_vec(), file(1, 3));
        let c = Compact::from_tree(&Manifest { root: Entry::new(Kind::Dir(root)) }).unwrap();
        let mut cur = c.cursor();
        let mut seen = Vec::new();
        while let Some((p, n)) = cur.next_entry() {
            seen.push(p.to_vec());
            if n.is_dir() && !p.is_empty() {
                cur.skip_subtree();
            }
        }
        assert_eq!(seen, vec![b"".to_vec(), b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn content_set_later_encodes_as_if_known_at_once() {
        let meta = MetaIn { mode: 0o644, ..MetaIn::default() };
        let dir = MetaIn { mode: 0o755, ..MetaIn::default() };
        let zeros = [(1u64, 2u64)];
        let build = |later: bool| {
            let mut b = Builder::new();
            b.open_dir(b"", &dir).unwrap();
            let mut slots = Vec::new();
            for (name, size, d) in [(&b"a"[..], 5u64, 1u8), (b"b", 4 * 4096, 2), (b"c", 0, 0)] {
                let digest = (size > 0).then_some(Digest([d; 32]));
                let z: &[(u64, u64)] = if d == 2 { &zeros } else { &[] };
                let leaf = if later {
                    Leaf::File { size, digest: None, zeros: &[] }
                } else {
                    Leaf::File { size, digest, zeros: z }
                };
                let x = b.intern_xattrs([(&b"user.k"[..], &[d][..])]).unwrap();
                let m = MetaIn { xattrs: if later { 0 } else { x }, uid: if later { 0 } else { 7 }, ..meta };
                slots.push((b.push(name, &m, leaf).unwrap(), size, digest, z, x));
            }
            if later {
                // in another order than appended, as results come in
                for &(i, size, digest, z, x) in slots.iter().rev() {
                    b.set_file(i, size, digest, z).unwrap();
                    b.set_xattrs(i, x);
                    b.set_ids(i, 7, 0);
                }
            }
            b.close_dir();
            b.finish()
        };
        let (now, later) = (build(false), build(true));
        assert_eq!(later.to_bytes().unwrap(), now.to_bytes().unwrap());
        assert_eq!(later.get(b"b").unwrap().file().unwrap().zeros, &zeros);
        assert_eq!(later.get(b"c").unwrap().file().unwrap().digest, None);
        assert_eq!(later.get(b"a").unwrap().uid(), 7);
    }

    #[test]
    fn unrepresentable_trees_are_refused_with_validation_messages() {
        let mut root = BTreeMap::new();
        root.insert(vec![b'n'; 256], file(0, 0));
        let e = Compact::from_tree(&Manifest { root: Entry::new(Kind::Dir(root)) }).unwrap_err();
        assert!(e.to_string().contains("name longer than 255 bytes"), "{e}");
        let mut root = BTreeMap::new();
        root.insert(b"d".to_vec(), Entry::new(Kind::Block(Dev { major: 4096, minor: 0 })));
        let e = Compact::from_tree(&Manifest { root: Entry::new(Kind::Dir(root)) }).unwrap_err();
        assert!(e.to_string().contains("entry /d") && e.to_string().contains("4096:0"), "{e}");
        let mut m = Manifest::default();
        m.root.meta.mode = 0o17777;
        let e = Compact::from_tree(&m).unwrap_err();
        assert!(e.to_string().contains("bits outside 07777"), "{e}");
    }
}
