# bench-unpack.sh (sourced by bench.sh): ocix unpack from a local store vs
# GNU tar -x of the flattened rootfs tar and cp -a of the rootfs, with the
# destination on a tmpfs (measures the tools) and on the ordinary disk.
echo "== unpack: materialize the corpus rootfs (as root)"
"$OCIX" scan "$REF" --store "$W/store" -o "$W/unpack.ocix"
tar --xattrs --xattrs-include='*' --numeric-owner -C "$REF" -cf "$W/flat.tar" .
for fs in tmpfs disk; do
  if [ "$fs" = tmpfs ]; then D=$W/dest; else D=$CORPUS/bench-dest; fi
  prep="rm -rf '$D'"
  bench "ocix-unpack@$fs" -p "$prep" -- "'$OCIX' unpack '$W/unpack.ocix' --store '$W/store' '$D'"
  bench "tar-x@$fs" -p "$prep; mkdir '$D'" -- "tar -x --xattrs --xattrs-include='*' --same-owner --numeric-owner -f '$W/flat.tar' -C '$D'"
  bench "cp-a@$fs" -p "$prep" -- "cp -a '$REF' '$D'"
  rm -rf "$D"
  ratio "unpack@$fs: ocix vs tar -x$( [ $fs = tmpfs ] && echo " (target >= 1x)")" "tar-x@$fs" "ocix-unpack@$fs"
  ratio "unpack@$fs: ocix vs cp -a$( [ $fs = tmpfs ] && echo " (target >= 0.67x)")" "cp-a@$fs" "ocix-unpack@$fs"
done
