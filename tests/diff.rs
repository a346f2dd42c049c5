//! The drift audit: `ocix::diff` on hand-built manifests (one change at a
//! time, exact path and field), then `ocix diff` on real trees changed on
//! disk, and the binary's exit codes.

mod common;

use common::file_entry as file;
use common::*;
use ocix::diff::{DiffOptions, Excludes, Field, Finding, Value, What};

/// `ocix::diff::diff`, checked against the streamed comparison
/// (`diff_read`, the expected manifest read from its bytes entry by entry):
/// both must give the same findings in the same order.
fn diff(e: &Manifest, a: &Manifest, opts: &DiffOptions) -> Vec<Finding> {
    let whole = ocix::diff::diff(e, a, opts);
    let bytes = e.to_bytes().expect("expected manifest is valid");
    let len = bytes.len() as u64;
    let plan = ocix::manifest::compact::plan_read(&mut &bytes[..], len).expect("first read");
    let actual = ocix::manifest::Compact::from_tree(a).expect("actual manifest is valid");
    let mut streamed = Vec::new();
    let n =
        ocix::diff::diff_read(&mut &bytes[..], len, &plan, &actual, opts, |f| streamed.push(f)).expect("second read");
    assert_eq!(streamed, whole, "streamed findings differ from whole ones");
    assert_eq!(n, whole.len() as u64);
    whole
}
use ocix::manifest::{Dev, Digest, Entry, File, Kind, KindCode, Manifest, Time};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

// ------------------------------------------------------------ hand-built trees

/// Inserts `e` at `path`, creating parent directories.
fn put(m: &mut Manifest, path: &str, e: Entry) {
    let mut cur = &mut m.root;
    let comps: Vec<&str> = path.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let Kind::Dir(children) = &mut cur.kind else { panic!("{path}: parent not a dir") };
        if i + 1 == comps.len() {
            children.insert(c.as_bytes().to_vec(), e);
            return;
        }
        cur = children.entry(c.as_bytes().to_vec()).or_insert_with(Entry::empty_dir);
    }
}

/// Mutable access to the entry at `path`.
fn at<'a>(m: &'a mut Manifest, path: &str) -> &'a mut Entry {
    let mut cur = &mut m.root;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let Kind::Dir(children) = &mut cur.kind else { panic!("{path}: not found") };
        cur = children.get_mut(c.as_bytes()).unwrap_or_else(|| panic!("{path}: not found"));
    }
    cur
}

fn file_of(e: &mut Entry) -> &mut File {
    match &mut e.kind {
        Kind::File(f) => f,
        k => panic!("not a file: {k:?}"),
    }
}

/// A tree with one of everything.
fn base() -> Manifest {
    let mut m = Manifest::default();
    let mut passwd = file(b"root:x:0:0::/root:/bin/sh\n");
    passwd.meta.mtime = Time { sec: 1_700_000_000, nsec: 5 };
    passwd.meta.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
    passwd.meta.xattrs.insert(b"user.b".to_vec(), b"2".to_vec());
    put(&mut m, "etc", Entry::empty_dir());
    put(&mut m, "etc/passwd", passwd);
    put(&mut m, "etc/passwd-", Entry::new(Kind::Hardlink(b"etc/passwd".to_vec())));
    let mut big = file(&[1u8; 3 * 4096]);
    file_of(&mut big).zeros = vec![(1, 1)];
    put(&mut m, "big", big);
    put(&mut m, "bin", Entry::new(Kind::Symlink(b"usr/bin".to_vec())));
    put(&mut m, "dev/null", Entry::new(Kind::Char(Dev { major: 1, minor: 3 })));
    put(&mut m, "dev/loop0", Entry::new(Kind::Block(Dev { major: 7, minor: 0 })));
    put(&mut m, "run/fifo", Entry::new(Kind::Fifo));
    put(&mut m, "usr/bin/sh", file(b"#!"));
    put(&mut m, "usr/share/doc/x", file(b"doc"));
    m.to_bytes().expect("base manifest is valid");
    m
}

fn run_diff(e: &Manifest, a: &Manifest) -> Vec<Finding> {
    diff(e, a, &DiffOptions::default())
}

/// The only finding; fails if there are none or several.
fn only(e: &Manifest, a: &Manifest) -> Finding {
    let f = run_diff(e, a);
    assert_eq!(f.len(), 1, "expected one finding, got {}", show(&f));
    f.into_iter().next().unwrap()
}

fn show(f: &[Finding]) -> String {
    f.iter().map(|x| format!("\n  {x}")).collect()
}

fn changed(f: &Finding) -> (&str, Field, &Value, &Value) {
    match &f.what {
        What::Changed { field, expected, actual, .. } => {
            (std::str::from_utf8(&f.path).unwrap(), *field, expected, actual)
        }
        w => panic!("not a change: {w:?}"),
    }
}

#[test]
fn identical_trees_have_no_findings() {
    assert_eq!(run_diff(&base(), &base()), vec![]);
    assert_eq!(run_diff(&Manifest::default(), &Manifest::default()), vec![]);
}

#[test]
fn mode_uid_gid_each_reported_alone() {
    let e = base();
    let mut a = base();
    at(&mut a, "etc").meta.mode = 0o700;
    let f = only(&e, &a);
    assert_eq!(changed(&f), ("etc", Field::Mode, &Value::Mode(0o755), &Value::Mode(0o700)));
    assert_eq!(f.to_string(), "/etc: mode 0755 -> 0700");

    let mut a = base();
    at(&mut a, "usr/bin/sh").meta.uid = 1000;
    let f = only(&e, &a);
    assert_eq!(changed(&f), ("usr/bin/sh", Field::Uid, &Value::Id(0), &Value::Id(1000)));
    assert_eq!(f.to_string(), "/usr/bin/sh: uid 0 -> 1000");

    let mut a = base();
    at(&mut a, "dev/null").meta.gid = 5;
    assert_eq!(changed(&only(&e, &a)), ("dev/null", Field::Gid, &Value::Id(0), &Value::Id(5)));

    // the root itself
    let mut a = base();
    a.root.meta.mode = 0o750;
    let f = only(&e, &a);
    assert_eq!(f.path, b"");
    assert_eq!(f.to_string(), "/: mode 0755 -> 0750");
}

#[test]
fn size_digest_zeros_each_reported() {
    let e = base();
    // same size, other content: digest only
    let mut a = base();
    file_of(at(&mut a, "usr/bin/sh")).digest = Some(Digest::of(b"#?"));
    let f = only(&e, &a);
    assert_eq!(
        changed(&f),
        ("usr/bin/sh", Field::Digest, &Value::Digest(Some(Digest::of(b"#!"))), &Value::Digest(Some(Digest::of(b"#?"))))
    );
    assert_eq!(f.to_string(), format!("/usr/bin/sh: digest {} -> {}", Digest::of(b"#!"), Digest::of(b"#?")));

    // other size and content: both, size first
    let mut a = base();
    *at(&mut a, "usr/bin/sh") = file(b"#!/bin/sh");
    let f = run_diff(&e, &a);
    let fields: Vec<Field> = f.iter().map(|x| changed(x).1).collect();
    assert_eq!(fields, vec![Field::Size, Field::Digest], "{}", show(&f));
    assert_eq!(f[0].to_string(), "/usr/bin/sh: size 2 -> 9");

    // truncated to empty: the digest becomes none
    let mut a = base();
    *at(&mut a, "usr/bin/sh") = file(b"");
    let f = run_diff(&e, &a);
    assert_eq!(changed(&f[1]).3, &Value::Digest(None));
    assert!(f[1].to_string().ends_with("-> (none)"), "{}", f[1]);

    // hole map only
    let mut a = base();
    file_of(at(&mut a, "big")).zeros = vec![(0, 2)];
    let f = only(&e, &a);
    assert_eq!(changed(&f), ("big", Field::Zeros, &Value::Zeros(vec![(1, 1)]), &Value::Zeros(vec![(0, 2)])));
    assert_eq!(f.to_string(), "/big: zeros [1+1] -> [0+2]");
}

#[test]
fn each_xattr_added_removed_changed_is_its_own_finding() {
    let e = base();
    let mut a = base();
    let x = &mut at(&mut a, "etc/passwd").meta.xattrs;
    x.remove(&b"user.a"[..]);
    x.insert(b"user.b".to_vec(), b"two".to_vec());
    x.insert(b"user.c".to_vec(), vec![0, 0xff]);
    // passwd- is a hardlink: it shows the same inode's changes
    let f = run_diff(&e, &a);
    let lines: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    assert_eq!(
        lines,
        [
            "/etc/passwd: xattr user.a removed",
            "/etc/passwd: xattr user.b changed",
            "/etc/passwd: xattr user.c added",
            "/etc/passwd-: xattr user.a removed",
            "/etc/passwd-: xattr user.b changed",
            "/etc/passwd-: xattr user.c added",
        ]
    );
    match &f[1].what {
        What::Changed { field: Field::Xattr, xattr: Some(n), expected, actual } => {
            assert_eq!(n, b"user.b");
            assert_eq!(expected, &Value::Bytes(b"2".to_vec()));
            assert_eq!(actual, &Value::Bytes(b"two".to_vec()));
        }
        w => panic!("{w:?}"),
    }
    let j = serde_json::to_value(&f[2]).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"path": "/etc/passwd", "what": "changed", "field": "xattr", "xattr": "user.c", "expected": null, "actual": "00ff"})
    );

    // one xattr ignored by name, or all of them
    let mut o = DiffOptions::default();
    o.ignore_spec("xattr:user.b").unwrap();
    assert_eq!(diff(&e, &a, &o).len(), 4);
    let mut o = DiffOptions::default();
    o.ignore_spec("xattr").unwrap();
    assert_eq!(diff(&e, &a, &o), vec![]);
}

#[test]
fn mtime_seconds_and_nanoseconds() {
    let e = base();
    let mut a = base();
    at(&mut a, "usr/bin").meta.mtime.nsec = 1;
    let f = only(&e, &a);
    assert_eq!(
        changed(&f),
        ("usr/bin", Field::Mtime, &Value::Time(Time::default()), &Value::Time(Time { sec: 0, nsec: 1 }))
    );
    assert_eq!(f.to_string(), "/usr/bin: mtime 1970-01-01T00:00:00.000000000Z -> 1970-01-01T00:00:00.000000001Z");
    assert_eq!(serde_json::to_value(&f).unwrap()["actual"], serde_json::json!({"sec": 0, "nsec": 1}));

    let mut a = base();
    at(&mut a, "bin").meta.mtime.sec = -1;
    assert_eq!(changed(&only(&e, &a)).1, Field::Mtime);
}

#[test]
fn symlink_target_and_device_numbers() {
    let e = base();
    let mut a = base();
    at(&mut a, "bin").kind = Kind::Symlink(b"/usr/bin\n".to_vec());
    let f = only(&e, &a);
    assert_eq!(
        changed(&f),
        ("bin", Field::Target, &Value::Target(b"usr/bin".to_vec()), &Value::Target(b"/usr/bin\n".to_vec()))
    );
    assert_eq!(f.to_string(), "/bin: target usr/bin -> /usr/bin\\n");

    let mut a = base();
    at(&mut a, "dev/loop0").kind = Kind::Block(Dev { major: 7, minor: 1 });
    let f = only(&e, &a);
    assert_eq!(f.to_string(), "/dev/loop0: rdev 7,0 -> 7,1");
    assert_eq!(serde_json::to_value(&f).unwrap()["expected"], serde_json::json!({"major": 7, "minor": 0}));
}

#[test]
fn type_change_skips_type_specific_fields_and_children() {
    let e = base();
    // char -> block with other numbers: type only, no rdev
    let mut a = base();
    at(&mut a, "dev/null").kind = Kind::Block(Dev { major: 9, minor: 9 });
    let f = only(&e, &a);
    assert_eq!(changed(&f), ("dev/null", Field::Type, &Value::Type(KindCode::Char), &Value::Type(KindCode::Block)));
    assert_eq!(f.to_string(), "/dev/null: type char -> block");

    // directory -> fifo (same mode): type only, nothing about what was inside
    let mut a = base();
    let mut fifo = Entry::new(Kind::Fifo);
    fifo.meta.mode = 0o755;
    *at(&mut a, "usr") = fifo;
    let f = only(&e, &a);
    assert_eq!(f.to_string(), "/usr: type dir -> fifo");

    // file -> symlink: type, then the common fields that differ (mode)
    let mut a = base();
    *at(&mut a, "usr/bin/sh") = Entry::new(Kind::Symlink(b"dash".to_vec()));
    let f = run_diff(&e, &a);
    let lines: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    assert_eq!(lines, ["/usr/bin/sh: type file -> symlink", "/usr/bin/sh: mode 0644 -> 0777"]);
}

#[test]
fn missing_and_extra_directories_are_reported_once() {
    let e = base();
    let mut a = base();
    let Kind::Dir(c) = &mut a.root.kind else { unreachable!() };
    c.remove(&b"usr"[..]);
    put(&mut a, "opt/x/y", file(b"y"));
    put(&mut a, "etc/shadow", file(b"s"));
    let Kind::Dir(c) = &mut at(&mut a, "run").kind else { unreachable!() };
    c.remove(&b"fifo"[..]);
    let f = run_diff(&e, &a);
    let lines: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    // manifest order: etc/shadow after etc/passwd-, opt before run, usr last
    assert_eq!(lines, ["extra /etc/shadow", "extra /opt", "missing /run/fifo", "missing /usr"]);
    assert_eq!(f[1].what, What::Extra);
    assert_eq!(f[3].what, What::Missing);
    assert_eq!(serde_json::to_value(&f[3]).unwrap(), serde_json::json!({"path": "/usr", "what": "missing"}));
}

#[test]
fn hardlinks_break_add_and_follow_the_inode() {
    let e = base();
    // break: passwd- becomes its own file with the same content and metadata
    let mut a = base();
    let primary = at(&mut a, "etc/passwd").clone();
    *at(&mut a, "etc/passwd-") = primary;
    let f = only(&e, &a);
    assert_eq!(changed(&f), ("etc/passwd-", Field::Link, &Value::Path(b"etc/passwd".to_vec()), &Value::None));
    assert_eq!(f.to_string(), "/etc/passwd-: link /etc/passwd -> (none)");
    assert_eq!(serde_json::to_value(&f).unwrap()["expected"], "/etc/passwd");

    // add: the reverse
    let f = only(&a, &e);
    assert_eq!(f.to_string(), "/etc/passwd-: link (none) -> /etc/passwd");

    // relink to another inode: the group and the inode's fields differ
    let mut a = base();
    at(&mut a, "etc/passwd-").kind = Kind::Hardlink(b"big".to_vec());
    let f = run_diff(&e, &a);
    assert_eq!(
        changed(&f[0]),
        ("etc/passwd-", Field::Link, &Value::Path(b"etc/passwd".to_vec()), &Value::Path(b"big".to_vec()))
    );
    assert!(f.iter().all(|x| x.path == b"etc/passwd-"), "{}", show(&f));
    assert!(f.iter().any(|x| changed(x).1 == Field::Size));

    // a change to the inode shows on every name; a hardlink's type is 'file'
    let mut a = base();
    at(&mut a, "etc/passwd").meta.mode = 0o600;
    let f = run_diff(&e, &a);
    let lines: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    assert_eq!(lines, ["/etc/passwd: mode 0644 -> 0600", "/etc/passwd-: mode 0644 -> 0600"]);
}

#[test]
fn ignore_masks_fields() {
    let e = base();
    let mut a = base();
    at(&mut a, "etc").meta.mode = 0o700;
    at(&mut a, "etc").meta.mtime.sec = 5;
    at(&mut a, "usr/bin/sh").meta.uid = 1;
    let mut o = DiffOptions::default();
    o.ignore_spec("mtime").unwrap();
    o.ignore_spec("uid").unwrap();
    let f = diff(&e, &a, &o);
    assert_eq!(f.len(), 1, "{}", show(&f));
    assert_eq!(f[0].to_string(), "/etc: mode 0755 -> 0700");
    assert!(o.ignore_spec("colour").is_err());
    assert!(o.ignore_spec("xattr:").is_err());
    assert_eq!("zeros".parse::<Field>().unwrap(), Field::Zeros);
}

#[test]
fn advisory_names_are_ignored_unless_asked() {
    let e = base();
    let mut a = base();
    at(&mut a, "etc/passwd").meta.uname = Some("root".into());
    assert_eq!(run_diff(&e, &a), vec![]);
    let mut o = DiffOptions::default();
    o.compare(Field::Uname);
    let f = diff(&e, &a, &o);
    assert_eq!(f.len(), 2, "{}", show(&f)); // passwd and its hardlink
    assert_eq!(f[0].to_string(), "/etc/passwd: uname (none) -> root");
}

#[test]
fn excludes_mask_paths_and_descendants_on_both_sides() {
    let e = base();
    let mut a = base();
    at(&mut a, "usr/share/doc/x").meta.mode = 0o600; // under an excluded dir
    put(&mut a, "usr/share/extra", file(b"")); // extra, excluded by path
    let Kind::Dir(c) = &mut at(&mut a, "dev").kind else { unreachable!() };
    c.remove(&b"null"[..]); // missing, excluded by name
    at(&mut a, "usr/bin/sh").meta.mode = 0o600; // not excluded
    let excludes = Excludes::new(&["doc".to_string(), "/usr/share/extra".to_string(), "null".to_string()]).unwrap();
    let o = DiffOptions { excludes, ..DiffOptions::default() };
    let f = diff(&e, &a, &o);
    let lines: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    assert_eq!(lines, ["/usr/bin/sh: mode 0644 -> 0600"]);
    // without the excludes all four show
    assert_eq!(run_diff(&e, &a).len(), 4);
}

#[test]
fn odd_paths_are_escaped_in_text_and_json() {
    let mut e = Manifest::default();
    put(&mut e, "a\nb", file(b"x"));
    let raw = Entry::empty_dir();
    let Kind::Dir(c) = &mut e.root.kind else { unreachable!() };
    c.insert(b"\xff\\".to_vec(), raw);
    let a = Manifest::default();
    let f = run_diff(&e, &a);
    assert_eq!(f[0].to_string(), "missing /a\\nb");
    assert_eq!(f[1].to_string(), "missing /\\xff\\\\");
    assert_eq!(serde_json::to_value(&f[1]).unwrap()["path"], "/\\xff\\\\");
}

// ------------------------------------------------------------ real trees

fn scan(dir: &Path) -> Manifest {
    ocix::scan::scan_dir(dir, None, &ocix::scan::ScanOptions::default()).expect("scan").manifest.to_tree()
}

fn sh(script: &str, dir: &Path) {
    let st = Command::new("sh").arg("-ec").arg(script).current_dir(dir).status().unwrap();
    assert!(st.success(), "{script}");
}

fn lines(f: &[Finding]) -> Vec<String> {
    f.iter().map(|x| x.to_string()).collect()
}

/// Builds the sample tree, scans it, runs `change` in it, scans again and
/// returns the findings as lines.
fn after(change: &str) -> Vec<String> {
    let t = tempfile::tempdir().unwrap();
    make_tree(t.path(), false);
    let before = scan(t.path());
    sh(change, t.path());
    lines(&run_diff(&before, &scan(t.path())))
}

fn has_tool(name: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success())
}

/// Shell that keeps the mtime of `$1` across the commands after it:
/// `keep DIR; CHANGE; back`.
const KEEP: &str = "keep() { kept=$1; t=$(stat -c %.9Y \"$1\"); }; back() { touch -h -m -d @$t \"$kept\"; }; ";

#[test]
fn disk_chmod_chown_touch_truncate() {
    assert_eq!(after("chmod 600 empty-file"), ["/empty-file: mode 0644 -> 0600"]);
    let f = after("touch -m -d @1700000000.25 empty-file");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].starts_with("/empty-file: mtime ") && f[0].ends_with(" -> 2023-11-14T22:13:20.250000000Z"), "{f:?}");
    if is_root() {
        assert_eq!(after("chown 1234:5678 empty-file"), ["/empty-file: uid 0 -> 1234", "/empty-file: gid 0 -> 5678"]);
        assert_eq!(after("chown -h 1234 link"), ["/link: uid 65534 -> 1234"]);
    }
    // size, content and hole map; the file's mtime kept
    let f = after(&format!("{KEEP} keep a/b/zero4k; truncate -s 8192 a/b/zero4k; back"));
    assert_eq!(
        f,
        [
            "/a/b/zero4k: size 4096 -> 8192".to_string(),
            format!("/a/b/zero4k: digest {} -> {}", Digest::of(&[0; 4096]), Digest::of(&[0; 8192])),
            "/a/b/zero4k: zeros [0+1] -> [0+2]".to_string(),
        ]
    );
}

#[test]
fn disk_xattrs() {
    if !has_tool("setfattr") {
        eprintln!("setfattr missing: skipping the on-disk xattr case (covered on hand-built manifests)");
        return;
    }
    let f = after("setfattr -n user.new -v 1 a && setfattr -x user.dir a && setfattr -n user.greeting -v hey a/hello");
    assert_eq!(
        f,
        [
            "/a: xattr user.dir removed",
            "/a: xattr user.new added",
            // a/hello's inode has three names; a/b/hl-2 is the first
            "/a/b/hl-2: xattr user.greeting changed",
            "/a/hello: xattr user.greeting changed",
            "/hl-1: xattr user.greeting changed",
        ]
    );
}

#[test]
fn disk_hardlinks_break_and_add() {
    // break hl-1 off: a copy with the same content and metadata, new inode
    let f = after(&format!("{KEEP} keep .; cp -a hl-1 x && rm hl-1 && mv x hl-1; back"));
    assert_eq!(f, ["/hl-1: link /a/b/hl-2 -> (none)"]);
    // make names/-dash another name of empty-file (which comes first)
    let f = after(&format!("{KEEP} keep names; rm names/-dash && ln empty-file names/-dash; back"));
    assert_eq!(f[0], "/names/-dash: link (none) -> /empty-file", "{f:?}");
    assert!(f[1..].iter().all(|l| l.starts_with("/names/-dash: ")), "{f:?}");
}

#[test]
fn disk_missing_extra_symlink_target() {
    let f = after("rm -r a/b && mkdir -p new/deep && ln -sfn elsewhere link");
    assert!(f.contains(&"missing /a/b".to_string()), "{f:?}");
    assert!(f.contains(&"extra /new".to_string()), "{f:?}");
    assert!(
        !f.iter().any(|l| l.starts_with("extra /new/") || l.starts_with("missing /a/b/")),
        "descendants listed: {f:?}"
    );
    // a/b/hl-2 was the first name of a/hello's inode: a/hello now is
    assert!(f.contains(&"/a/hello: link /a/b/hl-2 -> (none)".to_string()), "{f:?}");
    assert!(f.contains(&"/hl-1: link /a/b/hl-2 -> /a/hello".to_string()), "{f:?}");
    assert!(f.contains(&"/link: target a/hello -> elsewhere".to_string()), "{f:?}");
}

#[test]
fn disk_device_numbers() {
    if !is_root() {
        eprintln!("not root: device nodes cannot be made");
        return;
    }
    let f = after(&format!("{KEEP} keep .; rm null && mknod -m 666 null c 1 5; back"));
    assert_eq!(f[0], "/null: rdev 1,3 -> 1,5", "{f:?}");
    assert!(f[1..].iter().all(|l| l.starts_with("/null: mtime")), "{f:?}");
}

// ------------------------------------------------------------ the binary

fn ocix_diff(args: &[&OsStr]) -> (i32, String, String) {
    let mut all: Vec<&OsStr> = vec![OsStr::new("diff")];
    all.extend_from_slice(args);
    let o = run(&all);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn write_manifest(path: &Path, m: &Manifest) {
    std::fs::write(path, m.to_bytes().unwrap()).unwrap();
}

#[test]
fn cli_exit_codes_and_output() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    make_tree(&root, false);
    let good = t.path().join("good.cbor");
    write_manifest(&good, &scan(&root));

    // 0: no drift, no output
    let (code, out, err) = ocix_diff(&[root.as_os_str(), good.as_os_str()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    // 1: drift, one line per finding
    chmod(&root.join("perm/setuid"), 0o755);
    let names = std::fs::metadata(root.join("names")).unwrap();
    std::fs::remove_file(root.join("names/-dash")).unwrap();
    set_mtime(&root.join("names"), names.mtime(), names.mtime_nsec());
    let (code, out, err) = ocix_diff(&[root.as_os_str(), good.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "missing /names/-dash\n/perm/setuid: mode 4755 -> 0755\n");

    // --json: an array of objects
    let (code, out, _) = ocix_diff(&[root.as_os_str(), good.as_os_str(), OsStr::new("--json")]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        j,
        serde_json::json!([
            {"path": "/names/-dash", "what": "missing"},
            {"path": "/perm/setuid", "what": "changed", "field": "mode", "expected": "4755", "actual": "0755"},
        ])
    );

    // --ignore and --exclude mask everything: 0
    let (code, out, err) = ocix_diff(&[
        root.as_os_str(),
        good.as_os_str(),
        OsStr::new("--ignore"),
        OsStr::new("mode,mtime"),
        OsStr::new("--exclude=-dash"),
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, _, _) =
        ocix_diff(&[root.as_os_str(), good.as_os_str(), OsStr::new("--json"), OsStr::new("--ignore=mode,mtime")]);
    assert_eq!(code, 1);

    // two manifests
    let now = t.path().join("now.cbor");
    write_manifest(&now, &scan(&root));
    assert_eq!(ocix_diff(&[now.as_os_str(), good.as_os_str()]).0, 1);
    assert_eq!(ocix_diff(&[now.as_os_str(), now.as_os_str()]).0, 0);
    // the JSON array is written as findings stream out: exact framing
    let (code, out, _) = ocix_diff(&[now.as_os_str(), now.as_os_str(), OsStr::new("--json")]);
    assert_eq!((code, out.as_str()), (0, "[\n]\n"));
    let (code, out, _) = ocix_diff(&[root.as_os_str(), good.as_os_str(), OsStr::new("--json")]);
    assert_eq!(code, 1);
    assert!(out.starts_with("[\n{") && out.ends_with("}\n]\n") && out.matches("},\n{").count() == 1, "{out}");

    // 2: errors, with a message naming the problem
    let garbage = t.path().join("garbage");
    std::fs::write(&garbage, b"not cbor").unwrap();
    for (args, what) in [
        (vec![root.as_os_str(), garbage.as_os_str()], "garbage"),
        (vec![root.as_os_str(), OsStr::new("/nonexistent/m.cbor")], "nonexistent"),
        (vec![OsStr::new("/nonexistent/dir"), good.as_os_str()], "nonexistent"),
        (vec![root.as_os_str()], "bundle"),
        (vec![good.as_os_str()], "MANIFEST"),
        (vec![root.as_os_str(), good.as_os_str(), OsStr::new("--ignore=colour")], "colour"),
        (vec![root.as_os_str(), good.as_os_str(), OsStr::new("--exclude=a[b")], "a[b"),
    ] {
        let (code, out, err) = ocix_diff(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(what), "{args:?}: error does not name {what}: {err}");
    }
}

#[test]
fn cli_bundle_form() {
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    make_tree(&rootfs, false);
    write_manifest(&t.path().join("ocix.cbor"), &scan(&rootfs));
    let (code, out, err) = ocix_diff(&[t.path().as_os_str()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    std::fs::write(rootfs.join("a/hello"), b"HELLO, world\n").unwrap();
    let (code, out, _) = ocix_diff(&[t.path().as_os_str(), OsStr::new("--ignore=mtime")]);
    assert_eq!(code, 1);
    // the file has three names; each shows the changed content
    assert_eq!(out.lines().filter(|l| l.contains(": digest ")).count(), 3, "{out}");
}

/// Runs `ocix diff ARGS` as nobody (65534).
fn diff_as_nobody(args: &[&OsStr]) -> (i32, String, String) {
    let o = ocix_as_nobody().arg("diff").args(args).output().expect("run setpriv");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn cli_rootless_diff_as_unprivileged_user() {
    if !is_root() {
        eprintln!("not root: cannot drop to another user");
        return;
    }
    // A tree as an unprivileged unpack leaves it: everything owned by the
    // unpacking user (nobody), the intended owner of f in its xattr.
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let root = t.path().join("r");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(root.join("d")).unwrap();
    write(&root.join("d/f"), b"x");
    let payload = ocix::rootless::encode(1000, 1000).unwrap().unwrap();
    rustix::fs::setxattr(root.join("d/f"), "user.rootlesscontainers", &payload, rustix::fs::XattrFlags::empty())
        .unwrap();
    for p in [&root, &root.join("d"), &root.join("d/f")] {
        std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
    }
    // The expected manifest: the tree as it was meant to be.
    let mut m = scan(&root);
    for p in ["", "d", "d/f"] {
        let e = at(&mut m, p);
        e.meta.xattrs.clear();
        (e.meta.uid, e.meta.gid) = if p == "d/f" { (1000, 1000) } else { (0, 0) };
    }
    let exp = t.path().join("m.cbor");
    write_manifest(&exp, &m);

    let (code, out, err) = diff_as_nobody(&[root.as_os_str(), exp.as_os_str(), OsStr::new("--rootless")]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    // without --rootless the real owners show
    let (code, out, _) = diff_as_nobody(&[root.as_os_str(), exp.as_os_str()]);
    assert_eq!(code, 1);
    assert!(out.contains("/d/f: uid 1000 -> 65534"), "{out}");
    // a file nobody cannot read is an error, not drift
    write(&root.join("secret"), b"s");
    chmod(&root.join("secret"), 0o600);
    let (code, _, err) = diff_as_nobody(&[root.as_os_str(), exp.as_os_str(), OsStr::new("--rootless")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("secret"), "{err}");
}

// ------------------------------------------- hardlinks to symlinks, fifos, devices

/// `base()` with a second name for its symlink, fifo and char device.
fn base_special_links() -> Manifest {
    let mut m = base();
    put(&mut m, "bin2", Entry::new(Kind::Hardlink(b"bin".to_vec())));
    put(&mut m, "run/fifo2", Entry::new(Kind::Hardlink(b"run/fifo".to_vec())));
    put(&mut m, "dev/null2", Entry::new(Kind::Hardlink(b"dev/null".to_vec())));
    m.to_bytes().expect("valid");
    m
}

#[test]
fn hardlinked_symlink_fifo_device_groups_break_and_follow_the_inode() {
    let e = base_special_links();
    for (name, first) in [("bin2", "bin"), ("run/fifo2", "run/fifo"), ("dev/null2", "dev/null")] {
        // broken off: an entry of its own, equal in every field
        let mut a = base_special_links();
        *at(&mut a, name) = at(&mut a, first).clone();
        let f = only(&e, &a);
        assert_eq!(f.to_string(), format!("/{name}: link /{first} -> (none)"));
        // and linked again
        assert_eq!(only(&a, &e).to_string(), format!("/{name}: link (none) -> /{first}"));
    }
    // a change to the inode shows on every name, with the inode's type
    let mut a = base_special_links();
    at(&mut a, "bin").kind = Kind::Symlink(b"usr/sbin".to_vec());
    assert_eq!(lines(&run_diff(&e, &a)), ["/bin: target usr/bin -> usr/sbin", "/bin2: target usr/bin -> usr/sbin"]);
    let mut a = base_special_links();
    at(&mut a, "dev/null").kind = Kind::Char(Dev { major: 1, minor: 5 });
    assert_eq!(lines(&run_diff(&e, &a)), ["/dev/null: rdev 1,3 -> 1,5", "/dev/null2: rdev 1,3 -> 1,5"]);
    // a name that became another type: its type, not its group
    let mut a = base_special_links();
    *at(&mut a, "run/fifo2") = file(b"");
    assert_eq!(lines(&run_diff(&e, &a))[0], "/run/fifo2: type fifo -> file");
}

#[test]
fn disk_hardlinked_symlink_and_fifo_break_and_relink() {
    let t = tempfile::tempdir().unwrap();
    sh("ln -s target s && ln -P s s2 && mkfifo f && ln f f2 && touch -h -d @1600000000 s f . ", t.path());
    let before = scan(t.path());
    assert_eq!(before.get(b"s2").unwrap().kind, Kind::Hardlink(b"s".to_vec()));
    assert_eq!(before.get(b"f2").unwrap().kind, Kind::Hardlink(b"f".to_vec()));
    // copies with the same metadata: only the broken groups show
    sh(&format!("{KEEP} keep .; cp -a s x && mv x s2 && cp -a f y && mv y f2; back"), t.path());
    let broken = scan(t.path());
    assert_eq!(lines(&run_diff(&before, &broken)), ["/f2: link /f -> (none)", "/s2: link /s -> (none)"]);
    sh(&format!("{KEEP} keep .; ln -P -f s s2 && ln -f f f2; back"), t.path());
    assert_eq!(lines(&run_diff(&before, &scan(t.path()))), Vec::<String>::new());
    assert_eq!(lines(&run_diff(&broken, &scan(t.path()))), ["/f2: link (none) -> /f", "/s2: link (none) -> /s"]);
}

// ------------------------------------------------------------ the merge walk

/// A directory chain `root/0/1/.../n-1` ending in a file `f`.
fn chain(m: &mut Manifest, root: &str, n: usize) {
    let mut p = root.to_string();
    for i in 0..n {
        p.push_str(&format!("/{i}"));
    }
    put(m, &format!("{p}/f"), file(b"deep"));
}

#[test]
fn merge_walk_reports_one_sided_entries_once_in_manifest_order() {
    let mut e = Manifest::default();
    put(&mut e, "a/x", file(b"x"));
    chain(&mut e, "b", 40);
    put(&mut e, "c", file(b"c"));
    put(&mut e, "d/e", file(b"e"));
    put(&mut e, "m", Entry::empty_dir());
    put(&mut e, "z", file(b"z"));
    let mut a = Manifest::default();
    put(&mut a, "a/x", file(b"x"));
    put(&mut a, "a/y", file(b"y"));
    chain(&mut a, "bb", 40);
    put(&mut a, "c", file(b"c"));
    put(&mut a, "d", file(b"d"));
    chain(&mut a, "m/new", 3);
    put(&mut a, "zz", file(b"zz"));
    let want = [
        "extra /a/y",
        "missing /b",
        "extra /bb",
        "/d: type dir -> file",
        "/d: mode 0755 -> 0644",
        "extra /m/new",
        "missing /z",
        "extra /zz",
    ];
    assert_eq!(lines(&run_diff(&e, &a)), want);
    // the same, streamed from the compact forms decoded from bytes
    let ce = ocix::manifest::Compact::from_bytes(&e.to_bytes().unwrap()).unwrap();
    let ca = ocix::manifest::Compact::from_bytes(&a.to_bytes().unwrap()).unwrap();
    let mut streamed = Vec::new();
    let n = ocix::diff::diff_each(&ce, &ca, &DiffOptions::default(), |f| streamed.push(f.to_string()));
    assert_eq!(streamed, want);
    assert_eq!(n, want.len() as u64);
    // and reversed, every missing is extra and the reverse
    let back: Vec<String> = lines(&run_diff(&a, &e));
    assert_eq!(
        back,
        [
            "missing /a/y",
            "extra /b",
            "missing /bb",
            "/d: type file -> dir",
            "/d: mode 0644 -> 0755",
            "missing /m/new",
            "extra /z",
            "missing /zz"
        ]
    );
    // one side empty: each top-level entry once
    assert_eq!(
        lines(&run_diff(&Manifest::default(), &a)),
        ["extra /a", "extra /bb", "extra /c", "extra /d", "extra /m", "extra /zz"]
    );
}

#[test]
fn merge_walk_compares_hardlinks_through_their_first_names_on_each_side() {
    // the same inode named in different places on each side
    let mut e = Manifest::default();
    put(&mut e, "a/f", file(b"one"));
    put(&mut e, "b/g", Entry::new(Kind::Hardlink(b"a/f".to_vec())));
    put(&mut e, "c", Entry::new(Kind::Hardlink(b"a/f".to_vec())));
    let mut a = e.clone();
    // c now links to a file whose content changed, g is a copy
    *file_of(at(&mut a, "a/f")) = File { size: 3, digest: Some(Digest::of(b"two")), zeros: vec![] };
    put(&mut a, "b/g", file(b"one"));
    assert_eq!(
        lines(&run_diff(&e, &a)),
        [
            format!("/a/f: digest {} -> {}", Digest::of(b"one"), Digest::of(b"two")),
            "/b/g: link /a/f -> (none)".to_string(),
            format!("/c: digest {} -> {}", Digest::of(b"one"), Digest::of(b"two")),
        ]
    );
}
