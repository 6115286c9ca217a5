#!/bin/bash
# tests/fuzz/run.sh [SECONDS [TARGET...]] - a libFuzzer run of each fuzz target (or the
# ones named: boot virtq stream handoff devspec restore virtio-blk pci api etcd agent timeline), one after
# another, from its seeds; a crash, leak or sanitizer report fails the test.
#
# Each target's corpus is build-fuzz/corpus-TARGET (generated seeds, and what the fuzzer
# keeps) read together with the committed seeds in tests/fuzz/corpus/TARGET, which the
# fuzzer only reads.  `make fuzz` runs this for a few seconds per target (CI);
# `make fuzz-long FUZZ_SECONDS=600` sets FUZZ_LONG=1: each target runs until it has had
# that many CPU seconds (not wall seconds: the machine may be shared), its log is kept
# in build-fuzz/long-TARGET.log, and a table of the figures (CPU and wall seconds, runs,
# exec/s, cov, ft, corpus entries, corpus files) is printed at the end.  The exit status
# is 1 if any target failed.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-15}
shift $(($# ? 1 : 0))
ALL="boot virtq stream handoff devspec restore virtio-blk pci api etcd agent timeline"
targets=${*:-$ALL}
long=${FUZZ_LONG:-0}
failed=0
table=$(mktemp)
trap 'rm -f "$table"' EXIT

# run_fuzzer TARGET SECONDS LOG FLAGS...: one libFuzzer run in build-fuzz/artifacts (where
# libFuzzer writes a crash's input: crash-*, leak-*, timeout-*), its output (and the CPU
# seconds it used, children included: "cpu-seconds: USER SYS") appended to LOG.
run_fuzzer() {
	local t=$1 s=$2 log=$3
	shift 3
	mkdir -p "$ROOT/build-fuzz/artifacts"
	(cd "$ROOT/build-fuzz/artifacts" &&
	 /usr/bin/time -f 'cpu-seconds: %U %S' timeout $((s + 120)) "$@" \
		"$ROOT/build-fuzz/fuzz-$t" -max_total_time="$s" -rss_limit_mb=2048 \
		-print_final_stats=1 "${flags[@]}" "${dirs[@]}") >>"$log" 2>&1
}

# The figures of one run's log: "CPU RUNS COV FT CORP" (-fork prints "#N: cov: C ft: F
# corp: K exec/s E ... time: Ts" lines and no final stats; others "#N DONE cov: ...").
run_figures() {
	awk '
		/^#[0-9]+/ && / cov: / { last = $0 }
		/stat::number_of_executed_units:/ { runs = $2 }
		/^cpu-seconds:/ { cpu = $2 + $3 }
		END {
			n = split(last, w, " "); cov = ft = corp = "?"
			for (i = 1; i < n; i++) {
				if (w[i] == "cov:") cov = w[i + 1]
				if (w[i] == "ft:") ft = w[i + 1]
				if (w[i] == "corp:") corp = w[i + 1]
			}
			if (runs == "" && w[1] ~ /^#[0-9]+:$/)
				runs = substr(w[1], 2, length(w[1]) - 2)
			printf "%.0f %d %s %s %s\n", cpu, runs, cov, ft, corp
		}' "$1"
}

# fuzz_target NAME TARGET: build-fuzz/fuzz-TARGET for $secs seconds from its corpora;
# PASS fuzz/NAME, or FAIL with the fuzzer's report (a crash, leak or sanitizer finding).
# Long runs count CPU seconds, not wall time: on a shared machine a run is started again
# (with the corpus it grew) until the target has had $secs CPU seconds.
fuzz_target() {
	local log corpus=$ROOT/build-fuzz/corpus-$2 seeds=$ROOT/tests/fuzz/corpus/$2 runs
	local chunk cpu=0 total=0 wall=0 start rc=0 fig c r cov ft corp
	local -a dirs=("$corpus") flags=() pin=()
	[ -d "$seeds" ] && dirs+=("$seeds")
	# The targets built on godwit's objects log their refusals: not to the log.
	case $2 in restore|virtio-blk|pci|api) flags+=(-close_fd_mask=2) ;; esac
	# fuzz-restore spends most of its time asleep in KVM (its header comment): a long
	# run forks 6 workers pinned to one CPU, which keep that one core busy.
	if [ "$long" = 1 ] && [ "$2" = restore ]; then
		flags+=(-fork=6)
		pin=(taskset -c $(($(nproc) - 1)))
	fi
	# fuzz-pci's devices have I/O threads: pinned too, so a long run stays on one core.
	[ "$long" = 1 ] && [ "$2" = pci ] && pin=(taskset -c $(($(nproc) - 1)))
	if [ "$long" != 1 ]; then
		log=$(mktemp)
		if run_fuzzer "$2" "$secs" "$log" "${pin[@]}"; then
			runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1)
			echo "PASS fuzz/$1: $runs in ${secs}s"
		else
			failed=1
			echo "FAIL fuzz/$1: the fuzzer found a failure: $(grep -m4 -E '^fuzz-[a-z-]+: |ERROR|SUMMARY|Test unit written' "$log" | tr '\n' ' ')"
		fi
		rm -f "$log"
		return
	fi
	log=$ROOT/build-fuzz/long-$2.log
	: >"$log"
	for _ in 1 2 3 4 5; do
		chunk=$((secs - cpu))
		[ "$chunk" -gt 0 ] || break
		[ "$chunk" -ge 10 ] || chunk=10
		start=$SECONDS
		echo "== run.sh: $chunk s (CPU so far: $cpu of $secs)" >>"$log"
		run_fuzzer "$2" "$chunk" "$log.part" "${pin[@]}" || rc=1
		wall=$((wall + SECONDS - start))
		fig=$(run_figures "$log.part")
		cat "$log.part" >>"$log"
		rm -f "$log.part"
		read -r c r cov ft corp <<<"$fig"
		cpu=$((cpu + c))
		total=$((total + r))
		[ "$rc" = 0 ] || break
	done
	if [ "$rc" = 0 ]; then
		echo "PASS fuzz/$1: Done $total runs in ${wall}s ($cpu CPU seconds)"
	else
		failed=1
		echo "FAIL fuzz/$1: the fuzzer found a failure: $(grep -m4 -E '^fuzz-[a-z-]+: |ERROR|SUMMARY|Test unit written' "$log" | tr '\n' ' ')"
	fi
	printf '%-11s %6s %6s %11s %7s %6s %7s %11s %6s\n' "$2" "$cpu" "$wall" "$total" \
		"$((wall ? total / wall : 0))" "$cov" "$ft" "$corp" "$(find "$corpus" -type f | wc -l)" >>"$table"
}

seed_boot() {
	# The test guest, a tiny PVH image, and a bzImage-shaped header.
	[ -f "$ROOT/build/guest/godwit-guest.elf" ] &&
		{ printf '\x00\x01'; cat "$ROOT/build/guest/godwit-guest.elf"; } >"$1/seed-guest"
	python3 "$ROOT/tests/kvm/mkelf.py" "$1/.tiny" f4 && { printf '\x01\x02'; cat "$1/.tiny"; } >"$1/seed-tiny"
	rm -f "$1/.tiny"
	python3 - "$1/seed-bz" <<'PY'
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
}

seed_virtq() {
	# The split virtqueue parser (src/devices/virtio/core.c): small valid rings.
	python3 - "$1" <<'PY'
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
}

seed_stream() {
	# The stream reader: the golden streams with each mode byte.
	local g m
	for g in "$ROOT"/tests/data/*.gws; do
		for m in 00 01 03 05 08 10 11 31; do printf "\\x$m" | cat - "$g" >"$1/seed-$m-$(basename "$g")"; done
	done
}

seed_handoff() {
	# Each side's good exchanges (GWMC messages: READY then DONE for the source; COMMIT,
	# ABORT for the destination), with and without failing operations.
	python3 "$ROOT/tests/kvm/gwmc.py" handoff-seeds "$1"
}

seed_devspec() {
	printf '\x00%s' 'disk.img,serial=root,readonly' >"$1/seed-disk"
	printf '\x01%s' 'tap=gw0,mac=02:00:00:00:00:01' >"$1/seed-net"
	printf '\x02%s' 'root,data,log' >"$1/seed-serials"
}

seed_restore() {
	# The full restore path: the golden snapshots with their RAM cut to two pages, with
	# checksums checked (mode byte 0) and ignored (1).
	python3 "$ROOT/tests/fuzz/mkseeds.py" restore "$1" "$ROOT"/tests/data/*.gws
}

# The other targets' seeds are committed (tests/fuzz/corpus/TARGET).
name_of() {
	case $1 in
	boot) echo boot-loaders ;;
	*) echo "$1" ;;
	esac
}

for t in $targets; do
	case " $ALL " in
	*" $t "*) ;;
	*) echo "FAIL fuzz/$t: no such fuzz target (the targets: $ALL)"; failed=1; continue ;;
	esac
	mkdir -p "$ROOT/build-fuzz/corpus-$t"
	fn=seed_${t//-/_}
	if declare -F "$fn" >/dev/null; then "$fn" "$ROOT/build-fuzz/corpus-$t"; fi
	fuzz_target "$(name_of "$t")" "$t"
done
if [ "$long" = 1 ]; then
	echo
	printf '%-11s %6s %6s %11s %7s %6s %7s %11s %6s\n' target cpu-s wall-s runs exec/s cov ft corp files
	cat "$table"
fi
exit "$failed"
