#!/bin/bash
# Tier 2: godwit's virtio-pci transport and virtio-rng under Debian's stock cloud kernel.
# The guest (godwit.workload=devices) must see 1af4:1044 at 00:01.0 bound to virtio-pci,
# a virtio device 4 bound to virtio_rng, read 4096 bytes from /dev/hwrng (which only
# completes if the used ring and the interrupt reach it), over MSI-X; godwit exits 0.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-rng
hw_need_guest "$name" || exit 0
log=$T_TMP/godwit-rng.log
hw_run "$log" 300 'linux-guest: poweroff' \
	"$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
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
	t_fail "$name" "the guest did not finish within 300 s (wait status $wrc); log tail:"
	hw_tail "$log" 40
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
bytes=$(hw_field "$log" "linux-guest: hwrng=" bytes)
nonzero=$(hw_field "$log" "linux-guest: hwrng=" nonzero)
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
hw_run "$log" 300 'linux-guest: poweroff' \
	"$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
	--cpus 1 --mem 256M --name tier2-rng-intx --rng \
	--cmdline "$(hw_append pci=nomsi godwit.workload=devices)"
wrc=$?
bytes=$(hw_field "$log" "linux-guest: hwrng=" bytes)
intx=$(hw_line "$log" "linux-guest: irq")
echo "# INTx run: ${HW_ELAPSED}s, exit ${HW_RC}, hwrng bytes=${bytes:-?}, irq line: ${intx:-none}"
if [ "$wrc" -eq 0 ] && [ "$bytes" = 4096 ] && [[ $intx == *IO-APIC* ]] && [ "$HW_RC" = 0 ]; then
	t_pass godwit-rng-intx
else
	t_fail godwit-rng-intx "pci=nomsi: hwrng bytes=${bytes:-?} irq '${intx:-none}' exit ${HW_RC:-?} (wait $wrc)"
	hw_tail "$log" 30
fi
