#!/usr/bin/env python3
"""lazy-tool.py: what the lazy-mount test and benchmark need to know about an
ocix artifact in a registry and about the requests the throttling proxy
served (integration/throttle.py), independently of ocix's own code.

  wire REG REPO TAG
      JSON: the artifact's bytes on the wire, what a whole pull transfers:
      "total" (OCI manifests, the config and every layer, of the ocix
      manifest's forms, e.g. plain and zstd, only the smallest; not the
      lazy index and digest table, which only a lazy mount reads),
      "manifests" (the OCI manifest JSON bytes), "layers" (their count).
  singles REG REPO TAG SHOW_JSON
      file blobs that are layers of their own, smallest first, one a line:
      registry digest, content digest, wire bytes, content bytes, first path.
  pick SHOW_JSON PREFIX N
      the first N regular files (size > 0) under PREFIX, in manifest order.
  digests SHOW_JSON [PATHS]
      content digests (sha256:HEX) of the regular files, or of the files
      PATHS names (one path a line, as `ocix mount --record-access` writes).
  split REG REPO TAG LOG
      JSON: the body bytes of LOG's requests in "meta" (OCI manifests, the
      ocix manifest blob or the lazy index and the chunks of the digest
      table, an access list) and "files" (packs and file blobs).
  check-log REG REPO TAG SHOW_JSON PATHS LOG
      every file blob the requests of LOG (the proxy's request log, JSON
      lines) brought, whole blobs and pack members a Range covered, must be
      the content of a file PATHS names. Prints a summary and the others;
      exit 1 if there are any.

REG is HOST:PORT of the registry (plain HTTP); SHOW_JSON is the output of
`ocix show --json MANIFEST`. Pack members follow from the manifest as ocix
lays them out: the distinct file blobs of 1..threshold bytes in manifest
order, pack after pack by each pack's io.ocix.pack.count, each member's wire
length its size, or its zstd frame's (io.ocix.pack.frames).
"""

import json
import re
import sys
import urllib.request

MANIFEST_TYPES = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
OCIX = "application/vnd.ocix.manifest.v1+cbor"
PACK = ("application/vnd.ocix.pack.v1", "application/vnd.ocix.pack.v1+zstd")
FILE = ("application/vnd.ocix.file.v1", "application/vnd.ocix.file.v1+zstd")
LAZY = ("application/vnd.ocix.lazy.v1+zstd", "application/vnd.ocix.digests.v1")


def get(url, accept=MANIFEST_TYPES):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def artifact(reg, repo, tag):
    """(manifest JSON bytes in all, the ocix artifact manifest, every layer
    of it and of its blob lists)."""
    top = get(f"http://{reg}/v2/{repo}/manifests/{tag}")
    m = json.loads(top)
    total = len(top)
    if "manifests" in m:  # an index: the ocix artifact first, then blob lists
        parts = []
        for d in m["manifests"]:
            b = get(f"http://{reg}/v2/{repo}/manifests/{d['digest']}", d["mediaType"])
            total += len(b)
            parts.append(json.loads(b))
        art = next(p for p in parts if p.get("artifactType", "").startswith(OCIX))
        layers = [l for p in parts for l in p["layers"]]
        config = sum(p["config"]["size"] for p in parts)
    else:
        art = m
        layers = m["layers"]
        config = m["config"]["size"]
    return total, config, art, layers


def entries(show):
    with open(show, "rb") as f:
        return json.load(f)


def norm(p):
    p = p.strip("\n")
    while p.startswith("./"):
        p = p[2:]
    return "/" + p.lstrip("/")


def files(show):
    """Regular files: [(path, digest, size)] in manifest order."""
    return [(e["path"], e["digest"], e["size"]) for e in entries(show) if e.get("type") == "file" and e.get("digest")]


def distinct(fs):
    seen, out = set(), []
    for _, d, s in fs:
        if d not in seen:
            seen.add(d)
            out.append((d, s))
    return out


def first_paths(fs):
    out = {}
    for p, d, _ in fs:
        out.setdefault(d, p)
    return out


def ann(l, k):
    return (l.get("annotations") or {}).get(k)


def layout(reg, repo, tag, show):
    """{registry digest: [(off, len, content digest)]} for packs, and
    {registry digest: content digest} for file blobs of their own."""
    _, _, art, layers = artifact(reg, repo, tag)
    threshold = int(ann(art, "io.ocix.pack.threshold") or 0)
    small = [(d, s) for d, s in distinct(files(show)) if 0 < s <= threshold]
    packs, singles, k = {}, {}, 0
    for l in layers:
        mt = l["mediaType"]
        if mt in PACK:
            n = int(ann(l, "io.ocix.pack.count"))
            members = small[k:k + n]
            k += n
            frames = ann(l, "io.ocix.pack.frames")
            lens = [int(x) for x in frames.split(",")] if frames else [s for _, s in members]
            off, out = 0, []
            for (d, _), ln in zip(members, lens):
                out.append((off, ln, d))
                off += ln
            if off != l["size"]:
                sys.exit(f"pack {l['digest']}: members add up to {off} bytes, the layer has {l['size']}")
            packs[l["digest"]] = out
        elif mt in FILE:
            singles[l["digest"]] = ann(l, "io.ocix.file.digest") or l["digest"]
    if k != len(small):
        sys.exit(f"packs hold {k} blobs, the manifest has {len(small)} small ones")
    return packs, singles


def covered(rng, members):
    """Members a Range header (bytes=A-B, one range) covers; all without."""
    if not rng:
        return [d for _, _, d in members]
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
    if not m:
        sys.exit(f"unexpected Range {rng!r}")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else float("inf")
    return [d for off, ln, d in members if off <= b and off + ln - 1 >= a]


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "wire" and len(args) == 3:
        total, config, _, layers = artifact(*args)
        forms = [l["size"] for l in layers if l["mediaType"].startswith(OCIX)]
        rest = sum(l["size"] for l in layers if not l["mediaType"].startswith(OCIX) and l["mediaType"] not in LAZY)
        print(json.dumps({"total": total + config + min(forms, default=0) + rest, "manifests": total,
                          "layers": len(layers)}))
    elif cmd == "singles" and len(args) == 4:
        fs = files(args[3])
        paths = first_paths(fs)
        sizes = {d: s for d, s in distinct(fs)}
        _, _, _, layers = artifact(*args[:3])
        rows = []
        for l in layers:
            if l["mediaType"] in FILE:
                c = ann(l, "io.ocix.file.digest") or l["digest"]
                if c in paths:
                    rows.append((l["size"], l["digest"], c, sizes[c], paths[c]))
        for w, r, c, s, p in sorted(rows):
            print(r, c, w, s, p, sep="\t")
    elif cmd == "pick" and len(args) == 3:
        prefix = norm(args[1]).rstrip("/") + "/"
        n = int(args[2])
        out = [p for p, _, s in files(args[0]) if p.startswith(prefix) and s > 0][:n]
        print("\n".join(out))
    elif cmd == "digests" and len(args) in (1, 2):
        fs = files(args[0])
        if len(args) == 2:
            by_path = {p: d for p, d, _ in fs}
            with open(args[1], encoding="utf-8", errors="surrogateescape") as f:
                wanted = [norm(l) for l in f if l.strip()]
            out = sorted({by_path[p] for p in wanted if p in by_path})
        else:
            out = sorted({d for _, d, _ in fs})
        print("\n".join(out))
    elif cmd == "split" and len(args) == 4:
        _, _, _, layers = artifact(*args[:3])
        data = {l["digest"] for l in layers if l["mediaType"] in PACK + FILE}
        out = {"meta": 0, "files": 0}
        with open(args[3]) as f:
            for line in f:
                e = json.loads(line)
                blob = "/blobs/" in e["path"] and e["path"].rsplit("/", 1)[1] in data
                out["files" if blob else "meta"] += e["bytes"]
        print(json.dumps(out))
    elif cmd == "check-log" and len(args) == 6:
        reg, repo, tag, show, paths, log = args
        packs, singles = layout(reg, repo, tag, show)
        fs = files(show)
        by_path = {p: d for p, d, _ in fs}
        first = first_paths(fs)
        with open(paths, encoding="utf-8", errors="surrogateescape") as f:
            read = {by_path[norm(l)] for l in f if l.strip() and norm(l) in by_path}
        brought, requests, nbytes, other = set(), 0, 0, 0
        with open(log) as f:
            for line in f:
                e = json.loads(line)
                if e["method"] != "GET" or "/blobs/" not in e["path"] or e["status"] not in (200, 206):
                    continue
                reg_digest = e["path"].rsplit("/", 1)[1]
                if reg_digest in packs:
                    got = covered(e.get("range"), packs[reg_digest])
                elif reg_digest in singles:
                    got = [singles[reg_digest]]
                else:
                    other += 1  # the ocix manifest blob, an access list
                    continue
                requests += 1
                nbytes += e["bytes"]
                brought.update(got)
        extra = sorted(brought - read)
        print(f"{requests} file blob requests, {nbytes} bytes, {len(brought)} blobs brought, "
              f"{len(read)} read, {len(extra)} brought but not read; {other} other blob requests")
        for d in extra[:20]:
            print(f"  not read: {d} {first.get(d, '?')}")
        if len(extra) > 20:
            print(f"  ... and {len(extra) - 20} more")
        return 1 if extra else 0
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
