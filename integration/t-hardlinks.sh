#!/usr/bin/env bash
# Hardlinks of every type but directories, against umoci unpack: an OCI image
# whose first layer (bsdtar, from a real tree) has hardlinked regular files,
# symlinks and fifos, and whose second layer (tar written with Python's
# tarfile) adds char and block devices with hardlinks, links to devices and
# links to names of the first layer. (GNU tar and bsdtar write a device's
# other names as separate devices, GNU tar a fifo's too; Docker's archiver
# links them, so images have them.) Unpacked by umoci and by ocix, as root
# and rootless as uid 65534, the trees are compared by independent tools:
# mtree-netbsd (nlink keyword), getfattr, and the inode groups and link
# counts `stat` gives. Then scan -> unpack -> scan of ocix's tree gives the
# same bytes and the same inode groups. (Sockets cannot travel in tar; their
# hardlinks are tested in tests/unpack.rs.)
. "$(dirname "$0")/lib.sh"
W=$(scratch); trap 'rm -rf "$W"' EXIT
chmod 0755 "$W"
KEYS=type,uid,gid,mode,nlink,size,time,link,sha256digest,device
xdump() { (cd "$1" && getfattr -R -h -d -m - -e hex . 2>/dev/null) | awk '/^# file: /{f=substr($0,9);next} /=/{print f "\t" $0}' | LC_ALL=C sort; }
# groups DIR: one line per inode with more than one name: "nlink path path..."
groups() {
  (cd "$1" && find . ! -type d -printf '%i %n %p\n') | LC_ALL=C sort -k3 |
    awk '{n[$1]=$2; p[$1]=p[$1] " " $3; c[$1]++} END {for (i in p) if (c[i] > 1) print n[i] p[i]}' | LC_ALL=C sort
}
same_tree() {  # same_tree REFERENCE CANDIDATE LABEL
  mtree -c -k "$KEYS" -p "$1" >"$W/spec.$3"
  out=$(mtree -f "$W/spec.$3" -p "$2" 2>&1) || fail "$3: mtree finds differences: $(echo "$out" | head -20)"
  diff <(xdump "$1") <(xdump "$2") >"$W/xattr.$3" || fail "$3: xattrs differ: $(head -20 "$W/xattr.$3")"
  diff <(groups "$1") <(groups "$2") >"$W/groups.$3" || fail "$3: inode groups differ: $(cat "$W/groups.$3")"
}
# expect_group DIR NLINK PATH...: the paths are one inode with NLINK names
expect_group() {
  local dir=$1 n=$2 first=$3; shift 2
  local want; want=$(stat -c '%d:%i' "$dir/$first")
  for p in "$@"; do
    [ "$(stat -c '%d:%i %h' "$dir/$p")" = "$want $n" ] ||
      fail "$dir/$p: $(stat -c 'inode %i, nlink %h, %F' "$dir/$p"), expected inode $want with nlink $n like $first"
  done
}

# --- the image
S=$W/src
mkdir -p "$S/tmp" "$S/dev"
echo data >"$S/file" && ln "$S/file" "$S/tmp/file_hard"
setfattr -n user.note -v kept "$S/file"
ln -s target "$S/symlink" && ln -P "$S/symlink" "$S/tmp/symlink_hard"
chown -h 12:34 "$S/symlink"
mkfifo -m 0640 "$S/fifo" && ln "$S/fifo" "$S/tmp/fifo_hard"
mknod -m 0666 "$S/dev/null" c 1 3
find "$S" -depth -exec touch -h -d @1600000000.5 {} +
bsdtar --format=pax --numeric-owner -C "$S" -cf "$W/layer1.tar" .
[ "$(bsdtar -tvf "$W/layer1.tar" | grep -c ' link to ')" = 3 ] ||
  fail "bsdtar did not record the three hardlinks: $(bsdtar -tvf "$W/layer1.tar")"
python3 - "$W/layer2.tar" <<'EOF'
import sys, tarfile
def entry(name, kind, **kw):
    i = tarfile.TarInfo(name)
    i.type, i.mtime, i.mode = kind, 1600000000, kw.pop("mode", 0o600)
    for k, v in kw.items():
        setattr(i, k, v)
    return i
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    for i in [
        entry("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660, gid=6),
        entry("tmp/loop_hard", tarfile.LNKTYPE, linkname="dev/loop0"),
        entry("dev/null2", tarfile.LNKTYPE, linkname="/dev/null"),
        entry("tmp/null_hard", tarfile.LNKTYPE, linkname="dev/null"),
        entry("tmp/null_hard2", tarfile.LNKTYPE, linkname="dev/null2"),
        entry("tmp/symlink_hard2", tarfile.LNKTYPE, linkname="symlink"),
        entry("tmp/fifo_hard2", tarfile.LNKTYPE, linkname="tmp/fifo_hard"),
    ]:
        t.addfile(i)
EOF
I=$W/image
mkdir -p "$I/blobs/sha256"
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$I/blobs/sha256/$d"; echo "$d $(stat -c %s "$1")"; }
read -r l1 s1 < <(blob "$W/layer1.tar")
read -r l2 s2 < <(blob "$W/layer2.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
  "$l1" "$l2" >"$W/config.json"
read -r c cs < <(blob "$W/config.json")
L=application/vnd.oci.image.layer.v1.tar
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%s},{"mediaType":"%s","digest":"sha256:%s","size":%s}]}' \
  "$c" "$cs" "$L" "$l1" "$s1" "$L" "$l2" "$s2" >"$W/manifest.json"
read -r m ms < <(blob "$W/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"t"}}]}' \
  "$m" "$ms" >"$I/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$I/oci-layout"
chmod -R a+rX "$I"

# --- root
umoci unpack --image "$I:t" "$W/umoci" >/dev/null 2>&1 || fail "umoci unpack"
"$OCIX" unpack --image "$I:t" "$W/ocix" 2>"$W/err" || fail "ocix unpack --image: $(cat "$W/err")"
for t in umoci ocix; do
  R=$W/$t/rootfs
  expect_group "$R" 2 file file tmp/file_hard
  expect_group "$R" 3 symlink symlink tmp/symlink_hard tmp/symlink_hard2
  expect_group "$R" 3 fifo fifo tmp/fifo_hard tmp/fifo_hard2
  expect_group "$R" 4 dev/null dev/null dev/null2 tmp/null_hard tmp/null_hard2
  expect_group "$R" 2 dev/loop0 dev/loop0 tmp/loop_hard
  [ -L "$R/tmp/symlink_hard" ] && [ -p "$R/tmp/fifo_hard2" ] && [ -c "$R/tmp/null_hard" ] && [ -b "$R/tmp/loop_hard" ] ||
    fail "$t: a link has the wrong type"
done
[ "$(getfattr --only-values -n user.note "$W/ocix/rootfs/tmp/file_hard" 2>/dev/null)" = kept ] || fail "the xattr did not travel"
same_tree "$W/umoci/rootfs" "$W/ocix/rootfs" root
"$OCIX" diff "$W/ocix" >/dev/null || fail "ocix diff BUNDLE is not clean right after unpack"
# the image's manifest describes umoci's tree too, checked by ocix diff and by mtree
"$OCIX" diff "$W/umoci/rootfs" "$W/ocix/ocix.cbor" >"$W/diff.umoci" || fail "umoci's tree differs from the manifest: $(head "$W/diff.umoci")"
"$OCIX" show --mtree "$W/ocix/ocix.cbor" -o "$W/ocix.mtree"
grep -q '^\./tmp/symlink_hard type=link .*nlink=3 ' "$W/ocix.mtree" || fail "no nlink=3 for the symlink group: $(cat "$W/ocix.mtree")"
out=$(mtree -f "$W/ocix.mtree" -p "$W/umoci/rootfs" 2>&1) || fail "mtree: umoci's tree against ocix show --mtree: $out"
note "root: ocix's tree equals umoci's, five inode groups of every type with their link counts"

# scan -> unpack -> scan: same bytes, same inode groups
"$OCIX" scan "$W/ocix/rootfs" --store "$W/store" -o "$W/m1" -q
cmp -s "$W/m1" "$W/ocix/ocix.cbor" || fail "scan of the unpacked tree differs from the imported manifest: $("$OCIX" diff "$W/ocix/rootfs" "$W/ocix/ocix.cbor")"
"$OCIX" unpack "$W/m1" --store "$W/store" "$W/again" -q
"$OCIX" scan "$W/again" -o "$W/m2" -q
cmp -s "$W/m1" "$W/m2" || fail "scan -> unpack -> scan changed the manifest"
diff <(groups "$W/ocix/rootfs") <(groups "$W/again") >"$W/groups.again" || fail "inode groups changed: $(cat "$W/groups.again")"
# --update over broken groups links them again
rm "$W/again/tmp/symlink_hard" && ln -s target "$W/again/tmp/symlink_hard"
rm "$W/again/tmp/fifo_hard" && mkfifo "$W/again/tmp/fifo_hard"
"$OCIX" unpack "$W/m1" --store "$W/store" --update "$W/again" -q
"$OCIX" scan "$W/again" -o "$W/m3" -q
cmp -s "$W/m1" "$W/m3" && diff <(groups "$W/ocix/rootfs") <(groups "$W/again") >/dev/null ||
  fail "--update did not restore the inode groups: $(groups "$W/again")"
note "scan -> unpack -> scan: same bytes and inode groups; --update relinks broken groups"

# --- rootless, both tools as nobody
install -m 0755 "$OCIX" "$W/ocix-bin"
mkdir "$W/nobody" && chown 65534:65534 "$W/nobody"
as_nobody umoci unpack --rootless --image "$I:t" "$W/nobody/umoci" >/dev/null 2>&1 || fail "umoci rootless unpack"
as_nobody "$W/ocix-bin" unpack --rootless --image "$I:t" "$W/nobody/ocix" 2>"$W/rootless.err" ||
  fail "ocix rootless unpack: $(cat "$W/rootless.err")"
for t in umoci ocix; do
  R=$W/nobody/$t/rootfs
  expect_group "$R" 3 symlink symlink tmp/symlink_hard tmp/symlink_hard2
  expect_group "$R" 3 fifo fifo tmp/fifo_hard tmp/fifo_hard2
  expect_group "$R" 4 dev/null dev/null dev/null2 tmp/null_hard tmp/null_hard2
  expect_group "$R" 2 dev/loop0 dev/loop0 tmp/loop_hard
  [ -f "$R/tmp/null_hard" ] && [ ! -s "$R/tmp/null_hard" ] || fail "$t rootless: a device is not an empty file"
done
same_tree "$W/nobody/umoci/rootfs" "$W/nobody/ocix/rootfs" rootless
note "rootless: equal to umoci's rootless tree; device links name its placeholder file"
