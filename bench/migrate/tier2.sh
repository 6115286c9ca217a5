#!/bin/bash
# bench/migrate/tier2.sh - run by tests/hwhost/run.sh inside the emulated SVM host
# (`make bench-migrate-tier2`): live migration of the Linux guest, godwit beside QEMU
# tuned (bench/migrate/tier2.py); HW_BENCH_RUNS alternating runs (default 5).  Its table
# goes to build/bench/migrate-tier2.txt, the figures to build/bench/migrate-tier2.json.
. "$(dirname "$0")/../../tests/lib.sh"
out=$ROOT/build/bench
mkdir -p "$out"
# HW_GODWIT_BASE=BIN: another godwit (e.g. an older commit's build, under the checkout so
# that L1 sees it) in the same alternation, as godwit-base: before/after figures.
if python3 -u "$ROOT/bench/migrate/tier2.py" --runs "${HW_BENCH_RUNS:-5}" \
	${HW_GODWIT_BASE:+--base "$HW_GODWIT_BASE"} --out "$out/migrate-tier2.json" >"$out/migrate-tier2.txt" 2>&1; then
	t_pass bench-migrate-tier2
else
	t_fail bench-migrate-tier2 "$(grep -E 'failed|Error' "$out/migrate-tier2.txt" | head -3 | tr '\n' ' ')"
fi
while read -r l; do echo "INFO bench: $l"; done <"$out/migrate-tier2.txt"
