#!/usr/bin/env bash
# --keep-dirlinks against umoci's: a two-layer image whose second layer has
# directory entries (and entries beneath them) where the first has symlinks:
# to directories, to a chain of symlinks, to a file, dangling, looping, to
# .. past the root, to /etc, to a name that also exists outside the rootfs,
# with whiteouts and an opaque marker beneath. umoci unpack and ocix unpack
# --image, without and with --keep-dirlinks, as root and rootless (uid
# 65534), compared by mtree-netbsd and getfattr; nothing may land outside
# the rootfs.
. "$(dirname "$0")/lib.sh"
W=$(scratch); trap 'rm -rf "$W"' EXIT
chmod 0755 "$W"
KEYS=type,uid,gid,mode,nlink,size,time,link,sha256digest,device
xdump() { (cd "$1" && getfattr -R -h -d -m - -e hex . 2>/dev/null) | awk '/^# file: /{f=substr($0,9);next} /=/{print f "\t" $0}' | LC_ALL=C sort; }
same_tree() {  # same_tree REFERENCE CANDIDATE LABEL: both ways, so extra names show too
  mtree -c -k "$KEYS" -p "$1" >"$W/spec.$3"
  out=$(mtree -f "$W/spec.$3" -p "$2" 2>&1) || fail "$3: mtree finds differences: $(echo "$out" | head -20)"
  mtree -c -k "$KEYS" -p "$2" >"$W/spec2.$3"
  out=$(mtree -f "$W/spec2.$3" -p "$1" 2>&1) || fail "$3: mtree finds differences (reversed): $(echo "$out" | head -20)"
  diff <(xdump "$1") <(xdump "$2") >"$W/xattr.$3" || fail "$3: xattrs differ: $(head -20 "$W/xattr.$3")"
}

# The image: layer 1 has the directories and the symlinks, layer 2 the
# directory entries over the symlinks and files beneath them, each entry
# named in the order given (--no-recursion).
T=(--format=gnu --numeric-owner --no-recursion --xattrs --xattrs-include='*')
mkdir "$W/s1" "$W/s2" "$W/outside"
(
  cd "$W/s1"
  mkdir d1 d2 d3 d4 d5 etc sub outside
  echo a >d1/a; echo x >d2/x; echo y >d2/y; echo x >d3/x; echo y >d3/y; echo a >d4/a; echo a >d5/a
  echo p >etc/passwd; echo f >file
  ln -s d1 l1; ln -s l1 l2; ln -s file lf; ln -s missing ldang; ln -s ../.. lup; ln -s /etc letc
  ln -s /nonexistent labsm; ln -s lloop lloop; ln -s d2 lw; ln -s d3 lo; ln -s d4 lnb; ln -s d5 lx
  ln -s ../../outside lout; ln -s ../l2 sub/up
  setfattr -h -n trusted.old -v 1 lx
  touch -h -d @1000000 . ./* sub/*
  tar "${T[@]}" -cf "$W/l1.tar" . d1 d1/a d2 d2/x d2/y d3 d3/x d3/y d4 d4/a d5 d5/a etc etc/passwd file \
    sub outside l1 l2 lf ldang lup letc labsm lloop lw lo lnb lx lout sub/up
)
(
  cd "$W/s2"
  L=""
  for l in l1 l2 lf ldang lup letc labsm lloop lw lo lx lout sub/up; do
    mkdir -p "$l"; echo "$l" >"$l/b-${l//\//-}"; chmod 0700 "$l"; chown 5:6 "$l"
    L="$L $l $l/b-${l//\//-}"
  done
  : >lw/.wh.x; : >lo/.wh..wh..opq; mkdir lnb; echo b >lnb/b
  setfattr -n trusted.t -v v lx
  touch -h -d @2000000 ./* ./*/* sub/up/*
  # shellcheck disable=SC2086
  tar "${T[@]}" -cf "$W/l2.tar" sub $L lw/.wh.x lo/.wh..wh..opq lnb/b
)
umoci init --layout "$W/image" >/dev/null
umoci new --image "$W/image:t" >/dev/null
umoci raw add-layer --image "$W/image:t" "$W/l1.tar" >/dev/null
umoci raw add-layer --image "$W/image:t" "$W/l2.tar" >/dev/null
chmod -R a+rX "$W/image"

# nothing outside the rootfs: not in the bundle's parents, not in /etc
escaped() {
  [ -z "$(ls -A "$W/outside")" ] || fail "$1: something landed outside the rootfs: $(ls -A "$W/outside")"
  for f in /etc/b-letc /b-lup /etc/b-lout /b-lout; do [ ! -e "$f" ] || fail "$1: $f was written on the host"; done
}

# root
for mode in plain keep; do
  flag=(); [ $mode = keep ] && flag=(--keep-dirlinks)
  umoci unpack "${flag[@]}" --image "$W/image:t" "$W/umoci-$mode" >/dev/null 2>&1 || fail "umoci unpack ${flag[*]}"
  "$OCIX" unpack "${flag[@]}" --image "$W/image:t" "$W/ocix-$mode" || fail "ocix unpack --image ${flag[*]}"
  escaped "root $mode"
  same_tree "$W/umoci-$mode/rootfs" "$W/ocix-$mode/rootfs" "root-$mode"
  "$OCIX" diff "$W/ocix-$mode" >/dev/null || fail "root $mode: ocix diff BUNDLE is not clean right after unpack"
done
# the cases, as umoci gives them: with the option the symlinks to
# directories stay (taking the entry's owner) and the files land through them
R=$W/ocix-keep/rootfs
[ "$(readlink "$R/l2")" = l1 ] && [ "$(stat -c %u:%g "$R/l2")" = 5:6 ] || fail "l2 is not the symlink owned 5:6"
for f in d1/b-l1 d1/b-l2 d1/b-sub-up b-lup etc/b-letc outside/b-lout d2/b-lw d3/b-lo d4/b d5/b-lx; do
  [ -f "$R/$f" ] || fail "keep: $f missing"
done
[ ! -e "$R/d2/x" ] && [ -e "$R/d2/y" ] && [ "$(ls "$R/d3")" = b-lo ] || fail "keep: whiteouts beneath the symlinks"
for l in lf ldang labsm lloop; do [ -d "$R/$l" ] && [ ! -L "$R/$l" ] || fail "keep: $l is not replaced by a directory"; done
P=$W/ocix-plain/rootfs
for l in l1 l2 lup letc lw lo lx lout sub/up; do [ -d "$P/$l" ] && [ ! -L "$P/$l" ] || fail "plain: $l is not a directory"; done
[ -L "$P/lnb" ] && [ -f "$P/d4/b" ] || fail "plain: entries beneath a symlink without a directory entry go through it"
note "root: ocix equals umoci without and with --keep-dirlinks; nothing outside the rootfs"

# rootless, both tools as nobody
install -m 0755 "$OCIX" "$W/ocix"
mkdir "$W/nobody" && chown 65534:65534 "$W/nobody"
for mode in plain keep; do
  flag=(); [ $mode = keep ] && flag=(--keep-dirlinks)
  as_nobody umoci unpack --rootless "${flag[@]}" --image "$W/image:t" "$W/nobody/umoci-$mode" >/dev/null 2>&1 ||
    fail "umoci rootless unpack ${flag[*]}"
  as_nobody "$W/ocix" unpack --rootless "${flag[@]}" --image "$W/image:t" "$W/nobody/ocix-$mode" 2>"$W/rootless.err" ||
    fail "ocix rootless unpack ${flag[*]}: $(cat "$W/rootless.err")"
  escaped "rootless $mode"
  same_tree "$W/nobody/umoci-$mode/rootfs" "$W/nobody/ocix-$mode/rootfs" "rootless-$mode"
done
[ -L "$W/nobody/ocix-keep/rootfs/l1" ] && [ -f "$W/nobody/ocix-keep/rootfs/d1/b-l1" ] || fail "rootless keep: l1"
note "rootless: ocix equals umoci without and with --keep-dirlinks"

# import takes the option too, and gives the bundle's manifest
"$OCIX" import --keep-dirlinks "$W/image:t" -o "$W/keep.cbor"
cmp "$W/keep.cbor" "$W/ocix-keep/ocix.cbor" || fail "import --keep-dirlinks differs from unpack --image --keep-dirlinks"
"$OCIX" import "$W/image:t" -o "$W/plain.cbor"
! cmp -s "$W/plain.cbor" "$W/keep.cbor" || fail "--keep-dirlinks changed nothing"
