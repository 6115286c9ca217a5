# shellcheck shell=bash disable=SC2034 # HW_* results are read by the test scripts
# tests/hwhost/lib-l1.sh - helpers for tier-2 tests (tests/hwhost/t-*.sh), which run on a
# host with hardware(-like) /dev/kvm: inside L1 or directly (see tests/hwhost/run.sh).
# Source tests/lib.sh first.  Typical use:
#
#   hw_need_guest NAME || exit 0
#   log=$T_TMP/guest.log
#   hw_start "$log" "${HW_QEMU[@]}" -smp 2 -m 512M -append "$(hw_append godwit.workload=mem)"
#   hw_wait "$log" 'linux-guest: poweroff' 180 "$HW_PID"; rc=$?
#   hw_stop "$HW_PID"
#   hw_check_memtest NAME "$log" 2
#
# Keep logs in $T_TMP/*.log: when the test exits (even on its timeout) they are copied to
# $HW_ARTIFACTS (set by tests/hwhost/run-tests.sh: build/hwhost/run/logs/NAME/), and
# run.sh shows their last lines if the test failed.
#
# Each hw_start starts one process (VMM) in the background, stdin from /dev/null, stdout
# and stderr appended to LOG (give the VMM a serial port on stdout, e.g. QEMU's
# `-serial stdio`), and sets HW_PID; lib.sh's EXIT trap kills whatever is left.

HW_GUEST_KERNEL=${HW_GUEST_KERNEL:-$BUILD/linux/vmlinuz}
HW_GUEST_INITRD=${HW_GUEST_INITRD:-$BUILD/linux/initramfs.cpio.gz}
# The base of the guest's kernel command line (guest/linux/init documents godwit.*).
HW_GUEST_APPEND=${HW_GUEST_APPEND:-console=ttyS0 quiet panic=-1}
SCRATCH=${SCRATCH:-$T_TMP}
HW_ARTIFACTS=${HW_ARTIFACTS:-}

# hw_save_logs: copies $T_TMP/*.log to $HW_ARTIFACTS (run at exit, before lib.sh cleans up).
hw_save_logs() {
	[ -n "$HW_ARTIFACTS" ] || return 0
	local f
	for f in "$T_TMP"/*.log; do
		[ -f "$f" ] || continue
		mkdir -p "$HW_ARTIFACTS" && cp "$f" "$HW_ARTIFACTS/" 2>/dev/null
	done
}
trap 'hw_save_logs; t_cleanup' EXIT
QEMU=${QEMU:-qemu-system-x86_64}

# A QEMU command line for the Linux guest; add -smp, -m and -append.  qboot instead of
# SeaBIOS saves ~5 s per boot inside L1.
HW_QEMU=("$QEMU" -enable-kvm -M pc -cpu host -nodefaults -display none -no-reboot
	-serial stdio -monitor none -kernel "$HW_GUEST_KERNEL" -initrd "$HW_GUEST_INITRD")
[ -f /usr/share/qemu/qboot.rom ] && HW_QEMU+=(-bios /usr/share/qemu/qboot.rom)

# Starting a process inside L1 costs 0.1-0.3 s of emulated CPU (measured: /bin/true 0.12 s,
# grep 0.25 s, sleep 0.3 s), taken from the guest under test: the helpers below wait and
# poll with bash builtins only.

# hw_sleep SECONDS: sleeps without starting a process (read -t on a FIFO nobody writes).
mkfifo "$T_TMP/.hw-sleep" && exec {HW_SLEEP_FD}<>"$T_TMP/.hw-sleep"
hw_sleep() { read -r -t "$1" -u "$HW_SLEEP_FD" _ || :; }

# hw_now: seconds since the epoch, with decimals.
hw_now() { echo "${EPOCHREALTIME/,/.}"; }

# hw_since T: seconds since T (from hw_now), one decimal.
hw_since() {
	local a=${1/[.,]/} b=${EPOCHREALTIME/[.,]/} d
	d=$(( (10#$b - 10#$a) / 100000 ))
	echo "$((d / 10)).$((d % 10))"
}

# hw_need_guest NAME: true if /dev/kvm and the Linux guest (make linux-guest) are there;
# otherwise prints SKIP (no /dev/kvm) or FAIL (guest not built) and returns 1.
hw_need_guest() {
	t_need_kvm "$1" || return 1
	if [ ! -f "$HW_GUEST_KERNEL" ] || [ ! -f "$HW_GUEST_INITRD" ]; then
		t_fail "$1" "no Linux guest at $HW_GUEST_KERNEL (run make linux-guest)"
		return 1
	fi
	return 0
}

# hw_append ARG...: the guest's kernel command line: the base plus ARG...
hw_append() { echo "$HW_GUEST_APPEND $*"; }

# hw_start LOG CMD...: starts CMD in the background (output appended to LOG); sets HW_PID
# and HW_T0 (start time, hw_now).
hw_start() {
	local log=$1
	shift
	HW_T0=${EPOCHREALTIME/,/.}
	echo "+ $*" >>"$log"
	"$@" </dev/null >>"$log" 2>&1 &
	HW_PID=$!
}

# hw_wait LOG REGEX TIMEOUT_S [PID]: waits until LOG has a line matching REGEX (an extended
# regular expression, as for grep -E, matched by bash against each line).  Returns 0 on a
# match, 1 if PID exited first, 2 on timeout.  Sets HW_WAITED (seconds).
hw_wait() {
	local log=$1 re=$2 t=$3 pid=${4:-} n=0 dead=0 t0 l
	local -a lines
	t0=${EPOCHREALTIME/,/.}
	local deadline=$(( ${EPOCHREALTIME/[.,]/} + t * 1000000 ))
	for (( ; ; )); do
		[ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && dead=1
		lines=()
		[ -f "$log" ] && mapfile -t -s "$n" lines <"$log"
		for l in "${lines[@]}"; do
			if [[ $l =~ $re ]]; then
				HW_WAITED=$(hw_since "$t0")
				return 0
			fi
		done
		# The last line may be incomplete: look at it again next time.
		[ ${#lines[@]} -gt 1 ] && n=$((n + ${#lines[@]} - 1))
		HW_WAITED=$(hw_since "$t0")
		if [ $dead = 1 ]; then
			# PID is gone and LOG final: one more look at all of it.  (Seen once in
			# L1: a poweroff line in the final log that this loop had not matched.)
			mapfile -t lines <"$log"
			for l in "${lines[@]}"; do
				[[ $l =~ $re ]] && return 0
			done
			return 1
		fi
		[ "${EPOCHREALTIME/[.,]/}" -ge "$deadline" ] && return 2
		hw_sleep 0.2
	done
}

# hw_wait_exit PID TIMEOUT_S: waits for PID (a child of this shell) to exit; sets HW_RC
# to its status.  Returns 0 if it exited, 2 on timeout (PID is left running).
hw_wait_exit() {
	local pid=$1 t=$2
	local deadline=$(( ${EPOCHREALTIME/[.,]/} + t * 1000000 ))
	while kill -0 "$pid" 2>/dev/null; do
		[ "${EPOCHREALTIME/[.,]/}" -ge "$deadline" ] && return 2
		hw_sleep 0.2
	done
	wait "$pid" 2>/dev/null
	HW_RC=$?
	return 0
}

# hw_stop PID [GRACE_S]: stops PID: SIGTERM, then SIGKILL after GRACE_S (default 5); sets
# HW_RC to its exit status.  Harmless if PID already exited.
hw_stop() {
	local pid=$1 grace=${2:-5}
	kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
	if ! hw_wait_exit "$pid" "$grace"; then
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		HW_RC=$?
	fi
}

# hw_run LOG TIMEOUT_S REGEX CMD...: starts CMD, waits for REGEX, then for CMD to exit on its
# own (up to 30 s more; a guest that printed its last line powers off), and stops it.
# Returns hw_wait's status; sets HW_WAITED, HW_RC, HW_ELAPSED (seconds CMD ran).
hw_run() {
	local log=$1 t=$2 re=$3 rc
	shift 3
	hw_start "$log" "$@"
	hw_wait "$log" "$re" "$t" "$HW_PID"
	rc=$?
	[ $rc -eq 0 ] && hw_wait_exit "$HW_PID" 30
	hw_stop "$HW_PID"
	HW_ELAPSED=$(hw_since "$HW_T0")
	return $rc
}

# hw_tail LOG [N]: prints LOG's last N (default 20) lines, indented, for a failing test.
hw_tail() {
	tail -n "${2:-20}" "$1" 2>/dev/null | sed 's/^/  | /'
}

# hw_fail NAME WHY LOG...: FAIL NAME with WHY, then the tail of each non-empty LOG.
hw_fail() {
	local name=$1 why=$2 f
	shift 2
	t_fail "$name" "$why"
	for f in "$@"; do
		[ -s "$f" ] || continue
		echo "  | --- ${f##*/}"
		hw_tail "$f" 15
	done
}

# hw_diag PID OUT: what a VMM whose guest stopped making progress is doing, into OUT:
# each of its threads' state, CPU ticks (user+system) and wait channel, and KVM's
# counters for its VM (debugfs, mounted by l1-init; summed over the vCPUs), sampled twice
# 2 s apart, one line per thread and one for the VM ("A -> B": the two samples).  A vCPU
# thread halted with no interrupt injected: the guest waits for an interrupt that does
# not come (godwit's bug class: a lost interrupt).  A vCPU thread on a CPU most of the
# time adds a line "verdict: a vCPU thread ran while the guest made no progress": how
# the emulated L1 wedges a guest (seen with QEMU as the VMM: its vCPU thread at 100%,
# the guest silent, not even its soft-lockup watchdog printing, then L1 panicked), which
# run-tests.sh treats like a crashed guest.  Call it only once the test has seen no
# progress: a busy guest that makes progress also keeps its vCPU threads running.
hw_diag() {
	local pid=$1 t d f st comm wchan v k line= busy=
	local -a w
	local -A one=() ticks=()
	for k in 1 2; do
		for t in /proc/"$pid"/task/*; do
			read -r comm <"$t/comm" 2>/dev/null || continue
			read -r st <"$t/stat" 2>/dev/null || continue
			read -ra w <<<"${st##*) }"
			read -r wchan <"$t/wchan" 2>/dev/null
			v="state=${w[0]} ticks=$((w[11] + w[12])) wchan=${wchan:-?}"
			if [ $k = 1 ]; then
				one[${t##*/}]=$v ticks[${t##*/}]=$((w[11] + w[12]))
				continue
			fi
			echo "${t##*/} $comm: ${one[${t##*/}]:-} -> $v"
			# A vCPU thread on a CPU for over half of the 2 s (ticks are 1/100 s).
			if [[ $comm == vcpu* ]] && [ -n "${ticks[${t##*/}]:-}" ] &&
				[ $((w[11] + w[12] - ticks[${t##*/}])) -gt 100 ]; then
				busy+=" $comm ($((w[11] + w[12] - ticks[${t##*/}])) ticks)"
			fi
		done
		for d in /sys/kernel/debug/kvm/"$pid"-*; do
			[ -d "$d" ] || continue
			for f in exits halt_exits irq_injections irq_exits io_exits mmio_exits; do
				[ -r "$d/$f" ] || continue
				read -r v <"$d/$f"
				if [ $k = 1 ]; then one[$d/$f]=$v; else line+=" $f=${one[$d/$f]:-}->$v"; fi
			done
			[ $k = 2 ] && echo "kvm VM ${d##*/} (all vCPUs):$line" && line=
		done
		[ $k = 1 ] && hw_sleep 2
	done >"$2" 2>&1
	# Why the vCPUs exit: KVM's kvm_exit trace event for 0.5 s, the commonest (reason, guest
	# RIP, exit info: for an npf the error code and the guest-physical address) first;
	# tracing is L1-wide: the other VM, if any, shows up too.  Seen in wedged guests: an
	# npf at one RIP ~19 000 times a second, no interrupt injected.
	local tr=/sys/kernel/debug/tracing
	if [ -w "$tr/events/kvm/kvm_exit/enable" ]; then
		{
			: >"$tr/trace"
			echo 1 >"$tr/events/kvm/kvm_exit/enable"
			hw_sleep 0.5
			echo 0 >"$tr/events/kvm/kvm_exit/enable"
			grep -oE 'reason [A-Za-z_]+ rip 0x[0-9a-f]+ info1 0x[0-9a-f]+ info2 0x[0-9a-f]+' "$tr/trace" | sort | uniq -c | sort -rn |
				head -n 4 | sed 's/^ */kvm_exit in 0.5 s: /'
			: >"$tr/trace"
		} >>"$2" 2>&1
	fi
	[ -n "$busy" ] && echo "verdict: a vCPU thread ran while the guest made no progress:$busy in 2 s" >>"$2"
	return 0
}

# hw_diag_live PREFIX ROLE=PID...: hw_diag of each PID still running, into
# $T_TMP/PREFIX-ROLE-diag.log (e.g. hw_diag_live godwit-migrate src="$spid" dst="$dpid").
hw_diag_live() {
	local prefix=$1 a
	shift
	for a in "$@"; do
		[ -n "${a#*=}" ] && kill -0 "${a#*=}" 2>/dev/null &&
			hw_diag "${a#*=}" "$T_TMP/$prefix-${a%%=*}-diag.log"
	done
	return 0
}

# hw_pin_godwit NAME: GODWIT becomes a copy of itself in $SCRATCH/NAME.bin, so that the source,
# the destination and the client of a migration run one build even if the checkout's is
# rebuilt meanwhile (a binary replaced between the source's start and the client's once
# crashed the client).  FAIL NAME and return 1 if it cannot be copied; remove it at exit.
hw_pin_godwit() {
	if ! cp "$GODWIT" "$SCRATCH/$1.bin"; then
		t_fail "$1" "cannot copy $GODWIT to $SCRATCH"
		return 1
	fi
	GODWIT=$SCRATCH/$1.bin
}

# hw_finish PREFIX ROLE PID LOG SECS [REGEX]: waits SECS for the Linux guest in LOG to power
# off or panic (or for a line matching REGEX, default '^linux-guest: poweroff|Kernel panic');
# on the timeout, hw_diag_live PREFIX ROLE=PID first; then the VMM is given 60 s to
# exit and stopped.  HW_RC is its exit status; returns hw_wait's status (0 powered off or
# panicked, 1 exited first, 2 timed out).
hw_finish() {
	local wrc
	hw_wait "$4" "${6:-^linux-guest: poweroff|Kernel panic}" "$5" "$3"
	wrc=$?
	[ $wrc -eq 2 ] && hw_diag_live "$1" "$2=$3"
	[ $wrc -eq 0 ] && hw_wait_exit "$3" 60
	hw_stop "$3"
	return $wrc
}

# hw_count_lines LOG PREFIX: sets HW_N to the number of LOG's lines starting with PREFIX.
hw_count_lines() {
	local l
	local -a lines
	HW_N=0
	[ -f "$1" ] || return 0
	mapfile -t lines <"$1"
	for l in "${lines[@]}"; do [[ $l == "$2"* ]] && HW_N=$((HW_N + 1)); done
}

# hw_wait_count LOG PREFIX COUNT TIMEOUT_S PID: waits for COUNT lines of LOG starting with
# PREFIX.  Returns 0 once there, 1 if PID died first, 2 on the timeout.
hw_wait_count() {
	local deadline=$(( ${EPOCHREALTIME/[.,]/} + $4 * 1000000 ))
	for (( ; ; )); do
		hw_count_lines "$1" "$2"
		[ "$HW_N" -ge "$3" ] && return 0
		kill -0 "$5" 2>/dev/null || return 1
		[ "${EPOCHREALTIME/[.,]/}" -ge "$deadline" ] && return 2
		hw_sleep 0.3
	done
}

# hw_line LOG PREFIX: the last line of LOG starting with PREFIX, without it.
hw_line() {
	local prefix=$2 i
	local -a lines
	[ -f "$1" ] || return 0
	mapfile -t lines <"$1"
	for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
		if [[ ${lines[i]} == "$prefix"* ]]; then
			local l=${lines[i]#"$prefix"}
			echo "${l%$'\r'}"
			return 0
		fi
	done
}

# hw_check_memtest NAME LOG CPUS: checks a Linux guest's memtest run in LOG: the guest saw
# CPUS CPUs, memtest finished with errors=0 and exit=0.  Prints PASS or FAIL (with the log's
# tail); returns 0 on PASS.
hw_check_memtest() {
	local name=$1 log=$2 cpus=$3 why='' got
	got=$(t_last_field "$log" "linux-guest: cpus=" cpus)
	if [ -z "$got" ]; then
		why="the guest never reached /init"
	elif [ "$got" != "$cpus" ]; then
		why="the guest saw cpus=$got, expected $cpus"
	elif [ -z "$(hw_line "$log" "memtest: done")" ]; then
		why="memtest did not finish"
	elif [ "$(t_last_field "$log" "memtest: done" errors)" != 0 ]; then
		why="memtest errors=$(t_last_field "$log" "memtest: done" errors)"
	elif [ "$(t_last_field "$log" "linux-guest: memtest exit" exit)" != 0 ]; then
		why="memtest exit=$(t_last_field "$log" "linux-guest: memtest exit" exit)"
	fi
	if [ -n "$why" ]; then
		t_fail "$name" "$why"
		hw_tail "$log" 30
		return 1
	fi
	t_pass "$name"
}

# hw_check_sandbox NAME PID: every thread of the godwit PID (or of its child, if PID is a
# wrapper) shows Seccomp 2, NoNewPrivs 1 and CapEff 0 in /proc/PID/task/*/status (read with
# builtins).  Prints PASS or FAIL NAME; returns 0 on PASS.
hw_check_sandbox() {
	local name=$1 pid=$2 st k v why='' n=0 comm sc nnp ce threads='' try
	local -a kids
	read -r comm <"/proc/$pid/comm" 2>/dev/null
	if [ "$comm" != godwit ] && [ -r "/proc/$pid/task/$pid/children" ]; then
		read -ra kids <"/proc/$pid/task/$pid/children"
		pid=${kids[0]:-$pid}
	fi
	for st in /proc/"$pid"/task/*/status; do
		[ -r "$st" ] || continue
		# bash reads the file in several read(2)s, and procfs makes each one afresh: a
		# field that changed length in between (VmRSS while the guest runs) can tear a
		# line.  So read it again until the three fields are whole (a real value is the
		# same every time); a thread that exited meanwhile is not counted.
		for try in 1 2 3 4 5; do
			comm='' sc='' nnp='' ce=''
			while read -r k v _; do
				case $k in
				Name:) comm=$v ;;
				Seccomp:) sc=$v ;;
				NoNewPrivs:) nnp=$v ;;
				CapEff:) ce=$v ;;
				esac
			done <"$st" 2>/dev/null
			[ -n "$sc" ] && [ -n "$nnp" ] && [ ${#ce} = 16 ] && break
		done
		[ -e "$st" ] || continue
		n=$((n + 1))
		threads+="$comm "
		[ "$sc" = 2 ] && [ "$nnp" = 1 ] && [ "$ce" = 0000000000000000 ] ||
			why+="$comm: Seccomp=$sc NoNewPrivs=$nnp CapEff=$ce; "
	done
	[ $n -gt 0 ] || why="no threads under /proc/$pid/task"
	if [ -n "$why" ]; then
		t_fail "$name" "$why"
		return 1
	fi
	t_pass "$name"
	echo "# $name: $n threads ($threads) with Seccomp 2, NoNewPrivs 1, CapEff 0"
}

# hw_bridge_net NSB NSP TAP...: two network namespaces: NSB with a bridge br0 joining
# persistent TAPs TAP... (for the VMMs, which run in NSB) and a veth to NSP, where the peer
# is 198.18.0.1/24 on eth0 (the guest takes 198.18.0.2).  Prints what failed and returns 1.
hw_bridge_net() {
	local nsb=$1 nsp=$2 tap out
	shift 2
	# _hw_ip ARGS...: ip ARGS, or its message and false.
	_hw_ip() { out=$(ip "$@" 2>&1) || { echo "ip $*: $out"; return 1; }; }
	_hw_ip netns add "$nsb" && _hw_ip netns add "$nsp" &&
		_hw_ip -n "$nsb" link set lo up && _hw_ip -n "$nsp" link set lo up &&
		_hw_ip -n "$nsb" link add br0 type bridge || return 1
	for tap in "$@"; do
		_hw_ip -n "$nsb" tuntap add dev "$tap" mode tap &&
			_hw_ip -n "$nsb" link set "$tap" master br0 up || return 1
	done
	_hw_ip -n "$nsb" link add gwmveth type veth peer name eth0 netns "$nsp" &&
		_hw_ip -n "$nsb" link set gwmveth master br0 up && _hw_ip -n "$nsb" link set br0 up &&
		_hw_ip -n "$nsp" addr add 198.18.0.1/24 dev eth0 && _hw_ip -n "$nsp" link set eth0 up
}
