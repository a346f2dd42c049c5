#!/usr/bin/env bash
# deps.sh: install what the tests and benchmarks need, only what is missing.
# Debian packages (the real tools ocix is compared with and tested against)
# and pycddl (an independent CDDL validator, used to check real manifests
# against ocix.cddl). Run as root on Debian 12.
set -euo pipefail
pkgs=(mtree-netbsd libarchive-tools hyperfine umoci skopeo docker-registry runc
      attr acl libcap2-bin debootstrap jq zstd pigz openssl util-linux xxd curl
      erofs-utils strace linux-perf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import pycddl, cbor2' 2>/dev/null; then
  echo "deps: installing pycddl cbor2 (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check pycddl cbor2 2>&1 | grep -v 'Running pip as the' >&2 || true
  python3 -c 'import pycddl, cbor2'
fi
