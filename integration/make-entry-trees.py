#!/usr/bin/env python3
"""make-entry-trees.py KIND DIR: write an entry-heavy benchmark tree into DIR.

KIND is one of:
  flat200k  200,000 empty files in one directory (the worst case per entry:
            no data at all, one huge directory).
  million   1,000,000 entries shaped like a large application image:
            directories of ~20 entries, small files (0-1,500 bytes, contents
            mostly distinct, some repeated), hardlinks, symlinks (relative,
            absolute, dangling), user.* xattrs on some files, a few large files
            with holes and data.

Deterministic: the same KIND gives the same tree (names, contents, modes,
xattrs and mtimes), so results from different runs compare. Run as root
(owners other than root are set with lchown).
"""
import hashlib
import os
import sys

EPOCH = 1_700_000_000


def flat200k(top):
    d = os.path.join(top, "files")
    os.makedirs(d)
    for i in range(200_000):
        os.close(os.open(os.path.join(d, f"f{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.utime(d, (EPOCH, EPOCH))


def content(i):
    """Bytes of small file i: distinct for most i, repeated for every 7th."""
    key = i if i % 7 else 7
    size = (key * 2654435761) % 1501
    seed = hashlib.sha256(key.to_bytes(8, "little")).digest()
    out = bytearray()
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:size])


def million(top):
    target = 1_000_000
    entries = 1  # the root
    n_dir = n_file = 0
    first_files = []
    # Directories: top/a000/b000 ... each leaf holding ~20 entries.
    while entries < target:
        a = f"pkg{n_dir // 100:04d}"
        b = f"mod{n_dir % 100:02d}"
        if n_dir % 100 == 0:
            os.mkdir(os.path.join(top, a), 0o755)
            entries += 1
        leaf = os.path.join(top, a, b)
        os.mkdir(leaf, 0o755)
        entries += 1
        for j in range(20):
            if entries >= target:
                break
            p = os.path.join(leaf, f"file{j:02d}.js")
            kind = (n_file + j) % 20
            if kind == 17 and first_files:
                os.link(first_files[(n_file + j) % len(first_files)], p)
            elif kind == 18:
                os.symlink(f"file{(j + 1) % 17:02d}.js" if j % 2 else "/usr/lib/missing", p)
            elif kind == 19:
                os.symlink(f"../../{a}/{b}/file00.js", p)
            else:
                with open(p, "wb") as f:
                    f.write(content(n_file + j))
                mode = 0o755 if kind == 3 else 0o644
                os.chmod(p, mode)
                if kind == 5:
                    os.setxattr(p, "user.origin", b"npm:" + f"{n_dir}".encode())
                if kind == 6:
                    os.lchown(p, 1000, 1000)
                if len(first_files) < 5000 and kind == 1:
                    first_files.append(p)
                t = EPOCH + (n_file + j) % 86400
                os.utime(p, (t, t), follow_symlinks=False)
            entries += 1
        n_file += 20
        n_dir += 1
    # A few large files: data, holes, data.
    big = os.path.join(top, "pkg0000", "mod00")
    for k in range(4):
        p = os.path.join(big, f"blob{k}.bin")
        with open(p, "wb") as f:
            f.write(hashlib.sha256(bytes([k])).digest() * 32768)  # 1 MiB
            f.seek(16 << 20)
            f.write(b"end")
        os.unlink(os.path.join(big, f"file{k:02d}.js"))  # keep the count
    # Directory mtimes last, deepest first.
    for root, dirs, _ in os.walk(top, topdown=False):
        for d in dirs:
            os.utime(os.path.join(root, d), (EPOCH, EPOCH), follow_symlinks=False)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("flat200k", "million"):
        sys.exit(__doc__)
    kind, top = sys.argv[1], sys.argv[2]
    os.makedirs(top)
    os.umask(0o022)
    {"flat200k": flat200k, "million": million}[kind](top)
    os.utime(top, (EPOCH, EPOCH))


if __name__ == "__main__":
    main()
