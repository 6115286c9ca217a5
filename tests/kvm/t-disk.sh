#!/bin/bash
# Tier 1: virtio-blk on raw images with the test guest's disk workload
# (guest/disk.c): the guest writes generations of a self-checking pattern,
# flushes and verifies them; then a checker on the host reads the image file
# independently and checks every block of the range.  A read-only disk
# refuses writes (and the image stays byte-identical); a second VM cannot
# open an image in use (OFD lock); bad --disk arguments exit 1 with a clear
# message.
. "$(dirname "$0")/../lib.sh"

t_need_guest disk || exit 0

# The guest's block layout (guest/disk.c, guest/pattern.h pattern_fill): 4 KiB
# blocks numbered from the start of the disk; u64 words: 0 block number,
# 1 generation, 2 checksum of words 4..511, 3 magic "GDWITBLK", 4..511 two
# interleaved xorshift64 streams seeded from (block, generation).
cat >"$T_TMP/diskcheck.c" <<'EOF'
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC 0x4b4c425449574447ULL
typedef uint64_t u64;

static u64 mix64(u64 z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
static u64 xs(u64 x) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x; }

/* diskcheck IMG FIRST END: blocks [FIRST, END) hold the pattern, the rest zeroes. */
int main(int argc, char **argv)
{
	FILE *f = fopen(argv[1], "rb");
	u64 first = strtoull(argv[2], NULL, 0), end = strtoull(argv[3], NULL, 0);
	u64 p[512], gmin = UINT64_MAX, gmax = 0, bad = 0, nonzero = 0, blk;

	if (!f || argc != 4)
		return 2;
	for (blk = 0; fread(p, sizeof(p), 1, f) == 1; blk++) {
		if (blk < first || blk >= end) {
			for (int i = 0; i < 512; i++)
				nonzero += p[i] != 0;
			continue;
		}
		u64 s = mix64(blk * 0x9e3779b97f4a7c15ULL + p[1]), x, y, s1 = 0, s2 = 0, diff = 0;

		x = s ? s : 1;
		y = ~x;
		for (int i = 4; i < 512; i += 2) {
			x = xs(x);
			y = xs(y);
			diff |= (p[i] ^ x) | (p[i + 1] ^ y);
			s1 += x;
			s2 += y;
		}
		if (diff || p[0] != blk || p[3] != MAGIC || p[2] != (s1 ^ ((s2 << 1) | (s2 >> 63)))) {
			if (bad++ < 3)
				printf("bad block=%" PRIu64 " word0=%" PRIu64 " gen=%" PRIu64 "\n", blk, p[0], p[1]);
			continue;
		}
		gmin = p[1] < gmin ? p[1] : gmin;
		gmax = p[1] > gmax ? p[1] : gmax;
	}
	printf("blocks=%" PRIu64 " bad=%" PRIu64 " gen_min=%" PRIu64 " gen_max=%" PRIu64
	       " nonzero_outside=%" PRIu64 "\n", blk, bad, gmin == UINT64_MAX ? 0 : gmin, gmax, nonzero);
	return bad || nonzero || blk < end;
}
EOF
if ! cc -O2 -o "$T_TMP/diskcheck" "$T_TMP/diskcheck.c" 2>"$T_TMP/cc.err"; then
	t_fail disk-checker "cannot build the host-side checker: $(head -c 300 "$T_TMP/cc.err")"
	exit 0
fi


# vm NAME DISKSPEC CMDLINE: run the guest with one disk, output in $T_TMP/NAME.{out,err}.
vm() {
	timeout 60 "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --disk "$2" --cmdline "$3" \
		</dev/null >"$T_TMP/$1.out" 2>"$T_TMP/$1.err"
}

img=$T_TMP/disk.img
truncate -s 64M "$img"

# ---- write, flush, verify in the guest; then check the image on the host ------------
vm rw "$img,serial=godwit-disk-1" 'workload=disk runtime=4 disk_mib=16'
rc=$?
found=$(grep -a '^disk: found' "$T_TMP/rw.out" | head -n 1)
if [ "$rc" -ne 0 ]; then
	t_fail disk-rw "exit status $rc; stderr: $(head -c 300 "$T_TMP/rw.err"); stdout tail: $(tail -n 5 "$T_TMP/rw.out")"
elif [[ $found != *"capacity_mib=64 serial=godwit-disk-1 ro=0"* ]]; then
	t_fail disk-rw "guest saw '${found:-no disk}', expected capacity_mib=64 serial=godwit-disk-1 ro=0"
else
	gen=$(t_last_field "$T_TMP/rw.out" 'disk: t=' gen)
	errors=$(t_last_field "$T_TMP/rw.out" 'disk: t=' errors)
	wmib=$(t_last_field "$T_TMP/rw.out" 'disk: t=' written_mib)
	rmib=$(t_last_field "$T_TMP/rw.out" 'disk: t=' read_mib)
	flushes=$(t_last_field "$T_TMP/rw.out" 'disk: t=' flushes)
	if [ -z "$gen" ]; then
		t_fail disk-rw "no 'disk: t=' report; stdout tail: $(tail -n 5 "$T_TMP/rw.out")"
	elif [ "$errors" != 0 ] || grep -qa '^disk: ERROR' "$T_TMP/rw.out"; then
		t_fail disk-rw "guest reported errors=$errors: $(grep -a '^disk: ERROR' "$T_TMP/rw.out" | head -n 3)"
	elif [ "$gen" -lt 2 ] || [ "$wmib" -lt 16 ] || [ "$rmib" -lt 16 ] || [ "$flushes" -lt 1 ]; then
		t_fail disk-rw "too little done: gen=$gen written_mib=$wmib read_mib=$rmib flushes=$flushes"
	else
		t_pass disk-rw
		echo "# disk-rw: gen=$gen written_mib=$wmib read_mib=$rmib flushes=$flushes"
	fi
fi

# Blocks 0..4095 (16 MiB) hold the pattern, all of the last generation written or
# the one before it (the pass the power-off interrupted), at least the generation
# before the guest's last report; the rest of the image is untouched (zeroes).
check=$("$T_TMP/diskcheck" "$img" 0 4096)
crc=$?
gmin=$(sed -n 's/.*gen_min=\([0-9]*\).*/\1/p' <<<"$check" | tail -n 1)
gmax=$(sed -n 's/.*gen_max=\([0-9]*\).*/\1/p' <<<"$check" | tail -n 1)
if [ "$crc" -ne 0 ]; then
	t_fail disk-host-verify "the image does not hold the guest's pattern: $check"
elif [ "$gmin" -lt 1 ] || [ $((gmax - gmin)) -gt 1 ] || [ -z "$gen" ] || [ "$gmax" -lt $((gen - 1)) ]; then
	# (The guest goes on writing after its last report: gen there is a lower bound.)
	t_fail disk-host-verify "generations $gmin..$gmax on disk, guest last reported gen=${gen:-?}"
else
	t_pass disk-host-verify
fi

# ---- read-only: writes refused, reads verify the pattern, the image unchanged --------
sum_before=$(sha256sum "$img" | cut -d' ' -f1)
vm ro "$img,readonly" 'workload=disk runtime=4 disk_mib=16 disk_ro_check=1'
rc=$?
refused=$(grep -a '^disk: write to read-only disk' "$T_TMP/ro.out" | head -n 1)
sum_after=$(sha256sum "$img" | cut -d' ' -f1)
if [ "$rc" -ne 0 ]; then
	t_fail disk-readonly "exit status $rc; stderr: $(head -c 300 "$T_TMP/ro.err")"
elif [[ $refused != *"refused status=1"* ]]; then
	t_fail disk-readonly "expected 'write to read-only disk refused status=1', got '${refused:-nothing}'"
elif ! grep -qa '^disk: found .*ro=1' "$T_TMP/ro.out"; then
	t_fail disk-readonly "the guest did not see a read-only disk: $(grep -a '^disk: found' "$T_TMP/ro.out")"
elif [ "$sum_before" != "$sum_after" ]; then
	t_fail disk-readonly "the image changed under a read-only disk"
elif [ "$(t_last_field "$T_TMP/ro.out" 'disk: t=' errors)" != 0 ] ||
     [ "$(t_last_field "$T_TMP/ro.out" 'disk: t=' read_mib)" -lt 16 ]; then
	t_fail disk-readonly "read passes: $(grep -a '^disk: t=' "$T_TMP/ro.out" | tail -n 1)"
else
	t_pass disk-readonly
fi

# ---- locking: a second VM cannot open an image in use ----------------------------------
"$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --disk "$img" \
	--cmdline 'workload=disk runtime=30 disk_mib=4' </dev/null >"$T_TMP/first.out" 2>&1 &
first=$!
if ! t_wait_for "$T_TMP/first.out" '^disk: found' 20; then
	t_fail disk-lock "the first VM did not find its disk: $(tail -n 5 "$T_TMP/first.out")"
else
	for spec in "$img" "$img,readonly"; do
		timeout 30 "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --disk "$spec" \
			--cmdline 'workload=disk runtime=1' </dev/null >"$T_TMP/second.out" 2>"$T_TMP/second.err"
		rc=$?
		if [ "$rc" -ne 1 ]; then
			t_fail "disk-lock${spec#"$img"}" "second VM exit status $rc, expected 1: $(head -c 300 "$T_TMP/second.err")"
		elif ! grep -q "disk $img is in use by another VM (locked)" "$T_TMP/second.err"; then
			t_fail "disk-lock${spec#"$img"}" "stderr lacks the lock error: $(head -c 300 "$T_TMP/second.err")"
		elif ! kill -0 "$first" 2>/dev/null; then
			t_fail "disk-lock${spec#"$img"}" "the first VM died"
		else
			t_pass "disk-lock${spec#"$img"}"
		fi
	done
fi
kill "$first" 2>/dev/null
wait "$first" 2>/dev/null
if grep -qa '^disk: ERROR' "$T_TMP/first.out"; then
	t_fail disk-lock-first "the first VM saw errors: $(grep -a '^disk: ERROR' "$T_TMP/first.out" | head -n 3)"
fi

# Read-only disks share an image.
"$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --disk "$img,readonly" \
	--cmdline 'workload=disk runtime=30 disk_mib=4' </dev/null >"$T_TMP/ro1.out" 2>&1 &
first=$!
if t_wait_for "$T_TMP/ro1.out" '^disk: found' 20; then
	vm ro2 "$img,readonly" 'workload=disk runtime=1 disk_mib=4'
	rc=$?
	if [ "$rc" -eq 0 ] && grep -qa '^disk: found .*ro=1' "$T_TMP/ro2.out"; then
		t_pass disk-readonly-shared
	else
		t_fail disk-readonly-shared "second read-only VM: exit status $rc: $(head -c 300 "$T_TMP/ro2.err")"
	fi
else
	t_fail disk-readonly-shared "the first read-only VM did not find its disk: $(tail -n 5 "$T_TMP/ro1.out")"
fi
kill "$first" 2>/dev/null
wait "$first" 2>/dev/null

# ---- bad --disk arguments: exit 1, a message naming the problem ------------------------
# expect NAME REGEX DISKSPEC
expect() {
	local name=$1 re=$2 rc
	timeout 30 "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --disk "$3" \
		--cmdline 'workload=disk runtime=1' </dev/null >"$T_TMP/$name.out" 2>"$T_TMP/$name.err"
	rc=$?
	if [ "$rc" -ne 1 ]; then
		t_fail "$name" "exit status $rc, expected 1; stderr: $(head -c 300 "$T_TMP/$name.err")"
	elif ! grep -qE -- "$re" "$T_TMP/$name.err"; then
		t_fail "$name" "stderr lacks /$re/: $(head -c 300 "$T_TMP/$name.err")"
	else
		t_pass "$name"
	fi
}
expect disk-missing "cannot open $T_TMP/nonexistent.img: No such file" "$T_TMP/nonexistent.img"
mkdir "$T_TMP/dir.img"
expect disk-directory 'is a directory|Is a directory' "$T_TMP/dir.img"
head -c 1000 /dev/zero >"$T_TMP/odd.img"
expect disk-odd-size 'not a multiple of 512' "$T_TMP/odd.img"
expect disk-bad-option "unknown option 'bogus'" "$img,bogus"
expect disk-long-serial 'serial must be 1 to 20 bytes' "$img,serial=ABCDEFGHIJKLMNOPQRSTU"
expect disk-empty-name 'file name is empty' ",readonly"
