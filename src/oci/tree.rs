//! The working tree layers are applied to during import, in memory only, and
//! its conversion to a manifest (in compact form, [`Compact`]) at the end.
//!
//! Memory: a node holds its metadata in 32 bytes (xattr sets and owner
//! names interned in tables of the tree, by number), its name boxed, a
//! symlink's target boxed; a directory's children sit in a boxed map.
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
use std::collections::{BTreeMap, HashMap, VecDeque};
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
            files: Vec::new(),
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

/// Bytes of a name kept in place in a [`Key`]; longer names are boxed.
const INLINE: usize = 22;

/// A child's name: most names fit in place (no allocation of their own),
/// longer ones are boxed. Ordered and compared as its bytes.
#[derive(Clone, Debug)]
enum Key {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl Key {
    fn new(b: &[u8]) -> Key {
        match u8::try_from(b.len()) {
            Ok(n) if b.len() <= INLINE => {
                let mut a = [0; INLINE];
                a[..b.len()].copy_from_slice(b);
                Key::Inline(n, a)
            }
            _ => Key::Heap(b.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline(n, a) => &a[..*n as usize],
            Key::Heap(b) => b,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Key) -> bool {
        self.bytes() == o.bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Key {
    fn cmp(&self, o: &Key) -> std::cmp::Ordering {
        self.bytes().cmp(o.bytes())
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

/// Children a directory keeps in a sorted vector; past this many, in a
/// B-tree.
const FEW: usize = 256;

/// A directory's children by name: a sorted vector while there are few (a
/// B-tree filled in name order leaves its nodes about half empty, and most
/// directories are small), a B-tree when there are many (inserts stay
/// cheap in any order).
#[derive(Clone, Debug)]
enum Children {
    Few(Vec<(Key, Node)>),
    Many(BTreeMap<Key, Node>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn find(v: &[(Key, Node)], name: &[u8]) -> Result<usize, usize> {
        v.binary_search_by(|(k, _)| k.bytes().cmp(name))
    }

    fn get(&self, name: &[u8]) -> Option<&Node> {
        match self {
            Children::Few(v) => Self::find(v, name).ok().map(|i| &v[i].1),
            Children::Many(m) => m.get(name),
        }
    }

    fn get_mut(&mut self, name: &[u8]) -> Option<&mut Node> {
        match self {
            Children::Few(v) => Self::find(v, name).ok().map(|i| &mut v[i].1),
            Children::Many(m) => m.get_mut(name),
        }
    }

    fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    fn remove(&mut self, name: &[u8]) -> Option<Node> {
        match self {
            Children::Few(v) => Self::find(v, name).ok().map(|i| v.remove(i).1),
            Children::Many(m) => m.remove(name),
        }
    }

    /// Adds `node` as `name`, replacing the node of that name if there is
    /// one.
    fn insert(&mut self, name: &[u8], node: Node) {
        match self {
            Children::Few(v) => match Self::find(v, name) {
                Ok(i) => v[i].1 = node,
                Err(_) if v.len() >= FEW => {
                    let m: BTreeMap<Key, Node> = std::mem::take(v).into_iter().collect();
                    *self = Children::Many(m);
                    self.insert(name, node);
                }
                Err(i) => {
                    // grown by a quarter: little room left unused
                    if v.len() == v.capacity() {
                        v.reserve_exact((v.len() / 4).max(4));
                    }
                    v.insert(i, (Key::new(name), node));
                }
            },
            Children::Many(m) => {
                if let Some(n) = m.get_mut(name) {
                    *n = node;
                } else {
                    m.insert(Key::new(name), node);
                }
            }
        }
    }

    /// Names and nodes in name order.
    fn iter(&self) -> impl Iterator<Item = (&[u8], &Node)> + '_ {
        let (few, many) = match self {
            Children::Few(v) => (Some(v.iter().map(|(k, n)| (k.bytes(), n))), None),
            Children::Many(m) => (None, Some(m.iter().map(|(k, n)| (k.bytes(), n)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().map(|(k, _)| k)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Node> + '_ {
        let (few, many) = match self {
            Children::Few(v) => (Some(v.iter_mut().map(|(_, n)| n)), None),
            Children::Many(m) => (None, Some(m.values_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Names and nodes in name order, moved out.
    fn into_pairs(self) -> impl Iterator<Item = (Key, Node)> {
        let (few, many) = match self {
            Children::Few(v) => (Some(v.into_iter()), None),
            Children::Many(m) => (None, Some(m.into_iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[derive(Clone, Debug)]
enum NodeKind {
    Dir(Box<Children>),
    /// A regular file, by its number in [`Tables::files`]: its names share
    /// the number (the inode's identity) and carry equal metadata, which
    /// never changes after the file is made.
    File(u32),
    /// A regular file of no bytes with one name (the commonest content,
    /// kept without a record); a hardlink to it makes it a `File`.
    EmptyFile,
    /// Its target (boxed: few nodes are symlinks).
    Symlink(Box<Key>),
    Char(Dev),
    Block(Dev),
    Fifo,
}

#[derive(Clone, Debug)]
struct Node {
    meta: NodeMeta,
    kind: NodeKind,
    /// The last layer that created or modified this path or something
    /// below it (whiteouts of that layer leave it alone).
    touched: u32,
    /// A symlink, device or fifo that a hardlink was made to: the number
    /// its names share, from 1 (regular files share one [`File`] instead);
    /// 0 for any other node.
    linked: u32,
}

impl Node {
    fn new(meta: NodeMeta, kind: NodeKind) -> Node {
        Node { meta, kind, touched: 0, linked: 0 }
    }

    fn implicit_dir() -> Node {
        Node::new(NodeMeta { mode: 0o755, ..NodeMeta::default() }, NodeKind::Dir(Box::default()))
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
pub struct Tree {
    root: Node,
    /// xattr sets and owner names, by number.
    tables: Tables,
    /// Inode numbers given to hardlinked nodes that are not regular files.
    linked: u32,
    /// The current layer's number (from 1).
    layer: u32,
    /// A directory entry over a symlink to a directory keeps the symlink.
    keep_dirlinks: bool,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { root: Node::implicit_dir(), tables: Tables::default(), linked: 0, layer: 0, keep_dirlinks: false }
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
    /// An existing directory at the path as given (no symlink on the way).
    Same,
    /// An existing directory at this resolved path.
    Dir(Vec<Name>),
    /// The resolved path exists up to `existing` components, the rest is
    /// missing (to be created for entries; nothing to do for whiteouts).
    Missing(Vec<Name>),
}

impl Tree {
    /// Whether a directory entry over a symlink that leads to a directory
    /// keeps the symlink (see the module doc); off by default.
    pub fn keep_dirlinks(&mut self, keep: bool) {
        self.keep_dirlinks = keep;
    }

    /// Whether `path` (resolved up to its last component) is a symlink
    /// that, followed inside the root, leads to an existing directory.
    fn is_dirlink(&self, path: &[Name]) -> bool {
        matches!(self.node(path), Some(Node { kind: NodeKind::Symlink(_), .. }))
            && matches!(self.resolve_dir(path), Ok(Parent::Dir(_) | Parent::Same))
    }

    /// Starts a new layer: forgets which paths the previous one touched.
    pub fn begin_layer(&mut self) {
        self.layer += 1;
    }

    fn node(&self, path: &[Name]) -> Option<&Node> {
        let mut cur = &self.root;
        for c in path {
            match &cur.kind {
                NodeKind::Dir(ch) => cur = ch.get(c.as_slice())?,
                _ => return None,
            }
        }
        Some(cur)
    }

    fn node_at(&self, dir: &[Name], last: &[u8]) -> Option<&Node> {
        match &self.node(dir)?.kind {
            NodeKind::Dir(ch) => ch.get(last),
            _ => None,
        }
    }

    fn dir_mut(&mut self, path: &[Name]) -> Option<&mut Children> {
        let mut cur = &mut self.root;
        for c in path {
            match &mut cur.kind {
                NodeKind::Dir(ch) => cur = ch.get_mut(c.as_slice())?,
                _ => return None,
            }
        }
        match &mut cur.kind {
            NodeKind::Dir(ch) => Some(ch),
            _ => None,
        }
    }

    /// Resolves directory components through symlinks, inside the root.
    /// Errors when a component is a non-directory (other than a symlink) or
    /// symlinks loop.
    fn resolve_dir(&self, comps: &[Name]) -> Result<Parent, TreeError> {
        // The usual case first: every component an existing directory.
        if comps.len() <= MAX_DEPTH {
            let mut cur = &self.root;
            let mut all_dirs = true;
            for c in comps {
                let NodeKind::Dir(children) = &cur.kind else { unreachable!("a directory") };
                match children.get(c.as_slice()) {
                    Some(n @ Node { kind: NodeKind::Dir(_), .. }) => cur = n,
                    _ => {
                        all_dirs = false;
                        break;
                    }
                }
            }
            if all_dirs {
                return Ok(Parent::Same);
            }
        }
        let mut resolved: Vec<Name> = Vec::new();
        let mut todo: VecDeque<Name> = comps.iter().cloned().collect();
        let mut cur = &self.root;
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                // Only from a symlink target; stops at the root.
                resolved.pop();
                cur = self.node(&resolved).expect("resolved path is a directory");
                continue;
            }
            let NodeKind::Dir(children) = &cur.kind else { unreachable!("resolved path is a directory") };
            match children.get(c.as_slice()) {
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
                Some(n @ Node { kind: NodeKind::Dir(_), .. }) => {
                    resolved.push(c);
                    cur = n;
                }
                Some(Node { kind: NodeKind::Symlink(t), .. }) => {
                    let t = t.bytes();
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(TreeError::SymlinkLoop(join(comps)));
                    }
                    if t.starts_with(b"/") {
                        resolved.clear();
                        cur = &self.root;
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
        Ok(Parent::Dir(resolved))
    }

    /// Marks a path and its ancestors as touched by the current layer.
    fn mark_upper(&mut self, path: &[Name]) {
        let layer = self.layer;
        let mut cur = &mut self.root;
        for c in path {
            let NodeKind::Dir(ch) = &mut cur.kind else { return };
            let Some(n) = ch.get_mut(c.as_slice()) else { return };
            n.touched = layer;
            cur = n;
        }
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
        let dir_path = match self.resolve_dir(dir) {
            Ok(Parent::Same) => dir.to_vec(),
            Ok(Parent::Dir(p)) => p,
            // Nothing there to hide (umoci: ENOENT/ENOTDIR are no-ops).
            Ok(Parent::Missing(_)) => return Ok(()),
            Err(TreeError::NotADirectory(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if opaque {
            let names: Vec<Name> = match self.node(&dir_path) {
                Some(Node { kind: NodeKind::Dir(ch), .. }) => ch.keys().map(|k| k.to_vec()).collect(),
                _ => return Ok(()),
            };
            for n in names {
                let mut p = dir_path.clone();
                p.push(n);
                self.remove_lower(&p);
            }
            return Ok(());
        }
        let mut p = dir_path;
        p.push(target.to_vec());
        if self.node(&p).is_some() {
            self.remove_lower(&p);
        }
        Ok(())
    }

    /// Removes `path` unless this layer touched it; then recurses into it.
    fn remove_lower(&mut self, path: &[Name]) {
        if self.node(path).is_some_and(|n| n.touched != self.layer) {
            let (last, dir) = path.split_last().expect("never the root");
            if let Some(ch) = self.dir_mut(dir) {
                ch.remove(last.as_slice());
            }
            return;
        }
        let names: Vec<Name> = match self.node(path) {
            Some(Node { kind: NodeKind::Dir(ch), .. }) => ch.keys().map(|k| k.to_vec()).collect(),
            _ => return,
        };
        for n in names {
            let mut p = path.to_vec();
            p.push(n);
            self.remove_lower(&p);
        }
    }

    /// Adds (or replaces) an entry. `comps` is the cleaned name.
    pub fn add(&mut self, comps: &[Name], meta: Meta, kind: NewKind) -> Result<(), TreeError> {
        let Some((last, dir)) = comps.split_last() else {
            return match kind {
                NewKind::Dir => {
                    self.root.meta = self.tables.meta(meta)?;
                    Ok(())
                }
                _ => Err(TreeError::RootType),
            };
        };
        let resolved;
        let dir_path: &[Name] = match self.resolve_dir(dir)? {
            Parent::Same => dir,
            Parent::Dir(p) => {
                resolved = p;
                &resolved
            }
            Parent::Missing(p) => {
                check_depth(p.len(), true)?;
                self.make_dirs(&p)?;
                resolved = p;
                &resolved
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
                let ch = self.dir_mut(dir_path).expect("resolved above");
                let n = ch.get_mut(last.as_slice()).expect("checked above");
                n.meta = meta;
                if n.linked != 0 {
                    let l = n.linked;
                    set_linked_meta(&mut self.root, l, &meta);
                }
                self.mark_upper(&path);
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
        let mut node = match kind {
            NewKind::Dir => {
                let layer = self.layer;
                let ch = self.dir_mut_touched(dir_path).expect("resolved above");
                if let Some(n @ Node { kind: NodeKind::Dir(_), .. }) = ch.get_mut(last.as_slice()) {
                    n.meta = meta;
                    n.touched = layer;
                    return Ok(());
                }
                Node::new(meta, NodeKind::Dir(Box::default()))
            }
            NewKind::File(file) if file == File::default() => Node::new(meta, NodeKind::EmptyFile),
            NewKind::File(file) => Node::new(meta, NodeKind::File(self.tables.file(&file, false)?)),
            NewKind::Symlink(t) => Node::new(meta, NodeKind::Symlink(Box::new(Key::new(&t)))),
            NewKind::Char(d) => Node::new(meta, NodeKind::Char(d)),
            NewKind::Block(d) => Node::new(meta, NodeKind::Block(d)),
            NewKind::Fifo => Node::new(meta, NodeKind::Fifo),
            NewKind::Link(target) => {
                // the old entry goes first: a link never finds the name it replaces
                if let Some(ch) = self.dir_mut(dir_path) {
                    ch.remove(last.as_slice());
                }
                self.link_target(&target)?
            }
        };
        node.touched = self.layer;
        self.dir_mut_touched(dir_path).expect("resolved above").insert(last, node);
        Ok(())
    }

    /// The directory at `path` (which exists), marking it and its ancestors
    /// as touched by the current layer on the way.
    fn dir_mut_touched(&mut self, path: &[Name]) -> Option<&mut Children> {
        let layer = self.layer;
        let mut cur = &mut self.root;
        for c in path {
            match &mut cur.kind {
                NodeKind::Dir(ch) => cur = ch.get_mut(c.as_slice())?,
                _ => return None,
            }
            cur.touched = layer;
        }
        match &mut cur.kind {
            NodeKind::Dir(ch) => Some(ch),
            _ => None,
        }
    }

    fn link_target(&mut self, target: &[u8]) -> Result<Node, TreeError> {
        let bad = |e| TreeError::LinkTarget { target: target.to_vec(), err: Box::new(e) };
        let comps = clean(target).map_err(bad)?;
        let (last, dir) = comps.split_last().ok_or(TreeError::LinkToRoot)?;
        let missing = || TreeError::LinkMissing(target.to_vec());
        let p = match self.resolve_dir(dir) {
            Ok(Parent::Same) => dir.to_vec(),
            Ok(Parent::Dir(p)) => p,
            Ok(Parent::Missing(_)) => return Err(missing()),
            Err(e) => return Err(bad(e)),
        };
        let fresh = self
            .linked
            .checked_add(1)
            .ok_or_else(|| TreeError::TooLarge("more than 4 billion hardlinked nodes".into()))?;
        let empty = match self.node_at(&p, last) {
            None => return Err(missing()),
            Some(Node { kind: NodeKind::Dir(_), .. }) => return Err(TreeError::LinkToDirectory(target.to_vec())),
            Some(Node { kind: NodeKind::EmptyFile, .. }) => Some(self.tables.file(&File::default(), true)?),
            Some(_) => None,
        };
        let n = self.dir_mut(&p).and_then(|ch| ch.get_mut(last.as_slice())).ok_or_else(missing)?;
        match n.kind {
            NodeKind::File(i) => {
                let n = n.clone();
                if let Some(f) = self.tables.files.get_mut(i as usize) {
                    f.linked = true;
                }
                return Ok(n);
            }
            NodeKind::EmptyFile => {
                n.kind = NodeKind::File(empty.unwrap_or_default());
                return Ok(n.clone());
            }
            _ => {}
        }
        // another name of this node: both carry one inode number
        let numbered = n.linked == 0;
        if numbered {
            n.linked = fresh;
        }
        let n = n.clone();
        if numbered {
            self.linked = fresh;
        }
        Ok(n)
    }

    fn make_dirs(&mut self, path: &[Name]) -> Result<(), TreeError> {
        let mut cur = &mut self.root;
        for c in path {
            let NodeKind::Dir(ch) = &mut cur.kind else {
                return Err(TreeError::NotADirectory(join(path)));
            };
            if !ch.contains_key(c.as_slice()) {
                ch.insert(c, Node::implicit_dir());
            }
            cur = ch.get_mut(c.as_slice()).expect("just made");
        }
        match cur.kind {
            NodeKind::Dir(_) => Ok(()),
            _ => Err(TreeError::NotADirectory(join(path))),
        }
    }

    /// Builds the manifest: the first name of each inode in manifest order
    /// carries content and metadata, the others become hardlinks to it.
    /// Fails only when a hardlink's first name is a path too long for the
    /// format ([`MAX_TARGET`] bytes), or the tree is too large to record.
    pub fn to_manifest(&self) -> Result<Compact, TreeError> {
        let mut cv = Convert::new(&self.tables);
        cv.node(b"", NodeRef::Borrowed(&self.root))?;
        Ok(cv.b.finish())
    }

    /// [`to_manifest`](Self::to_manifest), consuming the tree: each part
    /// of the tree is freed as soon as it is recorded, so the two are never
    /// both whole in memory.
    pub fn into_manifest(self) -> Result<Compact, TreeError> {
        let Tree { root, tables, .. } = self;
        let mut cv = Convert::new(&tables);
        cv.node(b"", NodeRef::Owned(root))?;
        Ok(cv.b.finish())
    }
}

/// A node to record, borrowed or moved out of the tree.
enum NodeRef<'t> {
    Borrowed(&'t Node),
    Owned(Node),
}

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

    /// Records `n`, named `name`, at `self.path`, and its subtree.
    fn node(&mut self, name: &[u8], n: NodeRef<'_>) -> Result<(), TreeError> {
        let node = match &n {
            NodeRef::Borrowed(n) => *n,
            NodeRef::Owned(n) => n,
        };
        if node.linked != 0 && self.hardlink(name, Ino::Linked(node.linked))? {
            return Ok(());
        }
        let tables = self.tables;
        let file = match node.kind {
            NodeKind::File(i) => tables.files.get(i as usize).map(|f| (i, f)),
            _ => None,
        };
        if let Some((i, f)) = file {
            // a file never hardlinked has one name: no record of its first
            if f.linked && self.hardlink(name, Ino::File(i))? {
                return Ok(());
            }
        }
        let meta = self.meta(&node.meta)?;
        let leaf = match &node.kind {
            NodeKind::Dir(_) => None,
            NodeKind::File(_) => file.map(|(_, f)| {
                let (off, len) =
                    tables.runs.get(f.runs as usize).map(|&(o, l)| (o as usize, l as usize)).unwrap_or_default();
                let zeros = tables.zeros.get(off..off + len).unwrap_or_default();
                Leaf::File { size: f.size, digest: f.has_digest.then_some(f.digest), zeros }
            }),
            NodeKind::EmptyFile => Some(Leaf::File { size: 0, digest: None, zeros: &[] }),
            NodeKind::Symlink(t) => Some(Leaf::Symlink(t.bytes())),
            NodeKind::Char(d) => Some(Leaf::Char(*d)),
            NodeKind::Block(d) => Some(Leaf::Block(*d)),
            NodeKind::Fifo => Some(Leaf::Fifo),
        };
        if let Some(leaf) = leaf {
            let r = self.b.push(name, &meta, leaf);
            return self.built(r).map(|_| ());
        }
        let r = self.b.open_dir(name, &meta);
        self.built(r)?;
        match n {
            NodeRef::Borrowed(Node { kind: NodeKind::Dir(ch), .. }) => {
                for (cname, c) in ch.iter() {
                    self.child(cname, NodeRef::Borrowed(c))?;
                }
            }
            NodeRef::Owned(Node { kind: NodeKind::Dir(ch), .. }) => {
                for (cname, c) in ch.into_pairs() {
                    self.child(cname.bytes(), NodeRef::Owned(c))?;
                }
            }
            _ => {}
        }
        self.b.close_dir();
        Ok(())
    }

    fn child(&mut self, name: &[u8], n: NodeRef<'_>) -> Result<(), TreeError> {
        let len = self.path.len();
        if len > 0 {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name);
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.node(name, n))?;
        self.path.truncate(len);
        Ok(())
    }
}

/// Gives every node of inode number `l` the metadata `meta`.
fn set_linked_meta(n: &mut Node, l: u32, meta: &NodeMeta) {
    if n.linked == l {
        n.meta = *meta;
    }
    if let NodeKind::Dir(ch) = &mut n.kind {
        for c in ch.values_mut() {
            set_linked_meta(c, l, meta);
        }
    }
}

/// An inode's identity while the manifest is built.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Ino {
    /// A regular file: its number in [`Tables::files`].
    File(u32),
    /// Any other hardlinked node: its [`Node::linked`] number.
    Linked(u32),
}

fn shown(p: &[u8]) -> String {
    crate::manifest::path_display(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, Kind, Manifest};

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
    fn a_node_and_a_child_stay_small() {
        // the tree holds one (Key, Node) per entry: its size is the memory per entry
        assert_eq!(std::mem::size_of::<Node>(), 56);
        assert_eq!(std::mem::size_of::<(Key, Node)>(), 80);
        assert_eq!(std::mem::size_of::<FileRec>(), 48);
        assert_eq!(Key::new(b"abc").bytes(), b"abc");
        let long = [b'x'; 200];
        assert_eq!(Key::new(&long).bytes(), &long[..]);
        assert!(matches!(Key::new(&[b'y'; INLINE]), Key::Inline(..)));
        assert!(matches!(Key::new(&[b'y'; INLINE + 1]), Key::Heap(_)));
        assert!(Key::new(b"a") < Key::new(b"ab") && Key::new(&long) > Key::new(b"x"));
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

    /// A directory keeps its children in name order, found by name, replaced
    /// and removed, whatever the order they come in, below and past the
    /// number where the vector becomes a B-tree.
    #[test]
    fn children_in_any_order_below_and_past_the_switch() {
        for n in [FEW - 1, FEW, FEW + 1, 3 * FEW] {
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
