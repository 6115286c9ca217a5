#!/usr/bin/env python3
"""cutlink.py LISTEN TO FLAGFILE - a relay between a migrating godwit and its
destination for any number of connections (godwit addresses: tcp:HOST:PORT or
unix:PATH) that cuts the link while FLAGFILE exists: every connection open
when it appears is closed on both sides ("cut N"), and a connection that comes
meanwhile is closed at once without reaching TO.  Prints "listening" once
ready.  t-migrate-postcopy.sh cuts a post-copy with it."""
import os
import socket
import sys
import threading
import time

listen, to, flag = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()
live = []


def sock_for(addr):
    kind, rest = addr.split(":", 1)
    if kind == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), rest
    host, port = rest.rsplit(":", 1)
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM), (host, int(port))


def close_pair(pair):
    for s in pair:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def pump(a, b, pair):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def watch():
    cut = False
    while True:
        now = os.path.exists(flag)
        if now and not cut:
            with lock:
                n = len(live)
                for pair in live:
                    close_pair(pair)
                live.clear()
            print("cut %d" % n, flush=True)
        cut = now
        time.sleep(0.02)


def main():
    ls, la = sock_for(listen)
    if isinstance(la, str) and os.path.exists(la):
        os.unlink(la)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(la)
    ls.listen(16)
    threading.Thread(target=watch, daemon=True).start()
    print("listening", flush=True)
    while True:
        c, _ = ls.accept()
        if os.path.exists(flag):
            c.close()
            continue
        d, da = sock_for(to)
        try:
            d.connect(da)
        except OSError:
            c.close()
            continue
        pair = (c, d)
        with lock:
            live.append(pair)
        threading.Thread(target=pump, args=(c, d, pair), daemon=True).start()
        threading.Thread(target=pump, args=(d, c, pair), daemon=True).start()


main()
