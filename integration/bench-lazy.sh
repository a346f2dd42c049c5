# bench-lazy.sh (sourced by bench.sh): start before the download. The corpus
# and the node tree (../shared/corpus/make-node-tree.sh) pushed as ocix
# artifacts to a local docker-registry, fetched through the throttling proxy
# (integration/throttle.py: LAZY_RATE bytes a second shared, LAZY_LATENCY
# seconds added to every request; also once on the bare loopback link,
# through the proxy unthrottled, for its counters). For each image:
#   - `ocix unpack docker://...` into an empty store (the whole image down);
#   - lazily, the time from the command to the end of a first command: for
#     the corpus `ocix unpack --image docker://... BUNDLE --mount --lazy
#     --no-background` then `runc run` of
#     `sh -c 'cat /etc/os-release; ls /usr/bin | wc -l'`; for the node tree
#     (no shell in it) `ocix mount docker://... MNT --no-background` then
#     reading 100 files of one package; with the bytes fetched meanwhile,
#     as a share of the image's bytes on the wire;
#   - with background prefetch, the time from `ocix mount docker://...` to
#     every blob in the store.
# LAZY_RUNS runs each (default 3), median; stores on disk under
# $LAZY_BENCH_DIR, default $CORPUS/bench-lazy (an EROFS image file cannot
# live on tmpfs). LAZY_UNPACK_DIR puts the store and rootfs of the full
# `unpack docker://` elsewhere (e.g. a tmpfs, to see the link without the
# disk: this machine's disk makes writing 60,000 files slow).
echo "== lazy: start before the download (as root)"
declare -F start_registry >/dev/null || . "$HERE/registry-lib.sh"
. "$HERE/throttle-lib.sh"
LRUNS=${LAZY_RUNS:-3}
LRATE=${LAZY_RATE:-10000000}
LLAT=${LAZY_LATENCY:-0.02}
LLINKS=${LAZY_LINKS:-throttled loopback}
LW=${LAZY_BENCH_DIR:-$CORPUS/bench-lazy}
LT=$HERE/lazy-tool.py
NODE_TREE=$CORPUS/node/tree
rm -rf "$LW" && mkdir -p "$LW"
lazy_bench_cleanup() {
  local m
  for m in $(awk -v w="$LW/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    "$OCIX" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
  done
  for m in $(runc --root "$LW/runc" list -q 2>/dev/null); do runc --root "$LW/runc" delete -f "$m" >/dev/null 2>&1 || true; done
  rm -rf "$LW"
}
trap 'lazy_bench_cleanup; registry_cleanup' EXIT

TLIFE=7200
start_registry "$LW/reg" "" http 7200
LREG=127.0.0.1:$PORT
LREG_PID=$PID
start_throttle "$LREG" "$LW/thr" --rate "$LRATE" --latency "$LLAT"

# the artifacts, pushed straight to the registry
lazy_push() {  # lazy_push NAME TREE
  "$OCIX" scan "$2" --store "$LW/src" -o "$LW/$1.ocix"
  "$OCIX" push -q "$LW/$1.ocix" --store "$LW/src" "docker://$LREG/ocix/$1:v1"
  "$OCIX" show --json "$LW/$1.ocix" >"$LW/$1.json"
  python3 "$LT" digests "$LW/$1.json" | sed 's/^sha256://' >"$LW/$1.digests"
  python3 "$LT" wire "$LREG" "ocix/$1" v1 | jq -r .total >"$LW/$1.wire"
}
LPARTS=(corpus)
lazy_push corpus "$REF"
if [ -d "$NODE_TREE" ]; then
  lazy_push node "$NODE_TREE"
  LPARTS+=(node)
  python3 "$LT" pick "$LW/node.json" /app/node_modules/@babel/core 100 >"$LW/node.files"
else
  note "no node tree at $NODE_TREE (build it with ../shared/corpus/make-node-tree.sh): node skipped"
fi
rm -rf "$LW/src"

# lrun NAME PREP CMD CLEAN: LRUNS runs of the shell command CMD, each after
# PREP and with the proxy's counters reset; CLEAN after each. Median time
# into $TSV (as bench does), median bytes served into $TSV as lazy-bytes.
lrun() {
  local name=$1 prep=$2 cmd=$3 clean=$4 i t0 t1
  : >"$OUT/$name.runs"
  for i in $(seq 1 "$LRUNS"); do
    bash -c "$prep" >/dev/null 2>&1 || fail "$name: preparing run $i failed"
    treset
    t0=$(date +%s.%N)
    if ! RUN=$i bash -c "$cmd" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
      bash -c "$clean" >/dev/null 2>&1 || true
      cat "$OUT/$name.err" >&2
      fail "benchmark $name failed"
    fi
    t1=$(date +%s.%N)
    echo "$t0 $t1 $(tstats .bytes)" >>"$OUT/$name.runs"
    bash -c "$clean" >/dev/null 2>&1 || true
  done
  python3 - "$OUT/$name.runs" "$name" >>"$TSV" <<'PY'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1]) if l.strip()]
t = [float(b) - float(a) for a, b, _ in runs]
n = [int(c) for _, _, c in runs]
print(f"{sys.argv[2]}\t{statistics.median(t):.4f}\t{min(t):.4f}\t{max(t):.4f}\t{len(t)}")
print(f"lazy-bytes\t{sys.argv[2]}\t{int(statistics.median(n))}\t{min(n)}\t{max(n)}")
PY
  printf '%-34s median %8.3f s, %12d bytes fetched\n' "$name" "$(median "$name")" "$(lbytes "$name")"
}
lbytes() { awk -F'\t' -v n="$1" '$1=="lazy-bytes" && $2==n {print $3}' "$TSV"; }
share() {  # share LABEL NAME PART: bytes of NAME as a share of PART's image
  awk -v b="$(lbytes "$2")" -v w="$(cat "$LW/$3.wire")" -v l="$1" 'BEGIN{printf "%-48s %6.2f%% (%d of %d bytes)\n", l, 100*b/w, b, w}'
}

UM="'$OCIX' umount"
for link in $LLINKS; do
  case $link in
    throttled) tctl "rate=$LRATE&latency=$LLAT"; echo "-- link: $LRATE bytes/s shared, $LLAT s added to every request" ;;
    loopback) tctl "rate=0&latency=0"; echo "-- link: loopback, no limit (through the proxy, for its counts)" ;;
    *) fail "LAZY_LINKS: unknown link $link (throttled, loopback)" ;;
  esac
  for part in "${LPARTS[@]}"; do
    src="docker://$TP/ocix/$part:v1"
    st=$LW/store
    printf '%-34s %12d bytes on the wire\n' "image $part" "$(cat "$LW/$part.wire")"
    fu=${LAZY_UNPACK_DIR:-$LW}
    mkdir -p "$fu"
    lrun "lazy-full-unpack@$part@$link" "rm -rf '$fu/dest' '$fu/store'" \
      "'$OCIX' unpack -q '$src' '$fu/dest' --store '$fu/store'" "rm -rf '$fu/dest' '$fu/store'"
    if [ "$part" = corpus ]; then
      b=$LW/bundle
      first="'$OCIX' unpack -q --image '$src' '$b' --mount --lazy --no-background &&
        jq '.process.args = [\"sh\", \"-c\", \"cat /etc/os-release; ls /usr/bin | wc -l\"] | .process.terminal = false' '$b/config.json' >'$b/config.new' &&
        mv '$b/config.new' '$b/config.json' &&
        runc --root '$LW/runc' run --bundle '$b' ocix-bench-lazy-\$\$ </dev/null"
      lrun "lazy-first@$part@$link" "rm -rf '$b'" "$first" \
        "runc --root '$LW/runc' list -q | xargs -r -n1 runc --root '$LW/runc' delete -f; $UM '$b/rootfs'; rm -rf '$b'"
      grep -q '^PRETTY_NAME=' "$OUT/lazy-first@$part@$link.out" || fail "the first command printed no os-release: $(head -5 "$OUT/lazy-first@$part@$link.out")"
    else
      m=$LW/mnt
      first="'$OCIX' mount -q '$src' '$m' --store '$st' --no-background && sed 's|^|$m|' '$LW/node.files' | xargs -d '\n' cat | wc -c"
      lrun "lazy-first@$part@$link" "rm -rf '$st'; mkdir -p '$m'" "$first" "$UM '$m'; rm -rf '$st'"
    fi
    ratio "lazy $part ($link): first command vs unpack docker://" "lazy-full-unpack@$part@$link" "lazy-first@$part@$link"
    share "lazy $part ($link): fetched by the first command" "lazy-first@$part@$link" "$part"
    m=$LW/mnt
    # every file blob in the store: the daemon's log says when its
    # background prefetch is done (polled, a small file), then the store
    # is checked once against the manifest's digests (a listing of tens of
    # thousands of names every few ms would slow what it measures)
    whole="'$OCIX' mount -q '$src' '$m' --store '$st' && for _ in \$(seq 1 90000); do
        if grep -qs 'background prefetch done' '$st'/.ocix-mount/lazy/*; then
          missing=\$(comm -23 '$LW/$part.digests' <(ls '$st/blobs/sha256' | LC_ALL=C sort) | wc -l)
          [ \"\$missing\" = 0 ] && exit 0
          echo \"background prefetch done, but \$missing blobs missing\" >&2; exit 1
        fi
        sleep 0.02; done; echo 'not complete after 30 minutes' >&2; exit 1"
    lrun "lazy-whole@$part@$link" "rm -rf '$st'; mkdir -p '$m'" "$whole" "$UM '$m'; rm -rf '$st'"
    ratio "lazy $part ($link): whole image, mount vs unpack" "lazy-full-unpack@$part@$link" "lazy-whole@$part@$link"
  done
done
stop_pid "$TPID"
stop_pid "$LREG_PID"
lazy_bench_cleanup
trap registry_cleanup EXIT
