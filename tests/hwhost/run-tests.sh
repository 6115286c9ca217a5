#!/bin/bash
# tests/hwhost/run-tests.sh RESULTS LOGDIR TEST... - runs tier-2 test scripts one after
# another, on a host with hardware-like /dev/kvm: inside L1 (tests/hwhost/l1-init runs it
# through the job file run.sh writes) or directly (run.sh on a machine with VT-x/AMD-V).
#
# Each test runs as `bash TEST` with ROOT, BUILD, TIER=hwhost and SCRATCH set, its output in
# LOGDIR/NAME.log (files it keeps, such as guest logs, in HW_ARTIFACTS=LOGDIR/NAME/), under
# a timeout of HWHOST_TEST_TIMEOUT seconds (default 600).  Its PASS/FAIL/SKIP and INFO lines
# are appended to the file RESULTS as they come, with the indented "  | " lines a test
# prints after a FAIL (lib-l1.sh's hw_tail: a bounded log tail), then "TIME NAME SECONDS";
# a test that timed out or printed no result gets a FAIL line.  The last line of RESULTS is
# "DONE".
#
# With HWHOST_EMULATED=1 (run.sh sets it inside the emulated L1) a test that failed while
# its guest crashed (godwit's "triple fault (KVM_EXIT_SHUTDOWN)", a guest "Kernel panic")
# or was wedged (lib-l1.sh's hw_diag verdict), in its log or its saved logs, gets instead
# of its results one line "RETRY hwhost/NAME: why" and its FAIL lines as "RETRIED NAME
# FAIL ..." lines: run.sh runs it again in a fresh L1 (see there why).  On real hardware
# the FAIL stands.
set -u
results=$1
logdir=$2
shift 2
: "${ROOT:?}" "${BUILD:?}" "${SCRATCH:?}"
export ROOT BUILD SCRATCH TIER=hwhost
export HWHOST_TEST_TIMEOUT=${HWHOST_TEST_TIMEOUT:-600}
mkdir -p "$logdir" "$SCRATCH"
cd "$ROOT" || exit 1

# What a crashed guest leaves in its VMM's log (godwit: src/vmm/vcpu.c; the guest's console),
# and lib-l1.sh's hw_diag for a guest the emulator wedged.
GUEST_CRASH_RE='vcpu[0-9]+: triple fault \(KVM_EXIT_SHUTDOWN\)|Kernel panic - not syncing.*|verdict: a vCPU thread ran while the guest made no progress.*'

# Starting a process costs 0.1-0.3 s inside L1: builtins where possible.
uptime() { local up _; read -r up _ </proc/uptime; echo "$up"; }
echo "hwhost: runner started, uptime $(uptime) s"
for t in "$@"; do
	name=${t##*/}
	name=${name%.sh}
	name=${name#t-}
	log=$logdir/$name.log
	export HW_ARTIFACTS=$logdir/$name
	start=${EPOCHREALTIME/[.,]/}
	echo "hwhost: running $name (uptime $(uptime) s)"
	# Forward result lines while the test runs, so the outer host sees progress, and the
	# log tails that follow a FAIL, so a failure can be diagnosed from CI output alone.
	# A test's lines go to RESULTS when it ends (run.sh takes only ended tests' lines).
	timeout -k 10 "$HWHOST_TEST_TIMEOUT" bash "$t" </dev/null 2>&1 |
		tee "$log" | grep --line-buffered -E '^(PASS|FAIL|SKIP|INFO) |^  \| ' >"$results.test"
	rc=${PIPESTATUS[0]}
	crash=''
	if [ "${HWHOST_EMULATED:-0}" = 1 ] && grep -q '^FAIL ' "$results.test"; then
		crash=$(grep -h -m1 -aoE "$GUEST_CRASH_RE" "$log" "$HW_ARTIFACTS"/*.log 2>/dev/null |
			head -n 1 | tr -d '\r' | cut -c1-100)
	fi
	if [ -n "$crash" ]; then
		{
			echo "RETRY hwhost/$name: its guest crashed or wedged ($crash)"
			grep -E '^FAIL ' "$results.test" | head -n 5 | cut -c1-300 | sed "s/^/RETRIED $name /"
		} >>"$results"
	else
		cat "$results.test" >>"$results"
	fi
	rm -f "$results.test"
	secs=$(( (${EPOCHREALTIME/[.,]/} - start) / 100000 ))
	secs=$((secs / 10)).$((secs % 10))
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		echo "FAIL hwhost/$name: timed out after ${HWHOST_TEST_TIMEOUT} s" >>"$results"
	elif ! grep -qE '^(PASS|FAIL|SKIP) ' "$log"; then
		echo "FAIL hwhost/$name: exited with status $rc and printed no result" >>"$results"
	fi
	echo "TIME $name $secs" >>"$results"
	echo "hwhost: $name took $secs s (exit $rc)"
done
echo "DONE" >>"$results"
