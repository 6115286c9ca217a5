#!/usr/bin/env python3
"""fleet_check.py - the fleet's invariant checker (tests/kvm/t-fleet.sh, docs/fleet.md).

  fleet_check.py --etcd URLS --host NAME=NETNS ... --out SUMMARY.json
                 [--stop FILE] [--allow-dir DIR] [--lost-s 5] [--interval 0.1]
                 [--max-s 900] [--log FILE]

Run where etcd answers (the fleet's switch namespace).  Every --interval it
samples, in one pass:
  - every `godwit run` process in the hosts' network namespaces (/proc,
    /run/netns/NETNS; any other godwit on the machine is not the fleet's), its VM (--name, else the API's name)
    and whether it runs the VM: not stopped (/proc/PID/stat state T: SIGSTOP,
    a fenced VM) and its API (GET /api/v1/vm on its --api UNIX socket) says
    "running";
  - the owner records /godwit/vms/V/owner ("HOST EPOCH"), read from etcd's
    JSON gateway before and after the processes.
Violations:
  dual-run        a VM runs in two processes at once: seen in one pass and
                  again when those processes are asked once more right away
                  (the hand-off pauses the source before the destination
                  runs, so a real dual run persists; a pass's skew does not)
  runs-not-owner  a VM runs on a host that its owner record named neither
                  before nor after the pass, nor when read again
  epoch-decreased an owner record's epoch went down (rule 1)
  lost            a VM seen running earlier ran nowhere for longer than
                  --lost-s, outside the windows in which DIR/VM (or DIR/ALL)
                  exists in --allow-dir (the test declares a VM it expects
                  down, e.g. one whose process it killed)
It ends on SIGTERM, SIGINT, when --stop FILE exists, or after --max-s; then
it writes the summary (samples, violations, per VM: samples seen running per
host, epochs, the longest gap) to --out and exits 1 if there was any
violation, 0 otherwise.
"""
import argparse
import base64
import json
import os
import signal
import socket
import sys
import time
import urllib.request

STOP = False
NO_ANSWER = [0]     # API queries of live, unstopped processes that got no answer


def on_signal(_sig, _frm):
    global STOP
    STOP = True


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    def __init__(self, urls):
        self.urls = [u.rstrip("/") for u in urls.split(",") if u]
        self.cur = 0
        self.errors = 0

    def range_prefix(self, prefix):
        """{key: value} under prefix, or None if no member answered."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"key": b64(prefix), "range_end": b64(end)}).encode()
        for i in range(len(self.urls)):
            u = self.urls[(self.cur + i) % len(self.urls)]
            try:
                req = urllib.request.Request(u + "/v3/kv/range", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=0.5) as r:
                    j = json.loads(r.read())
                self.cur = (self.cur + i) % len(self.urls)
                out = {}
                for kv in j.get("kvs", []):
                    out[base64.b64decode(kv["key"]).decode()] = \
                        base64.b64decode(kv.get("value", "")).decode()
                return out
            except Exception:  # noqa: BLE001 - any failure: try the next member
                continue
        self.errors += 1
        return None


def owners_of(kvs):
    """{vm: (host, epoch)} from /godwit/vms/V/owner records; None stays None."""
    if kvs is None:
        return None
    out = {}
    for k, v in kvs.items():
        parts = k.split("/")
        # "", "godwit", "vms", V, "owner"
        if len(parts) == 5 and parts[4] == "owner":
            w = v.split()
            if len(w) == 2 and w[1].isdigit():
                out[parts[3]] = (w[0], int(w[1]))
            else:
                out[parts[3]] = (v, -1)
    return out


def api_get(path, timeout=1.0):
    """The VM API's GET /api/v1/vm as a dict, or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b"GET /api/v1/vm HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = s.recv(65536)
            if not b:
                break
            data += b
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
            return None
        return json.loads(body)
    except Exception:  # noqa: BLE001 - a VM going away mid-query is normal
        return None
    finally:
        s.close()


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        return st[st.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None


def netns_ino(pid):
    try:
        link = os.readlink("/proc/%d/ns/net" % pid)     # net:[4026532...]
        return int(link[link.index("[") + 1:-1])
    except (OSError, ValueError):
        return None


def vm_processes(ns_hosts):
    """[(pid, host, name, api)] for every `godwit run` process."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or not os.path.basename(argv[0]).startswith(b"godwit") or argv[1] != b"run":
            continue
        args = [a.decode(errors="replace") for a in argv]
        name = api = None
        for i, a in enumerate(args[:-1]):
            if a == "--name":
                name = args[i + 1]
            elif a == "--api":
                api = args[i + 1]
        if name is None and api and os.path.basename(api) == "api.sock" and \
                os.path.basename(os.path.dirname(os.path.dirname(api))) == "vms":
            name = os.path.basename(os.path.dirname(api))   # DIR/vms/VM/api.sock
        host = ns_hosts.get(netns_ino(pid))
        if host is None:
            continue            # not on one of the fleet's hosts (another test's godwit)
        out.append((pid, host, name, api))
    return out


def runs(pid, api):
    """(running?, state text, API name)."""
    st = proc_state(pid)
    if st is None:
        return False, "gone", None
    if st in "Tt":
        return False, "stopped(T)", None
    if not api:
        return False, "no-api", None
    j = api_get(api)
    if j is None:
        if proc_state(pid) not in (None, "T", "t", "Z"):
            NO_ANSWER[0] += 1
        return False, "no-answer", None
    state = j.get("state", "?")
    # A process stopped while we asked counts as not running.
    if proc_state(pid) in (None, "T", "t"):
        return False, "stopped(T)", j.get("name")
    return state == "running", state, j.get("name")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--host", action="append", default=[], help="NAME=NETNS")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop")
    ap.add_argument("--allow-dir")
    ap.add_argument("--lost-s", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--max-s", type=float, default=900.0)
    ap.add_argument("--log")
    a = ap.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ns_hosts = {}
    for hv in a.host:
        h, ns = hv.split("=", 1)
        ns_hosts[os.stat("/run/netns/" + ns).st_ino] = h
    etcd = Etcd(a.etcd)
    log = open(a.log, "a", buffering=1) if a.log else None
    t0 = time.monotonic()

    def say(msg):
        if log:
            log.write("%.2f %s\n" % (time.monotonic() - t0, msg))

    violations = []
    seen = {}

    def violate(kind, vm, key=None, **kw):
        """One entry per (kind, vm, key): the first sample's details, and how many samples."""
        k = (kind, vm, key)
        if k in seen:
            seen[k]["samples"] += 1
            return
        v = {"kind": kind, "vm": vm, "t": round(time.monotonic() - t0, 2), "samples": 1}
        v.update(kw)
        seen[k] = v
        violations.append(v)
        say("VIOLATION " + json.dumps(v))

    vms = {}            # vm -> stats
    last_where = {}     # vm -> tuple of (host, pid) running, for the log
    max_epoch = {}
    last_owner = {}
    gap_start = {}      # vm -> monotonic time it was last seen stop running (outside allowances)
    lost_flagged = set()
    samples = 0
    max_pass = 0.0
    skew = 0            # passes that saw a VM twice, not confirmed when asked again

    def stat(vm):
        return vms.setdefault(vm, {"samples_running": 0, "hosts": {}, "epochs": [],
                                   "max_gap_s": 0.0, "allowed_s": 0.0})

    def allowed(vm):
        if not a.allow_dir:
            return False
        return os.path.exists(os.path.join(a.allow_dir, vm)) or \
            os.path.exists(os.path.join(a.allow_dir, "ALL"))

    def check_epochs(own):
        if own is None:
            return
        for vm, (h, e) in own.items():
            if last_owner.get(vm) != (h, e):
                say("owner %s = %s %d" % (vm, h, e))
                last_owner[vm] = (h, e)
                stat(vm)["epochs"].append([h, e])
            if vm in max_epoch and e < max_epoch[vm]:
                violate("epoch-decreased", vm, key=(max_epoch[vm], e), was=max_epoch[vm], now=e, host=h)
            max_epoch[vm] = max(e, max_epoch.get(vm, e))

    while not STOP and time.monotonic() - t0 < a.max_s:
        if a.stop and os.path.exists(a.stop):
            break
        p0 = time.monotonic()
        own_before = owners_of(etcd.range_prefix("/godwit/vms/"))
        check_epochs(own_before)
        running = {}
        for pid, host, name, api in vm_processes(ns_hosts):
            ok, state, apiname = runs(pid, api)
            vm = name or apiname
            if ok and vm:
                running.setdefault(vm, []).append((host, pid, api))
        own_after = owners_of(etcd.range_prefix("/godwit/vms/"))
        check_epochs(own_after)
        now = time.monotonic()
        samples += 1

        for vm, where in running.items():
            if len(where) >= 2:
                again = [(h, p) for h, p, api in where if runs(p, api)[0]]
                if len(again) >= 2:
                    violate("dual-run", vm, key=tuple(sorted(again)), where=[[h, p] for h, p in again])
                else:
                    skew += 1
                    say("%s seen on %s in one pass, on %s when asked again (a hand-off during the pass)"
                        % (vm, " ".join("%s/%d" % (h, p) for h, p, _ in where),
                           " ".join("%s/%d" % w for w in again) or "none"))
                where = [w for w in where if (w[0], w[1]) in again]
            s = stat(vm)
            s["samples_running"] += 1
            for h, p, _ in where:
                s["hosts"][h] = s["hosts"].get(h, 0) + 1
            key = tuple(sorted((h, p) for h, p, _ in where))
            if last_where.get(vm) != key:
                say("running %s on %s" % (vm, " ".join("%s/%d" % w for w in key)))
                last_where[vm] = key
            # The owner names where it runs (rule 4), before or after the pass.
            for h, p, api in where:
                named = [o[vm][0] for o in (own_before, own_after) if o is not None and vm in o]
                if named and h not in named:
                    own3 = owners_of(etcd.range_prefix("/godwit/vms/"))
                    if own3 is not None and vm in own3 and own3[vm][0] != h and runs(p, api)[0]:
                        violate("runs-not-owner", vm, key=(h, p), host=h, pid=p, owner=list(own3[vm]))
            # The gap that ends here.
            if vm in gap_start:
                g = now - gap_start.pop(vm)
                s["max_gap_s"] = max(s["max_gap_s"], round(g, 2))
                say("%s back after %.2f s" % (vm, g))
            lost_flagged.discard(vm)

        for vm in list(vms):
            if vm in running:
                continue
            if vms[vm]["samples_running"] == 0:
                continue            # never seen running: nothing to lose yet
            if last_where.get(vm):
                say("running %s nowhere" % vm)
                last_where[vm] = ()
            if allowed(vm):
                vms[vm]["allowed_s"] = round(vms[vm]["allowed_s"] + a.interval, 2)
                gap_start[vm] = now       # a declared window does not count
                continue
            gs = gap_start.setdefault(vm, now)
            g = now - gs
            vms[vm]["max_gap_s"] = max(vms[vm]["max_gap_s"], round(g, 2))
            if g > a.lost_s and vm not in lost_flagged:
                lost_flagged.add(vm)
                owner = own_after.get(vm) if own_after else None
                violate("lost", vm, key=gs, gap_s=round(g, 2), owner=list(owner) if owner else None)

        took = time.monotonic() - p0
        max_pass = max(max_pass, took)
        time.sleep(max(0.0, a.interval - took))

    summary = {
        "samples": samples,
        "duration_s": round(time.monotonic() - t0, 2),
        "max_pass_s": round(max_pass, 3),
        "etcd_errors": etcd.errors,
        "skew_rechecks": skew,
        "api_no_answer": NO_ANSWER[0],
        "violations": violations,
        "vms": vms,
    }
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.rename(tmp, a.out)
    say("end: %d samples, %d violations" % (samples, len(violations)))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
