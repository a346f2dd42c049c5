#!/usr/bin/env bash
# Runtime bundles: the config.json ocix writes (examples/bundle-config, the
# library's bundle module) equals umoci's own for the corpus image and for
# crafted image configs (root and rootless), apart from the documented
# differences; and runc runs the bundles: as root, and rootless as uid 65534
# with a rootfs copy owned by 65534.
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
IMG=$CORPUS/image
NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"
for tool in runc umoci jq; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
  } || fail "$tool missing and not installable"
done
BC=${OCIX_BUNDLE_CONFIG:-$TOP/target/release/examples/bundle-config}
if [ ! -x "$BC" ]; then
  (cd "$TOP" && cargo build --release --example bundle-config -q) || fail "building examples/bundle-config"
fi

W=$(scratch)
chmod 755 "$W"  # uid 65534 must reach its own corner of it
ROOT_ID=ocix-it-root-$$
RL_ID=ocix-it-rootless-$$
cleanup() {
  runc --root "$W/runc-root" delete -f "$ROOT_ID" >/dev/null 2>&1 || true
  [ -d "$W/nobody" ] && $NOBODY runc --root "$W/nobody/runc-state" delete -f "$RL_ID" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

# The image config of tag debian: index.json -> manifest -> config blob.
blob() { echo "$IMG/blobs/sha256/${1#sha256:}"; }
MANIFEST=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "debian") | .digest' \
  "$IMG/index.json")
[ -n "$MANIFEST" ] || fail "no tag debian in $IMG/index.json"
CONFIG=$(blob "$(jq -r .config.digest "$(blob "$MANIFEST")")")
[ -f "$CONFIG" ] || fail "config blob missing: $CONFIG"

# Differences kept on purpose: the hostname, root.path (umoci: the rootfs's
# name or an absolute path, depending on the command), and the flags of the
# host's resolv.conf mount that a user namespace cannot drop (this umoci
# version leaves them out; without them a rootless bind can fail).
normalize() {
  jq -S '.hostname = "H" | .root.path = "R"
         | (.mounts[] | select(.destination == "/etc/resolv.conf") | .options) |= map(select(. == "rbind" or . == "ro"))' "$1"
}

# same_as_umoci NAME LAYOUT ROOTFS [--rootless]: ocix's config.json vs
# `umoci raw runtime-config` for the image tagged t in LAYOUT.
same_as_umoci() {
  local name=$1 layout=$2 rootfs=$3; shift 3
  local d=$W/cmp/$name; mkdir -p "$d/bundle"
  local cfg; cfg=$(jq -r .config.digest "$layout/blobs/sha256/$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)")
  umoci raw runtime-config "$@" --image "$layout:t" --rootfs "$rootfs" "$d/umoci.json" 2>"$d/umoci.err" ||
    { cat "$d/umoci.err" >&2; fail "$name: umoci raw runtime-config failed"; }
  "$BC" "$layout/blobs/sha256/${cfg#sha256:}" "$rootfs" "$d/bundle" "$@" || fail "$name: bundle-config failed"
  [ "$(stat -c %a "$d/bundle/config.json")" = 644 ] || fail "$name: config.json is not mode 0644"
  diff -u <(normalize "$d/umoci.json") <(normalize "$d/bundle/config.json") >&2 ||
    fail "$name: ocix config.json differs from umoci's"
  note "$name: same as umoci"
}

# make_layout DIR CONFIG_JSON: a one-image layout (tag t, no layers) around
# an image config, for umoci to read.
make_layout() {
  local dir=$1 cfg=$2
  mkdir -p "$dir/blobs/sha256"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  local ch; ch=$(sha256sum "$cfg" | cut -d' ' -f1)
  cp "$cfg" "$dir/blobs/sha256/$ch"
  jq -n --arg d "sha256:$ch" --argjson s "$(stat -c %s "$cfg")" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $d, size: $s}, layers: []}' \
    >"$dir/manifest.json"
  local mh; mh=$(sha256sum "$dir/manifest.json" | cut -d' ' -f1)
  jq -n --arg d "sha256:$mh" --argjson s "$(stat -c %s "$dir/manifest.json")" \
    '{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
      annotations: {"org.opencontainers.image.ref.name": "t"}}]}' >"$dir/index.json"
  mv "$dir/manifest.json" "$dir/blobs/sha256/$mh"
}

# -- 1. the corpus image, root and rootless (as root: the invoking user is 0)
make_layout "$W/corpus-layout" "$CONFIG"
same_as_umoci corpus-root "$W/corpus-layout" "$REF"
same_as_umoci corpus-rootless "$W/corpus-layout" "$REF" --rootless

# -- 2. crafted configs over a small rootfs with its own users and groups
MINI=$W/mini
mkdir -p "$MINI/etc"
cat >"$MINI/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
EOF
cat >"$MINI/etc/group" <<'EOF'
root:x:0:
wheel:x:10:alice,bob
audio:x:29:alice
staff:x:50:
alice:x:1000:
EOF
i=0
while IFS= read -r edit; do
  i=$((i + 1))
  jq "$edit" "$CONFIG" >"$W/cfg-$i.json"
  make_layout "$W/layout-$i" "$W/cfg-$i.json"
  same_as_umoci "crafted-$i-root" "$W/layout-$i" "$MINI"
  same_as_umoci "crafted-$i-rootless" "$W/layout-$i" "$MINI" --rootless
done <<'EOF'
.config.User = "alice"
.config.User = "1000"
.config.User = "bob:staff"
.config.User = "1001:29"
.config.User = "4242"
.config.User = "4242:audio"
.config.User = "daemon" | .config.WorkingDir = "/srv"
.config.Entrypoint = ["/bin/ep", "-x"] | .config.Cmd = ["a b", "c"] | .config.Env += ["A=1", "PATH=/p", "A=2", "HOME=/img"]
.config.Entrypoint = ["/only"] | del(.config.Cmd)
.config.Labels = {"com.example.x": "1", "org.opencontainers.image.os": "other"} | .config.StopSignal = "SIGINT"
.config.ExposedPorts = {"80/tcp": {}, "53/udp": {}} | .config.Volumes = {"/data": {}}
.author = "A <a@example.com>" | .created = "2024-02-29T12:34:56.5+02:00"
EOF

# -- 3. runc, root: a bundle over the reference rootfs (bound read-only so it
#    cannot change), process /bin/true, then an identity check as "daemon".
mkdir -p "$W/root"
"$BC" "$CONFIG" "$REF" "$W/root" || fail "bundle-config (root) failed"
jq '.process.args = ["/bin/true"] | .process.terminal = false | .root.readonly = true' \
  "$W/root/config.json" >"$W/root/config.new" && mv "$W/root/config.new" "$W/root/config.json"
timeout 120 runc --root "$W/runc-root" run --bundle "$W/root" "$ROOT_ID" </dev/null ||
  fail "runc run of the root bundle did not exit 0"
runc --root "$W/runc-root" delete -f "$ROOT_ID" >/dev/null 2>&1 || true
note "runc root bundle: /bin/true exit 0"

jq '.config.User = "daemon"' "$CONFIG" >"$W/cfg-daemon.json"
"$BC" "$W/cfg-daemon.json" "$REF" "$W/root" || fail "bundle-config (daemon) failed"
jq '.process.args = ["/bin/sh", "-c", "[ \"$(id -u):$(id -g):$HOME\" = 1:1:/usr/sbin ]"]
    | .process.terminal = false | .root.readonly = true' "$W/root/config.json" >"$W/root/config.new" &&
  mv "$W/root/config.new" "$W/root/config.json"
timeout 120 runc --root "$W/runc-root" run --bundle "$W/root" "$ROOT_ID" </dev/null ||
  fail "runc: the process of User daemon is not uid 1, gid 1, HOME /usr/sbin"
runc --root "$W/runc-root" delete -f "$ROOT_ID" >/dev/null 2>&1 || true
note "runc root bundle: User daemon runs as 1:1 with HOME /usr/sbin"

# -- 4. runc, rootless, as uid 65534: its own copy of the rootfs, the config
#    written by 65534 (so the mapping is its own ids), its own runc state.
N=$W/nobody
mkdir -p "$N/bundle" "$N/xdg"
cp -a "$REF" "$N/bundle/rootfs"
cp "$BC" "$N/bundle-config"; chmod 755 "$N/bundle-config"
cp "$CONFIG" "$N/image-config.json"
chown -R 65534:65534 "$N"
$NOBODY "$N/bundle-config" "$N/image-config.json" "$N/bundle/rootfs" "$N/bundle" --rootless ||
  fail "bundle-config --rootless as 65534 failed"
jq -e '.root.path == "rootfs" and .linux.uidMappings == [{"containerID": 0, "hostID": 65534, "size": 1}]
       and .linux.gidMappings == [{"containerID": 0, "hostID": 65534, "size": 1}]
       and ([.linux.namespaces[].type] | index("network") == null and index("user") != null)
       and (.linux.resources == null)' "$N/bundle/config.json" >/dev/null ||
  fail "rootless config.json lacks the 65534 mapping, the user namespace, or still needs privilege"
jq '.process.args = ["/bin/sh", "-c", "[ \"$(id -u):$(id -g)\" = 0:0 ]"] | .process.terminal = false' \
  "$N/bundle/config.json" >"$N/bundle/config.new" && mv "$N/bundle/config.new" "$N/bundle/config.json"
chown 65534:65534 "$N/bundle/config.json"
# Rootless runc bind-mounts the host's device nodes into the container.
[ -c /dev/null ] || fail "host /dev/null is not a character device (something replaced it); rootless runc needs it"
timeout 120 $NOBODY env XDG_RUNTIME_DIR="$N/xdg" runc --rootless true --root "$N/runc-state" \
  run --bundle "$N/bundle" "$RL_ID" </dev/null ||
  fail "runc --rootless run of the rootless bundle as 65534 did not exit 0"
note "runc rootless bundle as 65534: exit 0 (root inside the user namespace)"
