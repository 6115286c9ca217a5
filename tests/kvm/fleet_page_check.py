#!/usr/bin/env python3
"""fleet_page_check.py - checks godwitd's fleet page, as headless Chromium dumped its
DOM (--dump-dom, after app.js drew it), against what the fleet holds (t-fleet-page.sh).

  fleet_page_check.py fleet DOM HOSTS.json LS.json REV
      every host of `godwit fleet hosts --json` and only those, with its state, VM
      count, CPUs and memory; every VM of `fleet ls --json` and only those, with its
      host, epoch and state; the page drew etcd revision REV or later
  fleet_page_check.py inflight DOM VM FROM TO
      VM's migration in the in-flight table: FROM -> TO, a phase, a percentage
      0-100 on a meter, a rate in MiB/s
  fleet_page_check.py done DOM VM RECORD.json
      VM's card among the done migrations: the record's outcome, total time,
      downtime and bytes as the page formats them; its timeline, a loaded <img>
      of /api/migrations/VM/timeline.svg, or (no picture) a table with one row per
      round of the record's history, or (no history) a note saying so
  fleet_page_check.py hostile DOM VM TEXT
      VM's error cell holds TEXT as text; no element was made from it (no
      data-pwned attribute, no <img src=x>, one <script>: app.js)
Prints what differs and exits 1, or exits 0.
"""
import json
import re
import sys
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}
MiB = 1024 * 1024


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.kids = tag, dict(attrs), parent, []

    def text(self):
        return "".join(k if isinstance(k, str) else k.text() for k in self.kids)

    def cls(self):
        return (self.attrs.get("class") or "").split()

    def walk(self):
        for k in self.kids:
            if isinstance(k, Node):
                yield k
                yield from k.walk()

    def find(self, tag=None, cls=None, **attrs):
        for n in self.walk():
            if tag and n.tag != tag:
                continue
            if cls and cls not in n.cls():
                continue
            if any(n.attrs.get(k.replace("_", "-")) != v for k, v in attrs.items()):
                continue
            yield n

    def one(self, *a, **kw):
        return next(self.find(*a, **kw), None)


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", [], None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.kids.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.kids.append(data)


def load(path):
    t = Tree()
    with open(path, encoding="utf-8") as f:
        t.feed(f.read())
    return t.root


def num_in(text):
    m = re.search(r"-?[0-9]+(\.[0-9]+)?", text)
    return float(m.group(0)) if m else None


def mib(b):
    """The page's mib(): one decimal under 10 MiB."""
    return f"{b / MiB:.{1 if b < 10 * MiB else 0}f} MiB"


def ms_ok(text, v):
    """The page's ms(): 'N.NN ms' under 10, 'N ms' under 10 s, 'N.N s' beyond."""
    if v is None:
        return text == "-"
    if not isinstance(v, (int, float)):
        return False
    n = num_in(text)
    if n is None:
        return False
    if text.endswith(" s") and not text.endswith(" ms"):
        return abs(n * 1000 - v) <= 50
    return text.endswith(" ms") and abs(n - v) <= (0.006 if v < 10 else 0.51)


def check_fleet(root, hosts, vms, rev, bad):
    body = root.one("body")
    got = body.attrs.get("data-revision") if body else None
    if not got or not got.isdigit() or int(got) < rev:
        bad.append(f"the page drew revision {got}, not {rev} or later")
    table = root.one("table", id="hosts")
    rows = {r.attrs["data-host"]: r for r in table.find("tr")
            if "data-host" in r.attrs} if table else {}
    if set(rows) != {h["name"] for h in hosts}:
        bad.append(f"hosts on the page {sorted(rows)}, in the fleet "
                   f"{sorted(h['name'] for h in hosts)}")
    for h in hosts:
        r = rows.get(h["name"])
        if not r:
            continue
        state = h["state"] + (", cordoned" if h["cordoned"] else "")
        cells = {c: (r.one("td", cls=c).text() if r.one("td", cls=c) else None)
                 for c in ("state", "vms", "addr")}
        usage = [c.text() for c in r.find("td", cls="usage")]
        want = {"state": state, "vms": str(len(h["vms"])), "addr": h["addr"]}
        for k, v in want.items():
            if cells[k] != v:
                bad.append(f"host {h['name']}: {k} {cells[k]!r}, the fleet says {v!r}")
        cpus = f"{h['cpus_used']} / {h['cpu_capacity']}"
        mem = f"{mib(h['mem_used'])} / {mib(h['mem_capacity'])}"
        if len(usage) != 2 or usage[0] != mem or usage[1] != cpus:
            bad.append(f"host {h['name']}: usage {usage}, the fleet says memory "
                       f"{h['mem_used']}/{h['mem_capacity']}, CPUs {cpus}")
        meters = list(r.find("meter"))
        if h["cpu_capacity"] and (len(meters) != 2 or
                                  float(meters[1].attrs.get("value", -1)) != h["cpus_used"]):
            bad.append(f"host {h['name']}: the CPU meter does not show {h['cpus_used']}")
    table = root.one("table", id="vms")
    rows = {r.attrs["data-vm"]: r for r in table.find("tr")
            if "data-vm" in r.attrs} if table else {}
    if set(rows) != {v["name"] for v in vms}:
        bad.append(f"VMs on the page {sorted(rows)}, in the fleet {sorted(v['name'] for v in vms)}")
    for v in vms:
        r = rows.get(v["name"])
        if not r:
            continue
        want = {"host": v["host"] or "", "epoch": "-" if v["epoch"] is None else str(v["epoch"]),
                "state": v["state"]}
        for k, w in want.items():
            c = r.one("td", cls=k)
            if not c or c.text() != w:
                bad.append(f"VM {v['name']}: {k} {c.text() if c else None!r}, the fleet says {w!r}")


def check_inflight(root, vm, frm, to, bad):
    table = root.one("table", id="inflight")
    r = table.one("tr", data_vm=vm) if table else None
    if not r:
        bad.append(f"no in-flight row for {vm}")
        return
    route = r.one("td", cls="route").text()
    if route != f"{frm} \u2192 {to}":
        bad.append(f"{vm}: route {route!r}")
    pct = r.one("td", cls="percent")
    m = pct.one("meter") if pct else None
    p = num_in(pct.text()) if pct else None
    if not m or p is None or not 0 <= p <= 100 or not pct.text().endswith(" %"):
        bad.append(f"{vm}: progress {pct.text() if pct else None!r}")
    rate = r.one("td", cls="rate").text()
    if not rate.endswith(" MiB/s"):
        bad.append(f"{vm}: rate {rate!r}")
    if not r.one("td", cls="phase").text():
        bad.append(f"{vm}: no phase")


def check_done(root, vm, rec, bad):
    card = root.one("div", cls="mig", data_vm=vm)
    if not card:
        bad.append(f"no done migration of {vm}")
        return
    prog = rec.get("progress") or {}

    def dd(c):
        n = card.one("dd", cls=c)
        return n.text() if n else None
    if dd("outcome") != rec["phase"]:
        bad.append(f"{vm}: outcome {dd('outcome')!r}, the record says {rec['phase']!r}")
    for c, k in (("total", "total_ms"), ("downtime", "downtime_ms")):
        if not ms_ok(dd(c) or "", prog.get(k)):
            bad.append(f"{vm}: {c} {dd(c)!r}, the record says {prog.get(k)}")
    b = num_in(dd("bytes") or "")
    if b is None or abs(b - prog.get("bytes", -1) / MiB) > 0.6:
        bad.append(f"{vm}: sent {dd('bytes')!r}, the record says {prog.get('bytes')} bytes")
    img = card.one("img")
    hist = prog.get("history") or []
    if img:
        if img.attrs.get("src") != f"/api/migrations/{vm}/timeline.svg" or \
           img.attrs.get("data-loaded") != "1":
            bad.append(f"{vm}: timeline picture {img.attrs}")
    elif not hist:
        if "no per-round history in this report" not in card.text():
            bad.append(f"{vm}: the record has no history, and the page does not say so")
    else:
        t = card.one("table", cls="rounds")
        rows = len([r for r in t.find("tr") if r.parent.tag == "tbody"]) if t else 0
        if not hist or rows != len(hist):
            bad.append(f"{vm}: no timeline picture, and {rows} round rows for "
                       f"{len(hist)} rounds in the record")


def check_hostile(root, vm, text, bad):
    table = root.one("table", id="vms")
    r = table.one("tr", data_vm=vm) if table else None
    c = r.one("td", cls="error") if r else None
    if not c or c.text() != text:
        bad.append(f"{vm}: error cell {c.text() if c else None!r}, not the record's text")
    if c and any(True for _ in c.walk()):
        bad.append(f"{vm}: the error cell holds elements")
    if any(True for _ in root.find(data_pwned="1")):
        bad.append("an element got data-pwned: markup from a record ran")
    if any(n.attrs.get("src") == "x" for n in root.find("img")):
        bad.append("an <img src=x> from a record is in the page")
    scripts = [n.attrs.get("src") for n in root.find("script")]
    if scripts != ["/app.js"]:
        bad.append(f"scripts in the page: {scripts}")


def main(argv):
    bad = []
    root = load(argv[2])
    if argv[1] == "fleet":
        with open(argv[3]) as f:
            hosts = json.load(f)
        with open(argv[4]) as f:
            vms = json.load(f)
        check_fleet(root, hosts, vms, int(argv[5]), bad)
    elif argv[1] == "inflight":
        check_inflight(root, argv[3], argv[4], argv[5], bad)
    elif argv[1] == "done":
        with open(argv[4]) as f:
            check_done(root, argv[3], json.load(f), bad)
    elif argv[1] == "hostile":
        check_hostile(root, argv[3], argv[4], bad)
    else:
        print(__doc__)
        return 2
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
