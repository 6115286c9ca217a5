#!/usr/bin/env python3
"""bench/migrate/migrate.py - live migration of a running test guest over
loopback TCP, godwit beside QEMU, alternating runs; prints a table and writes
JSON.

  migrate.py [--runs N] [--default-runs N] [--cases A,B|mem|disk] [--vmms X,Y]
             [--out FILE] [--timeout S] [--settle S] [--disk-image FILE]

Cases (test guest, 1 vCPU, report=10 ms):
  1G-idle      1 GiB, `workload=mem mem=16 rate=0` (verifies 16 MiB, dirties
               nothing but its stack and print buffers)
  1G-dirty100  1 GiB, `workload=mem mem=512 rate=100` (512 MiB, rewritten at
               100 MiB/s)
  4G-idle      4 GiB, `workload=mem mem=16 rate=0`
  1G-dirtymax  1 GiB, `workload=mem mem=512 rate=100000`: 512 MiB rewritten as
               fast as the guest's CPU writes (~2.5 GiB/s here, far above any
               rate the migration reaches), issue 15
  4G-data3g    4 GiB, `workload=mem mem=3072 rate=0`: 3 GiB of non-zero data
               (filled once, then verified only), issue 15
  1G-disk      storage migration: 1 GiB RAM and a 2 GiB raw image holding
               1 GiB of random data (dd from /dev/urandom once, cached in
               build/bench/migrate-disk-2g.img, or --disk-image), `workload=
               mem+disk mem=16 rate=0 disk_mib=1`: the guest's verifying disk
               loop (write 1 MiB, FLUSH, read back, verify, next generation)
               over the image's first MiB.  The disk workload has no rate
               limit; at report=10 the guest's console output (~10 ms of port
               exits per line, same vCPU) paces it to ~20-30 MiB/s written,
               which the bench measures from the source's `disk:` lines
               (disk_write_mib_s, during the migration; the settle time before
               it in the JSON) and prints.
`--cases mem` = 1G-idle, 1G-dirty100 and 4G-idle, `--cases disk` = 1G-disk,
`--cases line-rate` = issue 15's 1G-dirty100, 1G-dirtymax and 4G-data3g (run.sh
takes the group or case names as its first argument, or BENCH_CASES).
The migration starts --settle s (default 1) after the guest's first `memtest:`
line (printed once the fill is done), so a dirtying guest is in its steady
state.

VMMs:
- godwit: destination `godwit run --incoming tcp:127.0.0.1:PORT --api S2`,
  source `godwit run --api S ...`, then `godwit migrate --api S --to
  tcp:127.0.0.1:PORT --json` with its defaults (unlimited bandwidth, downtime
  limit 50 ms, 30 rounds). Figures from its JSON: total_ms, downtime_ms (pause
  to DONE, measured on the source), bytes, rounds. Each run's report and
  its SVG timeline (`godwit report --svg`) are written beside the results:
  OUT-timelines/CASE-VMM-runN.{json,svg} (OUT: --out without .json).
- godwit-tls: the same with mutual TLS 1.3 (--tls-dir on both ends, each
  requiring the other's name; credentials from tests/kvm/mkcerts.py).
  Targets: total time <= 1.3 x godwit's, downtime within 1 ms of it.
- qemu-tuned: `qemu -M microvm` (same PVH ELF), QMP on both sides; the
  destination starts with `-incoming defer`, gets `migrate-set-capabilities
  multifd` + `multifd-channels 2`, then `migrate-incoming tcp:...` (QEMU needs
  multifd set before it listens); the source gets multifd, multifd-channels 2,
  max-bandwidth 100 GiB/s and downtime-limit 50 ms (godwit's default limit).
- qemu-tuned-ac: qemu-tuned with the auto-converge capability (1G-dirtymax's
  reference: without throttling QEMU never finishes it).
- qemu-tuned-zstd: qemu-tuned with multifd-compression zstd on both sides.
- --variant NAME=ARGS: a godwit variant (NAME starts with godwit-): ARGS are
  extra arguments of `godwit migrate`, then optionally ' -- ' and extra
  arguments of the destination's `godwit run`; e.g. --variant
  'godwit-ch4=--channels 4'.  Runs in every case, after the case's defaults.
- qemu-bw: as qemu-tuned without multifd (one connection, -incoming tcp:...):
  max-bandwidth 100 GiB/s, downtime-limit 50 ms.  Not a target; shows what
  multifd does on this 2-core host.
  (1G-disk runs godwit and qemu-tuned unless --vmms says otherwise.)
- qemu-default: the destination with `-incoming tcp:127.0.0.1:PORT`, the source
  left at QEMU's defaults (7.2: 128 MiB/s, downtime-limit 300 ms).
  QEMU figures: QMP `migrate`, then `query-migrate` every 2 ms until
  `completed`: total-time, downtime, ram.transferred (bytes on the wire, RAM
  stream; multifd included), ram.dirty-sync-count (rounds).

Storage migration (1G-disk): the source's image is the cached one (the guest
rewrites its first MiB only); each destination gets a new file in the run
directory, removed afterwards.
- godwit: destination `godwit run --incoming ... --disk NEW.img` (created
  sparse by godwit), `godwit migrate ... --with-disks --json`; total_ms (the
  request, i.e. the start of the disk copy, to DONE), downtime_ms, bytes (the
  whole stream: RAM and disk) and disk_bytes from its JSON.
- QEMU: `-M pc -bios qboot.rom` (microvm has no PCI bus and the guest drives
  virtio-pci only), `-drive file=IMG,if=none,id=d0,format=raw -device
  virtio-blk-pci,drive=d0,disable-legacy=on` on both sides, the destination's
  image a new sparse file of the same size (truncate).  Storage moves by
  drive-mirror over NBD, as QEMU's docs describe (live-block-operations,
  "drive-mirror + NBD"), not `migrate -b` (deprecated): destination
  `nbd-server-start` 127.0.0.1:NPORT + `nbd-server-add d0 writable`; source
  `drive-mirror d0 nbd:127.0.0.1:NPORT:exportname=d0 sync=full mode=existing`,
  wait for BLOCK_JOB_READY, `migrate` (the mode's parameters, as above), poll
  `query-migrate` until completed, then `block-job-cancel d0` on the source
  and `nbd-server-stop` on the destination.  total_ms: host time from the
  drive-mirror command to `completed` (mirror_ready_ms: to READY;
  migrate_total_ms: QEMU's total-time of the RAM migration alone); downtime
  from query-migrate; bytes = ram.transferred + the NBD connection's
  bytes_acked (ss -ti, sampled at completion; zero ranges go as NBD
  WRITE_ZEROES), disk_bytes the latter.
- Integrity: the guest verifies every block it reads back (a lost or stale
  write is a `disk: ERROR` line / errors=N); the bench waits until the
  destination has finished 2 more disk generations (each a write, flush,
  read-back and verify pass), and after the run compares the destination's
  image with the source's beyond the guest's first MiB (cmp): `image_cmp`.

The guest's view of the downtime, from the consoles (the source's stdout and
the destination's stdout, each read by a thread that timestamps every chunk):
- guest_stall_ms: the guest's own `stall_ms` (longest gap between two
  consecutive TSC reads, which come every ~1 us while it verifies and once a
  byte while it prints; the TSC keeps running across the migration on one
  host, for both VMMs) of the first two complete `memtest:` lines the
  destination prints, i.e. the report interval(s) spanning the switch.  The
  best measure of what the guest lost.
- line_gap_ms: host time from the last complete report line seen on the
  source's console to the first complete one seen on the destination's: the
  gap between consecutive report lines spanning the switch (includes up to
  one report interval and the console path, so it is an upper bound; under
  PVM a ~100-byte line costs ~200 port exits, ~10 ms, so the guest prints
  almost all the time at report=10 and this gap has a 10-20 ms floor).
- precopy_stall_ms: the largest `stall_ms` the source printed while the
  migration was under way (before the switch): how much the pre-copy itself
  disturbed the guest (2 host cores: vCPU, sender, receiver compete);
  baseline_stall_ms (JSON only): the same over the settle time before it, the
  host's background noise.
round1_mib_s (table: r1MiB/s): round 1's rate, bytes sent over its time: godwit's
from its report's history (round 1's bytes and ms), QEMU's from query-migrate
(ram.transferred when dirty-sync-count first reaches 2, over the host time since
the migrate command; polled every 2 ms).
cpu_ms_per_gib (table: cpu/GiB): cpu_src_vmm_ms + cpu_dst_vmm_ms per GiB of guest
memory moved: the non-zero pages sent, before any compression (godwit: pages -
zero_pages of its report; QEMU: ram.normal), x 4 KiB.
limits (printed first; --no-limits skips): loopback TCP (one connection, a
Python sender and receiver process, 1 s) and memcpy (256 MiB, best of 4) on
this host just before the runs: lower bounds of what the machine moves.
cpu_src_vmm_ms / cpu_dst_vmm_ms (table: cpu_s/d): CPU time the source's and the
destination's VMM threads (all but the vCPU's) used from the migration request
to its end, from /proc/PID/task/*/stat: the work the migration cost, less
sensitive to other load on the host than the times.
others_pct (table: other%): the share of the host's CPUs (2 here) that other
processes used during the migration (/proc/stat busy time minus ours): the
noise. Before each run the bench waits up to --quiet-wait s (default 10) for
the host to be under --quiet-pct % busy (default 30) and records what it saw.
The destination's report lines are also checked for memtest errors (a page
lost or corrupted by the migration): `integrity` in the JSON.

Targets (from the issue), on medians, godwit vs qemu-tuned: idle 1 GiB
downtime <= 10 ms; downtime <= 0.5 x qemu-tuned's in every memory case;
total time <= 0.5 x qemu-tuned's (1G-dirtymax: qemu-tuned-ac's); in the
line-rate cases godwit's round 1 at >= 2 GB/s. Storage migration (1G-disk): total time
<= 0.5 x qemu-tuned's with no larger downtime (<= 1.0 x). Downtime checked
both as reported by the VMM and as the guest saw it (guest_stall_ms).
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'bench', 'lib'))
import benchlib  # noqa: E402
from benchlib import BenchError, QMP, fmt, free_port, rm, summary  # noqa: E402,F401
GODWIT = os.environ.get('GODWIT', os.path.join(ROOT, 'build', 'godwit'))
QEMU = os.environ.get('QEMU', 'qemu-system-x86_64')
ELF = os.path.join(ROOT, 'build', 'guest', 'godwit-guest.elf')
REPORT_MS = 10
TUNED_BW = 100 << 30
TUNED_DOWNTIME_MS = 50
MULTIFD_CHANNELS = 2

# Where the two VMMs run (bench/converge/ sets these: each side in a network namespace of
# its own, joined by a shaped link): argv prefixes for the source's and the destination's
# VMM process (e.g. ['ip', 'netns', 'exec', NS], which execs, so the PID stays the VMM's),
# and the address the destination listens on.  Defaults: both here, over loopback.
SRC_WRAP = []
DST_WRAP = []
MIG_HOST = '127.0.0.1'

DISK_SIZE = 2 << 30                  # the 1G-disk image: 2 GiB raw
DISK_DATA_MIB = 1024                 # its first GiB random data, the rest a hole
DISK_GUEST_MIB = 1                   # the guest rewrites [0, 1 MiB)
QBOOT = '/usr/share/qemu/qboot.rom'

# (name, RAM, guest command line, with a disk)
CASES = [
    ('1G-idle', '1G', 'workload=mem mem=16 rate=0', False),
    ('1G-dirty100', '1G', 'workload=mem mem=512 rate=100', False),
    ('4G-idle', '4G', 'workload=mem mem=16 rate=0', False),
    # issue 15: as fast as the guest can rewrite (rate above what a CPU writes), and a
    # 4 GiB guest holding 3 GiB of non-zero data (filled once, then verified only)
    ('1G-dirtymax', '1G', 'workload=mem mem=512 rate=100000', False),
    ('4G-data3g', '4G', 'workload=mem mem=3072 rate=0', False),
    ('1G-disk', '1G', 'workload=mem+disk mem=16 rate=0 disk_start=0 disk_mib=%d' %
     DISK_GUEST_MIB, True),
]
CASE_GROUPS = {'mem': ['1G-idle', '1G-dirty100', '4G-idle'],
               'disk': [c[0] for c in CASES if c[3]],
               'line-rate': ['1G-dirty100', '1G-dirtymax', '4G-data3g'],
               'all': [c[0] for c in CASES]}
VMMS = ['godwit', 'godwit-tls', 'qemu-tuned', 'qemu-tuned-ac', 'qemu-tuned-zstd', 'qemu-bw',
        'qemu-default']
DISK_VMMS = ['godwit', 'qemu-tuned']    # 1G-disk's default (--vmms overrides)
# Each case's default VMMs where they differ from VMMS' first five (--vmms overrides).
# 1G-dirtymax: QEMU without auto-converge never finishes it (the guest rewrites its
# 512 MiB faster than any link here carries), so QEMU tuned runs with auto-converge,
# as godwit throttles by default.
CASE_VMMS = {'1G-disk': DISK_VMMS,
             '1G-dirtymax': ['godwit', 'qemu-tuned-ac'],
             '4G-data3g': ['godwit', 'qemu-tuned']}
DEFAULT_VMMS = ['godwit', 'godwit-tls', 'qemu-tuned', 'qemu-bw', 'qemu-default']
# With --cases line-rate: godwit beside the reference QEMU only.
LINE_RATE_VMMS = {'1G-dirty100': ['godwit', 'qemu-tuned']}
# QEMU's reference for the targets, in order of preference.
QEMU_REFS = ('qemu-tuned', 'qemu-tuned-ac')
# godwit variants given on the command line (--variant NAME=ARGS): extra arguments for
# `godwit migrate` (and, after ' -- ', for the destination's `godwit run`).
VARIANTS = {}

MEMTEST_RE = re.compile(r'^memtest: t=([0-9.]+) gen=(\d+) verified=(\d+) dirtied=(\d+) '
                        r'errors=(\d+) stall_ms=([0-9.]+) max_stall_ms=([0-9.]+)')


DISK_RE = re.compile(r'^disk: t=([0-9.]+) gen=(\d+) written_mib=(\d+) read_mib=(\d+) '
                     r'errors=(\d+)')


class Console(benchlib.Drain):
    """Runs a process; a thread drains its stdout (the guest's console) and
    keeps every complete line with the host time its newline arrived. stderr
    goes to a file (kept apart so VMM messages never split a guest line)."""

    def __init__(self, argv, errfile):
        self.errf = open(errfile, 'wb')
        self.errfile = errfile
        self.partial = b''
        self.lines = []                      # (monotonic time, str)
        super().__init__(argv, self.errf)

    def _take(self, chunk, now):
        data = self.partial + chunk
        parts = data.split(b'\n')
        self.partial = parts.pop()
        for ln in parts:
            self.lines.append((now, ln.decode(errors='replace')))

    def wait(self, pred, timeout, what):
        """Waits until pred(lines) is true; returns its value."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                v = pred(self.lines)
                if v:
                    return v
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise BenchError('%s (%s); console tail: %r; stderr tail: %r' %
                                     (what, 'exited %s' % self.p.poll() if self.eof else 'timeout',
                                      '\n'.join(l for _, l in self.lines[-4:]),
                                      self.stderr_tail()))
                self.cv.wait(min(left, 0.2))

    def snapshot(self):
        with self.cv:
            return list(self.lines)

    def stderr_tail(self, n=400):
        try:
            with open(self.errfile, 'rb') as f:
                return f.read()[-n:].decode(errors='replace')
        except OSError:
            return ''

    def stop(self, timeout=10):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.th.join(timeout=2)
        self.errf.close()


VCPU_COMM, CLK_TCK, CpuMeter = benchlib.VCPU_COMM, benchlib.CLK_TCK, benchlib.CpuMeter


def host_jiffies():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    tot = sum(v[:8])
    return tot - idle, tot


def wait_quiet(max_wait, pct):
    """Waits (up to max_wait s) for two consecutive 0.5 s windows in which the
    host's CPUs are less than pct % busy (none of ours runs then); returns the
    last window's busy % and the seconds waited."""
    t0 = time.monotonic()
    quiet, busy = 0, None
    while True:
        b0, t_0 = host_jiffies()
        time.sleep(0.5)
        b1, t_1 = host_jiffies()
        busy = 100.0 * (b1 - b0) / max(1, t_1 - t_0)
        quiet = quiet + 1 if busy < pct else 0
        if quiet >= 2 or time.monotonic() - t0 >= max_wait:
            return round(busy, 1), round(time.monotonic() - t0, 1)


def kill(con):
    if con is None:
        return
    if con.p.poll() is None:
        con.p.kill()
    try:
        con.p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if not con.errf.closed:
        con.errf.close()


def guest_cmd(cmd):
    return '%s report=%d' % (cmd, REPORT_MS)


def memtests(lines):
    out = []
    for t, ln in lines:
        m = MEMTEST_RE.match(ln)
        if m:
            out.append((t, {'t': float(m.group(1)), 'gen': int(m.group(2)),
                            'dirtied': int(m.group(4)),
                            'errors': int(m.group(5)), 'stall_ms': float(m.group(6)),
                            'max_stall_ms': float(m.group(7))}))
    return out


def first_memtest(lines):
    return bool(memtests(lines))


def wait_guest_ready(con, tmo, settle):
    con.wait(first_memtest, tmo, 'no memtest: line from the guest')
    time.sleep(settle)


def console_figures(src_lines, dst_lines, t_start, settle, t_end=None):
    """The guest's view from both consoles; see the module doc.  With t_end (the host
    time the migration ended) also whole_stall_ms: the longest stall_ms of the source's
    lines from t_start on and of the destination's lines up to t_end and its first two
    (a post-copy's faults come before t_end); and dirty_mib_s: what the guest dirtied
    per second over the settle time before t_start (its `dirtied` pages)."""
    s = memtests(src_lines)
    d = memtests(dst_lines)
    r = {'src_lines': len(s), 'dst_lines': len(d)}
    if not s or len(d) < 2:
        raise BenchError('too few report lines around the switch (source %d, destination %d)' %
                         (len(s), len(d)))
    r['guest_stall_ms'] = max(x['stall_ms'] for _, x in d[:2])
    r['line_gap_ms'] = (d[0][0] - s[-1][0]) * 1000
    pre = [x['stall_ms'] for t, x in s if t >= t_start]
    r['precopy_stall_ms'] = max(pre) if pre else None
    base = [x['stall_ms'] for t, x in s if t_start - settle <= t < t_start]
    r['baseline_stall_ms'] = max(base) if base else None
    if t_end is not None:
        whole = pre + [x['stall_ms'] for i, (t, x) in enumerate(d) if i < 2 or t <= t_end]
        r['whole_stall_ms'] = max(whole)
        w = [x for t, x in s if t_start - settle <= t < t_start]
        r['dirty_mib_s'] = ((w[-1]['dirtied'] - w[0]['dirtied']) / 256.0 /
                            (w[-1]['t'] - w[0]['t'])) if len(w) >= 2 and \
            w[-1]['t'] > w[0]['t'] else None
    r['guest_t_src_last'] = s[-1][1]['t']
    r['guest_t_dst_first'] = d[0][1]['t']
    errs = [ln for _, ln in src_lines + dst_lines if ln.startswith('memtest: ERROR') or
            'EXCEPTION' in ln]
    r['integrity'] = {'errors_src': s[-1][1]['errors'], 'errors_dst': d[-1][1]['errors'],
                      'error_lines': errs[:5], 'gen_src': s[-1][1]['gen'],
                      'gen_dst': d[-1][1]['gen']}
    r['integrity']['ok'] = (not errs and r['integrity']['errors_dst'] == 0)
    return r


def disklines(lines):
    out = []
    for t, ln in lines:
        m = DISK_RE.match(ln)
        if m:
            out.append((t, {'t': float(m.group(1)), 'gen': int(m.group(2)),
                            'written': int(m.group(3)), 'read': int(m.group(4)),
                            'errors': int(m.group(5))}))
    return out


def write_rate(dl, t_from, t_to):
    """MiB/s the guest wrote between the host times t_from and t_to, from its
    `disk:` lines (written_mib over the guest's t)."""
    w = [x for t, x in dl if t_from <= t <= t_to]
    if len(w) < 2 or w[-1]['t'] <= w[0]['t']:
        return None
    return (w[-1]['written'] - w[0]['written']) / (w[-1]['t'] - w[0]['t'])


def dst_disk_done(lines):
    """True once the destination has 5 memtest lines and its disk workload
    has finished 2 generations (written, flushed, read back, verified) since
    its first line."""
    dl = disklines(lines)
    return len(memtests(lines)) >= 5 and len(dl) >= 2 and dl[-1][1]['gen'] >= dl[0][1]['gen'] + 2


def disk_figures(src_lines, dst_lines, t_start, t_end, settle):
    s, d = disklines(src_lines), disklines(dst_lines)
    if not s or not d:
        raise BenchError('no disk: lines (source %d, destination %d)' % (len(s), len(d)))
    errs = [ln for _, ln in src_lines + dst_lines if ln.startswith('disk: ERROR') or
            ln.startswith('virtio: ')]
    return {'disk_write_mib_s': write_rate(s, t_start, t_end),
            'disk_write_mib_s_before': write_rate(s, t_start - settle, t_start),
            'disk_gen_src': s[-1][1]['gen'], 'disk_gen_dst': d[-1][1]['gen'],
            'disk_errors_dst': d[-1][1]['errors'], 'disk_error_lines': errs[:5],
            'disk_ok': not errs and d[-1][1]['errors'] == 0 and s[-1][1]['errors'] == 0}


def disk_image(path):
    """The 1G-disk source image: DISK_SIZE bytes, the first DISK_DATA_MIB of
    them from /dev/urandom; made once and kept (reused while it has the size
    and about that much data allocated)."""
    try:
        st = os.stat(path)
        if st.st_size == DISK_SIZE and \
                abs(st.st_blocks * 512 - (DISK_DATA_MIB << 20)) <= (16 << 20):
            return False
    except FileNotFoundError:
        pass
    tmp = path + '.tmp'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rm(tmp)
    sys.stderr.write('making %s (%d MiB of /dev/urandom in a %d MiB image)\n' %
                     (path, DISK_DATA_MIB, DISK_SIZE >> 20))
    subprocess.run(['dd', 'if=/dev/urandom', 'of=' + tmp, 'bs=1M', 'count=%d' % DISK_DATA_MIB,
                    'status=none'], check=True, timeout=300)
    os.truncate(tmp, DISK_SIZE)
    os.rename(tmp, path)
    return True


def warm(path):
    """Reads the image once so that both VMMs find it in the page cache."""
    with open(path, 'rb', buffering=0) as f:
        while f.read(8 << 20):
            pass


def image_cmp(src_img, dst_img, tmo):
    """Compares the two images beyond the range the guest writes."""
    skip = DISK_GUEST_MIB << 20
    try:
        if os.path.getsize(dst_img) != os.path.getsize(src_img):
            return 'size differs: %d vs %d' % (os.path.getsize(dst_img), os.path.getsize(src_img))
        r = subprocess.run(['cmp', '-i', str(skip), src_img, dst_img], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=tmo, universal_newlines=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 'cmp failed: %s' % e
    return 'same' if r.returncode == 0 else r.stdout.strip()[:200]


def tcp_bytes_acked(port):
    """bytes_acked summed over the established TCP connections to port (ss)."""
    r = subprocess.run(['ss', '-tinH', 'state', 'established', '( dport = :%d )' % port],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       universal_newlines=True, timeout=10)
    v = [int(x) for x in re.findall(r'bytes_acked:(\d+)', r.stdout)]
    return sum(v) if v else None


def loadavg():
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


def mem_check(mem):
    need = 2 * (int(mem[:-1]) << (30 if mem.endswith('G') else 20)) + (1 << 30)
    with open('/proc/meminfo') as f:
        for ln in f:
            if ln.startswith('MemAvailable:'):
                avail = int(ln.split()[1]) * 1024
                if avail < need:
                    raise BenchError('only %.1f GiB available, %.1f GiB wanted for two %s guests' %
                                     (avail / 2**30, need / 2**30, mem))
                return avail
    return None


# ---- godwit ---------------------------------------------------------------

def write_timeline(report, base):
    """A godwit migration's --json report as BASE.json and its SVG timeline
    (`godwit report BASE.json --svg BASE.svg`) as BASE.svg; the SVG's path."""
    with open(base + '.json', 'w') as f:
        json.dump(report, f)
    r = subprocess.run([GODWIT, 'report', base + '.json', '--svg', base + '.svg'],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    if r.returncode != 0:
        raise BenchError('godwit report --svg exited %d: %s' %
                         (r.returncode, r.stderr.decode(errors='replace').strip()))
    return base + '.svg'


def run_godwit(mem, cmd, d, tmo, settle, img=None, tls=False, dst_args=(), mig_args=()):
    """img: the source's disk image (1G-disk; migrated with --with-disks to a
    new file) or None.  tls: mutual TLS (tests/kvm/mkcerts.py's src and dst
    credentials, made once in d/certs).  dst_args, mig_args: more options for the
    destination's `godwit run` and for `godwit migrate` (e.g. --insecure)."""
    api, api2 = os.path.join(d, 'src.sock'), os.path.join(d, 'dst.sock')
    dimg = os.path.join(d, 'dst-disk.img')
    rm(api, api2, dimg)
    port = free_port()
    addr = 'tcp:%s:%d' % (MIG_HOST, port)
    src = dst = None
    try:
        certs = os.path.join(d, 'certs')
        if tls and not os.path.isdir(certs):
            subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'kvm', 'mkcerts.py'),
                            certs], check=True, timeout=60)
        dtls = ['--tls-dir', os.path.join(certs, 'dst'), '--tls-peer', 'src.godwit.test']
        stls = ['--tls-dir', os.path.join(certs, 'src'), '--tls-peer', 'dst.godwit.test']
        dst = Console(DST_WRAP + [GODWIT, 'run', '--incoming', addr, '--api', api2] +
                      (['--disk', dimg] if img else []) + (dtls if tls else []) +
                      list(dst_args),
                      os.path.join(d, 'dst.err'))
        deadline = time.monotonic() + tmo
        while b'waiting for an incoming migration' not in dst.stderr_tail(4096).encode():
            if dst.p.poll() is not None or time.monotonic() > deadline:
                raise BenchError('godwit destination did not start: %s' % dst.stderr_tail())
            time.sleep(0.01)
        src = Console(SRC_WRAP + [GODWIT, 'run', '--api', api, '--mem', mem, '--cpus', '1',
                       '--cpu-model', 'host', '--kernel', ELF, '--cmdline', guest_cmd(cmd)] +
                      (['--disk', img] if img else []), os.path.join(d, 'src.err'))
        wait_guest_ready(src, tmo, settle)
        cs, cd = CpuMeter(src.p.pid), CpuMeter(dst.p.pid)
        cs.start()
        cd.start()
        h0 = host_jiffies()
        t0 = time.monotonic()
        r = subprocess.run([GODWIT, 'migrate', '--api', api, '--to', addr, '--json'] +
                           (['--with-disks'] if img else []) + (stls if tls else []) +
                           list(mig_args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=tmo)
        t_end = time.monotonic()
        wall = t_end - t0
        cpu = cs.stop() + cd.stop()
        h1 = host_jiffies()
        others = 100.0 * ((h1[0] - h0[0]) * 1000.0 / CLK_TCK - sum(cpu)) / \
            max(1.0, (h1[1] - h0[1]) * 1000.0 / CLK_TCK)
        out = r.stdout.decode(errors='replace').strip()
        try:
            j = json.loads(out.splitlines()[-1]) if out else {}
        except ValueError:
            j = {}
        if r.returncode != 0 or j.get('status') != 'completed':
            raise BenchError('godwit migrate exited %d: %s %s' %
                             (r.returncode, out, r.stderr.decode(errors='replace').strip()))
        if bool(j.get('tls')) != tls:
            raise BenchError('godwit migrate: TLS session %r, expected %s' % (j.get('tls'), tls))
        try:
            src_rc = src.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            src_rc = None
        if img:
            dst.wait(dst_disk_done, tmo, 'destination: fewer than 5 report lines or 2 disk '
                     'generations')
        else:
            dst.wait(lambda ls: len(memtests(ls)) >= 5, tmo,
                     'destination printed fewer than 5 report lines')
        res = {'total_ms': j.get('total_ms'), 'downtime_ms': j.get('downtime_ms'),
               'setup_ms': j.get('setup_ms'), 'bytes': j.get('bytes'),
               'rounds': j.get('rounds'), 'converged': j.get('converged'),
               'pages': j.get('pages'), 'zero_pages': j.get('zero_pages'),
               'wall_ms': wall * 1000, 'src_exit': src_rc,
               'cpu_src_vmm_ms': cpu[0], 'cpu_src_vcpu_ms': cpu[1], 'others_pct': others,
               'cpu_dst_vmm_ms': cpu[2], 'cpu_dst_vcpu_ms': cpu[3],
               'report': j,
               'round1_mib_s': round1_godwit(j),
               'progress': [ln.strip() for ln in
                            r.stderr.decode(errors='replace').replace('\r', '\n').splitlines()
                            if ln.strip()][-40:]}
        res.update(console_figures(src.snapshot(), dst.snapshot(), t0, settle, t_end))
        if img:
            res['disk_bytes'] = j.get('disk_bytes')
            res['disk_rounds'] = j.get('disk_rounds')
            res.update(disk_figures(src.snapshot(), dst.snapshot(), t0, t_end, settle))
        subprocess.run([GODWIT, 'shutdown', '--api', api2], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=tmo)
        dst.stop(10)
        if img:
            res['image_cmp'] = image_cmp(img, dimg, tmo)
            res['integrity']['ok'] = res['integrity']['ok'] and res['disk_ok'] and \
                res['image_cmp'] == 'same'
        return res
    finally:
        kill(src)
        kill(dst)
        rm(api, api2, dimg)


# ---- QEMU -----------------------------------------------------------------

def qemu_argv(mem, cmd, extra, img=None):
    """microvm; or, with a disk image, pc with qboot (the guest drives
    virtio-pci only, and microvm has no PCI bus) and a virtio-blk-pci on it."""
    # debug-threads: the vCPU thread is named `CPU 0/KVM` (CpuMeter tells it apart).
    if img:
        m = ['-M', 'pc', '-bios', QBOOT]
        extra = extra + ['-drive', 'file=%s,if=none,id=d0,format=raw' % img,
                         '-device', 'virtio-blk-pci,drive=d0,disable-legacy=on']
    else:
        m = ['-M', 'microvm']
    return [QEMU, '-name', 'bench,debug-threads=on'] + m + ['-enable-kvm',
            '-cpu', 'host,-arch-capabilities',
            '-m', mem, '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
            '-serial', 'stdio', '-kernel', ELF, '-append', guest_cmd(cmd)] + extra


def qemu_ref(c):
    """The QEMU a case's targets compare godwit with: the first of QEMU_REFS it ran."""
    for k in QEMU_REFS:
        if k in c['vmm']:
            return k
    return QEMU_REFS[0]


def round1_godwit(j):
    """MiB/s of round 1 from a godwit report's history (bytes sent over its ms)."""
    h = j.get('history') or []
    if not h or not h[0].get('ms'):
        return None
    return h[0]['bytes'] / 2**20 / (h[0]['ms'] / 1000.0)


def moved_bytes(r):
    """Guest memory a migration moved: its non-zero pages sent, before any
    compression (godwit: pages - zero_pages; QEMU: ram.normal), x 4 KiB; else
    the bytes it reports."""
    if r.get('pages') is not None and r.get('zero_pages') is not None:
        return (r['pages'] - r['zero_pages']) * 4096
    if r.get('normal') is not None:
        return r['normal'] * 4096
    return r.get('bytes')


def cpu_per_gib(r):
    """CPU ms the VMM threads of both sides used per GiB of guest memory moved."""
    m = moved_bytes(r)
    if not m or r.get('cpu_src_vmm_ms') is None or r.get('cpu_dst_vmm_ms') is None:
        return None
    return (r['cpu_src_vmm_ms'] + r['cpu_dst_vmm_ms']) / (m / 2**30)


def run_qemu(mem, cmd, d, tmo, settle, mode, img=None):
    """img: the source's disk image (1G-disk: drive-mirror over NBD to a new
    file, see the module doc) or None.  mode: tuned, bw, default (the module doc), or
    (bench/converge/) auto-converge (bw's parameters and the auto-converge capability)
    or postcopy (bw's parameters, postcopy-ram on both sides, migrate-start-postcopy
    once the first pass over RAM is done: dirty-sync-count 2)."""
    tuned = mode in ('tuned', 'tuned-ac', 'tuned-zstd')
    postcopy = mode == 'postcopy'
    sq, dq = os.path.join(d, 'src.qmp'), os.path.join(d, 'dst.qmp')
    dimg = os.path.join(d, 'dst-disk.img')
    rm(sq, dq, dimg)
    port = free_port()
    uri = 'tcp:%s:%d' % (MIG_HOST, port)
    src = dst = None
    sqmp = dqmp = None
    try:
        if img:
            with open(dimg, 'wb') as f:
                f.truncate(os.path.getsize(img))
        inc = 'defer' if tuned or postcopy else uri
        dst = Console(DST_WRAP + qemu_argv(mem, cmd, ['-qmp', 'unix:%s,server=on,wait=off' % dq,
                                           '-incoming', inc], dimg if img else None),
                      os.path.join(d, 'dst.err'))
        dqmp = QMP(dq, tmo)
        if tuned:
            dqmp.cmd('migrate-set-capabilities',
                     capabilities=[{'capability': 'multifd', 'state': True}])
            dqmp.cmd('migrate-set-parameters', **{'multifd-channels': MULTIFD_CHANNELS})
            if mode == 'tuned-zstd':
                dqmp.cmd('migrate-set-parameters', **{'multifd-compression': 'zstd'})
            dqmp.cmd('migrate-incoming', uri=uri)
        if postcopy:
            dqmp.cmd('migrate-set-capabilities',
                     capabilities=[{'capability': 'postcopy-ram', 'state': True}])
            dqmp.cmd('migrate-incoming', uri=uri)
        if img:
            nport = free_port()
            dqmp.cmd('nbd-server-start', addr={'type': 'inet', 'data': {
                'host': '127.0.0.1', 'port': str(nport)}})
            dqmp.cmd('nbd-server-add', device='d0', writable=True)
        src = Console(SRC_WRAP + qemu_argv(mem, cmd, ['-qmp', 'unix:%s,server=on,wait=off' % sq], img),
                      os.path.join(d, 'src.err'))
        sqmp = QMP(sq, tmo)
        if tuned:
            sqmp.cmd('migrate-set-capabilities',
                     capabilities=[{'capability': 'multifd', 'state': True}])
            sqmp.cmd('migrate-set-parameters', **{'multifd-channels': MULTIFD_CHANNELS,
                                                  'max-bandwidth': TUNED_BW,
                                                  'downtime-limit': TUNED_DOWNTIME_MS})
            if mode == 'tuned-zstd':
                sqmp.cmd('migrate-set-parameters', **{'multifd-compression': 'zstd'})
            if mode == 'tuned-ac':
                sqmp.cmd('migrate-set-capabilities',
                         capabilities=[{'capability': 'auto-converge', 'state': True}])
        elif mode in ('bw', 'auto-converge', 'postcopy'):
            sqmp.cmd('migrate-set-parameters', **{'max-bandwidth': TUNED_BW,
                                                  'downtime-limit': TUNED_DOWNTIME_MS})
            cap = {'auto-converge': 'auto-converge', 'postcopy': 'postcopy-ram'}.get(mode)
            if cap:
                sqmp.cmd('migrate-set-capabilities',
                         capabilities=[{'capability': cap, 'state': True}])
        params = sqmp.cmd('query-migrate-parameters')
        caps = {c['capability']: c['state'] for c in sqmp.cmd('query-migrate-capabilities')}
        wait_guest_ready(src, tmo, settle)
        cs, cd = CpuMeter(src.p.pid), CpuMeter(dst.p.pid)
        cs.start()
        cd.start()
        h0 = host_jiffies()
        t0 = time.monotonic()
        dres = {}
        if img:
            sqmp.cmd('drive-mirror', device='d0', target='nbd:127.0.0.1:%d:exportname=d0' % nport,
                     sync='full', mode='existing', format='raw')
            ev = sqmp.wait_event(('BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED',
                                  'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR'), tmo)
            if ev['event'] != 'BLOCK_JOB_READY':
                raise BenchError('drive-mirror: %s' % json.dumps(ev))
            dres['mirror_ready_ms'] = (time.monotonic() - t0) * 1000
            dres['mirror_at_ready'] = ev.get('data')
        sqmp.cmd('migrate', uri=uri)
        pc_ms = None
        r1 = None           # (ms, bytes) when dirty-sync-count first passed 1: round 1 done
        while True:
            st = sqmp.cmd('query-migrate')
            if r1 is None and st.get('ram', {}).get('dirty-sync-count', 0) >= 2:
                r1 = ((time.monotonic() - t0) * 1000, st['ram'].get('transferred'))
            if st.get('status') == 'completed':
                break
            if postcopy and pc_ms is None and \
                    st.get('ram', {}).get('dirty-sync-count', 0) >= 2:
                sqmp.cmd('migrate-start-postcopy')
                pc_ms = (time.monotonic() - t0) * 1000
            if st.get('status') in ('failed', 'cancelled') or time.monotonic() - t0 > tmo:
                raise BenchError('QEMU migrate: %s' % json.dumps(st))
            time.sleep(0.002)
        t_end = time.monotonic()
        wall = t_end - t0
        if img:
            dres['disk_bytes'] = tcp_bytes_acked(nport)
            jobs = sqmp.cmd('query-block-jobs')
            dres['mirror_job'] = jobs[0] if jobs else None
            sqmp.cmd('block-job-cancel', device='d0')
            ev = sqmp.wait_event(('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'), tmo)
            dres['mirror_end'] = ev
            dqmp.cmd('nbd-server-stop')
        cpu = cs.stop() + cd.stop()
        h1 = host_jiffies()
        others = 100.0 * ((h1[0] - h0[0]) * 1000.0 / CLK_TCK - sum(cpu)) / \
            max(1.0, (h1[1] - h0[1]) * 1000.0 / CLK_TCK)
        if img:
            dst.wait(dst_disk_done, tmo, 'destination: fewer than 5 report lines or 2 disk '
                     'generations')
        else:
            dst.wait(lambda ls: len(memtests(ls)) >= 5, tmo,
                     'destination printed fewer than 5 report lines')
        dstat = dqmp.cmd('query-status').get('status')
        ram = st.get('ram', {})
        res = {'total_ms': st.get('total-time'), 'downtime_ms': st.get('downtime'),
               'setup_ms': st.get('setup-time'), 'bytes': ram.get('transferred'),
               'rounds': ram.get('dirty-sync-count'), 'ram_total': ram.get('total'),
               'multifd_bytes': ram.get('multifd-bytes'), 'duplicate': ram.get('duplicate'),
               'normal': ram.get('normal'), 'wall_ms': wall * 1000, 'dst_status': dstat,
               'cpu_src_vmm_ms': cpu[0], 'cpu_src_vcpu_ms': cpu[1], 'others_pct': others,
               'cpu_dst_vmm_ms': cpu[2], 'cpu_dst_vcpu_ms': cpu[3],
               'params': {k: params.get(k) for k in ('max-bandwidth', 'downtime-limit',
                                                      'multifd-channels',
                                                      'multifd-compression')},
               'round1_mib_s': r1[1] / 2**20 / (r1[0] / 1000.0) if r1 and r1[0] and r1[1]
               else None,
               'round1_how': 'ram.transferred when dirty-sync-count reached 2, host clock '
                             'from the migrate command (query-migrate every 2 ms)',
               'multifd': caps.get('multifd')}
        if mode in ('auto-converge', 'postcopy'):
            res['caps'] = {k: caps.get(k) for k in ('auto-converge', 'postcopy-ram')}
            res['cpu_throttle_pct'] = st.get('cpu-throttle-percentage')
            res['postcopy_start_ms'] = pc_ms
            res['postcopy_requests'] = ram.get('postcopy-requests')
        res.update(console_figures(src.snapshot(), dst.snapshot(), t0, settle, t_end))
        if img:
            # from the start of the disk copy to the destination running
            res['migrate_total_ms'] = res['total_ms']
            res['total_ms'] = wall * 1000
            res['ram_bytes'] = res['bytes']
            res.update(dres)
            if res['bytes'] is not None and res['disk_bytes'] is not None:
                res['bytes'] += res['disk_bytes']
            res.update(disk_figures(src.snapshot(), dst.snapshot(), t0, t_end, settle))
        for q in (sqmp, dqmp):
            try:
                q.cmd('quit')
            except (BenchError, OSError):
                pass
        src.stop(10)
        dst.stop(10)
        if img:
            res['image_cmp'] = image_cmp(img, dimg, tmo)
            res['integrity']['ok'] = res['integrity']['ok'] and res['disk_ok'] and \
                res['image_cmp'] == 'same' and dstat == 'running'
        return res
    finally:
        for q in (sqmp, dqmp):
            if q:
                q.close()
        kill(src)
        kill(dst)
        rm(sq, dq, dimg)


# ---- main -----------------------------------------------------------------

FIELDS = ['total_ms', 'downtime_ms', 'guest_stall_ms', 'line_gap_ms', 'precopy_stall_ms',
          'baseline_stall_ms', 'cpu_src_vmm_ms', 'cpu_dst_vmm_ms', 'cpu_src_vcpu_ms',
          'others_pct', 'quiet_wait_s', 'busy_before_pct',
          'bytes', 'rounds', 'disk_bytes', 'disk_write_mib_s', 'disk_write_mib_s_before',
          'mirror_ready_ms', 'migrate_total_ms', 'wall_ms', 'round1_mib_s', 'cpu_ms_per_gib']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', type=int, default=3, help='alternating runs per case and VMM')
    ap.add_argument('--default-runs', type=int, default=None,
                    help='runs of qemu-default per case (default: --runs)')
    ap.add_argument('--cases', default='all',
                    help='comma-separated case names, or mem, disk, all (default)')
    ap.add_argument('--disk-image', default=os.path.join(ROOT, 'build', 'bench',
                                                         'migrate-disk-2g.img'),
                    help='the 1G-disk source image (made once if missing)')
    ap.add_argument('--vmms', default=None,
                    help='VMMs to run (default: %s; for 1G-disk %s)' %
                    (','.join(VMMS), ','.join(DISK_VMMS)))
    ap.add_argument('--dir', default='/tmp')
    ap.add_argument('--out', default=None)
    ap.add_argument('--timeout', type=float, default=120)
    ap.add_argument('--quiet-wait', type=float, default=10,
                    help='before each run, wait up to this many s for a quiet host')
    ap.add_argument('--quiet-pct', type=float, default=30,
                    help='host CPU busy %% below which it counts as quiet')
    ap.add_argument('--settle', type=float, default=1.0,
                    help='seconds between the first report line and the migration')
    ap.add_argument('--variant', action='append', default=[], metavar='NAME=ARGS',
                    help='a godwit variant run beside the others: NAME=ARGS, ARGS extra '
                         'arguments of `godwit migrate`, then optionally " -- " and extra '
                         'arguments of the destination\'s `godwit run` (e.g. '
                         '"godwit-ch4=--channels 4"); repeatable')
    ap.add_argument('--no-limits', action='store_true',
                    help='do not measure loopback TCP and memcpy bandwidth first')
    a = ap.parse_args()
    for v in a.variant:
        vn, args = benchlib.parse_variant(v)
        if vn in VMMS:
            sys.exit('--variant %r: %s is a VMM already' % (v, vn))
        VARIANTS[vn] = args
    want = []
    line_rate = 'line-rate' in a.cases.split(',')
    for w in a.cases.split(','):
        w = w.strip()
        if w in CASE_GROUPS:
            want += CASE_GROUPS[w]
        elif w in [c[0] for c in CASES]:
            want.append(w)
        elif w:
            sys.exit('unknown case %r (cases: %s; groups: %s)' %
                     (w, ', '.join(c[0] for c in CASES), ', '.join(CASE_GROUPS)))
    druns = a.runs if a.default_runs is None else a.default_runs
    d = os.path.join(a.dir, 'gw-bench-migrate.%d' % os.getpid())
    os.makedirs(d)
    # Private copies: others may rebuild build/ while this runs (both sides
    # of a migration must be the same binary and guest).
    global GODWIT, ELF
    bin_info = {'godwit': GODWIT, 'godwit_mtime': time.strftime(
        '%Y-%m-%dT%H:%M:%SZ', time.gmtime(os.path.getmtime(GODWIT))) if os.path.exists(GODWIT)
        else None,
        'guest_mtime': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(os.path.getmtime(ELF)))
        if os.path.exists(ELF) else None, 'git_head': benchlib.git_head()}
    GODWIT, ELF = benchlib.private_copies(d, [GODWIT, ELF], 'run make and make guest')
    res = {'bench': 'migrate', 'host': platform.node(),
           'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
           'transport': 'tcp over loopback (127.0.0.1)', 'report_ms': REPORT_MS,
           'guest': 'build/guest/godwit-guest.elf, 1 vCPU', 'qemu_machine': 'microvm',
           'qemu_version': subprocess.run([QEMU, '--version'], stdout=subprocess.PIPE,
                                          universal_newlines=True).stdout.splitlines()[0],
           'qemu_tuned': {'max-bandwidth': TUNED_BW, 'downtime-limit': TUNED_DOWNTIME_MS,
                          'multifd': True, 'multifd-channels': MULTIFD_CHANNELS},
           'godwit_params': 'defaults (unlimited bandwidth, downtime 50 ms, 30 rounds)',
           'binaries': bin_info, 'runs': a.runs, 'settle_s': a.settle, 'cases': {}}
    # Each godwit run's report and its timeline, beside the results (FILE-timelines/).
    tl_dir = os.path.splitext(a.out or os.path.join(ROOT, 'build', 'bench',
                                                    'migrate.json'))[0] + '-timelines'
    os.makedirs(tl_dir, exist_ok=True)
    if not a.no_limits:
        res['limits'] = benchlib.physical_limits()
    res['variants'] = {k: {'migrate_args': v[0], 'dst_args': v[1]} for k, v in VARIANTS.items()}
    t_start = time.monotonic()
    try:
        for name, mem, cmd, has_disk in CASES:
            if name not in want:
                continue
            mem_check(mem)
            img = None
            if has_disk:
                img = os.path.abspath(a.disk_image)
                made = disk_image(img)
                fs = os.statvfs(d)
                if fs.f_bavail * fs.f_frsize < DISK_SIZE + (1 << 30):
                    raise BenchError('less than %d GiB free in %s for the destination image' %
                                     ((DISK_SIZE >> 30) + 1, d))
                warm(img)
                res['disk'] = {'image': img, 'size': DISK_SIZE, 'data_mib': DISK_DATA_MIB,
                               'made_now': made, 'guest_range_mib': [0, DISK_GUEST_MIB],
                               'qemu': 'drive-mirror over NBD (nbd-server-add), then migrate, '
                                       'then block-job-cancel; -M pc + qboot, virtio-blk-pci',
                               'godwit': 'migrate --with-disks; destination --disk NEW.img'}
            load0 = loadavg()
            vmms = {'godwit': lambda: run_godwit(mem, cmd, d, a.timeout, a.settle, img),
                    'godwit-tls': lambda: run_godwit(mem, cmd, d, a.timeout, a.settle, img,
                                                     tls=True),
                    'qemu-tuned': lambda: run_qemu(mem, cmd, d, a.timeout, a.settle, 'tuned',
                                                   img),
                    'qemu-tuned-ac': lambda: run_qemu(mem, cmd, d, a.timeout, a.settle,
                                                      'tuned-ac', img),
                    'qemu-tuned-zstd': lambda: run_qemu(mem, cmd, d, a.timeout, a.settle,
                                                        'tuned-zstd', img),
                    'qemu-bw': lambda: run_qemu(mem, cmd, d, a.timeout, a.settle, 'bw', img),
                    'qemu-default': lambda: run_qemu(mem, cmd, d, a.timeout, a.settle,
                                                     'default', img)}
            for vn, (margs, dargs) in VARIANTS.items():
                vmms[vn] = (lambda margs=margs, dargs=dargs:
                            run_godwit(mem, cmd, d, a.timeout, a.settle, img,
                                       dst_args=dargs, mig_args=margs))
            vmm_want = (a.vmms.split(',') if a.vmms else
                        (LINE_RATE_VMMS if line_rate else CASE_VMMS).get(
                            name, CASE_VMMS.get(name, DEFAULT_VMMS))) + list(VARIANTS)
            for k in vmm_want:
                if k not in vmms:
                    raise BenchError('unknown VMM %r (VMMs: %s)' % (k, ', '.join(vmms)))
            order0 = [k for k in VMMS + list(VARIANTS) if k in vmm_want]
            raw = {k: [] for k in order0}
            fails = {k: [] for k in order0}
            for i in range(max(a.runs, druns)):
                n = len(order0)
                order = order0[i % n:] + order0[:i % n]
                for k in order:
                    if (k == 'qemu-default' and i >= druns) or \
                       (k != 'qemu-default' and i >= a.runs):
                        continue
                    if img:
                        os.sync()       # no writeback of an earlier run's data during this one
                    busy, waited = wait_quiet(a.quiet_wait, a.quiet_pct)
                    try:
                        r = vmms[k]()
                        if r.get('report') is not None:
                            r['timeline'] = write_timeline(
                                r.pop('report'), os.path.join(tl_dir, '%s-%s-run%d' %
                                                              (name, k, i + 1)))
                        r['busy_before_pct'], r['quiet_wait_s'] = busy, waited
                        r['cpu_ms_per_gib'] = cpu_per_gib(r)
                        raw[k].append(r)
                        sys.stderr.write(
                            '%s run %d %-12s total %7.0f ms, downtime %6.1f ms, guest stall '
                            '%6.1f ms, gap %6.1f ms, %7.1f MiB, %s rounds%s%s\n' %
                            (name, i + 1, k, r['total_ms'] if r['total_ms'] is not None else -1,
                             r['downtime_ms'] if r['downtime_ms'] is not None else -1,
                             r['guest_stall_ms'], r['line_gap_ms'], (r['bytes'] or 0) / 2**20,
                             r['rounds'],
                             ', disk %.1f MiB, guest wrote %s MiB/s, image %s' %
                             ((r.get('disk_bytes') or 0) / 2**20,
                              '%.1f' % r['disk_write_mib_s'] if r.get('disk_write_mib_s')
                              is not None else '-', r.get('image_cmp'))
                             if img else '',
                             '' if r['integrity']['ok'] else ' INTEGRITY ERRORS'))
                    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                        fails[k].append(str(e)[:2000])
                        sys.stderr.write('%s run %d %s: FAILED %s\n' % (name, i + 1, k, e))
                    sys.stderr.flush()
            c = {'mem': mem, 'cmdline': guest_cmd(cmd), 'disk': img, 'loadavg_before': load0,
                 'loadavg_after': loadavg(), 'vmm': {}}
            for k in order0:
                v = raw[k]
                e = {'ok': len(v), 'failed': len(fails[k]), 'failures': fails[k],
                     'integrity_ok': all(r['integrity']['ok'] for r in v)}
                for f in FIELDS:
                    e[f] = summary([r.get(f) for r in v])
                e['raw'] = v
                c['vmm'][k] = e
            qref = qemu_ref(c)
            g, q = c['vmm'].get('godwit'), c['vmm'].get(qref)
            if g and q and g['ok'] and q['ok']:
                def ratio(f):
                    if g[f] and q[f] and q[f]['median']:
                        return round(g[f]['median'] / q[f]['median'], 3)
                    return None
                c['qemu_ref'] = qref
                c['ratio_vs_qemu_tuned'] = {f: ratio(f) for f in
                                            ('total_ms', 'downtime_ms', 'guest_stall_ms',
                                             'cpu_ms_per_gib')}
            res['cases'][name] = c
    finally:
        shutil.rmtree(d, ignore_errors=True)
    res['elapsed_s'] = round(time.monotonic() - t_start, 1)

    # targets
    tg = []

    def target(what, val, limit):
        benchlib.target(tg, what, val, limit)
    for name, c in res['cases'].items():
        qn = qemu_ref(c)
        g, q = c['vmm'].get('godwit'), c['vmm'].get(qn)
        gm = (lambda f: g[f]['median'] if g and g.get(f) else None)
        qm = (lambda f: q[f]['median'] if q and q.get(f) else None)
        if name == '1G-idle':
            target('1G-idle godwit downtime (VMM) <= 10 ms', gm('downtime_ms'), 10)
            target('1G-idle godwit downtime (guest stall) <= 10 ms', gm('guest_stall_ms'), 10)
        # storage migration: "no larger downtime"; memory cases: half
        dk, dn = (1.0, '1.0') if c.get('disk') else (0.5, '0.5')
        target('%s downtime (VMM) <= %s x %s' % (name, dn, qn), gm('downtime_ms'),
               qm('downtime_ms') * dk if qm('downtime_ms') is not None else None)
        target('%s downtime (guest stall) <= %s x %s' % (name, dn, qn), gm('guest_stall_ms'),
               qm('guest_stall_ms') * dk if qm('guest_stall_ms') is not None else None)
        target('%s total time <= 0.5 x %s' % (name, qn), gm('total_ms'),
               qm('total_ms') * 0.5 if qm('total_ms') is not None else None)
        if name in CASE_GROUPS['line-rate']:
            # issue 15: round 1 at >= 2 GB/s (2e9 bytes/s), in MiB/s as printed
            benchlib.target(tg, '%s godwit round 1 MiB/s >= 2 GB/s' % name,
                            gm('round1_mib_s'), 2e9 / 2**20, at_least=True)
        t = c['vmm'].get('godwit-tls')
        tm = (lambda f: t[f]['median'] if t and t.get(f) else None)
        if t and g:
            target('%s godwit-tls total time <= 1.3 x godwit' % name, tm('total_ms'),
                   gm('total_ms') * 1.3 if gm('total_ms') is not None else None)
            target('%s godwit-tls downtime (VMM) <= godwit + 1 ms' % name, tm('downtime_ms'),
                   gm('downtime_ms') + 1 if gm('downtime_ms') is not None else None)
    res['targets'] = tg

    print('live migration over loopback TCP, test guest 1 vCPU, report=%d ms; '
          'medians (min-max) of the runs' % REPORT_MS)
    lim = res.get('limits') or {}
    if lim:
        print('this host: loopback TCP %s MiB/s (%s), memcpy %s MiB/s (%s)' %
              (lim.get('tcp_loopback_mib_s'), lim.get('tcp_how'), lim.get('memcpy_mib_s'),
               lim.get('memcpy_how')))
    hdr = ('%-11s %-12s %4s %19s %16s %16s %16s %14s %8s %6s %11s %6s %6s %8s %3s' %
           ('case', 'vmm', 'runs', 'total_ms', 'downtime_ms', 'guest_stall_ms', 'line_gap_ms',
            'pre/base_stall', 'MiB', 'rounds', 'cpu_s/d', 'other%', 'r1MiB/s', 'cpu/GiB',
            'ok'))
    print(hdr)
    ok = True
    for name, c in res['cases'].items():
        for k, v in c['vmm'].items():
            ok = ok and v['ok'] > 0 and not v['failed'] and v['integrity_ok']
            print('%-11s %-12s %2d/%d %19s %16s %16s %16s %14s %8s %6s %11s %6s %6s %8s %3s' %
                  (name, k, v['ok'], v['ok'] + v['failed'], fmt(v['total_ms']),
                   fmt(v['downtime_ms'], 1), fmt(v['guest_stall_ms'], 1),
                   fmt(v['line_gap_ms'], 1),
                   '%s/%s' % tuple('%.0f' % v[f]['median'] if v[f] else '-'
                                   for f in ('precopy_stall_ms', 'baseline_stall_ms')),
                   '%.1f' % (v['bytes']['median'] / 2**20) if v['bytes'] else '-',
                   '%g' % v['rounds']['median'] if v['rounds'] else '-',
                   '%s/%s' % tuple('%.0f' % v[f]['median'] if v[f] else '-'
                                   for f in ('cpu_src_vmm_ms', 'cpu_dst_vmm_ms')),
                   '%.0f' % v['others_pct']['median'] if v['others_pct'] else '-',
                   '%.0f' % v['round1_mib_s']['median'] if v['round1_mib_s'] else '-',
                   '%.0f' % v['cpu_ms_per_gib']['median'] if v['cpu_ms_per_gib'] else '-',
                   'yes' if v['integrity_ok'] and v['ok'] else 'NO'))
            for f in v['failures'][:2]:
                print('    %s failed: %s' % (k, f[:300]))
        if c.get('disk'):
            print('%-11s total_ms: from the start of the disk copy to the destination running '
                  '(godwit: its total_ms; QEMU: drive-mirror to `completed`, host clock)' % name)
            for k, v in c['vmm'].items():
                if not v['ok']:
                    continue
                print('%-11s %-12s disk %s MiB sent, guest wrote %s MiB/s during the migration '
                      '(%s before)%s; image %s' %
                      (name, k, fmt({x: y / 2**20 for x, y in v['disk_bytes'].items() if x != 'n'})
                       if v['disk_bytes'] else '-',
                       fmt(v['disk_write_mib_s'], 1), fmt(v['disk_write_mib_s_before'], 1),
                       ', mirror READY %s ms, RAM migrate %s ms' %
                       (fmt(v['mirror_ready_ms']), fmt(v['migrate_total_ms']))
                       if v['mirror_ready_ms'] else '',
                       ','.join(sorted(set(r.get('image_cmp', '?') for r in v['raw'])))))
        rt = c.get('ratio_vs_qemu_tuned')
        if rt:
            print('%-11s godwit/%s: total %s, downtime %s, guest stall %s, cpu per GiB %s' %
                  (name, c['qemu_ref'], rt['total_ms'], rt['downtime_ms'], rt['guest_stall_ms'],
                   rt['cpu_ms_per_gib']))
        print('%-11s host load average before %s, after %s' %
              (name, c['loadavg_before'], c['loadavg_after']))
    benchlib.print_targets(tg)
    print('elapsed %.0f s' % res['elapsed_s'])
    return benchlib.finish(res, a.out or os.path.join(ROOT, 'build', 'bench', 'migrate.json'), ok)


if __name__ == '__main__':
    sys.exit(main())
