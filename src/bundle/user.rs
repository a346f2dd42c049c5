//! The image's `User` to numeric ids, from the rootfs's own `/etc/passwd` and
//! `/etc/group`, read without ever leaving the rootfs.
//!
//! Both files are found as a chroot would find them: every component is
//! looked up relative to a directory fd with `O_NOFOLLOW`, a symlink is read
//! and its target resolved again from the rootfs (an absolute target starts
//! at the rootfs, `..` at the rootfs stays there), at most [`MAX_SYMLINKS`]
//! times. Nothing outside the rootfs is opened, whatever the image's links
//! say. A missing file counts as an empty database (numeric ids still work);
//! anything stranger (a fifo or device, a file over [`MAX_DB_BYTES`], a
//! symlink loop) is an error rather than a guess.
//!
//! The lookup follows the rules container runtimes share for the image-spec
//! `User` field (`user`, `uid`, `user:group`, `uid:gid`, `user:gid`,
//! `uid:group`): a numeric part is matched by id only and needs no entry; a
//! name must be found; the first matching line wins; without an explicit
//! group the user's primary group comes from passwd and the groups that list
//! the user by name become additional gids.

use crate::sys::read::FileType;
use crate::sys::{Errno, SysError, read as r};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Largest `/etc/passwd` or `/etc/group` read (as other runtimes cap it).
pub const MAX_DB_BYTES: u64 = 10 << 20;
/// Most symlinks followed while resolving one path (the kernel's limit).
pub const MAX_SYMLINKS: usize = 40;
/// Largest id accepted in the `User` field (ids are kept within `i32`).
const MAX_ID: u32 = i32::MAX as u32;

/// A failure to resolve the image's `User`.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The `User` names a user, group or id that cannot be used.
    #[error("image config User {spec:?}: {why}")]
    Spec {
        /// The `User` string from the image config.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// `/etc/passwd` or `/etc/group` in the rootfs could not be used.
    #[error("{path}: {why}")]
    Database {
        /// The file, shown as ROOTFS/etc/NAME.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A system call failed while reading the rootfs.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// The ids a `User` resolves to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecUser {
    /// The process uid.
    pub uid: u32,
    /// The process gid.
    pub gid: u32,
    /// Additional gids (only when the group was not given explicitly).
    pub additional_gids: Vec<u32>,
    /// The user's home directory from passwd, when an entry matched.
    pub home: Option<String>,
}

/// Resolves `spec` (the image config's `User`) against the passwd and group
/// files inside `rootfs`.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ExecUser, UserError> {
    let root = open_root(rootfs)?;
    let passwd = read_in_root(&root, rootfs, "etc/passwd")?;
    let group = read_in_root(&root, rootfs, "etc/group")?;
    resolve_with(spec, passwd.as_deref(), group.as_deref(), rootfs)
}

/// One side (user or group) of the `User` field.
enum Arg<'a> {
    Id(u32),
    Name(&'a str),
}

fn parse_arg<'a>(s: &'a str, spec: &str) -> Result<Option<Arg<'a>>, UserError> {
    if s.is_empty() {
        return Ok(None);
    }
    // An optional sign then digits is a number (as the shared rules read it);
    // anything else is a name.
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Some(Arg::Name(s)));
    }
    let out_of_range = || UserError::Spec { spec: spec.into(), why: format!("id {s} is outside 0..={MAX_ID}") };
    if s.starts_with('-') && digits.bytes().any(|b| b != b'0') {
        return Err(out_of_range());
    }
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_ID as u64 => Ok(Some(Arg::Id(n as u32))),
        _ => Err(out_of_range()),
    }
}

/// Passwd or group lines: trimmed, blank lines and `#` comments skipped,
/// with 1-based line numbers for messages.
fn lines(db: &[u8]) -> impl Iterator<Item = (usize, Vec<&[u8]>)> {
    db.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_ascii()))
        .filter(|(_, l)| !l.is_empty() && l[0] != b'#')
        .map(|(n, l)| (n, l.split(|&b| b == b':').collect()))
}

fn field<'a>(f: &[&'a [u8]], i: usize) -> &'a [u8] {
    f.get(i).copied().unwrap_or(b"")
}

/// A numeric field of a database line, or `None` when it is not a number.
fn num(f: &[u8]) -> Option<u32> {
    if f.is_empty() || !f.iter().all(|b| b.is_ascii_digit()) {
        return None;
    }
    std::str::from_utf8(f).ok()?.parse().ok()
}

/// The lookup itself, on database contents already read (`None`: the file
/// does not exist). `rootfs` is only used in messages.
pub fn resolve_with(
    spec: &str,
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
    rootfs: &Path,
) -> Result<ExecUser, UserError> {
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    let user_arg = parse_arg(u, spec)?;
    let group_arg = parse_arg(g, spec)?;
    let db_err = |file: &str, line: usize, what: &str, value: &[u8]| UserError::Database {
        path: format!("{}/etc/{file}", rootfs.display()),
        why: format!("line {line}: {what} field {:?} is not a number", String::from_utf8_lossy(value)),
    };
    let mut out = ExecUser::default();

    // The user: by name, by uid, or (no user part) the entry for uid 0.
    let mut matched_name: Option<&[u8]> = None;
    for (n, f) in lines(passwd.unwrap_or(b"")) {
        let (name, uid_f, gid_f) = (field(&f, 0), field(&f, 2), field(&f, 3));
        let hit = match &user_arg {
            Some(Arg::Name(want)) => name == want.as_bytes(),
            Some(Arg::Id(want)) => num(uid_f) == Some(*want),
            None => num(uid_f) == Some(0),
        };
        if !hit {
            continue;
        }
        out.uid = num(uid_f).ok_or_else(|| db_err("passwd", n, "uid", uid_f))?;
        out.gid = num(gid_f).ok_or_else(|| db_err("passwd", n, "gid", gid_f))?;
        out.home = Some(String::from_utf8_lossy(field(&f, 5)).into_owned());
        matched_name = Some(name);
        break;
    }
    if matched_name.is_none() {
        match &user_arg {
            Some(Arg::Id(id)) => out.uid = *id,
            Some(Arg::Name(name)) => {
                let why = match passwd {
                    Some(_) => format!("no user {name:?} in {}/etc/passwd", rootfs.display()),
                    None => format!("no user {name:?}: the rootfs has no /etc/passwd"),
                };
                return Err(UserError::Spec { spec: spec.into(), why });
            }
            None => {}
        }
    }

    // The group: explicit (by name or gid), or the user's memberships.
    if group_arg.is_none() && matched_name.is_none_or(|m| m.is_empty()) {
        return Ok(out);
    }
    let member = matched_name.unwrap_or(b"");
    let mut explicit: Option<u32> = None;
    for (n, f) in lines(group.unwrap_or(b"")) {
        let (name, gid_f) = (field(&f, 0), field(&f, 2));
        let hit = match &group_arg {
            Some(Arg::Name(want)) => name == want.as_bytes(),
            Some(Arg::Id(want)) => num(gid_f) == Some(*want),
            None => {
                let list = field(&f, 3);
                !list.is_empty() && list.split(|&b| b == b',').any(|m| m == member)
            }
        };
        if !hit {
            continue;
        }
        let gid = num(gid_f).ok_or_else(|| db_err("group", n, "gid", gid_f))?;
        if group_arg.is_some() {
            explicit = Some(gid);
            break;
        }
        out.additional_gids.push(gid);
    }
    match (&group_arg, explicit) {
        (Some(_), Some(gid)) => out.gid = gid,
        (Some(Arg::Id(gid)), None) => out.gid = *gid,
        (Some(Arg::Name(name)), None) => {
            let why = match group {
                Some(_) => format!("no group {name:?} in {}/etc/group", rootfs.display()),
                None => format!("no group {name:?}: the rootfs has no /etc/group"),
            };
            return Err(UserError::Spec { spec: spec.into(), why });
        }
        (None, _) => {}
    }
    Ok(out)
}

/// Opens the rootfs directory itself (the caller's path, trusted).
fn open_root(rootfs: &Path) -> Result<OwnedFd, UserError> {
    let shown = || rootfs.display().to_string();
    let fd = match std::fs::File::open(rootfs) {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            let errno = Errno::from_io_error(&e).unwrap_or(Errno::IO);
            return Err(SysError::new("open", shown(), errno).into());
        }
    };
    let st = r::stat_fd(fd.as_fd(), &shown)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(SysError::new("open", shown(), Errno::NOTDIR).into());
    }
    Ok(fd)
}

/// Reads `rel` (a relative path such as `etc/passwd`) inside the rootfs open
/// at `root`, resolving symlinks as if `root` were `/`. `Ok(None)` when the
/// file (or a directory on the way) does not exist.
pub fn read_in_root(root: &OwnedFd, rootfs: &Path, rel: &str) -> Result<Option<Vec<u8>>, UserError> {
    let shown_path = |p: &[u8]| format!("{}/{}", rootfs.display(), String::from_utf8_lossy(p));
    let db_err = |why: String| UserError::Database { path: shown_path(rel.as_bytes()), why };

    // Components still to walk, last first; `stack` holds the directories
    // walked so far below the root, so `..` pops (and stops at the root).
    let mut todo: Vec<Vec<u8>> = Vec::new();
    push_components(&mut todo, rel.as_bytes());
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut walked: Vec<Vec<u8>> = Vec::new();
    let mut links = 0usize;
    while let Some(name) = todo.pop() {
        if name == b"." {
            continue;
        }
        if name == b".." {
            stack.pop();
            walked.pop();
            continue;
        }
        let dir = stack.last().unwrap_or(root);
        let mut here = walked.join(&b'/');
        if !here.is_empty() {
            here.push(b'/');
        }
        here.extend_from_slice(&name);
        let shown = || shown_path(&here);
        let st = match r::stat_at(dir.as_fd(), &name, &shown) {
            Ok(st) => st,
            Err(e) if matches!(e.errno, Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(db_err(format!("more than {MAX_SYMLINKS} symlinks while resolving it in the rootfs")));
                }
                let target = r::read_link_at(dir.as_fd(), &name, &shown)?;
                if target.first() == Some(&b'/') {
                    stack.clear();
                    walked.clear();
                }
                push_components(&mut todo, &target);
            }
            FileType::Directory if !todo.is_empty() => {
                stack.push(r::open_dir_at(dir.as_fd(), &name, &shown)?);
                walked.push(name);
            }
            // A file where a directory was expected: the path does not exist.
            _ if !todo.is_empty() => return Ok(None),
            FileType::RegularFile => {
                let fd = r::open_file_at(dir.as_fd(), &name, &shown)?;
                let st = r::stat_fd(fd.as_fd(), &shown)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(db_err("replaced by something that is not a regular file while reading".into()));
                }
                return read_capped(fd, &shown, &db_err).map(Some);
            }
            other => return Err(db_err(format!("not a regular file ({other:?})"))),
        }
    }
    // The path ended on a directory (e.g. it resolved to the root).
    Err(db_err("is a directory".into()))
}

/// Pushes the components of `path` so that the first is popped first.
fn push_components(todo: &mut Vec<Vec<u8>>, path: &[u8]) {
    for c in path.split(|&b| b == b'/').rev().filter(|c| !c.is_empty()) {
        todo.push(c.to_vec());
    }
}

fn read_capped(
    fd: OwnedFd,
    shown: &dyn Fn() -> String,
    db_err: &dyn Fn(String) -> UserError,
) -> Result<Vec<u8>, UserError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r::read(fd.as_fd(), &mut buf, shown)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() as u64 + n as u64 > MAX_DB_BYTES {
            return Err(db_err(format!("larger than {MAX_DB_BYTES} bytes")));
        }
        out.extend_from_slice(&buf[..n]);
    }
}
