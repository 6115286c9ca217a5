#!/usr/bin/env python3
"""udp_pinger.py - a bounded UDP echo client that measures continuity.

Sends sequence-numbered datagrams to IP:PORT (the test guest's UDP echo on
port 7) every INTERVAL ms until STOP_FILE exists (or MAX_S seconds have
passed), waits LINGER_S for the last echoes, then judges the run:

  - every echo must match what was sent for its sequence number;
  - STOP_FILE holds "START END", the wall-clock seconds (time.time()) of
    the migration; the switch gap is the longest gap between answers that
    overlaps the sending of the requests lost at the migration (without
    losses: that overlaps the migration);
    it must be at most MAX_GAP_MS, as must the silence after the last
    answer ("the peer never heard the guest again");
  - requests may be lost only if they were sent within the switch window:
    the migration, widened to the switch gap, less SLACK_MS at its start
    for requests in flight then;
    every request sent after it must be answered, and there must be >= 50
    answers before the migration and >= 100 requests after the switch.
  The longest gap overall is reported (a loaded host adds gaps anywhere:
  the peer's own longest pause between two sends is reported beside it).

Prints "udp-pinger: ..." lines and one "RESULT ok|fail ..." line; exits 0
if the run passed, 1 if not, 2 on bad usage.  Stdlib only.
"""
import argparse
import errno
import os
import select
import socket
import struct
import sys
import time

MAGIC = 0x6777706e  # "gwpn"
HDR = struct.Struct('!IQd')  # magic, seq, wall-clock send time
SIZE = 64


def payload(seq, t):
    head = HDR.pack(MAGIC, seq, t)
    fill = bytes(((seq * 131 + i * 7) & 0xff) for i in range(SIZE - HDR.size))
    return head + fill


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('ip')
    ap.add_argument('--port', type=int, default=7)
    ap.add_argument('--interval-ms', type=float, default=5.0)
    ap.add_argument('--max-s', type=float, default=40.0)
    ap.add_argument('--stop-file', default=None)
    ap.add_argument('--linger-s', type=float, default=0.5)
    ap.add_argument('--max-gap-ms', type=float, default=2000.0)
    ap.add_argument('--slack-ms', type=float, default=100.0)
    ap.add_argument('--ready-file', default=None,
                    help='created once 50 echoes came back')
    a = ap.parse_args()
    if a.interval_ms < 1 or a.max_s <= 0 or a.max_s > 300:
        print('udp-pinger: bad arguments', file=sys.stderr)
        return 2

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((a.ip, a.port))
    s.setblocking(False)

    interval = a.interval_ms / 1000.0
    sent = []        # seq -> (wall time, monotonic time)
    sent_p = []      # seq -> payload
    answered = {}    # seq -> wall time of the first echo
    mismatch = dups = send_err = skipped = 0
    last_err = ''
    ready = False
    t0 = time.monotonic()
    w0 = time.time()
    deadline = t0 + a.max_s
    nxt = t0
    stop_at = None   # monotonic time at which sending stopped
    last_stop_check = 0.0

    def wall(m):
        return w0 + (m - t0)

    def drain():
        nonlocal mismatch, dups, ready
        while True:
            try:
                d = s.recv(4096)
            except BlockingIOError:
                return
            except OSError as e:   # an ICMP error reported on the socket
                nonlocal_err(e)
                continue
            now = time.monotonic()
            if len(d) < HDR.size:
                mismatch += 1
                continue
            magic, k, _ = HDR.unpack_from(d)
            if magic != MAGIC or k >= len(sent) or d != sent_p[k]:
                mismatch += 1
                continue
            if k in answered:
                dups += 1
            else:
                answered[k] = wall(now)
                if not ready and len(answered) >= 50 and a.ready_file:
                    open(a.ready_file, 'w').close()
                    ready = True

    def nonlocal_err(e):
        nonlocal send_err, last_err
        send_err += 1
        last_err = errno.errorcode.get(e.errno, str(e.errno))

    while True:
        now = time.monotonic()
        if stop_at is None:
            if now >= deadline:
                stop_at = now
            elif a.stop_file and now - last_stop_check >= 0.05:
                last_stop_check = now
                if os.path.exists(a.stop_file):
                    stop_at = now
        if stop_at is not None and now >= stop_at + a.linger_s:
            break
        if stop_at is None and now >= nxt:
            if now - nxt > 0.05:   # far behind (descheduled): do not burst, resync
                skipped += int((now - nxt) / interval)
                nxt = now
            k = len(sent)
            p = payload(k, wall(now))
            sent.append(wall(now))
            sent_p.append(p)
            try:
                s.send(p)
            except BlockingIOError:
                send_err += 1
                last_err = 'EAGAIN'
            except OSError as e:
                nonlocal_err(e)
            nxt += interval
        wait = (nxt - time.monotonic()) if stop_at is None else 0.01
        r, _, _ = select.select([s], [], [], max(0.0, min(wait, 0.01)))
        if r:
            drain()
    t_end = wall(time.monotonic())
    drain()

    mig = None
    if a.stop_file and os.path.exists(a.stop_file):
        try:
            f = open(a.stop_file).read().split()
            if len(f) >= 2:
                mig = (float(f[0]), float(f[1]))
        except (OSError, ValueError):
            mig = None

    n = len(sent)
    got = len(answered)
    why = []
    times = sorted(answered.values())
    if got < 2:
        print('udp-pinger: sent=%d answered=%d' % (n, got))
        print('RESULT fail: fewer than 2 answers (sent %d, send errors %d %s)' % (n, send_err, last_err))
        return 1
    # Gaps between consecutive answers: the longest overall, the longest that
    # overlaps the migration (the switch), the longest before it (baseline).
    gaps = list(zip(times, times[1:]))
    tail = t_end - a.linger_s - times[-1]
    if tail > 0:
        gaps.append((times[-1], t_end - a.linger_s))
    g1, g2 = max(gaps, key=lambda g: g[1] - g[0])
    gap_ms = (g2 - g1) * 1e3
    # The peer's own longest pause between two sends (its scheduling, not the guest's).
    send_gap_ms = max((y - x for x, y in zip(sent, sent[1:])), default=0.0) * 1e3
    if tail * 1e3 > a.max_gap_ms:
        why.append('no answer for the last %.0f ms of the run (the peer never heard the guest again)'
                   % (tail * 1e3))
    lost = [k for k in range(n) if k not in answered]
    if mismatch:
        why.append('%d echo(es) did not match what was sent' % mismatch)
    sw1 = sw2 = None
    if mig:
        # The switch gap: the longest gap between answers that overlaps the
        # sending of the requests lost at the migration (without losses: that
        # overlaps the migration).  (A request the source's device had already
        # put in the guest's ring is answered late, by the destination.)
        slack = a.slack_ms / 1e3
        lost_in = [k for k in lost if mig[0] - slack <= sent[k] <= mig[1] + slack]
        span = (sent[lost_in[0]], sent[lost_in[-1]]) if lost_in else mig
        over = [g for g in gaps if g[1] >= span[0] and g[0] <= span[1]]
        sw1, sw2 = max(over, key=lambda g: g[1] - g[0]) if over else (span[0], span[0])
        sw_ms = (sw2 - sw1) * 1e3
        if sw_ms > a.max_gap_ms:
            why.append('the switch took %.0f ms (answer gap at the migration) > %.0f ms'
                       % (sw_ms, a.max_gap_ms))
        # The switch window: the migration, widened to the switch gap (less the
        # slack for requests in flight when the last answer before it came).
        lo, hi = min(mig[0], sw1) - slack, max(mig[1], sw2)
        outside = [k for k in lost if not (lo <= sent[k] <= hi)]
        if outside:
            k = outside[0]
            why.append('%d request(s) lost outside the switch window, first seq %d sent %.3f s '
                       'from the start (window %.3f-%.3f s)'
                       % (len(outside), k, sent[k] - w0, lo - w0, hi - w0))
        before = sum(1 for t in times if t < mig[0])
        after_end = [k for k in range(n) if sent[k] > hi]
        after_lost = [k for k in after_end if k not in answered]
        pre = [y - x for x, y in gaps if y < mig[0]]
        if before < 50:
            why.append('only %d answers before the migration started' % before)
        if len(after_end) < 100:
            why.append('only %d requests sent after the switch' % len(after_end))
        if after_lost:
            why.append('%d of %d requests sent after the switch went unanswered'
                       % (len(after_lost), len(after_end)))
        print('udp-pinger: migration %.3f-%.3f s from the start; switch gap %.1f ms (%.3f-%.3f s); '
              'answers before it %d; requests after it %d, unanswered %d; longest gap before it %.1f ms'
              % (mig[0] - w0, mig[1] - w0, sw_ms, sw1 - w0, sw2 - w0, before, len(after_end),
                 len(after_lost), max(pre, default=0.0) * 1e3))
    else:
        sw_ms = -1.0
        why.append('no migration window in the stop file')
    print('udp-pinger: sent=%d answered=%d lost=%d dups=%d mismatches=%d send_errors=%d%s '
          'skipped_slots=%d longest_send_pause=%.1f ms secs=%.1f rate=%.0f/s'
          % (n, got, len(lost), dups, mismatch, send_err, (' (%s)' % last_err) if last_err else '',
             skipped, send_gap_ms, t_end - w0, n / max(t_end - w0, 1e-3)))
    print('udp-pinger: longest gap %.1f ms, from %.3f s to %.3f s; lost seqs %s'
          % (gap_ms, g1 - w0, g2 - w0,
             ('%d-%d (sent %.3f-%.3f s)' % (lost[0], lost[-1], sent[lost[0]] - w0, sent[lost[-1]] - w0))
             if lost else 'none'))
    print('RESULT %s gap_ms=%.1f switch_gap_ms=%.1f lost=%d sent=%d%s'
          % ('fail' if why else 'ok', gap_ms, sw_ms, len(lost), n,
             (': ' + '; '.join(why)) if why else ''))
    return 1 if why else 0


if __name__ == '__main__':
    sys.exit(main())
