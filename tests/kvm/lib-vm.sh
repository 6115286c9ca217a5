# shellcheck shell=bash
# tests/kvm/lib-vm.sh - helpers the tier-1 tests that start and stop godwit VMs share
# (t-migrate*.sh, t-snapshot*.sh).
# Source tests/lib.sh first.

# elapsed SINCE: seconds since SINCE (date +%s.%N), one decimal.
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# field LINE KEY: the value of KEY= in LINE (t_field).
field() { t_field "$@"; }

# reports FILE: number of the test guest's memtest lines in FILE.
reports() { local n; n=$(grep -ac "^memtest: t=" "$1" 2>/dev/null); echo "${n:-0}"; }

# wait_exit PID [SECS]: PID's exit status, within SECS (default 20); 124 if it did not
# exit in time (it is then killed).
wait_exit() {
	local i
	for ((i = 0; i < ${2:-20} * 10; i++)); do
		if ! kill -0 "$1" 2>/dev/null; then wait "$1" 2>/dev/null; return $?; fi
		sleep 0.1
	done
	kill "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	return 124
}

# godwit_pid TIMEOUT_PID: the godwit that timeout(1) runs (within 5 s).
godwit_pid() {
	local i p
	for ((i = 0; i < 50; i++)); do
		p=$(pgrep -P "$1" | head -n 1)
		[ -n "$p" ] && { echo "$p"; return 0; }
		sleep 0.1
	done
	return 1
}

# kill_pid PID: ends a process this script started, and reaps it.
kill_pid() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

# sanitizer FILE...: the first sanitizer report line in FILEs, if any.
sanitizer() { grep -haE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$@" 2>/dev/null | head -n 1; }
