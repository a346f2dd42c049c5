#!/usr/bin/env bash
# run.sh [TEST...]: run the end-to-end tests (integration/t-*.sh), each in its
# own process, and print one line per test and a closing "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(t-*.sh)
pass=0; failed=0; failures=()
for t in "${tests[@]}"; do
  start=$(date +%s)
  log=$(mktemp)
  if bash "$t" >"$log" 2>&1; then
    pass=$((pass + 1))
    # a test that cannot run yet says so on its last line ("skipped: why")
    if tail -1 "$log" | grep -q '^skipped: '; then
      echo "skip $t: $(tail -1 "$log" | cut -c10-)"
    else
      echo "ok   $t ($(( $(date +%s) - start ))s)"
    fi
  else
    failed=$((failed + 1)); failures+=("$t"); echo "FAIL $t ($(( $(date +%s) - start ))s)"
    sed 's/^/     | /' "$log" | tail -40
  fi
  rm -f "$log"
done
echo
echo "integration: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
