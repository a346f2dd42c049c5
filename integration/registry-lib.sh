# registry-lib.sh: a real docker-registry on 127.0.0.1 for the end-to-end
# tests and the benchmark (sourced after lib.sh, once W is set). Every
# server started here is bounded by timeout(1) and stopped on exit, with W.
PIDS=()
registry_cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap registry_cleanup EXIT

# need_tools CMD...: apt-get install the Debian packages of those names if missing.
need_tools() {
  local need=() t
  for t in "$@"; do command -v "$t" >/dev/null || need+=("$t"); done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}
need_tools docker-registry curl

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_registry DIR [YAML [SCHEME [SECONDS]]]: a registry storing under
# DIR/data; YAML follows `  addr:` (indented: more of http:, e.g. tls; not
# indented: another section, e.g. auth); lives at most SECONDS (900); sets
# PORT and PID. Waits (bounded) until /v2/ answers 200 or 401.
start_registry() {
  local dir=$1 extra=${2:-} scheme=${3:-http} life=${4:-900}
  mkdir -p "$dir/data"
  PORT=$(free_port)
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
$extra
YAML
  timeout "$life" docker-registry serve "$dir/config.yml" >>"$dir/log" 2>&1 </dev/null &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 80); do
    code=$(curl -s -k -o /dev/null -w '%{http_code}' "$scheme://127.0.0.1:$PORT/v2/" 2>/dev/null || true)
    case $code in 200|401) return 0 ;; esac
    kill -0 "$PID" 2>/dev/null || fail "registry exited: $(tail -5 "$dir/log")"
    sleep 0.25
  done
  fail "registry did not answer on 127.0.0.1:$PORT within 20 s"
}

stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  timeout 10 tail --pid="$1" -f /dev/null 2>/dev/null || kill -KILL "$1" 2>/dev/null || true
}

# expect_fail OUTFILE CMD...: the command must fail with exit 2 (bounded).
expect_fail() {
  local out=$1; shift
  set +e; timeout 300 "$@" >"$out" 2>&1; local rc=$?; set -e
  [ "$rc" -eq 2 ] || fail "expected exit 2 from $*, got $rc: $(head -5 "$out")"
}
