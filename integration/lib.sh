# lib.sh: helpers for the end-to-end tests (sourced).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
SHARED=${OCIX_SHARED:-$TOP/../shared}
CORPUS=${OCIX_CORPUS:-$HOME/.cache/ocix-corpus}
OCIX=${OCIX:-$TOP/target/release/ocix}
export LC_ALL=C.UTF-8

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "  $*" >&2; }

# ensure_corpus: build the shared corpus image once (cached outside the repo).
ensure_corpus() {
  if [ ! -f "$CORPUS/checks.txt" ] || ! [ -d "$CORPUS/rootfs-reference" ]; then
    [ -x "$SHARED/corpus/make-image.sh" ] || fail "corpus scripts not found at $SHARED/corpus"
    echo "building the corpus in $CORPUS (once)" >&2
    "$SHARED/corpus/make-image.sh" "$CORPUS" >"${TMPDIR:-/tmp}/ocix-corpus-build.log" 2>&1 ||
      { tail -20 "${TMPDIR:-/tmp}/ocix-corpus-build.log" >&2; fail "corpus build failed"; }
  fi
}

# scratch DIR on a tmpfs when there is one (fast, and another filesystem).
scratch() {
  local base=/dev/shm
  [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
  mktemp -d "$base/ocix-it.XXXXXX"
}
