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

use super::{escape, format_mode, format_time, resolve};
use crate::manifest::{Kind, Manifest, path_display};
use std::io::{self, Write};

/// Writes the listing of `m` to `out`.
pub fn write_text(m: &Manifest, out: &mut dyn Write) -> io::Result<()> {
    for (path, entry) in m.walk() {
        let r = resolve(m, entry);
        let meta = r.meta;
        let size = match r.kind {
            Kind::File(f) => f.size.to_string(),
            _ => "-".to_string(),
        };
        let mut line = format!(
            "{:<8} {} {:<9} {:>12} {} {}",
            entry.kind.code().name(),
            format_mode(meta.mode),
            format!("{}:{}", meta.uid, meta.gid),
            size,
            format_time(meta.mtime),
            path_display(&path)
        );
        if let Some(p) = r.link {
            line.push_str(" => ");
            line.push_str(&path_display(p));
        }
        match r.kind {
            Kind::Symlink(t) => {
                line.push_str(" -> ");
                line.push_str(&escape(t));
            }
            Kind::File(f) => {
                if let Some(d) = &f.digest {
                    line.push_str(&format!(" {d}"));
                }
                if !f.zeros.is_empty() {
                    line.push_str(&format!(" zeros={}", f.zeros.len()));
                }
            }
            Kind::Char(d) | Kind::Block(d) => line.push_str(&format!(" dev={},{}", d.major, d.minor)),
            Kind::Hardlink(p) => {
                // Only in a manifest that was never validated.
                line.push_str(" => ");
                line.push_str(&path_display(p));
                line.push_str(" (unresolved)");
            }
            Kind::Dir(_) | Kind::Fifo | Kind::Socket => {}
        }
        if !meta.xattrs.is_empty() {
            line.push_str(&format!(" xattrs={}", meta.xattrs.len()));
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}
