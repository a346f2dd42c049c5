#!/usr/bin/env bash
# fuzz.sh: run every cargo-fuzz target for FUZZ_SECONDS (default 30) each.
# Installs cargo-fuzz if missing. The machine has one stable toolchain, so the
# sanitizer flags cargo-fuzz needs are unlocked with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/manifest_decode
# seed with a real manifest and the golden one
xxd -r -p tests/fixtures/golden.hex > fuzz/corpus/manifest_decode/golden
mkdir -p fuzz/corpus/layer_tar
# seed the layer fuzzer with a small real tar
tar -C tests -cf fuzz/corpus/layer_tar/tests-fixtures.tar fixtures
for t in $(cargo fuzz list); do
  echo "== fuzz $t for ${SECS}s"
  cargo fuzz run "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536
done
