#!/usr/bin/env bash
# ocix unpack --image against umoci unpack on the corpus image, compared by
# independent tools (mtree-netbsd keywords and getfattr dumps): as root, and
# rootless as uid 65534. Holes are the one deliberate difference (umoci
# writes them as zeros): the sparse files must stay sparse.
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference          # umoci unpack (root) of image:debian
W=$(scratch); trap 'rm -rf "$W"' EXIT
chmod 0755 "$W"
KEYS=type,uid,gid,mode,nlink,size,time,link,sha256digest,device
xdump() { (cd "$1" && getfattr -R -h -d -m - -e hex . 2>/dev/null) | awk '/^# file: /{f=substr($0,9);next} /=/{print f "\t" $0}' | LC_ALL=C sort; }
same_tree() {  # same_tree REFERENCE CANDIDATE LABEL
  mtree -c -k "$KEYS" -p "$1" >"$W/spec.$3"
  out=$(mtree -f "$W/spec.$3" -p "$2" 2>&1) || fail "$3: mtree finds differences: $(echo "$out" | head -20)"
  diff <(xdump "$1") <(xdump "$2") >"$W/xattr.$3" || fail "$3: xattrs differ: $(head -20 "$W/xattr.$3")"
}

# root
"$OCIX" unpack --image "$CORPUS/image:debian" "$W/bundle"
[ -f "$W/bundle/ocix.cbor" ] && [ -d "$W/bundle/rootfs" ] || fail "bundle layout"
same_tree "$REF" "$W/bundle/rootfs" root
"$OCIX" diff "$W/bundle" >/dev/null || fail "ocix diff BUNDLE is not clean right after unpack"
alloc=$(du -k "$W/bundle/rootfs/srv/ocix-edge/sparse/sparse-64M" | cut -f1)
[ "$alloc" -le 64 ] || fail "sparse-64M allocates $alloc KiB"
note "root: equal to umoci's tree; sparse-64M $alloc KiB vs umoci $(du -k "$REF/srv/ocix-edge/sparse/sparse-64M" | cut -f1) KiB"

# rootless, both tools as nobody, from a copy of the image nobody can read
cp -a "$CORPUS/image" "$W/image" && chmod -R a+rX "$W/image"
install -m 0755 "$OCIX" "$W/ocix"
mkdir "$W/nobody" && chown 65534:65534 "$W/nobody"
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
as_nobody umoci unpack --rootless --image "$W/image:debian" "$W/nobody/umoci" >/dev/null 2>&1 || fail "umoci rootless unpack"
as_nobody "$W/ocix" unpack --rootless --image "$W/image:debian" "$W/nobody/ocix" 2>"$W/rootless.err" ||
  fail "ocix rootless unpack: $(cat "$W/rootless.err")"
same_tree "$W/nobody/umoci/rootfs" "$W/nobody/ocix/rootfs" rootless
note "rootless: equal to umoci's rootless tree (owners in user.rootlesscontainers, devices as empty files)"
