#!/bin/bash
# tests/hwhost/run.sh [TEST ...] - tier 2: runs test scripts (default: every
# tests/hwhost/t-*.sh; a TEST is a path, a file name in tests/hwhost/ or a name such as
# "qemu-smoke") on a host with hardware(-like) virtualization.
#
# On these PVM machines (see shared/PLATFORM.md) it boots an emulated AMD-V host ("L1",
# QEMU TCG, Debian's generic kernel, tests/hwhost/l1-init) for every HWHOST_TESTS_PER_L1
# tests (default 1: a fresh L1 per test), which runs them in `chroot /host` (the outer
# root over 9p), one after another (tests/hwhost/run-tests.sh).  On a machine whose CPU
# has vmx/svm and whose /dev/kvm is not PVM, it runs them directly.  Environment of each
# test: ROOT, BUILD, TIER=hwhost and SCRATCH, an empty directory on a local ext4 disk
# (inside L1: /tmp/scratch; /tmp there is the fresh scratch disk, so UNIX sockets and
# O_DIRECT work anywhere under /tmp).
#
# L1 is emulated, and the emulator is not flawless: an L1 that stops printing its
# heartbeat (l1-init, every 10 s) for HWHOST_L1_STALL seconds is called frozen, one whose
# kernel reports a soft lockup or an RCU stall (a CPU stuck in kernel mode) locked up,
# and an L1 kernel panic ends QEMU.  The test that was running then is run again in a fresh
# L1 (at most HWHOST_L1_RETRIES more times, said by an "INFO hwhost/harness:" line with L1's log
# tail); only its results from an attempt that ran to the end count.
#
# The same emulator fault also crashes the nested guest ("L2"): measured with QEMU itself
# as L2's VMM in the same L1 (workload=migrate, disk and TCP), its guest hung (a vCPU
# thread spinning in guest mode) and L1 then panicked in that vCPU thread ("stack guard
# page was hit", a page-fault loop in the exception entry), as it does in godwit's vCPU
# threads; QEMU 10.0 (bookworm-backports) as the emulator panicked the same way.  So a
# test that FAILs while its guest triple-faulted, panicked or was wedged (no progress while
# its vCPU thread kept running: lib-l1.sh's hw_diag; run-tests.sh's RETRY line) is also
# run again in a fresh L1, with the same limit, said by an INFO line with its FAIL lines;
# any other FAIL inside a working L1 stands, and is never run again.
#
# Prints each test's PASS/FAIL/SKIP (and INFO) lines when the test ends, then timings; if
# L1 fails past the retries or the batch runs out of time, one "FAIL hwhost/harness: why"
# line and the tail of L1's log.  Exits 0 only if no FAIL.  Logs: build/hwhost/run/ (the
# latest batch's directory: results, logs/NAME.log, l1-N/{l1.log,results} per L1 boot).
#
# Settings (environment):
#   HWHOST_TIMEOUT=2400      seconds for the whole batch (no new L1 is booted after it)
#   HWHOST_TEST_TIMEOUT=600  seconds per test script
#   HWHOST_MODE=auto         auto | l1 (always boot L1) | direct (never)
#   HWHOST_TESTS_PER_L1=1    tests per L1 boot (an L1 boots in ~10 s)
#   HWHOST_L1_STALL=90       seconds of silence on L1's console that mean it froze
#   HWHOST_L1_RETRIES=2      more fresh-L1 attempts for a test whose L1 froze, locked up
#                            or died (measured: about one L1 panic per 8-test batch), or
#                            whose guest crashed while it failed
#   HWHOST_L1_TCG=multi      QEMU's TCG threading: multi (one host thread per CPU) | single
#   HWHOST_SCRATCH_GB=8      size of L1's sparse scratch disk
#   HWHOST_L1_MEM=6144 HWHOST_L1_CPUS=2  (with 1 CPU the 2-vCPU guests run, but the guest's
#                            TCP then sends MSS-sized frames and t-godwit-net's TSO check fails)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
HWHOST_TIMEOUT=${HWHOST_TIMEOUT:-2400}
HWHOST_TEST_TIMEOUT=${HWHOST_TEST_TIMEOUT:-600}
HWHOST_MODE=${HWHOST_MODE:-auto}
HWHOST_SCRATCH_GB=${HWHOST_SCRATCH_GB:-8}
HWHOST_L1_MEM=${HWHOST_L1_MEM:-6144}
HWHOST_L1_CPUS=${HWHOST_L1_CPUS:-2}
HWHOST_TESTS_PER_L1=${HWHOST_TESTS_PER_L1:-1}
HWHOST_L1_STALL=${HWHOST_L1_STALL:-90}
HWHOST_L1_RETRIES=${HWHOST_L1_RETRIES:-2}
HWHOST_L1_TCG=${HWHOST_L1_TCG:-multi}
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
# harness_line KIND WHY [FILE LINES]: the harness's own FAIL or INFO line, followed by the
# last LINES lines of FILE as "  | " lines (tests/run.sh shows them with the line), into
# the results once they exist, else on stdout.
harness_line() {
	local out=/dev/stdout
	[ -f "${RUNDIR:-}/results" ] && out=$RUNDIR/results
	{
		echo "$1 hwhost/harness: $2"
		if [ -n "${3:-}" ] && [ -s "$3" ]; then
			tail -n "${4:-30}" "$3" | tr -d '\r' | sed 's/^/  | /'
		fi
	} >>"$out"
	[ "$out" = /dev/stdout ] || forward
}
harness_fail() { harness_line FAIL "$@"; }

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
	timeout -k 10 "$HWHOST_TIMEOUT" bash "$ROOT/tests/hwhost/run-tests.sh" "$RUNDIR/results" \
		"$RUNDIR/logs" "${tests[@]}" \
		>"$RUNDIR/runner.log" 2>&1 &
	pid=$!
	trap 'kill -TERM "$pid" 2>/dev/null; rm -rf "$SCRATCH"' EXIT
	while kill -0 "$pid" 2>/dev/null; do forward; sleep 1; done
	wait "$pid"
	rc=$?
	forward
	rm -rf "$SCRATCH"
	if ! grep -q '^DONE' "$RUNDIR/results"; then
		harness_fail "the test runner ended early (status $rc)" "$RUNDIR/runner.log" 30
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
case $HWHOST_L1_TCG in
multi | single) ;;
*) harness_fail "HWHOST_L1_TCG must be multi or single, not $HWHOST_L1_TCG"; exit 1 ;;
esac

tb=$(date +%s.%N)
if ! flock -w 600 "$HW/.build.lock" bash "$ROOT/tests/hwhost/build-l1.sh" "$HW" \
	>"$RUNDIR/build-l1.log" 2>&1; then
	harness_fail "building L1's kernel and initramfs failed" "$RUNDIR/build-l1.log" 20
	exit 1
fi
say "L1 kernel+initramfs ready in $(since "$tb") s"

qemu_pid=
scratch=
cleanup() {
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null
		sleep 1
		kill -KILL "$qemu_pid" 2>/dev/null
	fi
	[ -n "$scratch" ] && rm -f "$scratch"
}
trap cleanup EXIT
trap 'harness_fail "interrupted"; exit 1' INT TERM

# What L1's kernel prints when one of its CPUs is stuck in kernel mode.
L1_LOCKUP_RE='watchdog: BUG: soft lockup.*|rcu: INFO: rcu_[a-z]+ (self-)?detected stall.*'

# l1_take SDIR: moves the lines of the tests that ended (up to the last "TIME" line) from
# L1 boot SDIR's results to the batch's, and adds their names to $finished.  The lines of
# a test still running stay behind: they count only once it ends.
l1_take() {
	local sres=$1/results last
	last=$(grep -n '^TIME ' "$sres" 2>/dev/null | tail -n 1 | cut -d: -f1)
	[ -n "$last" ] && [ "$last" -gt "$taken" ] || return 0
	sed -n "$((taken + 1)),${last}p" "$sres" >>"$RUNDIR/results"
	finished+=" $(sed -n "$((taken + 1)),${last}p" "$sres" | sed -n 's/^TIME \([^ ]*\) .*/\1/p' | tr '\n' ' ')"
	taken=$last
	forward
}

# l1_boot N TEST...: boots L1 number N for the tests and waits until it is done with them,
# frozen, dead or out of time.  Sets $finished (names of the tests that ended), $l1_why
# (empty when L1 ran every test; else what went wrong), $l1_setup (1 if L1's own setup
# failed: not worth another boot), $l1_up (L1's last uptime seen) and $l1_log.
l1_boot() {
	local n=$1
	shift
	local sdir=$RUNDIR/l1-$n
	mkdir -p "$sdir"
	: >"$sdir/results"
	taken=0 finished='' l1_why='' l1_setup=0 l1_up=''
	l1_log=$sdir/l1.log
	scratch=$sdir/scratch.img
	if ! { truncate -s "${HWHOST_SCRATCH_GB}G" "$scratch" &&
		mkfs.ext4 -q -F -O ^has_journal -i 262144 -E lazy_itable_init=1 -L hwscratch "$scratch"; }; then
		l1_why="cannot make the scratch disk $scratch" l1_setup=1
		return
	fi
	# The job L1 runs in chroot /host: the test runner with this batch's environment.
	local job=$sdir/job.sh
	{
		echo "# written by tests/hwhost/run.sh; run by tests/hwhost/l1-init in chroot /host"
		printf 'export ROOT=%q BUILD=%q TIER=hwhost SCRATCH=/tmp/scratch HWHOST_TEST_TIMEOUT=%q HWHOST_EMULATED=1\n' \
			"$ROOT" "$BUILD" "$HWHOST_TEST_TIMEOUT"
		# The tests' own settings (HW_MIGRATE_CPUS, MIGRATE_KIBS, NET_MIB, SOAK_*) go along.
		local v
		for v in $(compgen -v | grep -E '^(HW_[A-Z_]+|SOAK_[A-Z_]+|MIGRATE_KIBS|NET_MIB)$'); do
			printf 'export %s=%q\n' "$v" "${!v}"
		done
		printf 'exec bash %q %q %q' "$ROOT/tests/hwhost/run-tests.sh" "$sdir/results" "$RUNDIR/logs"
		printf ' %q' "$@"
		echo
	} >"$job"
	# L1's boot (~10 s) plus each test's timeout, with some slack.
	local limit=$((120 + (HWHOST_TEST_TIMEOUT + 20) * $#))
	local names
	names=$(printf '%s ' "$@" | sed 's|[^ ]*/t-||g; s|\.sh||g')
	say "L1 #$n: booting (TCG $HWHOST_L1_TCG-threaded, AMD-V emulated, ${HWHOST_L1_CPUS} CPUs, ${HWHOST_L1_MEM} MiB) for: ${names% }"
	local tq
	tq=$(date +%s.%N)
	timeout -k 10 "$limit" "$QEMU" -accel "tcg,thread=$HWHOST_L1_TCG" -cpu EPYC,+svm \
		-m "$HWHOST_L1_MEM" -smp "$HWHOST_L1_CPUS" \
		-kernel "$HW/vmlinuz" -initrd "$HW/initramfs.cpio.gz" \
		-append "console=ttyS0 quiet panic=-1 godwit.hwhost.job=$job" \
		-virtfs local,path=/,mount_tag=host,security_model=passthrough,id=host,multidevs=remap \
		-drive "file=$scratch,if=virtio,format=raw,cache=unsafe" \
		-display none -serial "file:$l1_log" -monitor none -no-reboot -nodefaults \
		</dev/null >"$sdir/qemu.log" 2>&1 &
	qemu_pid=$!

	local ready='' frozen='' lockup='' heard=$SECONDS size=0 s
	while kill -0 "$qemu_pid" 2>/dev/null; do
		if [ -z "$ready" ] && grep -q '^hwhost-l1: ready' "$l1_log" 2>/dev/null; then
			ready=$(since "$tq")
			say "L1 #$n: ready after $ready s ($(grep -m1 '^hwhost-l1: ready' "$l1_log" | cut -d' ' -f3-))"
		fi
		l1_take "$sdir"
		grep -q '^DONE' "$sdir/results" && break
		# Anything on L1's console (its heartbeat at least) says it is alive; a lockup
		# its kernel reports (a CPU stuck in kernel mode: no user process can cause
		# that) says it is not, even while its other CPU keeps the heartbeat going.
		s=$(stat -c %s "$l1_log" 2>/dev/null || echo 0)
		if [ "$s" != "$size" ]; then
			size=$s heard=$SECONDS
			lockup=$(grep -m1 -aoE "$L1_LOCKUP_RE" "$l1_log" | tr -d '\r' | cut -c1-120)
			[ -n "$lockup" ] && break
		elif [ $((SECONDS - heard)) -ge "$HWHOST_L1_STALL" ]; then
			frozen=$((SECONDS - heard))
			break
		fi
		sleep 1
	done
	# The job is done or L1 is gone, frozen or locked up: give L1 a moment to power off.
	if [ -z "$frozen$lockup" ]; then
		for _ in $(seq 20); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
	fi
	if kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null
		sleep 1
		kill -KILL "$qemu_pid" 2>/dev/null
	fi
	wait "$qemu_pid" 2>/dev/null
	local qrc=$?
	qemu_pid=
	rm -f "$scratch"
	l1_take "$sdir"
	l1_up=$(grep -o 'uptime=[0-9.]*' "$l1_log" 2>/dev/null | tail -n 1 | cut -d= -f2)
	say "L1 #$n: ran $(since "$tq") s (qemu status $qrc, L1's last uptime ${l1_up:-?} s)"
	grep -q '^DONE' "$sdir/results" && return
	if [ -n "$frozen" ]; then
		l1_why="L1 froze (its console silent for $frozen s)"
	elif [ -n "$lockup" ]; then
		l1_why="L1's kernel locked up ($lockup)"
	elif [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
		l1_why="L1 ran out of its $limit s"
	elif grep -q '^hwhost-l1: FAILED' "$l1_log" 2>/dev/null; then
		l1_why="L1 setup failed: $(grep -m1 '^hwhost-l1: FAILED' "$l1_log" | cut -d' ' -f3-)"
		l1_setup=1
	elif [ -z "$ready" ]; then
		l1_why="L1 died before it was ready (qemu status $qrc)"
	elif grep -q 'Kernel panic' "$l1_log" 2>/dev/null; then
		l1_why="L1's kernel panicked ($(grep -m1 -o 'Kernel panic.*' "$l1_log" | tr -d '\r' | cut -c1-100))"
	else
		l1_why="L1 died (qemu status $qrc)"
	fi
	if [ -s "$sdir/qemu.log" ]; then
		grep -v "TCG doesn.t support requested feature" "$sdir/qemu.log" | tail -n 10 |
			sed 's/^/qemu: /' >>"$l1_log"
	fi
}

# keep_attempt_logs NAME: moves the logs of NAME's failed attempt aside (NAME.attemptN),
# beside the next attempt's.
keep_attempt_logs() {
	local a=${attempts[$1]}
	[ -e "$RUNDIR/logs/$1.log" ] && mv "$RUNDIR/logs/$1.log" "$RUNDIR/logs/$1.attempt$a.log"
	[ -e "$RUNDIR/logs/$1" ] && mv "$RUNDIR/logs/$1" "$RUNDIR/logs/$1.attempt$a"
	return 0
}

# The tests, HWHOST_TESTS_PER_L1 per L1 boot; a test whose L1 froze or died goes back to
# the front of the queue (HWHOST_L1_RETRIES times), the tests after it stay queued.
queue=("${tests[@]}")
declare -A attempts=()
boots=0
while [ ${#queue[@]} -gt 0 ]; do
	if [ "$(since "$T0" | cut -d. -f1)" -ge "$HWHOST_TIMEOUT" ]; then
		harness_fail "the batch used its $HWHOST_TIMEOUT s (HWHOST_TIMEOUT); not run: $(printf '%s ' "${queue[@]##*/}")"
		break
	fi
	group=("${queue[@]:0:$HWHOST_TESTS_PER_L1}")
	boots=$((boots + 1))
	l1_boot "$boots" "${group[@]}"
	rest=()
	for t in "${queue[@]}"; do
		name=${t##*/} name=${name%.sh} name=${name#t-}
		case " $finished " in *" $name "*) ;; *) rest+=("$t") ;; esac
	done
	queue=("${rest[@]}")
	# Tests that ended but whose guest crashed (run-tests.sh's RETRY lines): the same
	# emulator fault as an L1 that dies (see the top), so the same retries.
	again=()
	while IFS= read -r line; do
		name=${line#RETRY hwhost/} name=${name%%:*}
		for t in "${group[@]}"; do
			case $t in */t-"$name".sh) ;; *) continue ;; esac
			attempts[$name]=$((${attempts[$name]:-0} + 1))
			keep_attempt_logs "$name"
			why="${line#RETRY hwhost/"$name": } (L1 #$boots)"
			fails=$RUNDIR/logs/$name.attempt${attempts[$name]}.fails
			sed -n "s/^RETRIED $name //p" "$RUNDIR/l1-$boots/results" >"$fails"
			if [ "${attempts[$name]}" -le "$HWHOST_L1_RETRIES" ]; then
				harness_line INFO "$name: $why; running $name again in a fresh L1" "$fails" 5
				again+=("$t")
			else
				harness_fail "$name: $why, attempt ${attempts[$name]}; not run again" "$fails" 5
			fi
		done
	done < <(grep '^RETRY hwhost/' "$RUNDIR/l1-$boots/results")
	if [ -n "$l1_why" ] && [ "$l1_setup" = 1 ]; then
		harness_fail "$l1_why" "$l1_log" 40
		break
	elif [ -n "$l1_why" ] && [ ${#queue[@]} -eq 0 ]; then
		# Every test ended (its results are in) before L1 went wrong.
		harness_line INFO "$l1_why after its last test ended (L1 #$boots)" "$l1_log" 25
	elif [ -n "$l1_why" ]; then
		# The test L1 was running when it failed: the first of the group not finished.
		t=${queue[0]}
		name=${t##*/} name=${name%.sh} name=${name#t-}
		attempts[$name]=$((${attempts[$name]:-0} + 1))
		keep_attempt_logs "$name"
		if [ "${attempts[$name]}" -le "$HWHOST_L1_RETRIES" ]; then
			harness_line INFO "$l1_why while running $name at L1 uptime ${l1_up:-?} s (L1 #$boots); running $name again in a fresh L1" "$l1_log" 25
		else
			harness_fail "$l1_why while running $name at L1 uptime ${l1_up:-?} s (L1 #$boots), attempt ${attempts[$name]}; not run again" "$l1_log" 40
			queue=("${queue[@]:1}")
		fi
	fi
	queue=("${again[@]}" "${queue[@]}")
done
echo DONE >>"$RUNDIR/results"
summary "L1 ($boots boot(s))"
