# bench-image.sh (sourced by bench.sh): OCI image in. ocix import alone, and
# ocix unpack --image vs umoci unpack, as root and rootless (uid 65534), with
# the bundle on a tmpfs and on the ordinary disk; peak RSS of one run each.
echo "== image: corpus image (3 gzip layers) -> bundle"
IMG=$W/image
cp -a "$CORPUS/image" "$IMG" && chmod -R a+rX "$IMG" && chmod 0755 "$W"
install -m 0755 "$OCIX" "$W/ocix"
NB="setpriv --reuid=65534 --regid=65534 --clear-groups"
bench ocix-import -- "'$OCIX' import '$IMG:debian' -o /dev/null"
bench ocix-import-store -p "rm -rf '$W/istore'" -- "'$OCIX' import '$IMG:debian' --store '$W/istore' -o /dev/null"
for fs in tmpfs disk; do
  if [ "$fs" = tmpfs ]; then B=$W/bundle; else B=$CORPUS/bench-bundle; fi
  mkdir -p "$(dirname "$B")"
  bench "ocix-unpack-image@$fs" -p "rm -rf '$B'" -- "'$OCIX' unpack --image '$IMG:debian' '$B'"
  bench "umoci-unpack@$fs" -p "rm -rf '$B'" -- "umoci unpack --image '$IMG:debian' '$B' >/dev/null 2>&1"
  # nobody's destination: outside any private home directory
  if [ "$fs" = tmpfs ]; then P=$W/nobody-bench; else P=/var/tmp/ocix-nobody-bench; fi
  rm -rf "$P"; mkdir -p "$P"; chown 65534:65534 "$P"
  bench "ocix-unpack-image-rootless@$fs" -p "rm -rf '$P/b'" -- "$NB '$W/ocix' unpack --rootless --image '$IMG:debian' '$P/b' 2>/dev/null"
  bench "umoci-unpack-rootless@$fs" -p "rm -rf '$P/b'" -- "$NB umoci unpack --rootless --image '$IMG:debian' '$P/b' >/dev/null 2>&1"
  rm -rf "$B" "$P"
  ratio "unpack --image@$fs: ocix vs umoci$( [ $fs = tmpfs ] && echo " (target >= 3x)")" "umoci-unpack@$fs" "ocix-unpack-image@$fs"
  ratio "rootless@$fs: ocix vs umoci --rootless" "umoci-unpack-rootless@$fs" "ocix-unpack-image-rootless@$fs"
done
rss() { rm -rf "$W/rss"; /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; rm -rf "$W/rss"; }
printf 'peak RSS: ocix unpack --image %s KiB, umoci unpack %s KiB, ocix import %s KiB\n' \
  "$(rss "$OCIX" -q unpack --image "$IMG:debian" "$W/rss")" \
  "$(rss umoci --log error unpack --image "$IMG:debian" "$W/rss")" \
  "$(rss "$OCIX" -q import "$IMG:debian" -o /dev/null)"
