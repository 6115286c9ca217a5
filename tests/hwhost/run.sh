#!/bin/bash
# tests/hwhost/run.sh [TEST ...] - tier 2: runs test scripts (default: every
# tests/hwhost/t-*.sh; a TEST is a path, a file name in tests/hwhost/ or a name such as
# "qemu-smoke") on a host with hardware(-like) virtualization.
#
# On these PVM machines (see shared/PLATFORM.md) it boots ONE emulated AMD-V host ("L1",
# QEMU TCG, Debian's generic kernel, tests/hwhost/l1-init) for the whole batch, which
# runs the tests in `chroot /host` (the outer root over 9p), one after another
# (tests/hwhost/run-tests.sh).  On a machine whose CPU has vmx/svm and whose /dev/kvm is
# not PVM, it runs them directly.  Environment of each test: ROOT, BUILD, TIER=hwhost and
# SCRATCH, an empty directory on a local ext4 disk (inside L1: /tmp/scratch; /tmp there is
# the fresh scratch disk, so UNIX sockets and O_DIRECT work anywhere under /tmp).
#
# Prints each test's PASS/FAIL/SKIP (and INFO) lines as they come, then timings; if L1
# dies or the batch times out, one "FAIL hwhost/harness: why" line and the tail of L1's
# log.  Exits 0 only if no FAIL.  Logs: build/hwhost/run/ (the latest batch's directory:
# l1.log, logs/NAME.log, results).
#
# Settings (environment):
#   HWHOST_TIMEOUT=1200      seconds for the whole batch, L1 boot included
#   HWHOST_TEST_TIMEOUT=600  seconds per test script
#   HWHOST_MODE=auto         auto | l1 (always boot L1) | direct (never)
#   HWHOST_SCRATCH_GB=8      size of L1's sparse scratch disk
#   HWHOST_L1_MEM=6144 HWHOST_L1_CPUS=2
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
HWHOST_TIMEOUT=${HWHOST_TIMEOUT:-1200}
HWHOST_TEST_TIMEOUT=${HWHOST_TEST_TIMEOUT:-600}
HWHOST_MODE=${HWHOST_MODE:-auto}
HWHOST_SCRATCH_GB=${HWHOST_SCRATCH_GB:-8}
HWHOST_L1_MEM=${HWHOST_L1_MEM:-6144}
HWHOST_L1_CPUS=${HWHOST_L1_CPUS:-2}
export HWHOST_TEST_TIMEOUT

HW=$BUILD/hwhost
# One directory per batch (batches may run side by side); $HW/run links to the latest.
mkdir -p "$HW/runs" || exit 1
RUNDIR=$HW/runs/$(date +%Y%m%d-%H%M%S)-$$
ln -sfn "runs/$(basename "$RUNDIR")" "$HW/run"
ls -d "$HW"/runs/*/ 2>/dev/null | sort | head -n -4 | xargs -r rm -rf
T0=$(date +%s.%N)
since() { echo "$1 $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}'; }
say() { echo "hwhost: $*"; }
# harness_fail WHY: the harness's own FAIL line (also recorded in the results, once they exist).
harness_fail() {
	if [ -f "${RUNDIR:-}/results" ]; then
		echo "FAIL hwhost/harness: $*" >>"$RUNDIR/results"
		forward
	else
		echo "FAIL hwhost/harness: $*"
	fi
}

# forward: prints the complete lines of the results file not printed yet: PASS/FAIL/SKIP/
# INFO and the indented "  | " log-tail lines a test prints after a FAIL (tests/run.sh
# counts only PASS/FAIL/SKIP lines).
FWD=0
forward() {
	local n
	n=$(wc -l <"$RUNDIR/results" 2>/dev/null) || return 0
	if [ "$n" -gt "$FWD" ]; then
		sed -n "$((FWD + 1)),${n}p" "$RUNDIR/results" | grep -E '^(PASS|FAIL|SKIP|INFO) |^  \| '
		FWD=$n
	fi
}

mkdir -p "$RUNDIR/logs"
: >"$RUNDIR/results"

# The tests.
tests=()
if [ $# -eq 0 ]; then
	for t in "$ROOT"/tests/hwhost/t-*.sh; do [ -f "$t" ] && tests+=("$t"); done
else
	for a in "$@"; do
		for t in "$a" "$ROOT/tests/hwhost/$a" "$ROOT/tests/hwhost/t-$a.sh" "$ROOT/tests/hwhost/$a.sh"; do
			if [ -f "$t" ]; then
				tests+=("$(cd "$(dirname "$t")" && pwd)/$(basename "$t")")
				continue 2
			fi
		done
		harness_fail "no test named $a"
		exit 1
	done
fi
if [ ${#tests[@]} -eq 0 ]; then
	say "no tests"
	exit 0
fi

# summary: timings, the tail of each failed test's log, and the exit status.
summary() {
	local name secs f
	while read -r _ name secs; do
		say "test $name: $secs s"
	done < <(grep '^TIME ' "$RUNDIR/results")
	for name in $(sed -n 's|^FAIL hwhost/\([^:]*\):.*|\1|p' "$RUNDIR/results" | sort -u); do
		[ -f "$RUNDIR/logs/$name.log" ] || continue
		say "--- last lines of $RUNDIR/logs/$name.log"
		tail -n 25 "$RUNDIR/logs/$name.log" | sed 's/^/  | /'
		for f in "$RUNDIR/logs/$name"/*.log; do
			[ -f "$f" ] || continue
			say "--- last lines of $f"
			tail -n 15 "$f" | sed 's/^/  | /'
		done
	done
	local p f s
	p=$(grep -c '^PASS ' "$RUNDIR/results")
	f=$(grep -c '^FAIL ' "$RUNDIR/results")
	s=$(grep -c '^SKIP ' "$RUNDIR/results")
	say "batch of ${#tests[@]} script(s) in $1 mode: passed=$p failed=$f skipped=$s, total $(since "$T0") s"
	[ "$f" -eq 0 ]
}

direct_ok() {
	grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ] && [ -c /dev/kvm ]
}

mode=$HWHOST_MODE
if [ "$mode" = auto ]; then
	if direct_ok; then mode=direct; else mode=l1; fi
fi

if [ "$mode" = direct ]; then
	say "running ${#tests[@]} test(s) directly on this host (HWHOST_MODE=$HWHOST_MODE)"
	SCRATCH=$(mktemp -d /tmp/godwit-hwhost.XXXXXX)
	export ROOT BUILD SCRATCH
	timeout -k 10 "$HWHOST_TIMEOUT" bash "$ROOT/tests/hwhost/run-tests.sh" "$RUNDIR" "${tests[@]}" \
		>"$RUNDIR/runner.log" 2>&1 &
	pid=$!
	trap 'kill -TERM "$pid" 2>/dev/null; rm -rf "$SCRATCH"' EXIT
	while kill -0 "$pid" 2>/dev/null; do forward; sleep 1; done
	wait "$pid"
	rc=$?
	forward
	rm -rf "$SCRATCH"
	if ! grep -q '^DONE' "$RUNDIR/results"; then
		harness_fail "the test runner ended early (status $rc)"
		tail -n 30 "$RUNDIR/runner.log" | sed 's/^/  | /'
		summary direct
		exit 1
	fi
	summary direct
	exit
fi

# ---- L1 mode ----
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || { harness_fail "$QEMU not found (scripts/install-deps.sh)"; exit 1; }
command -v mkfs.ext4 >/dev/null || { harness_fail "mkfs.ext4 not found (apt-get install e2fsprogs)"; exit 1; }
case "$RUNDIR$ROOT$BUILD" in
*[[:space:]]*) harness_fail "the checkout path must not contain white space: $ROOT"; exit 1 ;;
esac

tb=$(date +%s.%N)
if ! flock -w 600 "$HW/.build.lock" bash "$ROOT/tests/hwhost/build-l1.sh" "$HW" \
	>"$RUNDIR/build-l1.log" 2>&1; then
	harness_fail "building L1's kernel and initramfs failed"
	tail -n 20 "$RUNDIR/build-l1.log" | sed 's/^/  | /'
	exit 1
fi
say "L1 kernel+initramfs ready in $(since "$tb") s"

scratch=$RUNDIR/scratch.img
truncate -s "${HWHOST_SCRATCH_GB}G" "$scratch" &&
	mkfs.ext4 -q -F -O ^has_journal -i 262144 -E lazy_itable_init=1 -L hwscratch "$scratch" ||
	{ harness_fail "cannot make the scratch disk $scratch"; exit 1; }

# The job L1 runs in chroot /host: the test runner with this batch's environment.
job=$RUNDIR/job.sh
{
	echo "# written by tests/hwhost/run.sh; run by tests/hwhost/l1-init in chroot /host"
	printf 'export ROOT=%q BUILD=%q TIER=hwhost SCRATCH=/tmp/scratch HWHOST_TEST_TIMEOUT=%q\n' \
		"$ROOT" "$BUILD" "$HWHOST_TEST_TIMEOUT"
	printf 'exec bash %q %q' "$ROOT/tests/hwhost/run-tests.sh" "$RUNDIR"
	printf ' %q' "${tests[@]}"
	echo
} >"$job"

log=$RUNDIR/l1.log
qemu_pid=
cleanup() {
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null
		sleep 1
		kill -KILL "$qemu_pid" 2>/dev/null
	fi
	rm -f "$scratch"
}
trap cleanup EXIT
trap 'harness_fail "interrupted"; exit 1' INT TERM

say "booting L1 (TCG, AMD-V emulated, ${HWHOST_L1_CPUS} CPUs, ${HWHOST_L1_MEM} MiB) for ${#tests[@]} test(s), timeout ${HWHOST_TIMEOUT} s"
tq=$(date +%s.%N)
timeout -k 10 "$HWHOST_TIMEOUT" "$QEMU" -accel tcg,thread=multi -cpu EPYC,+svm \
	-m "$HWHOST_L1_MEM" -smp "$HWHOST_L1_CPUS" \
	-kernel "$HW/vmlinuz" -initrd "$HW/initramfs.cpio.gz" \
	-append "console=ttyS0 quiet panic=-1 godwit.hwhost.job=$job" \
	-virtfs local,path=/,mount_tag=host,security_model=passthrough,id=host,multidevs=remap \
	-drive "file=$scratch,if=virtio,format=raw,cache=unsafe" \
	-display none -serial "file:$log" -monitor none -no-reboot -nodefaults \
	</dev/null >"$RUNDIR/qemu.log" 2>&1 &
qemu_pid=$!

ready=
while kill -0 "$qemu_pid" 2>/dev/null; do
	if [ -z "$ready" ] && grep -q '^hwhost-l1: ready' "$log" 2>/dev/null; then
		ready=$(since "$tq")
		say "L1 ready after $ready s ($(grep -m1 '^hwhost-l1: ready' "$log" | cut -d' ' -f3-))"
	fi
	forward
	grep -q '^DONE' "$RUNDIR/results" && break
	sleep 1
done
# The job is done or L1 is gone: give L1 a moment to power off.
for _ in $(seq 20); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$qemu_pid" 2>/dev/null; then
	kill -TERM "$qemu_pid" 2>/dev/null
	sleep 1
fi
wait "$qemu_pid" 2>/dev/null
qrc=$?
qemu_pid=
forward
say "L1 ran $(since "$tq") s (qemu status $qrc)"

if ! grep -q '^DONE' "$RUNDIR/results"; then
	if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
		why="the batch timed out after $HWHOST_TIMEOUT s"
	elif grep -q '^hwhost-l1: FAILED' "$log" 2>/dev/null; then
		why="L1 setup failed: $(grep -m1 '^hwhost-l1: FAILED' "$log" | cut -d' ' -f3-)"
	elif [ -z "$ready" ]; then
		why="L1 died before it was ready (qemu status $qrc)"
	else
		why="L1 died during the tests (qemu status $qrc)"
	fi
	harness_fail "$why"
	say "--- last lines of $log"
	tail -n 40 "$log" | sed 's/^/  | /'
	[ -s "$RUNDIR/qemu.log" ] && grep -v "TCG doesn.t support requested feature" "$RUNDIR/qemu.log" | tail -n 10 | sed 's/^/  | qemu: /'
	summary L1
	exit 1
fi
summary L1
