# tests/lib.sh - helpers for shell test scripts.  Each test prints one line:
#   PASS name | FAIL name: why | SKIP name: why
# which tests/run.sh counts.  Source this file, then call t_pass/t_fail/t_skip.

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
BUILD=${BUILD:-$ROOT/build}
GODWIT=${GODWIT:-$BUILD/godwit}
GUEST_ELF=${GUEST_ELF:-$ROOT/build/guest/godwit-guest.elf}
TIER=${TIER:-kvm}
T_TMP=$(mktemp -d /tmp/godwit-test.XXXXXX)
trap 't_cleanup' EXIT

t_cleanup() {
	local p
	for p in $(jobs -p); do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$T_TMP"
}

t_pass() { echo "PASS $TIER/$1"; }
t_fail() { echo "FAIL $TIER/$1: $2"; }
t_skip() { echo "SKIP $TIER/$1: $2"; }

# t_need_kvm NAME: true if /dev/kvm is usable; otherwise prints SKIP.
t_need_kvm() {
	if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then return 0; fi
	t_skip "$1" "/dev/kvm is missing or not accessible"
	return 1
}

# t_complete FILE: FILE's lines without a last one that is not ended by a newline yet (a
# guest's console line being printed); read once, so a growing file cannot slip a partial
# line in.  For "the last report line" checks: t_complete LOG | grep '^net: t=' | tail -n 1.
t_complete() {
	local c
	c=$(cat "$1" 2>/dev/null; echo .)
	c=${c%.}
	if [[ $c != *$'\n'* ]]; then
		return 0
	fi
	[[ $c == *$'\n' ]] || c=${c%$'\n'*}$'\n'
	printf '%s' "$c"
}

# t_netns_del NS...: kills every process in each network namespace NS, then deletes it.
t_netns_del() {
	local ns
	for ns in "$@"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
		ip netns del "$ns" 2>/dev/null
	done
	return 0
}

# t_wait_for FILE REGEX TIMEOUT_S: wait until FILE has a line matching REGEX.
t_wait_for() {
	local f=$1 re=$2 t=$3 i
	for ((i = 0; i < t * 10; i++)); do
		grep -qE "$re" "$f" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
