//! `ocix diff` reads the expected manifest as a stream: random trees give
//! the same findings, in the same order, as comparing both manifests
//! decoded whole; the streamed read hands on every entry once in manifest
//! order; a manifest broken part way gives the whole decoder's error and
//! exit status 2, after the findings before the fault.

mod common;

use ocix::diff::{DiffOptions, Excludes, Field, Finding, diff, diff_read};
use ocix::manifest::compact::{EntryView, Visit, plan_read, stream_read};
use ocix::manifest::{Compact, DecodeError, Digest, Entry, File, Kind, Manifest, Node, Time};
use std::collections::BTreeMap;
use std::ffi::OsStr;

use common::rng::Rng;

/// Few names, so two random trees share many paths.
fn name(r: &mut Rng) -> Vec<u8> {
    const NAMES: [&[u8]; 7] = [b"a", b"b", b"c", b"d\n", b"e e", b"f.long-name", b"\xff"];
    NAMES[r.below(NAMES.len() as u64) as usize].to_vec()
}

fn meta(r: &mut Rng, e: &mut Entry) {
    if r.one_in(3) {
        e.meta.mode = [0o600, 0o640, 0o4755, 0o700][r.below(4) as usize];
    }
    if r.one_in(4) {
        e.meta.uid = 1 + r.below(2) as u32;
    }
    if r.one_in(4) {
        e.meta.gid = 1 + r.below(2) as u32;
    }
    e.meta.mtime = Time { sec: r.below(3) as i64, nsec: r.below(2) as u32 };
    if r.one_in(4) {
        e.meta.uname = Some(["root", "u1"][r.below(2) as usize].to_string());
    }
    if r.one_in(5) {
        e.meta.gname = Some(["g", "wheel"][r.below(2) as usize].to_string());
    }
    for _ in 0..r.below(3) {
        let k = [&b"user.a"[..], b"user.bb", b"security.x"][r.below(3) as usize];
        e.meta.xattrs.insert(k.to_vec(), vec![b'v'; r.below(3) as usize]);
    }
}

fn leaf(r: &mut Rng) -> Entry {
    let mut e = match r.below(6) {
        0 => Entry::new(Kind::File(File::default())),
        1 | 2 => {
            let size = 1 + r.below(3 * 4096);
            let zeros = if size >= 3 * 4096 - 10 && r.one_in(2) { vec![(1, 1)] } else { Vec::new() };
            Entry::new(Kind::File(File { size, digest: Some(Digest([r.below(3) as u8; 32])), zeros }))
        }
        3 => Entry::new(Kind::Symlink(if r.one_in(2) { b"t".to_vec() } else { b"../u".to_vec() })),
        4 => Entry::new(Kind::Fifo),
        _ => Entry::new(Kind::Char(ocix::manifest::Dev { major: 1, minor: r.below(3) as u32 })),
    };
    meta(r, &mut e);
    e
}

fn dir(r: &mut Rng, depth: usize) -> Entry {
    let mut children = BTreeMap::new();
    for _ in 0..r.below(if depth == 0 { 7 } else { 5 }) {
        let e = if depth < 3 && r.one_in(3) { dir(r, depth + 1) } else { leaf(r) };
        children.insert(name(r), e);
    }
    let mut e = Entry::new(Kind::Dir(children));
    meta(r, &mut e);
    e
}

/// A random valid tree, with hardlinks (under names that sort after every
/// other top-level name) to some of its files, symlinks and devices.
fn tree(r: &mut Rng) -> Manifest {
    let mut m = Manifest { root: dir(r, 0) };
    let firsts: Vec<Vec<u8>> = m
        .walk()
        .filter(|(_, e)| matches!(e.kind, Kind::File(_) | Kind::Symlink(_) | Kind::Char(_) | Kind::Fifo))
        .map(|(p, _)| p)
        .collect();
    if !firsts.is_empty() {
        let Kind::Dir(root) = &mut m.root.kind else { unreachable!() };
        for i in 0..r.below(4) {
            let t = firsts[r.below(firsts.len() as u64) as usize].clone();
            let mut n = b"\xff\xfflink".to_vec();
            n.push(b'0' + (i + r.below(2)) as u8);
            root.insert(n, Entry::new(Kind::Hardlink(t)));
        }
    }
    m
}

/// `e` with a few random changes: entries removed, changed or added.
fn mutate(r: &mut Rng, e: &Entry, depth: usize) -> Entry {
    let mut e = e.clone();
    if r.one_in(6) {
        meta(r, &mut e);
    }
    if let Kind::Dir(children) = &mut e.kind {
        let names: Vec<Vec<u8>> = children.keys().cloned().collect();
        for n in names {
            if n.starts_with(b"\xff\xfflink") {
                continue;
            }
            if r.one_in(8) {
                children.remove(&n);
            } else if r.one_in(10) {
                children.insert(n, if depth < 3 && r.one_in(2) { dir(r, depth + 1) } else { leaf(r) });
            } else {
                let c = mutate(r, &children[&n], depth + 1);
                children.insert(n, c);
            }
        }
        if r.one_in(5) {
            children.insert(name(r), leaf(r));
        }
    }
    e
}

/// Drops hardlinks that no longer name an earlier non-directory first
/// name, so the tree stays valid.
fn fix_links(m: &mut Manifest) {
    let ok: Vec<Vec<u8>> =
        m.walk().filter(|(_, e)| !matches!(e.kind, Kind::Dir(_) | Kind::Hardlink(_))).map(|(p, _)| p).collect();
    let Kind::Dir(root) = &mut m.root.kind else { unreachable!() };
    root.retain(|_, e| match &e.kind {
        Kind::Hardlink(t) => ok.contains(t),
        _ => true,
    });
}

fn streamed(e: &[u8], a: &Compact, opts: &DiffOptions) -> Result<Vec<Finding>, DecodeError> {
    let len = e.len() as u64;
    let plan = plan_read(&mut &e[..], len)?;
    let mut v = Vec::new();
    let n = diff_read(&mut &e[..], len, &plan, a, opts, |f| v.push(f))?;
    assert_eq!(n, v.len() as u64);
    Ok(v)
}

fn option_sets() -> Vec<DiffOptions> {
    let mut names = DiffOptions::default();
    names.compare(Field::Uname);
    names.compare(Field::Gname);
    let mut ignore = DiffOptions::default();
    ignore.ignore_spec("mode").unwrap();
    ignore.ignore_spec("xattr:user.a").unwrap();
    let excl = DiffOptions { excludes: Excludes::new(&["b".to_string()]).unwrap(), ..DiffOptions::default() };
    vec![DiffOptions::default(), names, ignore, excl]
}

#[test]
fn streamed_findings_equal_whole_findings_on_random_trees() {
    let opts = option_sets();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut findings = 0;
    for round in 0..300 {
        let e = tree(&mut r);
        let a = if round % 2 == 0 {
            let mut a = Manifest { root: mutate(&mut r, &e.root, 0) };
            fix_links(&mut a);
            a
        } else {
            tree(&mut r)
        };
        let (eb, ab) = (e.to_bytes().unwrap(), a.to_bytes().unwrap());
        let (ec, ac) = (Compact::from_bytes(&eb).unwrap(), Compact::from_bytes(&ab).unwrap());
        for o in &opts {
            let whole = diff(&ec, &ac, o);
            findings += whole.len();
            assert_eq!(streamed(&eb, &ac, o).unwrap(), whole, "round {round}: expected {e:?}\nactual {a:?}");
            // and the other way round
            assert_eq!(streamed(&ab, &ec, o).unwrap(), diff(&ac, &ec, o), "round {round} reversed");
            assert_eq!(streamed(&eb, &ec, o).unwrap(), vec![], "round {round}: a tree against itself");
        }
    }
    assert!(findings > 1000, "the random trees differ: {findings} findings");
}

/// Records what a streamed read hands on.
#[derive(Default)]
struct Events(Vec<String>);

impl Visit for Events {
    fn entry(&mut self, path: &[u8], e: &EntryView<'_>) {
        self.0.push(format!("{} {:?} {} {:?}", String::from_utf8_lossy(path), e.code, e.mode, e.uname));
    }
    fn end_dir(&mut self, path: &[u8]) {
        self.0.push(format!("end {}", String::from_utf8_lossy(path)));
    }
}

fn events_of(n: Node<'_>, path: &mut Vec<u8>, out: &mut Vec<String>) {
    let v = n.view();
    out.push(format!("{} {:?} {} {:?}", String::from_utf8_lossy(path), v.code, v.mode, v.uname));
    if n.is_dir() {
        for c in n.children() {
            let base = path.len();
            if base > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(c.name());
            events_of(c, path, out);
            path.truncate(base);
        }
        out.push(format!("end {}", String::from_utf8_lossy(path)));
    }
}

#[test]
fn streamed_read_hands_on_every_entry_once_in_manifest_order() {
    let mut r = Rng(42);
    for _ in 0..100 {
        let m = tree(&mut r);
        let bytes = m.to_bytes().unwrap();
        let c = Compact::from_bytes(&bytes).unwrap();
        let mut want = Vec::new();
        events_of(c.root(), &mut Vec::new(), &mut want);
        let plan = plan_read(&mut &bytes[..], bytes.len() as u64).unwrap();
        let mut got = Events::default();
        stream_read(&mut &bytes[..], bytes.len() as u64, &plan, &mut got).unwrap();
        // a directory comes with its owner names, which the encoding puts
        // after its children
        assert_eq!(got.0, want);
        assert_eq!(got.0.iter().filter(|e| !e.starts_with("end ")).count(), c.len());
    }
}

#[test]
fn cut_or_corrupted_bytes_give_the_whole_decoders_error() {
    let mut r = Rng(7);
    let m = tree(&mut r);
    let bytes = m.to_bytes().unwrap();
    let actual = Compact::from_tree(&tree(&mut r)).unwrap();
    let opts = DiffOptions::default();
    let mut failed = 0;
    for cut in 0..bytes.len() {
        let part = &bytes[..cut];
        let whole = Compact::from_bytes(part).unwrap_err();
        assert_eq!(streamed(part, &actual, &opts).unwrap_err(), whole, "cut at {cut}");
        failed += 1;
    }
    // every byte flipped in turn: the same verdict as the whole decoder
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x5a;
        match (Compact::from_bytes(&bad), streamed(&bad, &actual, &opts)) {
            (Ok(c), Ok(f)) => assert_eq!(f, diff(&c, &actual, &opts), "byte {i}"),
            (Err(w), Err(s)) => {
                assert_eq!(s, w, "byte {i}");
                failed += 1;
            }
            (w, s) => panic!("byte {i}: whole {:?}, streamed {:?}", w.map(|_| ()), s.map(|_| ())),
        }
    }
    assert!(failed > bytes.len(), "{failed}");
}

/// A manifest `/a` (file), `/b` (hardlink to `a`), `/c` (file), `/d/e`
/// (file) whose hardlink's target byte is replaced by `to`.
fn patched_link(to: u8) -> Vec<u8> {
    let mut m = Manifest::default();
    let Kind::Dir(root) = &mut m.root.kind else { unreachable!() };
    root.insert(b"a".to_vec(), Entry::new(Kind::File(File::default())));
    root.insert(b"b".to_vec(), Entry::new(Kind::Hardlink(b"a".to_vec())));
    root.insert(b"c".to_vec(), Entry::new(Kind::File(File::default())));
    let mut d = BTreeMap::new();
    d.insert(b"e".to_vec(), Entry::new(Kind::File(File::default())));
    root.insert(b"d".to_vec(), Entry::new(Kind::Dir(d)));
    let mut bytes = m.to_bytes().unwrap();
    // key 10 (target), then the one-byte string "a"
    let at = bytes.windows(3).position(|w| w == [0x0a, 0x41, b'a']).expect("the hardlink's target");
    bytes[at + 2] = to;
    bytes
}

#[test]
fn a_hardlink_to_a_later_or_absent_entry_fails_as_whole_decoding_does() {
    let actual = Compact::from_tree(&Manifest::default()).unwrap();
    let opts = DiffOptions::default();
    for (to, words) in [
        (b'c', "hardlink to /c must name an entry earlier in manifest order"),
        (b'z', "hardlink to /z names no entry"),
        (b'd', "hardlink to /d must not name a directory"),
    ] {
        let bytes = patched_link(to);
        let whole = Compact::from_bytes(&bytes).unwrap_err();
        assert!(whole.to_string().contains(words), "{whole}");
        // the encoding itself is fine: the first read passes
        assert!(plan_read(&mut &bytes[..], bytes.len() as u64).is_ok());
        assert_eq!(streamed(&bytes, &actual, &opts).unwrap_err(), whole);
    }
}

fn ocix_diff(args: &[&OsStr]) -> (i32, String, String) {
    let mut all: Vec<&OsStr> = vec![OsStr::new("diff")];
    all.extend_from_slice(args);
    let o = common::run(&all);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn cli_a_manifest_broken_part_way_is_an_error_after_the_findings_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    // the actual tree has an entry the expected one lacks, before the
    // expected one's bad hardlink
    let mut a = Manifest::default();
    let Kind::Dir(root) = &mut a.root.kind else { unreachable!() };
    root.insert(b"0".to_vec(), Entry::new(Kind::Fifo));
    root.insert(b"a".to_vec(), Entry::new(Kind::File(File::default())));
    std::fs::write(p("actual.cbor"), a.to_bytes().unwrap()).unwrap();
    let bad = patched_link(b'c');
    std::fs::write(p("bad.cbor"), &bad).unwrap();
    let (code, out, err) = ocix_diff(&[p("actual.cbor").as_os_str(), p("bad.cbor").as_os_str()]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(out, "extra /0\n", "{err}");
    let want = Compact::from_bytes(&bad).unwrap_err().to_string();
    assert!(err.contains(&format!("{}: invalid OCIX manifest", p("bad.cbor").display())), "{err}");
    assert!(err.contains(&want), "{err}");

    // cut in the middle: refused by the first read, before any finding
    let good = tree(&mut Rng(5)).to_bytes().unwrap();
    let cut = &good[..good.len() / 2];
    std::fs::write(p("cut.cbor"), cut).unwrap();
    for json in [false, true] {
        let mut args = vec![p("actual.cbor").into_os_string(), p("cut.cbor").into_os_string()];
        if json {
            args.insert(0, "--json".into());
        }
        let args: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        let (code, out, err) = ocix_diff(&args);
        assert_eq!(code, 2, "{out}{err}");
        assert_eq!(out, "", "{err}");
        let want = Compact::from_bytes(cut).unwrap_err().to_string();
        assert!(err.contains(&format!("{}: invalid OCIX manifest", p("cut.cbor").display())), "{err}");
        assert!(err.contains(&want), "{err}");
    }

    // the same bytes on standard input (decoded whole) fail the same way
    let o = common::ocix()
        .args([OsStr::new("diff"), p("actual.cbor").as_os_str(), OsStr::new("-")])
        .stdin(std::fs::File::open(p("bad.cbor")).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&Compact::from_bytes(&bad).unwrap_err().to_string()));
}
