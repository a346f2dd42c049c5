# bench-registry.sh (sourced by bench.sh): the corpus through a local
# docker-registry on 127.0.0.1. First pull: `ocix unpack docker://...` into
# an empty store vs `skopeo copy docker://... oci:DIR` + `umoci unpack`.
# Then an update where about 1% of the files changed (a new tag for ocix; a
# new image version with one added layer for skopeo/umoci), pulled into the
# warm store / OCI layout of the first version, vs skopeo + umoci. Prints
# medians, ratios and the bytes each side transferred.
echo "== registry: pull the corpus from a local docker-registry (as root)"
. "$HERE/registry-lib.sh"
start_registry "$W/breg" "" http 7200
BPORT=$PORT
BREG_PID=$PID
BR_HOST=127.0.0.1:$BPORT

# version 1: ocix artifact and the OCI image
"$OCIX" scan "$REF" --store "$W/rstore" -o "$W/r1.ocix"
"$OCIX" push "$W/r1.ocix" --store "$W/rstore" "docker://$BR_HOST/ocix/corpus:v1"
skopeo copy -q --dest-tls-verify=false "oci:$CORPUS/image:debian" "docker://$BR_HOST/oci/corpus:v1"

# version 2: every 100th regular file (sorted by path) gets 64 new bytes
rm -rf "$W/ref2" && cp -a "$REF" "$W/ref2"
(cd "$W/ref2" && find . -type f -links 1 -size +0 | LC_ALL=C sort | awk 'NR % 100 == 0') >"$W/changed.txt"
while IFS= read -r f; do head -c 64 /dev/urandom >>"$W/ref2/$f"; done <"$W/changed.txt"
changed_files=$(wc -l <"$W/changed.txt")
changed_bytes=$(cd "$W/ref2" && tr '\n' '\0' <"$W/changed.txt" | xargs -0 stat -c %s | awk '{s+=$1} END{print s+0}')
"$OCIX" scan "$W/ref2" --store "$W/rstore" -o "$W/r2.ocix"
"$OCIX" push "$W/r2.ocix" --store "$W/rstore" "docker://$BR_HOST/ocix/corpus:v2"
rm -rf "$W/img2" && cp -a "$CORPUS/image" "$W/img2"
tar -C "$W/ref2" --numeric-owner --xattrs --xattrs-include='*' -cf "$W/delta.tar" -T "$W/changed.txt"
umoci raw add-layer --image "$W/img2:debian" --tag v2 "$W/delta.tar"
skopeo copy -q --dest-tls-verify=false "oci:$W/img2:v2" "docker://$BR_HOST/oci/corpus:v2"
rm -rf "$W/ref2" "$W/img2"

# warm states of version 1, made once, copied (hardlinks) before each run
"$OCIX" unpack "docker://$BR_HOST/ocix/corpus:v1" "$W/warm-tree" --store "$W/warm-store" 2>/dev/null
skopeo copy -q --src-tls-verify=false "docker://$BR_HOST/oci/corpus:v1" "oci:$W/warm-oci:v1"

bench reg-first-ocix-unpack -p "rm -rf '$W/rd' '$W/rc'" -- \
  "'$OCIX' unpack -q 'docker://$BR_HOST/ocix/corpus:v1' '$W/rd' --store '$W/rc'"
bench reg-first-skopeo-umoci -p "rm -rf '$W/ro' '$W/rb'" -- \
  "skopeo copy -q --src-tls-verify=false 'docker://$BR_HOST/oci/corpus:v1' 'oci:$W/ro:v1' && umoci unpack --image '$W/ro:v1' '$W/rb' >/dev/null"
ratio "registry first pull: ocix vs skopeo+umoci (target >= 1x)" reg-first-skopeo-umoci reg-first-ocix-unpack
# no cache kept: the blobs become the files (as umoci users run it)
bench reg-first-ocix-nostore -p "rm -rf '$W/rd'" -- \
  "'$OCIX' unpack -q 'docker://$BR_HOST/ocix/corpus:v1' '$W/rd'"
ratio "registry first pull, no store kept: ocix vs skopeo+umoci" reg-first-skopeo-umoci reg-first-ocix-nostore
# the ordinary OCI image itself, no ocix artifact: what umoci users do today
bench reg-image-ocix-unpack -p "rm -rf '$W/rb'" -- \
  "'$OCIX' unpack --image 'docker://$BR_HOST/oci/corpus:v1' '$W/rb'"
ratio "ordinary image: ocix unpack --image docker:// vs skopeo+umoci" reg-first-skopeo-umoci reg-image-ocix-unpack

bench reg-update-ocix-unpack -p "rm -rf '$W/rd' '$W/rc'; cp -al '$W/warm-store' '$W/rc'" -- \
  "'$OCIX' unpack -q 'docker://$BR_HOST/ocix/corpus:v2' '$W/rd' --store '$W/rc'"
bench reg-update-ocix-update -p "rm -rf '$W/rd' '$W/rc'; cp -al '$W/warm-store' '$W/rc'; cp -a '$W/warm-tree' '$W/rd'" -- \
  "'$OCIX' unpack -q --update 'docker://$BR_HOST/ocix/corpus:v2' '$W/rd' --store '$W/rc'"
bench reg-update-skopeo-umoci -p "rm -rf '$W/ro' '$W/rb'; cp -al '$W/warm-oci' '$W/ro'" -- \
  "skopeo copy -q --src-tls-verify=false 'docker://$BR_HOST/oci/corpus:v2' 'oci:$W/ro:v2' && umoci unpack --image '$W/ro:v2' '$W/rb' >/dev/null"
ratio "registry update: ocix unpack vs skopeo+umoci (target >= 5x)" reg-update-skopeo-umoci reg-update-ocix-unpack
ratio "registry update: ocix --update vs skopeo+umoci (target >= 5x)" reg-update-skopeo-umoci reg-update-ocix-update
rm -rf "$W/rd" "$W/rb" "$W/warm-tree"

# bytes transferred: ocix = manifest + the file blobs fetched (from -v);
# skopeo = the blobs new in the OCI layout (it skips blobs it has)
ocix_bytes() {  # ocix_bytes TAG STORE: blob bytes + manifest bytes of one pull
  local out
  out=$("$OCIX" pull -v "docker://$BR_HOST/ocix/corpus:$1" --store "$2" -o "$W/pulled.ocix" 2>&1)
  echo $(( $(echo "$out" | sed -n 's/.* fetched (\([0-9]*\) bytes).*/\1/p') + $(stat -c %s "$W/pulled.ocix") ))
}
new_blob_bytes() {  # new_blob_bytes OLD-LAYOUT NEW-LAYOUT
  comm -13 <(ls "$1/blobs/sha256" 2>/dev/null | LC_ALL=C sort) <(ls "$2/blobs/sha256" | LC_ALL=C sort) |
    (cd "$2/blobs/sha256" && xargs -r stat -c %s) | awk '{s+=$1} END{print s+0}'
}
rm -rf "$W/rc" "$W/ro" "$W/empty-oci" && mkdir -p "$W/empty-oci/blobs/sha256"
first_ocix=$(ocix_bytes v1 "$W/rc")
skopeo copy -q --src-tls-verify=false "docker://$BR_HOST/oci/corpus:v1" "oci:$W/ro:v1"
first_skopeo=$(new_blob_bytes "$W/empty-oci" "$W/ro")
update_ocix=$(ocix_bytes v2 "$W/rc")
cp -al "$W/ro" "$W/ro1"
skopeo copy -q --src-tls-verify=false "docker://$BR_HOST/oci/corpus:v2" "oci:$W/ro:v2"
update_skopeo=$(new_blob_bytes "$W/ro1" "$W/ro")
printf '%-34s %12d bytes ocix, %12d bytes skopeo\n' "first pull transferred" "$first_ocix" "$first_skopeo"
printf '%-34s %12d bytes ocix, %12d bytes skopeo\n' "update transferred" "$update_ocix" "$update_skopeo"
printf '%-34s %d files, %d bytes (new contents); manifest %d bytes\n' "update changed" "$changed_files" "$changed_bytes" "$(stat -c %s "$W/r2.ocix")"
awk -v o="$update_ocix" -v c="$changed_bytes" 'BEGIN{printf "update bytes / changed bytes: %.2fx (target <= 2x)\n", o/c}'
printf 'bytes\tfirst\t%d\t%d\nbytes\tupdate\t%d\t%d\nbytes\tchanged\t%d\t%d\n' "$first_ocix" "$first_skopeo" \
  "$update_ocix" "$update_skopeo" "$changed_bytes" "$changed_files" >>"$TSV"
rm -rf "$W/rc" "$W/ro" "$W/ro1" "$W/warm-store" "$W/warm-oci" "$W/empty-oci" "$W/rstore"
kill -TERM "$BREG_PID" 2>/dev/null || true
