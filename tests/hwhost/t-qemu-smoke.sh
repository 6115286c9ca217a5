#!/bin/bash
# tests/hwhost/t-qemu-smoke.sh - validates tier 2 itself: QEMU/KVM boots the Linux guest
# (make linux-guest) with 2 vCPUs and its memory-integrity workload passes.  If this fails,
# the t-godwit-* tests of the same batch say nothing about godwit.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-l1.sh"

name=qemu-smoke
hw_need_guest "$name" || exit 0

log=$T_TMP/$name.log
hw_start "$log" "${HW_QEMU[@]}" -smp 2 -m 512M \
	-append "$(hw_append godwit.workload=mem godwit.mem=64 godwit.rate=16 godwit.runtime=5)"
boot=timeout
hw_wait "$log" '^linux-guest: cpus=' 180 "$HW_PID" && boot=$(hw_since "$HW_T0")
hw_wait "$log" '^linux-guest: poweroff|Kernel panic' 120 "$HW_PID"
case $? in
1) echo "QEMU exited before the guest powered off" ;;
2) echo "timed out waiting for the guest to power off" ;;
esac
hw_wait_exit "$HW_PID" 30
hw_stop "$HW_PID"
cat "$log"
echo "INFO $TIER/$name: guest /init after $boot s, QEMU ran $(hw_since "$HW_T0") s (status $HW_RC);" \
	"memtest:$(hw_line "$log" "memtest: done")"
hw_check_memtest "$name" "$log" 2
