#!/bin/bash
# bench/fleet/gate.sh [N] - what the fleet's hand-off (commit gate + etcd transaction)
# costs a migration: one VM (test guest, 128 MiB, workload=mem mem=64 rate=20) moved
# between two hosts of a three-namespace fleet (tests/kvm/lib-fleet.sh, one etcd member)
# N times with `godwit fleet migrate`, and as many times with plain `godwit migrate`
# between two processes on loopback, alternating; prints each run's downtime as the
# source VMM reports it and the medians, and writes build/bench/fleet-gate.json (and each
# plain run's report with its SVG timeline, godwit report --svg, in
# build/bench/fleet-gate-timelines/plain-N.{json,svg}).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
N=${1:-7}
export TIER=bench
. tests/lib.sh
. tests/kvm/lib-vm.sh
. tests/kvm/lib-migrate.sh
FLEET_ETCD_N=1
. tests/kvm/lib-fleet.sh
trap 'fleet_down; t_cleanup' EXIT
CMDLINE='workload=mem mem=64 rate=20 report=200'
fleet_up || { echo "fleet: $FLEET_ERR" >&2; exit 1; }
for h in h1 h2; do agent_start "$h"; done
for h in h1 h2; do agent_registered "$h" 20 || { echo "agent $h" >&2; exit 1; }; done
fleet create gb --on h1 -- --kernel "$GUEST_ELF" --mem 128M --cmdline "$CMDLINE" >/dev/null ||
	{ echo "create failed" >&2; exit 1; }
sleep 2
# A plain pair on loopback (no fleet): the same guest, godwit migrate.
start_vm plain --mem 128M --cmdline "$CMDLINE"
wait_reports "$S_OUT" 2 20
P_SOCK=$S_SOCK
fleet_dt=() plain_dt=()
TL=build/bench/fleet-gate-timelines
mkdir -p "$TL"
to=h2
for ((i = 1; i <= N; i++)); do
	j=$(fleet --json migrate gb --to "$to" -q 2>/dev/null)
	fleet_dt+=("$(jq -r '.migration.progress.downtime_ms // empty' <<<"$j")")
	[ "$to" = h2 ] && to=h1 || to=h2
	d=$T_TMP/d$i.sock
	"$GODWIT" run --incoming "unix:$T_TMP/m$i" --api "$d" </dev/null >>"$T_TMP/plain.out" 2>>"$T_TMP/plain.err" &
	for ((k = 0; k < 50; k++)); do [ -S "$T_TMP/m$i" ] && break; sleep 0.1; done
	pj=$("$GODWIT" migrate --api "$P_SOCK" --to "unix:$T_TMP/m$i" --json -q 2>/dev/null)
	plain_dt+=("$(jq -r '.downtime_ms // empty' <<<"$pj")")
	printf '%s\n' "$pj" >"$TL/plain-$i.json"
	"$GODWIT" report "$TL/plain-$i.json" --svg "$TL/plain-$i.svg" >/dev/null ||
		echo "run $i: no timeline" >&2
	P_SOCK=$d
	echo "run $i: fleet ${fleet_dt[-1]:-?} ms, plain ${plain_dt[-1]:-?} ms"
done
python3 - "${fleet_dt[*]}" "${plain_dt[*]}" <<'PY'
import json, statistics, sys, os
f = [float(x) for x in sys.argv[1].split()]
p = [float(x) for x in sys.argv[2].split()]
r = {"runs": len(f), "fleet_downtime_ms": f, "plain_downtime_ms": p,
     "fleet_median_ms": statistics.median(f), "plain_median_ms": statistics.median(p),
     "fleet_spread_ms": [min(f), max(f)], "plain_spread_ms": [min(p), max(p)]}
os.makedirs("build/bench", exist_ok=True)
json.dump(r, open("build/bench/fleet-gate.json", "w"), indent=1)
print("median downtime: fleet %.1f ms (%.1f-%.1f), plain %.1f ms (%.1f-%.1f)" % (
    r["fleet_median_ms"], min(f), max(f), r["plain_median_ms"], min(p), max(p)))
PY
