#!/bin/bash
# guest/qemu-test.sh - the test guest's polling virtio drivers against QEMU's
# virtio-pci devices, the reference implementation (-M pc, qboot, PVH boot):
#   disk-rw          pattern written, flushed, read back, verified; the image
#                    holds the pattern inside the range and nothing outside it
#   disk-ro          VIRTIO_BLK_F_RO seen, the one write refused with IOERR,
#                    read passes only
#   disk-ro-corrupt  a byte flipped in the image is reported as an ERROR
#   rng              64 KiB read, all 256 byte values seen
#   net              ARP, ICMP echo (incl. 1500-byte packets) and UDP echo on
#                    port 7 from a peer in a private network namespace
#   mem+disk+net     the three together on 2 vCPUs: memtest clean, the others
#                    still answer
# Prints PASS/FAIL/SKIP lines like tests/*.  Needs qemu-system-x86_64 and
# /dev/kvm; the net tests need root (ip netns, tap), busybox ping, python3.
# Usage: bash guest/qemu-test.sh   (GUEST_ELF= to test another image)
. "$(dirname "$0")/../tests/lib.sh"
TIER=qemu

QEMU=${QEMU:-qemu-system-x86_64}
QBOOT=${QBOOT:-/usr/share/qemu/qboot.rom}
NS=gwq-$$
IMG=$T_TMP/disk.img

command -v "$QEMU" >/dev/null || { t_skip virtio "no $QEMU"; exit 0; }
t_need_kvm virtio || exit 0
[ -f "$QBOOT" ] || { t_skip virtio "no $QBOOT"; exit 0; }
[ -f "$GUEST_ELF" ] || { t_fail virtio "test guest $GUEST_ELF not built"; exit 0; }

# qemu LOG CMDLINE QEMU-ARGS...: run the guest to its poweroff (bounded).
qemu() {
	local log=$1 cmdline=$2
	shift 2
	timeout 40 $NETNS "$QEMU" -M pc -bios "$QBOOT" -enable-kvm -cpu host,-arch-capabilities \
		-m 256M -nodefaults -no-user-config -display none -serial "file:$log" \
		-kernel "$GUEST_ELF" -append "$cmdline" "$@" </dev/null >"$log.qemu" 2>&1
}

# field LINE KEY: the value of KEY=... in LINE.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# block_hdr IMG BLOCK: "index gen magic" of a 4 KiB block of the image.
block_hdr() {
	python3 -c 'import struct,sys
f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])*4096); b=f.read(32)
i,g,c,m=struct.unpack("<QQQ8s",b); print(i,g,m.decode("latin-1").replace("\0","0"))' "$1" "$2"
}

# ---- disk ----
truncate -s 16M "$IMG"
log=$T_TMP/disk-rw.log
qemu "$log" 'workload=disk runtime=4 disk_start=2 disk_mib=8' \
	-drive "file=$IMG,if=none,id=d0,format=raw" \
	-device virtio-blk-pci,drive=d0,disable-legacy=on,serial=gw-serial-1
found=$(grep -m1 '^disk: found' "$log")
last=$(grep '^disk: t=' "$log" | tail -1)
if [ "$(field "$found" capacity_mib)" != 16 ] || [ "$(field "$found" serial)" != gw-serial-1 ] ||
	[ "$(field "$found" ro)" != 0 ]; then
	t_fail disk-rw "found line: '$found'; log tail: $(tail -c 300 "$log")"
elif [ -z "$last" ] || [ "$(field "$last" errors)" != 0 ] || grep -q 'disk: ERROR\|did not answer' "$log"; then
	t_fail disk-rw "errors: $(grep -m3 'ERROR\|did not answer' "$log") last: '$last'"
elif [ "$(field "$last" written_mib)" -lt 16 ] || [ "$(field "$last" read_mib)" -lt 16 ] ||
	[ "$(field "$last" flushes)" -lt 2 ] || [ "$(field "$last" gen)" -lt 3 ]; then
	t_fail disk-rw "too little done: '$last'"
else
	# Blocks 512..2559 (2-10 MiB) hold the pattern; 511 and 2560 were never written.
	in=$(block_hdr "$IMG" 512) end=$(block_hdr "$IMG" 2559)
	before=$(block_hdr "$IMG" 511) after=$(block_hdr "$IMG" 2560)
	if [[ "$in" != "512 "*" GDWITBLK" || "$end" != "2559 "*" GDWITBLK" ]] ||
		[ "$before" != "0 0 00000000" ] || [ "$after" != "0 0 00000000" ]; then
		t_fail disk-rw "image: block 512 '$in', 2559 '$end', 511 '$before', 2560 '$after'"
	else
		t_pass disk-rw
	fi
fi

log=$T_TMP/disk-ro.log
qemu "$log" 'workload=disk runtime=3 disk_start=2 disk_mib=8 disk_ro_check=1' \
	-drive "file=$IMG,if=none,id=d0,format=raw,readonly=on" \
	-device virtio-blk-pci,drive=d0,disable-legacy=on
found=$(grep -m1 '^disk: found' "$log")
last=$(grep '^disk: t=' "$log" | tail -1)
if [ "$(field "$found" ro)" != 1 ]; then
	t_fail disk-ro "found line: '$found'; log tail: $(tail -c 300 "$log")"
elif ! grep -q '^disk: write to read-only disk refused status=1$' "$log"; then
	t_fail disk-ro "no refused write: $(grep -m1 'read-only disk' "$log")"
elif [ "$(field "$last" written_mib)" != 0 ] || [ "$(field "$last" errors)" != 0 ] ||
	[ "$(field "$last" read_mib)" -lt 8 ]; then
	t_fail disk-ro "last report: '$last'"
else
	t_pass disk-ro
fi

python3 -c 'import sys
f=open(sys.argv[1],"r+b"); f.seek(513*4096+1000); b=f.read(1); f.seek(-1,1); f.write(bytes([b[0]^0x5a]))' "$IMG"
log=$T_TMP/disk-ro-corrupt.log
qemu "$log" 'workload=disk runtime=2 disk_start=2 disk_mib=8' \
	-drive "file=$IMG,if=none,id=d0,format=raw,readonly=on" \
	-device virtio-blk-pci,drive=d0,disable-legacy=on
last=$(grep '^disk: t=' "$log" | tail -1)
if ! grep -q '^disk: ERROR block=513 .*content=corrupt' "$log" || [ "$(field "$last" errors)" = 0 ]; then
	t_fail disk-ro-corrupt "flipped byte not reported; last: '$last'"
else
	t_pass disk-ro-corrupt
fi

# ---- rng ----
log=$T_TMP/rng.log
qemu "$log" 'workload=rng runtime=2' -device virtio-rng-pci,disable-legacy=on
line=$(grep -m1 '^rng: bytes=' "$log")
if [ "$(field "$line" bytes)" != 65536 ] || [ "$(field "$line" distinct_bytes)" != 256 ]; then
	t_fail rng "'$line'; log tail: $(tail -c 300 "$log")"
else
	t_pass rng
fi

# ---- net ----
# net_run NAME CMDLINE SMP: boot the guest with a virtio-net on a tap in
# namespace $NS (peer 198.18.0.1), ping it and echo UDP through it.
net_run() {
	local name=$1 cmdline=$2 smp=$3 qpid pings udp last i
	log=$T_TMP/$name.log
	ip netns add "$NS" || { t_fail "$name" "ip netns add failed"; return 1; }
	ip netns exec "$NS" ip link set lo up
	ip netns exec "$NS" ip tuntap add dev gwtap0 mode tap
	ip netns exec "$NS" ip addr add 198.18.0.1/24 dev gwtap0
	ip netns exec "$NS" ip link set gwtap0 up
	NETNS="ip netns exec $NS" qemu "$log" "$cmdline" -smp "$smp" \
		-netdev tap,id=n0,ifname=gwtap0,script=no,downscript=no \
		-device virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:12:34:56 \
		${DISK:+-drive "file=$IMG,if=none,id=d0,format=raw"} \
		${DISK:+-device virtio-blk-pci,drive=d0,disable-legacy=on} &
	qpid=$!
	t_wait_for "$log" '^net: found' 10
	pings=$(ip netns exec "$NS" busybox ping -c 5 -i 0.2 -W 1 198.18.0.2 2>&1 | grep -c 'bytes from')
	pings=$((pings + $(ip netns exec "$NS" busybox ping -c 2 -s 1472 -W 1 198.18.0.2 2>&1 | grep -c 'bytes from')))
	udp=$(ip netns exec "$NS" python3 -c '
import socket, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0); ok = lost = 0
for i in range(50):
    p = os.urandom(1 + i * 29)
    s.sendto(p, ("198.18.0.2", 7))
    try:
        d, a = s.recvfrom(2048); ok += d == p and a == ("198.18.0.2", 7)
    except socket.timeout:
        lost += 1
        if lost == 3:
            break
print(ok)' 2>&1)
	# Let the guest report once more (and memtest run a while), then stop it.
	sleep 1.3
	for ((i = 0; i < 100 && $(grep -c '^memtest: t=' "$log") < ${MIN_MEMTEST:-0}; i++)); do
		sleep 0.1
	done
	ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null
	wait "$qpid"
	ip netns del "$NS"
	last=$(grep '^net: t=' "$log" | tail -1)
	if [ "$pings" != 7 ] || [ "$udp" != 50 ]; then
		t_fail "$name" "peer got $pings/7 ping replies, $udp/50 UDP echoes; guest: '$last'"
		return 1
	fi
	if [ "$(field "$last" arp)" -lt 1 ] || [ "$(field "$last" icmp)" != 7 ] ||
		[ "$(field "$last" udp)" != 50 ] || [ "$(field "$last" drops)" != 0 ]; then
		t_fail "$name" "guest counters: '$last'; log: $(grep -c . "$log") lines, tail: $(tail -n 3 "$log" | tr "\n" "|")"
		return 1
	fi
	return 0
}

if [ "$(id -u)" != 0 ] || ! command -v busybox >/dev/null || ! command -v python3 >/dev/null; then
	t_skip net "needs root, busybox and python3"
	t_skip mem+disk+net "needs root, busybox and python3"
	exit 0
fi
net_run net 'workload=net runtime=60' 1 && t_pass net

truncate -s 0 "$IMG"
truncate -s 16M "$IMG"
if DISK=1 MIN_MEMTEST=3 net_run mem+disk+net 'workload=mem+disk+net mem=32 rate=20 disk_mib=4 runtime=60' 2; then
	mt=$(grep '^memtest: t=' "$log" | tail -1)
	dk=$(grep '^disk: t=' "$log" | tail -1)
	if [ "$(field "$mt" errors)" != 0 ] || [ "$(grep -c '^memtest: t=' "$log")" -lt 3 ]; then
		t_fail mem+disk+net "memtest: '$mt'"
	elif [ "$(field "$dk" errors)" != 0 ] || [ "$(field "$dk" gen)" -lt 3 ]; then
		t_fail mem+disk+net "disk: '$dk'"
	else
		t_pass mem+disk+net
	fi
fi
