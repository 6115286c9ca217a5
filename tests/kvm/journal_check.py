#!/usr/bin/env python3
"""journal_check.py - checks, on the host, a disk image written by the test
guest's journal workload (guest/README.md, disk_mode=journal).

    journal_check.py IMAGE [--start-mib S] [--mib N] [--flushed F] [--max-seq M]

The range is [S, S + N) MiB of IMAGE (defaults 0 and 16, the guest's
disk_start and disk_mib), 4 KiB blocks; seq s lives at block
S*256 + (s - 1) % records.  A record (little-endian u64 words): 0 magic
"GDWJRNL1", 1 seq, 2 sector, 3..510 payload (xorshift64 from
pattern_seed(seq, 0x4a524e4c)), 511 CRC-32 (zlib) of bytes 0..4087.

Checks: every block carrying the magic is an intact record (CRC, the
sector it lives at, seq at its place, the payload for the newest 256
records and every 16th other one), no seq twice; with --flushed F every
record up to F is present, i.e. each block holds at least the newest seq
<= F that belongs there (a newer one, written later, may have replaced
it); with --max-seq M no record is newer than M.  Prints
"journal_check: records=N newest=S errors=E" (and up to 10 error lines
before it); exit status 0 if errors=0, 1 otherwise, 2 on bad usage.
"""
import argparse
import struct
import sys
import zlib

MAGIC = 0x314c4e524a574447
SEED = 0x4a524e4c
M64 = (1 << 64) - 1
BLOCK = 4096


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def payload_ok(words, seq):
    x = mix64((seq * 0x9e3779b97f4a7c15 + SEED) & M64) or 1
    for i in range(3, 511):
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        if words[i] != x:
            return False
    return True


def main():
    ap = argparse.ArgumentParser(description="check a journal image")
    ap.add_argument("image")
    ap.add_argument("--start-mib", type=int, default=0)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--flushed", type=int, default=0)
    ap.add_argument("--max-seq", type=int, default=0)
    a = ap.parse_args()

    first = a.start_mib * 256
    nrec = a.mib * 256
    errors = []
    recs = {}                       # offset -> seq
    with open(a.image, "rb") as f:
        f.seek(first * BLOCK)
        data = f.read(nrec * BLOCK)
    if len(data) < nrec * BLOCK:
        errors.append("the image ends at block %d, inside the range" % (first + len(data) // BLOCK))
        nrec = len(data) // BLOCK
    for off in range(nrec):
        rec = data[off * BLOCK:(off + 1) * BLOCK]
        if rec[:8] != MAGIC.to_bytes(8, "little"):
            continue
        seq, sector = struct.unpack_from("<QQ", rec, 8)
        crc = struct.unpack_from("<Q", rec, 4088)[0]
        blk = first + off
        if crc != zlib.crc32(rec[:4088]):
            errors.append("block %d: bad CRC (seq field %d)" % (blk, seq))
        elif sector != blk * 8:
            errors.append("block %d: record says sector %d" % (blk, sector))
        elif seq == 0 or (seq - 1) % nrec != off:
            errors.append("block %d: seq %d does not live here" % (blk, seq))
        else:
            recs[off] = seq
    newest = max(recs.values(), default=0)
    seen = {}
    for off, seq in recs.items():
        if seq in seen:
            errors.append("seq %d at blocks %d and %d" % (seq, first + seen[seq], first + off))
        seen[seq] = off
        if seq > newest - 256 or off % 16 == 0:
            words = struct.unpack_from("<512Q", data, off * BLOCK)
            if not payload_ok(words, seq):
                errors.append("block %d: seq %d has the wrong payload" % (first + off, seq))
        if a.max_seq and seq > a.max_seq:
            errors.append("block %d: seq %d is newer than %d" % (first + off, seq, a.max_seq))
    missing = 0
    if a.flushed:
        last = a.flushed
        for off in range(nrec):
            if last < off + 1:
                continue
            exp = last - (last - 1 - off) % nrec
            got = recs.get(off, 0)
            if got < exp:
                missing += 1
                if missing <= 5:
                    errors.append("block %d: flushed seq %d is missing (found %s)" %
                                  (first + off, exp, got or "no record"))
        if missing > 5:
            errors.append("... %d flushed records missing in all" % missing)
    for e in errors[:10]:
        print("journal_check: ERROR " + e)
    print("journal_check: records=%d newest=%d errors=%d" % (len(recs), newest, len(errors)))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
