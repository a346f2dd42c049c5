#!/usr/bin/env bash
# ocix unpack --image against umoci unpack on the corpus image, compared by
# independent tools (mtree-netbsd keywords and getfattr dumps): as root, and
# rootless as uid 65534. Holes are the one deliberate difference (umoci
# writes them as zeros): the sparse files must stay sparse. Both bundles run
# under runc (root, and rootless as 65534).
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference          # umoci unpack (root) of image:debian
W=$(scratch); trap 'rm -rf "$W"' EXIT
chmod 0755 "$W"

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
as_nobody umoci unpack --rootless --image "$W/image:debian" "$W/nobody/umoci" >/dev/null 2>&1 || fail "umoci rootless unpack"
as_nobody "$W/ocix" unpack --rootless --image "$W/image:debian" "$W/nobody/ocix" 2>"$W/rootless.err" ||
  fail "ocix rootless unpack: $(cat "$W/rootless.err")"
same_tree "$W/nobody/umoci/rootfs" "$W/nobody/ocix/rootfs" rootless
note "rootless: equal to umoci's rootless tree (owners in user.rootlesscontainers, devices as empty files)"

# the bundles run: runc as root, and runc --rootless as 65534
trueargs() { jq '.process.args = ["/bin/true"] | .process.terminal = false' "$1/config.json" >"$1/config.json.new" && mv "$1/config.json.new" "$1/config.json"; }
trueargs "$W/bundle"
mkdir -p "$W/runc-root"
timeout 120 runc --root "$W/runc-root" run --bundle "$W/bundle" ocix-it-root </dev/null || fail "runc run of ocix's bundle did not exit 0"
runc --root "$W/runc-root" delete -f ocix-it-root >/dev/null 2>&1 || true
[ -c /dev/null ] || fail "host /dev/null is not a character device; rootless runc needs it"
as_nobody sh -c "jq '.process.args = [\"/bin/true\"] | .process.terminal = false' '$W/nobody/ocix/config.json' >'$W/nobody/ocix/config.json.new' && mv '$W/nobody/ocix/config.json.new' '$W/nobody/ocix/config.json'"
as_nobody mkdir -p "$W/nobody/xdg" "$W/nobody/runc-state"
timeout 120 setpriv --reuid=65534 --regid=65534 --clear-groups env XDG_RUNTIME_DIR="$W/nobody/xdg" \
  runc --rootless true --root "$W/nobody/runc-state" run --bundle "$W/nobody/ocix" ocix-it-rl </dev/null ||
  fail "runc --rootless run of ocix's rootless bundle as 65534 did not exit 0"
note "runc runs both bundles (/bin/true exit 0)"

# refusals, each exit 2 with the path named, nothing touched
expect_err() {  # expect_err PATTERN CMD...: exit 2 and PATTERN on stderr
  local pat=$1; shift
  set +e; "$@" >/dev/null 2>"$W/err"; local rc=$?; set -e
  [ "$rc" = 2 ] || fail "exit $rc (expected 2): $*"
  grep -q -- "$pat" "$W/err" || fail "no '$pat' in: $(cat "$W/err")"
}
mkdir "$W/full" && echo keep >"$W/full/precious"
expect_err "not empty" "$OCIX" unpack --image "$CORPUS/image:debian" "$W/full"
[ "$(cat "$W/full/precious")" = keep ] || fail "a refused unpack touched the bundle"
ln -s "$W/full" "$W/link"
expect_err "symlink" "$OCIX" unpack --image "$CORPUS/image:debian" "$W/link"
expect_err "no-such-tag" "$OCIX" unpack --image "$CORPUS/image:no-such-tag" "$W/b2"
expect_err "oci-layout" "$OCIX" unpack --image "$W/full:debian" "$W/b3"
[ ! -e "$W/b3" ] || fail "a failed import left the bundle it created"
