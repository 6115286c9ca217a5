# shellcheck shell=bash
# tests/kvm/lib-migrate.sh - helpers the tier-1 migration tests share (t-migrate*.sh): a
# source VM running the test guest's memtest ($CMDLINE), a
# destination, the fault proxy (migproxy.py, $PROXY), and the checks that the VM runs
# with its memory verified.  Source tests/lib.sh and lib-vm.sh first.

PFX=()
PROXY=${PROXY:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/migproxy.py}
CMDLINE=${CMDLINE:-'workload=mem mem=64 rate=20 report=200'}

now_ms() { date +%s%3N; }
# wait_count COUNT FILE N SECS: until the function COUNT FILE says N or more (SECS at most).
wait_count() {
	local i
	for ((i = 0; i < $4 * 10; i++)); do
		[ "$("$1" "$2")" -ge "$3" ] && return 0
		sleep 0.1
	done
	return 1
}
# wait_reports FILE N SECS: until FILE has N memtest lines.
wait_reports() { wait_count reports "$@"; }
# mstat SOCK: migrate-status --json of the VM at SOCK.
mstat() { "$GODWIT" migrate-status --api "$1" --json 2>&1; }
# jfield JSON KEY: a top-level field of a JSON object (empty if absent or not JSON);
# jget FILE KEY: the same from a file.
jfield() { jq -r --arg k "$2" '.[$k] // empty' <<<"$1" 2>/dev/null; }
jget() { jq -r --arg k "$2" '.[$k] // empty' "$1" 2>/dev/null; }
# last_gen FILE: gen= of the last complete memtest line.
last_gen() { t_complete "$1" | grep -a '^memtest: t=.* max_stall_ms=' | tail -n 1 | sed 's/.* gen=\([0-9]*\) .*/\1/'; }
# guest_errors FILE: the guest's error lines, if any.
guest_errors() { grep -a 'memtest: ERROR\|EXCEPTION\|errors=[1-9]' "$1" | head -n 3; }

# start_vm NAME ARGS...: `godwit run --kernel $GUEST_ELF --api ... ARGS` in the background
# (prefixed by the array PFX, e.g. ip netns exec NS); S_PID, S_SOCK, S_OUT, S_ERR.
start_vm() {
	local name=$1
	shift
	S_SOCK=$T_TMP/$name.sock S_OUT=$T_TMP/$name.out S_ERR=$T_TMP/$name.err
	"${PFX[@]}" timeout 180 "$GODWIT" run --kernel "$GUEST_ELF" --api "$S_SOCK" \
		--snapshot-dir "$T_TMP" "$@" \
		</dev/null >"$S_OUT" 2>"$S_ERR" &
	S_PID=$!
}
# start_src NAME [OPTIONS...]: a fresh source VM (the test guest, --mem 256M, $CMDLINE);
# start_vm's variables.  Waits for 2 reports.
start_src() {
	local name=$1
	shift
	start_vm "$name" --mem 256M --cmdline "$CMDLINE" "$@"
	wait_reports "$S_OUT" 2 20
}
# mig_addr NAME: a migration address for NAME: unix:$T_TMP/NAME.msock, or with
# MIG_TRANSPORT=tcp or tls a free loopback TCP port.
mig_addr() {
	if [ "${MIG_TRANSPORT:-unix}" = tcp ] || [ "${MIG_TRANSPORT:-unix}" = tls ]; then
		echo "tcp:127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
	else
		echo "unix:$T_TMP/$1.msock"
	fi
}
# mig_certs: tests/kvm/mkcerts.py's credentials, made once in $T_TMP/certs; its path.
mig_certs() {
	[ -d "$T_TMP/certs" ] || python3 "$ROOT/tests/kvm/mkcerts.py" "$T_TMP/certs"
	echo "$T_TMP/certs"
}
# mig_tls SIDE: with MIG_TRANSPORT=tls the options that give SIDE (src or dst) its
# credentials, one per line (mapfile -t); nothing otherwise.
mig_tls() {
	[ "${MIG_TRANSPORT:-unix}" = tls ] && printf '%s\n' --tls-dir "$(mig_certs)/$1"
	return 0
}
# start_dst NAME [OPTIONS...]: a destination on $D_AT if set, else on mig_addr NAME (with
# PFX as start_vm; with MIG_TRANSPORT=tls under mutual TLS); D_PID, D_SOCK, D_OUT, D_ERR,
# D_ADDR.  False if it is not waiting within 10 s.
start_dst() {
	local name=$1 tls
	shift
	mapfile -t tls < <(mig_tls dst)
	D_SOCK=$T_TMP/$name.sock D_OUT=$T_TMP/$name.out D_ERR=$T_TMP/$name.err
	D_ADDR=${D_AT:-$(mig_addr "$name")}
	"${PFX[@]}" timeout 180 "$GODWIT" run --incoming "$D_ADDR" --api "$D_SOCK" "${tls[@]}" "$@" \
		</dev/null >"$D_OUT" 2>"$D_ERR" &
	D_PID=$!
	t_wait_for "$D_ERR" 'waiting for an incoming migration' 10
}
# start_proxy NAME MODE [ARG]: migproxy from mig_addr NAME.px to $D_ADDR (with
# MIG_TRANSPORT=tls terminating TLS on both sides); P_PID, P_OUT, P_ADDR.
start_proxy() {
	local tls=
	[ "${MIG_TRANSPORT:-unix}" = tls ] && tls=$(mig_certs)
	P_OUT=$T_TMP/$1.px.out P_ADDR=$(mig_addr "$1.px")
	MIGPROXY_TLS=$tls timeout 100 python3 "$PROXY" "$P_ADDR" "$D_ADDR" "$2" ${3:+"$3"} \
		>"$P_OUT" 2>&1 &
	P_PID=$!
	t_wait_for "$P_OUT" '^listening' 10
}
# vm_running PID SOCK OUT: the godwit PID (its stderr beside OUT, .err) still runs and
# says its VM is running (else false, with WHY).
vm_running() {
	local st
	WHY=
	if ! kill -0 "$1" 2>/dev/null; then
		wait "$1"
		WHY="the godwit exited with status $?: $(tail -c 300 "${3%.out}.err")"
		return 1
	fi
	st=$("$GODWIT" status --api "$2" --json 2>&1)
	if [ "$(jfield "$st" state)" != running ]; then
		WHY="godwit status: $(head -c 300 <<<"$st")"
		return 1
	fi
	return 0
}
# goes_on PID SOCK OUT N COUNT ERRS WHAT: the VM at SOCK runs, its guest prints N more
# lines (as the function COUNT OUT counts them; WHAT names them) within 10 s, and the
# function ERRS OUT finds no error line (else WHY).
goes_on() {
	local n
	vm_running "$1" "$2" "$3" || return 1
	n=$("$5" "$3")
	if ! wait_count "$5" "$3" $((n + $4)) 10; then
		WHY="the guest printed $(($("$5" "$3") - n)) $7 in 10 s (expected $4): $(tail -c 200 "$3")"
		return 1
	fi
	if [ -n "$("$6" "$3")" ]; then
		WHY="guest errors: $("$6" "$3" | tr '\n' '|')"
		return 1
	fi
	return 0
}
# src_ok PID SOCK OUT: the VM at SOCK runs and its guest reports on, errors=0 (else WHY).
src_ok() { goes_on "$1" "$2" "$3" 3 reports guest_errors "memtest lines"; }

# end_vm [PID SOCK]: godwit shutdown of the VM (default: S_PID, S_SOCK), and reap it.
end_vm() {
	"$GODWIT" shutdown --api "${2:-$S_SOCK}" >/dev/null 2>&1
	wait_exit "${1:-$S_PID}" 10 >/dev/null
}

