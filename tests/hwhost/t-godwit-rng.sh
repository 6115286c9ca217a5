#!/bin/bash
# Tier 2: godwit's virtio-pci transport and virtio-rng under Debian's stock cloud kernel.
# The guest (godwit.workload=devices) must see 1af4:1044 at 00:01.0 bound to virtio-pci,
# a virtio device 4 bound to virtio_rng, read 4096 bytes from /dev/hwrng (which only
# completes if the used ring and the interrupt reach it), over MSI-X; godwit exits 0.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-rng
hw_need_guest "$name" || exit 0
# Seconds per guest run: it takes ~10-20 s, ~40 s on a loaded host.
wait_s=300

# why_unfinished LOG WAIT_STATUS: why run_guest saw no poweroff line, with the guest's last
# output line, so the FAIL line alone (all that CI shows) says where the guest stopped.
why_unfinished() {
	local -a lines
	local i last='(none)' why
	mapfile -t lines 2>/dev/null <"$1"
	for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
		last=${lines[i]%$'\r'}
		# Not blank lines, godwit's line about hw_stop's SIGTERM, or the command (hw_start's).
		[[ -n ${last// /} && $last != "godwit: "*"stopped by signal"* && $last != "+ "* ]] && break
		last='(none)'
	done
	case $2 in
	1) why="godwit exited with status ${HW_RC:-?} before the guest's poweroff line" ;;
	2) why="no poweroff line within $wait_s s (godwit still running; stopped, status ${HW_RC:-?})" ;;
	*) why="wait status $2" ;;
	esac
	echo "$why after ${HW_ELAPSED:-?} s; last output line: '${last:0:200}'"
}

# hang_state PID: what godwit's threads are doing (state, CPU used over 2 s, kernel wait
# channel: a halted guest sleeps, a spinning one burns CPU) and the host kernel's last
# messages (KVM's, inside L1).  Builtins except dmesg: it runs only for a hung guest.
hang_state() {
	local t st comm w
	local -A used
	local -a f
	for t in /proc/"$1"/task/*; do
		read -r st <"$t/stat" 2>/dev/null || continue
		read -ra f <<<"${st##*) }"
		used[$t]=$((f[11] + f[12]))
	done
	hw_sleep 2
	for t in /proc/"$1"/task/*; do
		read -r st <"$t/stat" 2>/dev/null || continue
		read -ra f <<<"${st##*) }"
		comm=? w=
		read -r comm <"$t/comm"
		read -r w <"$t/wchan"
		echo "godwit thread $comm: state ${f[0]}, cpu $(((f[11] + f[12] - ${used[$t]:-0}) / 2))% over 2 s, wchan ${w:-?}"
	done
	echo "host kernel's last messages:"
	dmesg 2>/dev/null | tail -n 8
}

# run_guest LOG CMD...: hw_run with its usual wait for the poweroff line, but a guest still
# running at the deadline has its state written to $T_TMP/hang-state.log before the stop.
run_guest() {
	local log=$1 rc
	shift
	rm -f "$T_TMP/hang-state.log"
	hw_start "$log" "$@"
	hw_wait "$log" 'linux-guest: poweroff' "$wait_s" "$HW_PID"
	rc=$?
	[ $rc -eq 2 ] && hang_state "$HW_PID" >"$T_TMP/hang-state.log" 2>&1
	[ $rc -eq 0 ] && hw_wait_exit "$HW_PID" 30
	hw_stop "$HW_PID"
	HW_ELAPSED=$(hw_since "$HW_T0")
	return $rc
}

log=$T_TMP/godwit-rng.log
run_guest "$log" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
	--cpus 2 --mem 512M --name tier2-rng --rng \
	--cmdline "$(hw_append godwit.workload=devices)"
wrc=$?
echo "# godwit: guest ran ${HW_ELAPSED}s, exit status ${HW_RC}"
# The lspci-like lines, for the record.
while IFS= read -r l; do
	l=${l%$'\r'}
	case $l in "linux-guest: pci "*|"linux-guest: virtio "*|"linux-guest: irq"*|"linux-guest: hwrng"*)
		echo "INFO $name: ${l#linux-guest: }" ;;
	esac
done <"$log"
if [ "$wrc" -ne 0 ]; then
	t_fail "$name" "$(why_unfinished "$log" "$wrc"); log tail:"
	hw_tail "$log" 40
	[ -f "$T_TMP/hang-state.log" ] && hw_tail "$T_TMP/hang-state.log" 30
	exit 0
fi

pci=$(hw_line "$log" "linux-guest: pci 0000:00:01.0 ")
if [ "$pci" = "vendor=0x1af4 device=0x1044 driver=virtio-pci" ]; then
	t_pass godwit-rng-pci
else
	t_fail godwit-rng-pci "00:01.0 is '${pci:-absent}', expected 1af4:1044 bound to virtio-pci"
	hw_tail "$log" 30
fi

virt=$(hw_line "$log" "linux-guest: virtio virtio0 ")
if [ "$virt" = "device=0x0004 driver=virtio_rng" ]; then
	t_pass godwit-rng-driver
else
	t_fail godwit-rng-driver "virtio0 is '${virt:-absent}', expected device 4 bound to virtio_rng"
fi

cur=$(hw_line "$log" "linux-guest: hwrng=")
cur=${cur%% *}
bytes=$(t_last_field "$log" "linux-guest: hwrng=" bytes)
nonzero=$(t_last_field "$log" "linux-guest: hwrng=" nonzero)
if [[ $cur == virtio_rng* ]] && [ "$bytes" = 4096 ] && [ "${nonzero:-0}" -gt 3900 ]; then
	t_pass godwit-rng-entropy
else
	t_fail godwit-rng-entropy "hwrng=${cur:-?} bytes=${bytes:-?} nonzero=${nonzero:-?} (expected virtio_rng.*, 4096, > 3900)"
	hw_tail "$log" 30
fi

# MSI-X: the request queue's vector is an MSI interrupt that fired at least once (the
# device offers no MSI capability, so any PCI-MSI* line is MSI-X; 6.1 names it PCI-MSI).
msix=0
while IFS= read -r l; do
	l=${l%$'\r'}
	[[ $l == "linux-guest: irq"*PCI-MSI*virtio0-* ]] || continue
	[[ $l == *config* ]] && continue
	read -ra w <<<"${l#linux-guest: irq}"
	n=0
	for x in "${w[@]:1}"; do [[ $x =~ ^[0-9]+$ ]] && n=$((n + x)) || break; done
	[ "$n" -gt 0 ] && msix=1
done <"$log"
if [ "$msix" = 1 ]; then
	t_pass godwit-rng-msix
else
	t_fail godwit-rng-msix "no virtio0 queue interrupt on PCI-MSI(X) with a nonzero count"
fi

if [ "$HW_RC" = 0 ] && ! grep -q 'needs reset' "$log"; then
	t_pass godwit-rng-exit
else
	t_fail godwit-rng-exit "godwit exited ${HW_RC} (expected 0) or reported a device needing reset"
	hw_tail "$log" 20
fi

# INTx: with MSI disabled in the guest (pci=nomsi) the driver falls back to the legacy
# line (ISR status register + a level-triggered IOAPIC pin from config byte 0x3c).
log=$T_TMP/godwit-rng-intx.log
run_guest "$log" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
	--cpus 1 --mem 256M --name tier2-rng-intx --rng \
	--cmdline "$(hw_append pci=nomsi godwit.workload=devices)"
wrc=$?
bytes=$(t_last_field "$log" "linux-guest: hwrng=" bytes)
intx=$(hw_line "$log" "linux-guest: irq")
echo "# INTx run: ${HW_ELAPSED}s, exit ${HW_RC}, hwrng bytes=${bytes:-?}, irq line: ${intx:-none}"
if [ "$wrc" -eq 0 ] && [ "$bytes" = 4096 ] && [[ $intx == *IO-APIC* ]] && [ "$HW_RC" = 0 ]; then
	t_pass godwit-rng-intx
else
	if [ "$wrc" -ne 0 ]; then
		t_fail godwit-rng-intx "pci=nomsi: $(why_unfinished "$log" "$wrc"); log tail:"
	else
		t_fail godwit-rng-intx "pci=nomsi: hwrng bytes=${bytes:-?} irq '${intx:-none}' exit ${HW_RC:-?}"
	fi
	hw_tail "$log" 30
	[ -f "$T_TMP/hang-state.log" ] && hw_tail "$T_TMP/hang-state.log" 30
fi
