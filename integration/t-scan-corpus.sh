#!/usr/bin/env bash
# ocix scan on the real corpus tree: deterministic, filesystem-independent,
# valid against ocix.cddl (independent validator), every edge case recorded.
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
W=$(scratch); trap 'rm -rf "$W"' EXIT

"$OCIX" scan "$REF" -o "$W/a.ocix"
"$OCIX" scan "$REF" --threads 1 -o "$W/b.ocix"
cmp "$W/a.ocix" "$W/b.ocix" || fail "two scans of the same tree differ"

# another filesystem (tmpfs), other inode numbers and readdir order
cp -a "$REF" "$W/copy"
"$OCIX" scan "$W/copy" -o "$W/c.ocix"
cmp "$W/a.ocix" "$W/c.ocix" || fail "scan of a cp -a copy on another filesystem differs"

python3 "$HERE/cddl_check.py" "$TOP/ocix.cddl" "$W/a.ocix" || fail "CDDL validation"

# edge cases, read back with an independent CBOR decoder (python cbor2)
python3 - "$W/a.ocix" "$REF" <<'PY' || fail "edge cases"
import os, sys, cbor2
doc = cbor2.loads(open(sys.argv[1], "rb").read())
assert doc.tag == 1868786040 and doc.value[0] == 1
entries = {}
def walk(e, path):
    entries[path] = e
    for c in e.get(13, ()):
        walk(c, path + b"/" + c[0])
walk(doc.value[1], b"")
# same entry count as find(1)
n = sum(1 for _ in os.walk(sys.argv[2]))  # dirs
count = 0
for dp, dns, fns in os.walk(sys.argv[2]):
    count += len(dns) + len(fns)
assert len(entries) == count + 1, (len(entries), count + 1)
E = b"/srv/ocix-edge"
sp = entries[E + b"/sparse/sparse-64M"]
assert sp[7] == 64 << 20
runs = list(sp[9]); blocks = sum(runs[1::2])
assert (64 << 20) // 4096 - blocks == 4, "sparse-64M: 4 data blocks expected"
th = entries[E + b"/sparse/trailing-hole-8M"]
assert list(th[9]) == [1, 2047], th[9]
links = [p for p, e in entries.items() if e.get(1) == 3]
assert len(links) == 4, links
assert entries[E + b"/hardlink-other/c"][10] == b"srv/ocix-edge/hardlink/a"
xattrs = sum(len(e.get(12, {})) for e in entries.values())
assert xattrs == 6, xattrs
assert list(entries[E + b"/dev/null"][11]) == [1, 3] and entries[E + b"/dev/null"][1] == 4
assert list(entries[E + b"/dev/loop0"][11]) == [7, 0] and entries[E + b"/dev/loop0"][4] == 6
assert entries[E + b"/dev/fifo"][1] == 6 and entries[E + b"/dev/fifo"][2] == 0o620
assert entries[b"/usr/local/bin/ocix-setuid"][2] == 0o4755
assert entries[E + b"/perm/sticky"][2] == 0o1777
assert entries[E + b"/mtime/pre-1970"][5] == -86400
assert entries[E + b"/mtime/post-2038"][5] == 4102444800
assert 5 not in entries[E + b"/mtime/epoch-0"]
assert entries[b"/etc/ocix-release"][6] == 123456789
assert entries[E + b"/owner/u100000"][3] == 100000
assert b"system.posix_acl_default" in entries[E + b"/xattr/acl-default-dir"][12]
assert b"security.capability" in entries[E + b"/xattr/cap-bin"][12]
assert E + b"/names/new\nline" in entries
print("edge cases ok:", len(entries), "entries,", len(links), "hardlinks,", xattrs, "xattrs")
PY
