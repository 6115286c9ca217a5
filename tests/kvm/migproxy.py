#!/usr/bin/env python3
"""migproxy.py - a one-connection proxy between a migrating godwit and its
destination that can break the migration at a chosen point (tests/kvm/
t-migrate-faults.sh).

    migproxy.py LISTEN TO MODE [N]

LISTEN and TO are godwit addresses (tcp:HOST:PORT or unix:PATH).  The proxy
accepts one connection on LISTEN, connects to TO and forwards both ways.
MODE:
  pass          forward everything
  cut-bytes N   after N bytes from the source, close both sides
  drop-ready    the destination's READY is dropped and both sides closed
  hold-ready    the destination's READY is held back: nothing more is
                forwarded, the source's connection stays open (silent) until
                the source closes it; the destination's side is left alone
  drop-commit   READY is forwarded; the source's next bytes (its COMMIT) are
                dropped and both sides closed

Events go to stdout, one line each, flushed: "listening", "accepted",
"connected", "ready" (READY seen), "held", "dropped-ready", "cut BYTES",
"dropped-commit HEX", "closed".  The control messages from the destination
are parsed ("GWMC", u16 type, u16 length, text, u32 crc32c), so READY is
recognised by its type (3) wherever the TCP segments split it.  The proxy
exits after 90 s whatever happens.
"""
import os
import select
import socket
import sys
import time

MAGIC = b"GWMC"
READY, COMMIT = 3, 5
LIFETIME = 90.0


def ev(*a):
    print(*a, flush=True)


def parse_addr(s):
    if s.startswith("unix:"):
        return socket.AF_UNIX, s[5:]
    if s.startswith("tcp:"):
        host, _, port = s[4:].rpartition(":")
        return socket.AF_INET, (host.strip("[]") or "127.0.0.1", int(port))
    raise SystemExit("bad address %r" % s)


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    listen, to, mode = sys.argv[1:4]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if mode not in ("pass", "cut-bytes", "drop-ready", "hold-ready", "drop-commit"):
        raise SystemExit("unknown mode " + mode)
    deadline = time.monotonic() + LIFETIME

    fam, la = parse_addr(listen)
    ls = socket.socket(fam, socket.SOCK_STREAM)
    if fam == socket.AF_INET:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    elif os.path.exists(la):
        os.unlink(la)
    ls.bind(la)
    ls.listen(1)
    ls.settimeout(LIFETIME)
    ev("listening")
    src, _ = ls.accept()
    ls.close()
    if fam == socket.AF_UNIX:
        os.unlink(la)
    ev("accepted")
    fam, ta = parse_addr(to)
    dst = socket.socket(fam, socket.SOCK_STREAM)
    dst.settimeout(10)
    dst.connect(ta)
    ev("connected")
    for s in (src, dst):
        s.setblocking(False)

    sent_from_src = 0
    ctl = b""           # unparsed bytes from the destination
    ready_seen = False
    holding = False
    open_src, open_dst = True, True

    def sendall(s, data):
        s.setblocking(True)
        s.settimeout(10)
        try:
            s.sendall(data)
        finally:
            s.setblocking(False)

    def close_both():
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        ev("closed")

    while time.monotonic() < deadline:
        rl = ([src] if open_src else []) + ([dst] if open_dst and not holding else [])
        if not rl:
            break
        r, _, _ = select.select(rl, [], [], 0.5)
        if src in r:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                ev("source-eof")
                if holding:
                    close_both()
                    return
                open_src = False
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            if holding:
                continue            # swallowed: the destination hears nothing more
            if mode == "drop-commit" and ready_seen:
                ev("dropped-commit", data[:16].hex())
                close_both()
                return
            if mode == "cut-bytes" and sent_from_src + len(data) >= limit:
                data = data[:limit - sent_from_src]
                try:
                    sendall(dst, data)
                except OSError:
                    pass
                ev("cut", sent_from_src + len(data))
                close_both()
                return
            try:
                sendall(dst, data)
            except OSError:
                close_both()
                return
            sent_from_src += len(data)
        if open_dst and not holding and dst in r:
            try:
                data = dst.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                ev("destination-eof")
                open_dst = False
                try:
                    src.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            ctl += data
            out = b""
            while len(ctl) >= 8:
                if ctl[:4] != MAGIC:        # not a control message: pass it on as is
                    out += ctl
                    ctl = b""
                    break
                typ = int.from_bytes(ctl[4:6], "little")
                n = 8 + int.from_bytes(ctl[6:8], "little") + 4
                if len(ctl) < n:
                    break
                msg, ctl = ctl[:n], ctl[n:]
                if typ == READY:
                    ev("ready")
                    ready_seen = True
                    if mode == "drop-ready":
                        ev("dropped-ready")
                        close_both()
                        return
                    if mode == "hold-ready":
                        ev("held")
                        holding = True
                        break
                out += msg
            if out:
                try:
                    sendall(src, out)
                except OSError:
                    close_both()
                    return
    ev("timeout" if time.monotonic() >= deadline else "done")
    close_both()


if __name__ == "__main__":
    main()
