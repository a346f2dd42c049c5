//! What an unpack did, and what it could not apply exactly.

use crate::manifest::path_display;
use std::collections::BTreeMap;

/// A kind of thing the unpack could not apply exactly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum NotAppliedKind {
    /// A socket: never created.
    Socket,
    /// A device node written as an empty regular file (rootless).
    Device,
    /// An extended attribute not set or not removed.
    Xattr,
    /// An owner that could not be recorded (rootless symlink or fifo).
    Owner,
    /// A symlink's mode other than 0777: Linux gives every symlink 0777.
    Mode,
    /// A modification time the filesystem cannot hold (it stored another).
    Mtime,
}

impl NotAppliedKind {
    /// Short description for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            NotAppliedKind::Socket => "sockets skipped",
            NotAppliedKind::Device => "devices written as empty files",
            NotAppliedKind::Xattr => "xattrs not applied",
            NotAppliedKind::Owner => "owners not recorded",
            NotAppliedKind::Mode => "symlink modes not applied",
            NotAppliedKind::Mtime => "mtimes not stored exactly",
        }
    }
}

/// One thing not applied, with the entry's path (relative, raw bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NotApplied {
    /// What.
    pub kind: NotAppliedKind,
    /// The entry, relative to the destination.
    pub path: Vec<u8>,
    /// Details (which xattr, which owner).
    pub detail: String,
}

/// What an unpack did.
#[derive(Clone, Debug, Default)]
pub struct UnpackReport {
    /// Whether it ran rootless.
    pub rootless: bool,
    /// Directories created or kept (the root included).
    pub dirs: u64,
    /// Regular files written.
    pub files_written: u64,
    /// Regular files kept as they were (`update`).
    pub files_kept: u64,
    /// Regular files made hardlinks of their blobs (`--link`).
    pub files_linked: u64,
    /// Data bytes written (holes and kept files not counted).
    pub bytes_written: u64,
    /// Symlinks, devices, fifos created or kept.
    pub others: u64,
    /// Hardlinks made or kept.
    pub hardlinks: u64,
    /// Entries removed because the manifest lacks them or their type
    /// differs (`update`; a removed directory counts once).
    pub removed: u64,
    /// Everything that could not be applied exactly, in no fixed order.
    pub not_applied: Vec<NotApplied>,
}

impl UnpackReport {
    /// One line per kind of thing not applied: count and the first few
    /// paths. Empty when everything was applied.
    pub fn summary(&self, first: usize) -> Vec<String> {
        let mut by: BTreeMap<NotAppliedKind, Vec<&NotApplied>> = BTreeMap::new();
        for n in &self.not_applied {
            by.entry(n.kind).or_default().push(n);
        }
        by.into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.path.cmp(&b.path));
                let shown: Vec<String> =
                    v.iter().take(first).map(|n| format!("{} ({})", path_display(&n.path), n.detail)).collect();
                let more = if v.len() > first { format!(", and {} more", v.len() - first) } else { String::new() };
                format!("{} {}: {}{}", v.len(), k.describe(), shown.join(", "), more)
            })
            .collect()
    }
}
