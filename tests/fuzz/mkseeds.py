#!/usr/bin/env python3
"""mkseeds.py - seed inputs for the fuzz targets that need structured ones.

  mkseeds.py restore DIR GWS...   each stream with its RAM cut down to two pages
                                  (one zero run, one data page): the CONFIG, CPU, VM
                                  and DEVICE sections kept as written, the EOF record
                                  recomputed (docs/stream-format.md), so the seeds
                                  are valid streams of about 20 KB, not 1.2 MB; each
                                  with mode bytes 0 (checksums on) and 1 (ignored).
  mkseeds.py virtio-blk DIR       one ring per request type (fuzz_virtio_blk.c's input:
                                  4-byte header, then guest RAM from 0), a few KB each.
  mkseeds.py pci DIR              op sequences (fuzz_pci.c): enumeration and BAR sizing, a
                                  driver bringing up virtio-blk and virtio-rng (features,
                                  queues, MSI-X, DRIVER_OK, a request, notify), a migration,
                                  a moved BAR, the PCI cfg access window.
  mkseeds.py api DIR              HTTP requests (fuzz_api.c: a mode byte, then the bytes of
                                  one connection) for every endpoint and method, bodies good
                                  and bad, chunked, pipelined, oversized with Expect.
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


def shrink(buf, extra=b'', only_ram=False):
    """buf with its RAM cut down to two pages (and extra, a whole section, after CONFIG);
    only_ram: nothing else but CONFIG (a memory channel's stream)."""
    out = bytearray(buf[:20])
    chain = crc32c(struct.pack('<I', struct.unpack_from('<I', buf, 16)[0]))
    count = 0
    ram_gpa = None
    for typ, flags, sid, ver, inst, payload, crc in sections(buf):
        if typ == EOF:
            break
        if typ == RAM or (only_ram and count):
            ram_gpa = ram_gpa if ram_gpa is not None else 0
            continue
        out += section(typ, flags, sid, ver, inst, payload)
        chain = crc32c(struct.pack('<I', crc), chain)
        count += 1
        if count == 1 and extra:
            out += extra
            chain = crc32c(struct.pack('<I', struct.unpack_from('<I', extra, len(extra) - 4)[0]), chain)
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


def resumed(buf):
    """fuzz_restore's mode 4: a first stream with a reconnect section that breaks off
    in its RAM, then the source's second stream (the same CONFIG, resume, the rest)."""
    VM, OPTIONAL, token = 5, 1, bytes(range(16))
    recon = section(VM, OPTIONAL, b'reconnect', 1, 0, struct.pack('<I', 30) + token)
    whole = shrink(buf, recon)
    conf = next(sections(whole))
    # The preamble, CONFIG, reconnect, and the first bytes of RAM's header: then the break.
    cut = 20 + len(section(*conf[:6])) + len(recon)
    first = whole[:cut] + section(RAM, 0, b'ram', 1, 0, b'')[:10]
    second = shrink(buf, section(VM, 0, b'resume', 1, 0, token))
    return struct.pack('<I', len(first)) + first + second


def channels(buf):
    """fuzz_restore's mode 8: a migration over two channels: the main stream (with its
    channel section, index 0 of 2), then a memory channel's stream (index 1)."""
    VM, token = 5, bytes(range(16))
    main = shrink(buf, section(VM, 0, b'channel', 1, 0, struct.pack('<II', 0, 2) + token))
    mem = shrink(buf, section(VM, 0, b'channel', 1, 0, struct.pack('<II', 1, 2) + token), True)
    return struct.pack('<I', len(main)) + main + mem


NEXT, WRITE, INDIRECT = 1, 2, 4


def blk_ring(flags, qexp, chains, last=0):
    """chains: lists of (gpa, len, writable, bytes or None); one avail entry each."""
    q = 1 << qexp
    ram = bytearray(0x3000)
    d = 0
    heads = []
    for chain in chains:
        heads.append(d)
        for i, (gpa, ln, w, content) in enumerate(chain):
            nxt = d + 1 if i + 1 < len(chain) else 0
            struct.pack_into('<QIHH', ram, 16 * d, gpa, ln, (NEXT if i + 1 < len(chain) else 0) |
                             (WRITE if w else 0), nxt)
            if content:
                ram[gpa:gpa + len(content)] = content
            d += 1
    av = 16 * q
    struct.pack_into('<HH', ram, av, 0, (last + len(heads)) & 0xffff)
    for i, h in enumerate(heads):
        struct.pack_into('<H', ram, av + 4 + 2 * ((last + i) % q), h)
    return bytes([flags, qexp]) + struct.pack('<H', last) + bytes(ram)


def blk_hdr(t, sector):
    return struct.pack('<IIQ', t, 0, sector)


def blk_seeds(out):
    F = 2 | 4 | 8 | 16 | 32      # INDIRECT, EVENT_IDX, FLUSH, DISCARD, WRITE_ZEROES
    seeds = {
        'read': blk_ring(F, 3, [[(0x1000, 16, 0, blk_hdr(0, 3)), (0x1100, 1024, 1, None),
                                 (0x1600, 1, 1, None)]]),
        'write': blk_ring(F, 3, [[(0x1000, 16, 0, blk_hdr(1, 120)),
                                  (0x1100, 512, 0, bytes(range(256)) * 2), (0x1600, 1, 1, None)]]),
        'write-split': blk_ring(F, 3, [[(0x1000, 7, 0, blk_hdr(1, 0)[:7]),
                                        (0x1010, 9 + 512, 0, blk_hdr(1, 0)[7:] + b'x' * 512),
                                        (0x1600, 1, 1, None)]]),
        'flush-getid': blk_ring(F, 3, [[(0x1000, 16, 0, blk_hdr(4, 0)), (0x1600, 1, 1, None)],
                                       [(0x1020, 16, 0, blk_hdr(8, 0)), (0x1700, 21, 1, None)]]),
        'discard-wz': blk_ring(F, 3, [[(0x1000, 32, 0, blk_hdr(11, 0) + struct.pack('<QII', 8, 16, 0)),
                                       (0x1600, 1, 1, None)],
                                      [(0x1040, 32, 0, blk_hdr(13, 0) + struct.pack('<QII', 64, 8, 1)),
                                       (0x1610, 1, 1, None)]]),
        'readonly-write': blk_ring(F | 1, 3, [[(0x1000, 16, 0, blk_hdr(1, 0)),
                                               (0x1100, 512, 0, b'w' * 512), (0x1600, 1, 1, None)]]),
        'unknown-range': blk_ring(F, 3, [[(0x1000, 16, 0, blk_hdr(99, 0)), (0x1600, 1, 1, None)],
                                         [(0x1020, 16, 0, blk_hdr(0, 127)), (0x1100, 1024, 1, None),
                                          (0x1600, 1, 1, None)]], last=0xfffe),
    }
    for name, b in seeds.items():
        open(os.path.join(out, 'seed-' + name), 'wb').write(b)


_SZ = {1: 0, 2: 1, 4: 2, 8: 3}


def cfg(slot, off, size, val=None):
    op = 0 | _SZ[size] << 2 | (0x10 if val is not None else 0) | slot << 5
    return bytes([op, off]) + (val.to_bytes(size, 'little') if val is not None else b'')


def bar(dev, off, size, val=None):
    op = 1 | _SZ[size] << 2 | (0x10 if val is not None else 0) | dev << 5
    return bytes([op]) + struct.pack('<H', off) + (val.to_bytes(size, 'little') if val is not None else b'')


def window(off, size, val=None):
    op = 2 | _SZ[size] << 2 | (0x10 if val is not None else 0)
    return bytes([op]) + off.to_bytes(3, 'little') + (val.to_bytes(size, 'little') if val is not None else b'')


def ram(off, data):
    out = b''
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += bytes([3 | 1 << 5]) + struct.pack('<HB', off + i, len(chunk)) + chunk
    return out


MIGRATE = bytes([3 | 2 << 5])
RESET = bytes([3 | 3 << 5])
WAIT = bytes([3 | 5 << 5])


def msix_fire(vec, dev):
    return bytes([3 | 4 << 5, vec, dev])


MSIX_CAP, PCICFG_CAP = 0x98, 0x84


def driver(dev, feats_lo, qsize, desc, avail, used):
    slot = 1 + dev
    b = bar(dev, 0x14, 1, 0) + bar(dev, 0x14, 1, 1) + bar(dev, 0x14, 1, 3)
    b += bar(dev, 0x00, 4, 0) + bar(dev, 0x04, 4) + bar(dev, 0x00, 4, 1) + bar(dev, 0x04, 4)
    b += bar(dev, 0x08, 4, 0) + bar(dev, 0x0c, 4, feats_lo) + bar(dev, 0x08, 4, 1) + bar(dev, 0x0c, 4, 1)
    b += bar(dev, 0x14, 1, 0xb) + bar(dev, 0x14, 1) + bar(dev, 0x12, 2)
    b += bar(dev, 0x16, 2, 0) + bar(dev, 0x18, 2) + bar(dev, 0x18, 2, qsize) + bar(dev, 0x1a, 2, 1)
    b += bar(dev, 0x20, 8, desc) + bar(dev, 0x28, 8, avail) + bar(dev, 0x30, 8, used)
    b += bar(dev, 0x1c, 2, 1) + bar(dev, 0x1e, 2) + bar(dev, 0x10, 2, 0)
    # MSI-X on, vectors 0 and 1 unmasked with a message
    b += cfg(slot, MSIX_CAP + 2, 2, 0x8000)
    for v in (0, 1):
        b += bar(dev, 0x3800 + 16 * v, 4, 0xfee00000) + bar(dev, 0x3800 + 16 * v + 4, 4, 0)
        b += bar(dev, 0x3800 + 16 * v + 8, 4, 0x30 + v) + bar(dev, 0x3800 + 16 * v + 12, 4, 0)
    b += bar(dev, 0x14, 1, 0xf) + bar(dev, 0x15, 1)
    return b


def pci_seeds(out):
    enum = b''
    for slot in range(4):
        enum += cfg(slot, 0x00, 4) + cfg(slot, 0x08, 4) + cfg(slot, 0x04, 2) + cfg(slot, 0x34, 1)
        enum += cfg(slot, 0x10, 4, 0xffffffff) + cfg(slot, 0x10, 4) + cfg(slot, 0x14, 4, 0xffffffff)
        enum += cfg(slot, 0x14, 4) + cfg(slot, 0x10, 4, 0xc0000004) + cfg(slot, 0x14, 4, 0)
        for c in (0x40, 0x50, 0x60, 0x70, 0x84, 0x98):
            enum += cfg(slot, c, 4) + cfg(slot, c + 4, 4) + cfg(slot, c + 8, 4) + cfg(slot, c + 12, 4)
        enum += cfg(slot, 0x3c, 1, 11) + cfg(slot, 0x3c, 1)
    enum += bytes([3 | 0 << 5 | 0x10, 1, 6])   # 0xcf9: a reset request
    # virtio-blk: a write of one sector at sector 2, then a flush (rings at 0x0/0x80/0x98)
    blk = driver(0, 1 << 9 | 1 << 28, 8, 0x0, 0x80, 0x98)
    descs = b''.join(struct.pack('<QIHH', *d) for d in [
        (0x1000, 16, NEXT, 1), (0x1100, 512, NEXT, 2), (0x1400, 1, WRITE, 0),
        (0x1010, 16, NEXT, 4), (0x1401, 1, WRITE, 0)])
    blk += ram(0x0, descs) + ram(0x80, struct.pack('<HHHH', 0, 2, 0, 3))
    blk += ram(0x1000, struct.pack('<IIQ', 1, 0, 2) + struct.pack('<IIQ', 4, 0, 0))
    blk += ram(0x1100, bytes(range(256)) * 2)
    blk += bar(0, 0x3000, 2, 0) + WAIT + bar(0, 0x1000, 1) + bar(0, 0x2000, 8) + bar(0, 0x2014, 4)
    blk += MIGRATE + bar(0, 0x3c00, 8) + bar(0, 0x14, 1, 0) + bar(0, 0x14, 1)
    # virtio-rng: one 64-byte buffer (rings at 0x4000/0x4080/0x4098)
    rng = driver(1, 0, 4, 0x4000, 0x4080, 0x4098)
    rng += ram(0x4000, struct.pack('<QIHH', 0x5000, 64, WRITE, 0)) + ram(0x4080, struct.pack('<HHH', 0, 1, 0))
    rng += bar(1, 0x3000, 4, 0) + WAIT + msix_fire(1, 1) + cfg(2, MSIX_CAP + 2, 2, 0xc000)
    rng += msix_fire(0, 1) + bar(1, 0x3c00, 8) + cfg(2, MSIX_CAP + 2, 2, 0x8000) + MIGRATE + RESET
    # the blk BAR moved to 0xc0800000 with decoding off, then on; accessed there
    move = cfg(1, 0x04, 2, 0) + cfg(1, 0x10, 4, 0xc0800004) + cfg(1, 0x14, 4, 0) + cfg(1, 0x04, 2, 2)
    move += window(0x800000 + 0x14, 1, 1) + window(0x800000, 4) + bar(0, 0x12, 2) + window(0x800000 + 0x3000, 2, 0)
    move += cfg(1, 0x04, 2, 0) + window(0x800000, 4) + MIGRATE
    # the PCI cfg access capability: BAR 0, offset 0x14 (status), length 1, then its data
    pcfg = cfg(1, PCICFG_CAP + 4, 1, 0) + cfg(1, PCICFG_CAP + 8, 4, 0x14) + cfg(1, PCICFG_CAP + 12, 4, 1)
    pcfg += cfg(1, PCICFG_CAP + 16, 1, 1) + cfg(1, PCICFG_CAP + 16, 1)
    pcfg += cfg(1, PCICFG_CAP + 8, 4, 0x2000) + cfg(1, PCICFG_CAP + 12, 4, 4) + cfg(1, PCICFG_CAP + 16, 4)
    for name, b in (('enumerate', enum), ('blk-driver', blk), ('rng-driver', rng), ('bar-move', move),
                    ('pci-cfg-window', pcfg)):
        open(os.path.join(out, 'seed-' + name), 'wb').write(b)


def http(method, path, body=None, headers=()):
    h = '%s %s HTTP/1.1\r\nHost: godwit\r\n' % (method, path)
    for k in headers:
        h += k + '\r\n'
    if body is not None:
        h += 'Content-Type: application/json\r\nContent-Length: %d\r\n' % len(body)
    return (h + '\r\n').encode() + (body.encode() if body is not None else b'')


def api_seeds(out):
    RUNNING, PAUSED, STOPPING, CREATED = 1, 2, 3, 0
    seeds = {
        'get-vm': (RUNNING, http('GET', '/api/v1/vm')),
        'head-vm': (PAUSED, http('HEAD', '/api/v1/vm')),
        'pause-resume': (RUNNING, http('PUT', '/api/v1/vm/pause') + http('PUT', '/api/v1/vm/resume')),
        'pause-fails': (RUNNING | 4, http('PUT', '/api/v1/vm/pause', '{}')),
        'resume-eio': (PAUSED | 8, http('PUT', '/api/v1/vm/resume')),
        'shutdown': (STOPPING, http('PUT', '/api/v1/vm/shutdown') + http('GET', '/api/v1/vm')),
        'snapshot': (RUNNING, http('PUT', '/api/v1/vm/snapshot', '{"path": "/tmp/x.gws", "resume": true}')),
        'snapshot-bad': (PAUSED, http('PUT', '/api/v1/vm/snapshot', '{"path": "rel", "resume": 1}')),
        'snapshot-live': (RUNNING, http('PUT', '/api/v1/vm/snapshot',
                                        '{"path": "/tmp/x.gws", "resume": true, "live": true}')),
        'snapshot-live-paused': (PAUSED, http('PUT', '/api/v1/vm/snapshot',
                                              '{"path": "x.gws", "live": true}')),
        'snapshot-live-bad': (RUNNING, http('PUT', '/api/v1/vm/snapshot',
                                            '{"path": "x.gws", "live": "yes"}')),
        'migrate': (RUNNING, http('PUT', '/api/v1/vm/migrate',
                                  '{"to": "tcp:127.0.0.1:4444", "downtime_ms": 50, "max_bandwidth": 1000000, '
                                  '"max_rounds": 30, "min_rate": 65536, "with_disks": "root,data"}')),
        'migrate-unix': (RUNNING, http('PUT', '/api/v1/vm/migrate', '{"to": "unix:/tmp/m.sock", "with_disks": true}')),
        'migrate-bad': (CREATED, http('PUT', '/api/v1/vm/migrate', '{"to": "x", "downtime_ms": -1}')),
        'migration': (RUNNING, http('GET', '/api/v1/vm/migration?release=1')),
        'cancel-resolve': (RUNNING, http('PUT', '/api/v1/vm/migrate-cancel') +
                           http('PUT', '/api/v1/vm/migrate-resolve', '{"action": "resume"}') +
                           http('PUT', '/api/v1/vm/migrate-resolve', '{"action": "discard"}')),
        'gate': (RUNNING, http('PUT', '/api/v1/vm/migrate', '{"to": "unix:/tmp/m.sock", "gate": true}') +
                 http('PUT', '/api/v1/vm/migrate-commit', '{"commit": true}') +
                 http('PUT', '/api/v1/vm/migrate-commit', '{"commit": false}') +
                 http('PUT', '/api/v1/vm/migrate-commit', '{"commit": "yes"}') +
                 http('PUT', '/api/v1/vm/migrate-commit')),
        'fleet-lease': (RUNNING, http('PUT', '/api/v1/vm/fleet-lease', '{"lease": "7587888165234567"}') +
                        http('PUT', '/api/v1/vm/fleet-lease', '{"lease": "-1"}') +
                        http('PUT', '/api/v1/vm/fleet-lease', '{"lease": 5}')),
        'errors': (RUNNING, http('POST', '/api/v1/vm') + http('GET', '/api/v2/nope') +
                   http('PUT', '/api/v1/vm/pause', '{"x": 1}') + http('PUT', '/api/v1/vm/pause', '[1]') +
                   http('PUT', '/api/v1/vm/pause', '{"a":') + http('PUT', '/api/v1/vm/pause', '{"a":1,"a":2}')),
        'chunked': (RUNNING, b'PUT /api/v1/vm/snapshot HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n'
                    b'5\r\n{"pat\r\n11\r\nh": "/tmp/a.gws"}\r\n0\r\n\r\n'),
        'too-big': (RUNNING, b'PUT /api/v1/vm/pause HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n'
                    b'Expect: 100-continue\r\n\r\n'),
        'http10': (RUNNING, b'GET /api/v1/vm HTTP/1.0\r\n\r\n'),
        'metrics': (RUNNING, http('GET', '/metrics') + http('HEAD', '/metrics') +
                    http('POST', '/metrics') + http('GET', '/metrics', '{}') +
                    http('GET', '/metrics?x=1')),
        'metrics-paused': (PAUSED, http('GET', '/metrics')),
    }
    for name, (mode, b) in seeds.items():
        open(os.path.join(out, 'seed-' + name), 'wb').write(bytes([mode]) + b)


def main(argv):
    if len(argv) == 3 and argv[1] == 'api':
        return api_seeds(argv[2])
    if len(argv) == 3 and argv[1] == 'virtio-blk':
        return blk_seeds(argv[2])
    if len(argv) == 3 and argv[1] == 'pci':
        return pci_seeds(argv[2])
    if len(argv) < 3 or argv[1] != 'restore':
        sys.exit(__doc__)
    for g in argv[3:]:
        small = shrink(open(g, 'rb').read())
        base = os.path.basename(g).replace('.gws', '')
        for mode in (0, 1):
            open(os.path.join(argv[2], 'seed-%02x-%s' % (mode, base)), 'wb').write(bytes([mode]) + small)
        for mode in (4, 5):
            open(os.path.join(argv[2], 'seed-%02x-%s' % (mode, base)), 'wb').write(bytes([mode]) + resumed(open(g, 'rb').read()))
        for mode in (8, 9):
            open(os.path.join(argv[2], 'seed-%02x-%s' % (mode, base)), 'wb').write(bytes([mode]) + channels(open(g, 'rb').read()))


if __name__ == '__main__':
    main(sys.argv)
