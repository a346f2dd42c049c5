#!/usr/bin/env python3
"""cddl_check.py SCHEMA MANIFEST: validate a manifest against ocix.cddl with an
independent CDDL implementation (pycddl), then check that the same validator
rejects a handful of mutations of it (so a schema that accepts anything would
fail this check). Prints one line per check; exit 1 on any failure."""
import sys

import cbor2
import pycddl

schema_path, manifest_path = sys.argv[1], sys.argv[2]
schema = pycddl.Schema(open(schema_path).read())
raw = open(manifest_path, "rb").read()
failures = 0


def thaw(o):
    if isinstance(o, cbor2.CBORTag):
        return cbor2.CBORTag(o.tag, thaw(o.value))
    if hasattr(o, "items"):
        return {k: thaw(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [thaw(x) for x in o]
    return o


def check(name, data, want_valid):
    global failures
    try:
        schema.validate_cbor(data)
        ok = want_valid
        why = "valid"
    except Exception as e:  # pycddl raises ValidationError
        ok = not want_valid
        why = str(e).splitlines()[0][:120]
    print(("ok   " if ok else "FAIL ") + name + ": " + why)
    failures += 0 if ok else 1


check("manifest as written", raw, True)
doc = thaw(cbor2.loads(raw))
root = doc.value[1]
first = root[13][0]


def mutated(fn):
    d = thaw(cbor2.loads(raw))
    fn(d.value)
    return cbor2.dumps(d)


check("version 2", mutated(lambda v: v.__setitem__(0, 2)), False)
check("root typed as symlink", mutated(lambda v: v[1].__setitem__(1, 2)), False)
check("mode above 07777", mutated(lambda v: v[1][13][0].__setitem__(2, 0o17777)), False)
# (pycddl 0.6 accepts unknown keys in maps nested in arrays, and a text string
# where `bstr .size` is asked; ocix's own decoder rejects both: tests/manifest.rs)
check("unknown field 42 on the root", mutated(lambda v: v[1].__setitem__(42, 1)), False)
check("empty name", mutated(lambda v: v[1][13][0].__setitem__(0, b"")), False)
check("256-byte name", mutated(lambda v: v[1][13][0].__setitem__(0, b"n" * 256)), False)
check("negative uid", mutated(lambda v: v[1][13][0].__setitem__(3, -5)), False)
check("uid 0 written out", mutated(lambda v: v[1][13][0].__setitem__(3, 0)), False)
check("uid 4294967295 (chown's no change)", mutated(lambda v: v[1][13][0].__setitem__(3, 4294967295)), False)
check("wrong tag", cbor2.dumps(cbor2.CBORTag(1234, thaw(cbor2.loads(raw)).value)), False)
sys.exit(1 if failures else 0)
