//! BSD mtree specification of a manifest, for checking a real tree with the
//! mtree tool (`mtree -f SPEC -p DIR`, as in Debian's mtree-netbsd): the
//! same audit as `ocix diff`, done by an independent implementation.
//!
//! The spec opens with `#mtree`, then has one line per entry in manifest
//! order, each with its full path from the root (`.` for the root itself,
//! `./etc/passwd` below it) and every keyword it needs, so no `/set` line is
//! used:
//!
//! ```text
//! #mtree
//! . type=dir mode=0755 uid=0 gid=0 time=1714557600.000000000
//! ./etc type=dir mode=0755 uid=0 gid=0 time=1714557600.000000000
//! ./etc/host\040name type=file mode=0644 uid=0 gid=0 time=1714557600.250000000 size=12 nlink=1 sha256digest=...
//! ./lib type=link mode=0777 uid=0 gid=0 time=1714557600.000000000 nlink=1 link=usr/lib
//! ./dev/null type=char mode=0666 uid=0 gid=0 time=1714557600.000000000 nlink=1 device=native,1,3
//! ```
//!
//! Keywords: `type`, `mode` (octal), `uid`, `gid`, `time` (seconds, `.`,
//! nine digits of nanoseconds, as mtree writes it), `nlink` (every type but
//! directories), and per type `size` and `sha256digest` (regular files),
//! `link` (symlinks) and `device=native,MAJ,MIN` (devices). A hardlink is
//! written as its first name is, with that entry's type and metadata;
//! `nlink` is the number of names the inode has in the manifest, so a broken
//! or added link shows up. `nlink` is not written for directories (their
//! link count depends on the filesystem). mtree has no keywords for xattrs
//! or zero runs, and the
//! advisory user and group names are left out (the ids are what counts).
//! mtree compares the owners it finds on disk, so a tree unpacked without
//! privilege (owners kept in `user.rootlesscontainers`) does not match; use
//! `ocix diff --rootless` there.
//!
//! Escaping: mtree decodes paths and link targets with `strunvis`, so every
//! byte outside printable ASCII, and space, `\` and `#`, is written as a
//! three-digit octal escape (`\040`, `\134`, `\043`, `\303\251` for `é`);
//! so are the glob characters `*`, `?` and `[`.
//! mtree also treats a name containing `*`, `?` or `[` as an `fnmatch`
//! pattern; in such a name each of `\`, `*`, `?`, `[` is preceded by an
//! escaped backslash (`\134\052` for `*`) so the pattern matches only the
//! name itself.

use super::format_mode;
use crate::manifest::notation::{AsCompact, Links};
use crate::manifest::{KindRef, Time};
use std::io::{self, Write};

/// Writes the mtree specification of `m` to `out`.
pub fn write_mtree<M: AsCompact + ?Sized>(m: &M, out: &mut dyn Write) -> io::Result<()> {
    let c = m.as_compact();
    // names per inode: the first name plus every hardlink to it
    let links = Links::new(&c);
    out.write_all(b"#mtree\n")?;
    let mut cur = c.cursor();
    let mut line = String::new();
    while let Some((path, entry)) = cur.next_entry() {
        use std::fmt::Write as _;
        let r = links.resolve(entry);
        let n = r.node;
        let kind = n.kind();
        line.clear();
        line.push('.');
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            line.push('/');
            line.push_str(&encode_name(comp));
        }
        let ty = match kind {
            KindRef::File(_) => "file",
            KindRef::Dir(_) => "dir",
            KindRef::Symlink(_) => "link",
            KindRef::Char(_) => "char",
            KindRef::Block(_) => "block",
            KindRef::Fifo => "fifo",
            KindRef::Socket => "socket",
            // Unresolvable hardlink (never in a validated manifest): nothing
            // to say about it but that it exists.
            KindRef::Hardlink(_) => {
                line.push_str(" type=file\n");
                out.write_all(line.as_bytes())?;
                continue;
            }
        };
        let _ = write!(
            line,
            " type={ty} mode={} uid={} gid={} time={}",
            format_mode(n.mode()),
            n.uid(),
            n.gid(),
            time(n.mtime())
        );
        let nlink = links.names(r.link.unwrap_or(path));
        match kind {
            KindRef::File(f) => {
                let digest = f.digest.copied().unwrap_or_else(|| crate::manifest::Digest::of(b""));
                let _ = write!(line, " size={} nlink={nlink} sha256digest={}", f.size, digest.hex());
            }
            KindRef::Dir(_) => {}
            _ => {
                let _ = write!(line, " nlink={nlink}");
            }
        }
        match kind {
            KindRef::Symlink(t) => {
                line.push_str(" link=");
                line.push_str(&encode(t));
            }
            KindRef::Char(d) | KindRef::Block(d) => {
                let _ = write!(line, " device=native,{},{}", d.major, d.minor);
            }
            _ => {}
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// `sec.nsec`, nanoseconds as nine digits. Before 1970 the two parts keep
/// the timespec convention, which is how mtree reads them back:
/// `-2.500000000` is -2 s plus 0.5 s.
fn time(t: Time) -> String {
    format!("{}.{:09}", t.sec, t.nsec)
}

/// Octal-escapes every byte mtree would misread.
fn encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        push(&mut s, c);
    }
    s
}

fn push(s: &mut String, c: u8) {
    if c.is_ascii_graphic() && !matches!(c, b'\\' | b'#' | b'*' | b'?' | b'[') {
        s.push(char::from(c));
    } else {
        s.push_str(&format!("\\{c:03o}"));
    }
}

/// A path component: like [`encode`], and in a name mtree would take for a
/// glob pattern, the glob characters and `\` are escaped for `fnmatch` too.
fn encode_name(name: &[u8]) -> String {
    if !name.iter().any(|c| matches!(c, b'*' | b'?' | b'[')) {
        return encode(name);
    }
    let mut s = String::with_capacity(name.len() * 2);
    for &c in name {
        if matches!(c, b'*' | b'?' | b'[' | b'\\') {
            s.push_str("\\134");
        }
        push(&mut s, c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(encode(b"a b\n#\\\xc3\xa9=x"), "a\\040b\\012\\043\\134\\303\\251=x");
        assert_eq!(encode_name(b"g*x"), "g\\134\\052x");
        assert_eq!(encode_name(b"a\\[b"), "a\\134\\134\\134\\133b");
        assert_eq!(encode_name(b"plain\\"), "plain\\134");
        assert_eq!(time(Time { sec: 1, nsec: 5 }), "1.000000005");
    }
}
