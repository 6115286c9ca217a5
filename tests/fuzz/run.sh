#!/bin/bash
# tests/fuzz/run.sh [SECONDS] - a short libFuzzer run of each fuzz target
# from seed inputs; a crash, leak or sanitizer report fails the test.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-15}
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
log=$(mktemp)
if timeout $((secs + 60)) "$ROOT/build-fuzz/fuzz-boot" -max_total_time="$secs" -rss_limit_mb=2048 \
	"$corpus" >"$log" 2>&1; then
	echo "PASS fuzz/boot-loaders: $(grep -o 'Done [0-9]* runs' "$log" | tail -1) in ${secs}s"
else
	echo "FAIL fuzz/boot-loaders: the fuzzer found a failure: $(grep -m3 -E 'ERROR|SUMMARY|Test unit written' "$log" | tr '\n' ' ')"
fi
rm -f "$log"
