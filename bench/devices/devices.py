#!/usr/bin/env python3
"""bench/devices/devices.py - virtio-blk and virtio-net throughput, godwit beside
QEMU (virtio-blk-pci, userspace virtio-net-pci: vhost=off, since godwit has no
vhost equivalent) on the same raw image and the same TAP, alternating runs;
prints a table and writes JSON.

  devices.py --tier 1 [--runs N] [--out FILE]   test guest (guest/disk.c disk_mode=,
                                                guest/net.c UDP echo) on this /dev/kvm
  devices.py --tier 2 [--runs N] [--out FILE]   Linux guest (guest/linux/devbench.c),
                                                inside tests/hwhost (bench/devices/tier2.sh)
  devices.py --render FILE                      the table of an earlier run's JSON

Both VMMs get one vCPU, the image through the host page cache (godwit: buffered
preadv/pwritev on its I/O thread; QEMU: cache=writeback,aio=threads, its default),
and a persistent TAP in a network namespace of our own (198.18.0.1/24 on the
host side, the guest 198.18.0.2).  Needs root (ip netns).
"""
import argparse
import json
import os
import platform
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'bench', 'lib'))
import benchlib  # noqa: E402
GODWIT = os.environ.get('GODWIT', os.path.join(ROOT, 'build', 'godwit'))
QEMU = os.environ.get('QEMU', 'qemu-system-x86_64')
QBOOT = '/usr/share/qemu/qboot.rom'
BENCH = os.path.join(ROOT, 'build', 'bench')
TAP = 'gwb0'
MAC = '02:00:5e:00:10:42'
IP_HOST, IP_GUEST = '198.18.0.1', '198.18.0.2'

# (key, label, unit, higher_is_better)
METRICS = {
    1: [('seqwrite_mib_s', 'disk seq write, 1 MiB, QD1', 'MiB/s', True),
        ('seqread_mib_s', 'disk seq read, 1 MiB, QD1', 'MiB/s', True),
        ('randread_iops', 'disk rand read, 4 KiB, QD1', 'IOPS', True),
        ('randwrite_iops', 'disk rand write, 4 KiB, QD1', 'IOPS', True),
        ('randread_qd16_iops', 'disk rand read, 4 KiB, QD16', 'IOPS', True),
        ('udp_mib_s', 'net UDP echo, 1472 B, 128 in flight', 'MiB/s', True),
        ('udp_rtt_us', 'net UDP echo RTT p50, 64 B, 1 in flight', 'us', False)],
    2: [('seqwrite_mib_s', 'disk seq write, 1 MiB, QD1, O_DIRECT', 'MiB/s', True),
        ('seqread_mib_s', 'disk seq read, 1 MiB, QD1, O_DIRECT', 'MiB/s', True),
        ('randread_iops', 'disk rand read, 4 KiB, QD1, O_DIRECT', 'IOPS', True),
        ('randwrite_iops', 'disk rand write, 4 KiB, QD1, O_DIRECT', 'IOPS', True),
        ('randread_qd16_iops', 'disk rand read, 4 KiB, QD16 (16 threads)', 'IOPS', True),
        ('tcp_rx_mib_s', 'net TCP peer -> guest', 'MiB/s', True),
        ('tcp_tx_mib_s', 'net TCP guest -> peer', 'MiB/s', True),
        ('disk_exits_per_req', 'L2 exits per disk request', 'exits', False),
        ('net_exits_per_mib', 'L2 exits per MiB, TCP phase', 'exits', False),
        ('net_irqs_per_mib', 'L2 interrupts per MiB, TCP phase', 'irqs', False)],
}
# Informational figures (they need KVM's debugfs); every other one must be there.
EXTRA = ('disk_exits_per_req', 'net_exits_per_mib', 'net_irqs_per_mib')
REQUIRED = {t: [m[0] for m in METRICS[t] if m[0] not in EXTRA] for t in METRICS}
KVM_DEBUGFS = '/sys/kernel/debug/kvm'


def log(msg):
    sys.stderr.write(msg + '\n')
    sys.stderr.flush()


def kv(line):
    """key=value pairs of a report line, numbers as floats where they parse."""
    out = {}
    for w in line.split():
        if '=' in w:
            k, v = w.split('=', 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


class VM:
    """One VMM process, its console on a pipe, collected line by line."""

    def __init__(self, argv, ns):
        self.argv = argv
        self.p = subprocess.Popen(['ip', 'netns', 'exec', ns] + argv, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self.buf = b''
        self.lines = []

    def wait_for(self, regex, timeout):
        """The first console line matching regex (searched from the start), or None."""
        rx = re.compile(regex)
        end = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if rx.search(line):
                    return line
            seen = len(self.lines)
            left = end - time.monotonic()
            if left <= 0:
                return None
            if not self.sel.select(timeout=min(left, 0.5)):
                if self.p.poll() is not None:
                    self._drain()
                    if len(self.lines) == seen:
                        return None
                continue
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                self._drain()
                if len(self.lines) == seen:
                    return None
                continue
            self._add(chunk)

    def _add(self, chunk):
        self.buf += chunk
        *done, self.buf = self.buf.split(b'\n')
        self.lines += [x.decode(errors='replace').rstrip('\r') for x in done]

    def _drain(self):
        if self.buf:
            self.lines.append(self.buf.decode(errors='replace'))
            self.buf = b''

    def matching(self, prefix):
        return [x for x in self.lines if x.startswith(prefix)]

    def tail(self, n=15):
        return '\n'.join(self.lines[-n:] + ([self.buf.decode(errors='replace')] if self.buf else []))

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdout.close()
        self.sel.close()


def sh(*argv, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    if check and r.returncode:
        raise RuntimeError('%s: %s' % (' '.join(argv), r.stdout.decode(errors='replace').strip()))
    return r


class Netns:
    """A namespace with a persistent TAP (host side 198.18.0.1/24); deleted on exit."""

    def __init__(self):
        self.name = 'gwbench-%d' % os.getpid()
        sh('ip', 'netns', 'add', self.name)
        try:
            sh('ip', '-n', self.name, 'link', 'set', 'lo', 'up')
            sh('ip', '-n', self.name, 'tuntap', 'add', TAP, 'mode', 'tap')
            sh('ip', '-n', self.name, 'addr', 'add', IP_HOST + '/24', 'dev', TAP)
            sh('ip', '-n', self.name, 'link', 'set', TAP, 'up')
        except Exception:
            self.close()
            raise

    def close(self):
        r = sh('ip', 'netns', 'pids', self.name, check=False)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh('ip', 'netns', 'del', self.name, check=False)


def make_image(path, mib):
    """A raw image with every block allocated (and in the page cache)."""
    chunk = bytes(1 << 20)
    with open(path, 'wb') as f:
        for _ in range(mib):
            f.write(chunk)


def build_udpecho():
    out = os.path.join(BENCH, 'udpecho')
    src = os.path.join(ROOT, 'bench', 'devices', 'udpecho.c')
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(BENCH, exist_ok=True)
        subprocess.run([os.environ.get('CC', 'gcc'), '-O2', '-Wall', '-Wextra', '-Werror', '-o', out,
                        src], check=True, timeout=120)
    return out


def disk_figures(vm, res):
    for line in vm.matching('diskbench: mode='):
        f = kv(line)
        m = f.get('mode')
        if f.get('errors'):
            raise RuntimeError('disk errors: ' + line)
        q = '' if f['qd'] == 1 else '_qd%d' % f['qd']
        if m in ('seqwrite', 'seqread'):
            res[m + q + '_mib_s'] = f['mib_s']
        elif m in ('randread', 'randwrite'):
            res[m + q + '_iops'] = f['iops']
            res[m + q + '_lat_us'] = f['lat_us']


# ---- tier 1: the test guest ------------------------------------------------------------

def tier1_configs(img):
    elf = os.path.join(ROOT, 'build', 'guest', 'godwit-guest.elf')
    cmd = ('workload=disk+net ip=%s disk_mib=256 '
           'disk_mode=seqwrite+seqread+randread+randwrite+randread:16 disk_secs=2 report=60000'
           % IP_GUEST)
    return {
        'godwit': [GODWIT, 'run', '--kernel', elf, '--mem', '256M', '--cpus', '1',
                   '--cpu-model', 'host', '--disk', img, '--net', 'tap=%s,mac=%s' % (TAP, MAC),
                   '--cmdline', cmd],
        'qemu': [QEMU, '-M', 'pc', '-bios', QBOOT, '-enable-kvm', '-cpu', 'host,-arch-capabilities',
                 '-m', '256M', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
                 '-serial', 'stdio', '-kernel', elf, '-append', cmd,
                 '-drive', 'file=%s,if=none,id=d0,format=raw,cache=writeback,aio=threads' % img,
                 '-device', 'virtio-blk-pci,drive=d0,disable-legacy=on',
                 '-netdev', 'tap,id=n0,ifname=%s,script=no,downscript=no,vhost=off' % TAP,
                 '-device', 'virtio-net-pci,netdev=n0,disable-legacy=on,mac=%s' % MAC],
    }


def tier1_run(argv, ns, udpecho):
    res = {}
    vm = VM(argv, ns.name)
    try:
        if not vm.wait_for(r'^diskbench: done', 60):
            raise RuntimeError('no "diskbench: done"; console:\n' + vm.tail())
        disk_figures(vm, res)
        if not vm.wait_for(r'^net: found', 5):
            raise RuntimeError('no "net: found"; console:\n' + vm.tail())
        for name, args in (('lat', ['64', '1', '1']), ('tput', ['1472', '128', '3'])):
            r = subprocess.run(['ip', 'netns', 'exec', ns.name, udpecho, IP_GUEST] + args,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=40)
            out = r.stdout.decode(errors='replace').strip()
            if r.returncode or not out.startswith('udpecho:'):
                raise RuntimeError('udpecho %s: %s; console:\n%s' % (name, out, vm.tail()))
            f = kv(out)
            if name == 'lat':
                res['udp_rtt_us'] = f['rtt_us_p50']
            else:
                res['udp_mib_s'] = f['mib_s']
                res['udp_lost'] = f['lost']
    finally:
        vm.stop()
    return res


# ---- tier 2: the Linux guest -----------------------------------------------------------

def kvm_stats():
    """KVM's exit and interrupt counters summed over this host's VMs (debugfs), or {}."""
    out = {}
    for k in ('exits', 'irq_injections'):
        try:
            with open(os.path.join(KVM_DEBUGFS, k)) as f:
                out[k] = int(f.read())
        except (OSError, ValueError):
            pass
    return out


def kvm_debugfs():
    """Inside the tier-2 host (our own emulated L1), mount debugfs for the counters."""
    if not os.path.isdir(KVM_DEBUGFS) and os.environ.get('TIER') == 'hwhost':
        subprocess.run(['mount', '-t', 'debugfs', 'debugfs', '/sys/kernel/debug'],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    return os.path.isdir(KVM_DEBUGFS)


def tier2_configs(img):
    kernel = os.path.join(ROOT, 'build', 'linux', 'vmlinuz')
    initrd = os.path.join(ROOT, 'build', 'linux', 'initramfs.cpio.gz')
    cmd = ('console=ttyS0 quiet panic=-1 godwit.workload=bench godwit.ip=%s/24 godwit.peer=%s '
           'godwit.benchsecs=3' % (IP_GUEST, IP_HOST))
    return {
        'godwit': [GODWIT, 'run', '--kernel', kernel, '--initrd', initrd, '--mem', '512M',
                   '--cpus', '1', '--disk', img, '--net', 'tap=%s,mac=%s' % (TAP, MAC),
                   '--cmdline', cmd],
        'qemu': [QEMU, '-M', 'pc', '-bios', QBOOT, '-enable-kvm', '-cpu', 'host', '-m', '512M',
                 '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
                 '-serial', 'stdio', '-kernel', kernel, '-initrd', initrd, '-append', cmd,
                 '-drive', 'file=%s,if=none,id=d0,format=raw,cache=writeback,aio=threads' % img,
                 '-device', 'virtio-blk-pci,drive=d0,disable-legacy=on',
                 '-netdev', 'tap,id=n0,ifname=%s,script=no,downscript=no,vhost=off' % TAP,
                 '-device', 'virtio-net-pci,netdev=n0,disable-legacy=on,mac=%s' % MAC],
    }


def tier2_run(argv, ns, _):
    """One boot: the disk modes, then TCP both ways; KVM's counters are read as the
    guest starts, after the last disk mode and after the last transfer (as the
    console lines come: the phases last seconds, the lag is milliseconds)."""
    res = {}
    snap = []
    vm = VM(argv, ns.name)
    try:
        for rx, t in ((r'^linux-guest: workload=bench', 240), (r'^diskbench: mode=randread bs=4096 qd=16', 120),
                      (r'^devbench: tcp-send', 120)):
            if vm.wait_for(rx + r'|^linux-guest: poweroff|Kernel panic', t):
                snap.append(kvm_stats())
        if not vm.wait_for(r'^linux-guest: poweroff|Kernel panic', 60):
            raise RuntimeError('the guest did not finish; console:\n' + vm.tail())
        disk_figures(vm, res)
        net_mib = 0
        for line in vm.matching('devbench: tcp-'):
            f = kv(line)
            res['tcp_rx_mib_s' if 'tcp-recv' in line else 'tcp_tx_mib_s'] = f['mib_s']
            net_mib += f['bytes'] / 2**20
        disk_ops = sum(kv(x)['ops'] for x in vm.matching('diskbench: mode='))
        if len(snap) == 3 and all('exits' in x for x in snap) and disk_ops and net_mib:
            res['disk_exits_per_req'] = (snap[1]['exits'] - snap[0]['exits']) / disk_ops
            res['net_exits_per_mib'] = (snap[2]['exits'] - snap[1]['exits']) / net_mib
            if all('irq_injections' in x for x in snap):
                res['net_irqs_per_mib'] = ((snap[2]['irq_injections'] - snap[1]['irq_injections'])
                                           / net_mib)
        missing = [k for k in REQUIRED[2] if k not in res]
        if missing:
            raise RuntimeError('no figure for %s; console:\n%s' % (', '.join(missing), vm.tail(25)))
    finally:
        vm.stop()
    return res


# ---- the driver ------------------------------------------------------------------------

def loadavg():
    """The host's 1-minute load average: these 2 cores are shared with other jobs."""
    try:
        with open('/proc/loadavg') as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return None


def summary(vals):
    return {'median': round(statistics.median(vals), 1), 'min': round(min(vals), 1),
            'max': round(max(vals), 1), 'n': len(vals), 'values': [round(v, 1) for v in vals]}


def fmt(s):
    if not s:
        return '-'
    return '%.1f (%.1f-%.1f)' % (s['median'], s['min'], s['max']) if s['median'] < 100 else \
        '%.0f (%.0f-%.0f)' % (s['median'], s['min'], s['max'])


def report(res, names):
    """Prints the table for res (this run's, or --render's JSON) and fills res['results'];
    true if every required figure is there for both VMMs and no run failed."""
    tier, runs, load, per_run = res['tier'], res['runs'], res['loadavg'], res['per_run']
    have_exits = any(k in r.get(n, {}) for r in per_run for n in names for k in EXTRA)
    title = ('test guest, 1 vCPU, 256 MiB' if tier == 1 else
             'Linux guest (Debian cloud kernel), 1 vCPU, 512 MiB, inside the emulated SVM host')
    print('devices, tier %d: %s; %d alternating runs; median (min-max)' % (tier, title, runs))
    print('ratio: godwit/qemu of the medians; paired: median of the per-run ratios; '
          'host load average %s at the start, %s at the end' % (load.get('start'), load.get('end')))
    print('%-42s %-6s %-24s %-24s %-6s %-6s %s' % ('metric', 'unit', 'godwit', 'qemu', 'ratio',
                                                    'paired', 'as good as QEMU'))
    ok = not res['failures']
    for key, label, unit, higher in METRICS[tier]:
        vals = {n: [r[n][key] for r in per_run if key in r.get(n, {})] for n in names}
        s = {n: summary(vals[n]) if vals[n] else None for n in names}
        row = {'label': label, 'unit': unit, 'higher_is_better': higher}
        row.update({n: s[n] for n in names})
        ratio = paired = verdict = ''
        if s['godwit'] and s['qemu'] and s['qemu']['median']:
            r = s['godwit']['median'] / s['qemu']['median']
            pr = [x['godwit'][key] / x['qemu'][key] for x in per_run
                  if key in x.get('godwit', {}) and x.get('qemu', {}).get(key)]
            p = statistics.median(pr) if pr else r
            row['ratio'] = round(r, 3)
            row['paired_ratio'] = round(p, 3)
            ratio, paired = '%.2f' % r, '%.2f' % p
            if key in REQUIRED[tier]:
                good = [x >= 1 if higher else x <= 1 for x in (r, p)]
                verdict = 'yes' if all(good) else 'no' if not any(good) else 'mixed'
                row['at_least_qemu'] = verdict
        elif key in REQUIRED[tier] or have_exits:
            ok = False
        res['results'][key] = row
        if s['godwit'] or s['qemu']:
            print('%-42s %-6s %-24s %-24s %-6s %-6s %s' % (label, unit, fmt(s['godwit']),
                                                           fmt(s['qemu']), ratio, paired, verdict))
    for f in res['failures']:
        print('failed: ' + f.split('\n')[0])
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tier', type=int, choices=(1, 2), default=1)
    ap.add_argument('--runs', type=int, default=None)
    ap.add_argument('--out', default=None)
    ap.add_argument('--render', metavar='JSON', help='print the table of an earlier run')
    a = ap.parse_args()
    if a.render:
        with open(a.render) as f:
            res = json.load(f)
        res['results'] = {}
        return 0 if report(res, list(res['argv'])) else 1
    runs = a.runs or (7 if a.tier == 1 else 3)
    tmp = tempfile.mkdtemp(prefix='gwbench-', dir=os.environ.get('SCRATCH') or None)
    ns = None
    peer = None
    failures = []
    img = os.path.join(tmp, 'disk.img')
    cfgs, run_one = (tier1_configs(img), tier1_run) if a.tier == 1 else \
        (tier2_configs(img), tier2_run)
    names = list(cfgs)
    per_run = []                # per_run[i][vmm] = {metric: value}
    load = {'start': loadavg()}
    try:
        make_image(img, 256 if a.tier == 1 else 128)
        ns = Netns()
        helper = None
        if a.tier == 1:
            helper = build_udpecho()
        else:
            kvm_debugfs()
            devbench = os.path.join(ROOT, 'build', 'linux', 'devbench')
            # The peer serves for at most 30 min; the namespace's deletion ends it anyway.
            peer = subprocess.Popen(['ip', 'netns', 'exec', ns.name, devbench, 'tcp-serve',
                                     '5001', '5002', '1800'], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(runs):
            per_run.append({})
            # Alternate the order each run so drift hits both sides alike.
            for k in names if i % 2 == 0 else list(reversed(names)):
                t0 = time.monotonic()
                try:
                    r = run_one(cfgs[k], ns, helper)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    failures.append('run %d %s: %s' % (i + 1, k, e))
                    log('run %d %s: FAILED: %s' % (i + 1, k, e))
                    continue
                log('run %d %s (%.0f s): %s' % (i + 1, k, time.monotonic() - t0,
                                                ' '.join('%s=%.1f' % x for x in r.items())))
                per_run[i][k] = r
        load['end'] = loadavg()
    finally:
        if peer:
            peer.kill()
            peer.wait()
        if ns:
            ns.close()
        shutil.rmtree(tmp, ignore_errors=True)

    res = {'bench': 'devices', 'tier': a.tier, 'runs': runs, 'host': platform.node(),
           'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
           'setup': {'vcpus': 1, 'image': 'raw, %d MiB, fully allocated, host page cache (godwit '
                     'buffered preadv/pwritev; QEMU cache=writeback,aio=threads)'
                     % (256 if a.tier == 1 else 128),
                     'net': 'persistent TAP in a namespace; QEMU -netdev tap,vhost=off '
                            '(userspace virtio-net: godwit has no vhost equivalent)'},
           'loadavg': load, 'argv': cfgs, 'results': {}, 'failures': failures,
           'per_run': per_run}
    ok = report(res, names)
    return benchlib.finish(res, a.out or os.path.join(BENCH, 'devices-tier%d.json' % a.tier), ok)


if __name__ == '__main__':
    sys.exit(main())
