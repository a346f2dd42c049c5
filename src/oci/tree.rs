//! The working tree layers are applied to during import, in memory only, and
//! its conversion to a manifest (in compact form, [`Compact`]) at the end.
//!
//! Memory: the tree is a few large arrays, so that the allocator maps
//! each apart and truly gives it back when it is freed. Nodes sit in one
//! array by number (56 bytes each: metadata in 32, xattr sets and owner
//! names interned in tables of the tree; links to parent, next sibling and
//! first child by number), names and symlink targets in one byte array,
//! regular files' records in a table (48 bytes each), and children are
//! found by (parent, name) in one hash index of node numbers. A removed or
//! replaced node keeps its place until the manifest is built. To build it,
//! the arrays are put in the reverse of manifest order and recorded from
//! their ends, cut off as they go, so the tree shrinks while the manifest
//! grows.
//!
//! Unlike the manifest, this model keeps hardlinked names as equals sharing
//! one inode (content and metadata live in the inode), because a later layer
//! may delete or replace any of the names; which name is "first" and carries
//! the content is decided only when the manifest is built.
//!
//! Semantics follow `umoci unpack` (root mode), the reference for what an
//! image's tree is:
//! - Entry names are cleaned: a leading `/` is dropped (absolute names are
//!   taken relative to the root, the tar convention), empty and `.`
//!   components are dropped; a `..` component is rejected.
//! - Directory components of a name resolve through symlinks already in the
//!   tree, inside the root (`..` stops at the root, absolute targets start
//!   from it), as umoci's scoped join does; the last component is never
//!   followed. Directories a name implies but no entry lists are created
//!   with mode 0755, owner 0:0 and mtime 0, and so is the root until an
//!   entry for `.` sets it. (umoci creates them with mode 0777 less its
//!   umask, so 0755 under the usual 022, owned by the unpacking user, with
//!   the time of extraction as mtime: that time cannot be reproduced, so a
//!   fixed 0 stands in for it.)
//! - A new entry replaces what was there, except that a directory over a
//!   directory keeps the children and takes the new metadata.
//! - With [`Tree::keep_dirlinks`] (`umoci unpack --keep-dirlinks`, GNU tar's
//!   `--keep-directory-symlink`), a directory entry over a symlink that
//!   leads to a directory keeps the symlink: the symlink takes the entry's
//!   owner, mtime and xattrs (its mode stays 0777; umoci applies the
//!   header to the symlink itself), the directory it leads to keeps its
//!   own, and later entries beneath the name go through the symlink as
//!   through any parent symlink. "Leads to a directory" means the whole
//!   name, resolved as parents are (inside the root, through further
//!   symlinks), ends at a directory; a symlink that dangles, loops or
//!   leads to a non-directory is replaced by the directory, as without
//!   the option. Only directory entries keep a symlink: any other type
//!   replaces it.
//! - `.wh.NAME` removes NAME and `.wh..wh..opq` empties its directory, but
//!   neither touches a path created by the same layer (nor its ancestors):
//!   whiteouts hide lower layers only, whatever their position in the layer.
//!   A whiteout of a missing path does nothing.
//! - A hardlink shares the inode of its target, whatever its type but a
//!   directory (its own header metadata is ignored): a regular file's names
//!   share one [`File`]; a symlink's, device's or fifo's names are equal
//!   copies of one node marked with one inode number, which never changes
//!   after the node is made (a later entry at a name replaces the node). A
//!   link to a directory or a missing path is an error.
//! - The root may only be given directory metadata: any other type there is
//!   rejected.

use crate::manifest::compact::{BuildError, Builder, Leaf, MetaIn};
use crate::manifest::{
    Compact, Dev, Digest, File, LimitError, MAX_DEPTH, MAX_TARGET, Meta, Name, Time, check_depth, check_name,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Why a layer entry cannot be applied to the tree, or the tree cannot be
/// recorded in a manifest. Paths are relative to the root, raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A name has a `..` component.
    #[error("name has a .. component")]
    DotDot,
    /// A name component is not a valid file name.
    #[error("invalid name component: {0}")]
    Name(&'static str),
    /// The path is nested deeper than a manifest allows.
    #[error(transparent)]
    Depth(#[from] LimitError),
    /// A directory that does not exist is followed by `..`.
    #[error("a missing directory is followed by ..")]
    MissingThenDotDot,
    /// Symlinks in the directory components loop (or nest too deep).
    #[error("too many levels of symlinks resolving {}", shown(.0))]
    SymlinkLoop(Vec<u8>),
    /// A directory component is something else.
    #[error("{} is not a directory", shown(.0))]
    NotADirectory(Vec<u8>),
    /// A whiteout entry names the root.
    #[error("whiteout of the root")]
    WhiteoutRoot,
    /// A whiteout entry is `.wh.` alone.
    #[error("whiteout with an empty name")]
    WhiteoutEmpty,
    /// A whiteout entry hides `.` or `..`.
    #[error("whiteout of . or ..")]
    WhiteoutDot,
    /// The name a whiteout hides is not a valid file name.
    #[error("invalid whiteout name: {0}")]
    WhiteoutName(&'static str),
    /// An entry other than a directory for the root.
    #[error("refusing to change the type of the root directory")]
    RootType,
    /// A hardlink's target cannot be resolved.
    #[error("hardlink target {}: {err}", shown(.target))]
    LinkTarget {
        /// The target as the entry names it.
        target: Vec<u8>,
        /// Why it cannot be resolved.
        err: Box<TreeError>,
    },
    /// A hardlink to the root.
    #[error("hardlink to the root directory")]
    LinkToRoot,
    /// A hardlink to an entry that does not exist.
    #[error("hardlink to a missing entry {}", shown(.0))]
    LinkMissing(Vec<u8>),
    /// A hardlink to a directory.
    #[error("hardlink to a directory {}", shown(.0))]
    LinkToDirectory(Vec<u8>),
    /// A name of a hardlinked inode whose first name is too long for a
    /// manifest's hardlink entry.
    #[error(
        "{} is a hardlink to {}, a path longer than {MAX_TARGET} bytes, which a manifest cannot record",
        shown(.path),
        shown(.first)
    )]
    LinkTooLong {
        /// The later name.
        path: Vec<u8>,
        /// The first name, the hardlink's target.
        first: Vec<u8>,
    },
    /// More than a manifest held in memory can number (4 billion entries,
    /// xattr sets, owner names or hardlinked nodes).
    #[error("the tree is too large to record: {0}")]
    TooLarge(String),
}

/// Most symlinks followed while resolving one name (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// A node's [`Meta`] in 32 bytes: xattrs and owner names by their number
/// in the tree's [`Tables`] (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NodeMeta {
    sec: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    nsec: u32,
    xattrs: u32,
    owner: u32,
}

/// One xattr set, names in raw byte order.
type XattrSet = Arc<[(Box<[u8]>, Box<[u8]>)]>;
/// One pair of owner names.
type Owners = (Option<Box<str>>, Option<Box<str>>);

/// A regular file's content in the tree's table of files: its names share
/// its number (the inode's identity) and carry equal metadata.
#[derive(Clone, Copy, Debug)]
struct FileRec {
    size: u64,
    digest: Digest,
    /// Its zero runs: their place in [`Tables::zeros`] is
    /// [`Tables::runs`] at this number, from 1 (0: none, as for most files).
    runs: u32,
    has_digest: bool,
    /// A hardlink was ever made to it: it may have more than one name.
    linked: bool,
}

/// The xattr sets, owner names and regular files of the tree, each kept
/// once.
#[derive(Clone)]
struct Tables {
    xattrs: Vec<XattrSet>,
    xattr_index: HashMap<XattrSet, u32>,
    owners: Vec<Owners>,
    owner_index: HashMap<Owners, u32>,
    /// Regular files with content (or hardlinked), by number; a file
    /// replaced or removed keeps its place.
    files: Vec<FileRec>,
    /// The zero runs of files that have some, each file's as a range of
    /// [`Tables::zeros`] (offset, length); at 0 an empty range.
    runs: Vec<(u32, u32)>,
    zeros: Vec<(u64, u64)>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            xattrs: vec![Arc::from(Vec::new())],
            xattr_index: HashMap::new(),
            owners: vec![(None, None)],
            owner_index: HashMap::new(),
            files: mapped(),
            runs: vec![(0, 0)],
            zeros: Vec::new(),
        }
    }
}

fn number(n: usize, what: &str) -> Result<u32, TreeError> {
    u32::try_from(n).map_err(|_| TreeError::TooLarge(format!("more than 4 billion {what}")))
}

impl Tables {
    /// Adds a regular file; returns its number.
    fn file(&mut self, f: &File, linked: bool) -> Result<u32, TreeError> {
        let i = number(self.files.len(), "files")?;
        let runs = if f.zeros.is_empty() {
            0
        } else {
            let off = number(self.zeros.len(), "zero runs")?;
            let len = number(f.zeros.len(), "zero runs")?;
            number(self.zeros.len() + f.zeros.len(), "zero runs")?;
            let r = number(self.runs.len(), "files with zero runs")?;
            self.zeros.extend_from_slice(&f.zeros);
            self.runs.push((off, len));
            r
        };
        self.files.push(FileRec {
            size: f.size,
            digest: f.digest.unwrap_or(Digest([0; 32])),
            runs,
            has_digest: f.digest.is_some(),
            linked,
        });
        Ok(i)
    }

    /// The compact metadata of `m`, its xattr set and owner names interned.
    fn meta(&mut self, m: Meta) -> Result<NodeMeta, TreeError> {
        let xattrs = if m.xattrs.is_empty() {
            0
        } else {
            let set: XattrSet = m.xattrs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
            match self.xattr_index.get(&set) {
                Some(&i) => i,
                None => {
                    let i = number(self.xattrs.len(), "xattr sets")?;
                    self.xattrs.push(set.clone());
                    self.xattr_index.insert(set, i);
                    i
                }
            }
        };
        let owner = if m.uname.is_none() && m.gname.is_none() {
            0
        } else {
            let key: Owners = (m.uname.map(Box::from), m.gname.map(Box::from));
            match self.owner_index.get(&key) {
                Some(&i) => i,
                None => {
                    let i = number(self.owners.len(), "owner names")?;
                    self.owners.push(key.clone());
                    self.owner_index.insert(key, i);
                    i
                }
            }
        };
        Ok(NodeMeta { sec: m.mtime.sec, mode: m.mode, uid: m.uid, gid: m.gid, nsec: m.mtime.nsec, xattrs, owner })
    }
}

/// Bytes each large array of the tree reserves from the start: more than
/// the size below which glibc's allocator may serve a request from its
/// heap (its mapping threshold rises as mapped blocks are freed, up to 32
/// MiB on 64-bit), so the array is a mapping of its own, grown in place
/// and truly given back when freed or cut. The reservation costs no memory
/// until it is used.
const MAPPED: usize = 33 << 20;

/// An empty vector with room for [`MAPPED`] bytes.
fn mapped<T>() -> Vec<T> {
    Vec::with_capacity(MAPPED / std::mem::size_of::<T>().max(1))
}

/// No node (an empty list, the root's parent).
const NONE: u32 = u32::MAX;
/// The root's number in [`Tree::nodes`].
const ROOT: u32 = 0;

/// What a node is ([`Node::kind`]).
const DIR: u8 = 0;
/// A regular file with a record in [`Tables::files`].
const FILE: u8 = 1;
/// A regular file of no bytes with one name (the commonest content, kept
/// without a record); a hardlink to it makes it a [`FILE`].
const EMPTY: u8 = 2;
const SYMLINK: u8 = 3;
const CHAR: u8 = 4;
const BLOCK: u8 = 5;
const FIFO: u8 = 6;

/// [`Node::flags`]: the node was removed or replaced; it stays in its
/// parent's list of children, skipped.
const REMOVED: u8 = 1;
/// [`Node::flags`]: a hardlink was made to this symlink, device or fifo;
/// its names are copies sharing one [`Node::data`] (their inode). While
/// the manifest is built, also set on regular files that may have more
/// than one name.
const LINKED: u8 = 2;

/// One node of the tree, in [`Tree::nodes`] by number (56 bytes; links,
/// names and targets by number, so the tree is a few large arrays).
#[derive(Clone, Copy, Debug)]
struct Node {
    meta: NodeMeta,
    /// The parent directory (while the manifest is built: the offset of a
    /// symlink's target in [`Tree::names`]).
    parent: u32,
    /// The next child of the parent, in no order ([`NONE`]: the last).
    next: u32,
    /// A directory: its first child ([`NONE`]: none); a regular file: its
    /// number in [`Tables::files`]; a symlink, device or fifo: its number
    /// in [`Tree::others`], which hardlinked copies share (their inode).
    data: u32,
    /// Offset of the name in [`Tree::names`].
    name_off: u32,
    /// The last layer that created or modified this path or something
    /// below it (whiteouts of that layer leave it alone). While the
    /// manifest is built: the depth.
    touched: u32,
    name_len: u8,
    kind: u8,
    flags: u8,
}

/// The index of children by (parent, name): an open-addressing table of
/// node numbers, at most 7/8 full, probed linearly. Each slot (8 bytes)
/// holds the node number and 32 bits of its key's hash, so a probe passes
/// over another key without reading that node: a new name in a directory
/// of 200,000 (the usual case, a name not there yet) costs a scan along
/// the slots, not a node read and a name compare at each. Keyed with a
/// random hasher, so names chosen to collide cannot make lookups slow.
#[derive(Clone, Default)]
struct Index {
    slots: Vec<u64>,
    /// Slots holding a node or a tombstone.
    used: usize,
    /// Slots holding a node.
    live: usize,
    hasher: std::hash::RandomState,
}

/// [`Index::slots`]: a slot never used (its low half).
const FREE: u32 = u32::MAX;
/// [`Index::slots`]: a slot whose node was removed (its low half).
const TOMB: u32 = u32::MAX - 1;
const FREE_SLOT: u64 = FREE as u64;
const TOMB_SLOT: u64 = TOMB as u64;

fn name_of<'a>(nodes: &[Node], names: &'a [u8], id: u32) -> &'a [u8] {
    let n = &nodes[id as usize];
    &names[n.name_off as usize..n.name_off as usize + n.name_len as usize]
}

/// A slot's node number (or [`FREE`], [`TOMB`]).
fn slot_id(s: u64) -> u32 {
    s as u32
}

/// A key's tag, kept in a slot: the high half of its hash. The table
/// position comes from the tag too, so a table grows without reading a
/// node or hashing a name again (the tag's bits above the position still
/// tell most keys apart).
fn tag_of(h: u64) -> u64 {
    h & !0xffff_ffff
}

fn pos_of(h: u64) -> usize {
    (h >> 32) as usize
}

impl Index {
    fn hash(&self, parent: u32, name: &[u8]) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        h.write_u32(parent);
        h.write(name);
        h.finish()
    }

    fn get(&self, nodes: &[Node], names: &[u8], parent: u32, name: &[u8]) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let h = self.hash(parent, name);
        let tag = tag_of(h);
        let mut i = pos_of(h) & mask;
        loop {
            let s = self.slots[i];
            match slot_id(s) {
                FREE => return None,
                TOMB => {}
                id => {
                    if tag_of(s) == tag && nodes[id as usize].parent == parent && name_of(nodes, names, id) == name {
                        return Some(id);
                    }
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds node `id` (whose key is not in the index).
    fn insert(&mut self, nodes: &[Node], names: &[u8], id: u32) {
        if (self.used + 1) * 8 > self.slots.len() * 7 {
            self.rebuild();
        }
        let h = self.hash(nodes[id as usize].parent, name_of(nodes, names, id));
        self.put(h, id);
    }

    /// Puts node `id`, whose key hashes to `h` (or whose slot was `h`), in
    /// the first free slot.
    fn put(&mut self, h: u64, id: u32) {
        let mask = self.slots.len() - 1;
        let mut i = pos_of(h) & mask;
        while slot_id(self.slots[i]) < TOMB {
            i = (i + 1) & mask;
        }
        if self.slots[i] == FREE_SLOT {
            self.used += 1;
        }
        self.slots[i] = tag_of(h) | u64::from(id);
        self.live += 1;
    }

    /// Removes node `id` (which is in the index).
    fn remove(&mut self, nodes: &[Node], names: &[u8], id: u32) {
        let mask = self.slots.len() - 1;
        let mut i = pos_of(self.hash(nodes[id as usize].parent, name_of(nodes, names, id))) & mask;
        while slot_id(self.slots[i]) != id {
            if self.slots[i] == FREE_SLOT {
                return;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = TOMB_SLOT;
        self.live -= 1;
    }

    /// Moves the nodes into a table twice the size of the live nodes
    /// (tombstones dropped), each placed by the tag in its slot.
    fn rebuild(&mut self) {
        let size = ((self.live + 1) * 2).next_power_of_two().max(16);
        let mut slots = mapped();
        slots.resize(size, FREE_SLOT);
        let old = std::mem::replace(&mut self.slots, slots);
        self.used = 0;
        self.live = 0;
        for s in old {
            let id = slot_id(s);
            if id < TOMB {
                self.put(s, id);
            }
        }
    }
}

/// What a layer entry becomes.
#[derive(Clone, Debug)]
pub enum NewKind {
    /// A directory.
    Dir,
    /// A regular file with its content already stored.
    File(File),
    /// A symlink.
    Symlink(Vec<u8>),
    /// A hard link to the given (raw, uncleaned) path.
    Link(Vec<u8>),
    /// A character device.
    Char(Dev),
    /// A block device.
    Block(Dev),
    /// A fifo.
    Fifo,
}

/// The tree being built.
#[derive(Clone)]
pub struct Tree {
    /// Every node ever made, by number; the root first. Removed and
    /// replaced nodes stay (flagged [`REMOVED`]) until the manifest is built.
    nodes: Vec<Node>,
    /// Names and symlink targets, back to back.
    names: Vec<u8>,
    /// Symlinks: (offset of the target in `names`, its length); devices:
    /// (major, minor); fifos: nothing. Hardlinked copies share one.
    others: Vec<(u32, u32)>,
    /// Children by (parent, name).
    index: Index,
    /// xattr sets, owner names and regular files, by number.
    tables: Tables,
    /// The current layer's number (from 1).
    layer: u32,
    /// A directory entry over a symlink to a directory keeps the symlink.
    keep_dirlinks: bool,
    /// The parent directory the last entry added resolved to without a
    /// symlink on the way, and its node: a layer lists a directory's
    /// entries together, so most entries skip resolving their parent one
    /// component at a time. Forgotten whenever a node is removed (the only
    /// way a path comes to name another node).
    last_dir: Option<(Vec<Name>, u32)>,
}

impl Default for Tree {
    fn default() -> Self {
        let root = Node {
            meta: NodeMeta { mode: 0o755, ..NodeMeta::default() },
            parent: NONE,
            next: NONE,
            data: NONE,
            name_off: 0,
            touched: 0,
            name_len: 0,
            kind: DIR,
            flags: 0,
        };
        let mut nodes = mapped();
        nodes.push(root);
        Tree {
            nodes,
            names: mapped(),
            others: Vec::new(),
            index: Index::default(),
            tables: Tables::default(),
            layer: 0,
            last_dir: None,
            keep_dirlinks: false,
        }
    }
}

/// Splits and cleans an entry name (see the module doc).
pub fn clean(name: &[u8]) -> Result<Vec<Name>, TreeError> {
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        if c == b".." {
            return Err(TreeError::DotDot);
        }
        check_name(c).map_err(TreeError::Name)?;
        out.push(c.to_vec());
    }
    // the kind is not known yet: the bound for any entry
    check_depth(out.len(), false)?;
    Ok(out)
}

fn join(p: &[Name]) -> Vec<u8> {
    p.join(&b'/')
}

/// Where a name's parent resolved to.
enum Parent {
    /// An existing directory at the path as given (no symlink on the way),
    /// and its node.
    Same(u32),
    /// An existing directory at this resolved path, and its node.
    Dir(Vec<Name>, u32),
    /// The resolved path exists up to some components, the rest is missing
    /// (to be created for entries; nothing to do for whiteouts).
    Missing(Vec<Name>),
}

impl Tree {
    /// Whether a directory entry over a symlink that leads to a directory
    /// keeps the symlink (see the module doc); off by default.
    pub fn keep_dirlinks(&mut self, keep: bool) {
        self.keep_dirlinks = keep;
    }

    /// Starts a new layer: forgets which paths the previous one touched.
    pub fn begin_layer(&mut self) {
        self.layer += 1;
    }

    fn n(&self, id: u32) -> &Node {
        &self.nodes[id as usize]
    }

    fn is_dir(&self, id: u32) -> bool {
        self.n(id).kind == DIR
    }

    /// The child `name` of directory `dir`.
    fn child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        self.index.get(&self.nodes, &self.names, dir, name)
    }

    /// The live children of directory `dir`, in no order.
    fn children(&self, dir: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = if self.is_dir(dir) { self.n(dir).data } else { NONE };
        while c != NONE {
            if self.n(c).flags & REMOVED == 0 {
                out.push(c);
            }
            c = self.n(c).next;
        }
        out
    }

    /// The node at `path` (not following symlinks).
    fn node(&self, path: &[Name]) -> Option<u32> {
        let mut cur = ROOT;
        for c in path {
            if !self.is_dir(cur) {
                return None;
            }
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }

    /// Whether `path` (resolved up to its last component) is a symlink
    /// that, followed inside the root, leads to an existing directory.
    fn is_dirlink(&self, path: &[Name]) -> bool {
        self.node(path).is_some_and(|n| self.n(n).kind == SYMLINK)
            && matches!(self.resolve_dir(path), Ok(Parent::Dir(..) | Parent::Same(_)))
    }

    /// Resolves directory components through symlinks, inside the root.
    /// Errors when a component is a non-directory (other than a symlink) or
    /// symlinks loop.
    fn resolve_dir(&self, comps: &[Name]) -> Result<Parent, TreeError> {
        // The usual case first: every component an existing directory.
        if comps.len() <= MAX_DEPTH {
            let mut cur = ROOT;
            let mut all_dirs = true;
            for c in comps {
                match self.child(cur, c) {
                    Some(n) if self.is_dir(n) => cur = n,
                    _ => {
                        all_dirs = false;
                        break;
                    }
                }
            }
            if all_dirs {
                return Ok(Parent::Same(cur));
            }
        }
        let mut resolved: Vec<Name> = Vec::new();
        // the directories of `resolved`, one for one
        let mut ids: Vec<u32> = Vec::new();
        let mut todo: VecDeque<Name> = comps.iter().cloned().collect();
        let mut cur = ROOT;
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                // Only from a symlink target; stops at the root.
                resolved.pop();
                ids.pop();
                cur = ids.last().copied().unwrap_or(ROOT);
                continue;
            }
            match self.child(cur, &c) {
                None => {
                    // The rest is missing: taken as it is.
                    resolved.push(c);
                    for r in todo {
                        if r.is_empty() || r == b"." {
                            continue;
                        }
                        if r == b".." {
                            return Err(TreeError::MissingThenDotDot);
                        }
                        resolved.push(r);
                    }
                    return Ok(Parent::Missing(resolved));
                }
                Some(n) if self.is_dir(n) => {
                    resolved.push(c);
                    ids.push(n);
                    cur = n;
                }
                Some(n) if self.n(n).kind == SYMLINK => {
                    let (off, len) = self.others[self.n(n).data as usize];
                    let t = &self.names[off as usize..(off + len) as usize];
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(TreeError::SymlinkLoop(join(comps)));
                    }
                    if t.starts_with(b"/") {
                        resolved.clear();
                        ids.clear();
                        cur = ROOT;
                    }
                    for part in t.split(|&b| b == b'/').rev() {
                        todo.push_front(part.to_vec());
                    }
                }
                Some(_) => {
                    resolved.push(c);
                    return Err(TreeError::NotADirectory(join(&resolved)));
                }
            }
            check_depth(resolved.len(), true)?;
        }
        Ok(Parent::Dir(resolved, cur))
    }

    /// Marks `id` and its ancestors as touched by the current layer.
    fn touch_up(&mut self, mut id: u32) {
        let layer = self.layer;
        while id != NONE {
            let n = &mut self.nodes[id as usize];
            if n.touched == layer && id != ROOT {
                // its ancestors were marked with it
                return;
            }
            n.touched = layer;
            id = n.parent;
        }
    }

    /// Removes node `id` from its directory (it stays in the list of
    /// children, flagged).
    fn remove(&mut self, id: u32) {
        self.last_dir = None;
        self.index.remove(&self.nodes, &self.names, id);
        self.nodes[id as usize].flags |= REMOVED;
    }

    /// Adds a node named `name` to directory `dir`, touched by the current
    /// layer; returns its number. No child of that name may be there.
    fn new_node(
        &mut self,
        dir: u32,
        name: &[u8],
        meta: NodeMeta,
        kind: u8,
        data: u32,
        flags: u8,
    ) -> Result<u32, TreeError> {
        let id = number(self.nodes.len(), "nodes")?;
        if id == NONE || id == TOMB {
            return Err(TreeError::TooLarge("more than 4 billion nodes".into()));
        }
        let name_off = self.text(name)?;
        let next = self.n(dir).data;
        self.nodes.push(Node {
            meta,
            parent: dir,
            next,
            data,
            name_off,
            touched: self.layer,
            name_len: name.len() as u8,
            kind,
            flags,
        });
        self.nodes[dir as usize].data = id;
        self.index.insert(&self.nodes, &self.names, id);
        Ok(id)
    }

    /// Appends `b` to [`Tree::names`]; returns its offset.
    fn text(&mut self, b: &[u8]) -> Result<u32, TreeError> {
        let off = number(self.names.len(), "bytes of names")?;
        number(self.names.len() + b.len(), "bytes of names")?;
        self.names.extend_from_slice(b);
        Ok(off)
    }

    /// A new record in [`Tree::others`].
    fn other(&mut self, v: (u32, u32)) -> Result<u32, TreeError> {
        let i = number(self.others.len(), "symlinks, devices and fifos")?;
        if i == NONE {
            return Err(TreeError::TooLarge("more than 4 billion symlinks, devices and fifos".into()));
        }
        self.others.push(v);
        Ok(i)
    }

    /// Applies a whiteout: `name` is the whiteout entry's full name.
    pub fn whiteout(&mut self, comps: &[Name]) -> Result<(), TreeError> {
        let (last, dir) = comps.split_last().ok_or(TreeError::WhiteoutRoot)?;
        let opaque = last.as_slice() == b".wh..wh..opq";
        let target = &last[4..];
        if !opaque {
            if target.is_empty() {
                return Err(TreeError::WhiteoutEmpty);
            }
            if target == b"." || target == b".." {
                return Err(TreeError::WhiteoutDot);
            }
            check_name(target).map_err(TreeError::WhiteoutName)?;
        }
        let dir_id = match self.resolve_dir(dir) {
            Ok(Parent::Same(id) | Parent::Dir(_, id)) => id,
            // Nothing there to hide (umoci: ENOENT/ENOTDIR are no-ops).
            Ok(Parent::Missing(_)) => return Ok(()),
            Err(TreeError::NotADirectory(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if opaque {
            for c in self.children(dir_id) {
                self.remove_lower(c);
            }
            return Ok(());
        }
        if let Some(c) = self.child(dir_id, target) {
            self.remove_lower(c);
        }
        Ok(())
    }

    /// Removes node `id` unless this layer touched it; then what below it
    /// this layer did not touch.
    fn remove_lower(&mut self, id: u32) {
        let mut todo = vec![id];
        while let Some(id) = todo.pop() {
            if self.n(id).touched != self.layer {
                self.remove(id);
            } else if self.is_dir(id) {
                todo.extend(self.children(id));
            }
        }
    }

    /// Adds (or replaces) an entry. `comps` is the cleaned name.
    pub fn add(&mut self, comps: &[Name], meta: Meta, kind: NewKind) -> Result<(), TreeError> {
        let Some((last, dir)) = comps.split_last() else {
            return match kind {
                NewKind::Dir => {
                    self.nodes[ROOT as usize].meta = self.tables.meta(meta)?;
                    Ok(())
                }
                _ => Err(TreeError::RootType),
            };
        };
        let resolved;
        let parent = match &self.last_dir {
            Some((p, id)) if p.as_slice() == dir => Parent::Same(*id),
            _ => self.resolve_dir(dir)?,
        };
        let (dir_path, dir_id): (&[Name], u32) = match parent {
            Parent::Same(id) => {
                if self.last_dir.as_ref().is_none_or(|(_, last)| *last != id) {
                    self.last_dir = Some((dir.to_vec(), id));
                }
                (dir, id)
            }
            Parent::Dir(p, id) => {
                resolved = p;
                (&resolved, id)
            }
            Parent::Missing(p) => {
                check_depth(p.len(), true)?;
                let id = self.make_dirs(&p)?;
                resolved = p;
                (&resolved, id)
            }
        };
        check_depth(dir_path.len() + 1, matches!(kind, NewKind::Dir))?;
        if self.keep_dirlinks && matches!(kind, NewKind::Dir) {
            let mut path = dir_path.to_vec();
            path.push(last.clone());
            if self.is_dirlink(&path) {
                // the entry's metadata goes onto the symlink, and so onto every
                // name of it (lchown of a hardlinked symlink changes the inode)
                let meta = self.tables.meta(Meta { mode: 0o777, ..meta })?;
                let n = self.child(dir_id, last).expect("checked above");
                let (linked, data) = (self.n(n).flags & LINKED != 0, self.n(n).data);
                self.nodes[n as usize].meta = meta;
                if linked {
                    for m in &mut self.nodes {
                        if m.kind == SYMLINK && m.flags & LINKED != 0 && m.data == data {
                            m.meta = meta;
                        }
                    }
                }
                self.touch_up(n);
                return Ok(());
            }
        }
        // What was there is replaced, except a directory over a directory.
        // A hardlink's own header metadata is ignored.
        let meta = match kind {
            NewKind::Link(_) => NodeMeta::default(),
            NewKind::Symlink(_) => self.tables.meta(Meta { mode: 0o777, ..meta })?,
            _ => self.tables.meta(meta)?,
        };
        let (meta, kind, data, flags) = match kind {
            NewKind::Dir => {
                self.touch_up(dir_id);
                if let Some(n) = self.child(dir_id, last).filter(|&n| self.is_dir(n)) {
                    let layer = self.layer;
                    let n = &mut self.nodes[n as usize];
                    n.meta = meta;
                    n.touched = layer;
                    return Ok(());
                }
                (meta, DIR, NONE, 0)
            }
            NewKind::File(file) if file == File::default() => (meta, EMPTY, NONE, 0),
            NewKind::File(file) => (meta, FILE, self.tables.file(&file, false)?, 0),
            NewKind::Symlink(t) => {
                let off = self.text(&t)?;
                (meta, SYMLINK, self.other((off, t.len() as u32))?, 0)
            }
            NewKind::Char(d) => (meta, CHAR, self.other((d.major, d.minor))?, 0),
            NewKind::Block(d) => (meta, BLOCK, self.other((d.major, d.minor))?, 0),
            NewKind::Fifo => (meta, FIFO, self.other((0, 0))?, 0),
            NewKind::Link(target) => {
                // the old entry goes first: a link never finds the name it replaces
                if let Some(old) = self.child(dir_id, last) {
                    self.remove(old);
                }
                let t = self.link_target(&target)?;
                let t = *self.n(t);
                (t.meta, t.kind, t.data, t.flags & LINKED)
            }
        };
        self.touch_up(dir_id);
        if let Some(old) = self.child(dir_id, last) {
            self.remove(old);
        }
        self.new_node(dir_id, last, meta, kind, data, flags)?;
        Ok(())
    }

    /// The node a hardlink entry's target names, made ready to share its
    /// inode: a regular file marked as linked, another type numbered.
    fn link_target(&mut self, target: &[u8]) -> Result<u32, TreeError> {
        let bad = |e| TreeError::LinkTarget { target: target.to_vec(), err: Box::new(e) };
        let comps = clean(target).map_err(bad)?;
        let (last, dir) = comps.split_last().ok_or(TreeError::LinkToRoot)?;
        let missing = || TreeError::LinkMissing(target.to_vec());
        let p = match self.resolve_dir(dir) {
            Ok(Parent::Same(id) | Parent::Dir(_, id)) => id,
            Ok(Parent::Missing(_)) => return Err(missing()),
            Err(e) => return Err(bad(e)),
        };
        let n = self.child(p, last).ok_or_else(missing)?;
        match self.n(n).kind {
            DIR => return Err(TreeError::LinkToDirectory(target.to_vec())),
            EMPTY => {
                let f = self.tables.file(&File::default(), true)?;
                let node = &mut self.nodes[n as usize];
                node.kind = FILE;
                node.data = f;
            }
            FILE => {
                let i = self.n(n).data as usize;
                if let Some(f) = self.tables.files.get_mut(i) {
                    f.linked = true;
                }
            }
            // another name of this node: both carry one inode
            _ => self.nodes[n as usize].flags |= LINKED,
        }
        Ok(n)
    }

    /// Makes the missing directories of `path`; returns the last one.
    fn make_dirs(&mut self, path: &[Name]) -> Result<u32, TreeError> {
        let mut cur = ROOT;
        for c in path {
            if !self.is_dir(cur) {
                return Err(TreeError::NotADirectory(join(path)));
            }
            cur = match self.child(cur, c) {
                Some(n) => n,
                None => {
                    let n = self.new_node(cur, c, NodeMeta { mode: 0o755, ..NodeMeta::default() }, DIR, NONE, 0)?;
                    self.nodes[n as usize].touched = 0;
                    n
                }
            };
        }
        if self.is_dir(cur) { Ok(cur) } else { Err(TreeError::NotADirectory(join(path))) }
    }

    /// Builds the manifest: the first name of each inode in manifest order
    /// carries content and metadata, the others become hardlinks to it.
    /// Fails only when a hardlink's first name is a path too long for the
    /// format ([`MAX_TARGET`] bytes), or the tree is too large to record.
    pub fn to_manifest(&self) -> Result<Compact, TreeError> {
        self.clone().into_manifest()
    }

    /// [`to_manifest`](Self::to_manifest), consuming the tree, which gives
    /// its memory back as the manifest grows: the two are never both whole
    /// in memory. The tree's arrays are first put in the reverse of
    /// manifest order (live nodes only, names and file records likewise),
    /// then recorded from their ends, which are cut off as they go.
    pub fn into_manifest(self) -> Result<Compact, TreeError> {
        let Tree { mut nodes, names, others, index, mut tables, .. } = self;
        drop(index);
        tables.xattr_index = HashMap::new();
        tables.owner_index = HashMap::new();

        // Manifest order (depth first, children by name): `dest` is each
        // node's place, counted from the end; the depth goes into `touched`.
        let mut dest = mapped();
        dest.resize(nodes.len(), NONE);
        let mut live: u32 = 0;
        let mut stack: Vec<(u32, u32)> = vec![(ROOT, 0)];
        // children with the first 8 bytes of their name as a number (a
        // name has no NUL: a shorter name pads with zeros and sorts first),
        // so most comparisons need no name read
        let mut kids: Vec<(u64, u32)> = Vec::new();
        let key = |name: &[u8]| {
            let mut k = [0u8; 8];
            let n = name.len().min(8);
            k[..n].copy_from_slice(&name[..n]);
            u64::from_be_bytes(k)
        };
        while let Some((id, depth)) = stack.pop() {
            dest[id as usize] = live;
            live += 1;
            let n = &mut nodes[id as usize];
            n.touched = depth;
            if n.kind != DIR {
                continue;
            }
            kids.clear();
            let mut c = n.data;
            while c != NONE {
                let k = &nodes[c as usize];
                if k.flags & REMOVED == 0 {
                    kids.push((key(name_of(&nodes, &names, c)), c));
                }
                c = k.next;
            }
            kids.sort_unstable_by(|&(ka, a), &(kb, b)| {
                ka.cmp(&kb).then_with(|| name_of(&nodes, &names, a).cmp(name_of(&nodes, &names, b)))
            });
            stack.extend(kids.iter().rev().map(|&(_, k)| (k, depth + 1)));
        }
        drop(stack);
        drop(kids);
        let mut dead = live;
        for d in &mut dest {
            if *d == NONE {
                *d = dead;
                dead += 1;
            } else {
                *d = live - 1 - *d;
            }
        }
        permute(&mut nodes, &mut dest);
        drop(dest);
        nodes.truncate(live as usize);
        nodes.shrink_to_fit();

        // Names (and symlink targets, the offset in `parent`) in the same
        // order.
        let mut text = mapped();
        for n in &mut nodes {
            let off = text.len() as u32;
            text.extend_from_slice(&names[n.name_off as usize..n.name_off as usize + n.name_len as usize]);
            n.name_off = off;
            if n.kind == SYMLINK {
                let (o, l) = others[n.data as usize];
                n.parent = text.len() as u32;
                text.extend_from_slice(&names[o as usize..(o + l) as usize]);
            }
        }
        drop(names);

        // File records in the reverse order of their first name; files with
        // more than one name flagged on their nodes.
        let mut fdest = mapped();
        fdest.resize(tables.files.len(), NONE);
        let mut used: u32 = 0;
        for n in nodes.iter().rev() {
            if n.kind == FILE && fdest[n.data as usize] == NONE {
                fdest[n.data as usize] = used;
                used += 1;
            }
        }
        let mut unused = used;
        for d in &mut fdest {
            if *d == NONE {
                *d = unused;
                unused += 1;
            } else {
                *d = used - 1 - *d;
            }
        }
        for n in &mut nodes {
            if n.kind == FILE {
                if tables.files[n.data as usize].linked {
                    n.flags |= LINKED;
                }
                n.data = fdest[n.data as usize];
            }
        }
        permute(&mut tables.files, &mut fdest);
        drop(fdest);
        tables.files.truncate(used as usize);
        tables.files.shrink_to_fit();

        let files = std::mem::take(&mut tables.files);
        Convert::new(&tables).run(nodes, text, files, &others)
    }
}

/// Puts each element `i` of `v` at `dest[i]` (a permutation), in place;
/// `dest` is spent.
fn permute<T>(v: &mut [T], dest: &mut [u32]) {
    for i in 0..v.len() {
        loop {
            let j = dest[i] as usize;
            if j == i {
                break;
            }
            v.swap(i, j);
            dest.swap(i, j);
        }
    }
}

/// Nodes recorded between two cuts of the tree's arrays.
const CUT: usize = 1 << 16;

/// The conversion of a tree into a [`Compact`] manifest, in manifest order.
struct Convert<'t> {
    b: Builder,
    tables: &'t Tables,
    /// The tree's xattr set numbers, as numbered in the manifest.
    xattrs: Vec<Option<u32>>,
    /// The first name met of each hardlinked inode.
    first: HashMap<Ino, Vec<u8>>,
    /// The path of the node being recorded.
    path: Vec<u8>,
}

impl<'t> Convert<'t> {
    fn new(tables: &'t Tables) -> Self {
        Convert {
            b: Builder::new(),
            tables,
            xattrs: vec![None; tables.xattrs.len()],
            first: HashMap::new(),
            path: Vec::new(),
        }
    }

    /// Records `nodes` (live nodes in the reverse of manifest order, depth
    /// in `touched`), whose names are in `text` and file records in `files`
    /// (both in the same order), from the end, cutting the arrays as it
    /// goes.
    fn run(
        mut self,
        mut nodes: Vec<Node>,
        mut text: Vec<u8>,
        mut files: Vec<FileRec>,
        others: &[(u32, u32)],
    ) -> Result<Compact, TreeError> {
        // the path's length before each open directory's name
        let mut open: Vec<usize> = Vec::new();
        let mut i = nodes.len();
        let mut since = 0;
        // the least file record used so far: the ones above it are done
        let mut fmin = files.len() as u32;
        while i > 0 {
            i -= 1;
            let n = nodes[i];
            let depth = n.touched as usize;
            while open.len() > depth {
                self.b.close_dir();
                let len = open.pop().unwrap_or(0);
                self.path.truncate(len);
            }
            let base = self.path.len();
            let name = &text[n.name_off as usize..n.name_off as usize + n.name_len as usize];
            if depth > 1 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(name);
            if n.kind == DIR {
                let meta = self.meta(&n.meta)?;
                let r = self.b.open_dir(name, &meta);
                self.built(r)?;
                open.push(base);
            } else {
                if n.kind == FILE {
                    fmin = fmin.min(n.data);
                }
                self.leaf(&n, name, &text, &files, others)?;
                self.path.truncate(base);
            }
            since += 1;
            if since == CUT {
                since = 0;
                nodes.truncate(i);
                nodes.shrink_to_fit();
                text.truncate(n.name_off as usize);
                text.shrink_to_fit();
                // the records of files whose first name is recorded
                files.truncate(fmin as usize);
                files.shrink_to_fit();
            }
        }
        Ok(self.b.finish())
    }

    /// Records the non-directory `n` named `name` at `self.path`.
    fn leaf(
        &mut self,
        n: &Node,
        name: &[u8],
        text: &[u8],
        files: &[FileRec],
        others: &[(u32, u32)],
    ) -> Result<(), TreeError> {
        if n.flags & LINKED != 0 {
            let ino = if n.kind == FILE { Ino::File(n.data) } else { Ino::Linked(n.data) };
            if self.hardlink(name, ino)? {
                return Ok(());
            }
        }
        let meta = self.meta(&n.meta)?;
        let tables = self.tables;
        let dev = || {
            let (major, minor) = others.get(n.data as usize).copied().unwrap_or_default();
            Dev { major, minor }
        };
        let leaf = match n.kind {
            FILE => {
                let f = files.get(n.data as usize).copied().unwrap_or(FileRec {
                    size: 0,
                    digest: Digest([0; 32]),
                    runs: 0,
                    has_digest: false,
                    linked: false,
                });
                let (off, len) =
                    tables.runs.get(f.runs as usize).map(|&(o, l)| (o as usize, l as usize)).unwrap_or_default();
                let zeros = tables.zeros.get(off..off + len).unwrap_or_default();
                Leaf::File { size: f.size, digest: f.has_digest.then_some(f.digest), zeros }
            }
            SYMLINK => {
                let len = others.get(n.data as usize).map(|&(_, l)| l).unwrap_or(0) as usize;
                Leaf::Symlink(text.get(n.parent as usize..n.parent as usize + len).unwrap_or_default())
            }
            CHAR => Leaf::Char(dev()),
            BLOCK => Leaf::Block(dev()),
            FIFO => Leaf::Fifo,
            _ => Leaf::File { size: 0, digest: None, zeros: &[] },
        };
        let r = self.b.push(name, &meta, leaf);
        self.built(r).map(|_| ())
    }
    fn meta(&mut self, m: &NodeMeta) -> Result<MetaIn<'t>, TreeError> {
        let tables = self.tables;
        let x = m.xattrs as usize;
        let xattrs = match self.xattrs.get(x).copied().flatten() {
            Some(i) => i,
            None if x == 0 => 0,
            None => {
                let set = tables.xattrs.get(x).map(|s| &s[..]).unwrap_or_default();
                let i = self
                    .b
                    .intern_xattrs(set.iter().map(|(k, v)| (&k[..], &v[..])))
                    .map_err(|e| TreeError::TooLarge(e.to_string()))?;
                if let Some(slot) = self.xattrs.get_mut(x) {
                    *slot = Some(i);
                }
                i
            }
        };
        let (uname, gname) =
            tables.owners.get(m.owner as usize).map(|(u, g)| (u.as_deref(), g.as_deref())).unwrap_or_default();
        Ok(MetaIn {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: Time { sec: m.sec, nsec: m.nsec },
            xattrs,
            uname,
            gname,
        })
    }

    fn built<T>(&self, r: Result<T, BuildError>) -> Result<T, TreeError> {
        r.map_err(|e| {
            let what = match e {
                BuildError::NameTooLong => "a name longer than 255 bytes".to_string(),
                BuildError::Mode(m) => format!("mode {m:o} has bits outside 07777"),
                BuildError::Device(why) => why.to_string(),
                BuildError::TooLarge(t) => t.to_string(),
            };
            TreeError::TooLarge(format!("{}: {what}", shown(&self.path)))
        })
    }

    /// Records the hardlink at the current path if an earlier name of
    /// `ino` was met (true); otherwise notes the path as its first name.
    fn hardlink(&mut self, name: &[u8], ino: Ino) -> Result<bool, TreeError> {
        let Some(p) = self.first.get(&ino) else {
            self.first.insert(ino, self.path.clone());
            return Ok(false);
        };
        if p.len() > MAX_TARGET {
            return Err(TreeError::LinkTooLong { path: self.path.clone(), first: p.clone() });
        }
        let r = self.b.push(name, &MetaIn::default(), Leaf::Hardlink(p));
        self.built(r)?;
        Ok(true)
    }
}

/// An inode's identity while the manifest is built.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Ino {
    /// A regular file: its number in [`Tables::files`].
    File(u32),
    /// Any other hardlinked node: its number in [`Tree::others`].
    Linked(u32),
}

fn shown(p: &[u8]) -> String {
    crate::manifest::path_display(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, Kind, Manifest};
    use std::collections::BTreeMap;

    /// The tree form of the manifest the tree gives.
    fn tree_of(t: &Tree) -> Manifest {
        t.to_manifest().unwrap().to_tree()
    }

    fn c(s: &str) -> Vec<Name> {
        clean(s.as_bytes()).unwrap()
    }

    fn file(t: &mut Tree, p: &str) {
        t.add(&c(p), Meta { mode: 0o644, ..Meta::default() }, NewKind::File(File::default())).unwrap();
    }

    #[test]
    fn a_node_and_a_file_stay_small() {
        // the tree holds one node per entry and one record per regular file
        // with content: their sizes are the memory per entry
        assert_eq!(std::mem::size_of::<Node>(), 56);
        assert_eq!(std::mem::size_of::<FileRec>(), 48);
    }

    #[test]
    fn clean_names() {
        assert_eq!(c("/a//./b/"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(clean(b"a/../b").is_err());
        assert!(c("./").is_empty());
    }

    #[test]
    fn hardlink_primary_rederived_after_delete() {
        let mut t = Tree::default();
        file(&mut t, "z");
        t.add(&c("a"), Meta::default(), NewKind::Link(b"z".to_vec())).unwrap();
        let m = tree_of(&t);
        assert_eq!(m.get(b"z").unwrap().kind, Kind::Hardlink(b"a".to_vec()));
        t.begin_layer();
        t.whiteout(&c(".wh.a")).unwrap();
        let m = tree_of(&t);
        assert!(matches!(m.get(b"z").unwrap().kind, Kind::File(_)));
        assert!(m.get(b"a").is_none());
    }

    #[test]
    fn a_parent_replaced_or_removed_is_resolved_again() {
        // each entry below finds its parent as the entry before it left it,
        // unless that parent has gone since
        let mut t = Tree::default();
        for d in ["a", "a/b"] {
            t.add(&c(d), Meta { mode: 0o755, ..Meta::default() }, NewKind::Dir).unwrap();
        }
        file(&mut t, "a/b/x");
        file(&mut t, "a/b"); // the directory replaced by a file, in one layer
        let e = t.add(&c("a/b/y"), Meta { mode: 0o644, ..Meta::default() }, NewKind::File(File::default()));
        assert!(e.is_err(), "a/b is a file now: {e:?}");
        let m = tree_of(&t);
        assert!(m.get(b"a/b/x").is_none() && m.get(b"a/b/y").is_none());
        assert!(matches!(m.get(b"a/b").unwrap().kind, Kind::File(_)));

        let mut t = Tree::default();
        for d in ["d", "d/e"] {
            t.add(&c(d), Meta { mode: 0o755, ..Meta::default() }, NewKind::Dir).unwrap();
        }
        file(&mut t, "d/e/x");
        t.begin_layer();
        t.whiteout(&c("d/.wh.e")).unwrap();
        file(&mut t, "d/e/y"); // a new d/e, made again as a parent
        t.add(&c("l"), Meta::default(), NewKind::Symlink(b"d/e".to_vec())).unwrap();
        file(&mut t, "l/z"); // through the symlink: d/e/z
        let m = tree_of(&t);
        assert!(m.get(b"d/e/x").is_none(), "removed with its directory");
        assert!(m.get(b"d/e/y").is_some() && m.get(b"d/e/z").is_some());
    }

    #[test]
    fn opaque_keeps_this_layers_entries() {
        let mut t = Tree::default();
        file(&mut t, "d/old");
        t.begin_layer();
        file(&mut t, "d/new");
        t.whiteout(&c("d/.wh..wh..opq")).unwrap();
        let m = tree_of(&t);
        assert!(m.get(b"d/new").is_some());
        assert!(m.get(b"d/old").is_none());
    }

    #[test]
    fn parent_symlink_resolves_in_root() {
        let mut t = Tree::default();
        t.add(&c("usr/lib"), Meta::default(), NewKind::Dir).unwrap();
        t.add(&c("lib"), Meta::default(), NewKind::Symlink(b"/../../usr/lib".to_vec())).unwrap();
        file(&mut t, "lib/x");
        assert!(tree_of(&t).get(b"usr/lib/x").is_some());
    }

    /// The consuming conversion gives the manifest the borrowing one gives,
    /// hardlinks (of files and of other types) and large directories included.
    #[test]
    fn into_manifest_equals_to_manifest() {
        let mut t = Tree::default();
        let meta = |mode| Meta { mode, uid: 7, mtime: crate::manifest::Time { sec: 5, nsec: 0 }, ..Meta::default() };
        for i in 0..3000 {
            let f = File { size: i, digest: None, zeros: Vec::new() };
            t.add(&c(&format!("big/f{i:05}")), meta(0o644), NewKind::File(f)).unwrap();
        }
        t.add(&c("a/b"), meta(0o700), NewKind::Dir).unwrap();
        t.add(&c("a/b/s"), meta(0), NewKind::Symlink(b"../x".to_vec())).unwrap();
        t.add(&c("a/fifo"), meta(0o600), NewKind::Fifo).unwrap();
        for (name, target) in [("a/l1", "big/f00007"), ("a/b/l2", "big/f00007"), ("z", "big/f00007")] {
            t.add(&c(name), Meta::default(), NewKind::Link(target.as_bytes().to_vec())).unwrap();
        }
        t.add(&c("a/sl"), Meta::default(), NewKind::Link(b"a/b/s".to_vec())).unwrap();
        t.add(&c("a/fl"), Meta::default(), NewKind::Link(b"a/fifo".to_vec())).unwrap();
        t.begin_layer();
        t.whiteout(&c("big/.wh.f00007")).unwrap();
        t.add(&c("lib"), meta(0), NewKind::Symlink(b"a".to_vec())).unwrap();
        file(&mut t, "lib/b/new");
        t.add(&c("e1"), meta(0o640), NewKind::File(File::default())).unwrap();
        t.add(&c("e2"), meta(0o640), NewKind::File(File::default())).unwrap();
        t.add(&c("e3"), Meta::default(), NewKind::Link(b"e2".to_vec())).unwrap();
        let named = Meta { uname: Some("u".into()), gname: Some("g".into()), ..meta(0o755) };
        t.add(&c("a"), named.clone(), NewKind::Dir).unwrap();
        let m = tree_of(&t);
        assert_eq!(m.get(b"e1").unwrap(), &Entry { meta: meta(0o640), kind: Kind::File(File::default()) });
        assert_eq!(m.get(b"e2").unwrap(), &Entry { meta: meta(0o640), kind: Kind::File(File::default()) });
        assert_eq!(m.get(b"e3").unwrap().kind, Kind::Hardlink(b"e2".to_vec()));
        assert_eq!(m.get(b"a").unwrap().meta, named);
        assert_eq!(m.get(b"a/b/l2").unwrap().kind, Kind::File(File { size: 7, digest: None, zeros: Vec::new() }));
        assert_eq!(m.get(b"a/l1").unwrap().kind, Kind::Hardlink(b"a/b/l2".to_vec()));
        assert_eq!(m.get(b"z").unwrap().kind, Kind::Hardlink(b"a/b/l2".to_vec()));
        assert_eq!(m.get(b"a/sl").unwrap().kind, Kind::Hardlink(b"a/b/s".to_vec()));
        assert_eq!(m.get(b"a/fl").unwrap().kind, Kind::Hardlink(b"a/fifo".to_vec()));
        assert!(m.get(b"a/b/new").is_some());
        assert_eq!(t.into_manifest().unwrap().to_tree(), m);
    }

    /// Whiteouts and an opaque directory of a later layer, and a hardlink
    /// group that loses its first name, give byte for byte the manifest of
    /// the tree written by hand; xattr sets and owner names come through
    /// interned.
    #[test]
    fn whiteouts_and_opaque_dirs_into_a_compact() {
        let x = |mode, v: Option<&str>| {
            let mut m = Meta { mode, mtime: Time { sec: 9, nsec: 1 }, ..Meta::default() };
            if let Some(v) = v {
                m.xattrs.insert(b"user.k".to_vec(), v.as_bytes().to_vec());
            }
            m
        };
        let f = |b: u8| File { size: 1, digest: Some(crate::manifest::Digest([b; 32])), zeros: Vec::new() };
        let mut t = Tree::default();
        t.begin_layer();
        let owned = Meta { uname: Some("u".into()), gname: Some("g".into()), ..x(0o755, Some("1")) };
        t.add(&c("d"), owned.clone(), NewKind::Dir).unwrap();
        t.add(&c("d/a"), x(0o644, Some("1")), NewKind::File(f(1))).unwrap();
        t.add(&c("d/b"), x(0o644, Some("2")), NewKind::File(f(2))).unwrap();
        t.add(&c("d/sub/old"), x(0o600, None), NewKind::File(f(3))).unwrap();
        t.add(&c("l"), Meta::default(), NewKind::Link(b"d/a".to_vec())).unwrap();
        t.add(&c("m"), x(0o777, None), NewKind::Link(b"/d/a".to_vec())).unwrap();
        t.begin_layer();
        t.whiteout(&c("d/.wh.a")).unwrap();
        t.add(&c("d/sub/new"), x(0o644, Some("1")), NewKind::File(f(4))).unwrap();
        t.whiteout(&c("d/sub/.wh..wh..opq")).unwrap();
        t.whiteout(&c(".wh.nothing")).unwrap();
        let entry = |meta: Meta, kind| Entry { meta, kind };
        let sub = BTreeMap::from([(b"new".to_vec(), entry(x(0o644, Some("1")), Kind::File(f(4))))]);
        let d = BTreeMap::from([
            (b"b".to_vec(), entry(x(0o644, Some("2")), Kind::File(f(2)))),
            (b"sub".to_vec(), entry(Meta { mode: 0o755, ..Meta::default() }, Kind::Dir(sub))),
        ]);
        let root = BTreeMap::from([
            (b"d".to_vec(), entry(owned, Kind::Dir(d))),
            (b"l".to_vec(), entry(x(0o644, Some("1")), Kind::File(f(1)))),
            (b"m".to_vec(), Entry::new(Kind::Hardlink(b"l".to_vec()))),
        ]);
        let want = Manifest { root: entry(Meta { mode: 0o755, ..Meta::default() }, Kind::Dir(root)) };
        let borrowed = t.to_manifest().unwrap();
        let got = t.into_manifest().unwrap();
        assert_eq!(got.to_bytes().unwrap(), want.to_bytes().unwrap());
        assert_eq!(borrowed.to_bytes().unwrap(), want.to_bytes().unwrap());
        let d = got.get(b"d").unwrap();
        assert_eq!((d.uname(), d.gname(), d.xattrs().get(b"user.k")), (Some("u"), Some("g"), Some(&b"1"[..])));
        assert_eq!(got.get(b"d/sub/new").unwrap().xattrs().get(b"user.k"), Some(&b"1"[..]));
    }

    /// A directory's children come out in name order, found by name,
    /// replaced and removed, whatever the order they come in, few or many
    /// (past the index's first sizes).
    #[test]
    fn children_in_any_order_below_and_past_the_switch() {
        for n in [5, 255, 256, 257, 3000] {
            let mut t = Tree::default();
            // a scrambled order: i * 7919 mod n visits every i once (n is not a multiple of 7919)
            for k in 0..n {
                let i = k * 7919 % n;
                t.add(&c(&format!("d/f{i:05}")), Meta { mode: 0o600, ..Meta::default() }, NewKind::Fifo).unwrap();
            }
            // replaced (a directory now), removed by a whiteout in a later layer
            t.add(&c("d/f00003"), Meta { mode: 0o700, ..Meta::default() }, NewKind::Dir).unwrap();
            t.begin_layer();
            t.whiteout(&c("d/.wh.f00001")).unwrap();
            let m = tree_of(&t);
            let names: Vec<Vec<u8>> = m.get(b"d").unwrap().children().unwrap().keys().cloned().collect();
            let want: Vec<Vec<u8>> = (0..n).filter(|&i| i != 1).map(|i| format!("f{i:05}").into_bytes()).collect();
            assert_eq!(names, want, "{n} children");
            assert!(matches!(m.get(b"d/f00003").unwrap().kind, Kind::Dir(_)), "{n}");
            assert_eq!(m.get(b"d/f00002").unwrap().meta.mode, 0o600);
        }
    }

    /// A directory removed or replaced and then made again under the same
    /// name starts empty: the old one's children never come back, whether
    /// it went by a whiteout, an opaque parent or an entry of another type.
    #[test]
    fn a_directory_made_again_does_not_get_old_children_back() {
        let mut t = Tree::default();
        file(&mut t, "d/x");
        file(&mut t, "e/sub/y");
        file(&mut t, "o/p/z");
        t.begin_layer();
        t.whiteout(&c(".wh.d")).unwrap();
        t.add(&c("e"), Meta { mode: 0o600, ..Meta::default() }, NewKind::Fifo).unwrap();
        t.whiteout(&c("o/.wh..wh..opq")).unwrap();
        t.begin_layer();
        t.add(&c("d"), Meta { mode: 0o700, ..Meta::default() }, NewKind::Dir).unwrap();
        t.add(&c("e"), Meta { mode: 0o700, ..Meta::default() }, NewKind::Dir).unwrap();
        t.add(&c("e/sub"), Meta { mode: 0o700, ..Meta::default() }, NewKind::Dir).unwrap();
        t.add(&c("o/p"), Meta { mode: 0o700, ..Meta::default() }, NewKind::Dir).unwrap();
        file(&mut t, "d/new");
        let m = tree_of(&t);
        let names = |p: &[u8]| -> Vec<Vec<u8>> { m.get(p).unwrap().children().unwrap().keys().cloned().collect() };
        assert_eq!(names(b"d"), vec![b"new".to_vec()]);
        assert!(names(b"e/sub").is_empty() && names(b"o/p").is_empty());
        assert_eq!(names(b"e"), vec![b"sub".to_vec()]);
        assert_eq!(t.into_manifest().unwrap().to_tree(), m);
    }

    /// A whiteout below a non-directory hides nothing (umoci: ENOTDIR is a
    /// no-op); the same path for an entry is an error naming it.
    #[test]
    fn whiteout_under_a_file_is_a_no_op_but_an_entry_there_is_refused() {
        let mut t = Tree::default();
        file(&mut t, "f");
        t.whiteout(&c("f/.wh.x")).unwrap();
        t.whiteout(&c("f/.wh..wh..opq")).unwrap();
        assert!(matches!(tree_of(&t).get(b"f").unwrap().kind, Kind::File(_)));
        let e = t.add(&c("f/x"), Meta::default(), NewKind::Fifo).unwrap_err();
        assert_eq!(e, TreeError::NotADirectory(b"f".to_vec()));
        assert_eq!(e.to_string(), "/f is not a directory");
    }

    /// Errors are values a caller can match on, and a hardlink's keeps the
    /// reason its target failed.
    #[test]
    fn tree_errors_are_typed() {
        assert_eq!(clean(b"a/../b"), Err(TreeError::DotDot));
        let mut t = Tree::default();
        assert_eq!(t.whiteout(&c(".wh..")), Err(TreeError::WhiteoutDot));
        assert_eq!(t.add(&[], Meta::default(), NewKind::Fifo), Err(TreeError::RootType));
        let e = t.add(&c("l"), Meta::default(), NewKind::Link(b"a/../b".to_vec())).unwrap_err();
        assert_eq!(e, TreeError::LinkTarget { target: b"a/../b".to_vec(), err: Box::new(TreeError::DotDot) });
        assert_eq!(e.to_string(), "hardlink target /a/../b: name has a .. component");
        let deep = vec![b"d".to_vec(); MAX_DEPTH + 2];
        assert!(matches!(t.add(&deep, Meta::default(), NewKind::Fifo), Err(TreeError::Depth(_))));
    }
}
