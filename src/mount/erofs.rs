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

use crate::manifest::compact::Children;
use crate::manifest::{Compact, Digest, KindCode, Node, path_display, xattr_display};
use std::collections::HashMap;
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

/// An xattr of the image: overlayfs's metacopy marker, a file's redirect
/// to its blob (both in overlayfs's namespace, which no stored xattr of
/// the manifest takes: those are escaped), or an xattr of the manifest.
enum Stored {
    Metacopy,
    Redirect(Digest),
    Plain(Xattr),
}

const METACOPY: &[u8] = b"overlay.metacopy";
const REDIRECT: &[u8] = b"overlay.redirect";
const BLOBS: &[u8] = b"/blobs/sha256/";

impl Stored {
    fn size(&self) -> u64 {
        match self {
            Stored::Metacopy => (4 + METACOPY.len() as u64).next_multiple_of(4),
            Stored::Redirect(_) => (4 + REDIRECT.len() as u64 + BLOBS.len() as u64 + 64).next_multiple_of(4),
            Stored::Plain(x) => x.size(),
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let (suffix, value_len) = match self {
            Stored::Plain(x) => return x.write_to(out),
            Stored::Metacopy => (METACOPY, 0),
            Stored::Redirect(_) => (REDIRECT, BLOBS.len() + 64),
        };
        let start = out.len();
        out.push(suffix.len() as u8);
        out.push(4);
        out.extend_from_slice(&(value_len as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        if let Stored::Redirect(d) = self {
            let mut hex = [0u8; 64];
            hex::encode_to_slice(d.0, &mut hex).expect("64 hex digits for 32 bytes");
            out.extend_from_slice(BLOBS);
            out.extend_from_slice(&hex);
        }
        out.resize(start + self.size() as usize, 0);
    }
}

/// `NONE` in an index field: no such thing.
const NONE: u32 = u32::MAX;

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

/// One inode: an entry of the manifest that is not a hardlink.
struct Inode {
    /// The entry's index in manifest order.
    entry: u32,
    /// A directory's parent inode (the root's is itself).
    parent: u32,
    nlink: u32,
    /// A file with content: its redirect xattr (index into `xattrs`).
    redirect: u32,
    /// The entry's xattr set (see [`Node::xattr_set`]).
    set: u32,
    /// Bytes of a file's content, a directory's dirents or a symlink's
    /// target.
    size: u64,
    pos: u64,
    data: Data,
}

/// Collects the manifest's inodes in manifest order (root first).
struct Builder<'m> {
    c: &'m Compact,
    inodes: Vec<Inode>,
    /// The inode of each entry in manifest order (a hardlink's is its
    /// target's).
    inode_of: Vec<u32>,
    xattrs: Vec<Stored>,
    counts: Vec<u32>,
    metacopy: u32,
    redirects: HashMap<Digest, u32>,
    plain: HashMap<(u8, Vec<u8>, Vec<u8>), u32>,
    /// Per xattr set of the manifest, once met: its xattrs' ids (a range
    /// of `set_ids`).
    sets: Vec<Option<(u32, u32)>>,
    set_ids: Vec<u32>,
}

impl<'m> Builder<'m> {
    fn intern(&mut self, x: Stored) -> u32 {
        let found = match &x {
            Stored::Metacopy => (self.metacopy != NONE).then_some(self.metacopy),
            Stored::Redirect(d) => self.redirects.get(d).copied(),
            Stored::Plain(p) => self.plain.get(&(p.index, p.suffix.clone(), p.value.clone())).copied(),
        };
        if let Some(id) = found {
            self.counts[id as usize] += 1;
            return id;
        }
        let id = self.xattrs.len() as u32;
        match &x {
            Stored::Metacopy => self.metacopy = id,
            Stored::Redirect(d) => {
                self.redirects.insert(*d, id);
            }
            Stored::Plain(p) => {
                self.plain.insert((p.index, p.suffix.clone(), p.value.clone()), id);
            }
        }
        self.xattrs.push(x);
        self.counts.push(1);
        id
    }

    /// Interns the xattrs of `n`'s set, once per set; counts each use.
    fn intern_set(&mut self, n: Node<'m>) -> Result<u32, ImageError> {
        let set = n.xattr_set();
        if set == 0 {
            return Ok(0);
        }
        if set >= self.sets.len() {
            self.sets.resize(set + 1, None);
        }
        if let Some((start, len)) = self.sets[set] {
            for k in start..start + len {
                self.counts[self.set_ids[k as usize] as usize] += 1;
            }
            return Ok(set as u32);
        }
        let mut ibody = XATTR_HEADER;
        let start = self.set_ids.len() as u32;
        for (name, value) in n.xattrs().iter() {
            let x = stored_xattr(name, value).map_err(|what| unrepresentable(&path_of(self.c, n), what))?;
            ibody += x.size();
            let id = self.intern(Stored::Plain(x));
            self.set_ids.push(id);
        }
        if ibody > MAX_XATTR_IBODY {
            return Err(unrepresentable(
                &path_of(self.c, n),
                format!("{ibody} bytes of xattrs; an EROFS inode holds at most {MAX_XATTR_IBODY}"),
            ));
        }
        self.sets[set] = Some((start, self.set_ids.len() as u32 - start));
        Ok(set as u32)
    }

    fn add(&mut self, n: Node<'m>, parent: u32) -> Result<u32, ImageError> {
        let mut size = 0;
        let mut redirect = NONE;
        match n.code() {
            KindCode::File => {
                if let Some(f) = n.file() {
                    size = f.size;
                    if let Some(d) = f.digest
                        && f.size > 0
                    {
                        self.intern(Stored::Metacopy);
                        redirect = self.intern(Stored::Redirect(*d));
                    }
                }
            }
            KindCode::Symlink => size = n.target().map_or(0, |t| t.len() as u64),
            KindCode::Char if n.dev().is_some_and(|d| d.major == 0 && d.minor == 0) => {
                return Err(unrepresentable(
                    &path_of(self.c, n),
                    "character device 0:0 is an overlay whiteout: a mount would hide it".into(),
                ));
            }
            _ => {}
        }
        let set = self.intern_set(n)?;
        let nlink = if n.is_dir() { 2 } else { 1 };
        self.inodes.push(Inode {
            entry: n.index() as u32,
            parent,
            nlink,
            redirect,
            set,
            size,
            pos: 0,
            data: Data::None,
        });
        Ok(self.inodes.len() as u32 - 1)
    }

    fn node(&self, ino: &Inode) -> Node<'m> {
        self.c.node(ino.entry as usize).unwrap_or_else(|| self.c.root())
    }

    /// The xattr ids of an inode, in the order they were interned.
    fn ids(&self, ino: &Inode) -> impl Iterator<Item = u32> + '_ {
        let own = (ino.redirect != NONE).then_some([self.metacopy, ino.redirect]);
        let set: &[u32] = match self.sets.get(ino.set as usize) {
            Some(Some((start, len))) => &self.set_ids[*start as usize..(*start + *len) as usize],
            _ => &[],
        };
        own.into_iter().flatten().chain(set.iter().copied())
    }

    /// A directory's dirents, `.` and `..` in their sorted places.
    fn dirents(&self, i: u32) -> Dirents<'_> {
        let ino = &self.inodes[i as usize];
        let children = self.node(ino).children();
        Dirents { children, peek: None, dots: 0, inode: i, parent: ino.parent, inode_of: &self.inode_of }
    }
}

/// The path of `n`, for an error (found by a descent from the root).
fn path_of(c: &Compact, n: Node<'_>) -> Vec<u8> {
    let want = n.index();
    let mut path = Vec::new();
    let mut cur = c.root();
    while cur.index() != want {
        let Some(next) = cur.children().find(|k| k.index() <= want && want < k.end()) else { break };
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(next.name());
        cur = next;
    }
    path
}

/// A directory's dirents in name-byte order: its children (in manifest
/// order, which is name order) with `.` and `..` merged in.
#[derive(Clone)]
struct Dirents<'b> {
    children: Children<'b>,
    peek: Option<Node<'b>>,
    /// `.` and `..` given out so far.
    dots: u8,
    inode: u32,
    parent: u32,
    inode_of: &'b [u32],
}

impl<'b> Iterator for Dirents<'b> {
    /// The name and the inode it names.
    type Item = (&'b [u8], u32);

    fn next(&mut self) -> Option<Self::Item> {
        if self.peek.is_none() {
            self.peek = self.children.next();
        }
        let next = self.peek.map(|n| n.name());
        if self.dots == 0 && next.is_none_or(|name| name >= &b"."[..]) {
            self.dots = 1;
            return Some((b".", self.inode));
        }
        if self.dots == 1 && next.is_none_or(|name| name >= &b".."[..]) {
            self.dots = 2;
            return Some((b"..", self.parent));
        }
        let n = self.peek.take()?;
        Some((n.name(), self.inode_of[n.index()]))
    }
}

fn collect(c: &Compact) -> Result<Builder<'_>, ImageError> {
    let mut b = Builder {
        c,
        inodes: Vec::with_capacity(c.len()),
        inode_of: vec![0; c.len()],
        xattrs: Vec::new(),
        counts: Vec::new(),
        metacopy: NONE,
        redirects: HashMap::new(),
        plain: HashMap::new(),
        sets: Vec::new(),
        set_ids: Vec::new(),
    };
    // the paths hardlinks name, each with its inode once met; paths are
    // followed only when the manifest has hardlinks
    let mut targets: HashMap<&[u8], u32> =
        c.nodes().filter(|n| n.code() == KindCode::Hardlink).map(|n| (n.target().unwrap_or_default(), NONE)).collect();
    let mut cursor = (!targets.is_empty()).then(|| c.cursor());
    // open directories: (end of subtree, inode)
    let mut stack: Vec<(usize, u32)> = Vec::new();
    for n in c.nodes() {
        let i = n.index();
        let path: &[u8] = match cursor.as_mut() {
            Some(cur) => cur.next_entry().map_or(&[][..], |(p, _)| p),
            None => &[],
        };
        while stack.last().is_some_and(|&(end, _)| i >= end) {
            stack.pop();
        }
        let parent = stack.last().map_or(0, |&(_, p)| p);
        let ino = match n.code() {
            KindCode::Hardlink => {
                let target = n.target().unwrap_or_default();
                let Some(&t) = targets.get(target).filter(|&&t| t != NONE) else {
                    return Err(unrepresentable(&path_of(c, n), "hardlink to an entry that is not earlier".into()));
                };
                let nl = &mut b.inodes[t as usize].nlink;
                *nl = nl.saturating_add(1);
                t
            }
            KindCode::Dir => {
                let ino = b.add(n, parent)?;
                if i > 0 {
                    let nl = &mut b.inodes[parent as usize].nlink;
                    *nl = nl.saturating_add(1);
                }
                stack.push((n.end(), ino));
                ino
            }
            _ => {
                let ino = b.add(n, parent)?;
                if let Some(t) = targets.get_mut(path) {
                    *t = ino;
                }
                ino
            }
        };
        b.inode_of[i] = ino;
    }
    Ok(b)
}

/// Bytes of a directory's dirent blocks (the last one not padded).
fn dir_size(ents: Dirents<'_>) -> u64 {
    let (mut full, mut used) = (0u64, 0usize);
    for (name, _) in ents {
        let need = DIRENT + name.len();
        if used + need > BLK as usize {
            full += 1;
            used = 0;
        }
        used += need;
    }
    full * BLK + used as u64
}

/// The xattrs of an inode in the image: how many go by reference to the
/// shared area (at most 255, the first ones that may), and the bytes of
/// its xattr area (0: none).
fn xattr_layout(b: &Builder<'_>, ino: &Inode, shared_off: &[Option<u32>]) -> (u8, u64) {
    let (mut shared, mut inline, mut any) = (0u8, 0u64, false);
    for id in b.ids(ino) {
        any = true;
        if shared_off[id as usize].is_some() && shared < 255 {
            shared += 1;
        } else {
            inline += b.xattrs[id as usize].size();
        }
    }
    if !any {
        return (0, 0);
    }
    (shared, XATTR_HEADER + 4 * u64::from(shared) + inline)
}

/// Writes the EROFS image of `m` to `out`. `uuid` goes into the superblock.
pub fn write_image(m: &Compact, uuid: [u8; 16], out: &mut impl Write) -> Result<ImageStats, ImageError> {
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
    let xattr_blkaddr = 1u64;
    let meta_blkaddr = xattr_blkaddr + shared_len.div_ceil(BLK);

    // inodes: positions and data layouts; data blocks counted from 0 for now
    let mut pos = 0u64;
    let mut data_blocks = 0u64;
    let mut chunked = false;
    let inodes_len = b.inodes.len();
    for i in 0..inodes_len {
        let ino = &b.inodes[i];
        let (_, xsize) = xattr_layout(&b, ino, &shared_off);
        debug_assert!(xsize <= XATTR_HEADER + 4 * (u16::MAX as u64 - 1));
        let head = INODE_SIZE + xsize;
        let start = pos.next_multiple_of(32);
        let mut size = ino.size;
        let data = match b.node(ino).code() {
            KindCode::File => {
                if size > 0 {
                    chunked = true;
                    // the smallest chunk that covers the file, at most 2^31 blocks
                    let bits = (0u16..31).find(|&c| (BLK << c) >= size).unwrap_or(31);
                    Data::Chunks { bits, count: size.div_ceil(BLK << bits) }
                } else {
                    Data::None
                }
            }
            KindCode::Dir => {
                size = dir_size(b.dirents(i as u32));
                tail_layout(start, head, size, &mut data_blocks)
            }
            KindCode::Symlink => tail_layout(start, head, size, &mut data_blocks),
            _ => Data::None,
        };
        let extra = match data {
            Data::Inline { tail, .. } => tail,
            Data::Chunks { count, .. } => 4 * count,
            _ => 0,
        };
        let ino = &mut b.inodes[i];
        ino.size = size;
        ino.pos = start;
        ino.data = data;
        pos = start + head + extra;
    }
    let meta_blocks = pos.div_ceil(BLK).max(1);
    let data_blkaddr = meta_blkaddr + meta_blocks;
    for ino in &mut b.inodes {
        match &mut ino.data {
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
        sb[16..24].copy_from_slice(&(inodes_len as u64).to_le_bytes());
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
    let mut scratch = Vec::new();
    let mut base = 0u64; // metadata-area offset of buf[0]
    for i in 0..inodes_len {
        let ino = &b.inodes[i];
        buf.resize((ino.pos - base) as usize, 0);
        write_inode(&b, i, &shared_off, &mut buf, &mut scratch);
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
    for i in 0..inodes_len {
        let blocks = match b.inodes[i].data {
            Data::Plain { blocks, .. } | Data::Inline { blocks, .. } => blocks,
            _ => continue,
        };
        if blocks == 0 {
            continue;
        }
        scratch.clear();
        content(&b, i, &mut scratch);
        scratch.resize((blocks * BLK) as usize, 0);
        out.write_all(&scratch)?;
        written += scratch.len() as u64;
    }
    debug_assert_eq!(written, total_blocks * BLK);
    Ok(ImageStats { inodes: inodes_len as u64, bytes: written })
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
    let n = b.node(&b.inodes[i]);
    match n.code() {
        KindCode::Symlink => out.extend_from_slice(n.target().unwrap_or_default()),
        KindCode::Dir => {
            let mut ents = b.dirents(i as u32);
            loop {
                // the entries of this block: as many as fit
                let start = out.len();
                let mut rest = ents.clone();
                let (mut count, mut used) = (0usize, 0usize);
                loop {
                    let before = rest.clone();
                    match rest.next() {
                        Some((name, _)) if used + DIRENT + name.len() <= BLK as usize => {
                            count += 1;
                            used += DIRENT + name.len();
                        }
                        Some(_) => {
                            rest = before;
                            break;
                        }
                        None => break,
                    }
                }
                let mut nameoff = DIRENT * count;
                for (name, child) in ents.clone().take(count) {
                    let nid = b.inodes[child as usize].pos / 32;
                    out.extend_from_slice(&nid.to_le_bytes());
                    out.extend_from_slice(&(nameoff as u16).to_le_bytes());
                    out.push(file_type(b, child));
                    out.push(0);
                    nameoff += name.len();
                }
                for (name, _) in ents.take(count) {
                    out.extend_from_slice(name);
                }
                debug_assert_eq!(out.len() - start, used);
                ents = rest;
                if ents.clone().next().is_none() {
                    break;
                }
                out.resize(start + BLK as usize, 0);
            }
        }
        _ => {}
    }
}

fn file_type(b: &Builder<'_>, inode: u32) -> u8 {
    match b.node(&b.inodes[inode as usize]).code() {
        KindCode::File | KindCode::Hardlink => FT_REG,
        KindCode::Dir => FT_DIR,
        KindCode::Symlink => FT_LNK,
        KindCode::Char => FT_CHR,
        KindCode::Block => FT_BLK,
        KindCode::Fifo => FT_FIFO,
        KindCode::Socket => FT_SOCK,
    }
}

fn write_inode(b: &Builder<'_>, i: usize, shared_off: &[Option<u32>], out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let ino = &b.inodes[i];
    let n = b.node(ino);
    let ifmt = match n.code() {
        KindCode::File | KindCode::Hardlink => 0o100000u32,
        KindCode::Dir => 0o040000,
        KindCode::Symlink => 0o120000,
        KindCode::Char => 0o020000,
        KindCode::Block => 0o060000,
        KindCode::Fifo => 0o010000,
        KindCode::Socket => 0o140000,
    };
    let (layout, u) = match ino.data {
        Data::None => (FLAT_PLAIN, 0u32),
        Data::Chunks { bits, .. } => (CHUNK_BASED, u32::from(bits)),
        Data::Plain { addr, .. } => (FLAT_PLAIN, addr as u32),
        Data::Inline { addr, blocks, .. } => (FLAT_INLINE, if blocks > 0 { addr as u32 } else { 0 }),
    };
    let u = match n.dev() {
        Some(d) => (d.minor & 0xff) | (d.major << 8) | ((d.minor & !0xff) << 12),
        None => u,
    };
    let (nshared, xsize) = xattr_layout(b, ino, shared_off);
    let icount = if xsize == 0 { 0 } else { ((xsize - XATTR_HEADER) / 4 + 1) as u16 };
    let mtime = n.mtime();
    out.extend_from_slice(&(1 | (layout << 1)).to_le_bytes());
    out.extend_from_slice(&icount.to_le_bytes());
    out.extend_from_slice(&((ifmt | (n.mode() & 0o7777)) as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&ino.size.to_le_bytes());
    out.extend_from_slice(&u.to_le_bytes());
    out.extend_from_slice(&((i as u32).wrapping_add(1)).to_le_bytes());
    out.extend_from_slice(&n.uid().to_le_bytes());
    out.extend_from_slice(&n.gid().to_le_bytes());
    out.extend_from_slice(&(mtime.sec as u64).to_le_bytes());
    out.extend_from_slice(&mtime.nsec.to_le_bytes());
    out.extend_from_slice(&ino.nlink.to_le_bytes());
    out.extend_from_slice(&[0u8; 16]);
    if xsize > 0 {
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(nshared);
        out.extend_from_slice(&[0u8; 7]);
        // the first `nshared` that may go by reference, then the others
        let mut left = nshared;
        for id in b.ids(ino) {
            if let Some(off) = shared_off[id as usize].filter(|_| left > 0) {
                left -= 1;
                out.extend_from_slice(&off.to_le_bytes());
            }
        }
        let mut left = nshared;
        for id in b.ids(ino) {
            if shared_off[id as usize].is_some() && left > 0 {
                left -= 1;
            } else {
                b.xattrs[id as usize].write_to(out);
            }
        }
    }
    match ino.data {
        Data::Inline { blocks, tail, .. } => {
            scratch.clear();
            content(b, i, scratch);
            let from = (blocks * BLK) as usize;
            out.extend_from_slice(&scratch[from..from + tail as usize]);
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

    fn tree(names: &[&[u8]]) -> Compact {
        use crate::manifest::{Entry, File, Kind, Manifest};
        let mut root = std::collections::BTreeMap::new();
        for n in names {
            root.insert(n.to_vec(), Entry::new(Kind::File(File { size: 0, digest: None, zeros: Vec::new() })));
        }
        Compact::from_tree(&Manifest { root: Entry::new(Kind::Dir(root)) }).unwrap()
    }

    #[test]
    fn dirents_sort_dots_among_names() {
        let c = tree(&[b"-a", b".-", b".a", b"a"]);
        let b = collect(&c).unwrap();
        let names: Vec<&[u8]> = b.dirents(0).map(|e| e.0).collect();
        assert_eq!(names, vec![&b"-a"[..], b".", b".-", b"..", b".a", b"a"]);
        let ids: Vec<u32> = b.dirents(0).map(|e| e.1).collect();
        assert_eq!(ids, vec![1, 0, 2, 0, 3, 4]);
    }

    #[test]
    fn dirent_blocks_never_split_an_entry() {
        let names: Vec<Vec<u8>> =
            (0..40u8).map(|i| [vec![b'x'; 250], vec![b'a' + i / 26, b'a' + i % 26]].concat()).collect();
        let refs: Vec<&[u8]> = names.iter().map(|n| &n[..]).collect();
        let c = tree(&refs);
        let b = collect(&c).unwrap();
        let size = dir_size(b.dirents(0));
        // `.` and `..` then 15 names of 264 bytes fill the first block, 15
        // the second, the last 10 the third
        assert_eq!(size, 2 * BLK + 10 * 264);
        let mut out = Vec::new();
        content(&b, 0, &mut out);
        assert_eq!(out.len() as u64, size);
    }
}
