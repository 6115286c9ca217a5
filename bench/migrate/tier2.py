#!/usr/bin/env python3
"""bench/migrate/tier2.py - tier 2: live migration of the Linux test guest inside
the emulated SVM host (tests/hwhost), godwit beside QEMU tuned, alternating runs;
prints a table and writes JSON.  Run by bench/migrate/tier2.sh through
tests/hwhost/run.sh (`make bench-migrate-tier2`); also runs directly on a host
whose /dev/kvm boots Linux.

  tier2.py [--runs N] [--vmms godwit,qemu-tuned] [--base BIN] [--out FILE]
           [--timeout S] [--settle S] [--mem-mib M] [--rate R]

The scenario (issue 15): the Linux guest (build/linux: Debian's cloud kernel and
guest/linux/init), 2 vCPUs, 512 MiB, `godwit.workload=mem godwit.mem=256
godwit.rate=30`: memtest (guest/linux/memtest.c, one thread) fills 256 MiB, then
rewrites it at 30 MiB/s and verifies it, one `memtest: t=` line a second.  The
migration starts --settle s (default 3) after the first such line, over TCP on
127.0.0.1.

- godwit: destination `godwit run --incoming tcp:127.0.0.1:PORT --api S2`, source
  `godwit run --kernel --initrd --cpus 2 --mem 512M --api S`, then `godwit
  migrate --api S --to tcp:... --json` with its defaults (unlimited bandwidth,
  downtime limit 50 ms).  Figures from its JSON: total_ms, downtime_ms, bytes,
  rounds; its per-round history goes to OUT-runs/godwit-runN.json (`godwit report`
  reads it).
- qemu-tuned: `qemu -M pc -bios qboot.rom -cpu host -smp 2 -m 512M`, same kernel,
  initramfs and command line; QMP on both; multifd with 2 channels on both sides
  (the destination `-incoming defer`), max-bandwidth 100 GiB/s, downtime-limit
  50 ms; `query-migrate` every 10 ms until completed: total-time, downtime,
  ram.transferred, ram.dirty-sync-count (rounds).

- godwit-base (with --base BIN): godwit as above with another binary, e.g. an
  older commit's, in the same alternation (before/after figures).

Per run also: guest_stall_ms, the guest's own stall (memtest's stall_ms, the
longest gap between its clock reads) in the destination's first two report lines,
i.e. the downtime the guest saw (both VMMs keep the guest's clock running);
cpu_src_ms / cpu_dst_ms, the CPU time of each VMM's threads other than its vCPUs
from the migration request to its end (process time from /proc/PID/stat, which
keeps exited threads' time, and the godwit source's rusage when it exits, minus the
vCPU threads' time, sampled every 0.1 s); and memory integrity: memtest errors on
the destination fail the run.  A run that fails (guest not up, migration failed)
is retried once; the table shows medians with min-max of the runs that worked.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import migrate as mb   # noqa: E402  (bench/migrate/migrate.py: Console, QMP, memtests, ...)

ROOT = mb.ROOT
GODWIT = mb.GODWIT
QEMU = mb.QEMU
KERNEL = os.path.join(ROOT, 'build', 'linux', 'vmlinuz')
INITRD = os.path.join(ROOT, 'build', 'linux', 'initramfs.cpio.gz')
VMMS = ['godwit', 'qemu-tuned']
CLK_TCK = os.sysconf('SC_CLK_TCK')


def proc_ticks(pid):
    """(process utime+stime ticks, {tid: ticks} of its vCPU threads), or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            st = f.read()
        f = st[st.rindex(')') + 2:].split()
        total = int(f[11]) + int(f[12])
        vc = {}
        for tid in os.listdir('/proc/%d/task' % pid):
            try:
                with open('/proc/%d/task/%s/stat' % (pid, tid)) as g:
                    s = g.read()
            except OSError:
                continue
            if mb.VCPU_COMM.match(s[s.index('(') + 1:s.rindex(')')]):
                g = s[s.rindex(')') + 2:].split()
                vc[tid] = int(g[11]) + int(g[12])
        return total, vc
    except (OSError, ValueError):
        return None


class Meter:
    """CPU time of a VMM process's non-vCPU threads between start() and stop()."""

    def __init__(self, pid):
        self.pid = pid
        self.base = proc_ticks(pid)
        self.last = self.base
        self.ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.ev.wait(0.1):
            s = proc_ticks(self.pid)
            if s is None:
                return
            self.last = s

    def stop(self, total_ticks=None):
        """total_ticks: the process's whole time if it exited (rusage)."""
        self.ev.set()
        self.th.join(timeout=2)
        s = proc_ticks(self.pid)
        if s is not None:
            self.last = s
        if not self.base or not self.last:
            return None
        total = (total_ticks if total_ticks is not None else self.last[0]) - self.base[0]
        vcpu = sum(t - self.base[1].get(tid, 0) for tid, t in self.last[1].items())
        return max(0, total - vcpu) * 1000.0 / CLK_TCK


def guest_cmdline(a):
    return ('console=ttyS0 quiet panic=-1 godwit.workload=mem godwit.mem=%d godwit.rate=%d '
            'godwit.runtime=%d' % (a.mem_mib, a.rate, a.runtime))


def wait_ready(con, a):
    con.wait(mb.first_memtest, a.timeout, 'no memtest: line from the guest')
    time.sleep(a.settle)


def dst_figures(src, dst, t0, a):
    dst.wait(lambda ls: len(mb.memtests(ls)) >= 3, a.timeout,
             'destination printed fewer than 3 report lines')
    r = mb.console_figures(src.snapshot(), dst.snapshot(), t0, a.settle)
    if not r['integrity']['ok']:
        raise mb.BenchError('memory integrity: %s' % json.dumps(r['integrity']))
    return r


def run_godwit(d, a, n, godwit=None, tag='godwit'):
    godwit = godwit or GODWIT
    api, api2 = os.path.join(d, 'src.sock'), os.path.join(d, 'dst.sock')
    mb.rm(api, api2)
    addr = 'tcp:127.0.0.1:%d' % mb.free_port()
    src = dst = None
    try:
        dst = mb.Console([godwit, 'run', '--incoming', addr, '--api', api2],
                         os.path.join(d, 'dst.err'))
        deadline = time.monotonic() + a.timeout
        while b'waiting for an incoming migration' not in dst.stderr_tail(4096).encode():
            if dst.p.poll() is not None or time.monotonic() > deadline:
                raise mb.BenchError('godwit destination did not start: %s' % dst.stderr_tail())
            time.sleep(0.05)
        src = mb.Console([godwit, 'run', '--api', api, '--mem', '512M', '--cpus', '2',
                          '--kernel', KERNEL, '--initrd', INITRD, '--cmdline', guest_cmdline(a)],
                         os.path.join(d, 'src.err'))
        wait_ready(src, a)
        ms, md = Meter(src.p.pid), Meter(dst.p.pid)
        t0 = time.monotonic()
        r = subprocess.run([godwit, 'migrate', '--api', api, '--to', addr, '--json'],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=a.timeout)
        out = r.stdout.decode(errors='replace').strip()
        try:
            j = json.loads(out.splitlines()[-1]) if out else {}
        except ValueError:
            j = {}
        if r.returncode != 0 or j.get('status') != 'completed':
            raise mb.BenchError('godwit migrate exited %d: %s %s' %
                                (r.returncode, out[-300:],
                                 r.stderr.decode(errors='replace').strip()[-300:]))
        # The source exits once the destination runs: its rusage has every thread's time.
        src_total = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(src.p.pid, os.WNOHANG)
            if pid:
                src.p.returncode = os.waitstatus_to_exitcode(status)
                src_total = round((ru.ru_utime + ru.ru_stime) * CLK_TCK)
                break
            time.sleep(0.05)
        res = {'total_ms': j.get('total_ms'), 'downtime_ms': j.get('downtime_ms'),
               'bytes': j.get('bytes'), 'rounds': j.get('rounds'),
               'converged': j.get('converged'), 'src_exit': src.p.returncode,
               'cpu_src_ms': ms.stop(src_total), 'cpu_dst_ms': md.stop()}
        with open(os.path.join(a.rundir, '%s-run%d.json' % (tag, n)), 'w') as f:
            json.dump(j, f)
        res.update(dst_figures(src, dst, t0, a))
        subprocess.run([godwit, 'shutdown', '--api', api2], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        dst.stop(10)
        return res
    finally:
        mb.kill(src)
        mb.kill(dst)
        mb.rm(api, api2)


def qemu_argv(a, extra):
    return [QEMU, '-name', 'bench,debug-threads=on', '-M', 'pc', '-bios', mb.QBOOT,
            '-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', '2', '-nodefaults',
            '-no-user-config', '-display', 'none', '-serial', 'stdio', '-kernel', KERNEL,
            '-initrd', INITRD, '-append', guest_cmdline(a)] + extra


def run_qemu(d, a, n):
    sq, dq = os.path.join(d, 'src.qmp'), os.path.join(d, 'dst.qmp')
    mb.rm(sq, dq)
    uri = 'tcp:127.0.0.1:%d' % mb.free_port()
    src = dst = sqmp = dqmp = None
    caps = [{'capability': 'multifd', 'state': True}]
    try:
        dst = mb.Console(qemu_argv(a, ['-qmp', 'unix:%s,server=on,wait=off' % dq,
                                       '-incoming', 'defer']), os.path.join(d, 'dst.err'))
        dqmp = mb.QMP(dq, a.timeout)
        dqmp.cmd('migrate-set-capabilities', capabilities=caps)
        dqmp.cmd('migrate-set-parameters', **{'multifd-channels': mb.MULTIFD_CHANNELS})
        dqmp.cmd('migrate-incoming', uri=uri)
        src = mb.Console(qemu_argv(a, ['-qmp', 'unix:%s,server=on,wait=off' % sq]),
                         os.path.join(d, 'src.err'))
        sqmp = mb.QMP(sq, a.timeout)
        sqmp.cmd('migrate-set-capabilities', capabilities=caps)
        sqmp.cmd('migrate-set-parameters', **{'multifd-channels': mb.MULTIFD_CHANNELS,
                                              'max-bandwidth': mb.TUNED_BW,
                                              'downtime-limit': mb.TUNED_DOWNTIME_MS})
        wait_ready(src, a)
        ms, md = Meter(src.p.pid), Meter(dst.p.pid)
        t0 = time.monotonic()
        sqmp.cmd('migrate', uri=uri)
        while True:
            st = sqmp.cmd('query-migrate')
            if st.get('status') == 'completed':
                break
            if st.get('status') in ('failed', 'cancelled') or time.monotonic() - t0 > a.timeout:
                raise mb.BenchError('QEMU migrate: %s' % json.dumps(st)[:400])
            time.sleep(0.01)
        ram = st.get('ram', {})
        res = {'total_ms': st.get('total-time'), 'downtime_ms': st.get('downtime'),
               'bytes': ram.get('transferred'), 'rounds': ram.get('dirty-sync-count'),
               'cpu_src_ms': ms.stop(), 'cpu_dst_ms': md.stop()}
        res.update(dst_figures(src, dst, t0, a))
        for q in (sqmp, dqmp):
            try:
                q.cmd('quit')
            except (mb.BenchError, OSError):
                pass
        src.stop(10)
        dst.stop(10)
        return res
    finally:
        for q in (sqmp, dqmp):
            if q:
                q.close()
        mb.kill(src)
        mb.kill(dst)
        mb.rm(sq, dq)


FIELDS = [('total_ms', 'total', 0), ('downtime_ms', 'downtime', 0),
          ('guest_stall_ms', 'stall', 0), ('rounds', 'rounds', 0),
          ('bytes', 'MiB', 1), ('cpu_src_ms', 'cpu_src', 0), ('cpu_dst_ms', 'cpu_dst', 0)]


def main():
    global GODWIT, KERNEL, INITRD
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--vmms', default=','.join(VMMS))
    ap.add_argument('--out', default=os.path.join(ROOT, 'build', 'bench', 'migrate-tier2.json'))
    ap.add_argument('--timeout', type=float, default=180)
    ap.add_argument('--settle', type=float, default=3)
    ap.add_argument('--mem-mib', type=int, default=256)
    ap.add_argument('--rate', type=int, default=30)
    ap.add_argument('--runtime', type=int, default=900)
    ap.add_argument('--base', default=os.environ.get('GODWIT_BASE'),
                    help='another godwit binary (e.g. an older commit\'s), run as godwit-base '
                    'in the same alternation: before/after figures (env GODWIT_BASE)')
    a = ap.parse_args()
    vmms = a.vmms.split(',')
    if a.base:
        vmms.append('godwit-base')
    for v in vmms:
        if v not in VMMS + ['godwit-base']:
            ap.error('unknown VMM %s (%s)' % (v, ', '.join(VMMS)))
    for f in (KERNEL, INITRD):
        if not os.path.exists(f):
            sys.exit('tier2.py: no %s (make linux-guest)' % f)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    a.rundir = os.path.splitext(a.out)[0] + '-runs'
    os.makedirs(a.rundir, exist_ok=True)
    d = os.environ.get('SCRATCH') or os.path.join(ROOT, 'build', 'bench')
    # Private copies: others may rebuild build/ while this runs.
    pd = os.path.join(d, 'tier2-bin')
    os.makedirs(pd, exist_ok=True)
    GODWIT, KERNEL, INITRD = mb.benchlib.private_copies(pd, [GODWIT, KERNEL, INITRD])
    if a.base:
        base = os.path.join(pd, 'godwit-base')
        shutil.copy2(a.base, base)
    fns = {'godwit': run_godwit, 'qemu-tuned': run_qemu}
    if a.base:
        fns['godwit-base'] = lambda d_, a_, n_: run_godwit(d_, a_, n_, base, 'godwit-base')
    runs = {v: [] for v in vmms}
    fails = {v: [] for v in vmms}
    for i in range(a.runs):
        order = vmms if i % 2 == 0 else list(reversed(vmms))
        for v in order:
            for attempt in (1, 2):
                t = time.monotonic()
                try:
                    r = fns[v](d, a, i + 1)
                except (mb.BenchError, subprocess.TimeoutExpired, OSError) as e:
                    fails[v].append('run %d attempt %d: %s' % (i + 1, attempt, str(e)[:600]))
                    sys.stderr.write('run %d %s attempt %d failed: %s\n' % (i + 1, v, attempt, e))
                    continue
                r['load'] = mb.loadavg()
                r['run_s'] = round(time.monotonic() - t, 1)
                runs[v].append(r)
                sys.stderr.write('run %d %s: total %s ms, downtime %s ms, stall %.1f ms, rounds %s, '
                                 '%.1f MiB, cpu src %s dst %s ms (load %s)\n' %
                                 (i + 1, v, r['total_ms'], r['downtime_ms'], r['guest_stall_ms'],
                                  r['rounds'], (r['bytes'] or 0) / 2**20, r['cpu_src_ms'],
                                  r['cpu_dst_ms'], r['load']))
                sys.stderr.flush()
                break
    res = {'bench': 'migrate-tier2', 'runs': a.runs, 'host': platform.node(),
           'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
           'commit': mb.benchlib.git_head(),
           'scenario': {'guest': 'linux', 'cpus': 2, 'mem': '512M', 'cmdline': guest_cmdline(a),
                        'settle_s': a.settle},
           'qemu': {'multifd-channels': mb.MULTIFD_CHANNELS, 'max-bandwidth': mb.TUNED_BW,
                    'downtime-limit': mb.TUNED_DOWNTIME_MS},
           'results': {}}
    print('tier 2 migration: Linux guest, 2 vCPUs, 512 MiB, %d MiB rewritten at %d MiB/s; '
          '%d alternating runs; median (min-max)' % (a.mem_mib, a.rate, a.runs))
    print('%-11s' % 'vmm' + ''.join('%22s' % h for _, h, _ in FIELDS) + '  ok')
    for v in vmms:
        s = {}
        for k, _, _ in FIELDS:
            vals = [x[k] / (2**20 if k == 'bytes' else 1) for x in runs[v] if x.get(k) is not None]
            s[k] = mb.summary(vals)
        res['results'][v] = {'summary': s, 'runs': runs[v], 'failures': fails[v]}
        print('%-11s' % v + ''.join('%22s' % mb.fmt(s[k], p) for k, _, p in FIELDS) +
              '  %d/%d' % (len(runs[v]), a.runs))
    r = res['results']
    for v in [x for x in ('godwit', 'godwit-base') if x in r]:
        if not (r[v]['runs'] and 'qemu-tuned' in r and r['qemu-tuned']['runs']):
            continue
        g, q = r[v]['summary'], r['qemu-tuned']['summary']
        rat = {k: round(g[k]['median'] / q[k]['median'], 3)
               for k in ('total_ms', 'downtime_ms', 'guest_stall_ms', 'cpu_src_ms', 'cpu_dst_ms')
               if g.get(k) and q.get(k) and q[k]['median']}
        res['ratios' if v == 'godwit' else 'ratios_base'] = rat
        print('%s/qemu-tuned medians: ' % v + ', '.join('%s %.2f' % (k, x) for k, x in rat.items()) +
              (' (targets: total and downtime <= 1)' if v == 'godwit' else ''))
    for v in vmms:
        for f in fails[v]:
            print('%s failed %s' % (v, f))
    with open(a.out, 'w') as f:
        json.dump(res, f, indent=2)
    print('result: %s (godwit round histories: %s)' % (a.out, a.rundir))
    return 0 if all(len(runs[v]) == a.runs for v in vmms) else 1


if __name__ == '__main__':
    sys.exit(main())
