//! JSON form of a manifest: an array of entry objects in manifest order, one
//! object per line. The tree is flattened: each object carries its full path.
//!
//! ```json
//! [
//! {"path":"/","type":"dir","mode":"0755","uid":0,"gid":0,"mtime":{"sec":1714557600,"nsec":0}},
//! {"path":"/a","type":"file","mode":"0644","uid":0,"gid":0,"mtime":{"sec":0,"nsec":0},"xattrs":{"user.k":"7631"},"size":8192,"digest":"sha256:...","zeros":[[0,1]]},
//! {"path":"/b","type":"hardlink","link":"/a"},
//! {"path":"/l","type":"symlink","mode":"0777","uid":0,"gid":0,"mtime":{"sec":0,"nsec":0},"target":"a"},
//! {"path":"/null","type":"char","mode":"0666","uid":0,"gid":0,"mtime":{"sec":0,"nsec":0},"rdev":{"major":1,"minor":3}}
//! ]
//! ```
//!
//! Keys, in this order:
//! - `path`: `/` and the path relative to the root (the root is `/`),
//!   escaped losslessly as by [`path_display`]: `\\` for a backslash, Rust
//!   escapes (`\n`, `\u{1b}`) for control characters, `\xNN` for bytes that
//!   are not UTF-8.
//! - `type`: `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo`,
//!   `socket`.
//! - A `hardlink` has only `link`: the first name of its inode, a path as
//!   above; that entry carries the metadata and content.
//! - Every other type has `mode` (octal string), `uid`, `gid` (numbers),
//!   `uname`, `gname` (strings, only when recorded), `mtime`
//!   (`{"sec","nsec"}`, seconds since 1970 UTC, may be negative), and
//!   `xattrs` when there are any: an object from name (escaped as above,
//!   without the `/`) to value as lowercase hex.
//! - `file`: `size`; `digest` (`sha256:<hex>`, absent when size is 0);
//!   `zeros` (`[[first block, block count], ...]`, 4096-byte blocks, absent
//!   when there are none).
//! - `symlink`: `target`, escaped like a name.
//! - `char`, `block`: `rdev` (`{"major","minor"}`).

use super::escape;
use super::format_mode;
use crate::manifest::notation::AsCompact;
use crate::manifest::{KindRef, Node, path_display};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::io::{self, Write};

/// Writes the JSON form of `m` to `out`.
pub fn write_json<M: AsCompact + ?Sized>(m: &M, out: &mut dyn Write) -> io::Result<()> {
    let c = m.as_compact();
    out.write_all(b"[\n")?;
    let mut cur = c.cursor();
    let mut first = true;
    while let Some((path, node)) = cur.next_entry() {
        if !first {
            out.write_all(b",\n")?;
        }
        first = false;
        serde_json::to_writer(&mut *out, &EntryJson { path, node }).map_err(io::Error::other)?;
    }
    out.write_all(b"\n]\n")
}

/// One entry with its path, in the shape the module documentation gives.
pub struct EntryJson<'a> {
    /// Path relative to the root, `/`-joined (empty for the root).
    pub path: &'a [u8],
    /// The entry.
    pub node: Node<'a>,
}

impl Serialize for EntryJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.node;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("path", &path_display(self.path))?;
        m.serialize_entry("type", n.code().name())?;
        let kind = n.kind();
        if let KindRef::Hardlink(p) = kind {
            m.serialize_entry("link", &path_display(p))?;
            return m.end();
        }
        m.serialize_entry("mode", &format_mode(n.mode()))?;
        m.serialize_entry("uid", &n.uid())?;
        m.serialize_entry("gid", &n.gid())?;
        if let Some(u) = n.uname() {
            m.serialize_entry("uname", u)?;
        }
        if let Some(g) = n.gname() {
            m.serialize_entry("gname", g)?;
        }
        let t = n.mtime();
        m.serialize_entry("mtime", &Mtime(t.sec, t.nsec))?;
        let xattrs = n.xattrs();
        if !xattrs.is_empty() {
            let x: serde_json::Map<String, serde_json::Value> =
                xattrs.iter().map(|(k, v)| (escape(k), serde_json::Value::String(hex::encode(v)))).collect();
            m.serialize_entry("xattrs", &x)?;
        }
        match kind {
            KindRef::File(f) => {
                m.serialize_entry("size", &f.size)?;
                if let Some(d) = f.digest {
                    m.serialize_entry("digest", &d.to_string())?;
                }
                if !f.zeros.is_empty() {
                    m.serialize_entry("zeros", f.zeros)?;
                }
            }
            KindRef::Symlink(t) => m.serialize_entry("target", &escape(t))?,
            KindRef::Char(d) | KindRef::Block(d) => m.serialize_entry("rdev", &Rdev(d.major, d.minor))?,
            KindRef::Dir(_) | KindRef::Hardlink(_) | KindRef::Fifo | KindRef::Socket => {}
        }
        m.end()
    }
}

struct Mtime(i64, u32);

impl Serialize for Mtime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("sec", &self.0)?;
        m.serialize_entry("nsec", &self.1)?;
        m.end()
    }
}

struct Rdev(u32, u32);

impl Serialize for Rdev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("major", &self.0)?;
        m.serialize_entry("minor", &self.1)?;
        m.end()
    }
}
