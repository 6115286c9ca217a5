#!/bin/bash
# tests/hwhost/soak.sh [RUNS] - the emulated L1's crash rate with godwit against QEMU as
# the L2 VMM: RUNS (default 20) runs of the same Linux guest and workload under each,
# alternating in the same L1 (soak-vmm.sh), booting a fresh L1 whenever one dies (that run
# is charged to the VMM it was running, as "l1-died").  Not part of make test: it takes
# about RUNS x 2 x 90 s.  Results: build/soak/results.jsonl (one line per run; a soak goes
# on where the file stops: delete it to start afresh) and build/soak/summary.json, printed
# as a table.  tests/hwhost/README.md records the latest rates.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-20}
OUTDIR=$ROOT/build/soak
OUT=$OUTDIR/results.jsonl
mkdir -p "$OUTDIR"
touch "$OUT"

count() { jq -s --arg v "$1" '[.[] | select(.vmm == $v)] | length' "$OUT"; }
for ((boot = 1; boot <= 4 * RUNS; boot++)); do
	[ "$(count godwit)" -ge "$RUNS" ] && [ "$(count qemu)" -ge "$RUNS" ] && break
	SOAK_OUT=$OUT SOAK_RUNS=$RUNS HWHOST_TEST_TIMEOUT=$((RUNS * 2 * 400)) \
		HWHOST_TIMEOUT=$((RUNS * 2 * 400)) HWHOST_L1_RETRIES=0 HWHOST_MODE=l1 \
		bash "$ROOT/tests/hwhost/run.sh" "$ROOT/tests/hwhost/soak-vmm.sh" |
		grep -E '^(# soak|PASS|FAIL|INFO)'
	# A run that started and never ended: its L1 died under it.
	last=$(tail -n 1 "$OUT")
	if [[ $last == '{"start": '* ]]; then
		vmm=$(jq -r .start <<<"$last")
		echo "{\"vmm\": \"$vmm\", \"outcome\": \"l1-died\", \"secs\": 0, \"why\": \"the emulated L1 failed during the run\"}" >>"$OUT"
		echo "# soak: $vmm l1-died"
	fi
done
jq -s '[.[] | select(.vmm)] | group_by(.vmm) | map({vmm: .[0].vmm, runs: length,
	pass: map(select(.outcome == "pass")) | length,
	crash: map(select(.outcome == "crash")) | length,
	wedged: map(select(.outcome == "wedged")) | length,
	l1_died: map(select(.outcome == "l1-died")) | length,
	fail: map(select(.outcome == "fail")) | length})' "$OUT" >"$OUTDIR/summary.json"
jq -r '.[] | "\(.vmm): \(.runs) runs: \(.pass) passed, \(.crash) guest crashes, \(.wedged) wedged, \(.l1_died) L1 deaths, \(.fail) other failures"' \
	"$OUTDIR/summary.json"
