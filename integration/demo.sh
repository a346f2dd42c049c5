#!/usr/bin/env bash
# demo.sh: the main job on a sample tree this script makes itself:
# an OCI image of it (built with umoci) unpacked into a runtime bundle like
# `umoci unpack` does; then scan -> manifest + blobs, show it, unpack it
# elsewhere, scan the copy (same bytes), audit it with diff, change one
# thing, audit again.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
OCIX=${OCIX:-$TOP/target/release/ocix}
W=$(mktemp -d "${TMPDIR:-/tmp}/ocix-demo.XXXXXX")
trap 'rm -rf "$W"' EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

# --- a small tree with the awkward cases --------------------------------
T=$W/tree
mkdir -p "$T/etc" "$T/usr/bin" "$T/srv/data" "$T/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$T/etc/passwd"
printf 'hello from ocix\n' >"$T/srv/data/hello.txt"
ln "$T/srv/data/hello.txt" "$T/srv/data/hello-again.txt"          # hardlink
ln -s ../srv/data/hello.txt "$T/etc/motd"                          # symlink
truncate -s 16M "$T/srv/data/sparse.img"                           # sparse file
printf 'block' | dd of="$T/srv/data/sparse.img" bs=1 seek=$((8 << 20)) conv=notrunc status=none
cp /bin/true "$T/usr/bin/su-demo" && chmod 4755 "$T/usr/bin/su-demo"  # setuid
chmod 1777 "$T/tmp"                                                 # sticky
mkfifo "$T/srv/fifo"
printf 'secret' >"$T/srv/data/owned" && chown 1000:1000 "$T/srv/data/owned" 2>/dev/null || true
setfattr -n user.origin -v demo "$T/srv/data/hello.txt" 2>/dev/null || true
[ "$(id -u)" = 0 ] && mknod "$T/srv/null" c 1 3
touch -d @1700000000 "$T/etc/passwd"

# --- an OCI image of that tree, made with umoci, into a runtime bundle --------
if command -v umoci >/dev/null; then
  say "umoci init/new/unpack/repack: an OCI image layout of the tree ($W/image:demo)"
  umoci init --layout "$W/image" && umoci new --image "$W/image:demo"
  umoci unpack --image "$W/image:demo" "$W/umoci-bundle" >/dev/null 2>&1
  cp -a "$T/." "$W/umoci-bundle/rootfs/"
  umoci repack --image "$W/image:demo" "$W/umoci-bundle" >/dev/null 2>&1
  run "$OCIX" unpack --image "$W/image:demo" "$W/bundle"
  say "ls $W/bundle"; ls "$W/bundle"
  run "$OCIX" diff "$W/bundle" && echo "(exit 0: the bundle's rootfs matches its manifest)"
  run "$OCIX" import "$W/image:demo" --store "$W/store" -o "$W/image.ocix"
else
  echo "(umoci not installed: make deps installs it; skipping the image part)"
fi

run "$OCIX" scan "$T" --store "$W/store" -o "$W/tree.ocix"
run "$OCIX" digest "$W/tree.ocix"
run "$OCIX" show "$W/tree.ocix"
say "ls $W/store/blobs/sha256 | wc -l"; ls "$W/store/blobs/sha256" | wc -l

run "$OCIX" unpack "$W/tree.ocix" --store "$W/store" "$W/copy"
run "$OCIX" scan "$W/copy" -o "$W/copy.ocix"
say "cmp tree.ocix copy.ocix"
cmp "$W/tree.ocix" "$W/copy.ocix" && echo "identical: the unpacked tree scans back to the same bytes"
say "du -k (sparse file keeps its holes)"
du -k --apparent-size "$W/copy/srv/data/sparse.img"; du -k "$W/copy/srv/data/sparse.img"

run "$OCIX" diff "$W/copy" "$W/tree.ocix" && echo "(exit 0: no drift)"
say "chmod 600 copy/etc/passwd; echo x >> copy/srv/data/hello.txt"
chmod 600 "$W/copy/etc/passwd"; echo x >>"$W/copy/srv/data/hello.txt"
set +e
run "$OCIX" diff "$W/copy" "$W/tree.ocix"; rc=$?
set -e
echo "(exit $rc: drift found)"
[ "$rc" = 1 ]
