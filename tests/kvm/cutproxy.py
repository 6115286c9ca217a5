#!/usr/bin/env python3
"""cutproxy.py LISTEN TO CUT_BYTES DOWN_S - a byte relay between a migrating
godwit and its destination whose link breaks once and comes back
(tests/kvm/t-migrate-reconnect.sh).

LISTEN and TO are godwit addresses (tcp:HOST:PORT or unix:PATH).  The first
connection on LISTEN is relayed to a new connection to TO, both ways, until
CUT_BYTES bytes came from the source: then both sides are closed ("cut N").
For DOWN_S seconds after that every new connection is accepted and closed at
once ("refused"), as a broken path would end it.  After that each new
connection is relayed again to a new connection to TO ("relay N").  It
relays bytes only (a TLS session passes through untouched) and exits after
120 s whatever happens.  Events go to stdout, one line each, flushed.
"""
import select
import sys
import time

from gwmc import listen as gw_listen, connect as gw_connect

LIFETIME = 120.0


def ev(*a):
    print(*a, flush=True)


def relay(src, dst, limit, deadline):
    """Relay until either side ends; with limit, cut after limit source bytes."""
    n = 0
    while time.monotonic() < deadline:
        r, _, _ = select.select([src, dst], [], [], 0.5)
        for s in r:
            try:
                data = s.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                return n, False
            if s is src and limit is not None and n + len(data) >= limit:
                try:
                    dst.sendall(data[:limit - n])
                except OSError:
                    pass
                return limit, True
            try:
                (dst if s is src else src).sendall(data)
            except OSError:
                return n, False
            if s is src:
                n += len(data)
    return n, False


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    listen, to, cut, down = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    deadline = time.monotonic() + LIFETIME
    ls = gw_listen(listen)
    ls.listen(8)
    ev("listening")
    cut_at = None
    conns = 0
    while time.monotonic() < deadline:
        r, _, _ = select.select([ls], [], [], 0.5)
        if not r:
            continue
        src, _ = ls.accept()
        conns += 1
        if cut_at is not None and time.monotonic() - cut_at < down:
            ev("refused")
            src.close()
            continue
        try:
            dst = gw_connect(to)
        except OSError as e:
            ev("upstream-failed", e)
            src.close()
            continue
        dst.settimeout(None)
        n, was_cut = relay(src, dst, cut if cut_at is None else None, deadline)
        src.close()
        dst.close()
        if was_cut:
            cut_at = time.monotonic()
            ev("cut", n)
        else:
            ev("relay", n)
    ev("timeout")


if __name__ == "__main__":
    main()
