#!/usr/bin/env python3
"""tests/kvm/linkrate.py - one bulk TCP transfer, to measure a link's rate
(tests/kvm/lib-link.sh's link_check).

  linkrate.py recv ADDR PORT SECS   listen on ADDR:PORT, take one connection, read
                                    it for SECS s; print the rate the bytes came in at
                                    after the first 0.5 s (a token bucket's burst and the
                                    socket buffers fill then), "rate_bps=N bytes=N secs=S"
  linkrate.py send ADDR PORT SECS   connect to ADDR:PORT, write as fast as the link
                                    takes it for at most SECS s
Both give up after SECS + 10 s whatever happens (socket time-outs)."""
import socket
import sys
import time

WARMUP = 0.5


def recv(addr, port, secs):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    ls.settimeout(secs + 10)
    print('listening', flush=True)
    c, _ = ls.accept()
    c.settimeout(5)
    buf = bytearray(1 << 20)
    t0 = time.monotonic()
    t_w = t0 + WARMUP
    end = t0 + secs
    n = 0
    t_first = None
    while True:
        try:
            k = c.recv_into(buf)
        except socket.timeout:
            break
        now = time.monotonic()
        if not k:
            break
        if now >= t_w:
            if t_first is None:
                t_first = now
            else:
                n += k
        if now >= end:
            break
    c.close()
    dt = time.monotonic() - t_first if t_first else 0
    if dt <= 0.2 or n == 0:
        print('rate_bps=0 bytes=%d secs=%.3f' % (n, dt))
        return 1
    print('rate_bps=%d bytes=%d secs=%.3f' % (n * 8 / dt, n, dt))
    return 0


def send(addr, port, secs):
    s = socket.create_connection((addr, port), timeout=secs + 10)
    buf = b'\xa5' * (1 << 20)
    end = time.monotonic() + secs
    try:
        while time.monotonic() < end:
            s.sendall(buf)
    except OSError:
        pass                    # the receiver has what it needs and closed
    s.close()
    return 0


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ('recv', 'send'):
        sys.exit(__doc__)
    f = recv if sys.argv[1] == 'recv' else send
    return f(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))


if __name__ == '__main__':
    sys.exit(main())
