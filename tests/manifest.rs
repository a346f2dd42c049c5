//! The manifest format: golden bytes, an independent decoder's view, strict
//! rejection of every non-canonical or invalid input, and random trees.

use ocix::manifest::{Dev, Digest, Entry, File, Kind, Manifest, Meta, Time};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Minimal CBOR writer for building hostile inputs by hand (any encoding,
/// canonical or not).
#[derive(Default)]
struct C(Vec<u8>);

impl C {
    fn h(mut self, major: u8, arg: u64) -> Self {
        let m = major << 5;
        if arg < 24 {
            self.0.push(m | arg as u8);
        } else if arg < 256 {
            self.0.extend([m | 24, arg as u8]);
        } else if arg < 65536 {
            self.0.push(m | 25);
            self.0.extend((arg as u16).to_be_bytes());
        } else if arg <= u32::MAX as u64 {
            self.0.push(m | 26);
            self.0.extend((arg as u32).to_be_bytes());
        } else {
            self.0.push(m | 27);
            self.0.extend(arg.to_be_bytes());
        }
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u(self, v: u64) -> Self {
        self.h(0, v)
    }
    fn b(self, s: &[u8]) -> Self {
        self.h(2, s.len() as u64).raw(s)
    }
    fn arr(self, n: u64) -> Self {
        self.h(4, n)
    }
    fn map(self, n: u64) -> Self {
        self.h(5, n)
    }
    /// tag + {0: 1, 1: <root follows>}
    fn top() -> Self {
        C::default().h(6, 1_868_786_040).map(2).u(0).u(1).u(1)
    }
}

fn err(bytes: &[u8]) -> String {
    match Manifest::from_bytes(bytes) {
        Ok(m) => panic!("accepted invalid manifest: {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn file(content: &[u8], mtime: i64) -> Entry {
    Entry {
        meta: Meta { mode: 0o644, mtime: Time { sec: mtime, nsec: 0 }, ..Meta::default() },
        kind: Kind::File(File {
            size: content.len() as u64,
            digest: (!content.is_empty()).then(|| Digest::of(content)),
            zeros: Vec::new(),
        }),
    }
}

/// A fixed tree covering every field.
fn golden_tree() -> Manifest {
    let mut root_children = BTreeMap::new();
    let mut etc = BTreeMap::new();
    let mut passwd = file(b"root:x:0:0:root:/root:/bin/sh\n", 1_700_000_000);
    passwd.meta.xattrs.insert(b"user.comment".to_vec(), b"golden".to_vec());
    passwd.meta.xattrs.insert(b"security.capability".to_vec(), vec![1, 0, 0, 2]);
    etc.insert(b"passwd".to_vec(), passwd);
    etc.insert(
        b"shadow".to_vec(),
        Entry { meta: Meta { mode: 0o640, gid: 42, ..Meta::default() }, kind: file(b"root:*:1::::::\n", 0).kind },
    );
    root_children.insert(
        b"etc".to_vec(),
        Entry {
            meta: Meta { mode: 0o755, mtime: Time { sec: 1_700_000_000, nsec: 5 }, ..Meta::default() },
            kind: Kind::Dir(etc),
        },
    );
    root_children
        .insert(b"hard".to_vec(), Entry { meta: Meta::default(), kind: Kind::Hardlink(b"etc/passwd".to_vec()) });
    root_children.insert(
        b"link".to_vec(),
        Entry {
            meta: Meta { mode: 0o777, uid: 1000, gid: 1000, ..Meta::default() },
            kind: Kind::Symlink(b"etc/passwd".to_vec()),
        },
    );
    root_children.insert(
        b"null".to_vec(),
        Entry { meta: Meta { mode: 0o666, ..Meta::default() }, kind: Kind::Char(Dev { major: 1, minor: 3 }) },
    );
    root_children.insert(
        b"loop0".to_vec(),
        Entry { meta: Meta { mode: 0o660, gid: 6, ..Meta::default() }, kind: Kind::Block(Dev { major: 7, minor: 0 }) },
    );
    root_children.insert(
        b"fifo".to_vec(),
        Entry {
            meta: Meta { mode: 0o620, mtime: Time { sec: -1, nsec: 999_999_999 }, ..Meta::default() },
            kind: Kind::Fifo,
        },
    );
    root_children.insert(b"sock".to_vec(), Entry { meta: Meta { mode: 0o755, ..Meta::default() }, kind: Kind::Socket });
    let mut sparse = vec![0u8; 5 * 4096 + 10];
    sparse[4096] = 1;
    root_children.insert(
        b"sparse".to_vec(),
        Entry {
            meta: Meta { mode: 0o4755, ..Meta::default() },
            kind: Kind::File(File {
                size: sparse.len() as u64,
                digest: Some(Digest::of(&sparse)),
                zeros: vec![(0, 1), (2, 3)],
            }),
        },
    );
    root_children.insert(b"\xff\xfe".to_vec(), file(b"", 1));
    root_children.insert(b"empty".to_vec(), Entry::empty_dir());
    Manifest {
        root: Entry {
            meta: Meta { mode: 0o755, mtime: Time { sec: 1_700_000_000, nsec: 0 }, ..Meta::default() },
            kind: Kind::Dir(root_children),
        },
    }
}

const GOLDEN_DIGEST: &str = "sha256:3a521830795e5928bf616f913721adacbaceabce26265365a782c0c15b10306c";

#[test]
fn golden_bytes_and_digest_are_pinned() {
    let m = golden_tree();
    let bytes = m.to_bytes().unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        include_str!("fixtures/golden.hex").trim(),
        "encoding changed: a format change needs a new version"
    );
    assert_eq!(m.digest().unwrap().to_string(), GOLDEN_DIGEST);
    assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
}

#[test]
fn independent_decoder_reads_the_documented_structure() {
    use ciborium::value::Value;
    let bytes = golden_tree().to_bytes().unwrap();
    let v: Value = ciborium::de::from_reader(&bytes[..]).unwrap();
    let Value::Tag(tag, inner) = v else { panic!("no tag") };
    assert_eq!(tag, 1_868_786_040);
    let Value::Map(top) = *inner else { panic!("top not a map") };
    assert_eq!(top[0], (Value::Integer(0.into()), Value::Integer(1.into())));
    let Value::Map(root) = &top[1].1 else { panic!("root not a map") };
    // root: type 1, mtime, children (mode 0o755 is the default: omitted)
    let keys: Vec<_> = root.iter().map(|(k, _)| k.as_integer().map(i128::from).unwrap()).collect();
    assert_eq!(keys, vec![1, 5, 13]);
    let Value::Array(children) = &root[2].1 else { panic!() };
    // children sorted by name bytes
    let names: Vec<Vec<u8>> = children.iter().map(|c| c.as_map().unwrap()[0].1.as_bytes().unwrap().clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.first().unwrap(), b"empty");
    // re-encoding the independent decoder's value gives the same bytes
    let mut again = Vec::new();
    ciborium::ser::into_writer(&Value::Tag(tag, Box::new(Value::Map(top))), &mut again).unwrap();
    assert_eq!(again, bytes);
}

#[test]
fn every_prefix_and_every_byte_flip_is_handled_without_panic() {
    let bytes = golden_tree().to_bytes().unwrap();
    for n in 0..bytes.len() {
        assert!(Manifest::from_bytes(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            if let Ok(m) = Manifest::from_bytes(&b) {
                // whatever is accepted must be canonical: it re-encodes exactly
                assert_eq!(m.to_bytes().unwrap(), b, "accepted a non-canonical flip at {i}.{bit}");
            }
        }
    }
}

#[test]
fn rejects_wrong_tag_version_and_trailing_bytes() {
    assert!(err(&C::default().h(6, 1234).map(0).0).contains("tag 1234"));
    assert!(err(&C::default().h(6, 1_868_786_040).map(2).u(0).u(2).u(1).map(1).u(1).u(1).0).contains("version 2"));
    let mut ok = C::top().map(1).u(1).u(1).0;
    assert!(Manifest::from_bytes(&ok).is_ok());
    ok.push(0);
    assert!(err(&ok).contains("trailing"));
    assert!(err(b"").contains("byte 0"));
}

#[test]
fn rejects_non_canonical_encodings() {
    // uid 5 written in two bytes
    let e = err(&C::top().map(2).u(1).u(1).raw(&[0x03, 0x18, 0x05]).0);
    assert!(e.contains("non-shortest"), "{e}");
    // indefinite-length children array
    let e = err(&C::top().map(2).u(1).u(1).u(13).raw(&[0x9f, 0xff]).0);
    assert!(e.contains("indefinite"), "{e}");
    // keys out of order, duplicate keys
    assert!(err(&C::top().map(2).u(5).u(1).u(1).u(1).0).contains("ascending"));
    assert!(err(&C::top().map(2).u(1).u(1).u(1).u(1).0).contains("ascending"));
    // explicit defaults
    assert!(err(&C::top().map(2).u(1).u(1).u(2).u(0o755).0).contains("default"));
    assert!(err(&C::top().map(2).u(1).u(1).u(3).u(0).0).contains("default"));
    assert!(err(&C::top().map(2).u(1).u(1).u(5).u(0).0).contains("default"));
    let child = |c: C| c;
    let e = err(&child(C::top().map(2).u(1).u(1).u(13).arr(1).map(2).u(0).b(b"f").u(1).u(0)).0);
    assert!(e.contains("default"), "{e}");
    // empty children array must be omitted
    assert!(err(&C::top().map(2).u(1).u(1).u(13).arr(0).0).contains("omitted"));
}

#[test]
fn rejects_unknown_fields_and_fields_of_other_types() {
    assert!(err(&C::top().map(2).u(1).u(1).u(16).u(1).0).contains("unknown field 16"));
    // size on a directory
    assert!(err(&C::top().map(2).u(1).u(1).u(7).u(1).0).contains("not allowed on a dir"));
    // children under a file
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(2).u(0).b(b"f").u(13).arr(1).map(1).u(0).b(b"x").0);
    assert!(e.contains("children under a non-directory") && e.contains("/f"), "{e}");
    // unknown type
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(2).u(0).b(b"f").u(1).u(9).0);
    assert!(e.contains("unknown type 9"), "{e}");
    // a hardlink with its own mode
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(4).u(0).b(b"h").u(1).u(3).u(2).u(0o600).u(10).b(b"x").0);
    assert!(e.contains("hardlink carries no mode"), "{e}");
    // symlink without target, device without rdev
    assert!(err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(2).u(0).b(b"s").u(1).u(2).0).contains("target"));
    assert!(err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(2).u(0).b(b"c").u(1).u(4).0).contains("rdev"));
    // root must be a directory; a root with a name
    assert!(err(&C::top().map(1).u(1).u(6).0).contains("root must be a directory"));
    assert!(err(&C::top().map(2).u(0).b(b"r").u(1).u(1).0).contains("no name"));
}

fn one_child_named(name: &[u8]) -> Vec<u8> {
    C::top().map(2).u(1).u(1).u(13).arr(1).map(1).u(0).b(name).0
}

#[test]
fn rejects_bad_names() {
    assert!(err(&one_child_named(b"")).contains("empty name"));
    assert!(err(&one_child_named(b".")).contains(". or .."));
    assert!(err(&one_child_named(b"..")).contains(". or .."));
    assert!(err(&one_child_named(b"a/b")).contains("contains /"));
    assert!(err(&one_child_named(b"a\0b")).contains("NUL"));
    assert!(err(&one_child_named(&[b'n'; 256])).contains("255"));
    assert!(Manifest::from_bytes(&one_child_named(&[b'n'; 255])).is_ok());
    assert!(Manifest::from_bytes(&one_child_named(b"\xff\n ok")).is_ok());
}

#[test]
fn rejects_unsorted_and_duplicate_children() {
    let two = |a: &[u8], b: &[u8]| C::top().map(2).u(1).u(1).u(13).arr(2).map(1).u(0).b(a).map(1).u(0).b(b).0;
    assert!(Manifest::from_bytes(&two(b"a", b"b")).is_ok());
    assert!(err(&two(b"b", b"a")).contains("not sorted"));
    assert!(err(&two(b"a", b"a")).contains("duplicate name"));
}

#[test]
fn rejects_bad_hardlinks() {
    // target missing / a directory / later in manifest order / unclean path
    let with = |target: &[u8]| {
        C::top()
            .map(2)
            .u(1)
            .u(1)
            .u(13)
            .arr(3)
            .map(2)
            .u(0)
            .b(b"d")
            .u(1)
            .u(1)
            .map(3)
            .u(0)
            .b(b"h")
            .u(1)
            .u(3)
            .u(10)
            .b(target)
            .map(1)
            .u(0)
            .b(b"z")
            .0
    };
    assert!(err(&with(b"nope")).contains("names no entry"));
    assert!(err(&with(b"d")).contains("must not name a directory"));
    assert!(err(&with(b"z")).contains("earlier in manifest order"));
    assert!(err(&with(b"../z")).contains(". or .."));
    assert!(err(&with(b"/z")).contains("empty name"));
    assert!(err(&with(b"d//x")).contains("empty name"));
}

#[test]
fn rejects_bad_zero_runs_and_digests() {
    let f = |size: u64, runs: &[u64]| {
        let mut c = C::top()
            .map(2)
            .u(1)
            .u(1)
            .u(13)
            .arr(1)
            .map(if runs.is_empty() { 3 } else { 4 })
            .u(0)
            .b(b"f")
            .u(7)
            .u(size)
            .u(8)
            .b(&[7; 32]);
        if !runs.is_empty() {
            c = c.u(9).arr(runs.len() as u64);
            for r in runs {
                c = c.u(*r);
            }
        }
        c.0
    };
    assert!(Manifest::from_bytes(&f(3 * 4096, &[0, 1, 2, 1])).is_ok());
    assert!(err(&f(3 * 4096, &[0, 1, 1, 1])).contains("adjacent"));
    assert!(err(&f(3 * 4096, &[1, 1, 0, 1])).contains("ascending"));
    assert!(err(&f(3 * 4096, &[0, 0])).contains("0 blocks"));
    assert!(err(&f(3 * 4096 - 1, &[2, 1])).contains("past the last whole block"));
    assert!(err(&f(4096, &[0, u64::MAX])).contains("past the last"));
    assert!(err(&f(4096, &[0])).contains("pairs"));
    // digest of the wrong length; size without digest
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(3).u(0).b(b"f").u(7).u(1).u(8).b(&[1; 31]).0);
    assert!(e.contains("32 bytes"), "{e}");
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(2).u(0).b(b"f").u(7).u(1).0);
    assert!(e.contains("digest is required"), "{e}");
}

#[test]
fn claimed_lengths_never_drive_allocation() {
    // children array claiming 2^32 entries, a name claiming 2^40 bytes
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(u32::MAX as u64).0);
    assert!(e.contains("larger than"), "{e}");
    let e = err(&C::top().map(2).u(1).u(1).u(13).arr(1).map(1).u(0).h(2, 1 << 40).0);
    assert!(e.contains("larger than"), "{e}");
    let e = err(&C::top().map(u64::MAX).0);
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn excessive_nesting_is_rejected_and_the_limit_itself_works() {
    fn nested(depth: usize) -> Vec<u8> {
        let mut c = C::top();
        for _ in 0..depth {
            c = c.map(3).u(0).b(b"d").u(1).u(1).u(13).arr(1);
        }
        // the root map first, then depth levels, then a leaf
        let mut out = C::top().map(2).u(1).u(1).u(13).arr(1).0;
        out.extend_from_slice(&c.0[C::top().0.len()..]);
        out.extend(C::default().map(1).u(0).b(b"leaf").0);
        out
    }
    assert!(Manifest::from_bytes(&nested(1000)).is_ok());
    let e = err(&nested(5000));
    assert!(e.contains("levels below the root; the limit is 1024"), "{e}");
}

// ------------------------------------------------------------ random trees

fn arb_meta(default_mode: u32) -> impl Strategy<Value = Meta> {
    (
        prop_oneof![Just(default_mode), 0u32..=0o7777],
        prop_oneof![Just(0u32), 0..u32::MAX],
        prop_oneof![Just(0u32), 0..u32::MAX],
        prop_oneof![Just(0i64), any::<i64>()],
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
        proptest::collection::btree_map(
            proptest::collection::vec(1u8..=255, 1..20),
            proptest::collection::vec(any::<u8>(), 0..10),
            0..3,
        ),
    )
        .prop_map(|(mode, uid, gid, sec, nsec, xattrs)| Meta {
            mode,
            uid,
            gid,
            mtime: Time { sec, nsec },
            xattrs,
            uname: None,
            gname: None,
        })
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..12)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_leaf() -> impl Strategy<Value = Entry> {
    prop_oneof![
        (arb_meta(0o644), 1u64..100_000, any::<[u8; 32]>(), any::<bool>()).prop_map(|(meta, size, d, z)| {
            let zeros = if z && size >= 3 * 4096 { vec![(1, 1)] } else { vec![] };
            Entry { meta, kind: Kind::File(File { size, digest: Some(Digest(d)), zeros }) }
        }),
        arb_meta(0o644).prop_map(|meta| Entry { meta, kind: Kind::File(File::default()) }),
        (arb_meta(0o777), proptest::collection::vec(1u8..=255, 1..30))
            .prop_map(|(meta, t)| Entry { meta, kind: Kind::Symlink(t) }),
        (arb_meta(0o644), 0u32..=4095, 0u32..=1_048_575)
            .prop_map(|(meta, major, minor)| Entry { meta, kind: Kind::Char(Dev { major, minor }) }),
        (arb_meta(0o644), 0u32..=4095, 0u32..=1_048_575)
            .prop_map(|(meta, major, minor)| Entry { meta, kind: Kind::Block(Dev { major, minor }) }),
        arb_meta(0o644).prop_map(|meta| Entry { meta, kind: Kind::Fifo }),
        arb_meta(0o644).prop_map(|meta| Entry { meta, kind: Kind::Socket }),
    ]
}

fn arb_tree() -> impl Strategy<Value = Entry> {
    arb_leaf().prop_recursive(4, 64, 8, |inner| {
        (arb_meta(0o755), proptest::collection::btree_map(arb_name(), inner, 0..8))
            .prop_map(|(meta, c)| Entry { meta, kind: Kind::Dir(c) })
    })
}

/// Adds hardlinks to every regular file after the first, in manifest order.
fn add_hardlinks(m: &mut Manifest) {
    let files: Vec<Vec<u8>> = m.walk().filter(|(_, e)| matches!(e.kind, Kind::File(_))).map(|(p, _)| p).collect();
    let Some(first) = files.first().cloned() else { return };
    if let Kind::Dir(c) = &mut m.root.kind {
        let name = b"~zz-link".to_vec(); // sorts after every generated top-level name? not guaranteed
        if !c.contains_key(&name) && first.as_slice() < b"~zz-link".as_slice() {
            c.insert(name, Entry { meta: Meta::default(), kind: Kind::Hardlink(first) });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_exactly(root in arb_tree().prop_filter("root is a dir", |e| matches!(e.kind, Kind::Dir(_))), link in any::<bool>()) {
        let mut m = Manifest { root };
        if link {
            add_hardlinks(&mut m);
        }
        let bytes = match m.to_bytes() {
            Ok(b) => b,
            // a random hardlink may land before its target in manifest order
            Err(e) => { prop_assert!(e.to_string().contains("hardlink")); return Ok(()); }
        };
        let back = Manifest::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.to_bytes().unwrap(), bytes);
    }
}

#[test]
fn encoder_refuses_names_the_decoder_would_refuse() {
    for bad in [&b"a/b"[..], b"", b".", b"..", b"x\0y"] {
        let mut m = Manifest::default();
        if let Kind::Dir(c) = &mut m.root.kind {
            c.insert(bad.to_vec(), Entry::empty_dir());
        }
        let e = m.to_bytes().expect_err("encoded an invalid name");
        assert!(e.to_string().contains("invalid child name"), "{e}");
    }
}

// ------------------------------------------- hardlinks to every type but directories

/// A root with these children (paths with one `/` go into a directory).
fn hl_tree(children: Vec<(&str, Entry)>) -> Manifest {
    let mut root: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    for (p, e) in children {
        match p.split_once('/') {
            None => {
                root.insert(p.as_bytes().to_vec(), e);
            }
            Some((d, n)) => {
                let dir = root.entry(d.as_bytes().to_vec()).or_insert_with(Entry::empty_dir);
                let Kind::Dir(c) = &mut dir.kind else { panic!("{d} is not a directory") };
                c.insert(n.as_bytes().to_vec(), e);
            }
        }
    }
    Manifest { root: Entry { meta: Meta { mode: 0o755, ..Meta::default() }, kind: Kind::Dir(root) } }
}

fn hl(path: &str) -> Entry {
    Entry::new(Kind::Hardlink(path.as_bytes().to_vec()))
}

fn non_directories() -> Vec<(&'static str, Entry)> {
    let with = |kind: Kind| Entry { meta: Meta { mode: 0o640, uid: 7, ..Meta::default() }, kind };
    vec![
        ("file", file(b"content", 5)),
        ("symlink", with(Kind::Symlink(b"../target".to_vec()))),
        ("char", with(Kind::Char(Dev { major: 1, minor: 3 }))),
        ("block", with(Kind::Block(Dev { major: 7, minor: 0 }))),
        ("fifo", with(Kind::Fifo)),
        ("socket", with(Kind::Socket)),
    ]
}

#[test]
fn hardlinks_name_any_earlier_non_directory() {
    for (what, first) in non_directories() {
        let m = hl_tree(vec![("a", first), ("b", hl("a")), ("d/c", hl("a"))]);
        let bytes = m.to_bytes().unwrap_or_else(|e| panic!("{what}: {e}"));
        // the other names are bare {0: name, 1: 3, 10: path}
        let link = C::default().map(3).u(0).b(b"b").u(1).u(3).u(10).b(b"a").0;
        assert!(bytes.windows(link.len()).any(|w| w == link), "{what}: no bare hardlink entry");
        let back = Manifest::from_bytes(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(back, m, "{what}");
        assert_eq!(back.to_bytes().unwrap(), bytes, "{what}");
    }
}

#[test]
fn decoder_accepts_hardlinks_to_a_symlink_and_a_fifo() {
    // written by hand: {root children [{a symlink -> t}, {b -> a}, {f fifo}, {g -> f}]}
    let bytes = C::top()
        .map(2)
        .u(1)
        .u(1)
        .u(13)
        .arr(4)
        .map(3)
        .u(0)
        .b(b"a")
        .u(1)
        .u(2)
        .u(10)
        .b(b"t")
        .map(3)
        .u(0)
        .b(b"b")
        .u(1)
        .u(3)
        .u(10)
        .b(b"a")
        .map(2)
        .u(0)
        .b(b"f")
        .u(1)
        .u(6)
        .map(3)
        .u(0)
        .b(b"g")
        .u(1)
        .u(3)
        .u(10)
        .b(b"f")
        .0;
    let m = Manifest::from_bytes(&bytes).unwrap();
    assert_eq!(m.get(b"b").unwrap().kind, Kind::Hardlink(b"a".to_vec()));
    assert_eq!(m.get(b"g").unwrap().kind, Kind::Hardlink(b"f".to_vec()));
    assert_eq!(m.to_bytes().unwrap(), bytes);
}

#[test]
fn hardlinks_to_directories_dangling_forward_or_to_links_are_rejected() {
    let sym = || Entry::new(Kind::Symlink(b"t".to_vec()));
    let fifo = || Entry::new(Kind::Fifo);
    let cases: Vec<(&str, Manifest, &str)> = vec![
        ("directory", hl_tree(vec![("d/x", fifo()), ("l", hl("d"))]), "must not name a directory"),
        ("dangling", hl_tree(vec![("a", sym()), ("l", hl("b"))]), "names no entry"),
        ("forward symlink", hl_tree(vec![("a", hl("z")), ("z", sym())]), "earlier in manifest order"),
        ("forward fifo", hl_tree(vec![("a", hl("d/f")), ("d/f", fifo())]), "earlier in manifest order"),
        ("to a hardlink", hl_tree(vec![("a", sym()), ("b", hl("a")), ("c", hl("b"))]), "not another hardlink"),
        ("to itself", hl_tree(vec![("a", hl("a"))]), "not another hardlink"),
        (
            "through a symlink",
            hl_tree(vec![("d/f", fifo()), ("s", Entry::new(Kind::Symlink(b"d".to_vec()))), ("z", hl("s/f"))]),
            "names no entry",
        ),
    ];
    for (what, m, want) in cases {
        // the encoder refuses what the decoder refuses
        let e = m.to_bytes().expect_err(what).to_string();
        assert!(e.contains(want), "{what}: {e}");
        // and the decoder, given the bytes the encoder would write
        let bytes = raw_encode(&m);
        let e = err(&bytes);
        assert!(e.contains(want) && e.contains("hardlink to"), "{what}: {e}");
    }
}

/// Canonical bytes of a manifest without the encoder's validation: the
/// entries of `m` as they are, links and all.
fn raw_encode(m: &Manifest) -> Vec<u8> {
    fn entry(c: C, name: Option<&[u8]>, e: &Entry) -> C {
        let code = e.kind.code() as u64;
        let mut fields: Vec<Box<dyn Fn(C) -> C + '_>> = Vec::new();
        if let Some(n) = name {
            fields.push(Box::new(move |c: C| c.u(0).b(n)));
        }
        if code != 0 {
            fields.push(Box::new(move |c: C| c.u(1).u(code)));
        }
        match &e.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => fields.push(Box::new(move |c: C| c.u(10).b(t))),
            Kind::Dir(ch) if !ch.is_empty() => fields.push(Box::new(move |c: C| {
                let mut c = c.u(13).arr(ch.len() as u64);
                for (n, e) in ch {
                    c = entry(c, Some(n), e);
                }
                c
            })),
            Kind::Dir(_) | Kind::Fifo => {}
            other => panic!("raw_encode: {other:?} not needed"),
        }
        let mut c = c.map(fields.len() as u64);
        for f in fields {
            c = f(c);
        }
        c
    }
    entry(C::top(), None, &m.root).0
}

#[test]
fn cli_reads_and_refuses_hardlinks_to_non_regular_files() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good.ocix");
    let m = hl_tree(vec![("a", Entry::new(Kind::Symlink(b"t".to_vec()))), ("b", hl("a"))]);
    std::fs::write(&good, m.to_bytes().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_ocix");
    let o = std::process::Command::new(bin).arg("show").arg(&good).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().any(|l| l.starts_with("hardlink 0777 ") && l.ends_with("/b => /a -> t")), "{text}");
    let bad = t.path().join("bad.ocix");
    let m = hl_tree(vec![("a", hl("z")), ("z", Entry::new(Kind::Fifo))]);
    std::fs::write(&bad, raw_encode(&m)).unwrap();
    let o = std::process::Command::new(bin).arg("digest").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("/a") && e.contains("hardlink to /z must name an entry earlier in manifest order"), "{e}");
}

// ------------------------------------------------------------ numbers the kernel cannot take

/// One child device `d` of type `ty` (4 char, 5 block) with rdev `[major, minor]`.
fn one_device(ty: u64, major: u64, minor: u64) -> Vec<u8> {
    C::top().map(2).u(1).u(1).u(13).arr(1).map(3).u(0).b(b"d").u(1).u(ty).u(11).arr(2).u(major).u(minor).0
}

/// One child file `f` with uid (key 3) or gid (key 4) `id` and mode 04755.
fn one_owned_file(key: u64, id: u64) -> Vec<u8> {
    C::top().map(2).u(1).u(1).u(13).arr(1).map(3).u(0).b(b"f").u(2).u(0o4755).u(key).u(id).0
}

#[test]
fn device_numbers_linux_cannot_represent_are_rejected() {
    // each of these would reach mknod as another device (4097:1 as 1:1)
    for (ty, major, minor) in [(4, 4097, 1), (4, 1, 1_048_577), (4, 4_294_967_295, 4_294_967_295), (5, 4096, 1_048_576)]
    {
        let e = err(&one_device(ty, major, minor));
        assert!(e.contains(&format!("{major}:{minor}")) && e.contains("/d"), "{e}");
        assert!(e.contains("4095") && e.contains("1048575"), "the limits are named: {e}");
    }
    // the largest numbers Linux keeps are fine
    let m = Manifest::from_bytes(&one_device(4, 4095, 1_048_575)).unwrap();
    assert_eq!(m.get(b"d").unwrap().kind, Kind::Char(Dev { major: 4095, minor: 1_048_575 }));
    // and the encoder refuses what the decoder refuses
    for d in [Dev { major: 4096, minor: 0 }, Dev { major: 0, minor: 1 << 20 }] {
        let mut m = Manifest::default();
        if let Kind::Dir(c) = &mut m.root.kind {
            c.insert(b"d".to_vec(), Entry::new(Kind::Block(d)));
        }
        let e = m.to_bytes().expect_err("encoded a device Linux cannot represent").to_string();
        assert!(e.contains(&format!("{}:{}", d.major, d.minor)) && e.contains("/d"), "{e}");
    }
}

#[test]
fn owner_4294967295_is_rejected_as_chowns_no_change_value() {
    for key in [3, 4] {
        let e = err(&one_owned_file(key, 4_294_967_295));
        assert!(e.contains("4294967295") && e.contains("chown") && e.contains("/f"), "{e}");
        Manifest::from_bytes(&one_owned_file(key, 4_294_967_294)).unwrap();
    }
    for (uid, gid) in [(u32::MAX, 0), (0, u32::MAX)] {
        let mut m = Manifest::default();
        if let Kind::Dir(c) = &mut m.root.kind {
            let mut f = Entry::new(Kind::File(File::default()));
            (f.meta.uid, f.meta.gid, f.meta.mode) = (uid, gid, 0o4755);
            c.insert(b"f".to_vec(), f);
        }
        let e = m.to_bytes().expect_err("encoded owner 4294967295").to_string();
        assert!(e.contains("4294967295") && e.contains("chown") && e.contains("/f"), "{e}");
    }
}

// ------------------------------------------------------- the nesting limit

#[test]
fn nesting_limit_allows_entries_inside_the_deepest_directory() {
    /// `dirs` nested directories, then `leaf` (a map of one file) if given.
    fn nested(dirs: usize, leaf: bool, leaf_dir: bool) -> Vec<u8> {
        let mut out = C::top().map(2).u(1).u(1).u(13).arr(1).0;
        for _ in 0..dirs - 1 {
            out.extend(C::default().map(3).u(0).b(b"d").u(1).u(1).u(13).arr(1).0);
        }
        if leaf {
            out.extend(C::default().map(3).u(0).b(b"d").u(1).u(1).u(13).arr(1).0);
            if leaf_dir {
                out.extend(C::default().map(2).u(0).b(b"e").u(1).u(1).0);
            } else {
                out.extend(C::default().map(1).u(0).b(b"leaf").0);
            }
        } else {
            out.extend(C::default().map(2).u(0).b(b"d").u(1).u(1).0);
        }
        out
    }
    let max = ocix::manifest::MAX_DEPTH;
    let run = |f: fn(usize) -> ()| {
        std::thread::Builder::new().stack_size(256 << 20).spawn(move || f(max)).unwrap().join().unwrap()
    };
    run(|max| {
        // the deepest directory, empty and with a file inside
        for bytes in [nested(max, false, false), nested(max, true, false)] {
            let m = Manifest::from_bytes(&bytes).expect("the limit itself decodes");
            assert_eq!(m.to_bytes().unwrap(), bytes);
        }
        // a directory one deeper, empty or as the last level
        for bytes in [nested(max + 1, false, false), nested(max, true, true)] {
            let e = err(&bytes);
            assert!(e.contains("directory nested 1025 levels below the root; the limit is 1024"), "{e}");
        }
    });
}

#[test]
fn duplicate_or_unsorted_child_is_shown_at_its_own_path() {
    // /etc with two children named `a`, then `b` after `c`
    let etc = |x: &[u8], y: &[u8]| {
        let mut out = C::top().map(2).u(1).u(1).u(13).arr(1).0;
        out.extend(C::default().map(3).u(0).b(b"etc").u(1).u(1).u(13).arr(2).0);
        out.extend(C::default().map(1).u(0).b(x).0);
        out.extend(C::default().map(1).u(0).b(y).0);
        out
    };
    let e = err(&etc(b"hostname", b"hostname"));
    assert!(e.contains("/etc/hostname") && e.contains("duplicate name"), "{e}");
    assert!(!e.contains(": /hostname"), "{e}");
    let e = err(&etc(b"c", b"b"));
    assert!(e.contains("/etc/b") && e.contains("not sorted") && e.contains("after /etc/c"), "{e}");
}

#[test]
fn stray_break_byte_is_named() {
    // the root's children array holds a break byte where an entry should be
    let mut bytes = C::top().map(2).u(1).u(1).u(13).arr(1).0;
    bytes.push(0xff);
    let e = err(&bytes);
    assert!(e.contains("unexpected break byte"), "{e}");
}
