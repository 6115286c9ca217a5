#!/bin/bash
# tests/run.sh [all|unit|kvm|hwhost] - runs the test tiers and counts results.
#
# Every test program prints one line per test: "PASS name", "FAIL name: why"
# or "SKIP name: why".  This script runs them, keeps their output in
# build/test-logs/, and ends with the line "N passed, N failed[, N skipped][, N retried]"
# (retried: tier-2 tests run again because their emulated host or its guest crashed;
# said whenever tier 2 ran).
# A SKIP of a tier-1 (kvm) test while /dev/kvm exists counts as a failure:
# tier-1 tests may skip only where there is no KVM.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${1:-all}
LOGDIR=$ROOT/build/test-logs
mkdir -p "$LOGDIR"
RESULTS=$LOGDIR/results.txt
: >"$RESULTS"

have_kvm=0
[ -e /dev/kvm ] && have_kvm=1

# run_suite NAME CMD...: run one producer, tee its output, record its lines.
run_suite() {
	local name=$1; shift
	local log=$LOGDIR/$name.log start=$SECONDS
	echo "== $name" >&2
	"$@" >"$log" 2>&1
	local rc=$?
	grep -E '^(PASS|FAIL|SKIP) ' "$log" >>"$RESULTS"
	# Tier 2 runs a test again when its emulated host or its guest crashed: count each.
	sed -n 's/^INFO hwhost\/harness: \(.*running .* again in a fresh L1\)$/RETRY \1/p' "$log" >>"$RESULTS"
	# FAIL/SKIP lines (and the tier-2 harness's INFO lines: an emulated host that froze),
	# each with the indented log tail ("  | ...") printed after it.
	awk '/^(FAIL|SKIP) |^INFO hwhost\/harness: / { tail = 1; n = 0; print; next }
	     /^  \| / && tail && n < 40 { n++; print; next }
	     { tail = 0 }' "$log" >&2
	local n; n=$(grep -cE '^(PASS|FAIL|SKIP) ' "$log")
	if [ "$rc" -ne 0 ] && ! grep -qE '^FAIL ' "$log"; then
		echo "FAIL $name: exited with status $rc without naming a failed test (see $log)" | tee -a "$RESULTS" >&2
	elif [ "$n" -eq 0 ]; then
		echo "FAIL $name: ran no test (see $log)" | tee -a "$RESULTS" >&2
	fi
	echo "   $name: $n results in $((SECONDS - start)) s (log: ${log#$ROOT/})" >&2
}

if [ "$MODE" = all ] || [ "$MODE" = unit ]; then
	run_suite unit build/tests/unit-tests
	if [ -x build-asan/tests/unit-tests ]; then
		run_suite unit-asan env UNIT_TIER=unit-asan ASAN_OPTIONS=detect_leaks=1 \
			build-asan/tests/unit-tests
	fi
	if [ -x build-fuzz/fuzz-boot ]; then
		run_suite fuzz bash tests/fuzz/run.sh 10
	fi
fi

if [ "$MODE" = all ] || [ "$MODE" = kvm ]; then
	for t in tests/kvm/t-*.sh; do
		base=$(basename "$t" .sh)
		run_suite "kvm-$base" env TIER=kvm bash "$t"
	done
	# The same tier-1 tests against the ASan/UBSan build.
	if [ -x build-asan/godwit ]; then
		for t in tests/kvm/t-*.sh; do
			base=$(basename "$t" .sh)
			grep -q '^# asan: no' "$t" && continue
			run_suite "kvm-asan-$base" env TIER=kvm-asan GODWIT="$ROOT/build-asan/godwit" \
				ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 bash "$t"
		done
	fi
fi

if [ "$MODE" = all ] || [ "$MODE" = hwhost ]; then
	run_suite hwhost bash tests/hwhost/run.sh
fi

passed=$(grep -c '^PASS ' "$RESULTS")
failed=$(grep -c '^FAIL ' "$RESULTS")
skipped=$(grep -c '^SKIP ' "$RESULTS")
if [ "$have_kvm" -eq 1 ]; then
	# Where /dev/kvm exists, a skipped tier-1 test is a failure.
	bad_skips=$(grep -cE '^SKIP kvm' "$RESULTS")
	if [ "$bad_skips" -gt 0 ]; then
		echo "note: $bad_skips tier-1 test(s) skipped although /dev/kvm exists: counted as failed" >&2
		failed=$((failed + bad_skips))
		skipped=$((skipped - bad_skips))
	fi
fi
retried=$(grep -c '^RETRY ' "$RESULTS")
line="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
# Tier 2's reruns (an emulated L1 that failed, a guest that crashed in it), always said.
{ [ "$MODE" = all ] || [ "$MODE" = hwhost ]; } && line="$line, $retried retried"
echo "$line"
[ "$failed" -eq 0 ]
