//! Text listing of a manifest: one line per entry, in manifest order.
//!
//! ```text
//! dir      0755 0:0              - 2024-05-01T10:00:00.000000000Z /
//! file     0644 0:0             12 2024-05-01T10:00:00.250000000Z /etc/hostname sha256:...
//! hardlink 0644 0:0             12 2024-05-01T10:00:00.250000000Z /etc/hostname2 => /etc/hostname sha256:...
//! symlink  0777 0:0              - 2024-05-01T10:00:00.000000000Z /lib -> usr/lib
//! char     0666 0:0              - 2024-05-01T10:00:00.000000000Z /dev/null dev=1,3
//! ```
//!
//! Columns: type, mode (octal), uid:gid, size (files only, `-` otherwise),
//! mtime (UTC), path (escaped as by [`path_display`]); then, where they
//! apply, `-> target` for a symlink (escaped as by [`escape`]), `=> path` for
//! a hardlink (the first name of its inode, whose metadata the line shows),
//! the content digest, `zeros=N` (zero runs), `xattrs=N` and `dev=MAJ,MIN`.

use super::{escape, format_mode, format_time};
use crate::manifest::notation::{AsCompact, Links};
use crate::manifest::{KindRef, path_display};
use std::io::{self, Write};

/// Writes the listing of `m` to `out`.
pub fn write_text<M: AsCompact + ?Sized>(m: &M, out: &mut dyn Write) -> io::Result<()> {
    let c = m.as_compact();
    let links = Links::new(&c);
    let mut cur = c.cursor();
    let mut line = String::new();
    while let Some((path, entry)) = cur.next_entry() {
        use std::fmt::Write as _;
        let r = links.resolve(entry);
        let n = r.node;
        let kind = n.kind();
        line.clear();
        let size = match kind {
            KindRef::File(f) => f.size.to_string(),
            _ => "-".to_string(),
        };
        let _ = write!(
            line,
            "{:<8} {} {:<9} {:>12} {} {}",
            entry.code().name(),
            format_mode(n.mode()),
            format!("{}:{}", n.uid(), n.gid()),
            size,
            format_time(n.mtime()),
            path_display(path)
        );
        if let Some(p) = r.link {
            line.push_str(" => ");
            line.push_str(&path_display(p));
        }
        match kind {
            KindRef::Symlink(t) => {
                line.push_str(" -> ");
                line.push_str(&escape(t));
            }
            KindRef::File(f) => {
                if let Some(d) = f.digest {
                    let _ = write!(line, " {d}");
                }
                if !f.zeros.is_empty() {
                    let _ = write!(line, " zeros={}", f.zeros.len());
                }
            }
            KindRef::Char(d) | KindRef::Block(d) => {
                let _ = write!(line, " dev={},{}", d.major, d.minor);
            }
            KindRef::Hardlink(p) => {
                // Only in a manifest that was never validated.
                line.push_str(" => ");
                line.push_str(&path_display(p));
                line.push_str(" (unresolved)");
            }
            KindRef::Dir(_) | KindRef::Fifo | KindRef::Socket => {}
        }
        let x = n.xattrs();
        if !x.is_empty() {
            let _ = write!(line, " xattrs={}", x.len());
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}
