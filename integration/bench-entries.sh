# bench-entries.sh (sourced by bench.sh): entry-heavy trees, where the cost
# per entry rather than per byte decides. Three trees, cached under
# $CORPUS/entries (built once):
#   node      the npm toolchain of ../shared/corpus/make-node-tree.sh
#             (~62,000 entries) and its one-layer image made by umoci;
#   flat200k  200,000 empty files in one directory, one gzip layer;
#   million   1,000,000 entries of an application-like tree, one gzip layer.
# For each: scan vs bsdtar mtree (sha256); unpack from a store vs tar -x of the
# same tree; unpack --image vs tar -xzf of the layer; import, diff and show
# alone. Destinations on a tmpfs. Beside the times: system calls per regular
# file (counted by perf stat on the syscall tracepoints, which costs the run
# little; strace -f -c where perf cannot) and peak RSS against the budget of
# 32 MB + 150 bytes per entry. ENTRY_TREES picks trees (default all three);
# ENTRY_RUNS the runs per timing (default 5: on a shared 2-core machine a
# median of 3 moved by a tenth between runs). The million tree is timed once
# without warmup (MILLION_RUNS for ocix's commands, default 1): GNU tar 1.34
# keeps the symlinks it extracts as placeholders in a list it searches for
# every hardlink, and the tree's 95,000 symlinks with `..` targets and
# 52,000 hardlinks make one tar -x of it take minutes. There, tar's time,
# calls and peak RSS come from one run, and bsdtar -x is timed beside it as
# a second anchor.
echo "== entry-heavy trees (destinations on tmpfs)"
ENTRY_TREES=${ENTRY_TREES:-node flat200k million}
ENTRY_RUNS=${ENTRY_RUNS:-5}
EROOT=$CORPUS/entries

# entry_tree NAME: sets ET (tree), EI (image:tag), ETAR (flat tar), ELAYER
# (the image's layer blob, gzip), building what is missing.
entry_tree() {
  local name=$1 d=$EROOT/$1
  mkdir -p "$d"
  case $name in
    node)
      if [ ! -d "$CORPUS/node/tree/app" ]; then
        "$SHARED/corpus/make-node-tree.sh" "$CORPUS/node" >"$d/build.log" 2>&1 ||
          { tail -5 "$d/build.log" >&2; fail "node tree build failed"; }
      fi
      ET=$CORPUS/node/tree EI=$CORPUS/node/image:node ;;
    *)
      if [ ! -e "$d/done" ]; then
        rm -rf "$d/tree" "$d/image"
        echo "   building the $name tree in $d (once)" >&2
        python3 "$HERE/make-entry-trees.py" "$name" "$d/tree"
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$d/tree" -cf "$d/layer.tar" .
        umoci init --layout "$d/image" && umoci new --image "$d/image:$name"
        umoci raw add-layer --image "$d/image:$name" "$d/layer.tar" >/dev/null
        rm -f "$d/layer.tar"
        touch "$d/done"
      fi
      ET=$d/tree EI=$d/image:$name ;;
  esac
  ETAR=$d/flat.tar
  [ -s "$ETAR" ] || tar --numeric-owner --xattrs --xattrs-include='*' -C "$ET" -cf "$ETAR" .
  # the one layer of a one-layer image (the largest blob is the layer)
  ELAYER=$(find "${EI%:*}/blobs/sha256" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)
}

# peak_rss CMD...: peak RSS of one run in KiB (output discarded).
peak_rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }

# counted [WRAP...] -- CMD: runs `sh -c CMD` (through WRAP) counting its
# system calls, all threads; leaves "TOTAL SCHED_YIELD" in $W/calls.
PERF_EVENTS="-e raw_syscalls:sys_enter -e syscalls:sys_enter_sched_yield"
if ! perf stat -x, $PERF_EVENTS -o /dev/null true 2>/dev/null; then PERF_EVENTS=; fi
counted() {
  local wrap=()
  while [ "$1" != "--" ]; do wrap+=("$1"); shift; done; shift
  if [ -n "$PERF_EVENTS" ]; then
    perf stat -x, $PERF_EVENTS -o "$W/perf.txt" "${wrap[@]}" sh -c "$1" >/dev/null 2>"$W/counted.err" || return 1
    awk -F, '$3=="raw_syscalls:sys_enter"{t=$1} $3=="syscalls:sys_enter_sched_yield"{y=$1}
      END{printf "%d %d\n", t, y+0}' "$W/perf.txt" >"$W/calls"
  else
    strace -f -c -o "$W/strace.txt" "${wrap[@]}" sh -c "$1" >/dev/null 2>"$W/counted.err" || return 1
    awk '$NF=="total"{t=$4} $NF=="sched_yield"{y=$4} END{printf "%d %d\n", t, y+0}' "$W/strace.txt" >"$W/calls"
  fi
}

# syscalls PREP CMD: system calls of one run of CMD (all threads), after PREP.
# Prints "TOTAL SCHED_YIELD".
syscalls() {
  eval "$1"
  counted -- "$2" || true
  cat "$W/calls"
}

# once NAME PREP CMD: one run of CMD after PREP, timed, its system calls
# counted and its peak RSS taken, all from that run; the time goes into
# $TSV as bench's medians do. Sets ONCE_CALLS, ONCE_YIELD, ONCE_RSS (KiB).
once() {
  eval "$2"
  counted /usr/bin/time -f '%e %M' -o "$W/once.time" -- "$3" ||
    { cat "$W/counted.err" >&2; fail "benchmark $1 failed"; }
  local secs
  read -r secs ONCE_RSS <"$W/once.time"
  read -r ONCE_CALLS ONCE_YIELD <"$W/calls"
  printf '%s\t%.4f\t%.4f\t%.4f\t1\n' "$1" "$secs" "$secs" "$secs" >>"$TSV"
  printf '%-34s once   %8.3f s\n' "$1" "$secs"
}

for T in $ENTRY_TREES; do
  entry_tree "$T"
  entries=$(find "$ET" | wc -l)
  files=$(find "$ET" -type f | wc -l)
  echo "-- $T: $entries entries, $files regular files ($ET)"
  D=$W/edest
  rm -rf "$W/estore" "$D"
  "$OCIX" scan "$ET" --store "$W/estore" -o "$W/e.ocix"
  RUNS_SAVED=$RUNS; RUNS=$ENTRY_RUNS
  # at a million entries one tar -x takes minutes: one run, no warmup
  if [ "$T" = million ]; then RUNS=${MILLION_RUNS:-1}; WARMUP=0; else WARMUP=2; fi

  bench "$T:ocix-scan" -- "'$OCIX' scan '$ET' -o /dev/null"
  bench "$T:bsdtar-mtree" -- "bsdtar -cf - --format=mtree --options='!all,type,mode,uid,gid,size,time,sha256,link' -C '$ET' . >/dev/null"
  ratio "$T scan: ocix vs bsdtar mtree (target >= 2x)" "$T:bsdtar-mtree" "$T:ocix-scan"

  TARX="tar -x --xattrs --xattrs-include='*' --same-owner --numeric-owner -f '$ETAR' -C '$D'"
  TARXZF="tar -x --xattrs --xattrs-include='*' --same-owner --numeric-owner -zf '$ELAYER' -C '$D'"
  bench "$T:ocix-unpack" -p "rm -rf '$D'" -- "'$OCIX' unpack '$W/e.ocix' --store '$W/estore' '$D'"
  if [ "$T" = million ]; then
    once "$T:tar-x" "rm -rf '$D'; mkdir '$D'" "$TARX"
    tc=$ONCE_CALLS r_tar=$ONCE_RSS
    once "$T:bsdtar-x" "rm -rf '$D'; mkdir '$D'" "bsdtar -x --xattrs --numeric-owner -p -f '$ETAR' -C '$D'"
    ratio "$T unpack: ocix vs bsdtar -x (second anchor)" "$T:bsdtar-x" "$T:ocix-unpack"
  else
    bench "$T:tar-x" -p "rm -rf '$D'; mkdir '$D'" -- "$TARX"
  fi
  ratio "$T unpack: ocix vs tar -x (target >= 1.67x)" "$T:tar-x" "$T:ocix-unpack"

  bench "$T:ocix-unpack-image" -p "rm -rf '$D'" -- "'$OCIX' unpack --image '$EI' '$D'"
  if [ "$T" = million ]; then
    once "$T:tar-xzf" "rm -rf '$D'; mkdir '$D'" "$TARXZF"
  else
    bench "$T:tar-xzf" -p "rm -rf '$D'; mkdir '$D'" -- "$TARXZF"
  fi
  ratio "$T unpack --image: ocix vs tar -xzf (target >= 1.67x)" "$T:tar-xzf" "$T:ocix-unpack-image"

  bench "$T:ocix-import" -- "'$OCIX' import '$EI' -o /dev/null"
  rm -rf "$D"; "$OCIX" unpack "$W/e.ocix" --store "$W/estore" "$D"
  bench "$T:ocix-diff" -- "'$OCIX' diff '$D' '$W/e.ocix' >/dev/null"
  bench "$T:ocix-show" -- "'$OCIX' show '$W/e.ocix' >/dev/null"
  RUNS=$RUNS_SAVED

  read -r oc oy < <(syscalls "rm -rf '$D'" "'$OCIX' unpack '$W/e.ocix' --store '$W/estore' '$D'")
  [ "$T" = million ] || read -r tc ty < <(syscalls "rm -rf '$D'; mkdir '$D'" "$TARX")
  awk -v oc="$oc" -v oy="$oy" -v tc="$tc" -v f="$files" -v t="$T" 'BEGIN{
    printf "%s syscalls per regular file, unpack into a fresh DEST: ocix %.1f (sched_yield %d), tar -x %.1f (target <= 7)\n",
      t, oc/f, oy, tc/f }'
  printf '%s\tsyscalls\t%d\t%d\t%d\n' "$T" "$oc" "$tc" "$files" >>"$TSV"

  budget=$(( 32768 + entries * 150 / 1024 ))
  rm -rf "$D"; r_unpack=$(peak_rss "$OCIX" -q unpack "$W/e.ocix" --store "$W/estore" "$D")
  r_diff=$(peak_rss "$OCIX" -q diff "$D" "$W/e.ocix")
  rm -rf "$D"; r_image=$(peak_rss "$OCIX" -q unpack --image "$EI" "$D")
  r_import=$(peak_rss "$OCIX" -q import "$EI" -o /dev/null)
  r_scan=$(peak_rss "$OCIX" -q scan "$ET" -o /dev/null)
  r_show=$(peak_rss "$OCIX" -q show "$W/e.ocix")
  [ "$T" = million ] || { rm -rf "$D"; r_tar=$(mkdir "$D" && peak_rss tar -x --xattrs --xattrs-include='*' --same-owner --numeric-owner -f "$ETAR" -C "$D"); }
  printf '%s peak RSS KiB (budget %d): unpack %s, unpack --image %s, import %s, scan %s, diff %s, show %s; tar -x %s\n' \
    "$T" "$budget" "$r_unpack" "$r_image" "$r_import" "$r_scan" "$r_diff" "$r_show" "$r_tar"
  worst=$(printf '%s\n' "$r_unpack" "$r_image" "$r_import" "$r_scan" "$r_diff" "$r_show" | sort -n | tail -1)
  awk -v w="$worst" -v e="$entries" -v b="$budget" -v t="$T" 'BEGIN{
    printf "%s peak RSS per entry: %.0f bytes at worst (%s the budget)\n", t, w*1024/e, (w <= b ? "within" : "OVER") }'
  printf '%s\trss\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$T" "$r_unpack" "$r_image" "$r_import" "$r_scan" "$r_diff" "$r_show" "$r_tar" >>"$TSV"
  rm -rf "$D" "$W/estore" "$W/e.ocix"
done
