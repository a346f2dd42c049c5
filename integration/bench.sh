#!/usr/bin/env bash
# bench.sh: ocix side by side with the tools it replaces, on the shared corpus,
# in one run; prints medians and ratios. Warm page cache, several runs each
# (RUNS, default 10). Output also in $OUT (default $CORPUS/ocix-bench).
# Timings only: nothing here asserts a speed. BENCH picks parts (default all):
# `core` (scan and size on the corpus) and the suffixes of bench-*.sh
# (image, unpack, registry, entries, export, mount, lazy), e.g. BENCH="entries" make bench.
. "$(dirname "$0")/lib.sh"
ensure_corpus
RUNS=${RUNS:-10}
REF=$CORPUS/rootfs-reference
OUT=${OUT:-$CORPUS/ocix-bench}
mkdir -p "$OUT"
W=$(scratch); trap 'rm -rf "$W"' EXIT
TSV=$OUT/summary.tsv
: >"$TSV"

# bench NAME [hyperfine options...] -- 'SHELL COMMAND': median seconds into $TSV
bench() {
  local name=$1; shift
  local opts=()
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done; shift
  hyperfine --style none --warmup "${WARMUP:-2}" --runs "$RUNS" "${opts[@]}" \
    --export-json "$OUT/$name.json" -- "$1" >/dev/null 2>"$OUT/$name.err" ||
    { cat "$OUT/$name.err" >&2; fail "benchmark $name failed"; }
  python3 - "$OUT/$name.json" "$name" >>"$TSV" <<'PY'
import json, sys, statistics
r = json.load(open(sys.argv[1]))["results"][0]
t = r["times"]
print(f"{sys.argv[2]}\t{statistics.median(t):.4f}\t{min(t):.4f}\t{max(t):.4f}\t{len(t)}")
PY
  printf '%-34s median %8.3f s\n' "$name" "$(awk -F'\t' -v n="$name" '$1==n{print $2}' "$TSV")"
}
median() { awk -F'\t' -v n="$1" '$1==n{print $2}' "$TSV"; }
ratio() {  # ratio LABEL SLOWER FASTER: how many times FASTER beats SLOWER
  awk -v a="$(median "$2")" -v b="$(median "$3")" -v l="$1" 'BEGIN{printf "%-48s %6.2fx\n", l, a/b}'
}

BENCH=${BENCH:-core image unpack registry entries export mount lazy}
wants() { case " $BENCH " in *" $1 "*) return 0 ;; esac; return 1; }

echo "== machine: $(nproc) cores, $(uname -r); corpus: $REF"
if wants core; then
echo "== scan: describe a tree with sha256 of every file (warm cache)"
bench ocix-scan -- "'$OCIX' scan '$REF' -o /dev/null"
bench ocix-scan-store -p "rm -rf '$W/store'" -- "'$OCIX' scan '$REF' --store '$W/store' -o /dev/null"
bench mtree-netbsd-c-sha256 -- "mtree -c -K sha256digest -p '$REF' >/dev/null"
bench bsdtar-mtree-sha256 -- "bsdtar -cf - --format=mtree --options='!all,type,mode,uid,gid,size,time,sha256,link' -C '$REF' . >/dev/null"
ratio "scan: ocix vs bsdtar mtree (target >= 2x)" bsdtar-mtree-sha256 ocix-scan
ratio "scan: ocix vs mtree-netbsd -c (target >= 3x)" mtree-netbsd-c-sha256 ocix-scan

echo "== size: manifest vs mtree spec of the same tree"
"$OCIX" scan "$REF" -o "$W/m.ocix"
mtree -c -K sha256digest -p "$REF" >"$W/spec.mtree"
zstd -q -19 -f "$W/m.ocix" -o "$W/m.ocix.zst"
zstd -q -19 -f "$W/spec.mtree" -o "$W/spec.mtree.zst"
sz() { stat -c %s "$1"; }
m=$(sz "$W/m.ocix"); s=$(sz "$W/spec.mtree"); mz=$(sz "$W/m.ocix.zst"); sz_=$(sz "$W/spec.mtree.zst")
printf '%-34s %9d bytes raw, %8d zstd -19\n' "ocix manifest" "$m" "$mz" "mtree -c -K sha256digest" "$s" "$sz_"
awk -v m="$m" -v s="$s" -v mz="$mz" -v sz="$sz_" 'BEGIN{printf "manifest/mtree: raw %.1f%% (target <= 40%%), zstd %.1f%% (target < 100%%)\n", 100*m/s, 100*mz/sz}'
printf 'size\tocix\t%d\t%d\nsize\tmtree\t%d\t%d\n' "$m" "$mz" "$s" "$sz_" >>"$TSV"
fi

for extra in "$HERE"/bench-*.sh; do
  [ -e "$extra" ] || continue
  part=${extra##*/bench-}; wants "${part%.sh}" || continue
  # shellcheck source=/dev/null
  . "$extra"
done
echo "== results in $OUT"
