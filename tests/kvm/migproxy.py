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
  hold TYPE     the first control message of TYPE (accept, ready, error,
                done from the destination; commit, abort from the source,
                after READY) is held with all that follows it in that
                direction ("held TYPE"); the other direction flows on.  On
                SIGUSR1 it is released ("released") and everything flows.
  hold-bytes N  the same after N bytes from the source (mid-stream)
  drop TYPE     that message is dropped and both sides closed ("dropped TYPE")
A side that closes is passed on: the other's write side is shut down (both sides
are closed if what was held was bound for the side that closed).

With MIGPROXY_TLS=DIR (tests/kvm/mkcerts.py's output) the proxy terminates
mutual TLS on both sides, as godwit does it: to the source it is the TLS
server with DIR/dst's credentials (and says "GWTLS-OK" once it accepted the
source's certificate), to the destination the client with DIR/src's (and
takes the destination's "GWTLS-OK"); it then sees and breaks the plaintext.

Events go to stdout, one line each, flushed: "listening", "accepted",
"connected", "ready" (READY seen), "held", "dropped-ready", "cut BYTES",
"dropped-commit HEX", "closed".  The control messages from the destination
are parsed ("GWMC", u16 type, u16 length, text, u32 crc32c), so READY is
recognised by its type (3) wherever the TCP segments split it.  The proxy
exits after 90 s whatever happens.
"""
import os
import select
import signal
import socket
import ssl
import sys
import time

from gwmc import MAGIC, TYPES, listen as gw_listen, connect as gw_connect, split

READY, COMMIT = TYPES["ready"], TYPES["commit"]
LIFETIME = 90.0


def ev(*a):
    print(*a, flush=True)


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    listen, to, mode = sys.argv[1:4]
    if mode in ("hold", "hold-bytes", "drop"):
        return general(listen, to, mode, sys.argv[4])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if mode not in ("pass", "cut-bytes", "drop-ready", "hold-ready", "drop-commit"):
        raise SystemExit("unknown mode " + mode)
    src, dst = connect_pair(listen, to)
    deadline = time.monotonic() + LIFETIME

    sent_from_src = 0
    ctl = b""           # unparsed bytes from the destination
    ready_seen = False
    holding = False
    open_src, open_dst = True, True

    def close_both():
        close_pair(src, dst)

    while time.monotonic() < deadline:
        rl = ([src] if open_src else []) + ([dst] if open_dst and not holding else [])
        if not rl:
            break
        r, _, _ = select.select(rl, [], [], 0.5)
        if src in r:
            data = recv(src)
            if data is None:
                continue
            if not data:
                ev("source-eof")
                if holding:
                    close_both()
                    return
                open_src = False
                half_close(dst)
                continue
            if holding:
                continue            # swallowed: the destination hears nothing more
            if mode == "drop-commit" and ready_seen:
                ev("dropped-commit", data[:16].hex())
                close_both()
                return
            if mode == "cut-bytes" and sent_from_src + len(data) >= limit:
                data = data[:limit - sent_from_src]
                sendall(dst, data)
                ev("cut", sent_from_src + len(data))
                close_both()
                return
            if not sendall(dst, data):
                close_both()
                return
            sent_from_src += len(data)
        if open_dst and not holding and dst in r:
            data = recv(dst)
            if data is None:
                continue
            if not data:
                ev("destination-eof")
                open_dst = False
                half_close(src)
                continue
            msgs, ctl = split(ctl + data)
            tail = b""
            if len(ctl) >= 8 and ctl[:4] != MAGIC:    # not a control message: pass it on as is
                tail, ctl = ctl, b""
            out = b""
            for typ, msg in msgs:
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
                        tail = b""              # nothing after READY goes on either
                        break
                out += msg
            out += tail
            if out and not sendall(src, out):
                close_both()
                return
    ev("timeout" if time.monotonic() >= deadline else "done")
    close_both()



CONFIRM = b"GWTLS-OK"      # src/migration/tls.c: the server accepted the client


def tls_wrap(src, dst, d):
    """Terminate mutual TLS on both connections with mkcerts.py's credentials in d."""
    def ctx(side, who):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
        c.minimum_version = ssl.TLSVersion.TLSv1_3
        c.load_cert_chain(os.path.join(d, who, "cert.pem"), os.path.join(d, who, "key.pem"))
        c.load_verify_locations(os.path.join(d, who, "ca.pem"))
        c.verify_mode = ssl.CERT_REQUIRED
        return c
    for s in (src, dst):
        s.setblocking(True)
        s.settimeout(10)
    src = ctx("server", "dst").wrap_socket(src, server_side=True)
    src.sendall(CONFIRM)
    dst = ctx("client", "src").wrap_socket(dst, server_hostname="dst.godwit.test")
    got = b""
    while len(got) < len(CONFIRM):
        b = dst.recv(len(CONFIRM) - len(got))
        if not b:
            raise SystemExit("the destination closed the connection during its TLS confirmation")
        got += b
    if got != CONFIRM:
        raise SystemExit("the destination did not confirm the TLS session")
    ev("tls")
    return src, dst


def recv(s):
    """What s has: bytes, b"" at its end, None if nothing whole came yet (TLS)."""
    try:
        data = s.recv(1 << 16)
    except ssl.SSLWantReadError:
        return None
    except OSError:
        return b""
    if isinstance(s, ssl.SSLSocket):
        while data and s.pending():         # decrypted already: poll() would not say so
            data += s.recv(s.pending())
    return data


def half_close(s):
    """Shut s's write side (on a TLS socket too: the session stays for reading)."""
    try:
        socket.socket.shutdown(s, socket.SHUT_WR)
    except OSError:
        pass


def sendall(s, data):
    """Send all of data on a non-blocking socket (10 s at most); False if it failed."""
    s.setblocking(True)
    s.settimeout(10)
    try:
        s.sendall(data)
        return True
    except OSError:
        return False
    finally:
        s.setblocking(False)


def close_pair(a, b):
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
    ev("closed")


def connect_pair(listen, to):
    """Accept the source on LISTEN, connect to the destination at TO."""
    ls = gw_listen(listen)
    ls.settimeout(LIFETIME)
    ev("listening")
    src, _ = ls.accept()
    ls.close()
    if listen.startswith("unix:"):
        os.unlink(listen[5:])
    ev("accepted")
    dst = gw_connect(to)
    ev("connected")
    if os.environ.get("MIGPROXY_TLS"):
        src, dst = tls_wrap(src, dst, os.environ["MIGPROXY_TLS"])
    for s in (src, dst):
        s.setblocking(False)
    return src, dst


def general(listen, to, mode, arg):
    """The hold/hold-bytes/drop modes (see the module's text)."""
    want = None if mode == "hold-bytes" else TYPES.get(arg)
    if mode != "hold-bytes" and want is None:
        raise SystemExit("unknown message type " + arg)
    limit = int(arg) if mode == "hold-bytes" else 0
    released = [False]
    signal.signal(signal.SIGUSR1, lambda *a: released.__setitem__(0, True))
    src, dst = connect_pair(listen, to)
    deadline = time.monotonic() + LIFETIME
    # Per direction: the socket it comes from, where it goes, parse state.
    d = {
        "s2d": {"frm": src, "to": dst, "open": True, "buf": b"", "held": None, "n": 0},
        "d2s": {"frm": dst, "to": src, "open": True, "buf": b"", "held": None, "n": 0},
    }
    state = {"ready": False, "hit": False}

    def close_both():
        close_pair(src, dst)

    def messages(x):
        """Whole control messages at the head of x["buf"]: [(type, bytes)]."""
        out, x["buf"] = split(x["buf"])
        return out

    while time.monotonic() < deadline:
        if released[0] and state["hit"]:
            released[0] = False
            state["hit"] = False
            want = -1               # nothing more to catch
            limit = -1
            ev("released")
            for x in d.values():
                if x["held"] is not None:
                    if not sendall(x["to"], x["held"]):
                        close_both()
                        return
                    x["held"] = None
        if not any(x["open"] for x in d.values()):
            break
        # Held directions are not read, but a sender that goes away is still seen.
        pl = select.poll()
        for x in d.values():
            if x["open"]:
                pl.register(x["frm"], select.POLLIN | select.POLLRDHUP
                            if x["held"] is None else select.POLLRDHUP)
        ready = {fd: e for fd, e in pl.poll(100)}
        for name, x in d.items():
            e = ready.get(x["frm"].fileno(), 0) if x["open"] else 0
            if not e:
                continue
            if x["held"] is not None or not e & select.POLLIN:
                data = b""              # gone (RDHUP, HUP or ERR)
            else:
                data = recv(x["frm"])
                if data is None:
                    continue
            if not data:
                ev("source-eof" if name == "s2d" else "destination-eof")
                x["open"] = False
                x["held"] = None        # its sender is gone: nothing to release
                other = d["d2s" if name == "s2d" else "s2d"]
                if other["held"] is not None:
                    # What was held towards the side that is gone never arrives.
                    close_both()
                    return
                half_close(x["to"])
                continue
            out = b""
            if name == "s2d" and not state["ready"]:
                # The stream: bytes, not messages, until READY went back.
                if mode == "hold-bytes" and limit >= 0 and x["n"] + len(data) >= limit:
                    k = limit - x["n"]
                    out, x["held"] = data[:k], data[k:]
                    state["hit"] = True
                    ev("held bytes", limit)
                else:
                    out = data
                x["n"] += len(out)
            else:
                x["buf"] += data
                for typ, msg in messages(x):
                    if x["held"] is not None:
                        x["held"] += msg
                        continue
                    if typ == READY:
                        state["ready"] = True
                    if typ == want:
                        ev(("dropped " if mode == "drop" else "held ") + arg)
                        if mode == "drop":
                            if out:
                                sendall(x["to"], out)
                            close_both()
                            return
                        x["held"] = msg
                        state["hit"] = True
                        continue
                    ev("passed", typ)
                    out += msg
                if x["buf"][:4] != MAGIC[:len(x["buf"][:4])]:
                    out += x["buf"]     # not a control message: pass it on as is
                    x["buf"] = b""
                if x["held"] is not None:
                    x["held"] += x["buf"]
                    x["buf"] = b""
            if out and not sendall(x["to"], out):
                close_both()
                return
    ev("timeout" if time.monotonic() >= deadline else "done")
    close_both()


if __name__ == "__main__":
    main()
