//! Iteration over a manifest's entries in manifest order.

use super::{Entry, Kind, Name};
use std::collections::btree_map;

/// Depth-first, pre-order walk; children in name order. Yields each entry with
/// its path relative to the root (`/`-joined, empty for the root).
pub struct Walk<'a> {
    root: Option<&'a Entry>,
    stack: Vec<(usize, btree_map::Iter<'a, Name, Entry>)>,
    path: Vec<u8>,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(root: &'a Entry) -> Self {
        Walk { root: Some(root), stack: Vec::new(), path: Vec::new() }
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = (Vec<u8>, &'a Entry);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            if let Kind::Dir(c) = &root.kind {
                self.stack.push((0, c.iter()));
            }
            return Some((Vec::new(), root));
        }
        loop {
            let (base, it) = self.stack.last_mut()?;
            let base = *base;
            match it.next() {
                None => {
                    self.stack.pop();
                }
                Some((name, entry)) => {
                    self.path.truncate(base);
                    if base > 0 {
                        self.path.push(b'/');
                    }
                    self.path.extend_from_slice(name);
                    let path = self.path.clone();
                    if let Kind::Dir(c) = &entry.kind {
                        self.stack.push((self.path.len(), c.iter()));
                    }
                    return Some((path, entry));
                }
            }
        }
    }
}

/// Renders a raw path for messages: `/` prefixed, invalid UTF-8 and control
/// characters escaped so one path stays on one line.
pub fn path_display(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&c.escape_default().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
