#!/usr/bin/env python3
"""ramhdr.py FILE - the first RAM section's header in a godwit stream's first
bytes (docs/stream-format.md), as JSON: {"version", "nruns", "flags",
"nodatacrc", "zstd"}; the file may end anywhere after that header.  Exit 1
with a message if the file holds no RAM section header."""
import json
import struct
import sys

d = open(sys.argv[1], "rb").read()
if d[:8] != b"GODWIT\0\x1a":
    sys.exit("not a godwit stream")
off = 20                                  # the preamble
while off + 4 <= len(d):
    typ, flags, idl = struct.unpack_from("<BBH", d, off)
    hdr = off + 4 + idl
    if hdr + 14 > len(d):
        break
    ver, inst, ln = struct.unpack_from("<HIQ", d, hdr)
    body = hdr + 14
    if typ == 2:                          # RAM
        if body + 16 > len(d):
            break
        nruns, pad = struct.unpack_from("<II", d, body)
        rf = struct.unpack_from("<I", d, body + 8)[0] if ver >= 2 else 0
        print(json.dumps({"version": ver, "nruns": nruns, "flags": rf,
                          "nodatacrc": bool(rf & 1), "zstd": bool(rf & 2)}))
        sys.exit(0)
    off = body + ln + 4                   # payload and CRC
sys.exit("no RAM section header in the first %d bytes" % len(d))
