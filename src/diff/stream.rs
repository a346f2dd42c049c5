//! [`diff_read`]: the expected manifest read as a stream, entry by entry,
//! against an actual one held whole. Only the actual tree is in memory; of
//! the expected one, the entries its hardlinks name and one slot per open
//! directory.

use super::{DiffOptions, Finding, Out, What};
use crate::manifest::compact::{EntryView, FileRef, StreamPlan, Visit, Xattr, Xattrs, stream_read};
use crate::manifest::notation::Links;
use crate::manifest::{Compact, DecodeError, Dev, Digest, KindCode, Time};
use std::collections::HashMap;
use std::iter::Peekable;

/// Compares `actual` against the expected manifest that `src` yields
/// (`len` bytes), with the same findings in the same order as
/// [`super::diff_each`] on both decoded whole, handed to `sink` as they are
/// found. `plan` is what [`crate::manifest::compact::plan_read`] learned
/// from a first read of the same bytes (which also checked their
/// encoding). Returns the number of findings, or the error
/// [`Compact::read_from`] gives for these bytes; findings before the entry
/// at fault have then been handed on.
pub fn diff_read(
    src: &mut dyn std::io::Read,
    len: u64,
    plan: &StreamPlan,
    actual: &Compact,
    opts: &DiffOptions,
    mut sink: impl FnMut(Finding),
) -> Result<u64, DecodeError> {
    let mut w = Walk {
        actual,
        act: Links::new(actual),
        plan,
        kept: HashMap::new(),
        frames: Vec::new(),
        prefix: Vec::new(),
        out: Out { opts, sink: &mut sink, found: 0, path: Vec::new() },
    };
    stream_read(src, len, plan, &mut w)?;
    Ok(w.out.found)
}

/// A regular file's size, digest and zero runs.
type KeptFile = (u64, Option<Digest>, Vec<(u64, u64)>);

/// An expected entry some hardlink names, kept for the hardlinks that show
/// its data.
struct Kept {
    code: KindCode,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Time,
    uname: Option<Box<str>>,
    gname: Option<Box<str>>,
    xattrs: Vec<Xattr>,
    file: Option<KeptFile>,
    target: Option<Vec<u8>>,
    dev: Option<Dev>,
}

impl Kept {
    fn of(e: &EntryView<'_>) -> Self {
        Kept {
            code: e.code,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            uname: e.uname.map(Box::from),
            gname: e.gname.map(Box::from),
            xattrs: e.xattrs.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            file: e.file.map(|f| (f.size, f.digest.copied(), f.zeros.to_vec())),
            target: e.target.map(<[u8]>::to_vec),
            dev: e.dev,
        }
    }

    fn view(&self) -> EntryView<'_> {
        EntryView {
            code: self.code,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            uname: self.uname.as_deref(),
            gname: self.gname.as_deref(),
            xattrs: Xattrs::from_pairs(&self.xattrs),
            file: self.file.as_ref().map(|(size, digest, zeros)| FileRef {
                size: *size,
                digest: digest.as_ref(),
                zeros,
            }),
            target: self.target.as_deref(),
            dev: self.dev,
        }
    }
}

/// The merge walk turned inside out: the expected entries come one by one,
/// each directory's actual children wait in its frame.
struct Walk<'a, 'o> {
    actual: &'a Compact,
    act: Links<'a>,
    plan: &'o StreamPlan,
    /// Expected entries hardlinks name, by path.
    kept: HashMap<Vec<u8>, Kept>,
    /// One per open expected directory: the children of the actual
    /// directory at the same path not reached yet, or `None` when the
    /// expected directory is not compared (missing, excluded, or not a
    /// directory on the actual side), nor then its subtree.
    frames: Vec<Option<Peekable<crate::manifest::compact::Children<'a>>>>,
    /// Scratch for the paths of extra entries.
    prefix: Vec<u8>,
    out: Out<'o>,
}

/// A hardlink path as the actual side's [`Links`] reads it: empty
/// components dropped.
fn clean(p: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let dirty = p.first() == Some(&b'/') || p.last() == Some(&b'/') || p.windows(2).any(|w| w == b"//");
    if !dirty {
        return std::borrow::Cow::Borrowed(p);
    }
    let parts: Vec<&[u8]> = p.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    std::borrow::Cow::Owned(parts.join(&b'/'))
}

impl Walk<'_, '_> {
    /// Reports the actual child `name` of the directory whose path (with
    /// its trailing `/` unless the root) is `self.prefix` as extra, unless
    /// excluded.
    fn extra(out: &mut Out<'_>, prefix: &[u8], name: &[u8]) {
        out.path.clear();
        out.path.extend_from_slice(prefix);
        out.path.extend_from_slice(name);
        if !out.opts.excludes.is_excluded(&out.path) {
            out.push(What::Extra);
        }
    }
}

impl Visit for Walk<'_, '_> {
    fn entry(&mut self, path: &[u8], e: &EntryView<'_>) {
        let is_dir = e.code == KindCode::Dir;
        if e.code != KindCode::Dir && e.code != KindCode::Hardlink && self.plan.is_named(path) {
            self.kept.insert(path.to_vec(), Kept::of(e));
        }
        let a = if path.is_empty() {
            self.actual.root()
        } else {
            let Some(frame) = self.frames.last_mut() else { return };
            let Some(children) = frame else {
                if is_dir {
                    self.frames.push(None);
                }
                return;
            };
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
            let prefix = &path[..path.len() - name.len()];
            // actual children before this one are extra
            while let Some(c) = children.next_if(|c| c.name() < name) {
                Self::extra(&mut self.out, prefix, c.name());
            }
            let a = children.next_if(|c| c.name() == name);
            if self.out.opts.excludes.is_excluded(path) {
                if is_dir {
                    self.frames.push(None);
                }
                return;
            }
            self.out.path.clear();
            self.out.path.extend_from_slice(path);
            let Some(a) = a else {
                self.out.push(What::Missing);
                if is_dir {
                    self.frames.push(None);
                }
                return;
            };
            a
        };
        self.out.path.clear();
        self.out.path.extend_from_slice(path);
        let ra = self.act.resolve(a);
        let resolved = e
            .target
            .filter(|_| e.code == KindCode::Hardlink)
            .and_then(|t| Some((self.kept.get(&*clean(t))?, t)))
            .filter(|(k, _)| !matches!(k.code, KindCode::Dir | KindCode::Hardlink));
        match resolved {
            Some((k, t)) => self.out.fields(&k.view(), Some(t), &ra.node.view(), ra.link),
            None => self.out.fields(e, None, &ra.node.view(), ra.link),
        }
        if is_dir {
            self.frames.push(a.is_dir().then(|| a.children().peekable()));
        }
    }

    fn end_dir(&mut self, path: &[u8]) {
        let Some(Some(rest)) = self.frames.pop() else { return };
        self.prefix.clear();
        self.prefix.extend_from_slice(path);
        if !path.is_empty() {
            self.prefix.push(b'/');
        }
        for c in rest {
            Self::extra(&mut self.out, &self.prefix, c.name());
        }
    }
}
