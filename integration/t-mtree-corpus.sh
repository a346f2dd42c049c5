#!/usr/bin/env bash
# ocix show --mtree on the corpus manifest is accepted by mtree-netbsd, which
# finds no difference with the tree it describes, and does find one after a
# change (so users can audit with the tools they have).
. "$(dirname "$0")/lib.sh"
ensure_corpus
REF=$CORPUS/rootfs-reference
W=$(scratch); trap 'rm -rf "$W"' EXIT
"$OCIX" scan "$REF" -o "$W/m.ocix"
"$OCIX" show --mtree "$W/m.ocix" -o "$W/spec"
head -3 "$W/spec" | grep -q '^#' || fail "spec has no mtree header"
out=$(mtree -f "$W/spec" -p "$REF" 2>&1) || fail "mtree reported differences: $(echo "$out" | head -20)"
[ -z "$out" ] || fail "mtree printed: $(echo "$out" | head -20)"
# the same spec against a changed copy: mtree must notice
cp -a "$REF" "$W/copy"
chmod 0600 "$W/copy/etc/passwd"
if out=$(mtree -f "$W/spec" -p "$W/copy" 2>&1); then fail "mtree missed a chmod"; fi
echo "$out" | grep -q 'etc/passwd' || fail "mtree did not name etc/passwd: $out"
