#!/usr/bin/env python3
"""tcpgate.py PORT TARGET_PORT FLAGFILE - a loopback TCP relay that stops
relaying (both ways, and new connections wait) while FLAGFILE exists: a host
cut from a service without closing anything.  Prints "listening" once ready.
t-agent.sh puts it between an agent and etcd."""
import os
import socket
import sys
import threading
import time

port, target, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def blocked():
    return os.path.exists(flag)


def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            while blocked():
                time.sleep(0.05)
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(c):
    while blocked():
        time.sleep(0.05)
    try:
        u = socket.create_connection(("127.0.0.1", target))
    except OSError:
        c.close()
        return
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    threading.Thread(target=pump, args=(u, c), daemon=True).start()


ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(64)
print("listening", flush=True)
while True:
    conn, _ = ls.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
