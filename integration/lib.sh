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

# as_nobody CMD...: run CMD as uid/gid 65534 with no groups.
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

# rootless_diff_clean OCIX TREE MANIFEST OUT: `ocix diff --rootless` as
# nobody finds only what privilege alone can do on the corpus: devices
# (empty files instead) and the security.capability xattr. The findings
# go to OUT; prints their count.
rootless_diff_clean() {
  local ocix=$1 tree=$2 m=$3 out=$4 rc
  set +e; as_nobody "$ocix" diff --rootless "$tree" "$m" >"$out" 2>&1; rc=$?; set -e
  [ "$rc" -le 1 ] || fail "rootless diff failed: $(cat "$out")"
  grep -v -E '^/(dev/[a-z]+|srv/ocix-edge/dev/(null|loop0)): (type|rdev|size|digest)|^/srv/ocix-edge/xattr/cap-bin: xattr security.capability removed$' \
    "$out" >"$out.unexpected" || true
  [ ! -s "$out.unexpected" ] || fail "rootless differences beyond devices and capabilities: $(head -20 "$out.unexpected")"
  wc -l <"$out"
}

# same_tree REFERENCE CANDIDATE LABEL: the two trees agree for mtree-netbsd
# on every keyword (sha256digest included) and in their getfattr dumps;
# scratch files go to $W.
KEYS=type,uid,gid,mode,nlink,size,time,link,sha256digest,device
xdump() { (cd "$1" && getfattr -R -h -d -m - -e hex . 2>/dev/null) | awk '/^# file: /{f=substr($0,9);next} /=/{print f "\t" $0}' | LC_ALL=C sort; }
same_tree() {
  mtree -c -k "$KEYS" -p "$1" >"$W/spec.$3"
  out=$(mtree -f "$W/spec.$3" -p "$2" 2>&1) || fail "$3: mtree finds differences: $(echo "$out" | head -20)"
  diff <(xdump "$1") <(xdump "$2") >"$W/xattr.$3" || fail "$3: xattrs differ: $(head -20 "$W/xattr.$3")"
}
