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
# t_want VAR NAME: NAME is among the space-separated names in the variable VAR, or VAR is
# empty (then every case runs): MIGRATE_CASES=..., MATRIX_ROWS=... pick a test's cases.
t_want() { [ -z "${!1:-}" ] || [[ " ${!1} " == *" $2 "* ]]; }
# t_field LINE KEY: the value of the first word KEY=VALUE in LINE (report lines, summaries).
t_field() {
	local w
	local -a words
	read -ra words <<<"${1%$'\r'}"
	for w in "${words[@]}"; do [[ $w == "$2="* ]] && { echo "${w#*=}"; return 0; }; done
	return 1
}
# t_last_field FILE PREFIX KEY: t_field of the last complete line of FILE that starts with
# PREFIX (literal), e.g. t_last_field "$log" 'disk: t=' errors; empty if there is none.
# Bash builtins only: tier 2 calls it inside the emulated L1, where a process costs the
# guest under test 0.1-0.3 s of CPU (tests/hwhost/README.md).
t_last_field() {
	local c i
	local -a lines
	[ -f "$1" ] || return 0
	IFS= read -r -d '' c <"$1"
	[[ $c == *$'\n'* ]] || return 0
	c=${c%$'\n'*}                          # without the last newline and what follows it
	mapfile -t lines <<<"$c"
	for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
		[[ ${lines[i]} == "$2"* ]] && { t_field "${lines[i]}" "$3"; return 0; }
	done
	return 0
}
# t_tenths T: a time in seconds with one decimal, in tenths: "12.3" -> 123.
t_tenths() { local a=${1%.*} b=${1#*.}; echo $((10#$a * 10 + 10#${b:0:1})); }
# t_expect NAME STATUS REGEX CMD...: run CMD (30 s at most, no stdin) and PASS if it exits
# with STATUS and its stderr matches REGEX (- : any); the output is in $T_TMP/NAME.{out,err}.
t_expect() {
	local name=$1 want=$2 re=$3 rc out=$T_TMP/$1.err
	shift 3
	timeout 30 "$@" </dev/null >"$T_TMP/$name.out" 2>"$out"
	rc=$?
	if [ "$rc" -ne "$want" ]; then
		t_fail "$name" "exit status $rc, expected $want; stderr: $(head -c 300 "$out")"
	elif [ "$re" != - ] && ! grep -qE "$re" "$out"; then
		t_fail "$name" "stderr lacks /$re/: $(head -c 300 "$out")"
	else
		t_pass "$name"
	fi
}
# t_wait_link NS IFACE SECS: until the interface IFACE exists in the namespace NS.
t_wait_link() {
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		ip -n "$1" link show "$2" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}
# t_need_guest NAME: t_need_kvm, and the test guest is built (a FAIL if not: make test builds it).
t_need_guest() {
	t_need_kvm "$1" || return 1
	[ -f "$GUEST_ELF" ] && return 0
	t_fail "$1" "no test guest at $GUEST_ELF (make guest)"
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
