#!/bin/bash
# bench/devices/tier2.sh - run by tests/hwhost/run.sh inside the emulated SVM host:
# the Linux guest's device benchmark (godwit vs QEMU pc); its table goes to
# build/bench/devices-tier2.txt.
. "$(dirname "$0")/../../tests/lib.sh"
out=$ROOT/build/bench
mkdir -p "$out"
if python3 -u "$ROOT/bench/devices/devices.py" --tier 2 --runs "${BENCH_RUNS_T2:-3}" \
	--out "$out/devices-tier2.json" >"$out/devices-tier2.txt" 2>&1; then
	t_pass bench-devices-tier2
else
	t_fail bench-devices-tier2 "$(grep -E '^failed|Error' "$out/devices-tier2.txt" | head -3 | tr '\n' ' ')"
fi
while read -r l; do echo "INFO bench: $l"; done <"$out/devices-tier2.txt"
