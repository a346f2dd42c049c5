# bench-mount.sh (sourced by bench.sh): `ocix mount` (an EROFS metadata
# image over the blob store, no file data copied) of the corpus and of the
# node tree (../shared/corpus/make-node-tree.sh) from a warm store, against
# `ocix unpack` from the same store and `umoci unpack` of the same image, in
# the same run: destinations and mount points on a tmpfs, the stores (and so
# the cached images) on disk, since tmpfs cannot back a file-backed EROFS
# mount; the stores are warm (in the page cache). `mount` is a mount of a manifest
# whose image is cached (every mount after the first); `mount-first` builds
# the image and checks every blob's digest. Then the page cache: ten mounts
# of one manifest (store on disk, its blobs evicted first), every file read
# through each; the growth of the page cache is printed beside the data.
echo "== mount: a rootfs with no file data copied (as root)"
MW=$W/mount
MS=$CORPUS/bench-mount
rm -rf "$MS"
mkdir -p "$MW" "$MS"
mount_part() {  # mount_part NAME IMAGE:TAG
  local name=$1 img=$2 s=$MS/$1.store m=$MW/$1.ocix mnt=$MW/$1.mnt d=$MW/$1.dest b=$MW/$1.bundle
  "$OCIX" import -q "$img" --store "$s" -o "$m"
  mkdir -p "$mnt"
  "$OCIX" mount "$m" --store "$s" "$mnt" && "$OCIX" umount "$mnt"
  local um="'$OCIX' umount '$mnt' 2>/dev/null || true"
  bench "ocix-mount@$name" -p "$um" -- "'$OCIX' mount '$m' --store '$s' '$mnt'"
  bench "ocix-mount-first@$name" -p "$um; rm -rf '$s/.ocix-mount'" -- "'$OCIX' mount '$m' --store '$s' '$mnt'"
  "$OCIX" umount "$mnt"
  bench "ocix-unpack@$name" -p "rm -rf '$d'" -- "'$OCIX' unpack '$m' --store '$s' '$d'"
  bench "umoci-unpack@$name" -p "rm -rf '$b'" -- "umoci unpack --image '$img' '$b' >/dev/null 2>&1"
  rm -rf "$d" "$b"
  ratio "mount@$name: vs ocix unpack" "ocix-unpack@$name" "ocix-mount@$name"
  ratio "mount@$name: vs umoci unpack" "umoci-unpack@$name" "ocix-mount@$name"
  ratio "mount-first@$name: vs ocix unpack" "ocix-unpack@$name" "ocix-mount-first@$name"
}
mount_part corpus "$CORPUS/image:debian"
if [ -d "$CORPUS/node/image" ]; then
  mount_part node "$CORPUS/node/image:node"
else
  note "no node tree at $CORPUS/node (build it with ../shared/corpus/make-node-tree.sh): skipped"
fi

echo "== mount: page cache of ten mounts of one manifest, every file read"
PS=$MS/pagecache.store
"$OCIX" import -q "$CORPUS/image:debian" --store "$PS" -o "$MW/pc.ocix"
# evict the store's pages (only those), so the reads below fill the cache
python3 - "$PS/blobs/sha256" <<'PY'
import os, sys
for n in os.listdir(sys.argv[1]):
    fd = os.open(os.path.join(sys.argv[1], n), os.O_RDONLY)
    os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
PY
# resident page cache of files, in KiB (fincore, util-linux)
resident() { find "$@" -type f -print0 | xargs -0 -r fincore -b -n -o RES | awk '{s+=$1} END{printf "%d\n", s/1024}'; }
# file-backed page cache machine-wide, in KiB (Cached less tmpfs's Shmem)
cached() { awk '$1=="Cached:"{c=$2} $1=="Shmem:"{s=$2} END{print c-s}' /proc/meminfo; }
data_kb=$(du -sk --apparent-size "$PS/blobs" | cut -f1)
before=$(cached); res_before=$(resident "$PS")
for i in 0 1 2 3 4 5 6 7 8 9; do
  mkdir -p "$MW/pc$i"
  "$OCIX" mount "$MW/pc.ocix" --store "$PS" "$MW/pc$i"
  find "$MW/pc$i" -type f -exec cat {} + >/dev/null 2>&1 || true
done
after=$(cached); res_after=$(resident "$PS")
for i in 0 1 2 3 4 5 6 7 8 9; do "$OCIX" umount "$MW/pc$i"; done
rm -rf "$MS"
# the store's own residency is exact; the machine-wide Cached delta also
# counts whatever else ran meanwhile (other work on the machine)
awk -v r0="$res_before" -v r1="$res_after" -v b="$before" -v a="$after" -v d="$data_kb" 'BEGIN{
  printf "page cache, 10 mounts read whole (%.1f MiB of blobs, %.1f MiB read): store pages %.1f -> %.1f MiB (%.2f copies; target about 1); machine-wide file cache %+.1f MiB\n",
    d/1024, 10*d/1024, r0/1024, r1/1024, (r1-r0)/d, (a-b)/1024}'
printf 'mount-pagecache\t%d\t%d\t%d\n' "$((res_after - res_before))" "$data_kb" "$((after - before))" >>"$TSV"
