#!/bin/bash
# Tier 2: Debian's cloud kernel binds virtio_blk to godwit's --disk: the guest
# sees the capacity, serial, a write-back cache (FLUSH) and the discard and
# write-zeroes limits, reads back a pattern the host put in the image, writes
# 8 MiB of 'G' to /dev/vda, syncs and discards MiB 4-5 (guest/linux/init,
# godwit.workload=disk); the host then checks the image file: 'G' with a
# zeroed hole at 4-6 MiB, the host's pattern after them untouched.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-disk
hw_need_guest "$name" || exit 0
log=$T_TMP/godwit-disk.log
img=$SCRATCH/godwit-disk.img
rm -f "$img"
truncate -s 64M "$img"
# MiB 8: 1 MiB of 'H', for the guest to read back.
head -c 1048576 /dev/zero | tr '\0' H | dd of="$img" bs=1M seek=8 conv=notrunc status=none
want_md5=$(head -c 1048576 /dev/zero | tr '\0' H | md5sum | cut -d' ' -f1)

hw_run "$log" 300 '^linux-guest: disk=|^linux-guest: poweroff|Kernel panic' \
	"$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" --mem 512M \
	--disk "$img,serial=godwit-t2-disk" --cmdline "$(hw_append godwit.workload=disk)"
wrc=$?
echo "# godwit: guest ran ${HW_ELAPSED}s, exit status ${HW_RC}"
if [ "$wrc" -ne 0 ]; then
	t_fail "$name" "no disk result within 300 s (wait status $wrc); log tail:"
	hw_tail "$log" 40
	exit 0
fi

info=$(hw_line "$log" "linux-guest: disk vda ")
result=$(hw_line "$log" "linux-guest: disk=")
if [ -z "$info" ]; then
	t_fail "$name-bind" "the guest has no /dev/vda (virtio_blk not bound): $(hw_line "$log" "linux-guest: disk=")"
	hw_tail "$log" 40
	exit 0
fi
# $SCRATCH is ext4: hole punching works, so discard is offered (1 GiB per request).
want="sectors=131072 ro=0 serial=godwit-t2-disk cache=write-back discard_max=1073741824 write_zeroes_max=1073741824"
if [[ " $info " == *" $want "* ]]; then
	t_pass "$name-bind"
else
	t_fail "$name-bind" "guest saw '$info', expected $want"
fi

got_md5=$(t_last_field "$log" "linux-guest: disk read_md5=" read_md5)
if [ "$got_md5" = "$want_md5" ]; then
	t_pass "$name-read"
else
	t_fail "$name-read" "the guest read MiB 8 as md5 ${got_md5:-?}, the host wrote $want_md5"
fi

# The host's view of the image, independently of the guest.
g=$( (head -c 4194304 "$img"; dd if="$img" bs=1M skip=6 count=2 status=none) | tr -d G | wc -c)
z=$(dd if="$img" bs=1M skip=4 count=2 status=none | tr -d '\0' | wc -c)
h=$(dd if="$img" bs=1M skip=8 count=1 status=none | md5sum | cut -d' ' -f1)
alloc_kib=$(($(stat -c '%b * %B' "$img") / 1024))
size=$(stat -c %s "$img")
if [ "$result" != ok ]; then
	t_fail "$name-write" "guest: disk=$result"
	hw_tail "$log" 20
elif [ "$g" != 0 ]; then
	t_fail "$name-write" "$g bytes of the image's MiB 0-3 and 6-7 are not the guest's 'G'"
elif [ "$z" != 0 ]; then
	t_fail "$name-write" "$z bytes of the discarded MiB 4-5 are not zero"
elif [ "$alloc_kib" -gt $((7 * 1024 + 512)) ]; then
	t_fail "$name-write" "the image has $alloc_kib KiB allocated: the discard punched no hole (expected ~7 MiB)"
elif [ "$h" != "$want_md5" ] || [ "$size" != 67108864 ]; then
	t_fail "$name-write" "the image beyond 8 MiB changed (md5 $h, size $size)"
else
	t_pass "$name-write"
fi
if [ "$HW_RC" = 0 ]; then
	t_pass "$name-poweroff"
else
	t_fail "$name-poweroff" "godwit exited ${HW_RC} after the guest's poweroff, expected 0"
	hw_tail "$log" 20
fi
rm -f "$img"
