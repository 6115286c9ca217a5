#!/usr/bin/env python3
"""bench/snapshot/snapshot.py - save a running test guest to a file and start
it again from that file, godwit beside QEMU, alternating runs; prints a table
and writes JSON.

  snapshot.py [--runs N] [--runs-4g N] [--default-runs N] [--dir DIR] [--out FILE]

Cases: 1 GiB and 4 GiB guests (1 vCPU, test guest), idle or with 512 MiB in use
(`workload=mem mem=512 rate=0`, filled before the save: the first `memtest:`
report is printed after the fill).

- godwit: `godwit run --api S`, then the wall time of `godwit snapshot --api S
  --out F` (returns once F is written, fdatasync()ed and renamed; godwit then
  exits). Restore: `godwit restore --from F` from process start until the
  guest prints a report line of its own, then `godwit shutdown`.
- qemu-tuned / qemu-default: `qemu -M microvm ... -qmp unix:Q`, QMP
  `migrate-set-parameters max-bandwidth` 10 GiB/s (tuned) or left at QEMU's
  default 128 MiB/s (default), `migrate exec:cat > F`, from the command to
  `query-migrate` saying `completed` (polled every 2 ms). QEMU does not sync
  the file; the column `+sync` adds the time of a `fdatasync()` of F done
  right after (what godwit's figure includes). Restore: the same command
  line with `-incoming "exec:cat F"`, from process start until a report.

- godwit-live (where `godwit snapshot --help` offers --live): `godwit snapshot
  --live --resume`: memory is written while the guest runs; the VM goes on
  afterwards, so the guest's own stall meter shows what the snapshot cost it:
  guest_stall_ms, the largest `stall_ms` of the memtest lines printed from the
  request until 3 lines after it returned (each line's stall_ms is the longest
  gap in its interval; report every 20 ms).  Target (issue 15): < 10 ms.
  baseline_stall_ms (JSON): the same over the 1 s before the request, the
  host's own noise.  The
  VM is shut down after that, then restored as above.
- godwit's own pause (vmm_pause_ms in the JSON) is from its reply.

Targets (issue 15, case 1G-mem512): godwit's save at most half of QEMU tuned's
save + fdatasync.

cpu_vmm_ms / cpu_ms_per_gib (table: cpu/GiB): CPU time of the saving VMM's
threads other than the vCPU's during the save, in all and per GiB of file (QEMU:
its process, not the `cat` it writes through); per GiB only for files of 64 MiB
or more.

Both write F in --dir (default /tmp, the same file system as /work here); the
file is in the page cache when it is restored (nothing is dropped).
"""
import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'bench', 'lib'))
import benchlib  # noqa: E402
from benchlib import BenchError, QMP, fmt, rm  # noqa: E402
GODWIT = os.environ.get('GODWIT', os.path.join(ROOT, 'build', 'godwit'))
QEMU = os.environ.get('QEMU', 'qemu-system-x86_64')
ELF = os.path.join(ROOT, 'build', 'guest', 'godwit-guest.elf')
REPORT_MS = 20
TUNED_BW = 10 << 30

CASES = [
    ('1G-idle', '1G', 'workload=idle'),
    ('1G-mem512', '1G', 'workload=mem mem=512 rate=0'),
    ('4G-idle', '4G', 'workload=idle'),
    ('4G-mem512', '4G', 'workload=mem mem=512 rate=0'),
]


class Console(benchlib.Drain):
    """Drains a process's stdout+stderr on a thread; wait_line() waits for a
    line that starts with one of the prefixes, from a given offset on."""

    def __init__(self, argv):
        self.buf = b''
        super().__init__(argv, subprocess.STDOUT)

    def _take(self, chunk, now):
        self.buf += chunk

    def wait_line(self, prefixes, timeout, start=0):
        """Time (monotonic) at which a complete line starting with a prefix
        showed up at or after offset start; raises BenchError otherwise."""
        pat = re.compile(b'(?:^|\n)(?:' + b'|'.join(re.escape(p.encode()) for p in prefixes) +
                         b')[^\n]*\n')
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                m = pat.search(self.buf, start)
                if m:
                    return time.monotonic(), m.group(0).strip().decode(errors='replace')
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise BenchError('no %s line (%s); output tail: %r' %
                                     ('/'.join(prefixes), 'exited' if self.eof else 'timeout',
                                      self.buf[-600:].decode(errors='replace')))
                self.cv.wait(min(left, 0.5))

    def stop(self, timeout=10):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.th.join(timeout=2)


def kill(con):
    if con and con.p.poll() is None:
        con.p.kill()
        con.p.wait()


def report_prefix(cmd):
    return ['idle: t='] if 'workload=idle' in cmd else ['memtest: t=']


def guest_cmd(cmd):
    return '%s report=%d' % (cmd, REPORT_MS)


# ---- godwit ---------------------------------------------------------------

STALL_RE = re.compile(rb'memtest: t=[0-9.]+ [^\n]* stall_ms=([0-9.]+)')


def run_godwit(mem, cmd, d, tmo, live=False):
    api, api2, snap = (os.path.join(d, n) for n in ('gw.sock', 'gw2.sock', 'gw.snap'))
    rm(api, api2, snap)
    pref = report_prefix(cmd)
    src = dst = None
    try:
        src = Console([GODWIT, 'run', '--api', api, '--snapshot-dir', d, '--mem', mem, '--cpus', '1',
                       '--cpu-model', 'host', '--kernel', ELF, '--cmdline', guest_cmd(cmd)])
        src.wait_line(pref, tmo)
        base = None
        if live:
            # 1 s of the guest running before: the host's own noise in its stall meter
            with src.cv:
                offb = len(src.buf)
            time.sleep(1.0)
            with src.cv:
                st = [float(x) for x in STALL_RE.findall(src.buf[offb:])]
            base = max(st) if st else None
        with src.cv:
            off0 = len(src.buf)
        cm = benchlib.CpuMeter(src.p.pid)
        cm.start()
        t0 = time.monotonic()
        r = subprocess.run([GODWIT, 'snapshot', '--api', api, '--out', snap] +
                           (['--live', '--resume'] if live else []),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=tmo)
        save = time.monotonic() - t0
        cpu = cm.stop()
        out = r.stdout.decode(errors='replace')
        if r.returncode != 0:
            raise BenchError('godwit snapshot exited %d: %s' % (r.returncode, out.strip()))
        # "paused X ms" (the vCPUs stopped; with --live only the last pass), else the whole time
        m = re.search(r'paused ([0-9.]+) ms', out) or re.search(r' in ([0-9.]+) ms', out)
        stall = None
        if live:
            # the guest goes on: 3 more report lines, then its stalls since the request
            with src.cv:
                off1 = len(src.buf)
            for _ in range(3):
                _, ln = src.wait_line(pref, tmo, off1)
                with src.cv:
                    off1 = src.buf.index(ln.encode(), off1) + len(ln)
            with src.cv:
                seen = src.buf[off0:]
            st = [float(x) for x in STALL_RE.findall(seen)]
            if b'memtest: ERROR' in seen or \
                    any(int(x) for x in re.findall(rb'memtest: t=[^\n]* errors=(\d+)', seen)):
                raise BenchError('the guest found memory errors after a live snapshot')
            stall = max(st) if st else None
            subprocess.run([GODWIT, 'shutdown', '--api', api], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=tmo)
        src.stop(tmo)
        size = os.path.getsize(snap)
        dst = Console([GODWIT, 'restore', '--from', snap, '--api', api2])
        t1, line = dst.wait_line(pref, tmo)
        restore = t1 - dst.t0
        r = subprocess.run([GODWIT, 'shutdown', '--api', api2], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=tmo)
        dst.stop(tmo)
        return {'save_ms': save * 1000, 'restore_ms': restore * 1000, 'size': size,
                'vmm_pause_ms': float(m.group(1)) if m else None, 'first_line': line,
                'guest_stall_ms': stall, 'baseline_stall_ms': base, 'reply': out.strip()[-400:],
                'cpu_vmm_ms': cpu[0],
                'cpu_ms_per_gib': cpu[0] / (size / 2**30) if size >= 64 << 20 else None}
    finally:
        kill(src)
        kill(dst)
        rm(api, api2, snap)


# ---- QEMU -----------------------------------------------------------------

def qemu_argv(mem, cmd, extra):
    # debug-threads: the vCPU thread is named `CPU 0/KVM` (CpuMeter leaves it out)
    return [QEMU, '-name', 'bench,debug-threads=on', '-M', 'microvm', '-enable-kvm',
            '-cpu', 'host,-arch-capabilities',
            '-m', mem, '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
            '-serial', 'stdio', '-kernel', ELF, '-append', guest_cmd(cmd)] + extra


def run_qemu(mem, cmd, d, tmo, tuned):
    qs, snap = os.path.join(d, 'q.qmp'), os.path.join(d, 'q.snap')
    rm(qs, snap)
    pref = report_prefix(cmd)
    src = dst = None
    qmp = None
    try:
        src = Console(qemu_argv(mem, cmd, ['-qmp', 'unix:%s,server=on,wait=off' % qs]))
        src.wait_line(pref, tmo)
        qmp = QMP(qs, tmo)
        if tuned:
            qmp.cmd('migrate-set-parameters', **{'max-bandwidth': TUNED_BW})
        cm = benchlib.CpuMeter(src.p.pid)
        cm.start()
        t0 = time.monotonic()
        qmp.cmd('migrate', uri='exec:cat > %s' % snap)
        while True:
            st = qmp.cmd('query-migrate')
            if st.get('status') == 'completed':
                break
            if st.get('status') in ('failed', 'cancelled') or time.monotonic() - t0 > tmo:
                raise BenchError('QEMU migrate: %s' % st)
            time.sleep(0.002)
        save = time.monotonic() - t0
        # QEMU reports completed once the stream is written to the pipe;
        # wait for cat to have written all of it before syncing and sizing.
        prev, stable = -1, 0
        while stable < 3 and time.monotonic() - t0 < tmo:
            cur = os.path.getsize(snap)
            stable = stable + 1 if cur == prev else 0
            prev = cur
            time.sleep(0.005)
        t1 = time.monotonic()
        fd = os.open(snap, os.O_RDONLY)
        os.fdatasync(fd)
        os.close(fd)
        sync = time.monotonic() - t1
        cpu = cm.stop()
        qmp.cmd('quit')
        qmp.close()
        qmp = None
        src.stop(tmo)
        size = os.path.getsize(snap)
        dst = Console(qemu_argv(mem, cmd, ['-incoming', 'exec:cat %s' % snap]))
        t2, line = dst.wait_line(pref, tmo)
        restore = t2 - dst.t0
        dst.p.kill()
        dst.stop(tmo)
        return {'save_ms': save * 1000, 'save_sync_ms': (save + sync) * 1000,
                'restore_ms': restore * 1000, 'size': size,
                'vmm_total_ms': st.get('total-time'), 'vmm_downtime_ms': st.get('downtime'),
                'first_line': line, 'cpu_vmm_ms': cpu[0],
                'cpu_ms_per_gib': cpu[0] / (size / 2**30) if size >= 64 << 20 else None}
    finally:
        if qmp:
            qmp.close()
        kill(src)
        kill(dst)
        rm(qs, snap)


# ---- main -----------------------------------------------------------------

def summary(vals):
    return benchlib.summary(vals, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', type=int, default=3, help='alternating runs per 1 GiB case')
    ap.add_argument('--runs-4g', type=int, default=3, help='alternating runs per 4 GiB case')
    ap.add_argument('--default-runs', type=int, default=1,
                    help='runs of QEMU with its default bandwidth per case (0: none)')
    ap.add_argument('--cases', default=','.join(c[0] for c in CASES))
    ap.add_argument('--dir', default='/tmp')
    ap.add_argument('--out', default=None)
    ap.add_argument('--timeout', type=float, default=90)
    ap.add_argument('--vmms', default=None,
                    help='default: godwit,qemu-tuned, and godwit-live where offered')
    a = ap.parse_args()
    r = subprocess.run([GODWIT, 'snapshot', '--help'], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=10)
    main_vmms = a.vmms.split(',') if a.vmms else \
        ['godwit', 'qemu-tuned'] + (['godwit-live'] if '--live' in r.stdout else [])
    want = a.cases.split(',')
    d = os.path.join(a.dir, 'gw-bench-snapshot.%d' % os.getpid())
    os.makedirs(d)
    res = {'bench': 'snapshot', 'host': platform.node(),
           'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
           'dir': a.dir, 'report_ms': REPORT_MS, 'qemu_tuned_bandwidth': TUNED_BW,
           'cases': {}}
    t_start = time.monotonic()
    try:
        for name, mem, cmd in CASES:
            if name not in want:
                continue
            runs = a.runs_4g if mem == '4G' else a.runs
            vmms = {'godwit': lambda: run_godwit(mem, cmd, d, a.timeout),
                    'godwit-live': lambda: run_godwit(mem, cmd, d, a.timeout, live=True),
                    'qemu-tuned': lambda: run_qemu(mem, cmd, d, a.timeout, True),
                    'qemu-default': lambda: run_qemu(mem, cmd, d, a.timeout, False)}
            raw = {k: [] for k in vmms}
            fails = {k: 0 for k in vmms}
            for i in range(runs):
                order = main_vmms[i % len(main_vmms):] + main_vmms[:i % len(main_vmms)]
                if i < a.default_runs:
                    order.append('qemu-default')
                for k in order:
                    try:
                        r = vmms[k]()
                        raw[k].append(r)
                        sys.stderr.write('%s run %d %s: save %.0f ms, restore %.0f ms, %.1f MiB\n' %
                                         (name, i + 1, k, r['save_ms'], r['restore_ms'],
                                          r['size'] / 2**20))
                    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                        fails[k] += 1
                        sys.stderr.write('%s run %d %s: FAILED %s\n' % (name, i + 1, k, e))
                    sys.stderr.flush()
            c = {'mem': mem, 'cmdline': guest_cmd(cmd), 'runs': runs, 'vmm': {}}
            for k, v in raw.items():
                if not v and not fails[k]:
                    continue
                c['vmm'][k] = {
                    'ok': len(v), 'failed': fails[k],
                    'save_ms': summary([r['save_ms'] for r in v]),
                    'save_sync_ms': summary([r.get('save_sync_ms', r['save_ms']) for r in v]),
                    'restore_ms': summary([r['restore_ms'] for r in v]),
                    'size_mib': summary([r['size'] / 2**20 for r in v]),
                    'guest_stall_ms': summary([r.get('guest_stall_ms') for r in v]),
                    'vmm_pause_ms': summary([r.get('vmm_pause_ms') for r in v]),
                    'baseline_stall_ms': summary([r.get('baseline_stall_ms') for r in v]),
                    'cpu_vmm_ms': summary([r.get('cpu_vmm_ms') for r in v]),
                    'cpu_ms_per_gib': summary([r.get('cpu_ms_per_gib') for r in v]),
                    'raw': v}
            g, q = c['vmm'].get('godwit'), c['vmm'].get('qemu-tuned')
            if g and q and g['ok'] and q['ok']:
                c['ratio_save'] = round(g['save_ms']['median'] / q['save_ms']['median'], 3)
                c['ratio_save_sync'] = round(g['save_ms']['median'] /
                                             q['save_sync_ms']['median'], 3)
                c['ratio_restore'] = round(g['restore_ms']['median'] /
                                           q['restore_ms']['median'], 3)
            lv = c['vmm'].get('godwit-live')
            if lv and q and lv['ok'] and q['ok']:
                c['ratio_live_save_sync'] = round(lv['save_ms']['median'] /
                                                  q['save_sync_ms']['median'], 3)
            res['cases'][name] = c
    finally:
        shutil.rmtree(d, ignore_errors=True)
    res['elapsed_s'] = round(time.monotonic() - t_start, 1)

    print('snapshot save / restore, test guest 1 vCPU, files in %s, medians (min-max) in ms'
          % a.dir)
    print('%-10s %-13s %4s %20s %20s %20s %9s %20s %8s' %
          ('case', 'vmm', 'runs', 'save', 'save+sync', 'restore', 'size_MiB', 'guest_stall',
           'cpu/GiB'))
    ok = True
    tg = []
    for name, c in res['cases'].items():
        for k, v in c['vmm'].items():
            ok = ok and v['ok'] > 0 and not v['failed']
            print('%-10s %-13s %2d/%d %20s %20s %20s %9s %20s %8s' %
                  (name, k, v['ok'], v['ok'] + v['failed'], fmt(v['save_ms']),
                   fmt(v['save_sync_ms']), fmt(v['restore_ms']),
                   '%.1f' % v['size_mib']['median'] if v['size_mib'] else '-',
                   fmt(v['guest_stall_ms'], 1),
                   '%.0f' % v['cpu_ms_per_gib']['median'] if v['cpu_ms_per_gib'] else '-'))
        if 'ratio_save' in c:
            print('%-10s godwit/qemu-tuned: save %.2f, save vs save+sync %.2f, restore %.2f '
                  '(target <= 0.5)' % (name, c['ratio_save'], c['ratio_save_sync'],
                                       c['ratio_restore']))
        if 'ratio_live_save_sync' in c:
            print('%-10s godwit-live save vs qemu-tuned save+sync %.2f' %
                  (name, c['ratio_live_save_sync']))
        if name == '1G-mem512':
            g, q, lv = (c['vmm'].get(k) for k in ('godwit', 'qemu-tuned', 'godwit-live'))
            qs = q['save_sync_ms']['median'] if q and q['save_sync_ms'] else None
            if g and g['save_ms']:
                benchlib.target(tg, '1G-mem512 godwit save <= 0.5 x qemu-tuned save+sync',
                                g['save_ms']['median'], qs * 0.5 if qs else None)
            if lv and lv['guest_stall_ms']:
                benchlib.target(tg, '1G-mem512 godwit-live save <= 0.5 x qemu save+sync',
                                lv['save_ms']['median'], qs * 0.5 if qs else None)
                benchlib.target(tg, '1G-mem512 godwit-live guest stall (median) < 10 ms',
                                lv['guest_stall_ms']['median'], 10)
                benchlib.target(tg, '1G-mem512 godwit-live guest stall (max) < 10 ms',
                                lv['guest_stall_ms']['max'], 10)
    res['targets'] = tg
    if tg:
        benchlib.print_targets(tg)
    print('elapsed %.0f s' % res['elapsed_s'])
    return benchlib.finish(res, a.out or os.path.join(ROOT, 'build', 'bench', 'snapshot.json'),
                           ok)


if __name__ == '__main__':
    sys.exit(main())
