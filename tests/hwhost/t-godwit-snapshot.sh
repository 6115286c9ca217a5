#!/bin/bash
# Tier 2: godwit snapshot / restore with Debian's cloud kernel (2 vCPUs,
# 512 MiB, a --disk) while memtest runs: after a few memtest reports,
# `godwit snapshot` (without --resume) stops the VM and godwit exits 0; then
# `godwit restore --from FILE --disk IMG` continues the same guest: new memtest
# reports after the restore, t= going on from where it was (not from 0), and
# at the end `memtest: done` with errors=0, `linux-guest: memtest exit=0`, the
# guest's poweroff, and godwit exiting 0.  Both godwits run sandboxed: every
# thread shows Seccomp 2, NoNewPrivs 1, CapEff 0 (sandbox-run, sandbox-restore).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-snapshot
hw_need_guest "$name" || exit 0
log0=$T_TMP/godwit-snapshot-run.log
log1=$T_TMP/godwit-snapshot-restore.log
img=$SCRATCH/godwit-snapshot.img
snap=$SCRATCH/godwit-snapshot.gws
sock=$SCRATCH/api0.sock
sock1=$SCRATCH/api1.sock
rm -f "$img" "$snap"
truncate -s 64M "$img"
RUNTIME=${SNAPSHOT_RUNTIME:-40}

# memtest_ts LOG: sets MT to the t= values of LOG's memtest reports (bash builtins only).
memtest_ts() {
	local l
	local -a lines
	MT=()
	mapfile -t lines <"$1"
	for l in "${lines[@]}"; do
		[[ $l =~ ^memtest:\ t=([0-9]+\.[0-9]) ]] && MT+=("${BASH_REMATCH[1]}")
	done
}
# bad_reports LOG: memtest report or ERROR lines with errors other than 0.
bad_reports() {
	local l
	local -a lines
	mapfile -t lines <"$1"
	for l in "${lines[@]}"; do
		[[ $l == "memtest: ERROR"* ]] && echo "$l"
		[[ $l =~ ^memtest:\ t=.*\ errors=([0-9]+) ]] && [ "${BASH_REMATCH[1]}" != 0 ] && echo "$l"
	done
}

# ---- run, wait for memtest, snapshot (stop) ------------------------------------------------
hw_start "$log0" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
	--cpus 2 --mem 512M --name tier2-snap --api "$sock" --disk "$img" --snapshot-dir "$SCRATCH" \
	--cmdline "$(hw_append godwit.workload=mem godwit.mem=64 godwit.rate=20 godwit.runtime=$RUNTIME)"
pid0=$HW_PID
# Three reports: memtest has filled its pages and is rewriting them.
hw_wait "$log0" '^memtest: t=[0-9.]+ .*' 300 "$pid0"
rc=$?
if [ $rc -eq 0 ]; then
	for ((i = 0; i < 60; i++)); do
		memtest_ts "$log0"
		[ ${#MT[@]} -ge 3 ] && break
		hw_sleep 0.5
	done
fi
memtest_ts "$log0"
if [ ${#MT[@]} -lt 3 ]; then
	t_fail "$name" "no memtest reports before the snapshot (wait status $rc, ${#MT[@]} reports)"
	hw_tail "$log0" 40
	hw_stop "$pid0"
	exit 0
fi
hw_check_sandbox "$name-sandbox-run" "$pid0"
"$GODWIT" snapshot --api "$sock" --out "$snap" >"$T_TMP/snap.log" 2>&1
src=$?
hw_wait_exit "$pid0" 60 || hw_stop "$pid0"
vmrc=$HW_RC
memtest_ts "$log0"
ts0=("${MT[@]}")
last0=${ts0[${#ts0[@]}-1]}
echo "# $(<"$T_TMP/snap.log")"
if [ $src -ne 0 ] || [ "$vmrc" != 0 ] || [ ! -s "$snap" ]; then
	t_fail "$name-stop" "snapshot exit $src, godwit exit $vmrc (expected 0, 0): $(<"$T_TMP/snap.log")"
	hw_tail "$log0" 20
	exit 0
fi
t_pass "$name-stop"
size=$(stat -c %s "$snap")
echo "INFO $name: $(<"$T_TMP/snap.log"); file $((size >> 20)) MiB; ${#ts0[@]} reports before it, last t=$last0"
if grep -qa 'memtest: done\|linux-guest: memtest exit' "$log0"; then
	t_fail "$name" "memtest finished before the snapshot: nothing left to continue (raise SNAPSHOT_RUNTIME)"
	exit 0
fi

# ---- restore: the guest goes on -------------------------------------------------------------
hw_start "$log1" "$GODWIT" restore --from "$snap" --disk "$img" --api "$sock1"
pid1=$HW_PID
# The restored VM's threads, once it runs the guest again.
if hw_wait "$log1" '^memtest: t=[0-9.]+ .*' 300 "$pid1"; then
	hw_check_sandbox "$name-sandbox-restore" "$pid1"
else
	t_fail "$name-sandbox-restore" "the restored guest printed no memtest report"
fi
hw_wait "$log1" '^linux-guest: poweroff|Kernel panic' $((RUNTIME * 6 + 120)) "$pid1"
wrc=$?
[ $wrc -eq 0 ] && hw_wait_exit "$pid1" 60
hw_stop "$pid1"
memtest_ts "$log1"
ts1=("${MT[@]}")
echo "# restore: godwit exit $HW_RC after ${HW_WAITED}s; ${#ts1[@]} memtest reports, first t=${ts1[0]:-?} last t=${ts1[${#ts1[@]}-1]:-?}; $(hw_line "$log1" 'memtest: done')"
if [ ${#ts1[@]} -lt 2 ]; then
	t_fail "$name-restore" "no memtest reports after the restore (wait status $wrc)"
	hw_tail "$log1" 40
	exit 0
fi
# t= counts from memtest's start: after the restore it continues from the last report
# before the snapshot (kvmclock frozen across the stop), it does not start again from 0.
if [ "$(t_tenths "${ts1[0]}")" -lt "$(t_tenths "$last0")" ]; then
	t_fail "$name-restore" "the guest's clock went back: t=${ts1[0]} after the restore, t=$last0 before"
elif [ "$(t_tenths "${ts1[0]}")" -gt $(($(t_tenths "$last0") + 50)) ]; then
	t_fail "$name-restore" "the guest's clock jumped: t=${ts1[0]} after the restore, t=$last0 before"
else
	t_pass "$name-restore"
fi
bad=$( (bad_reports "$log0"; bad_reports "$log1") | head -n 3)
if [ -n "$bad" ]; then
	t_fail "$name-memtest" "memtest errors: $bad"
	hw_tail "$log1" 30
else
	# memtest: done errors=0, memtest exit=0 (and cpus=2, from the first run's log).
	cat "$log0" "$log1" >"$T_TMP/godwit-snapshot-all.log"
	hw_check_memtest "$name-memtest" "$T_TMP/godwit-snapshot-all.log" 2
fi
if [ "$wrc" = 0 ] && [ "$HW_RC" = 0 ]; then
	t_pass "$name-poweroff"
else
	t_fail "$name-poweroff" "after the restore: wait status $wrc, godwit exit $HW_RC (expected 0 after the guest's poweroff)"
	hw_tail "$log1" 20
fi
rm -f "$img" "$snap"
