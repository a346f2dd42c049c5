//! A manifest as an EROFS metadata image: every entry's type, mode, owner,
//! mtime (extended inodes, so nanoseconds survive), xattrs, hardlinks
//! (one inode, its nlink counted), devices, fifos, sockets, symlinks and
//! directories, but no file data. A regular file with content is an empty
//! chunk-based inode of the right size (it reads as zeros on its own)
//! carrying overlayfs's `metacopy` xattr and a `redirect` to
//! `/blobs/sha256/<hex>`: an overlay with the blob store as a data-only
//! layer serves the blob's bytes under the file's metadata.
//!
//! On-disk format (Linux `Documentation/filesystems/erofs.rst`,
//! `fs/erofs/erofs_fs.h`), as written here:
//! - block size 4096; block 0 holds the 128-byte superblock at offset 1024;
//! - xattrs used by two or more inodes (name and value equal) once in the
//!   shared xattr area, from block 1; the others inline after their inode;
//! - then the inodes, 64-byte extended headers at 32-byte aligned offsets
//!   (an inode's nid is its offset from the area's start / 32), the root
//!   first, the others in manifest order;
//! - directory blocks (dirents sorted by name bytes, `.` and `..` among
//!   them) and long symlink targets after the inodes; the last partial
//!   block of a directory or a symlink target stays inline after its inode
//!   where it fits in that block.
//!
//! The image depends on the manifest alone (no clock, no randomness), so
//! the same manifest always gives the same bytes.

use crate::manifest::{Entry, Kind, Manifest, Meta, Name, path_display, xattr_display};
use std::collections::{HashMap, HashSet, btree_map};
use std::io::Write;

const BLKBITS: u32 = 12;
const BLK: u64 = 1 << BLKBITS;
const SB_OFFSET: usize = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
const INODE_SIZE: u64 = 64;
const XATTR_HEADER: u64 = 12;
const DIRENT: usize = 12;
const NULL_ADDR: u32 = u32::MAX;
/// Largest xattr area of one inode (`i_xattr_icount` counts 4-byte slots
/// in 16 bits), less the metacopy and redirect xattrs a file may need.
const MAX_XATTR_IBODY: u64 = XATTR_HEADER + 4 * (u16::MAX as u64 - 1) - 128;
/// Largest xattr value an EROFS entry can hold (`e_value_size` is 16 bits).
pub const MAX_XATTR_VALUE: usize = u16::MAX as usize;

// i_format: bit 0 extended inode, bits 1-3 data layout
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
const CHUNK_BASED: u16 = 4;

// dirent file types
const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;
const FT_CHR: u8 = 3;
const FT_BLK: u8 = 4;
const FT_FIFO: u8 = 5;
const FT_SOCK: u8 = 6;
const FT_LNK: u8 = 7;

/// The xattr name prefixes EROFS encodes by index; any other namespace
/// cannot be stored.
const PREFIXES: &[(u8, &[u8], bool)] = &[
    (1, b"user.", false),
    (2, b"system.posix_acl_access", true),
    (3, b"system.posix_acl_default", true),
    (4, b"trusted.", false),
    (6, b"security.", false),
];

/// overlayfs's own namespace (the overlay is mounted without `userxattr`)
/// and the spelling an xattr of that name takes on a lower layer so that
/// the overlay shows it as an ordinary one (Linux 6.7 and later).
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OVERLAY_ESCAPED: &[u8] = b"trusted.overlay.overlay.";

/// A manifest the image cannot represent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An entry an overlay mount cannot show as it is.
    #[error("{path}: {what}; a mount cannot show it")]
    Unrepresentable {
        /// The entry's path.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// Writing the image failed.
    #[error("writing the EROFS image: {0}")]
    Io(#[from] std::io::Error),
}

fn unrepresentable(path: &[u8], what: String) -> ImageError {
    ImageError::Unrepresentable { path: path_display(path), what }
}

enum Body<'m> {
    File { size: u64, redirect: bool },
    Dir { parent: usize, children: Vec<(&'m [u8], usize)> },
    Symlink(&'m [u8]),
    Dev { chr: bool, rdev: u32 },
    Fifo,
    Socket,
}

#[derive(Clone, Copy, Default)]
enum Data {
    /// No data (files, devices), or a chunk map of this many null entries.
    #[default]
    None,
    Chunks {
        bits: u16,
        count: u64,
    },
    /// `blocks` whole blocks from `addr`, the last of them the tail.
    Plain {
        addr: u64,
        blocks: u64,
    },
    /// `blocks` whole blocks from `addr`, then `tail` bytes inline.
    Inline {
        addr: u64,
        blocks: u64,
        tail: u64,
    },
}

struct Node<'m> {
    meta: &'m Meta,
    body: Body<'m>,
    nlink: u32,
    /// Interned xattrs: shared ones first (at most 255), then inline ones.
    shared: Vec<u32>,
    inline: Vec<u32>,
    pos: u64,
    data: Data,
}

struct Xattr {
    index: u8,
    suffix: Vec<u8>,
    value: Vec<u8>,
}

impl Xattr {
    fn size(&self) -> u64 {
        (4 + self.suffix.len() as u64 + self.value.len() as u64).next_multiple_of(4)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.push(self.suffix.len() as u8);
        out.push(self.index);
        out.extend_from_slice(&(self.value.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.suffix);
        out.extend_from_slice(&self.value);
        let pad = (self.size() - 4 - self.suffix.len() as u64 - self.value.len() as u64) as usize;
        out.extend(std::iter::repeat_n(0, pad));
    }
}

/// Summary of a written image.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageStats {
    /// Inodes written.
    pub inodes: u64,
    /// Bytes of the image.
    pub bytes: u64,
}

/// The name an xattr of the manifest takes on a layer of the overlay:
/// one in overlayfs's namespace (`trusted.overlay.X`) escaped
/// (`trusted.overlay.overlay.X`), which the overlay shows unescaped and
/// never obeys; any other name as it is.
pub fn escaped_name(name: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match name.strip_prefix(OVERLAY_PREFIX) {
        Some(rest) => [OVERLAY_ESCAPED, rest].concat().into(),
        None => name.into(),
    }
}

/// The name and value an xattr of the manifest takes in the image: names
/// in overlayfs's namespace escaped, so the overlay shows them and never
/// obeys them. Errors name what cannot be stored.
fn stored_xattr(name: &[u8], value: &[u8]) -> Result<Xattr, String> {
    let name = &escaped_name(name)[..];
    if value.len() > MAX_XATTR_VALUE {
        return Err(format!(
            "xattr {} has a value of {} bytes; EROFS holds at most {MAX_XATTR_VALUE}",
            xattr_display(name),
            value.len()
        ));
    }
    for &(index, prefix, exact) in PREFIXES {
        let Some(suffix) = name.strip_prefix(prefix) else { continue };
        if exact && !suffix.is_empty() {
            continue;
        }
        if suffix.len() > 255 {
            return Err(format!("xattr {} has a name too long for EROFS", xattr_display(name)));
        }
        return Ok(Xattr { index, suffix: suffix.to_vec(), value: value.to_vec() });
    }
    Err(format!("xattr {} is in a namespace EROFS cannot store", xattr_display(name)))
}

fn redirect_xattrs(digest: &crate::manifest::Digest) -> [Xattr; 2] {
    [
        Xattr { index: 4, suffix: b"overlay.metacopy".to_vec(), value: Vec::new() },
        Xattr {
            index: 4,
            suffix: b"overlay.redirect".to_vec(),
            value: format!("/blobs/sha256/{}", digest.hex()).into_bytes(),
        },
    ]
}

/// Collects the manifest's inodes in manifest order (root first).
struct Builder<'m> {
    nodes: Vec<Node<'m>>,
    xattrs: Vec<Xattr>,
    counts: Vec<u32>,
    interned: HashMap<(u8, Vec<u8>, Vec<u8>), u32>,
}

impl<'m> Builder<'m> {
    fn intern(&mut self, x: Xattr) -> u32 {
        let key = (x.index, x.suffix, x.value);
        if let Some(&id) = self.interned.get(&key) {
            self.counts[id as usize] += 1;
            return id;
        }
        let id = self.xattrs.len() as u32;
        self.xattrs.push(Xattr { index: key.0, suffix: key.1.clone(), value: key.2.clone() });
        self.counts.push(1);
        self.interned.insert(key, id);
        id
    }

    fn add(&mut self, path: &[u8], entry: &'m Entry, parent: usize) -> Result<usize, ImageError> {
        let body = match &entry.kind {
            Kind::File(f) => Body::File { size: f.size, redirect: f.size > 0 },
            Kind::Dir(_) => Body::Dir { parent, children: Vec::new() },
            Kind::Symlink(t) => Body::Symlink(t),
            Kind::Char(d) | Kind::Block(d) => {
                let chr = matches!(entry.kind, Kind::Char(_));
                if chr && d.major == 0 && d.minor == 0 {
                    return Err(unrepresentable(
                        path,
                        "character device 0:0 is an overlay whiteout: a mount would hide it".into(),
                    ));
                }
                let rdev = (d.minor & 0xff) | (d.major << 8) | ((d.minor & !0xff) << 12);
                Body::Dev { chr, rdev }
            }
            Kind::Fifo => Body::Fifo,
            Kind::Socket => Body::Socket,
            Kind::Hardlink(_) => unreachable!("hardlinks are resolved by the caller"),
        };
        let mut ids = Vec::with_capacity(entry.meta.xattrs.len() + 2);
        if let Kind::File(f) = &entry.kind
            && let Some(d) = &f.digest
            && f.size > 0
        {
            for x in redirect_xattrs(d) {
                ids.push(self.intern(x));
            }
        }
        let mut ibody = XATTR_HEADER;
        for (name, value) in &entry.meta.xattrs {
            let x = stored_xattr(name, value).map_err(|what| unrepresentable(path, what))?;
            ibody += x.size();
            ids.push(self.intern(x));
        }
        if ibody > MAX_XATTR_IBODY {
            return Err(unrepresentable(
                path,
                format!("{ibody} bytes of xattrs; an EROFS inode holds at most {MAX_XATTR_IBODY}"),
            ));
        }
        let nlink = if matches!(body, Body::Dir { .. }) { 2 } else { 1 };
        self.nodes.push(Node {
            meta: &entry.meta,
            body,
            nlink,
            shared: ids,
            inline: Vec::new(),
            pos: 0,
            data: Data::None,
        });
        Ok(self.nodes.len() - 1)
    }
}

/// Paths (relative, `/`-joined) that some hardlink names.
fn hardlink_targets(m: &Manifest) -> HashSet<&[u8]> {
    m.walk()
        .filter_map(|(_, e)| match &e.kind {
            Kind::Hardlink(t) => Some(t.as_slice()),
            _ => None,
        })
        .collect()
}

fn collect(m: &Manifest) -> Result<Builder<'_>, ImageError> {
    let targets = hardlink_targets(m);
    let mut by_path: HashMap<&[u8], usize> = HashMap::new();
    let mut b = Builder { nodes: Vec::new(), xattrs: Vec::new(), counts: Vec::new(), interned: HashMap::new() };
    b.add(b"", &m.root, 0)?;
    let Kind::Dir(root_children) = &m.root.kind else {
        return Err(unrepresentable(b"", "the root is not a directory".into()));
    };
    // depth-first, pre-order: (directory node, its children, path length before)
    let mut stack: Vec<(usize, btree_map::Iter<'_, Name, Entry>, usize)> = vec![(0, root_children.iter(), 0)];
    let mut path: Vec<u8> = Vec::new();
    while let Some((dir, it, base)) = stack.last_mut() {
        let (dir, base) = (*dir, *base);
        let Some((name, entry)) = it.next() else {
            stack.pop();
            continue;
        };
        path.truncate(base);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let child = match &entry.kind {
            Kind::Hardlink(target) => {
                let Some(&n) = by_path.get(target.as_slice()) else {
                    return Err(unrepresentable(&path, "hardlink to an entry that is not earlier".into()));
                };
                b.nodes[n].nlink = b.nodes[n].nlink.saturating_add(1);
                n
            }
            _ => {
                let n = b.add(&path, entry, dir)?;
                if let Kind::Dir(c) = &entry.kind {
                    b.nodes[dir].nlink = b.nodes[dir].nlink.saturating_add(1);
                    stack.push((n, c.iter(), path.len()));
                } else if targets.contains(path.as_slice()) {
                    let key: &[u8] = targets.get(path.as_slice()).copied().unwrap_or_default();
                    by_path.insert(key, n);
                }
                n
            }
        };
        if let Body::Dir { children, .. } = &mut b.nodes[dir].body {
            children.push((name.as_slice(), child));
        }
    }
    Ok(b)
}

/// Splits a directory's dirents (`.` and `..` included, sorted) into
/// blocks; returns each block's number of entries and used bytes.
fn dir_blocks(entries: &[(&[u8], usize)]) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let (mut n, mut used) = (0usize, 0usize);
    for (name, _) in entries {
        let need = DIRENT + name.len();
        if used + need > BLK as usize {
            blocks.push((n, used));
            (n, used) = (0, 0);
        }
        n += 1;
        used += need;
    }
    blocks.push((n, used));
    blocks
}

/// A directory's entries with `.` and `..` in their sorted places.
fn dirents<'a>(node: usize, parent: usize, children: &[(&'a [u8], usize)]) -> Vec<(&'a [u8], usize)> {
    let mut all: Vec<(&[u8], usize)> = Vec::with_capacity(children.len() + 2);
    all.push((b".", node));
    all.push((b"..", parent));
    all.extend_from_slice(children);
    // children come sorted; only the two dot entries need placing
    all.sort_by(|a, b| a.0.cmp(b.0));
    all
}

fn xattr_ibody(node: &Node<'_>, xattrs: &[Xattr]) -> u64 {
    if node.shared.is_empty() && node.inline.is_empty() {
        return 0;
    }
    XATTR_HEADER + 4 * node.shared.len() as u64 + node.inline.iter().map(|&i| xattrs[i as usize].size()).sum::<u64>()
}

/// Writes the EROFS image of `m` to `out`. `uuid` goes into the superblock.
pub fn write_image(m: &Manifest, uuid: [u8; 16], out: &mut impl Write) -> Result<ImageStats, ImageError> {
    let mut b = collect(m)?;
    // shared xattrs: those used more than once, in order of first use
    let mut shared_off: Vec<Option<u32>> = vec![None; b.xattrs.len()];
    let mut shared_len = 0u64;
    for (i, x) in b.xattrs.iter().enumerate() {
        if b.counts[i] > 1 {
            shared_off[i] = Some((shared_len / 4) as u32);
            shared_len += x.size();
        }
    }
    for node in b.nodes.iter_mut() {
        let ids = std::mem::take(&mut node.shared);
        for id in ids {
            if shared_off[id as usize].is_some() && node.shared.len() < 255 {
                node.shared.push(id);
            } else {
                node.inline.push(id);
            }
        }
        debug_assert!(xattr_ibody(node, &b.xattrs) <= XATTR_HEADER + 4 * (u16::MAX as u64 - 1));
    }
    let xattr_blkaddr = 1u64;
    let meta_blkaddr = xattr_blkaddr + shared_len.div_ceil(BLK);

    // inodes: positions and data layouts; data blocks counted from 0 for now
    let mut pos = 0u64;
    let mut data_blocks = 0u64;
    let mut chunked = false;
    let nodes_len = b.nodes.len();
    for i in 0..nodes_len {
        let xsize = xattr_ibody(&b.nodes[i], &b.xattrs);
        let head = INODE_SIZE + xsize;
        let start = pos.next_multiple_of(32);
        let data = match &b.nodes[i].body {
            Body::File { size, redirect } => {
                if *redirect {
                    chunked = true;
                    // the smallest chunk that covers the file, at most 2^31 blocks
                    let bits = (0u16..31).find(|&c| (BLK << c) >= *size).unwrap_or(31);
                    Data::Chunks { bits, count: size.div_ceil(BLK << bits) }
                } else {
                    Data::None
                }
            }
            Body::Dir { parent, children } => {
                let all = dirents(i, *parent, children);
                let blocks = dir_blocks(&all);
                let last = blocks.last().map_or(0, |b| b.1) as u64;
                let size = (blocks.len() as u64 - 1) * BLK + last;
                tail_layout(start, head, size, &mut data_blocks)
            }
            Body::Symlink(t) => tail_layout(start, head, t.len() as u64, &mut data_blocks),
            _ => Data::None,
        };
        let extra = match data {
            Data::Inline { tail, .. } => tail,
            Data::Chunks { count, .. } => 4 * count,
            _ => 0,
        };
        b.nodes[i].pos = start;
        b.nodes[i].data = data;
        pos = start + head + extra;
    }
    let meta_blocks = pos.div_ceil(BLK).max(1);
    let data_blkaddr = meta_blkaddr + meta_blocks;
    for node in &mut b.nodes {
        match &mut node.data {
            Data::Plain { addr, .. } | Data::Inline { addr, .. } => *addr += data_blkaddr,
            _ => {}
        }
    }
    let total_blocks = data_blkaddr + data_blocks;
    if total_blocks > u64::from(u32::MAX) {
        return Err(ImageError::Unrepresentable {
            path: "/".into(),
            what: "the tree's metadata exceeds the 16 TiB an EROFS image addresses".into(),
        });
    }

    // superblock
    let mut block = vec![0u8; BLK as usize];
    {
        let sb = &mut block[SB_OFFSET..SB_OFFSET + 128];
        sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        sb[12] = BLKBITS as u8;
        // root_nid (14..16) is 0: the root is the first inode
        sb[16..24].copy_from_slice(&(nodes_len as u64).to_le_bytes());
        sb[36..40].copy_from_slice(&(total_blocks as u32).to_le_bytes());
        sb[40..44].copy_from_slice(&(meta_blkaddr as u32).to_le_bytes());
        sb[44..48].copy_from_slice(&(xattr_blkaddr as u32).to_le_bytes());
        sb[48..64].copy_from_slice(&uuid);
        sb[64..68].copy_from_slice(b"ocix");
        let incompat = if chunked { INCOMPAT_CHUNKED_FILE } else { 0 };
        sb[80..84].copy_from_slice(&incompat.to_le_bytes());
    }
    out.write_all(&block)?;
    let mut written = BLK;

    // shared xattrs
    let mut buf = Vec::with_capacity(BLK as usize * 2);
    for (i, x) in b.xattrs.iter().enumerate() {
        if shared_off[i].is_some() {
            x.write_to(&mut buf);
        }
    }
    pad_to_block(&mut buf);
    out.write_all(&buf)?;
    written += buf.len() as u64;

    // inodes
    buf.clear();
    let mut base = 0u64; // metadata-area offset of buf[0]
    for i in 0..nodes_len {
        let node = &b.nodes[i];
        buf.resize((node.pos - base) as usize, 0);
        write_inode(&b, i, &shared_off, &mut buf);
        if buf.len() >= 1 << 20 {
            let whole = buf.len() / BLK as usize * BLK as usize;
            out.write_all(&buf[..whole])?;
            buf.drain(..whole);
            base += whole as u64;
            written += whole as u64;
        }
    }
    buf.resize(((meta_blocks * BLK) - base) as usize, 0);
    out.write_all(&buf)?;
    written += buf.len() as u64;

    // data blocks, in the order they were given out
    buf.clear();
    for i in 0..nodes_len {
        let node = &b.nodes[i];
        let blocks = match node.data {
            Data::Plain { blocks, .. } | Data::Inline { blocks, .. } => blocks,
            _ => continue,
        };
        if blocks == 0 {
            continue;
        }
        let mut bytes = Vec::new();
        content(&b, i, &mut bytes);
        bytes.truncate((blocks * BLK) as usize);
        bytes.resize((blocks * BLK) as usize, 0);
        out.write_all(&bytes)?;
        written += bytes.len() as u64;
    }
    debug_assert_eq!(written, total_blocks * BLK);
    Ok(ImageStats { inodes: nodes_len as u64, bytes: written })
}

/// The data layout of a directory or symlink of `size` bytes whose inode
/// (with xattrs, `head` bytes) starts at `start`: the last partial block
/// inline when it fits in the inode's block, else every block apart.
fn tail_layout(start: u64, head: u64, size: u64, data_blocks: &mut u64) -> Data {
    let tail = size % BLK;
    let full = size / BLK;
    let tail_start = start + head;
    let fits = tail > 0 && tail_start / BLK == (tail_start + tail - 1) / BLK;
    let addr = *data_blocks;
    if fits {
        *data_blocks += full;
        Data::Inline { addr, blocks: full, tail }
    } else {
        let blocks = size.div_ceil(BLK);
        *data_blocks += blocks;
        Data::Plain { addr, blocks }
    }
}

fn pad_to_block(buf: &mut Vec<u8>) {
    let len = (buf.len() as u64).next_multiple_of(BLK) as usize;
    buf.resize(len, 0);
}

/// The bytes of a directory (its dirent blocks, the last one not padded)
/// or a symlink (its target).
fn content(b: &Builder<'_>, i: usize, out: &mut Vec<u8>) {
    match &b.nodes[i].body {
        Body::Symlink(t) => out.extend_from_slice(t),
        Body::Dir { parent, children } => {
            let all = dirents(i, *parent, children);
            let blocks = dir_blocks(&all);
            let mut k = 0;
            for (bi, &(n, used)) in blocks.iter().enumerate() {
                let start = out.len();
                let ents = &all[k..k + n];
                let mut nameoff = DIRENT * n;
                for (name, child) in ents {
                    let nid = b.nodes[*child].pos / 32;
                    out.extend_from_slice(&nid.to_le_bytes());
                    out.extend_from_slice(&(nameoff as u16).to_le_bytes());
                    out.push(file_type(&b.nodes[*child].body));
                    out.push(0);
                    nameoff += name.len();
                }
                for (name, _) in ents {
                    out.extend_from_slice(name);
                }
                debug_assert_eq!(out.len() - start, used);
                if bi + 1 < blocks.len() {
                    out.resize(start + BLK as usize, 0);
                }
                k += n;
            }
        }
        _ => {}
    }
}

fn file_type(body: &Body<'_>) -> u8 {
    match body {
        Body::File { .. } => FT_REG,
        Body::Dir { .. } => FT_DIR,
        Body::Symlink(_) => FT_LNK,
        Body::Dev { chr: true, .. } => FT_CHR,
        Body::Dev { chr: false, .. } => FT_BLK,
        Body::Fifo => FT_FIFO,
        Body::Socket => FT_SOCK,
    }
}

fn write_inode(b: &Builder<'_>, i: usize, shared_off: &[Option<u32>], out: &mut Vec<u8>) {
    let node = &b.nodes[i];
    let (ifmt, size) = match &node.body {
        Body::File { size, .. } => (0o100000u32, *size),
        Body::Dir { parent, children } => {
            let all = dirents(i, *parent, children);
            let blocks = dir_blocks(&all);
            (0o040000, (blocks.len() as u64 - 1) * BLK + blocks.last().map_or(0, |b| b.1) as u64)
        }
        Body::Symlink(t) => (0o120000, t.len() as u64),
        Body::Dev { chr: true, .. } => (0o020000, 0),
        Body::Dev { chr: false, .. } => (0o060000, 0),
        Body::Fifo => (0o010000, 0),
        Body::Socket => (0o140000, 0),
    };
    let (layout, u) = match node.data {
        Data::None => (FLAT_PLAIN, 0u32),
        Data::Chunks { bits, .. } => (CHUNK_BASED, u32::from(bits)),
        Data::Plain { addr, .. } => (FLAT_PLAIN, addr as u32),
        Data::Inline { addr, blocks, .. } => (FLAT_INLINE, if blocks > 0 { addr as u32 } else { 0 }),
    };
    let u = match node.body {
        Body::Dev { rdev, .. } => rdev,
        _ => u,
    };
    let xsize = xattr_ibody(node, &b.xattrs);
    let icount = if xsize == 0 { 0 } else { ((xsize - XATTR_HEADER) / 4 + 1) as u16 };
    let meta = node.meta;
    out.extend_from_slice(&(1 | (layout << 1)).to_le_bytes());
    out.extend_from_slice(&icount.to_le_bytes());
    out.extend_from_slice(&((ifmt | (meta.mode & 0o7777)) as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&u.to_le_bytes());
    out.extend_from_slice(&((i as u32).wrapping_add(1)).to_le_bytes());
    out.extend_from_slice(&meta.uid.to_le_bytes());
    out.extend_from_slice(&meta.gid.to_le_bytes());
    out.extend_from_slice(&(meta.mtime.sec as u64).to_le_bytes());
    out.extend_from_slice(&meta.mtime.nsec.to_le_bytes());
    out.extend_from_slice(&node.nlink.to_le_bytes());
    out.extend_from_slice(&[0u8; 16]);
    if xsize > 0 {
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(node.shared.len() as u8);
        out.extend_from_slice(&[0u8; 7]);
        for &id in &node.shared {
            out.extend_from_slice(&shared_off[id as usize].unwrap_or(0).to_le_bytes());
        }
        for &id in &node.inline {
            b.xattrs[id as usize].write_to(out);
        }
    }
    match node.data {
        Data::Inline { blocks, tail, .. } => {
            let mut bytes = Vec::new();
            content(b, i, &mut bytes);
            let from = (blocks * BLK) as usize;
            out.extend_from_slice(&bytes[from..from + tail as usize]);
        }
        Data::Chunks { count, .. } => {
            for _ in 0..count {
                out.extend_from_slice(&NULL_ADDR.to_le_bytes());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_xattrs_are_escaped() {
        let x = stored_xattr(b"trusted.overlay.opaque", b"y").unwrap();
        assert_eq!((x.index, &x.suffix[..]), (4, &b"overlay.overlay.opaque"[..]));
        let x = stored_xattr(b"trusted.overlay.overlay.redirect", b"/x").unwrap();
        assert_eq!(&x.suffix[..], b"overlay.overlay.overlay.redirect");
        let x = stored_xattr(b"user.overlay.opaque", b"y").unwrap();
        assert_eq!((x.index, &x.suffix[..]), (1, &b"overlay.opaque"[..]));
        assert_eq!(stored_xattr(b"system.posix_acl_access", b"").unwrap().index, 2);
        assert!(stored_xattr(b"system.nfs4_acl", b"").is_err());
        assert!(stored_xattr(b"system.posix_acl_accessx", b"").is_err());
        assert!(stored_xattr(b"user.big", &vec![0; 65536]).is_err());
    }

    #[test]
    fn dirents_sort_dots_among_names() {
        let c: Vec<(&[u8], usize)> = vec![(b"-a", 1), (b"a", 2)];
        let names: Vec<&[u8]> = dirents(0, 0, &c).into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec![&b"-a"[..], b".", b"..", b"a"]);
    }

    #[test]
    fn dir_blocks_never_split_an_entry() {
        let long = vec![b'x'; 255];
        let c: Vec<(&[u8], usize)> = (0..40).map(|_| (&long[..], 0)).collect();
        let blocks = dir_blocks(&c);
        assert!(blocks.iter().all(|&(_, used)| used <= BLK as usize));
        assert_eq!(blocks.iter().map(|b| b.0).sum::<usize>(), 40);
    }
}
