#!/usr/bin/env python3
"""mkseeds.py - seed inputs for the fuzz targets that need structured ones.

  mkseeds.py restore DIR GWS...   each stream with its RAM cut down to two pages
                                  (one zero run, one data page): the CONFIG, CPU, VM
                                  and DEVICE sections kept as written, the EOF record
                                  recomputed (docs/stream-format.md), so the seeds
                                  are valid streams of about 20 KB, not 1.2 MB; each
                                  with mode bytes 0 (checksums on) and 1 (ignored).
"""
import os
import struct
import sys

_T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ (0x82f63b78 & -(c & 1))
    _T.append(c)


def crc32c(data, crc=0):
    c = crc ^ 0xffffffff
    for x in data:
        c = _T[(c ^ x) & 0xff] ^ (c >> 8)
    return c ^ 0xffffffff


RAM, EOF = 2, 6


def sections(buf):
    """(type, flags, id, version, instance, payload, crc) for each section after the preamble."""
    off = 20
    while off < len(buf):
        typ, flags, idlen = struct.unpack_from('<BBH', buf, off)
        sid = buf[off + 4:off + 4 + idlen]
        ver, inst, plen = struct.unpack_from('<HIQ', buf, off + 4 + idlen)
        p = off + 4 + idlen + 14
        payload = buf[p:p + plen]
        crc, = struct.unpack_from('<I', buf, p + plen)
        yield typ, flags, sid, ver, inst, payload, crc
        off = p + plen + 4
        if typ == EOF:
            break


def section(typ, flags, sid, ver, inst, payload):
    b = struct.pack('<BBH', typ, flags, len(sid)) + sid + struct.pack('<HIQ', ver, inst, len(payload)) + payload
    return b + struct.pack('<I', crc32c(b))


def shrink(buf):
    out = bytearray(buf[:20])
    chain = crc32c(struct.pack('<I', struct.unpack_from('<I', buf, 16)[0]))
    count = 0
    ram_gpa = None
    for typ, flags, sid, ver, inst, payload, crc in sections(buf):
        if typ == EOF:
            break
        if typ == RAM:
            ram_gpa = ram_gpa if ram_gpa is not None else 0
            continue
        out += section(typ, flags, sid, ver, inst, payload)
        chain = crc32c(struct.pack('<I', crc), chain)
        count += 1
    # One RAM section: a zero run at 0 and a data page at 0x1000, page data 4 KiB-aligned.
    hdr = 4 + len(b"ram") + 14
    start = len(out) + hdr
    table = struct.pack('<QII', 0, 1, 1) + struct.pack('<QII', 0x1000, 1, 0)
    pad = (-(start + 8 + len(table))) % 4096
    page = bytes((i * 7) & 0xff for i in range(4096))
    ram = section(RAM, 0, b'ram', 1, 0, struct.pack('<II', 2, pad) + table + bytes(pad) + page)
    out += ram
    chain = crc32c(struct.pack('<I', struct.unpack_from('<I', ram, len(ram) - 4)[0]), chain)
    count += 1
    eof_off = len(out)
    fields = (struct.pack("<HIQ", 1, 8, count) + struct.pack('<HIQ', 2, 8, eof_off) +
              struct.pack('<HII', 3, 4, chain))
    out += section(EOF, 0, b'eof', 1, 0, fields)
    return bytes(out)


def main(argv):
    if len(argv) < 3 or argv[1] != 'restore':
        sys.exit(__doc__)
    for g in argv[3:]:
        small = shrink(open(g, 'rb').read())
        base = os.path.basename(g).replace('.gws', '')
        for mode in (0, 1):
            open(os.path.join(argv[2], 'seed-%02x-%s' % (mode, base)), 'wb').write(bytes([mode]) + small)


if __name__ == '__main__':
    main(sys.argv)
