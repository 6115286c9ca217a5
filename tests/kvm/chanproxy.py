#!/usr/bin/env python3
"""chanproxy.py - a TCP proxy for the channel tests (t-migrate-channels.sh).

    chanproxy.py LISTEN_PORT TARGET_PORT MODE [ARGS]

Forwards every connection to 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT,
numbering them from 1 in the order they came.  MODE:
  pass                     just forward
  cut N BYTES              connection N is cut (both sides reset) once BYTES
                           went from the client to the target
  record N BYTES FILE      save the first BYTES connection N sent to FILE; N may
                           be a list (1,2), FILE then a pattern with %d for N
  stray N FILE             before connection N goes on, a stranger connects to
                           the target first and sends FILE (e.g. a channel of
                           another migration, recorded), and waits up to 15 s
                           for the target to drop it
Prints "listening" once ready, and one line per event.
"""
import socket
import struct
import sys
import threading

lport, tport, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
args = sys.argv[4:]
count = 0
lock = threading.Lock()


def log(*a):
    print(*a, flush=True)


def reset(s):
    # Linger 0: the close resets the connection.  SHUT_RD first wakes the thread blocked
    # reading it (a close alone would not, and the socket would live on until it returned).
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def pipe(a, b, n, cut_at=None, rec=None):
    sent = 0
    try:
        while True:
            d = a.recv(65536)
            if not d:
                b.shutdown(socket.SHUT_WR)
                return
            if rec is not None and len(rec[0]) < rec[1]:
                rec[0].extend(d[:rec[1] - len(rec[0])])
                if len(rec[0]) >= rec[1]:
                    with open(rec[2], "wb") as f:
                        f.write(rec[0])
                    log("recorded connection %d: %d bytes" % (n, len(rec[0])))
            if cut_at is not None and sent + len(d) >= cut_at:
                b.sendall(d[:cut_at - sent])
                log("cut connection %d after %d bytes" % (n, cut_at))
                reset(a)
                reset(b)
                return
            b.sendall(d)
            sent += len(d)
    except OSError:
        reset(a)
        reset(b)


def stranger(path):
    data = open(path, "rb").read()
    s = socket.create_connection(("127.0.0.1", tport))
    s.settimeout(15)
    try:
        s.sendall(data)
        while s.recv(65536):
            pass
        log("the stranger was dropped")
    except OSError as e:
        log("the stranger: %s" % e)
    s.close()


def serve(c):
    global count
    with lock:
        count += 1
        n = count
    cut_at = rec = None
    if mode == "cut" and n == int(args[0]):
        cut_at = int(args[1])
    if mode == "record" and n in [int(x) for x in args[0].split(",")]:
        rec = (bytearray(), int(args[1]), args[2] % n if "%d" in args[2] else args[2])
    if mode == "stray" and n == int(args[0]):
        stranger(args[1])
    t = socket.create_connection(("127.0.0.1", tport))
    log("connection %d" % n)
    threading.Thread(target=pipe, args=(t, c, n), daemon=True).start()
    pipe(c, t, n, cut_at, rec)


ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", lport))
ls.listen(16)
log("listening")
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
