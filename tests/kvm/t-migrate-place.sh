#!/bin/bash
# Tier 1: the destination's first pass placed by userfaultfd (UFFDIO_COPY,
# docs/migration.md "The destination's first pass"), and with it forced off.
#
#   migrate-place-on   test guest (mem=128, rewritten at 50 MiB/s, so pages come
#                      again after the first pass) over loopback TCP: the
#                      destination says how many pages it placed by UFFDIO_COPY
#                      (> 0), and the guest's memory is verified there (memtest
#                      errors=0, a full pass and a new generation)
#   migrate-place-off  the same with GODWIT_UFFD_PLACE=off at the destination:
#                      nothing placed by userfaultfd, the memory verified too
#   restore-place      `godwit snapshot` of a running guest, `godwit restore`: the
#                      whole stream placed by UFFDIO_COPY, the guest goes on with
#                      its memory verified
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=migrate-place
t_need_guest $N || exit 0
CMDLINE='workload=mem mem=128 rate=50 report=200'
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# placed ERRFILE: the number of pages the first pass placed by UFFDIO_COPY, from the log.
placed() { sed -n 's/.*first pass placed: \([0-9]*\) pages by UFFDIO_COPY.*/\1/p' "$1" | tail -n 1; }

# one NAME on|off: one migration, the destination's placer on or forced off.
one() {
	local name=$1 mode=$2 addr p
	addr=tcp:127.0.0.1:$(free_port)
	start_vm "$name.src" --mem 256M --cpus 1 --cmdline "$CMDLINE"
	if ! wait_lines "$S_OUT" 3; then
		t_fail "$name" "the guest did not start: $(tail -c 300 "$S_ERR")"
		kill "$S_PID" 2>/dev/null
		return
	fi
	if [ "$mode" = off ]; then
		GODWIT_UFFD_PLACE=off D_AT="$addr" start_dst "$name.dst"
	else
		D_AT="$addr" start_dst "$name.dst"
	fi || {
		t_fail "$name" "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill "$S_PID" "$D_PID" 2>/dev/null
		return
	}
	migrate "$name" "$addr"
	if ! check_all "$S_PID" $((128 * 256)) 50; then
		t_fail "$name" "$WHY"
	else
		p=$(placed "$D_ERR")
		if [ "$mode" = on ] && ! [ "${p:-0}" -gt 0 ]; then
			t_fail "$name" "the destination placed no page by UFFDIO_COPY: $(grep -a 'restore:' "$D_ERR" | head -n 3 | tr '\n' '|')"
		elif [ "$mode" = off ] && [ -n "$p" ]; then
			t_fail "$name" "GODWIT_UFFD_PLACE=off, yet the destination placed $p pages by UFFDIO_COPY"
		else
			t_pass "$name"
		fi
	fi
	report_line "$name"
	echo "#   destination: ${p:-no} pages placed by UFFDIO_COPY; $D_LAST"
	kill "$S_PID" 2>/dev/null
	kill "$D_PID" 2>/dev/null
	wait "$D_PID" 2>/dev/null
}

one $N-on on
one $N-off off

# ---- a restore from a file ------------------------------------------------------------------------
name=restore-place
SNAP=$T_TMP/place.gws
start_vm "$name.src" --mem 256M --cpus 1 --cmdline 'workload=mem mem=64 rate=0 report=200'
if ! wait_lines "$S_OUT" 3; then
	t_fail "$name" "the guest did not start: $(tail -c 300 "$S_ERR")"
elif ! out=$("$GODWIT" snapshot --api "$S_SOCK" --out "$SNAP" 2>&1); then
	t_fail "$name" "godwit snapshot failed: $out"
else
	end_vm
	R_OUT=$T_TMP/$name.r.out R_ERR=$T_TMP/$name.r.err R_SOCK=$T_TMP/$name.r.sock
	timeout 60 "$GODWIT" restore --from "$SNAP" --api "$R_SOCK" </dev/null >"$R_OUT" 2>"$R_ERR" &
	R_PID=$!
	if ! check_guest "$S_OUT" "$R_OUT" $((64 * 256)) 0; then
		t_fail "$name" "$WHY; restore: $(tail -c 300 "$R_ERR")"
	elif ! [ "$(placed "$R_ERR")" -gt 0 ] 2>/dev/null; then
		t_fail "$name" "the restore placed no page by UFFDIO_COPY: $(tail -c 300 "$R_ERR")"
	elif s=$(sanitizer "$R_ERR") && [ -n "$s" ]; then
		t_fail "$name" "sanitizer: $s"
	else
		t_pass "$name"
	fi
	echo "#   restore: $(placed "$R_ERR") pages placed by UFFDIO_COPY; $D_LAST"
	"$GODWIT" shutdown --api "$R_SOCK" >/dev/null 2>&1
	wait_exit "$R_PID" 10 >/dev/null
fi
kill "$S_PID" 2>/dev/null
exit 0
