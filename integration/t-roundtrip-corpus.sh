#!/usr/bin/env bash
# The round trip on the real corpus tree, checked by independent tools:
# scan --store -> unpack -> scan gives the same bytes (as root, on tmpfs);
# mtree-netbsd and getfattr see no difference from the reference tree; the
# sparse files stay sparse. Then rootless, as uid 65534: unpack --rootless and
# scan --rootless give back the manifest except what needs privilege.
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
W=$(scratch); trap 'rm -rf "$W"' EXIT
chmod 0755 "$W"

"$OCIX" scan "$REF" --store "$W/store" -o "$W/m.ocix"
"$OCIX" unpack "$W/m.ocix" --store "$W/store" "$W/out"
"$OCIX" scan "$W/out" -o "$W/back.ocix"
cmp "$W/m.ocix" "$W/back.ocix" || fail "unpacked tree does not scan back to the same manifest"

# independent: mtree-netbsd with every keyword it has for this, and xattrs
mtree -c -k type,uid,gid,mode,nlink,size,time,link,sha256digest,device -p "$REF" >"$W/spec"
out=$(mtree -f "$W/spec" -p "$W/out" 2>&1) || fail "mtree finds differences: $(echo "$out" | head -20)"
xdump() { (cd "$1" && getfattr -R -h -d -m - -e hex . 2>/dev/null) | awk '/^# file: /{f=substr($0,9);next} /=/{print f "\t" $0}' | LC_ALL=C sort; }
diff <(xdump "$REF") <(xdump "$W/out") || fail "xattrs differ from the reference"
alloc=$(du -k "$W/out/srv/ocix-edge/sparse/sparse-64M" | cut -f1)
[ "$alloc" -le 64 ] || fail "sparse-64M allocates $alloc KiB (holes not kept)"
note "root round trip exact; sparse-64M allocates $alloc KiB (reference: $(du -k "$REF/srv/ocix-edge/sparse/sparse-64M" | cut -f1) KiB)"

# rootless, as nobody: a binary and inputs it can read, a destination it owns
install -m 0755 "$OCIX" "$W/ocix"
chmod -R a+rX "$W/store" "$W/m.ocix"
mkdir "$W/nobody" && chown 65534:65534 "$W/nobody"
as_nobody "$W/ocix" unpack --rootless "$W/m.ocix" --store "$W/store" "$W/nobody/out" 2>"$W/rootless.err" ||
  fail "rootless unpack: $(cat "$W/rootless.err")"
n=$(rootless_diff_clean "$W/ocix" "$W/nobody/out" "$W/m.ocix" "$W/rootless.diff")
note "rootless: $n findings, all devices or security.capability"
