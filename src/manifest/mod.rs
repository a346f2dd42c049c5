//! The OCIX manifest: the one document every other part of ocix produces or
//! consumes. Sources (scan, OCI import) build a [`Manifest`]; sinks (unpack,
//! show, diff) read one. This module holds the in-memory model mirroring
//! `ocix.cddl` and its canonical CBOR encoding; it touches no filesystem and
//! no network, and depends on nothing else in ocix.
//!
//! The model is a tree: a directory owns its children in a map ordered by the
//! raw bytes of their names, which is also the order of the encoding and the
//! "manifest order" used to pick the first name of a hardlink group.

mod cbor;
mod codec;
pub mod compact;
mod digest;
pub mod notation;
mod walk;
pub mod zeros;

use std::collections::BTreeMap;

pub use codec::{DecodeError, decode, encode, validate};
pub use compact::{Compact, KindRef, Node, WriteError};
pub use digest::{Digest, DigestParseError};
pub use walk::{Walk, path_display};

/// CBOR tag that opens every OCIX manifest ("ocix" in ASCII).
pub const OCIX_TAG: u64 = 1_868_786_040;
/// The format version this code reads and writes.
pub const VERSION: u64 = 1;
/// Granularity of zero runs, in bytes.
pub const BLOCK: u64 = 4096;
/// Media type of an encoded manifest, for registries and artifact manifests.
pub const MEDIA_TYPE: &str = "application/vnd.ocix.manifest.v1+cbor";
/// The nesting limit: a directory may be nested at most `MAX_DEPTH` levels
/// below the root (its path has at most `MAX_DEPTH` components); entries
/// inside the deepest directory are allowed, so any other entry may have
/// `MAX_DEPTH + 1` components. The decoder, the encoder, import, unpack and
/// scan all check it with [`check_depth`].
pub const MAX_DEPTH: usize = 1024;
/// Longest file name (Linux NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest symlink target or hardlink path (Linux PATH_MAX less the NUL).
pub const MAX_TARGET: usize = 4095;
/// Largest xattr value (Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 65536;
/// Largest device major number Linux keeps (12 bits; `mknod` silently
/// drops the bits above, so 4097:1 would become 1:1).
pub const MAX_MAJOR: u32 = (1 << 12) - 1;
/// Largest device minor number Linux keeps (20 bits).
pub const MAX_MINOR: u32 = (1 << 20) - 1;
/// The one uid/gid no entry may have: `(uid_t)-1`, which `chown` takes as
/// "leave this id unchanged" (a file meant for it would keep its creator's).
pub const NO_CHANGE_ID: u32 = u32::MAX;

/// A file name: one path component, raw bytes.
pub type Name = Vec<u8>;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Hash)]
pub struct Time {
    /// Seconds, may be negative.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// Metadata every entry but a hardlink carries.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Meta {
    /// Permission bits plus setuid, setgid and sticky (`0..=0o7777`).
    pub mode: u32,
    /// Numeric owner; authoritative. [`NO_CHANGE_ID`] fails encoding.
    pub uid: u32,
    /// Numeric group; authoritative. [`NO_CHANGE_ID`] fails encoding.
    pub gid: u32,
    /// Modification time.
    pub mtime: Time,
    /// Extended attributes of every namespace, names and values as bytes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Owner's user name, advisory only.
    pub uname: Option<String>,
    /// Group name, advisory only.
    pub gname: Option<String>,
}

/// Device numbers of a character or block device.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Dev {
    /// Major number, at most [`MAX_MAJOR`] (larger fails encoding).
    pub major: u32,
    /// Minor number, at most [`MAX_MINOR`] (larger fails encoding).
    pub minor: u32,
}

/// A regular file's content, by reference.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct File {
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content, the blob's name; `None` exactly when size is 0.
    pub digest: Option<Digest>,
    /// Maximal runs of all-zero, 4 KiB-aligned whole blocks, as
    /// `(first block, block count)`, ascending, non-adjacent.
    pub zeros: Vec<(u64, u64)>,
}

impl File {
    /// Bytes of the file that are not in a zero run.
    pub fn data_bytes(&self) -> u64 {
        let z: u64 = self.zeros.iter().map(|(_, n)| n * BLOCK).sum();
        self.size - z.min(self.size)
    }
}

/// What an entry is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Regular file.
    File(File),
    /// Directory with its children by name.
    Dir(BTreeMap<Name, Entry>),
    /// Symbolic link and its target, raw bytes.
    Symlink(Vec<u8>),
    /// Another name of a regular file that comes earlier in manifest order;
    /// the path is relative to the root, components joined by `/`.
    Hardlink(Vec<u8>),
    /// Character device.
    Char(Dev),
    /// Block device.
    Block(Dev),
    /// Named pipe.
    Fifo,
    /// Unix socket (recorded; unpack skips it, as tar does).
    Socket,
}

/// The type code of each kind, as encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum KindCode {
    /// 0
    File = 0,
    /// 1
    Dir = 1,
    /// 2
    Symlink = 2,
    /// 3
    Hardlink = 3,
    /// 4
    Char = 4,
    /// 5
    Block = 5,
    /// 6
    Fifo = 6,
    /// 7
    Socket = 7,
}

impl KindCode {
    /// The mode an entry of this type has when the manifest omits it.
    pub fn default_mode(self) -> u32 {
        match self {
            KindCode::Dir => 0o755,
            KindCode::Symlink => 0o777,
            KindCode::Hardlink => 0,
            _ => 0o644,
        }
    }

    /// Short lowercase name, as shown and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            KindCode::File => "file",
            KindCode::Dir => "dir",
            KindCode::Symlink => "symlink",
            KindCode::Hardlink => "hardlink",
            KindCode::Char => "char",
            KindCode::Block => "block",
            KindCode::Fifo => "fifo",
            KindCode::Socket => "socket",
        }
    }

    pub(crate) fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => KindCode::File,
            1 => KindCode::Dir,
            2 => KindCode::Symlink,
            3 => KindCode::Hardlink,
            4 => KindCode::Char,
            5 => KindCode::Block,
            6 => KindCode::Fifo,
            7 => KindCode::Socket,
            _ => return None,
        })
    }
}

impl Kind {
    /// The type code.
    pub fn code(&self) -> KindCode {
        match self {
            Kind::File(_) => KindCode::File,
            Kind::Dir(_) => KindCode::Dir,
            Kind::Symlink(_) => KindCode::Symlink,
            Kind::Hardlink(_) => KindCode::Hardlink,
            Kind::Char(_) => KindCode::Char,
            Kind::Block(_) => KindCode::Block,
            Kind::Fifo => KindCode::Fifo,
            Kind::Socket => KindCode::Socket,
        }
    }
}

/// One entry of the tree.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// Owner, mode, times and xattrs (all default for a hardlink).
    pub meta: Meta,
    /// Type and type-specific data.
    pub kind: Kind,
}

impl Entry {
    /// A new entry with the type's default mode and otherwise default metadata.
    pub fn new(kind: Kind) -> Self {
        let meta = Meta { mode: kind.code().default_mode(), ..Meta::default() };
        Entry { meta, kind }
    }

    /// An empty directory with default metadata.
    pub fn empty_dir() -> Self {
        Entry::new(Kind::Dir(BTreeMap::new()))
    }

    /// Children if this is a directory.
    pub fn children(&self) -> Option<&BTreeMap<Name, Entry>> {
        match &self.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }
}

/// A whole filesystem tree.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Manifest {
    /// The root directory (it has no name).
    pub root: Entry,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest { root: Entry::empty_dir() }
    }
}

impl Manifest {
    /// Looks up an entry by a `/`-separated path relative to the root
    /// (empty path is the root). Does not follow symlinks or hardlinks.
    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        let mut cur = &self.root;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = cur.children()?.get(comp)?;
        }
        Some(cur)
    }

    /// Encodes to canonical CBOR; fails if the model breaks a rule of the
    /// format (the same rules the decoder enforces).
    pub fn to_bytes(&self) -> Result<Vec<u8>, DecodeError> {
        encode(self)
    }

    /// Decodes and validates canonical CBOR.
    pub fn from_bytes(data: &[u8]) -> Result<Self, DecodeError> {
        decode(data)
    }

    /// sha256 of the encoded manifest: its identity.
    pub fn digest(&self) -> Result<Digest, DecodeError> {
        Ok(Digest::of(&self.to_bytes()?))
    }

    /// Walks every entry in manifest order (depth first, children by name).
    pub fn walk(&self) -> Walk<'_> {
        Walk::new(&self.root)
    }
}

/// A value beyond what a manifest (or Linux) can hold: what
/// [`check_depth`], [`check_id`] and [`check_dev`] refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A directory nested deeper than [`MAX_DEPTH`] levels.
    #[error("directory nested {0} levels below the root; the limit is {MAX_DEPTH}")]
    DirectoryDepth(usize),
    /// An entry nested deeper than the entries inside the deepest directory.
    #[error(
        "entry nested {0} levels below the root; the limit is {MAX_DEPTH} directories and the entries inside the deepest"
    )]
    EntryDepth(usize),
    /// An owner id no file can have.
    #[error(
        "{what} {id} cannot own a file: 4294967295 is -1, the \"no change\" value of chown, \
         and ids stop at 4294967294"
    )]
    Id {
        /// `uid` or `gid`.
        what: String,
        /// The id.
        id: u64,
    },
    /// Device numbers Linux cannot represent.
    #[error(
        "device {major}:{minor} cannot be represented by Linux (major at most {MAX_MAJOR}, \
         minor at most {MAX_MINOR}); it would become another device"
    )]
    Device {
        /// The major number.
        major: u64,
        /// The minor number.
        minor: u64,
    },
}

/// Checks the nesting limit ([`MAX_DEPTH`]) for an entry `level` levels
/// below the root (the number of components of its path; the root is 0).
pub fn check_depth(level: usize, is_dir: bool) -> Result<(), LimitError> {
    if is_dir && level > MAX_DEPTH {
        return Err(LimitError::DirectoryDepth(level));
    }
    if level > MAX_DEPTH + 1 {
        return Err(LimitError::EntryDepth(level));
    }
    Ok(())
}

/// Checks a file name: non-empty, not `.` or `..`, no `/` or NUL, at most
/// [`MAX_NAME`] bytes. Returns what is wrong.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("name contains /");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    if name.len() > MAX_NAME {
        return Err("name longer than 255 bytes");
    }
    Ok(())
}

/// The prefixes of the xattrs overlayfs keeps for itself: `trusted.overlay.`,
/// and `user.overlay.` when it is mounted with `userxattr`. An overlay that
/// uses a tree as a layer obeys them (`opaque`, `redirect`, `metacopy`,
/// `origin`, ...), so they change what the tree shows once mounted. The
/// escaped spelling (`trusted.overlay.overlay.*`, Linux 6.7 and later) lies
/// inside these prefixes: an overlay over the tree presents it unescaped, as
/// a live overlay xattr to an overlay nested on top.
pub const OVERLAY_XATTR_PREFIXES: &[&[u8]] = &[b"trusted.overlay.", b"user.overlay."];

/// Whether the xattr `name` is in overlayfs's namespace (see
/// [`OVERLAY_XATTR_PREFIXES`]).
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Renders an xattr name for messages: invalid UTF-8 and control characters
/// escaped as in [`path_display`], so a hostile name stays on one line.
pub fn xattr_display(name: &[u8]) -> String {
    notation::escape(name)
}

/// Checks an owner id (`what` is `uid` or `gid`): every id but
/// [`NO_CHANGE_ID`] is one a file can have.
pub fn check_id(what: &str, id: u64) -> Result<(), LimitError> {
    if id >= u64::from(NO_CHANGE_ID) {
        return Err(LimitError::Id { what: what.to_string(), id });
    }
    Ok(())
}

/// Checks device numbers: Linux keeps 12 bits of major and 20 of minor;
/// larger numbers would name another device.
pub fn check_dev(major: u64, minor: u64) -> Result<(), LimitError> {
    if major > u64::from(MAX_MAJOR) || minor > u64::from(MAX_MINOR) {
        return Err(LimitError::Device { major, minor });
    }
    Ok(())
}
