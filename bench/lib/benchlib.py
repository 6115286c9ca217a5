"""bench/lib/benchlib.py - what the bench scripts (bench/*/*.py) share: the
error they raise, a QMP client, file and process helpers, median summaries,
the targets table and writing the JSON result.

A script imports it with
    sys.path.insert(0, os.path.join(ROOT, 'bench', 'lib'))
    import benchlib
"""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


class BenchError(Exception):
    pass


class QMP:
    """A QMP client on a UNIX socket: cmd() runs a command and returns its
    result (events seen meanwhile are kept for wait_event())."""

    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise BenchError('no QMP socket at %s' % path)
                time.sleep(0.02)
        self.s.settimeout(timeout)
        self.events = []                       # events seen, not yet taken
        self.f = self.s.makefile('rb')
        self.f.readline()                      # greeting
        self.cmd('qmp_capabilities')

    def cmd(self, name, **args):
        msg = {'execute': name}
        if args:
            msg['arguments'] = args
        self.s.sendall(json.dumps(msg).encode() + b'\n')
        while True:
            line = self.f.readline()
            if not line:
                raise BenchError('QMP closed during %s' % name)
            r = json.loads(line)
            if 'event' in r:
                self.events.append(r)
                del self.events[:-100]
                continue
            if 'error' in r:
                raise BenchError('QMP %s: %s' % (name, r['error']))
            return r['return']

    def wait_event(self, names, timeout):
        """Returns the first event (seen before or arriving within timeout s)
        whose name is in names, and forgets it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e['event'] in names:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError('no QMP event %s in %.0f s' % ('/'.join(names), timeout))
            self.s.settimeout(left)
            try:
                line = self.f.readline()
            except socket.timeout:
                continue
            if not line:
                raise BenchError('QMP closed waiting for %s' % '/'.join(names))
            r = json.loads(line)
            if 'event' in r:
                self.events.append(r)

    def close(self):
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


class Drain:
    """Runs a process (stdin from /dev/null, stdout a pipe, stderr as given);
    a thread drains its stdout and hands each chunk, with the host time it
    arrived, to the subclass's _take() under self.cv (then wakes waiters).
    self.eof is set once stdout closes."""

    def __init__(self, argv, stderr):
        self.t0 = time.monotonic()
        self.cv = threading.Condition()
        self.eof = False
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=stderr)
        self.th = threading.Thread(target=self._reader, daemon=True)
        self.th.start()

    def _take(self, chunk, now):
        raise NotImplementedError

    def _reader(self):
        fd = self.p.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b''
            now = time.monotonic()
            with self.cv:
                if not chunk:
                    self.eof = True
                    self.cv.notify_all()
                    return
                self._take(chunk, now)
                self.cv.notify_all()


VCPU_COMM = re.compile(r'^(vcpu\d+|CPU \d+/KVM)$')
CLK_TCK = os.sysconf('SC_CLK_TCK')


class CpuMeter:
    """Samples /proc/PID/task/*/stat every 20 ms from start() to stop() and
    adds up the CPU time (user+system) each thread used in between, vCPU
    threads (godwit `vcpuN`, QEMU `CPU N/KVM`) apart from the others (the
    VMM's own work: the migration). A thread's last sample counts after it
    exits, so at most ~20 ms of a thread that ends is lost."""

    def __init__(self, pid):
        self.pid = pid
        self.base, self.last, self.vcpu = {}, {}, {}
        self.stop_ev = threading.Event()
        self.th = None

    def _sample(self):
        d = '/proc/%d/task' % self.pid
        try:
            tids = os.listdir(d)
        except OSError:
            return False
        for tid in tids:
            try:
                with open('%s/%s/stat' % (d, tid)) as f:
                    st = f.read()
            except OSError:
                continue
            comm = st[st.index('(') + 1:st.rindex(')')]
            f = st[st.rindex(')') + 2:].split()
            t = int(f[11]) + int(f[12])
            self.last[tid] = t
            self.vcpu[tid] = bool(VCPU_COMM.match(comm))
            if self.th is None:
                self.base[tid] = t
        return True

    def start(self):
        self._sample()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop_ev.wait(0.02):
            if not self._sample():
                return

    def stop(self):
        self._sample()
        self.stop_ev.set()
        self.th.join(timeout=2)
        vmm = vcpu = 0
        for tid, t in self.last.items():
            dt = t - self.base.get(tid, 0)
            if self.vcpu.get(tid):
                vcpu += dt
            else:
                vmm += dt
        return vmm * 1000.0 / CLK_TCK, vcpu * 1000.0 / CLK_TCK


def rm(*paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def git_head():
    try:
        return subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True).stdout.strip()
    except OSError:
        return None


def private_copies(d, paths, hint='run make'):
    """Copies each file in paths into directory d (others may rebuild build/
    while a bench runs: both sides of a migration must be the same binary and
    guest); returns the copies' paths, in order."""
    out = []
    for p in paths:
        if not os.path.exists(p):
            sys.exit('%s is missing: %s' % (p, hint))
        q = os.path.join(d, os.path.basename(p))
        shutil.copy2(p, q)
        out.append(q)
    return out


def parse_variant(v):
    """--variant NAME=ARGS: (NAME, (migrate args, destination args)); ARGS are
    `godwit migrate`'s extra arguments, then optionally ' -- ' and the
    destination `godwit run`'s."""
    vn, sep, va = v.partition('=')
    if not sep or not vn.startswith('godwit-'):
        sys.exit('--variant %r: want NAME=ARGS, NAME starting with godwit-' % v)
    margs, _, dargs = va.partition(' -- ')
    return vn, (margs.split(), dargs.split())


def summary(vals, ndigits=2):
    """median, min, max and n of the values that are not None (None if none
    is), rounded to ndigits."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {'median': round(statistics.median(vals), ndigits), 'min': round(min(vals), ndigits),
            'max': round(max(vals), ndigits), 'n': len(vals)}


def fmt(s, prec=0):
    """'median (min-max)' of a summary(), '-' for none."""
    if not s:
        return '-'
    f = '%%.%df' % prec
    return (f + ' (' + f + '-' + f + ')') % (s['median'], s['min'], s['max'])


def target(tg, what, val, limit, at_least=False):
    """Appends a target (met when val <= limit, or >= with at_least; None when
    either is unknown)."""
    ok = val is not None and limit is not None and (val >= limit if at_least else val <= limit)
    tg.append({'target': what, 'value': val, 'limit': limit,
               'met': ok if val is not None and limit is not None else None})


def print_targets(tg):
    print('targets:')
    for t in tg:
        print('  %-55s %10s  limit %8s  %s' %
              (t['target'], '-' if t['value'] is None else '%.1f' % t['value'],
               '-' if t['limit'] is None else '%.1f' % t['limit'],
               {True: 'MET', False: 'NOT MET', None: 'n/a'}[t['met']]))


def finish(res, out, ok):
    """Writes res as JSON to out (its directory made if needed), says where,
    and returns the exit code: 0 if ok."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(res, f, indent=2)
    print('result: %s' % out)
    return 0 if ok else 1


def physical_limits(seconds=1.0):
    """What this host moves at most, measured here and now: loopback TCP (one
    connection, a Python sender and a Python receiver in another process,
    4 MiB sendall / recv_into) and memcpy (Python copying a 256 MiB buffer
    into another: one memcpy); MiB/s.  Both are lower bounds of what the
    machine does (iperf3 is not used: not installed here)."""
    r = {}
    rx = subprocess.Popen([sys.executable, '-c', """
import socket, sys, time
ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept(); mv = memoryview(bytearray(4 << 20)); n = 0; t0 = None
while True:
    k = c.recv_into(mv)
    if t0 is None: t0 = time.monotonic()
    if not k: break
    n += k
print(n / 2**20 / (time.monotonic() - t0), flush=True)
"""], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        port = int(rx.stdout.readline())
        s = socket.create_connection(('127.0.0.1', port))
        buf = bytearray(4 << 20)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            s.sendall(buf)
        s.close()
        r['tcp_loopback_mib_s'] = round(float(rx.stdout.readline()))
    finally:
        rx.kill() if rx.poll() is None else None
        rx.wait()
    r['tcp_how'] = 'one connection, Python sender and receiver processes, %.1f s' % seconds
    a = bytearray(256 << 20)
    b = bytearray(256 << 20)
    b[:] = a                                    # fault both in first
    best = 0
    for _ in range(4):
        t0 = time.monotonic()
        b[:] = a
        best = max(best, 256 / (time.monotonic() - t0))
    r['memcpy_mib_s'] = round(best)
    r['memcpy_how'] = '256 MiB, best of 4, one thread'
    return r
