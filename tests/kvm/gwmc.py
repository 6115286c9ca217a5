#!/usr/bin/env python3
"""gwmc.py - godwit's migration control messages and addresses, for the tests.

The one place the tests frame a control message (src/migration/handoff.c,
docs/stream-format.md): "GWMC", u16 type, u16 length, text, u32 crc32c of all
that precedes it.  Imported by migproxy.py; as a program it is a misbehaving peer:

    gwmc.py trickle ADDR FILE     connect to a destination at ADDR and send FILE
                                  one byte every 0.5 s, for 40 s at most
    gwmc.py slow-destination ADDR listen at ADDR, take one source's preamble and
                                  configuration, answer ACCEPT, then read the
                                  stream 4 KiB every 0.5 s for 60 s at most;
                                  prints "listening", then "done read=BYTES"
    gwmc.py handoff-seeds DIR     write the hand-off fuzz target's seeds to DIR
                                  (tests/fuzz/fuzz_handoff.c: a mode byte, then
                                  the peer's messages)

ADDR is a godwit address: unix:PATH or tcp:HOST:PORT.
"""
import os
import socket
import struct
import sys
import time

MAGIC = b"GWMC"
TYPES = {"accept": 1, "refuse": 2, "ready": 3, "error": 4, "commit": 5, "done": 6, "abort": 7,
         "resumed": 8, "applied": 9}


def crc32c(data):
    c = 0xffffffff
    for x in data:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ (0x82f63b78 & -(c & 1))
    return c ^ 0xffffffff


def msg(kind, text=b""):
    """One control message of kind (a name in TYPES or a number)."""
    t = TYPES[kind] if isinstance(kind, str) else kind
    head = MAGIC + struct.pack("<HH", t, len(text)) + text
    return head + struct.pack("<I", crc32c(head))


def split(buf):
    """The whole messages at the head of buf, as [(type, bytes)], and the rest of buf.
    Stops at the first bytes that do not start with the magic (the stream itself)."""
    out = []
    while len(buf) >= 8 and buf[:4] == MAGIC:
        n = 8 + int.from_bytes(buf[6:8], "little") + 4
        if len(buf) < n:
            break
        out.append((int.from_bytes(buf[4:6], "little"), buf[:n]))
        buf = buf[n:]
    return out, buf


def parse_addr(s):
    """(family, sockaddr) of a godwit address."""
    if s.startswith("unix:"):
        return socket.AF_UNIX, s[5:]
    if s.startswith("tcp:"):
        host, _, port = s[4:].rpartition(":")
        return socket.AF_INET, (host.strip("[]") or "127.0.0.1", int(port))
    raise SystemExit("bad address %r (want unix:PATH or tcp:HOST:PORT)" % s)


def listen(addr):
    """A listening socket at addr (a stale UNIX socket file is replaced)."""
    fam, sa = parse_addr(addr)
    s = socket.socket(fam, socket.SOCK_STREAM)
    if fam == socket.AF_INET:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    elif os.path.exists(sa):
        os.unlink(sa)
    s.bind(sa)
    s.listen(1)
    return s


def connect(addr, timeout=10):
    fam, sa = parse_addr(addr)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sa)
    return s


def trickle(addr, path):
    data = open(path, "rb").read()
    s = connect(addr)
    end = time.monotonic() + 40
    try:
        for i in range(len(data)):
            if time.monotonic() > end:
                break
            s.send(data[i:i + 1])
            time.sleep(0.5)
    except OSError:
        pass


def slow_destination(addr):
    ls = listen(addr)
    print("listening", flush=True)
    c, _ = ls.accept()
    c.recv(65536)                       # the preamble and CONFIG
    c.sendall(msg("accept"))
    end, n = time.monotonic() + 60, 0
    while time.monotonic() < end:
        d = c.recv(4096)
        if not d:
            break
        n += len(d)
        time.sleep(0.5)
    print("done read=%d" % n, flush=True)


# Mode bytes of tests/fuzz/fuzz_handoff.c: bit 0 picks the side (0 source, 1 destination),
# the others make one of the VM operations fail.
HANDOFF_SEEDS = {
    "src-ok": b"\x00" + msg("ready") + msg("done"),
    "src-applied-ok": b"\x00" + msg("applied", b"pass=3") + msg("ready") + msg("done"),
    "src-error": b"\x00" + msg("ready") + msg("error", b"cannot lock"),
    "src-refused": b"\x00" + msg("error", b"no"),
    "src-release-fails": b"\x02" + msg("ready"),
    "dst-commit": b"\x01" + msg("commit"),
    "dst-abort": b"\x01" + msg("abort", b"cancelled"),
    "dst-commit-fails": b"\x09" + msg("commit"),
}


def main(argv):
    if len(argv) == 4 and argv[1] == "trickle":
        trickle(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "slow-destination":
        slow_destination(argv[2])
    elif len(argv) == 3 and argv[1] == "handoff-seeds":
        for name, data in HANDOFF_SEEDS.items():
            with open(os.path.join(argv[2], "seed-" + name), "wb") as f:
                f.write(data)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
