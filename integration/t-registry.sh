#!/usr/bin/env bash
# ocix push / pull / unpack docker:// against the real Debian docker-registry
# (distribution 2.x) and a real static HTTP server (python3 http.server), all
# on 127.0.0.1: the corpus round trip (scan -> push -> unpack from the
# registry into an empty store -> ocix diff clean), a second push and pull
# that transfer nothing, the registry stopped mid-pull (clear error; the
# rerun fetches exactly what is missing), a blob altered in the registry's
# storage (rejected, never stored), 404, and a registry with htpasswd login
# (401 without credentials, success with an auth.json, refusal of a wrong
# password), and one that speaks only TLS. Every server is bounded by timeout(1) and stopped on exit.
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
W=$(scratch)
. "$HERE/registry-lib.sh"
need_tools openssl
nblobs() { find "$1/blobs/sha256" -type f 2>/dev/null | wc -l; }
start_registry "$W/reg"
R=127.0.0.1:$PORT
RPID=$PID
"$OCIX" scan "$REF" --store "$W/s" -o "$W/m.ocix"

# push: every blob uploaded, then nothing
"$OCIX" push -v "$W/m.ocix" --store "$W/s" "docker://$R/ocix/corpus:v1" 2>"$W/push1.err" || fail "push: $(cat "$W/push1.err")"
read -r total packs singles up <<<"$(sed -n 's/^ocix: \([0-9]*\) file blobs in \([0-9]*\) packs + \([0-9]*\) on their own: \([0-9]*\) uploaded.*/\1 \2 \3 \4/p' "$W/push1.err")"
[ -n "$total" ] && [ "$total" -gt 1000 ] && [ "$up" = $((packs + singles)) ] && [ "$packs" -gt 0 ] ||
  fail "first push: $(cat "$W/push1.err")"
"$OCIX" push -v "$W/m.ocix" --store "$W/s" "docker://$R/ocix/corpus:v1" 2>"$W/push2.err"
grep -q "^ocix: $total file blobs in $packs packs + $singles on their own: 0 uploaded (0 bytes), $up already there" "$W/push2.err" ||
  fail "second push uploaded again: $(cat "$W/push2.err")"
note "push: $total file blobs as $packs packs + $singles blobs uploaded, second push uploaded none"

# the registry holds an OCI artifact naming the ocix media type
curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$R/v2/ocix/corpus/manifests/v1" >"$W/art.json"
python3 - "$W/art.json" "$total" "$packs" "$singles" <<'PY' || fail "artifact manifest: $(head -c 600 "$W/art.json")"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["artifactType"] == "application/vnd.ocix.manifest.v1+cbor", m.get("artifactType")
assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
assert m["layers"][0]["mediaType"] == "application/vnd.ocix.manifest.v1+cbor"
total, packs, singles = map(int, sys.argv[2:5])
# the ocix manifest also travels zstd-compressed, naming the plain one
mz = [l for l in m["layers"] if l["mediaType"] == "application/vnd.ocix.manifest.v1+cbor+zstd"]
assert len(mz) == 1, mz
assert mz[0]["annotations"]["io.ocix.manifest.digest"] == m["layers"][0]["digest"], mz[0]
assert mz[0]["size"] < m["layers"][0]["size"], mz[0]
# and a lazy index and digest table of that manifest, for lazy mounts
for t in ("application/vnd.ocix.lazy.v1+zstd", "application/vnd.ocix.digests.v1"):
    lz = [l for l in m["layers"] if l["mediaType"] == t]
    assert len(lz) == 1, (t, lz)
    assert lz[0]["annotations"]["io.ocix.manifest.digest"] == m["layers"][0]["digest"], lz[0]
dt = [l for l in m["layers"] if l["mediaType"] == "application/vnd.ocix.digests.v1"][0]
assert dt["size"] == 32 * total, (dt["size"], total)
assert len(m["layers"]) == 4 + packs + singles, len(m["layers"])
p = [l for l in m["layers"] if l["mediaType"] in ("application/vnd.ocix.pack.v1", "application/vnd.ocix.pack.v1+zstd")]
assert len(p) == packs
assert sum(int(l["annotations"]["io.ocix.pack.count"]) for l in p) + singles == total
# compressed on the wire where it saves: packs of text, large files
zp = [l for l in p if l["mediaType"].endswith("+zstd")]
assert zp, "no compressed pack"
for l in zp:
    f = [int(x) for x in l["annotations"]["io.ocix.pack.frames"].split(",")]
    assert len(f) == int(l["annotations"]["io.ocix.pack.count"]) and sum(f) == l["size"]
zf = [l for l in m["layers"] if l["mediaType"] == "application/vnd.ocix.file.v1+zstd"]
assert zf, "no compressed file blob"
assert all(l["annotations"]["io.ocix.file.digest"].startswith("sha256:") for l in zf)
assert m["annotations"]["io.ocix.pack.threshold"] == "262144"
PY

# round trip: unpack from the registry into an empty store, diff clean
"$OCIX" unpack -v "docker://$R/ocix/corpus:v1" "$W/dest" --store "$W/fresh" 2>"$W/unpack.err" ||
  fail "unpack docker://: $(cat "$W/unpack.err")"
grep -q "$total blobs, $total fetched" "$W/unpack.err" || fail "unpack did not fetch every blob: $(cat "$W/unpack.err")"
"$OCIX" diff "$W/dest" "$W/m.ocix" >"$W/diff.out" 2>&1 || fail "unpacked tree differs: $(head -20 "$W/diff.out")"
"$OCIX" pull -v "docker://$R/ocix/corpus:v1" --store "$W/fresh" -o "$W/m2.ocix" 2>"$W/pull2.err"
grep -q "$total blobs, 0 fetched (0 bytes), $total already in the store" "$W/pull2.err" ||
  fail "second pull fetched again: $(cat "$W/pull2.err")"
cmp "$W/m.ocix" "$W/m2.ocix" || fail "pulled manifest differs from the pushed one"
note "unpack docker:// into an empty store: diff clean; second pull fetched none"

# no packs, and more blobs than one OCI manifest lists: the tag names an index
"$OCIX" push -v --pack-threshold 0 --layers-per-manifest 1000 "$W/m.ocix" --store "$W/s" "docker://$R/ocix/corpus:split" 2>"$W/split.err" ||
  fail "split push: $(cat "$W/split.err")"
grep -q '(index)' "$W/split.err" || fail "split push made no index: $(cat "$W/split.err")"
"$OCIX" pull -v "docker://$R/ocix/corpus:split" --store "$W/split" -o "$W/m3.ocix" 2>"$W/split-pull.err" ||
  fail "pull from an index: $(cat "$W/split-pull.err")"
cmp "$W/m.ocix" "$W/m3.ocix" || fail "manifest pulled through the index differs"
[ "$(nblobs "$W/split")" -eq $((total + 1)) ] || fail "pull through the index: $(nblobs "$W/split") blobs"
note "push with an index of $(( (total + 999) / 1000 )) blob lists, pull through it"

# static HTTP store: the store directory as it is, plus the manifest as a blob
md=$("$OCIX" digest "$W/m.ocix")
cp "$W/m.ocix" "$W/s/blobs/sha256/${md#sha256:}"
HP=$(free_port)
timeout 600 python3 -m http.server --bind 127.0.0.1 --directory "$W/s" "$HP" >"$W/http.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 80); do curl -fsS -o /dev/null "http://127.0.0.1:$HP/" 2>/dev/null && break; sleep 0.25; done
"$OCIX" pull -v "http://127.0.0.1:$HP/" --manifest "$md" --store "$W/h" -o "$W/mh.ocix" 2>"$W/http.err" ||
  fail "pull over static HTTP: $(cat "$W/http.err")"
cmp "$W/m.ocix" "$W/mh.ocix" || fail "manifest over HTTP differs"
grep -q "$total blobs, $total fetched" "$W/http.err" || fail "static HTTP pull: $(cat "$W/http.err")"
expect_fail "$W/http-nomd.err" "$OCIX" pull "http://127.0.0.1:$HP/" --store "$W/h2"
grep -q -- '--manifest' "$W/http-nomd.err" || fail "no hint about --manifest: $(cat "$W/http-nomd.err")"
note "static HTTP store: $total blobs fetched, manifest identical"

# 404
expect_fail "$W/404.err" "$OCIX" pull "docker://$R/ocix/corpus:missing" --store "$W/x"
grep -q '404 Not Found: MANIFEST_UNKNOWN' "$W/404.err" || fail "404 not reported clearly: $(cat "$W/404.err")"

# a blob altered in the registry's storage: rejected, never stored (a
# compressed file blob: the damage shows when it is decoded and hashed)
read -r vhex chex <<<"$(python3 - "$W/art.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
l = [l for l in m["layers"] if l["mediaType"] == "application/vnd.ocix.file.v1+zstd" and 100000 < l["size"] < 2000000][0]
print(l["digest"][7:], l["annotations"]["io.ocix.file.digest"][7:])
PY
)"
[ -n "$chex" ] || fail "no compressed blob of 100 kB to 2 MB to alter"
vdata=$W/reg/data/docker/registry/v2/blobs/sha256/${vhex:0:2}/$vhex/data
[ -f "$vdata" ] || fail "registry storage layout unexpected: no $vdata"
cp "$vdata" "$W/victim.orig"
printf 'X' | dd of="$vdata" bs=1 seek=100 conv=notrunc status=none
cmp -s "$vdata" "$W/victim.orig" && fail "tampering changed nothing"
expect_fail "$W/tamper.err" "$OCIX" pull "docker://$R/ocix/corpus:v1" --store "$W/t" --jobs 4
grep -q "sha256:$vhex: .*sha256:$chex.*(not stored)" "$W/tamper.err" ||
  fail "altered blob not reported: $(cat "$W/tamper.err")"
[ ! -e "$W/t/blobs/sha256/$chex" ] || fail "altered blob stored under its digest"
[ -z "$(ls -A "$W/t/.ocix-tmp" 2>/dev/null)" ] || fail "temporary files left: $(ls "$W/t/.ocix-tmp")"
cp "$W/victim.orig" "$vdata"
"$OCIX" pull -v "docker://$R/ocix/corpus:v1" --store "$W/t" 2>"$W/tamper2.err" || fail "pull after repair: $(cat "$W/tamper2.err")"
cmp "$W/t/blobs/sha256/$chex" "$W/s/blobs/sha256/$chex" || fail "repaired blob differs"
note "altered compressed blob rejected, not stored: $(grep -o "sha256:$vhex: .*" "$W/tamper.err" | cut -c73-260 | sed -n 1p)"

# interrupted STORE ERR CMD...: runs CMD in the background, freezes it once
# STORE holds 30 blobs, stops the registry, lets CMD go on (it must fail
# with exit 2), then restarts the registry on the same storage and port
interrupted() {
  local store=$1 err=$2 pid rc; shift 2
  "$@" >/dev/null 2>"$err" &
  pid=$!
  for _ in $(seq 1 2000); do
    [ "$(nblobs "$store")" -ge 30 ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  kill -STOP "$pid" 2>/dev/null || fail "$* ended before it could be interrupted: $(cat "$err")"
  stop_pid "$RPID"
  kill -CONT "$pid"
  set +e; timeout 120 tail --pid="$pid" -f /dev/null; wait "$pid"; rc=$?; set -e
  [ "$rc" -eq 2 ] || fail "$* with the registry stopped: exit $rc: $(cat "$err")"
  grep -q -E 'cannot connect|connection|timed out' "$err" || fail "cause not named: $(cat "$err")"
  sed -i "s/^  addr: 127.0.0.1:.*/  addr: 127.0.0.1:$PORT/" "$W/reg/config.yml"
  timeout 900 docker-registry serve "$W/reg/config.yml" >>"$W/reg/log" 2>&1 </dev/null &
  RPID=$!; PIDS+=("$RPID")
  for _ in $(seq 1 80); do curl -fsS -o /dev/null "http://$R/v2/" 2>/dev/null && break; sleep 0.25; done
}

# registry stopped mid-pull: a clear error; the rerun fetches exactly the
# blobs still missing
interrupted "$W/i" "$W/int.err" "$OCIX" pull -v --jobs 1 --timeout 3 --retries 1 "docker://$R/ocix/corpus:v1" --store "$W/i"
grep -q 'still missing (rerun to transfer only those)' "$W/int.err" || fail "unclear error: $(cat "$W/int.err")"
have=$(( $(nblobs "$W/i") - 1 ))   # less the manifest blob
[ "$have" -gt 0 ] && [ "$have" -lt "$total" ] || fail "interrupted pull kept $have of $total blobs"
note "registry stopped mid-pull after $have of $total blobs: $(grep -o 'ocix: error.*' "$W/int.err" | cut -c1-160)"
grep -q "[0-9]* blob(s) failed, $have transferred, $((total - have)) still missing" "$W/int.err" ||
  fail "the error does not count what was kept: $(cat "$W/int.err")"
"$OCIX" pull -v "docker://$R/ocix/corpus:v1" --store "$W/i" 2>"$W/int2.err" || fail "rerun: $(cat "$W/int2.err")"
grep -q "$total blobs, $((total - have)) fetched .*, $have already in the store" "$W/int2.err" ||
  fail "rerun did not fetch exactly the missing $((total - have)): $(cat "$W/int2.err")"
note "rerun fetched the $((total - have)) missing blobs only"

# the same while unpacking (files are written as their blobs arrive): the
# DEST this run created is removed, the blobs fetched are kept, and the
# rerun fetches only the rest and gives a clean tree
interrupted "$W/iu" "$W/intu.err" "$OCIX" unpack -v --jobs 1 --timeout 3 --retries 1 "docker://$R/ocix/corpus:v1" "$W/iu-dest" --store "$W/iu"
grep -q "pulling docker://$R/ocix/corpus:v1: .*still missing (rerun to transfer only those)" "$W/intu.err" ||
  fail "unclear error from an interrupted unpack: $(cat "$W/intu.err")"
[ ! -e "$W/iu-dest" ] || fail "interrupted unpack left $W/iu-dest behind"
have=$(( $(nblobs "$W/iu") - 1 ))
[ "$have" -gt 0 ] && [ "$have" -lt "$total" ] || fail "interrupted unpack kept $have of $total blobs"
"$OCIX" unpack -v "docker://$R/ocix/corpus:v1" "$W/iu-dest" --store "$W/iu" 2>"$W/intu2.err" ||
  fail "unpack rerun: $(cat "$W/intu2.err")"
grep -q "$total blobs, $((total - have)) fetched .*, $have already in the store" "$W/intu2.err" ||
  fail "unpack rerun did not fetch exactly the missing $((total - have)): $(cat "$W/intu2.err")"
"$OCIX" diff "$W/iu-dest" "$W/m.ocix" >"$W/diffu.out" 2>&1 || fail "tree after the rerun differs: $(head -20 "$W/diffu.out")"
note "registry stopped mid-unpack after $have blobs: DEST removed; rerun fetched $((total - have)), diff clean"

# without --store: a temporary store beside DEST whose blobs become the
# files, removed afterwards; -o keeps the manifest for a later diff
mkdir "$W/nostore"
"$OCIX" unpack -v "docker://$R/ocix/corpus:v1" "$W/nostore/rootfs" -o "$W/nostore.ocix" 2>"$W/nostore.err" ||
  fail "unpack without --store: $(cat "$W/nostore.err")"
[ "$(ls -A "$W/nostore")" = rootfs ] || fail "left beside DEST: $(ls -A "$W/nostore")"
cmp "$W/m.ocix" "$W/nostore.ocix" || fail "-o wrote another manifest"
"$OCIX" diff "$W/nostore/rootfs" "$W/m.ocix" >"$W/diffn.out" 2>&1 || fail "tree without --store differs: $(head -20 "$W/diffn.out")"
note "unpack docker:// without --store: diff clean, no store left"

# rootless: as nobody, unpack from the registry into a store and tree it owns
chmod 0755 "$W"
install -m 0755 "$OCIX" "$W/ocix"
mkdir "$W/nobody" && chown 65534:65534 "$W/nobody"
as_nobody "$W/ocix" unpack -v "docker://$R/ocix/corpus:v1" "$W/nobody/out" --store "$W/nobody/store" 2>"$W/nobody.err" ||
  fail "rootless unpack docker://: $(tail -5 "$W/nobody.err")"
grep -q "$total blobs, $total fetched" "$W/nobody.err" || fail "rootless pull: $(cat "$W/nobody.err")"
chmod a+r "$W/m.ocix"
n=$(rootless_diff_clean "$W/ocix" "$W/nobody/out" "$W/m.ocix" "$W/nobody.diff")
note "rootless unpack docker:// as nobody: $n findings, all devices or security.capability"

# a registry on 127.0.0.1 that speaks only TLS: ocix uses HTTPS with the CA
# from SSL_CERT_FILE, and refuses a certificate it cannot verify
mkdir -p "$W/small/etc" && echo hello >"$W/small/etc/hello" && echo world >"$W/small/etc/world"
"$OCIX" scan "$W/small" --store "$W/ss" -o "$W/small.ocix"
(
  cd "$W" && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=ocix-test-ca &&
    openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj /CN=127.0.0.1 &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >tls.ext &&
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 2 -extfile tls.ext
) >"$W/openssl.log" 2>&1 || fail "making a test certificate: $(cat "$W/openssl.log")"
start_registry "$W/treg" "  tls:
    certificate: $W/tls.crt
    key: $W/tls.key" https
T=127.0.0.1:$PORT
SSL_CERT_FILE=$W/ca.crt "$OCIX" push "$W/small.ocix" --store "$W/ss" "docker://$T/ocix/small:v1" 2>"$W/tls.err" ||
  fail "push over TLS: $(cat "$W/tls.err")"
SSL_CERT_FILE=$W/ca.crt "$OCIX" -v pull "docker://$T/ocix/small:v1" --store "$W/tls-store" -o "$W/small-tls.ocix" 2>"$W/tls2.err" ||
  fail "pull over TLS: $(cat "$W/tls2.err")"
cmp "$W/small.ocix" "$W/small-tls.ocix" || fail "manifest over TLS differs"
# the registry offers HTTP/2 over TLS (ALPN): the pull must have used it
grep -q 'over HTTP/2' "$W/tls2.err" || fail "HTTP/2 not negotiated with the TLS registry: $(cat "$W/tls2.err")"
note "TLS pull: $(grep -o "over HTTP/[0-9.]*" "$W/tls2.err")"
expect_fail "$W/tls3.err" env SSL_CERT_FILE=/dev/null "$OCIX" pull "docker://$T/ocix/small:v1" --store "$W/tls-x"
grep -q -i 'certificate' "$W/tls3.err" || fail "untrusted certificate not named: $(cat "$W/tls3.err")"
note "TLS registry: push and pull over HTTPS; untrusted certificate refused: $(grep -o 'ocix: error.*' "$W/tls3.err" | cut -c1-200)"

# a registry that wants a login (htpasswd, bcrypt)
if command -v htpasswd >/dev/null; then
  htpasswd -Bbn ocixuser s3cret >"$W/htpasswd"
else
  python3 -W ignore -c 'import crypt; print("ocixuser:" + crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH)))' >"$W/htpasswd"
fi
start_registry "$W/areg" "auth:
  htpasswd:
    realm: ocix-test
    path: $W/htpasswd"
A=127.0.0.1:$PORT
export REGISTRY_AUTH_FILE=$W/none.json XDG_RUNTIME_DIR=$W/run HOME=$W/home
expect_fail "$W/401.err" "$OCIX" push "$W/small.ocix" --store "$W/ss" "docker://$A/ocix/small:v1"
grep -q '401 Unauthorized: the registry asks for a login; no credentials for' "$W/401.err" ||
  fail "401 not reported clearly: $(cat "$W/401.err")"
expect_fail "$W/401p.err" "$OCIX" pull "docker://$A/ocix/small:v1" --store "$W/as"
grep -q '401 Unauthorized' "$W/401p.err" || fail "401 on pull: $(cat "$W/401p.err")"
mkdir -p "$W/run/containers"
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$A" "$(printf 'ocixuser:s3cret' | base64)" >"$W/run/containers/auth.json"
"$OCIX" push "$W/small.ocix" --store "$W/ss" "docker://$A/ocix/small:v1" 2>"$W/authpush.err" ||
  fail "push with credentials: $(cat "$W/authpush.err")"
"$OCIX" pull "docker://$A/ocix/small:v1" --store "$W/as" -o "$W/small2.ocix" 2>"$W/authpull.err" ||
  fail "pull with credentials: $(cat "$W/authpull.err")"
cmp "$W/small.ocix" "$W/small2.ocix" || fail "manifest through the login registry differs"
printf '{"auths":{"http://%s/":{"username":"ocixuser","password":"wrong"}}}\n' "$A" >"$W/wrong.json"
expect_fail "$W/401w.err" "$OCIX" pull --authfile "$W/wrong.json" "docker://$A/ocix/small:v1" --store "$W/aw"
grep -q 'refused the credentials of user "ocixuser"' "$W/401w.err" || fail "wrong password: $(cat "$W/401w.err")"
note "$(grep -o 'ocix: error.*' "$W/401.err" | cut -c1-220)"
note "htpasswd registry: 401 without credentials, push+pull with auth.json, wrong password refused"
echo "registry: all checks passed"
