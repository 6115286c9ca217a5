#!/bin/bash
# Tier 2: godwit boots Debian's stock cloud kernel with 2 vCPUs and 512 MiB;
# the guest sees both CPUs (ACPI MADT) and the memory, runs the memory
# workload without error, powers off (ACPI \_S5_), and godwit exits 0.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-linux-boot
hw_need_guest "$name" || exit 0
log=$T_TMP/godwit-linux.log
hw_run "$log" 300 'linux-guest: memtest exit' \
	"$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
	--cpus 2 --mem 512M --name tier2 \
	--cmdline "$(hw_append godwit.workload=mem godwit.mem=64 godwit.rate=20 godwit.runtime=5)"
wrc=$?
cp "$log" "$SCRATCH/godwit-linux.log" 2>/dev/null
echo "# godwit: guest ran ${HW_ELAPSED}s, exit status ${HW_RC}"
if [ "$wrc" -ne 0 ]; then
	t_fail "$name" "no memtest result within 300 s (wait status $wrc); log tail:"
	hw_tail "$log" 40
	exit 0
fi
hw_check_memtest "$name" "$log" 2 || { hw_tail "$log" 40; exit 0; }

mem_kib=$(t_last_field "$log" "linux-guest: cpus=" mem_kib)
# MemTotal excludes what the kernel reserves for itself; expect 440-512 MiB.
if [ -n "$mem_kib" ] && [ "$mem_kib" -gt $((440 * 1024)) ] && [ "$mem_kib" -le $((512 * 1024)) ]; then
	t_pass godwit-linux-memory
else
	t_fail godwit-linux-memory "guest MemTotal ${mem_kib:-?} KiB for --mem 512M"
fi
if [ "$HW_RC" = 0 ]; then
	t_pass godwit-linux-poweroff
else
	t_fail godwit-linux-poweroff "godwit exited ${HW_RC} after the guest's poweroff, expected 0"
	hw_tail "$log" 20
fi
