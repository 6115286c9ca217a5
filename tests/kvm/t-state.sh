#!/bin/bash
# Tier 1: vCPU and VM state save/load (src/arch/x86/cpu_state.c), selftest
# style.  build/tests/state-test (tests/kvm/state_test.c) boots the test
# guest with 1 and then 2 vCPUs, and at 5 sync points saves every vCPU, the
# in-kernel devices, the platform devices and RAM, destroys the VM, loads
# all of it into a new VM, compares every register with what was saved and
# lets the guest go on.  It prints its own PASS/FAIL lines:
#   state-Ncpu-roundtrip      every register read back equals the saved one
#   state-Ncpu-guest          the guest goes on: reports, errors=0, t never
#                             back, every vCPU running, AP online
#   state-Ncpu-clock          TSC and kvmclock follow the clock mode; the
#                             guest's stall matches the downtime (advance)
#   state-Ncpu-negative       truncated/corrupt buffers fail cleanly
#   state-Ncpu-io-completion  a pending IN/OUT is completed before the save
. "$(dirname "$0")/../lib.sh"

STATE_TEST=${STATE_TEST:-$(dirname "$GODWIT")/tests/state-test}

t_need_kvm state || exit 0
[ -x "$STATE_TEST" ] || { t_fail state "$STATE_TEST not built (make unit)"; exit 0; }
[ -f "$GUEST_ELF" ] || { t_fail state "test guest $GUEST_ELF not built"; exit 0; }

out=$T_TMP/state.out
TIER=$TIER timeout 600 "$STATE_TEST" "$GUEST_ELF" 1 2 >"$out" 2>"$T_TMP/state.err"
rc=$?
grep -E '^(PASS|FAIL|SKIP) ' "$out"
if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' "$out"; then
	t_fail state "exited with status $rc; stderr tail: $(tail -c 600 "$T_TMP/state.err")"
fi
# The measured downtimes and stalls, for the log.
grep -E '^state-test:|^# note' "$out" "$T_TMP/state.err" | sed 's/^[^:]*://' >&2
