#!/usr/bin/env python3
# stream-peer.py OUT STOPFILE KIB_PER_S MAX_S: accepts one connection on :5003, streams random
# data paced at KIB_PER_S until STOPFILE exists (or MAX_S), reads the guest's echo, then
# shuts its side down once everything came back and waits for the guest's close.
# The peer of guest/linux/init's workload=migrate (t-godwit-migrate.sh, soak-vmm.sh).
import hashlib, os, socket, sys, threading, time
out, stopfile, kibs, max_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
f = open(out, 'w', buffering=1)
def say(s): print('peer: ' + s, file=f, flush=True)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('0.0.0.0', 5003))
l.listen(1)
l.settimeout(400)
say('listening')
c, addr = l.accept()
l.close()
t0 = time.monotonic()
say('connected from %s:%d' % addr)
hs, he = hashlib.sha256(), hashlib.sha256()
st = {'sent': 0, 'echoed': 0, 'last': None, 'gap': 0.0, 'gap_at': 0.0, 'eof': 0, 'err': ''}
def rx():
    try:
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            now = time.monotonic()
            he.update(d)
            st['echoed'] += len(d)
            # The longest pause between echoes, from the first one on.
            if st['last'] is not None and now - st['last'] > st['gap']:
                st['gap'], st['gap_at'] = now - st['last'], st['last'] - t0
            st['last'] = now
        st['eof'] = 1
    except Exception as e:
        st['err'] = st['err'] or 'recv: %r' % e
th = threading.Thread(target=rx, daemon=True)
th.start()
chunk = 16384
tick = chunk / (kibs * 1024.0)
nxt, rep = time.monotonic(), 0.0
try:
    while not os.path.exists(stopfile) and time.monotonic() - t0 < max_s and not st['err']:
        d = os.urandom(chunk)
        hs.update(d)
        c.sendall(d)
        st['sent'] += len(d)
        nxt += tick
        now = time.monotonic()
        if now - t0 - rep >= 5:
            rep = now - t0
            say('t=%.1f sent=%d echoed=%d' % (rep, st['sent'], st['echoed']))
        if nxt > now:
            time.sleep(nxt - now)
    say('stopping t=%.1f sent=%d echoed=%d' % (time.monotonic() - t0, st['sent'], st['echoed']))
    # Everything must come back before our side closes.
    end = time.monotonic() + 60
    while st['echoed'] < st['sent'] and time.monotonic() < end and not st['err'] and not st['eof']:
        time.sleep(0.05)
    c.shutdown(socket.SHUT_WR)
    th.join(60)
except Exception as e:
    st['err'] = st['err'] or 'send: %r' % e
c.close()
say('done secs=%.1f sent=%d sent_sha=%s echoed=%d echo_sha=%s eof=%d max_gap_ms=%d gap_at=%.1f error=%s' % (
    time.monotonic() - t0, st['sent'], hs.hexdigest(), st['echoed'], he.hexdigest(),
    st['eof'], st['gap'] * 1000, st['gap_at'], (st['err'] or 'none').replace(' ', '_')))
