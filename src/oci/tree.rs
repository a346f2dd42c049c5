//! The working tree layers are applied to during import, in memory only, and
//! its conversion to a [`Manifest`] at the end.
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

use crate::manifest::{
    Dev, Entry, File, Kind, LimitError, MAX_DEPTH, MAX_TARGET, Manifest, Meta, Name, Time, check_depth, check_name,
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
}

/// Most symlinks followed while resolving one name (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// A node's [`Meta`], smaller: the owner names, which layer entries never
/// carry, are kept apart (boxed) when given.
#[derive(Clone, Debug, Default)]
struct NodeMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Time,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    names: Option<Box<(Option<String>, Option<String>)>>,
}

impl From<Meta> for NodeMeta {
    fn from(m: Meta) -> NodeMeta {
        let names = (m.uname.is_some() || m.gname.is_some()).then(|| Box::new((m.uname, m.gname)));
        NodeMeta { mode: m.mode, uid: m.uid, gid: m.gid, mtime: m.mtime, xattrs: m.xattrs, names }
    }
}

impl From<NodeMeta> for Meta {
    fn from(m: NodeMeta) -> Meta {
        let (uname, gname) = m.names.map(|n| *n).unwrap_or_default();
        Meta { mode: m.mode, uid: m.uid, gid: m.gid, mtime: m.mtime, xattrs: m.xattrs, uname, gname }
    }
}

#[derive(Clone, Debug)]
enum NodeKind {
    Dir(BTreeMap<Name, Node>),
    /// A regular file: its names share the one [`Arc`] (its address is the
    /// inode's identity) and carry equal metadata, which never changes
    /// after the file is made.
    File(Arc<File>),
    /// A regular file of no bytes with one name (the commonest content,
    /// kept without an allocation); a hardlink to it makes it a `File`.
    EmptyFile,
    Symlink(Vec<u8>),
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
    /// its names share (regular files share one [`File`] instead).
    linked: Option<usize>,
}

impl Node {
    fn new(meta: Meta, kind: NodeKind) -> Node {
        Node { meta: meta.into(), kind, touched: 0, linked: None }
    }

    fn implicit_dir() -> Node {
        Node::new(default_dir_meta(), NodeKind::Dir(BTreeMap::new()))
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
    /// Inode numbers given to hardlinked nodes that are not regular files.
    linked: usize,
    /// The current layer's number (from 1).
    layer: u32,
    /// A directory entry over a symlink to a directory keeps the symlink.
    keep_dirlinks: bool,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { root: Node::implicit_dir(), linked: 0, layer: 0, keep_dirlinks: false }
    }
}

fn default_dir_meta() -> Meta {
    Meta { mode: 0o755, ..Meta::default() }
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
                NodeKind::Dir(ch) => cur = ch.get(c)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    fn dir_mut(&mut self, path: &[Name]) -> Option<&mut BTreeMap<Name, Node>> {
        let mut cur = &mut self.root;
        for c in path {
            match &mut cur.kind {
                NodeKind::Dir(ch) => cur = ch.get_mut(c)?,
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
                match children.get(c) {
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
            match children.get(&c) {
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
            let Some(n) = ch.get_mut(c) else { return };
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
                Some(Node { kind: NodeKind::Dir(ch), .. }) => ch.keys().cloned().collect(),
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
                ch.remove(last);
            }
            return;
        }
        let names: Vec<Name> = match self.node(path) {
            Some(Node { kind: NodeKind::Dir(ch), .. }) => ch.keys().cloned().collect(),
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
                    self.root.meta = meta.into();
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
                let meta = NodeMeta::from(Meta { mode: 0o777, ..meta });
                let ch = self.dir_mut(dir_path).expect("resolved above");
                let n = ch.get_mut(last).expect("checked above");
                n.meta = meta.clone();
                if let Some(l) = n.linked {
                    set_linked_meta(&mut self.root, l, &meta);
                }
                self.mark_upper(&path);
                return Ok(());
            }
        }
        // What was there is replaced, except a directory over a directory.
        let mut node = match kind {
            NewKind::Dir => {
                let layer = self.layer;
                let ch = self.dir_mut_touched(dir_path).expect("resolved above");
                if let Some(n @ Node { kind: NodeKind::Dir(_), .. }) = ch.get_mut(last) {
                    n.meta = meta.into();
                    n.touched = layer;
                    return Ok(());
                }
                Node::new(meta, NodeKind::Dir(BTreeMap::new()))
            }
            NewKind::File(file) if file == File::default() => Node::new(meta, NodeKind::EmptyFile),
            NewKind::File(file) => Node::new(meta, NodeKind::File(Arc::new(file))),
            NewKind::Symlink(t) => Node::new(Meta { mode: 0o777, ..meta }, NodeKind::Symlink(t)),
            NewKind::Char(d) => Node::new(meta, NodeKind::Char(d)),
            NewKind::Block(d) => Node::new(meta, NodeKind::Block(d)),
            NewKind::Fifo => Node::new(meta, NodeKind::Fifo),
            NewKind::Link(target) => {
                // the old entry goes first: a link never finds the name it replaces
                if let Some(ch) = self.dir_mut(dir_path) {
                    ch.remove(last);
                }
                self.link_target(&target)?
            }
        };
        node.touched = self.layer;
        self.dir_mut_touched(dir_path).expect("resolved above").insert(last.clone(), node);
        Ok(())
    }

    /// The directory at `path` (which exists), marking it and its ancestors
    /// as touched by the current layer on the way.
    fn dir_mut_touched(&mut self, path: &[Name]) -> Option<&mut BTreeMap<Name, Node>> {
        let layer = self.layer;
        let mut cur = &mut self.root;
        for c in path {
            match &mut cur.kind {
                NodeKind::Dir(ch) => cur = ch.get_mut(c)?,
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
        let fresh = self.linked;
        let n = self.dir_mut(&p).and_then(|ch| ch.get_mut(last)).ok_or_else(missing)?;
        match n.kind {
            NodeKind::Dir(_) => return Err(TreeError::LinkToDirectory(target.to_vec())),
            NodeKind::File(_) => return Ok(n.clone()),
            NodeKind::EmptyFile => {
                n.kind = NodeKind::File(Arc::new(File::default()));
                return Ok(n.clone());
            }
            _ => {}
        }
        // another name of this node: both carry one inode number
        let numbered = n.linked.is_none();
        let n = Node { linked: Some(*n.linked.get_or_insert(fresh)), ..n.clone() };
        if numbered {
            self.linked += 1;
        }
        Ok(n)
    }

    fn make_dirs(&mut self, path: &[Name]) -> Result<(), TreeError> {
        let mut cur = &mut self.root;
        for c in path {
            let NodeKind::Dir(ch) = &mut cur.kind else {
                return Err(TreeError::NotADirectory(join(path)));
            };
            cur = ch.entry(c.clone()).or_insert_with(Node::implicit_dir);
        }
        match cur.kind {
            NodeKind::Dir(_) => Ok(()),
            _ => Err(TreeError::NotADirectory(join(path))),
        }
    }

    /// Builds the manifest: the first name of each inode in manifest order
    /// carries content and metadata, the others become hardlinks to it.
    /// Fails only when a hardlink's first name is a path too long for the
    /// format ([`MAX_TARGET`] bytes).
    pub fn to_manifest(&self) -> Result<Manifest, TreeError> {
        let mut first: HashMap<Ino, Vec<u8>> = HashMap::new();
        let mut path = Vec::new();
        let root = self.convert(&self.root, &mut path, &mut first)?;
        Ok(Manifest { root })
    }

    fn convert(&self, n: &Node, path: &mut Vec<u8>, first: &mut HashMap<Ino, Vec<u8>>) -> Result<Entry, TreeError> {
        if let Some(l) = n.linked {
            if let Some(link) = hardlink(first, Ino::Linked(l), path)? {
                return Ok(link);
            }
        }
        let kind = match &n.kind {
            NodeKind::Dir(ch) => {
                let mut out = BTreeMap::new();
                for (name, c) in ch {
                    let len = path.len();
                    if len > 0 {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name);
                    out.insert(
                        name.clone(),
                        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.convert(c, path, first))?,
                    );
                    path.truncate(len);
                }
                Kind::Dir(out)
            }
            NodeKind::File(f) => {
                if let Some(link) = hardlink(first, Ino::File(Arc::as_ptr(f) as usize), path)? {
                    return Ok(link);
                }
                Kind::File(File::clone(f))
            }
            NodeKind::EmptyFile => Kind::File(File::default()),
            NodeKind::Symlink(t) => Kind::Symlink(t.clone()),
            NodeKind::Char(d) => Kind::Char(*d),
            NodeKind::Block(d) => Kind::Block(*d),
            NodeKind::Fifo => Kind::Fifo,
        };
        Ok(Entry { meta: n.meta.clone().into(), kind })
    }

    /// [`to_manifest`](Self::to_manifest), consuming the tree: names,
    /// metadata and contents move into the manifest, and each part of the
    /// tree is freed as soon as it is converted, so the two are never both
    /// whole in memory.
    pub fn into_manifest(self) -> Result<Manifest, TreeError> {
        let mut first: HashMap<Ino, Vec<u8>> = HashMap::new();
        let mut path = Vec::new();
        let root = into_entry(self.root, &mut path, &mut first)?;
        Ok(Manifest { root })
    }
}

/// Converts `n` (at `path`) as [`Tree::to_manifest`] does, moving its parts.
fn into_entry(n: Node, path: &mut Vec<u8>, first: &mut HashMap<Ino, Vec<u8>>) -> Result<Entry, TreeError> {
    if let Some(l) = n.linked {
        if let Some(link) = hardlink(first, Ino::Linked(l), path)? {
            return Ok(link);
        }
    }
    let kind = match n.kind {
        NodeKind::Dir(ch) => {
            let mut out = BTreeMap::new();
            for (name, c) in ch {
                let len = path.len();
                if len > 0 {
                    path.push(b'/');
                }
                path.extend_from_slice(&name);
                let e = stacker::maybe_grow(64 * 1024, 1024 * 1024, || into_entry(c, path, first))?;
                path.truncate(len);
                out.insert(name, e);
            }
            // Inserted in order, the map's nodes are left about half full;
            // appended to a map, its entries are moved into full nodes (and
            // each node freed is the size of the ones being filled).
            if let Some(head) = out.pop_first() {
                let mut full = BTreeMap::from([head]);
                full.append(&mut out);
                out = full;
            }
            Kind::Dir(out)
        }
        NodeKind::File(f) => {
            // a file with one name (nothing else holds it, and no earlier
            // name was met) needs no record of its first name
            let ino = Ino::File(Arc::as_ptr(&f) as usize);
            if Arc::strong_count(&f) > 1 || first.contains_key(&ino) {
                if let Some(link) = hardlink(first, ino, path)? {
                    return Ok(link);
                }
            }
            Kind::File(Arc::try_unwrap(f).unwrap_or_else(|f| File::clone(&f)))
        }
        NodeKind::EmptyFile => Kind::File(File::default()),
        NodeKind::Symlink(t) => Kind::Symlink(t),
        NodeKind::Char(d) => Kind::Char(d),
        NodeKind::Block(d) => Kind::Block(d),
        NodeKind::Fifo => Kind::Fifo,
    };
    Ok(Entry { meta: n.meta.into(), kind })
}

/// Gives every node of inode number `l` the metadata `meta`.
fn set_linked_meta(n: &mut Node, l: usize, meta: &NodeMeta) {
    if n.linked == Some(l) {
        n.meta = meta.clone();
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
    /// A regular file: the address of its shared [`File`].
    File(usize),
    /// Any other hardlinked node: its [`Node::linked`] number.
    Linked(usize),
}

/// The hardlink entry for `path` if an earlier name of `ino` was met;
/// otherwise records `path` as its first name. Fails when that first name is
/// longer than a manifest can record.
fn hardlink(first: &mut HashMap<Ino, Vec<u8>>, ino: Ino, path: &[u8]) -> Result<Option<Entry>, TreeError> {
    let Some(p) = first.get(&ino) else {
        first.insert(ino, path.to_vec());
        return Ok(None);
    };
    if p.len() > MAX_TARGET {
        return Err(TreeError::LinkTooLong { path: path.to_vec(), first: p.clone() });
    }
    Ok(Some(Entry { meta: Meta::default(), kind: Kind::Hardlink(p.clone()) }))
}

fn shown(p: &[u8]) -> String {
    crate::manifest::path_display(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Vec<Name> {
        clean(s.as_bytes()).unwrap()
    }

    fn file(t: &mut Tree, p: &str) {
        t.add(&c(p), Meta { mode: 0o644, ..Meta::default() }, NewKind::File(File::default())).unwrap();
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
        let m = t.to_manifest().unwrap();
        assert_eq!(m.get(b"z").unwrap().kind, Kind::Hardlink(b"a".to_vec()));
        t.begin_layer();
        t.whiteout(&c(".wh.a")).unwrap();
        let m = t.to_manifest().unwrap();
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
        let m = t.to_manifest().unwrap();
        assert!(m.get(b"d/new").is_some());
        assert!(m.get(b"d/old").is_none());
    }

    #[test]
    fn parent_symlink_resolves_in_root() {
        let mut t = Tree::default();
        t.add(&c("usr/lib"), Meta::default(), NewKind::Dir).unwrap();
        t.add(&c("lib"), Meta::default(), NewKind::Symlink(b"/../../usr/lib".to_vec())).unwrap();
        file(&mut t, "lib/x");
        assert!(t.to_manifest().unwrap().get(b"usr/lib/x").is_some());
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
        let m = t.to_manifest().unwrap();
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
        assert_eq!(t.into_manifest().unwrap(), m);
    }

    /// A whiteout below a non-directory hides nothing (umoci: ENOTDIR is a
    /// no-op); the same path for an entry is an error naming it.
    #[test]
    fn whiteout_under_a_file_is_a_no_op_but_an_entry_there_is_refused() {
        let mut t = Tree::default();
        file(&mut t, "f");
        t.whiteout(&c("f/.wh.x")).unwrap();
        t.whiteout(&c("f/.wh..wh..opq")).unwrap();
        assert!(matches!(t.to_manifest().unwrap().get(b"f").unwrap().kind, Kind::File(_)));
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
