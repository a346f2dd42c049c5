#!/usr/bin/env bash
# ocix mount on the corpus: `ocix mount` of the imported manifest diffs clean
# against it; `unpack --image LAYOUT:TAG BUNDLE --mount` makes a bundle whose
# rootfs is a writable mount, runc runs it, what the container writes lands
# in BUNDLE/upper and the lower tree (the image, the store) stays clean;
# `ocix diff` of the rootfs then shows exactly the container's change.
# Nothing stays mounted (a trap unmounts whatever this made).
. "$(dirname "$0")/lib.sh"
ensure_corpus
IMG=$CORPUS/image
command -v runc >/dev/null || fail "runc missing"
[ "$(id -u)" = 0 ] || { echo "SKIP: ocix mount needs root" >&2; exit 0; }
# file-backed EROFS mounts need a disk filesystem (tmpfs cannot back them)
W=$(mktemp -d "${TMPDIR:-/var/tmp}/ocix-mount.XXXXXX")
ID=ocix-it-mount-$$
cleanup() {
  runc --root "$W/runc-root" delete -f "$ID" >/dev/null 2>&1 || true
  for m in "$W/mnt" "$W/bundle/rootfs"; do "$OCIX" umount "$m" >/dev/null 2>&1 || true; done
  rm -rf "$W"
}
trap cleanup EXIT

# -- 1. read-only mount of the imported manifest
"$OCIX" import "$IMG:debian" --store "$W/store" -o "$W/m.ocix" -q
mkdir "$W/mnt"
"$OCIX" mount "$W/m.ocix" --store "$W/store" "$W/mnt" || fail "ocix mount failed"
"$OCIX" diff "$W/mnt" "$W/m.ocix" >"$W/diff.txt" 2>&1 || fail "diff of the mount: $(head -20 "$W/diff.txt")"
touch "$W/mnt/x" 2>/dev/null && fail "a read-only mount took a write"
"$OCIX" umount "$W/mnt" || fail "ocix umount failed"
grep -q " $W/mnt " /proc/self/mountinfo && fail "$W/mnt still mounted"
note "mount of the corpus: diff clean, read-only, unmounted"

# -- 2. a bundle whose rootfs is a writable mount; runc writes into it
"$OCIX" unpack --image "$IMG:debian" "$W/bundle" --mount -q || fail "unpack --mount failed"
[ -f "$W/bundle/config.json" ] && [ -d "$W/bundle/upper" ] && [ -d "$W/bundle/store/blobs/sha256" ] ||
  fail "bundle lacks config.json, upper or store"
"$OCIX" diff "$W/bundle" >"$W/diff0.txt" 2>&1 || fail "fresh bundle drifts: $(head -20 "$W/diff0.txt")"
jq '.process.args = ["/bin/sh", "-c", "echo written-inside > /written && rm /etc/issue"] | .process.terminal = false' \
  "$W/bundle/config.json" >"$W/config.new" && mv "$W/config.new" "$W/bundle/config.json"
timeout 120 runc --root "$W/runc-root" run --bundle "$W/bundle" "$ID" </dev/null || fail "runc run did not exit 0"
runc --root "$W/runc-root" delete -f "$ID" >/dev/null 2>&1 || true
[ "$(cat "$W/bundle/upper/written")" = written-inside ] || fail "the write did not land in BUNDLE/upper"
[ -c "$W/bundle/upper/etc/issue" ] || fail "the removal is not a whiteout in BUNDLE/upper"
# the drift is exactly the container's change
set +e; "$OCIX" diff "$W/bundle" >"$W/diff1.txt" 2>&1; rc=$?; set -e
[ "$rc" = 1 ] || fail "diff after the run: exit $rc: $(cat "$W/diff1.txt")"
grep -q '^missing /etc/issue$' "$W/diff1.txt" && grep -q '^extra /written$' "$W/diff1.txt" ||
  fail "diff does not show the container's change: $(cat "$W/diff1.txt")"
# the lower tree stays clean: unmounted and mounted again read-only, it is the image
"$OCIX" umount "$W/bundle/rootfs" || fail "umount of the bundle rootfs failed"
mkdir -p "$W/mnt"
"$OCIX" mount "$W/bundle/ocix.cbor" --store "$W/bundle/store" "$W/mnt" --verify || fail "remount failed"
"$OCIX" diff "$W/mnt" "$W/bundle/ocix.cbor" >"$W/diff2.txt" 2>&1 || fail "lower tree changed: $(head "$W/diff2.txt")"
"$OCIX" umount "$W/mnt"
note "unpack --mount bundle: runc wrote into upper, diff shows it, lower clean"
