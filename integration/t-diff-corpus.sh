#!/usr/bin/env bash
# ocix diff on the corpus: a tree equals its own manifest (exit 0); each
# change made on a copy is reported at the exact path and field (exit 1).
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
W=$(scratch); trap 'rm -rf "$W"' EXIT
"$OCIX" scan "$REF" -o "$W/m.ocix"
"$OCIX" diff "$REF" "$W/m.ocix" >"$W/out" || fail "diff of a tree against its own manifest: $(head "$W/out")"
[ ! -s "$W/out" ] || fail "unexpected output: $(head "$W/out")"

cp -a "$REF" "$W/c"
E=$W/c/srv/ocix-edge
chmod 0600 "$W/c/etc/passwd"
setfattr -n user.foo -v changed "$E/xattr/user-xattr"
setfattr -x security.capability "$E/xattr/cap-bin"
rm "$E/hardlink/b" && cp "$E/hardlink/a" "$E/hardlink/b"     # broken hardlink (same content)
printf 'x' | dd of="$E/sparse/sparse-64M" bs=1 seek=$((2 << 20)) conv=notrunc status=none   # fills a zero run
touch -h -d @946684800 "$E/mtime/symlink-1999"
rm -rf "$W/c/usr/share/doc/dpkg"
echo new >"$W/c/etc/extra"
set +e; "$OCIX" diff "$W/c" "$W/m.ocix" >"$W/out" 2>"$W/err"; rc=$?; set -e
[ "$rc" = 1 ] || fail "diff exit $rc, expected 1: $(cat "$W/err")"
want=(
  "/etc/passwd: mode"
  "/srv/ocix-edge/xattr/user-xattr: xattr user.foo changed"
  "/srv/ocix-edge/xattr/cap-bin: xattr security.capability removed"
  "/srv/ocix-edge/hardlink/b: link"
  "/srv/ocix-edge/sparse/sparse-64M: digest"
  "/srv/ocix-edge/sparse/sparse-64M: zeros"
  "/srv/ocix-edge/mtime/symlink-1999: mtime"
  "missing /usr/share/doc/dpkg"
  "extra /etc/extra"
)
for w in "${want[@]}"; do grep -qF -- "$w" "$W/out" || fail "not reported: '$w'; got: $(cat "$W/out")"; done
n=$(wc -l <"$W/out")
[ "$n" -le 14 ] || fail "$n findings for 8 changes: $(cat "$W/out")"
set +e; "$OCIX" diff --json "$W/c" "$W/m.ocix" >"$W/json"; rc=$?; set -e
[ "$rc" = 1 ] || fail "diff --json exit $rc"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d) == int(sys.argv[2]), (len(d), sys.argv[2])' "$W/json" "$n" ||
  fail "--json does not list the same findings"
"$OCIX" diff --ignore mode,xattr,link,digest,zeros,mtime --exclude /usr/share/doc/dpkg --exclude extra "$W/c" "$W/m.ocix" ||
  fail "masked diff still reports: $("$OCIX" diff --ignore mode,xattr,link,digest,zeros,mtime --exclude /usr/share/doc/dpkg --exclude extra "$W/c" "$W/m.ocix")"
