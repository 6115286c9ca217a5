#!/bin/bash
# tests/fuzz/run.sh [SECONDS] - a short libFuzzer run of each fuzz target
# from seed inputs; a crash, leak or sanitizer report fails the test.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-15}
# fuzz_target NAME TARGET CORPUS: build-fuzz/fuzz-TARGET for $secs seconds from CORPUS;
# PASS fuzz/NAME, or FAIL with the fuzzer's report (a crash, leak or sanitizer finding).
fuzz_target() {
	local log
	log=$(mktemp)
	if timeout $((secs + 60)) "$ROOT/build-fuzz/fuzz-$2" -max_total_time="$secs" -rss_limit_mb=2048 \
		"$3" >"$log" 2>&1; then
		echo "PASS fuzz/$1: $(grep -o 'Done [0-9]* runs' "$log" | tail -1) in ${secs}s"
	else
		echo "FAIL fuzz/$1: the fuzzer found a failure: $(grep -m3 -E 'ERROR|SUMMARY|Test unit written' "$log" | tr '\n' ' ')"
	fi
	rm -f "$log"
}
corpus=$ROOT/build-fuzz/corpus-boot
mkdir -p "$corpus"
# Seeds: the test guest, a tiny PVH image, and a bzImage-shaped header.
[ -f "$ROOT/build/guest/godwit-guest.elf" ] &&
	{ printf '\x00\x01'; cat "$ROOT/build/guest/godwit-guest.elf"; } >"$corpus/seed-guest"
python3 "$ROOT/tests/kvm/mkelf.py" "$corpus/.tiny" f4 && { printf '\x01\x02'; cat "$corpus/.tiny"; } >"$corpus/seed-tiny"
rm -f "$corpus/.tiny"
python3 - "$corpus/seed-bz" <<'PY'
import struct, sys
d = bytearray(3 * 512 + 4096)
d[0x1f1] = 2
struct.pack_into('<I', d, 0x1f4, 4096 // 16)
struct.pack_into('<H', d, 0x1fe, 0xaa55)
d[0x201] = 0x6a
struct.pack_into('<IH', d, 0x202, 0x53726448, 0x020f)
struct.pack_into('<IIBxH I', d, 0x22c, 0x7fffffff, 0x200000, 1, 3, 2047)
struct.pack_into('<I', d, 0x260, 0x100000)
open(sys.argv[1], 'wb').write(b'\x01\x40' + bytes(d))
PY
fuzz_target boot-loaders boot "$corpus"

# The split virtqueue parser (src/devices/virtio/core.c): seeds are small valid rings.
corpus=$ROOT/build-fuzz/corpus-virtq
mkdir -p "$corpus"
python3 - "$corpus" <<'PY'
import struct, sys
def seed(name, qexp, flags, last, used, written, descs, avail, tables=()):
    q = 1 << qexp
    ram = bytearray(0x8000)
    for i, (a, l, f, n) in enumerate(descs):
        struct.pack_into('<QIHH', ram, 16 * i, a, l, f, n)
    for base, ds in tables:
        for i, (a, l, f, n) in enumerate(ds):
            struct.pack_into('<QIHH', ram, base + 16 * i, a, l, f, n)
    av = 16 * q
    struct.pack_into('<HH', ram, av, 0, (last + len(avail)) & 0xffff)
    for i, h in enumerate(avail):
        struct.pack_into('<H', ram, av + 4 + 2 * ((last + i) % q), h)
    hdr = bytes([qexp, flags]) + struct.pack('<HHH', last, used, written)
    open(sys.argv[1] + '/' + name, 'wb').write(hdr + bytes(ram))
NEXT, WRITE, INDIRECT = 1, 2, 4
seed('seed-chain', 3, 3, 0, 0, 100,
     [(0x2000, 16, NEXT, 1), (0x3000, 256, WRITE, 0), (0x4000, 48, INDIRECT, 0)], [0, 2],
     [(0x4000, [(0x2100, 8, NEXT, 2), (0x3100, 64, WRITE, 0), (0x2200, 8, NEXT, 1)])])
seed('seed-wrap', 4, 2, 0xfffe, 0xfffe, 8,
     [(0x2000 + 64 * i, 64, WRITE, 0) for i in range(16)], [3, 4, 5, 6])
PY
fuzz_target virtq virtq "$corpus"

# The stream reader (src/migration/stream.c): seeds are the golden streams with each mode byte.
corpus=$ROOT/build-fuzz/corpus-stream
mkdir -p "$corpus"
for g in "$ROOT"/tests/data/*.gws; do
	for m in 00 01 03 05 08; do printf "\\x$m" | cat - "$g" >"$corpus/seed-$m-$(basename "$g")"; done
done
fuzz_target stream stream "$corpus"

# The control messages and the hand-off (src/migration/handoff.c): seeds are each side's
# good exchanges (GWMC messages: READY then DONE for the source; COMMIT, ABORT for the
# destination), with and without failing operations.
corpus=$ROOT/build-fuzz/corpus-handoff
mkdir -p "$corpus"
python3 "$ROOT/tests/kvm/gwmc.py" handoff-seeds "$corpus"
fuzz_target handoff handoff "$corpus"

# The --disk/--net parser and the --with-disks list (src/vmm/devspec.c): seeds are good specs.
corpus=$ROOT/build-fuzz/corpus-devspec
mkdir -p "$corpus"
printf '\x00%s' 'disk.img,serial=root,readonly' >"$corpus/seed-disk"
printf '\x01%s' 'tap=gw0,mac=02:00:00:00:00:01' >"$corpus/seed-net"
printf '\x02%s' 'root,data,log' >"$corpus/seed-serials"
fuzz_target devspec devspec "$corpus"
