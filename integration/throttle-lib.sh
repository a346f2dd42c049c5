# throttle-lib.sh: the throttling proxy (throttle.py) in front of a local
# registry, for the lazy-mount tests and benchmark (sourced after
# registry-lib.sh, once W is set). The proxy is bounded by its own
# --lifetime and by timeout(1), and stopped on exit with the registry.

# start_throttle UPSTREAM DIR [throttle.py options...]: a proxy on 127.0.0.1
# in front of UPSTREAM (HOST:PORT), its log under DIR; lives at most
# TLIFE seconds (900). Sets TPORT, TPID and TP (127.0.0.1:TPORT).
start_throttle() {
  local up=$1 dir=$2; shift 2
  local life=${TLIFE:-900}
  mkdir -p "$dir"
  rm -f "$dir/port"
  timeout $((life + 30)) python3 "$HERE/throttle.py" --upstream "$up" --port-file "$dir/port" \
    --lifetime "$life" --log "$dir/requests.jsonl" "$@" >>"$dir/log" 2>&1 </dev/null &
  TPID=$!
  PIDS+=("$TPID")
  for _ in $(seq 1 80); do
    [ -s "$dir/port" ] && break
    kill -0 "$TPID" 2>/dev/null || fail "throttle proxy exited: $(tail -5 "$dir/log")"
    sleep 0.1
  done
  [ -s "$dir/port" ] || fail "throttle proxy did not start within 8 s: $(tail -5 "$dir/log")"
  TPORT=$(cat "$dir/port")
  TP=127.0.0.1:$TPORT
  curl -fsS -o /dev/null "http://$TP/_throttle/stats" || fail "throttle proxy does not answer on $TP"
}

# tctl QUERY: change the proxy's settings (rate=, latency=, stop_after=,
# resume=1, corrupt=, slow=, slow_rate=; see throttle.py).
tctl() { curl -fsS -o /dev/null "http://$TP/_throttle/set?$1" || fail "throttle control $1 refused"; }
treset() { curl -fsS -o /dev/null "http://$TP/_throttle/reset" || fail "throttle reset failed"; }
# tstats [JQ-FILTER]: the proxy's counters (JSON), or one value of them.
tstats() { curl -fsS "http://$TP/_throttle/stats" | jq -r "${1:-.}"; }
# tlog: the request log since the last reset, one JSON object a line.
tlog() { curl -fsS "http://$TP/_throttle/log"; }

