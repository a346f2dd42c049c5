#!/usr/bin/env bash
# ocix import / unpack --image of an ordinary image in the real Debian
# docker-registry on 127.0.0.1 (no skopeo copy to a layout first): the corpus
# image pushed by skopeo, in OCI and in Docker (v2s2) form, imported with its
# layers streamed from the registry gives the manifest byte for byte that the
# import of the layout gives; unpack --image docker://... gives a bundle that
# `ocix diff` finds clean; an unknown tag is a clear error; a layer blob
# altered in the registry's storage is rejected naming the layer, exit 2, no
# bundle left. The registry is bounded by timeout(1) and stopped on exit.
. "$(dirname "$0")/lib.sh"
ensure_corpus
IMG=$CORPUS/image
W=$(scratch)
. "$HERE/registry-lib.sh"
need_tools skopeo

start_registry "$W/reg"
R=127.0.0.1:$PORT
timeout 300 skopeo copy -q --dest-tls-verify=false "oci:$IMG:debian" "docker://$R/corpus:debian"
timeout 300 skopeo copy -q --dest-tls-verify=false --format v2s2 "oci:$IMG:debian" "docker://$R/corpus-docker:debian"
curl -s -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$R/v2/corpus-docker/manifests/debian" |
  grep -q '"application/vnd.docker.distribution.manifest.v2+json"' || fail "the v2s2 copy is not a Docker manifest"

"$OCIX" import "$IMG:debian" -o "$W/B.ocix" --store "$W/sb"

# 1. import from the registry = import from the layout, byte for byte; the
# store gets the same contents.
timeout 600 "$OCIX" import "docker://$R/corpus:debian" -o "$W/A.ocix" --store "$W/sa"
cmp "$W/A.ocix" "$W/B.ocix" || fail "registry import differs from the layout import"
diff <(cd "$W/sa/blobs/sha256" && ls) <(cd "$W/sb/blobs/sha256" && ls) >/dev/null ||
  fail "the registry import stored other contents than the layout import"
note "OCI image: manifest identical, $(ls "$W/sa/blobs/sha256" | wc -l) blobs"

# the same image in Docker form (Docker manifest, config and layer media
# types), and by digest
timeout 600 "$OCIX" import "docker://$R/corpus-docker:debian" -o "$W/D.ocix"
cmp "$W/D.ocix" "$W/B.ocix" || fail "Docker-form import differs from the layout import"
dig=$(curl -s -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$R/v2/corpus/manifests/debian" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
[ -n "$dig" ] || fail "no digest for corpus:debian"
timeout 600 "$OCIX" import "docker://$R/corpus@$dig" -o "$W/E.ocix"
cmp "$W/E.ocix" "$W/B.ocix" || fail "import by digest differs"
note "Docker image and import by digest: identical"

# 2. unpack --image docker://... -> a bundle whose tree matches its manifest
timeout 600 "$OCIX" unpack --image "docker://$R/corpus:debian" "$W/bundle"
cmp "$W/bundle/ocix.cbor" "$W/B.ocix" || fail "bundle ocix.cbor differs from the layout import"
[ -s "$W/bundle/config.json" ] || fail "bundle has no config.json"
[ ! -e "$W/bundle/.ocix-store" ] || fail "temporary store left in the bundle"
"$OCIX" diff "$W/bundle" >"$W/diff.out" 2>&1 || fail "ocix diff of the bundle is not clean: $(head -5 "$W/diff.out")"
note "unpack --image docker://: bundle clean"

# unpack docker://... DEST of the ordinary image: imported, then unpacked
# as a plain rootfs (no bundle); -o keeps the manifest, no store is left
mkdir "$W/ord"
timeout 600 "$OCIX" unpack -v "docker://$R/corpus:debian" "$W/ord/rootfs" -o "$W/ord.ocix" 2>"$W/ord.err" ||
  fail "unpack docker:// of an ordinary image: $(cat "$W/ord.err")"
grep -q "an ordinary image, 3 layers imported" "$W/ord.err" || fail "not taken as an ordinary image: $(cat "$W/ord.err")"
cmp "$W/ord.ocix" "$W/B.ocix" || fail "unpack docker:// of the image wrote another manifest than the layout import"
[ "$(ls -A "$W/ord")" = rootfs ] || fail "left beside the rootfs: $(ls -A "$W/ord")"
"$OCIX" diff "$W/ord/rootfs" "$W/B.ocix" >"$W/diff-ord.out" 2>&1 ||
  fail "unpack docker:// of the image differs: $(head -5 "$W/diff-ord.out")"
note "unpack docker:// of an ordinary image: imported and unpacked, diff clean"

# 3. unknown tag: a clear error, exit 2, nothing written
expect_fail "$W/e1" "$OCIX" import "docker://$R/corpus:nosuchtag" -o "$W/X.ocix"
grep -q "nosuchtag" "$W/e1" && grep -qi "manifest unknown\|404" "$W/e1" || fail "unclear unknown-tag error: $(cat "$W/e1")"
[ ! -e "$W/X.ocix" ] || fail "a manifest was written for an unknown tag"
expect_fail "$W/e1b" "$OCIX" unpack --image "docker://$R/corpus:nosuchtag" "$W/bundle-x"
[ ! -e "$W/bundle-x" ] || fail "a bundle was left for an unknown tag"
note "unknown tag: $(tail -1 "$W/e1")"

# 4. a layer blob altered in the registry's storage (same size): rejected,
# the layer named, exit 2, no manifest and no bundle left.
layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(max(m["layers"], key=lambda l: l["size"])["digest"])' \
  "$IMG/blobs/sha256/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"][7:])' "$IMG/index.json")")
hex=${layer#sha256:}
data=$W/reg/data/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data
[ -f "$data" ] || fail "layer $layer not found in the registry storage"
size=$(stat -c %s "$data")
python3 - "$data" <<'EOF'
import sys
p = sys.argv[1]
with open(p, "r+b") as f:
    f.seek(0, 2)
    n = f.tell()
    f.seek(n // 2)
    b = f.read(1)
    f.seek(n // 2)
    f.write(bytes([b[0] ^ 0xFF]))
EOF
[ "$(stat -c %s "$data")" = "$size" ] || fail "tampering changed the size"
expect_fail "$W/e2" "$OCIX" import "docker://$R/corpus:debian" -o "$W/Y.ocix"
grep -q "$layer" "$W/e2" || fail "the error does not name the layer $layer: $(cat "$W/e2")"
[ ! -e "$W/Y.ocix" ] || fail "a manifest was written from a tampered layer"
expect_fail "$W/e3" "$OCIX" unpack --image "docker://$R/corpus:debian" "$W/bundle2"
grep -q "$layer" "$W/e3" || fail "unpack's error does not name the layer $layer: $(cat "$W/e3")"
[ ! -e "$W/bundle2" ] || fail "a bundle was left from a tampered layer"
note "tampered layer: $(tail -1 "$W/e2" | cut -c1-300)"
echo "t-import-registry: ok"
