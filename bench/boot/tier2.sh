#!/bin/bash
# bench/boot/tier2.sh - run by tests/hwhost/run.sh inside the emulated SVM host:
# the Linux guest's boot benchmark; its table goes to build/bench/boot-tier2.txt.
. "$(dirname "$0")/../../tests/lib.sh"
out=$ROOT/build/bench
mkdir -p "$out"
if python3 -u "$ROOT/bench/boot/boot.py" --tier 2 --runs "${BENCH_RUNS:-5}" \
	--out "$out/boot-tier2.json" >"$out/boot-tier2.txt" 2>&1; then
	t_pass bench-boot-tier2
else
	t_fail bench-boot-tier2 "$(tail -5 "$out/boot-tier2.txt" | tr '\n' ' ')"
fi
while read -r l; do echo "INFO bench: $l"; done <"$out/boot-tier2.txt"
