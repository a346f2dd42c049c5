//! `ocix show`: the text, JSON and mtree renderings, and the mtree spec
//! checked by the mtree tool itself against the real tree it came from.

mod common;

use common::*;
use ocix::manifest::{Dev, Digest, Entry, File, Kind, Manifest, Time};
use ocix::render::{write_json, write_mtree, write_text};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

fn put(m: &mut Manifest, name: &[u8], e: Entry) {
    let Kind::Dir(c) = &mut m.root.kind else { unreachable!() };
    c.insert(name.to_vec(), e);
}

/// A small tree with one entry of each kind and an odd name.
fn sample() -> Manifest {
    let mut m = Manifest::default();
    m.root.meta.mtime = Time { sec: 1_714_557_600, nsec: 0 };
    let mut f = Entry::new(Kind::File(File { size: 8192, digest: Some(Digest::of(&[0; 8192])), zeros: vec![(0, 2)] }));
    f.meta.mtime = Time { sec: 1, nsec: 250_000_000 };
    f.meta.uid = 1000;
    f.meta.gid = 100;
    f.meta.uname = Some("user".into());
    f.meta.xattrs.insert(b"user.k".to_vec(), b"v1".to_vec());
    put(&mut m, b"a", f);
    put(&mut m, b"b", Entry::new(Kind::Hardlink(b"a".to_vec())));
    put(&mut m, b"l", Entry::new(Kind::Symlink(b"a b".to_vec())));
    let mut null = Entry::new(Kind::Char(Dev { major: 1, minor: 3 }));
    null.meta.mode = 0o666;
    put(&mut m, b"null", null);
    put(&mut m, b"odd\n\\\xff", Entry::new(Kind::Fifo));
    let mut d = Entry::empty_dir();
    d.meta.mtime = Time { sec: -1, nsec: 5 };
    put(&mut m, b"sub", d);
    m.to_bytes().expect("valid");
    m
}

fn render(f: fn(&Manifest, &mut dyn std::io::Write) -> std::io::Result<()>, m: &Manifest) -> String {
    let mut v = Vec::new();
    f(m, &mut v).unwrap();
    String::from_utf8(v).unwrap()
}

#[test]
fn text_lists_every_entry_in_order() {
    let d = Digest::of(&[0; 8192]);
    let want = format!(
        "\
dir      0755 0:0                  - 2024-05-01T10:00:00.000000000Z /
file     0644 1000:100          8192 1970-01-01T00:00:01.250000000Z /a {d} zeros=1 xattrs=1
hardlink 0644 1000:100          8192 1970-01-01T00:00:01.250000000Z /b => /a {d} zeros=1 xattrs=1
symlink  0777 0:0                  - 1970-01-01T00:00:00.000000000Z /l -> a b
char     0666 0:0                  - 1970-01-01T00:00:00.000000000Z /null dev=1,3
fifo     0644 0:0                  - 1970-01-01T00:00:00.000000000Z /odd\\n\\\\\\xff
dir      0755 0:0                  - 1969-12-31T23:59:59.000000005Z /sub
"
    );
    assert_eq!(render(write_text, &sample()), want);
}

#[test]
fn json_is_an_array_of_entry_objects() {
    let out = render(write_json, &sample());
    assert_eq!(out.lines().count(), 9, "one entry per line plus brackets:\n{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = j.as_array().unwrap();
    assert_eq!(a.len(), 7);
    assert_eq!(
        a[1],
        serde_json::json!({
            "path": "/a", "type": "file", "mode": "0644", "uid": 1000, "gid": 100, "uname": "user",
            "mtime": {"sec": 1, "nsec": 250_000_000}, "xattrs": {"user.k": "7631"},
            "size": 8192, "digest": Digest::of(&[0; 8192]).to_string(), "zeros": [[0, 2]],
        })
    );
    assert_eq!(a[2], serde_json::json!({"path": "/b", "type": "hardlink", "link": "/a"}));
    assert_eq!(a[3]["target"], "a b");
    assert_eq!(a[4]["rdev"], serde_json::json!({"major": 1, "minor": 3}));
    assert_eq!(a[5]["path"], "/odd\\n\\\\\\xff");
    assert_eq!(a[6]["mtime"], serde_json::json!({"sec": -1, "nsec": 5}));
    assert_eq!(a[0]["path"], "/");
}

#[test]
fn mtree_lines_and_escapes() {
    let out = render(write_mtree, &sample());
    let d = Digest::of(&[0; 8192]).hex();
    let want = format!(
        "\
#mtree
. type=dir mode=0755 uid=0 gid=0 time=1714557600.000000000
./a type=file mode=0644 uid=1000 gid=100 time=1.250000000 size=8192 nlink=2 sha256digest={d}
./b type=file mode=0644 uid=1000 gid=100 time=1.250000000 size=8192 nlink=2 sha256digest={d}
./l type=link mode=0777 uid=0 gid=0 time=0.000000000 nlink=1 link=a\\040b
./null type=char mode=0666 uid=0 gid=0 time=0.000000000 nlink=1 device=native,1,3
./odd\\012\\134\\377 type=fifo mode=0644 uid=0 gid=0 time=0.000000000 nlink=1
./sub type=dir mode=0755 uid=0 gid=0 time=-1.000000005
"
    );
    assert_eq!(out, want);
}

fn mtree_available() -> bool {
    Command::new("sh").arg("-c").arg("command -v mtree").output().is_ok_and(|o| o.status.success())
}

/// Runs `mtree -f spec -p dir`; returns (exit code, output).
fn mtree_check(spec: &Path, dir: &Path) -> (i32, String) {
    let o = Command::new("mtree").arg("-f").arg(spec).arg("-p").arg(dir).output().expect("run mtree");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn mtree_accepts_the_spec_of_a_real_tree() {
    if !mtree_available() {
        // `make test` and CI install mtree-netbsd: there it must be present.
        assert!(std::env::var_os("CI").is_none(), "mtree (mtree-netbsd) missing in CI");
        eprintln!("mtree not installed (apt-get install mtree-netbsd): spec not checked by mtree");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    make_tree(&root, false);
    // names mtree would misread: glob characters, comment sign, escapes
    let odd: [&[u8]; 10] =
        [b"g*x", b"gax", b"q?", b"qz", b"[xy]", b"x", b"#hash", b"back\\slash", b"tab\there", b"star*\\mix[?"];
    for name in odd {
        write(&root.join(OsStr::from_bytes(name)), name);
    }
    std::os::unix::fs::symlink("odd *target#\\", root.join("odd-link")).unwrap();
    std::fs::hard_link(root.join("g*x"), root.join("zz-link of g*x")).unwrap();
    set_mtime(&root, 1_700_000_000, 0);
    let m = ocix::scan::scan_dir(&root, None, &ocix::scan::ScanOptions::default()).unwrap().manifest.to_tree();
    let cbor = t.path().join("m.cbor");
    std::fs::write(&cbor, m.to_bytes().unwrap()).unwrap();
    let spec = t.path().join("spec");
    let o = run(&[OsStr::new("show"), OsStr::new("--mtree"), cbor.as_os_str(), OsStr::new("-o"), spec.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (code, text) = mtree_check(&spec, &root);
    assert_eq!((code, text.as_str()), (0, ""), "mtree found differences");

    // and mtree does see a change the spec covers
    chmod(&root.join("g*x"), 0o600);
    std::fs::remove_file(root.join("x")).unwrap();
    set_mtime(&root, 1_700_000_000, 0);
    let (code, text) = mtree_check(&spec, &root);
    assert!(text.contains("g*x") && text.contains("permissions"), "{code}: {text}");
    assert!(text.contains("missing: ./x"), "{code}: {text}");
    assert_ne!(code, 0, "{text}");
}

#[test]
fn cli_show_formats_and_output_file() {
    let t = tempfile::tempdir().unwrap();
    let m = sample();
    let cbor = t.path().join("m.cbor");
    std::fs::write(&cbor, m.to_bytes().unwrap()).unwrap();
    let o = run(&[OsStr::new("show"), cbor.as_os_str()]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8(o.stdout).unwrap(), render(write_text, &m));
    let o = run(&[OsStr::new("show"), OsStr::new("--json"), cbor.as_os_str()]);
    assert_eq!(String::from_utf8(o.stdout).unwrap(), render(write_json, &m));
    let out = t.path().join("out.mtree");
    let o = run(&[OsStr::new("show"), OsStr::new("--mtree"), cbor.as_os_str(), OsStr::new("-o"), out.as_os_str()]);
    assert!(o.status.success() && o.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), render(write_mtree, &m));
    // stdin
    let o = ocix().arg("show").arg("-").stdin(std::fs::File::open(&cbor).unwrap()).output().unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), render(write_text, &m));
    // errors exit 2
    let bad = t.path().join("bad");
    std::fs::write(&bad, b"\xd9").unwrap();
    let o = run(&[OsStr::new("show"), bad.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid OCIX manifest"));
    let o = run(&[OsStr::new("show"), OsStr::new("--json"), OsStr::new("--mtree"), cbor.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
}

// ------------------------------------------- hardlinks to symlinks, fifos, devices

/// `sample()` with a second name for its symlink, device and fifo.
fn sample_special_links() -> Manifest {
    let mut m = sample();
    put(&mut m, b"l2", Entry::new(Kind::Hardlink(b"l".to_vec())));
    put(&mut m, b"null2", Entry::new(Kind::Hardlink(b"null".to_vec())));
    put(&mut m, b"null3", Entry::new(Kind::Hardlink(b"null".to_vec())));
    put(&mut m, b"p", Entry::new(Kind::Hardlink(b"odd\n\\\xff".to_vec())));
    m.to_bytes().expect("valid");
    m
}

#[test]
fn hardlinks_to_special_entries_show_their_first_name() {
    let m = sample_special_links();
    let text = render(write_text, &m);
    for line in [
        "hardlink 0777 0:0                  - 1970-01-01T00:00:00.000000000Z /l2 => /l -> a b",
        "hardlink 0666 0:0                  - 1970-01-01T00:00:00.000000000Z /null2 => /null dev=1,3",
        "hardlink 0644 0:0                  - 1970-01-01T00:00:00.000000000Z /p => /odd\\n\\\\\\xff",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    let j: serde_json::Value = serde_json::from_str(&render(write_json, &m)).unwrap();
    let l2 = j.as_array().unwrap().iter().find(|e| e["path"] == "/l2").unwrap();
    assert_eq!(*l2, serde_json::json!({"path": "/l2", "type": "hardlink", "link": "/l"}));
    let mtree = render(write_mtree, &m);
    for line in [
        "./l type=link mode=0777 uid=0 gid=0 time=0.000000000 nlink=2 link=a\\040b",
        "./l2 type=link mode=0777 uid=0 gid=0 time=0.000000000 nlink=2 link=a\\040b",
        "./null type=char mode=0666 uid=0 gid=0 time=0.000000000 nlink=3 device=native,1,3",
        "./null3 type=char mode=0666 uid=0 gid=0 time=0.000000000 nlink=3 device=native,1,3",
        "./odd\\012\\134\\377 type=fifo mode=0644 uid=0 gid=0 time=0.000000000 nlink=2",
        "./p type=fifo mode=0644 uid=0 gid=0 time=0.000000000 nlink=2",
    ] {
        assert!(mtree.lines().any(|l| l == line), "no line {line:?} in\n{mtree}");
    }
}

#[test]
fn mtree_checks_the_link_count_of_hardlinked_symlinks_and_fifos() {
    if !mtree_available() {
        assert!(std::env::var_os("CI").is_none(), "mtree (mtree-netbsd) missing in CI");
        eprintln!("mtree not installed (apt-get install mtree-netbsd): spec not checked by mtree");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let sh = |script: &str| {
        let st = Command::new("sh").arg("-ec").arg(script).current_dir(&root).status().unwrap();
        assert!(st.success(), "{script}");
    };
    sh("ln -s target s && ln -P s s2 && mkfifo f && ln f f2 && ln -s target lone");
    if is_root() {
        sh("mknod c c 1 3 && ln c c2");
    }
    set_mtime(&root, 1_700_000_000, 0);
    let m = ocix::scan::scan_dir(&root, None, &ocix::scan::ScanOptions::default()).unwrap().manifest.to_tree();
    assert_eq!(m.get(b"s2").unwrap().kind, Kind::Hardlink(b"s".to_vec()));
    let cbor = t.path().join("m.cbor");
    std::fs::write(&cbor, m.to_bytes().unwrap()).unwrap();
    let spec = t.path().join("spec");
    let o = run(&[OsStr::new("show"), OsStr::new("--mtree"), cbor.as_os_str(), OsStr::new("-o"), spec.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, text) = mtree_check(&spec, &root);
    assert_eq!((code, text.as_str()), (0, ""), "mtree found differences");
    // a group broken into copies: mtree sees the link counts
    sh("cp -a s x && mv x s2 && touch -h -d @1700000000 .");
    let (code, text) = mtree_check(&spec, &root);
    assert!(text.contains("s2:") && text.contains("link count (2, 1)"), "{code}: {text}");
    assert_ne!(code, 0, "{text}");
}

#[test]
fn hardlinks_in_subdirectories_show_their_first_name() {
    let mut m = Manifest::default();
    let mut d = Entry::empty_dir();
    let Kind::Dir(c) = &mut d.kind else { unreachable!() };
    let mut f = Entry::new(Kind::File(File { size: 3, digest: Some(Digest::of(b"abc")), zeros: vec![] }));
    f.meta.mode = 0o600;
    c.insert(b"f".to_vec(), f);
    c.insert(b"s".to_vec(), Entry::new(Kind::Symlink(b"f".to_vec())));
    put(&mut m, b"d", d);
    put(&mut m, b"h1", Entry::new(Kind::Hardlink(b"d/f".to_vec())));
    put(&mut m, b"h2", Entry::new(Kind::Hardlink(b"d/f".to_vec())));
    put(&mut m, b"hs", Entry::new(Kind::Hardlink(b"d/s".to_vec())));
    let bytes = m.to_bytes().expect("valid");
    let c = ocix::manifest::Compact::from_bytes(&bytes).unwrap();
    let text = render(write_text, &m);
    let d = Digest::of(b"abc");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[4],
        format!("hardlink 0600 0:0                  3 1970-01-01T00:00:00.000000000Z /h1 => /d/f {d}")
    );
    assert_eq!(
        lines[5],
        format!("hardlink 0600 0:0                  3 1970-01-01T00:00:00.000000000Z /h2 => /d/f {d}")
    );
    assert_eq!(lines[6], "hardlink 0777 0:0                  - 1970-01-01T00:00:00.000000000Z /hs => /d/s -> f");
    let mtree = render(write_mtree, &m);
    assert!(mtree.contains("./d/f type=file mode=0600 uid=0 gid=0 time=0.000000000 size=3 nlink=3 "), "{mtree}");
    assert!(mtree.contains("./h2 type=file mode=0600 uid=0 gid=0 time=0.000000000 size=3 nlink=3 "), "{mtree}");
    assert!(mtree.contains("./d/s type=link mode=0777 uid=0 gid=0 time=0.000000000 nlink=2 link=f"), "{mtree}");
    // the compact form renders the same bytes
    let of = |r: fn(&ocix::manifest::Compact, &mut dyn std::io::Write) -> std::io::Result<()>| {
        let mut v = Vec::new();
        r(&c, &mut v).unwrap();
        String::from_utf8(v).unwrap()
    };
    assert_eq!(of(write_text::<ocix::manifest::Compact>), text);
    assert_eq!(of(write_mtree::<ocix::manifest::Compact>), mtree);
    assert_eq!(of(write_json::<ocix::manifest::Compact>), render(write_json, &m));
}
