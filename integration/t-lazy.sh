#!/usr/bin/env bash
# Lazy mounts from a registry, end to end, through a throttled link (the
# proxy integration/throttle.py in front of a real docker-registry on
# 127.0.0.1: LAZY_RATE bytes a second, LAZY_LATENCY s added to every
# request), with the corpus and the node tree pushed as ocix artifacts:
#  1. `ocix unpack --image docker://... BUNDLE --mount --lazy
#     --no-background`, then runc runs `sh -c 'cat /etc/os-release; ls
#     /usr/bin | wc -l'` in it: right output, and the bytes fetched by then
#     at most LAZY_MAX_PCT (5) % of the image's bytes on the wire;
#  2. the node tree mounted lazily (`ocix mount docker://...`): 100 files of
#     one package read right, all bytes fetched (the lazy index instead of
#     the manifest, the chunks of the digest table the files need, their
#     data) within the same share of the image;
#  3. with background prefetch, every blob arrives without a read, the
#     image fetched about once (at most LAZY_MAX_WHOLE_PCT, 110, % of its
#     bytes), and `ocix diff` of the mount against the manifest is clean;
#  4. `--record-access` lists what the first command read; pushed with
#     `ocix push --prefetch`, a second run of the same command fetches
#     nothing it does not read (every blob and pack member each request
#     brought is the content of a file it read, and the store holds no other);
#  5. faults: the registry stops mid-way (the read gets EIO, the error is
#     logged, nothing unverified is stored; once it serves again the read
#     succeeds), a blob served with a wrong byte (EIO, not stored; after
#     the fault the read succeeds), one blob slow while other files are read.
# Stores hold only verified blobs throughout; nothing stays mounted and no
# mount daemon is left.
. "$(dirname "$0")/lib.sh"
ensure_corpus
[ "$(id -u)" = 0 ] || { echo "SKIP: lazy mounts need root (EROFS and overlay)" >&2; exit 0; }
command -v runc >/dev/null || fail "runc missing"
REF=$CORPUS/rootfs-reference
NODE_TREE=$CORPUS/node/tree
MAXPCT=${LAZY_MAX_PCT:-5}
# file-backed EROFS mounts need a disk filesystem (tmpfs cannot back them)
W=$(mktemp -d "${TMPDIR:-/var/tmp}/ocix-lazy.XXXXXX")
. "$HERE/registry-lib.sh"
. "$HERE/throttle-lib.sh"
need_tools jq
LT=(python3 "$HERE/lazy-tool.py")
lazy_cleanup() {
  local m
  for m in $(runc --root "$W/runc" list -q 2>/dev/null); do runc --root "$W/runc" delete -f "$m" >/dev/null 2>&1 || true; done
  for m in $(awk -v w="$W/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    "$OCIX" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
  done
}
trap 'lazy_cleanup; registry_cleanup' EXIT

start_registry "$W/reg"
R=127.0.0.1:$PORT
# artifact NAME TREE: scanned, pushed straight to the registry as NAME:v1,
# listed (W/NAME.json) and its bytes on the wire counted (W/NAME.wire)
artifact() {
  "$OCIX" scan "$2" --store "$W/src" -o "$W/$1.ocix"
  "$OCIX" push -q "$W/$1.ocix" --store "$W/src" "docker://$R/ocix/$1:v1" || fail "push of $1 failed"
  "$OCIX" show --json "$W/$1.ocix" >"$W/$1.json"
  "${LT[@]}" digests "$W/$1.json" | sed 's/^sha256://' >"$W/$1.digests"
  "${LT[@]}" wire "$R" "ocix/$1" v1 | jq -r .total >"$W/$1.wire"
}
artifact corpus "$REF"
start_throttle "$R" "$W/thr" --rate "${LAZY_RATE:-10000000}" --latency "${LAZY_LATENCY:-0.02}"
SRC=docker://$TP/ocix/corpus:v1

# pct NAME BYTES: BYTES as a share of NAME's image, to two places
pct() { awk -v b="$2" -v w="$(cat "$W/$1.wire")" 'BEGIN{printf "%.2f", 100*b/w}'; }
within_pct() {  # within_pct WHAT NAME BYTES
  local p; p=$(pct "$2" "$3")
  awk -v p="$p" -v m="$MAXPCT" 'BEGIN{exit !(p <= m)}' ||
    fail "$1: $3 bytes fetched, $p% of the image ($(cat "$W/$2.wire") bytes), more than $MAXPCT%"
  echo "$p"
}
# verified STORE: every blob in STORE has the sha256 its name says
verified() {
  local bad
  bad=$(cd "$1/blobs/sha256" && find . -type f -printf '%P\n' | LC_ALL=C sort |
    awk '{print $1 "  " $1}' | sha256sum --quiet -c 2>/dev/null | head -5 || true)
  [ -z "$bad" ] || fail "$1 holds a blob whose content is not its digest: $bad"
}
# has STORE DIGEST: the store holds the blob (sha256:HEX or HEX)
has() { [ -f "$1/blobs/sha256/${2#sha256:}" ]; }
# readcode FILE: OK when FILE reads whole, else the errno's name (EIO...)
readcode() {
  python3 - "$1" <<'PY'
import errno, sys
try:
    with open(sys.argv[1], "rb") as f:
        while f.read(1 << 20):
            pass
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY
}
# the log lines of a lazy mount on STORE (all its daemons' logs)
mountlog() { cat "$1"/.ocix-mount/lazy/*.log 2>/dev/null || true; }
unmounted() {  # unmounted MNT: umount through ocix, and it is gone
  "$OCIX" umount "$1" || fail "ocix umount $1 failed"
  ! grep -q " $1 " /proc/self/mountinfo || fail "$1 still mounted after ocix umount"
}
# runc_first BUNDLE ID OUT: runs the first command in BUNDLE (its config's
# process replaced), its output in OUT
FIRST='cat /etc/os-release; ls /usr/bin | wc -l'
runc_first() {
  jq --arg c "$FIRST" '.process.args = ["sh", "-c", $c] | .process.terminal = false' "$1/config.json" >"$1/config.new" &&
    mv "$1/config.new" "$1/config.json"
  timeout 300 runc --root "$W/runc" run --bundle "$1" "$2" </dev/null >"$3" 2>"$3.err" ||
    fail "runc run in $1: $(cat "$3.err")"
  runc --root "$W/runc" delete -f "$2" >/dev/null 2>&1 || true
}
expected_first() { cat "$REF/usr/lib/os-release"; ls "$REF/usr/bin" | wc -l; }

# -- 1. a bundle whose rootfs is a lazy mount; runc runs the first command
treset
"$OCIX" unpack -q --image "$SRC" "$W/b1" --mount --lazy --no-background || fail "unpack --mount --lazy failed"
[ -f "$W/b1/config.json" ] || fail "the lazy bundle has no config.json"
cmp -s "$W/b1/ocix.cbor" "$W/corpus.ocix" || fail "the lazy bundle's ocix.cbor is not the manifest pushed"
runc_first "$W/b1" "lazy1-$$" "$W/first1.out"
b1=$(tstats .bytes)
cmp -s "$W/first1.out" <(expected_first) ||
  fail "first command printed: $(head -20 "$W/first1.out") (expected $(expected_first | tr '\n' ' '))"
p1=$(within_pct "runc's first command" corpus "$b1")
cp "$W/b1/config.json" "$W/config.template"
unmounted "$W/b1/rootfs"
verified "$W/b1/store"
note "unpack --lazy + runc: first command right; $b1 bytes fetched ($p1% of $(cat "$W/corpus.wire")), store verified"

# -- 2. the node tree: 100 files of one package read through a lazy mount
if [ -d "$NODE_TREE" ]; then
  artifact node "$NODE_TREE"
  "${LT[@]}" pick "$W/node.json" /app/node_modules/@babel/core 100 >"$W/node.files"
  [ "$(wc -l <"$W/node.files")" = 100 ] || fail "fewer than 100 files picked in the node tree"
  mkdir "$W/n2"
  treset
  "$OCIX" mount -q "docker://$TP/ocix/node:v1" "$W/n2" --store "$W/ns2" --no-background || fail "lazy mount of node failed"
  while IFS= read -r p; do
    cmp -s "$W/n2$p" "$NODE_TREE$p" || fail "node: $p reads other bytes than the tree's"
  done <"$W/node.files"
  b2=$(tstats .bytes)
  tlog >"$W/log-n2.jsonl"
  read -r meta2 files2 <<<"$("${LT[@]}" split "$R" ocix/node v1 "$W/log-n2.jsonl" | jq -r '"\(.meta) \(.files)"')"
  # the node tree's manifest (62,000 entries, 4.3 MB, about 2 MB as zstd)
  # would by itself be some 4.5% of this image, most of it the 59,000 file
  # digests: the mount fetches the lazy index instead (the tree without
  # them) and only the chunks of the digest table its reads need, and
  # everything together is held to the limit
  p2=$(pct node "$files2")
  within_pct "node: 100 files read, lazy index and digest chunks included" node "$b2" >/dev/null
  ! grep -q "\"/v2/ocix/node/blobs/sha256:$(sha256sum <"$W/node.ocix" | cut -c1-64)\"" "$W/log-n2.jsonl" ||
    fail "node: the lazy mount fetched the whole manifest"
  unmounted "$W/n2"
  verified "$W/ns2"
  note "node: 100 files of @babel/core read right; $b2 bytes fetched ($(pct node "$b2")% of $(cat "$W/node.wire")): $meta2 OCI manifest, lazy index and digest chunks, $files2 file data ($p2%)"
else
  note "no node tree at $NODE_TREE (build it with ../shared/corpus/make-node-tree.sh): node part skipped"
fi

# -- 3. background prefetch brings the whole image; the mount diffs clean
mkdir "$W/m3"
treset
"$OCIX" mount -q "$SRC" "$W/m3" --store "$W/s3" || fail "lazy mount with background prefetch failed"
complete=
for _ in $(seq 1 1200); do
  if [ -z "$(comm -23 "$W/corpus.digests" <(ls "$W/s3/blobs/sha256" 2>/dev/null | LC_ALL=C sort))" ]; then
    complete=1; break
  fi
  sleep 0.5
done
[ -n "$complete" ] || fail "background prefetch: $(comm -23 "$W/corpus.digests" <(ls "$W/s3/blobs/sha256" | LC_ALL=C sort) | wc -l) blobs still missing after 600 s; log: $(mountlog "$W/s3" | tail -5)"
b3=$(tstats .bytes)
# the whole image once: not each blob again for every way it can be asked for
MAXPCT=${LAZY_MAX_WHOLE_PCT:-110} within_pct "background prefetch, the whole image" corpus "$b3" >/dev/null
"$OCIX" diff "$W/m3" "$W/corpus.ocix" >"$W/diff3.out" 2>&1 || fail "diff of the lazy mount: $(head -20 "$W/diff3.out")"
unmounted "$W/m3"
verified "$W/s3"
note "background prefetch: every blob in the store ($b3 bytes, $(pct corpus "$b3")% of the image), diff of the mount clean"

# -- 4. an access list recorded, pushed with the artifact, followed
# lazy_run N TAG: `ocix mount docker://...:TAG` writable as a bundle's
# rootfs (the config of 1), --record-access W/accessN.txt, the first command
# run in it; the requests served in W/logN.jsonl
lazy_run() {
  local b=$W/b4-$1
  mkdir -p "$b/rootfs" "$b/upper" "$b/work"
  jq --arg r "$b/rootfs" '.root.path = $r' "$W/config.template" >"$b/config.json"
  treset
  "$OCIX" mount -q "docker://$TP/ocix/corpus:$2" "$b/rootfs" --store "$W/s4-$1" --upper "$b/upper" --work "$b/work" \
    --no-background --record-access "$W/access$1.txt" || fail "lazy mount of corpus:$2 failed"
  runc_first "$b" "lazy4-$1-$$" "$W/first4-$1.out"
  tlog >"$W/log$1.jsonl"
  cmp -s "$W/first4-$1.out" <(expected_first) || fail "run $1: first command printed $(head -5 "$W/first4-$1.out")"
  unmounted "$b/rootfs"
  verified "$W/s4-$1"
}
lazy_run 1 v1
[ -s "$W/access1.txt" ] || fail "--record-access wrote nothing"
"${LT[@]}" digests "$W/corpus.json" "$W/access1.txt" >"$W/read1.digests"
for f in /usr/bin/cat /usr/bin/ls /usr/bin/wc /usr/lib/os-release; do
  d=$(jq -r --arg p "$f" '.[] | select(.path == $p) | .digest' "$W/corpus.json")
  grep -qx "$d" "$W/read1.digests" || fail "the access record misses $f ($d): $(head -20 "$W/access1.txt")"
done
"${LT[@]}" check-log "$R" ocix/corpus v1 "$W/corpus.json" "$W/access1.txt" "$W/log1.jsonl" >"$W/check1.out" || true
"$OCIX" push -q --prefetch "$W/access1.txt" "$W/corpus.ocix" --store "$W/src" "docker://$R/ocix/corpus:acc" ||
  fail "push --prefetch failed"
lazy_run 2 acc
"${LT[@]}" check-log "$R" ocix/corpus acc "$W/corpus.json" "$W/access2.txt" "$W/log2.jsonl" >"$W/check2.out" ||
  fail "the second run fetched what it did not read: $(cat "$W/check2.out")"
"${LT[@]}" digests "$W/corpus.json" "$W/access2.txt" | sed 's/^sha256://' >"$W/read2.digests"
extra=$(comm -12 "$W/corpus.digests" <(ls "$W/s4-2/blobs/sha256" | LC_ALL=C sort) | comm -23 - "$W/read2.digests")
[ -z "$extra" ] || fail "the second run stored blobs of files it did not read: $(echo "$extra" | head -5)"
note "access list: $(wc -l <"$W/access1.txt") paths; first run: $(head -1 "$W/check1.out")"
note "second run (list pushed with --prefetch): $(head -1 "$W/check2.out")"

# -- 5. faults, on a mount that retries little (--timeout 3 --retries 1)
"${LT[@]}" singles "$R" ocix/corpus v1 "$W/corpus.json" | awk -F'\t' '$3 > 300000 && $3 < 4000000' >"$W/singles"
[ "$(wc -l <"$W/singles")" -ge 3 ] || fail "fewer than three blobs of 300 kB to 4 MB on their own: $(cat "$W/singles")"
IFS=$'\t' read -r BAD_REG BAD BAD_W _ BAD_PATH <<<"$(sed -n 1p "$W/singles")"
IFS=$'\t' read -r STOP_REG STOP STOP_W _ STOP_PATH <<<"$(tail -2 "$W/singles" | sed -n 1p)"
IFS=$'\t' read -r SLOW_REG SLOW SLOW_W _ SLOW_PATH <<<"$(tail -1 "$W/singles")"
S5=$W/s5
mkdir "$W/m5"
treset
"$OCIX" mount -q "$SRC" "$W/m5" --store "$S5" --no-background --timeout 3 --retries 1 || fail "lazy mount for the faults failed"

# the registry stops mid-way through the blob: EIO, logged, not stored;
# once it serves again, the same read succeeds
tctl "stop_after=$((STOP_W / 3))"
rc=$(readcode "$W/m5$STOP_PATH")
[ "$rc" = EIO ] || fail "read with the registry stopped mid-way: $rc, expected EIO"
[ "$(tstats .cut)" -ge 1 ] || fail "the proxy cut no response: the fault did not happen"
! has "$S5" "$STOP" || fail "a blob cut mid-way is in the store"
mountlog "$S5" | grep -q "$STOP" || fail "the failed fetch of $STOP is not in the log: $(mountlog "$S5" | tail -5)"
tctl "resume=1"
cmp -s "$W/m5$STOP_PATH" "$REF$STOP_PATH" || fail "read after the registry came back: $(readcode "$W/m5$STOP_PATH")"
has "$S5" "$STOP" || fail "the blob read after the registry came back is not in the store"
note "registry stopped mid-way ($STOP_PATH): EIO, logged, not stored; read after resume right"

# a blob served with a wrong byte: EIO, not stored; right once served right
tctl "corrupt=$BAD_REG"
rc=$(readcode "$W/m5$BAD_PATH")
[ "$rc" = EIO ] || fail "read of a blob served with a wrong byte: $rc, expected EIO"
! has "$S5" "$BAD" || fail "a blob with a wrong byte is in the store"
mountlog "$S5" | grep -q "$BAD" || fail "the wrong blob $BAD is not in the log: $(mountlog "$S5" | tail -5)"
tctl "corrupt="
cmp -s "$W/m5$BAD_PATH" "$REF$BAD_PATH" || fail "read after the fault: $(readcode "$W/m5$BAD_PATH")"
note "wrong bytes ($BAD_PATH): EIO, logged, not stored; read once served right: right"

# one blob slow (50 kB/s) while other files are read at full speed: they
# are all read before the slow one is done
tctl "slow=$SLOW_REG&slow_rate=50000"
cat "$W/m5$SLOW_PATH" >"$W/slow.out" 2>"$W/slow.err" &
slowpid=$!
for _ in $(seq 1 100); do [ "$(tstats ".by_digest[\"$SLOW_REG\"].bytes // 0")" -gt 0 ] && break; sleep 0.1; done
"${LT[@]}" pick "$W/corpus.json" /usr/share/perl5 20 >"$W/others"
[ -s "$W/others" ] || "${LT[@]}" pick "$W/corpus.json" /usr/share 20 >"$W/others"
while IFS= read -r p; do
  cmp -s "$W/m5$p" "$REF$p" || fail "$p read wrong while another blob was slow: $(readcode "$W/m5$p")"
done <"$W/others"
kill -0 "$slowpid" 2>/dev/null || fail "the slow blob ($SLOW_W bytes at 50 kB/s) was done before 20 other files were read"
tctl "slow_rate=0"
wait "$slowpid" || fail "read of the slow blob failed: $(cat "$W/slow.err")"
cmp -s "$W/slow.out" "$REF$SLOW_PATH" || fail "the slow blob read wrong"
tctl "slow="
note "slow blob ($SLOW_PATH): 20 other files read meanwhile; then it arrived right"
unmounted "$W/m5"
verified "$S5"

left=$(pgrep -af "mount docker://$TP" || true)
[ -z "$left" ] || fail "mount daemons left: $left"
echo "lazy: all checks passed"
