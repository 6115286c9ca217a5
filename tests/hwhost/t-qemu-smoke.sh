#!/bin/bash
# tests/hwhost/t-qemu-smoke.sh - validates tier 2 itself: QEMU/KVM boots the Linux guest
# (make linux-guest) with 2 vCPUs and its memory-integrity workload passes.  If this fails,
# the t-godwit-* tests of the same batch say nothing about godwit.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-l1.sh"

name=qemu-smoke
hw_need_guest "$name" || exit 0

log=$T_TMP/$name.log
hw_run "$log" 240 '^linux-guest: poweroff|Kernel panic' \
	"${HW_QEMU[@]}" -smp 2 -m 512M \
	-append "$(hw_append godwit.workload=mem godwit.mem=64 godwit.rate=16 godwit.runtime=5)"
rc=$?
cat "$log"
case $rc in
1) echo "QEMU exited (status $HW_RC) before the guest powered off" ;;
2) echo "timed out after 240 s" ;;
esac
echo "INFO $TIER/$name: QEMU ran $HW_ELAPSED s; guest uptime at /init $(hw_field "$log" "linux-guest: online=" uptime) s; memtest $(grep -a '^memtest: done' "$log" | tr -d '\r')"
hw_check_memtest "$name" "$log" 2
