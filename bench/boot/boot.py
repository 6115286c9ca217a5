#!/usr/bin/env python3
"""bench/boot/boot.py - time from process start to the guest's first workload
report, godwit beside QEMU, alternating runs; prints a table and writes JSON.

  boot.py --tier 1 [--runs N] [--out FILE]   test guest: godwit vs qemu -M microvm (PVH)
  boot.py --tier 2 [--runs N] [--out FILE]   Linux guest: godwit vs qemu -M pc (same kernel)
"""
import argparse
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'bench', 'lib'))
import benchlib  # noqa: E402
GODWIT = os.environ.get('GODWIT', os.path.join(ROOT, 'build', 'godwit'))
QEMU = os.environ.get('QEMU', 'qemu-system-x86_64')


def configs(tier):
    if tier == 1:
        elf = os.path.join(ROOT, 'build', 'guest', 'godwit-guest.elf')
        cmd = 'workload=mem mem=8 rate=0 runtime=0 report=1000'
        return 'memtest: t=', {
            'godwit': [GODWIT, 'run', '--kernel', elf, '--mem', '256M', '--cpus', '1',
                       '--cpu-model', 'host', '--cmdline', cmd],
            'qemu-microvm': [QEMU, '-M', 'microvm', '-enable-kvm', '-cpu', 'host,-arch-capabilities', '-m', '256M',
                             '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
                             '-serial', 'stdio', '-kernel', elf, '-append', cmd],
        }
    kernel = os.path.join(ROOT, 'build', 'linux', 'vmlinuz')
    initrd = os.path.join(ROOT, 'build', 'linux', 'initramfs.cpio.gz')
    cmd = 'console=ttyS0 quiet panic=-1 godwit.workload=mem godwit.mem=32 godwit.runtime=30'
    return 'memtest: t=', {
        'godwit': [GODWIT, 'run', '--kernel', kernel, '--initrd', initrd, '--mem', '512M',
                   '--cpus', '2', '--cmdline', cmd],
        'qemu-pc-qboot': [QEMU, '-M', 'pc', '-enable-kvm', '-cpu', 'host', '-m', '512M',
                          '-smp', '2', '-bios', '/usr/share/qemu/qboot.rom',
                          '-nodefaults', '-no-user-config', '-display', 'none',
                          '-serial', 'stdio', '-kernel', kernel, '-initrd', initrd,
                          '-append', cmd],
        'qemu-pc': [QEMU, '-M', 'pc', '-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', '2',
                    '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio',
                    '-kernel', kernel, '-initrd', initrd, '-append', cmd],
    }


def time_one(argv, pattern, timeout):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    buf = b''
    found = None
    while time.monotonic() - t0 < timeout:
        if not sel.select(timeout=0.05):
            if p.poll() is not None:
                break
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        if pattern.encode() in buf:
            found = time.monotonic() - t0
            break
    p.kill()
    p.wait()
    if found is None:
        sys.stderr.write('no "%s" from %s; output tail:\n%s\n' %
                         (pattern, argv[0], buf[-1000:].decode(errors='replace')))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tier', type=int, choices=(1, 2), default=1)
    ap.add_argument('--runs', type=int, default=7)
    ap.add_argument('--out', default=None)
    ap.add_argument('--timeout', type=float, default=None)
    a = ap.parse_args()
    timeout = a.timeout or (30 if a.tier == 1 else 90)
    pattern, cfgs = configs(a.tier)
    times = {k: [] for k in cfgs}
    for i in range(a.runs):
        # Alternate the order each run so drift hits both sides alike.
        order = list(cfgs) if i % 2 == 0 else list(reversed(list(cfgs)))
        for k in order:
            t = time_one(cfgs[k], pattern, timeout)
            sys.stderr.write('run %d %s: %s\n' % (i + 1, k, '%.3f s' % t if t is not None else 'failed'))
            sys.stderr.flush()
            if t is not None:
                times[k].append(t)
    res = {'bench': 'boot', 'tier': a.tier, 'runs': a.runs, 'host': platform.node(),
           'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
           'pattern': pattern, 'results': {}}
    print('boot to first workload report, tier %d, %d alternating runs' % (a.tier, a.runs))
    print('%-14s %10s %10s %10s %6s' % ('vmm', 'median_ms', 'min_ms', 'max_ms', 'ok'))
    for k, v in times.items():
        if v:
            med = statistics.median(v) * 1000
            res['results'][k] = {'median_ms': round(med, 1), 'min_ms': round(min(v) * 1000, 1),
                                 'max_ms': round(max(v) * 1000, 1), 'ok': len(v),
                                 'argv': cfgs[k]}
            print('%-14s %10.1f %10.1f %10.1f %3d/%d' % (k, med, min(v) * 1000, max(v) * 1000,
                                                     len(v), a.runs))
        else:
            res['results'][k] = {'ok': 0, 'argv': cfgs[k]}
            print('%-14s %10s %10s %10s %3d/%d' % (k, '-', '-', '-', 0, a.runs))
    r = res['results']
    names = list(cfgs)
    if all(r[n].get('ok') for n in names):
        # Against QEMU's fastest configuration measured.
        best = min(names[1:], key=lambda n: r[n]['median_ms'])
        ratio = r['godwit']['median_ms'] / r[best]['median_ms']
        res['ratio_godwit_to_fastest_qemu'] = round(ratio, 3)
        res['fastest_qemu'] = best
        print('godwit/%s median ratio: %.3f (target <= 0.5)' % (best, ratio))
    return benchlib.finish(res, a.out or os.path.join(ROOT, 'build', 'bench',
                                                      'boot-tier%d.json' % a.tier),
                           all(r[n].get('ok') for n in names))


if __name__ == '__main__':
    sys.exit(main())
