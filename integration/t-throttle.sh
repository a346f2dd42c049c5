#!/usr/bin/env bash
# The throttling proxy (integration/throttle.py) that the lazy-mount test and
# benchmark put in front of the local docker-registry: the rate is obeyed
# (one limit shared by all connections), every request waits the added
# latency, the counters match what was served (to curl, and to `ocix pull`,
# whose own byte count they equal), and the faults happen: the registry
# stops mid-way (the response under way is cut, later requests are refused,
# an ocix pull fails cleanly and its rerun after resume completes), one blob
# served with a wrong byte (ocix refuses it, stores nothing), one blob slowed
# while another flows at full rate; the proxy ends by itself after its
# lifetime. Lower bounds on durations only, where the limit makes them
# certain; no upper bounds (a loaded machine is slower, never faster).
. "$(dirname "$0")/lib.sh"
W=$(scratch)
. "$HERE/registry-lib.sh"
. "$HERE/throttle-lib.sh"
need_tools jq

# a small artifact of incompressible files, each a blob of its own and sent
# as is (no packs, no compression): registry digest = the file's sha256
mkdir -p "$W/tree/data" "$W/tree/etc"
head -c $((4 << 20)) /dev/urandom >"$W/tree/data/a"
head -c $((2 << 20)) /dev/urandom >"$W/tree/data/b"
head -c $((1 << 20)) /dev/urandom >"$W/tree/data/c"
for i in 1 2 3 4 5; do echo "file $i" >"$W/tree/etc/f$i"; done
"$OCIX" scan "$W/tree" --store "$W/s" -o "$W/m.ocix"
start_registry "$W/reg"
R=127.0.0.1:$PORT
"$OCIX" push -q --compress none --pack-threshold 0 "$W/m.ocix" --store "$W/s" "docker://$R/t/small:v1" ||
  fail "push to the registry failed"
hex() { sha256sum "$1" | cut -d' ' -f1; }
A=sha256:$(hex "$W/tree/data/a"); B=sha256:$(hex "$W/tree/data/b"); C=sha256:$(hex "$W/tree/data/c")
SA=$((4 << 20)); SB=$((2 << 20)); SC=$((1 << 20))

RATE=4000000   # bytes a second
LAT=0.05
start_throttle "$R" "$W/thr" --rate "$RATE" --latency "$LAT"
blob() { echo "http://$TP/v2/t/small/blobs/$1"; }
now() { date +%s.%N; }
# at_least WHAT SECONDS LOWER: the limit makes a transfer at least this slow
# (no upper bound: a loaded machine is slower, and that is not a failure).
at_least() {
  awk -v s="$2" -v lo="$3" 'BEGIN{exit !(s >= lo)}' ||
    fail "$1: $2 s, expected at least $3 s"
}

# rate: one blob alone, then three at once (the limit is shared)
t0=$(now); curl -fsS -o "$W/a.out" "$(blob "$A")"; t1=$(now)
cmp -s "$W/a.out" "$W/tree/data/a" || fail "blob a came through the proxy altered"
alone=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
at_least "4 MiB at $RATE B/s" "$alone" "$(awk -v n=$SA -v r=$RATE 'BEGIN{print 0.9*n/r}')"
t0=$(now)
cpids=()
for d in "$A" "$B" "$C"; do curl -fsS -o /dev/null "$(blob "$d")" & cpids+=("$!"); done
for p in "${cpids[@]}"; do wait "$p" || fail "a concurrent fetch failed"; done
t1=$(now)
together=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
at_least "7 MiB over three connections" "$together" "$(awk -v n=$((SA + SB + SC)) -v r=$RATE 'BEGIN{print 0.9*n/r}')"
note "rate: 4 MiB alone in ${alone} s, 7 MiB on three connections in ${together} s (limit $RATE B/s)"

# latency: every request waits LAT first
t0=$(now)
for _ in 1 2 3 4 5 6 7 8 9 10; do curl -fsS -o /dev/null "http://$TP/v2/"; done
t1=$(now)
ten=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
at_least "ten requests with $LAT s added" "$ten" "$(awk -v l=$LAT 'BEGIN{print 10*l}')"
note "latency: ten requests in ${ten} s ($LAT s added to each)"

# counters: exactly what was served, per path and per digest, and the log
treset
curl -fsS -o /dev/null "$(blob "$A")"
curl -fsS -o "$W/b.part" -r 1000-100999 "$(blob "$B")"
curl -fsS -o /dev/null -I "$(blob "$C")"
[ "$(stat -c %s "$W/b.part")" = 100000 ] || fail "range request: $(stat -c %s "$W/b.part") bytes"
cmp -s "$W/b.part" <(tail -c +1001 "$W/tree/data/b" | head -c 100000) || fail "range request served other bytes"
[ "$(tstats .requests)" = 3 ] || fail "requests counted: $(tstats .requests), expected 3"
[ "$(tstats .bytes)" = $((SA + 100000)) ] || fail "bytes counted: $(tstats .bytes), expected $((SA + 100000))"
[ "$(tstats ".by_digest[\"$A\"].bytes")" = "$SA" ] || fail "bytes of a: $(tstats ".by_digest[\"$A\"]")"
[ "$(tstats ".by_path[\"/v2/t/small/blobs/$B\"].bytes")" = 100000 ] || fail "bytes of b: $(tstats .by_path)"
[ "$(tstats ".by_digest[\"$C\"].requests")" = 1 ] && [ "$(tstats ".by_digest[\"$C\"].bytes")" = 0 ] ||
  fail "HEAD of c: $(tstats ".by_digest[\"$C\"]")"
tlog >"$W/log.jsonl"
[ "$(wc -l <"$W/log.jsonl")" = 3 ] || fail "request log: $(cat "$W/log.jsonl")"
jq -e -s '.[1].range == "bytes=1000-100999" and .[1].bytes == 100000 and .[1].status == 206 and .[2].method == "HEAD"' \
  "$W/log.jsonl" >/dev/null || fail "request log: $(cat "$W/log.jsonl")"

# counters against ocix: a pull through the proxy counts what ocix says it
# fetched, plus the OCI manifest and the ocix manifest blob
treset
"$OCIX" pull -v "docker://$TP/t/small:v1" --store "$W/p1" -o "$W/p1.ocix" 2>"$W/p1.err" ||
  fail "pull through the proxy: $(cat "$W/p1.err")"
cmp -s "$W/p1.ocix" "$W/m.ocix" || fail "manifest pulled through the proxy differs"
fetched=$(sed -n 's/.* fetched (\([0-9]*\) bytes).*/\1/p' "$W/p1.err")
curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$R/v2/t/small/manifests/v1" >"$W/art.json"
art=$(wc -c <"$W/art.json")
# the ocix manifest blob as the artifact lists it (compressed or not)
mblob=$(jq '[.layers[] | select(.mediaType | startswith("application/vnd.ocix.manifest")) | .size] | first' "$W/art.json")
expect=$((fetched + art + mblob))
[ "$(tstats .bytes)" = "$expect" ] ||
  fail "pull through the proxy: $(tstats .bytes) bytes counted, ocix fetched $fetched + OCI manifest $art + ocix manifest $mblob"
for d in "$A" "$B" "$C"; do
  [ "$(tstats ".by_digest[\"$d\"].bytes")" = "$(stat -c %s "$W/p1/blobs/sha256/${d#sha256:}")" ] ||
    fail "pull: bytes of $d: $(tstats ".by_digest[\"$d\"]")"
done
note "counters: curl and ocix pull counted exactly ($(tstats .bytes) bytes in $(tstats .requests) requests for the pull)"

# fault: the registry stops mid-way. The response under way is cut at the
# byte, later requests are refused, the control endpoint still answers
tctl "rate=0&latency=0"
treset
tctl "stop_after=1000000"
set +e; curl -fsS -o "$W/cut.out" "$(blob "$A")" 2>/dev/null; rc=$?; set -e
[ "$rc" -ne 0 ] || fail "a response past the stop came whole"
[ "$(stat -c %s "$W/cut.out")" = 1000000 ] || fail "cut response: $(stat -c %s "$W/cut.out") bytes, expected 1000000"
set +e; curl -fsS -o /dev/null "$(blob "$C")" 2>/dev/null; rc=$?; set -e
[ "$rc" -ne 0 ] || fail "a request after the stop was served"
[ "$(tstats .stopped)" = true ] && [ "$(tstats .cut)" = 1 ] && [ "$(tstats .refused)" = 1 ] ||
  fail "stop counters: $(tstats '{stopped, cut, refused}' | tr -d '\n ')"
tctl "resume=1"
curl -fsS -o /dev/null "$(blob "$C")" || fail "no service after resume"
# ocix sees the registry stop mid-pull: a clear error, and after resume the
# rerun fetches exactly the blobs still missing
tctl "stop_after=$((SA + SB / 2))"
set +e
"$OCIX" pull -v --jobs 1 --timeout 3 --retries 1 "docker://$TP/t/small:v1" --store "$W/p2" 2>"$W/p2.err"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "pull with the registry stopped mid-way: exit $rc: $(cat "$W/p2.err")"
grep -q 'still missing (rerun to transfer only those)' "$W/p2.err" || fail "unclear error: $(cat "$W/p2.err")"
tctl "resume=1"
"$OCIX" pull -v "docker://$TP/t/small:v1" --store "$W/p2" 2>"$W/p2b.err" || fail "rerun after resume: $(cat "$W/p2b.err")"
grep -q '[1-9][0-9]* fetched .*, [1-9][0-9]* already in the store' "$W/p2b.err" ||
  fail "rerun after resume fetched everything again or nothing: $(cat "$W/p2b.err")"
note "stop mid-way: curl cut at 1000000 bytes, next request refused; $(grep -o 'ocix: error.*' "$W/p2.err" | cut -c1-140)"

# fault: wrong bytes for one blob: one byte flipped, length kept, whole or
# ranged; ocix refuses the blob and stores nothing under its digest
tctl "corrupt=$B"
curl -fsS -o "$W/b.bad" "$(blob "$B")"
[ "$(stat -c %s "$W/b.bad")" = "$SB" ] || fail "corrupted blob changed length"
[ "$(cmp -l "$W/b.bad" "$W/tree/data/b" | wc -l)" = 1 ] || fail "corrupted blob: not exactly one byte differs"
curl -fsS -o "$W/b.bad2" -r 0-9999 "$(blob "$B")"
[ "$(cmp -l "$W/b.bad2" <(head -c 10000 "$W/tree/data/b") | wc -l)" = 1 ] || fail "ranged corrupt response: not one byte"
curl -fsS -o "$W/a.ok" "$(blob "$A")"
cmp -s "$W/a.ok" "$W/tree/data/a" || fail "another blob came altered while one was corrupted"
expect_fail "$W/p3.err" "$OCIX" pull "docker://$TP/t/small:v1" --store "$W/p3"
grep -q "$B.*(not stored)" "$W/p3.err" || fail "wrong bytes not reported: $(cat "$W/p3.err")"
[ ! -e "$W/p3/blobs/sha256/${B#sha256:}" ] || fail "the corrupted blob was stored"
tctl "corrupt="
note "wrong bytes: one byte flipped in $B; ocix: $(grep -o "content has digest.*" "$W/p3.err" | cut -c1-120 | head -1)"

# fault: one blob slow while the others flow: c (1 MiB at full rate) is
# done while a (4 MiB at 500 kB/s, at least 8 s) is still coming
tctl "rate=$RATE&slow=$A&slow_rate=500000"
t0=$(now)
curl -fsS -o "$W/a.slow" "$(blob "$A")" &
slowpid=$!
sleep 0.3
curl -fsS -o /dev/null "$(blob "$C")"
kill -0 "$slowpid" 2>/dev/null || fail "the slow blob was done before another 1 MiB blob"
wait "$slowpid" || fail "slow blob failed"
t1=$(now)
slow=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
cmp -s "$W/a.slow" "$W/tree/data/a" || fail "slow blob altered"
at_least "4 MiB at 500 kB/s" "$slow" "$(awk -v n=$SA 'BEGIN{print 0.9*n/500000}')"
tctl "slow="
note "slow blob: 4 MiB in ${slow} s at 500 kB/s while a 1 MiB blob went through at $RATE B/s"

# bounded in time: a proxy with a lifetime of 1 s ends by itself
mkdir -p "$W/short"
timeout 60 python3 "$HERE/throttle.py" --upstream "$R" --port-file "$W/short/port" --lifetime 1 2>"$W/short/log" &
spid=$!
PIDS+=("$spid")
timeout 20 tail --pid="$spid" -f /dev/null || fail "a proxy with a 1 s lifetime still runs after 20 s"
grep -q 'lifetime over' "$W/short/log" || fail "short-lived proxy: $(cat "$W/short/log")"
echo "throttle: all checks passed"
