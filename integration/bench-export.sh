# bench-export.sh (sourced by bench.sh): the way back to OCI, on a tmpfs.
# Export of the corpus (manifest + store -> a one-layer image) with gzip and
# zstd against `tar --sort=name -c | pigz -p 2` and `| zstd -T2 -3` of the
# rootfs; repack of a bundle with nothing changed, after touching 1% of the
# regular files and after touching every one, against `umoci repack` of
# umoci's own bundle of the same image; output sizes and peak RSS.
echo "== export and repack (tmpfs)"
EX=$W/export
mkdir -p "$EX"
"$OCIX" scan "$REF" --store "$EX/s" -o "$EX/m.ocix"
sz() { stat -c %s "$1"; }
layer_of() {  # layer_of LAYOUT TAG: the path of the image's last layer blob
  local m
  m=$(jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$1/index.json")
  echo "$1/blobs/sha256/$(jq -r '.layers[-1].digest' "$1/blobs/sha256/${m#sha256:}" | cut -d: -f2)"
}

bench ocix-export-gzip -p "rm -rf '$EX/l'" -- "'$OCIX' export '$EX/m.ocix' --store '$EX/s' --image '$EX/l:t' >/dev/null"
gz=$(sz "$(layer_of "$EX/l" t)")
bench ocix-export-zstd -p "rm -rf '$EX/l'" -- "'$OCIX' export '$EX/m.ocix' --store '$EX/s' --image '$EX/l:t' --compress zstd >/dev/null"
zs=$(sz "$(layer_of "$EX/l" t)")
bench tar-pigz -- "tar --sort=name --numeric-owner --xattrs --xattrs-include='*' -C '$REF' -cf - . | pigz -p 2 >'$EX/x.tgz'"
bench tar-zstd -- "tar --sort=name --numeric-owner --xattrs --xattrs-include='*' -C '$REF' -cf - . | zstd -q -T2 -3 >'$EX/x.tzst'"
ratio "export gzip: ocix vs tar | pigz -p 2 (target >= 1x)" tar-pigz ocix-export-gzip
ratio "export zstd: ocix vs tar | pigz -p 2 (target >= 3x)" tar-pigz ocix-export-zstd
ratio "export zstd: ocix vs tar | zstd -T2 -3" tar-zstd ocix-export-zstd
printf 'export sizes: ocix gzip %d, pigz %d (%+.1f%%); ocix zstd %d, zstd -3 %d (%+.1f%%)\n' \
  "$gz" "$(sz "$EX/x.tgz")" "$(awk -v a="$gz" -v b="$(sz "$EX/x.tgz")" 'BEGIN{print 100*(a-b)/b}')" \
  "$zs" "$(sz "$EX/x.tzst")" "$(awk -v a="$zs" -v b="$(sz "$EX/x.tzst")" 'BEGIN{print 100*(a-b)/b}')"
rm -rf "$EX/l" "$EX/x.tgz" "$EX/x.tzst"

# the bundles: ocix's and umoci's of the corpus image, in one layout copy
RI=$EX/image
cp -a "$CORPUS/image" "$RI"
"$OCIX" unpack --image "$RI:debian" "$EX/ob"
umoci unpack --image "$RI:debian" "$EX/ub" >/dev/null 2>&1
find "$EX/ob/rootfs" -type f | LC_ALL=C sort | awk 'NR % 100 == 0' >"$EX/one-ob"
sed "s|^$EX/ob/|$EX/ub/|" "$EX/one-ob" >"$EX/one-ub"
echo "   $(find "$EX/ob/rootfs" -type f | wc -l) regular files, $(wc -l <"$EX/one-ob") touched for 1%"
touch_all() { find "$1/rootfs" -type f -exec touch {} +; }
OR="'$OCIX' repack --force --image '$RI:o'"
UR="umoci --log error repack --image '$RI:u'"
bench ocix-repack-none -- "$OR '$EX/ob' >/dev/null"
bench umoci-repack-none -- "$UR '$EX/ub'"
bench ocix-repack-1pct -p "xargs -d '\n' touch <'$EX/one-ob'" -- "$OR '$EX/ob' >/dev/null"
bench umoci-repack-1pct -p "xargs -d '\n' touch <'$EX/one-ub'" -- "$UR '$EX/ub'"
bench ocix-repack-all-gzip -p "find '$EX/ob/rootfs' -type f -exec touch {} +" -- "$OR '$EX/ob' >/dev/null"
og=$(sz "$(layer_of "$RI" o)")
bench ocix-repack-all-zstd -p "find '$EX/ob/rootfs' -type f -exec touch {} +" -- "$OR --compress zstd '$EX/ob' >/dev/null"
oz=$(sz "$(layer_of "$RI" o)")
bench umoci-repack-all -p "find '$EX/ub/rootfs' -type f -exec touch {} +" -- "$UR '$EX/ub'"
ug=$(sz "$(layer_of "$RI" u)")
ratio "repack, nothing changed: ocix vs umoci" umoci-repack-none ocix-repack-none
ratio "repack, 1% touched: ocix vs umoci (target >= 5x)" umoci-repack-1pct ocix-repack-1pct
ratio "repack, all touched, gzip: ocix vs umoci (target > 1x)" umoci-repack-all ocix-repack-all-gzip
ratio "repack, all touched, zstd: ocix vs umoci (target >= 3x)" umoci-repack-all ocix-repack-all-zstd
printf 'repack all touched, layer sizes: ocix gzip %d, umoci %d (%+.1f%%, target <= +5%%); ocix zstd %d\n' \
  "$og" "$ug" "$(awk -v a="$og" -v b="$ug" 'BEGIN{print 100*(a-b)/b}')" "$oz"
printf 'export\tsizes\t%d\t%d\t%d\t%d\t%d\n' "$gz" "$zs" "$og" "$ug" "$oz" >>"$TSV"
touch_all "$EX/ob"
touch_all "$EX/ub"
printf 'peak RSS KiB: ocix export gzip %s, zstd %s; repack all touched: ocix %s, umoci %s\n' \
  "$(rm -rf "$EX/l"; /usr/bin/time -f %M "$OCIX" -q export "$EX/m.ocix" --store "$EX/s" --image "$EX/l:t" 2>&1 >/dev/null | tail -1)" \
  "$(rm -rf "$EX/l"; /usr/bin/time -f %M "$OCIX" -q export "$EX/m.ocix" --store "$EX/s" --image "$EX/l:t" --compress zstd 2>&1 >/dev/null | tail -1)" \
  "$(/usr/bin/time -f %M "$OCIX" -q repack --force --image "$RI:o" "$EX/ob" 2>&1 >/dev/null | tail -1)" \
  "$(/usr/bin/time -f %M umoci --log error repack --image "$RI:u" "$EX/ub" 2>&1 >/dev/null | tail -1)"
rm -rf "$EX"
