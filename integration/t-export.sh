#!/usr/bin/env bash
# ocix export and ocix repack on the corpus, checked by the tools of the
# container world: a scanned tree exported and unpacked by umoci equals the
# tree (mtree-netbsd on every keyword, sha256digest included, and getfattr
# dumps), `ocix import` of it gives the scanned manifest byte for byte, and
# a second export gives the same digests. Then the unpack, modify, repack
# cycle: `ocix unpack --image`, every kind of change (file and directory
# removed, directory replaced by a file and the reverse, symlink
# retargeted, metadata alone, hardlink added, content), `ocix repack`, and
# umoci's unpack of the new tag equals the modified rootfs, as root and
# rootless (as uid 65534); the new image copied by skopeo into a local
# docker-registry and unpacked from there by ocix gives the same tree;
# runc runs a bundle of the repacked image and sees the change.
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
W=$(scratch)
. "$HERE/registry-lib.sh"
need_tools skopeo umoci runc jq
chmod 0755 "$W"
manifest_of() {  # manifest_of LAYOUT TAG: the image manifest's digest
  jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$1/index.json"
}

# -- export of a scanned tree
"$OCIX" scan "$REF" --store "$W/s" -o "$W/ref.ocix"
"$OCIX" export "$W/ref.ocix" --store "$W/s" --image "$W/layout:ref" --config.cmd /bin/sh >/dev/null
umoci unpack --image "$W/layout:ref" "$W/umoci-ref" >/dev/null 2>&1 || fail "umoci unpack of the exported image"
same_tree "$REF" "$W/umoci-ref/rootfs" export
"$OCIX" import "$W/layout:ref" -o "$W/back.ocix"
cmp -s "$W/ref.ocix" "$W/back.ocix" || fail "import of the exported image differs from the scan"
"$OCIX" export "$W/ref.ocix" --store "$W/s" --image "$W/layout2:ref" --config.cmd /bin/sh >/dev/null
[ "$(manifest_of "$W/layout" ref)" = "$(manifest_of "$W/layout2" ref)" ] || fail "a second export gave another image"
"$OCIX" export "$W/ref.ocix" --store "$W/s" --image "$W/layout:zstd" --compress zstd >/dev/null
"$OCIX" import "$W/layout:zstd" -o "$W/back-zstd.ocix"
cmp -s "$W/ref.ocix" "$W/back-zstd.ocix" || fail "import of the zstd export differs from the scan"
rm -rf "$W/umoci-ref" "$W/layout2"
note "export: umoci's unpack equals the tree; import gives the manifest back; the same digests twice"

# -- unpack, change, repack
change() {  # change ROOTFS: every kind of change
  local r=$1
  rm "$r/srv/ocix-edge/empty-file"                            # file removed
  rm -rf "$r/usr/share/doc/adduser"                           # directory removed
  rm -rf "$r/srv/ocix-edge/empty-dir" && echo file >"$r/srv/ocix-edge/empty-dir"   # directory -> file
  rm "$r/etc/issue.net" && mkdir "$r/etc/issue.net" && echo in >"$r/etc/issue.net/inside"  # file -> directory
  rm "$r/etc/os-release" && ln -s /usr/lib/os-release.new "$r/etc/os-release"     # symlink retargeted
  chmod 0600 "$r/etc/debian_version"                          # metadata alone
  ln "$r/etc/debian_version" "$r/srv/ocix-edge/new-link"      # hardlink added
  echo "export test" >>"$r/etc/issue"                         # content
  mkdir -p "$r/srv/ocix-export" && echo hello >"$r/srv/ocix-export/new"
}
cp -a "$CORPUS/image" "$W/image" && chmod -R a+rX "$W/image"
"$OCIX" unpack --image "$W/image:debian" "$W/bundle"
change "$W/bundle/rootfs"
set +e; "$OCIX" repack --image "$W/image:debian" "$W/bundle" >/dev/null 2>"$W/err"; rc=$?; set -e
[ "$rc" = 2 ] && grep -q "exists (use --force" "$W/err" || fail "repack over an existing tag: exit $rc, $(cat "$W/err")"
"$OCIX" -v repack --image "$W/image:new" "$W/bundle" 2>"$W/repack.err" >/dev/null || fail "repack: $(cat "$W/repack.err")"
note "$(cat "$W/repack.err")"
umoci unpack --image "$W/image:new" "$W/umoci-new" >/dev/null 2>&1 || fail "umoci unpack of the repacked image"
same_tree "$W/bundle/rootfs" "$W/umoci-new/rootfs" repack-root
"$OCIX" diff "$W/bundle" >/dev/null || fail "the bundle's record is not its tree after repack"
rm -rf "$W/umoci-new"
note "repack (root): umoci's unpack of the new tag equals the modified rootfs"

# a second change: only it in the next layer
echo again >>"$W/bundle/rootfs/etc/issue"
"$OCIX" repack --compress zstd --image "$W/image:new2" "$W/bundle" >/dev/null
layer=$(jq -r '.layers[-1].digest' "$W/image/blobs/sha256/$(manifest_of "$W/image" new2 | cut -d: -f2)")
entries=$(zstd -dc "$W/image/blobs/sha256/${layer#sha256:}" | tar -t)
[ "$entries" = "etc/issue" ] || fail "second repack's layer holds more than the change: $entries"
note "second repack: the layer holds etc/issue alone"

# -- rootless: as uid 65534 from unpack to umoci's unpack
install -m 0755 "$OCIX" "$W/ocix"
mkdir "$W/nobody" && chown 65534:65534 "$W/nobody" && chown -R 65534:65534 "$W/image"
as_nobody "$W/ocix" unpack --rootless --image "$W/image:debian" "$W/nobody/bundle" 2>/dev/null || fail "rootless unpack"
as_nobody bash -c "$(declare -f change); change '$W/nobody/bundle/rootfs'" || fail "rootless change"
as_nobody "$W/ocix" repack --image "$W/image:rl" "$W/nobody/bundle" >/dev/null 2>"$W/rl.err" || fail "rootless repack: $(cat "$W/rl.err")"
as_nobody umoci unpack --rootless --image "$W/image:rl" "$W/nobody/umoci" >/dev/null 2>&1 || fail "umoci rootless unpack"
same_tree "$W/nobody/bundle/rootfs" "$W/nobody/umoci/rootfs" repack-rootless
rm -rf "$W/nobody/umoci"
note "repack (rootless, uid 65534): umoci's rootless unpack equals the modified rootfs"

# -- through a registry, and runc
start_registry "$W/reg"
timeout 300 skopeo copy -q --dest-tls-verify=false "oci:$W/image:new" "docker://127.0.0.1:$PORT/repacked:new" ||
  fail "skopeo copy of the repacked image"
"$OCIX" unpack --image "docker://127.0.0.1:$PORT/repacked:new" --insecure "$W/from-reg" 2>"$W/reg.err" ||
  fail "unpack from the registry: $(cat "$W/reg.err")"
"$OCIX" unpack --image "$W/image:new" "$W/from-layout"
cmp -s "$W/from-reg/ocix.cbor" "$W/from-layout/ocix.cbor" || fail "the image from the registry differs from the layout's"
same_tree "$W/from-layout/rootfs" "$W/from-reg/rootfs" registry
note "skopeo copy to docker-registry, ocix unpack docker://: the same tree"
jq '.process.args = ["/bin/sh", "-c", "[ \"$(cat /srv/ocix-export/new)\" = hello ] && [ -d /etc/issue.net ]"] | .process.terminal = false' \
  "$W/from-layout/config.json" >"$W/cfg" && mv "$W/cfg" "$W/from-layout/config.json"
mkdir -p "$W/runc-root"
timeout 120 runc --root "$W/runc-root" run --bundle "$W/from-layout" ocix-it-export-$$ </dev/null ||
  fail "runc run of a bundle of the repacked image did not see the change"
runc --root "$W/runc-root" delete -f ocix-it-export-$$ >/dev/null 2>&1 || true
note "runc runs a bundle of the repacked image and sees the change"
