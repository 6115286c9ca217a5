#!/bin/bash
# Tier 1: the hand-off fault matrix (docs/migration.md, "Fault matrix"), over UNIX sockets,
# loopback TCP and loopback TCP under mutual TLS.  Each row migrates a fresh source VM (the test guest's memtest,
# which verifies its memory all the time) through migproxy.py, holds the migration at one
# point (the destination's ACCEPT: setup; 16 MiB into the stream: pre-copy; READY:
# stop-and-copy, source paused and waiting; COMMIT: after READY; DONE: after COMMIT), then
# SIGKILLs one side, and checks where the VM runs afterwards (exactly one place, or in
# doubt and then resolved), that its guest goes on with errors=0, and what the operator
# was told.  Also: DONE lost; ERROR at COMMIT (another process holds the shared disk's
# lock); a cancel after READY (ABORT: the destination discards without doubt); a second
# migrate-resolve --resume refused; a trickling peer and the overall deadline; a destination
# that takes the stream at 8 KiB/s (the source's minimum rate).
# Over a third transport, tls: loopback TCP under mutual TLS, migproxy.py terminating the
# session on both sides (the trickling and slow peers, plain programs, are left out there).
# MATRIX_TRANSPORTS="unix tcp tls" (default all three), MATRIX_ROWS="..." (default all).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=migrate-matrix
t_need_guest $N || exit 0
want() { t_want MATRIX_ROWS "$1"; }
T0=$(date +%s%3N)

# paused SOCK OUT: the VM at SOCK prints no memtest line for 1 s.
paused() {
	local n
	n=$(reports "$2")
	sleep 1
	[ "$(reports "$2")" -eq "$n" ]
}
# status SOCK: the migration status at SOCK ("in-doubt", "failed", ...).
status() { jfield "$(mstat "$1")" status; }
# kill_vm PID: SIGKILL the godwit under the timeout(1) PID.
kill_vm() { local g; g=$(godwit_pid "$1") && kill -9 "$g" 2>/dev/null; wait_exit "$1" 10 >/dev/null; }
# resolve SOCK resume|discard: migrate-resolve; its output in RESOLVED, exit status returned.
resolve() { RESOLVED=$("$GODWIT" migrate-resolve --api "$1" --"$2" 2>&1); }
# tail_of FILE: its last 200 bytes on one line.
tail_of() { tail -c 200 "$1" 2>/dev/null | tr '\n' ' '; }
# settle: stop whatever of this row still runs.
settle() {
	for p in ${S_PID:-} ${D_PID:-} ${P_PID:-} ${MPID:-}; do
		kill -0 "$p" 2>/dev/null && kill_pid "$p"
	done
	S_PID= D_PID= P_PID= MPID=
}
# hold_at ROW MODE ARG [MIGRATE OPTIONS...]: source, destination, proxy in MODE ARG, a
# migration through it (MPID, output in MIG); true once the proxy holds.
hold_at() {
	local c=$1 mode=$2 arg=$3 tls
	shift 3
	MIG=$T_TMP/$c.mig
	if ! start_src "$c.src" ${SRC_OPTS:-}; then
		WHY="the source did not start: $(tail_of "$S_ERR")"
		return 1
	fi
	if ! start_dst "$c.dst" ${DST_OPTS:-}; then
		WHY="the destination did not start: $(tail_of "$D_ERR")"
		return 1
	fi
	start_proxy "$c" "$mode" "$arg"
	mapfile -t tls < <(mig_tls src)
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$P_ADDR" "${tls[@]}" "$@" >"$MIG" 2>&1 &
	MPID=$!
	if ! t_wait_for "$P_OUT" '^(held|dropped)' 30; then
		WHY="the proxy never held $arg: $(tr '\n' ' ' <"$P_OUT"); migrate: $(tail_of "$MIG")"
		return 1
	fi
	if [ "$T" = tls ] && ! grep -q '^tls$' "$P_OUT"; then
		WHY="the migration went through the proxy without TLS: $(tr '\n' ' ' <"$P_OUT")"
		return 1
	fi
	return 0
}
# runs_here NAME PID SOCK OUT: PASS NAME if the VM at SOCK runs with its memory verified.
runs_here() {
	if src_ok "$2" "$3" "$4"; then t_pass "$1"; else t_fail "$1" "$WHY"; fi
}
# second_resume NAME SOCK: a second migrate-resolve --resume is refused.
second_resume() {
	if resolve "$2" resume; then
		t_fail "$1" "a second migrate-resolve --resume was accepted: $RESOLVED"
	elif ! grep -q 'no migration is in doubt' <<<"$RESOLVED"; then
		t_fail "$1" "a second --resume was refused, but not as expected: $RESOLVED"
	else
		t_pass "$1"
	fi
}
# trickle ADDR: a peer that sends a real stream (the golden one), a byte every 0.5 s, for
# at most 40 s.
trickle() {
	python3 "$ROOT/tests/kvm/gwmc.py" trickle "$1" "$ROOT/tests/data/golden-0.1.0-dev.gws" >/dev/null 2>&1
}
# slow_destination ADDR: a peer that reads the configuration, answers ACCEPT, then takes
# the stream 4 KiB every 0.5 s, for at most 60 s.
slow_destination() { python3 "$ROOT/tests/kvm/gwmc.py" slow-destination "$1"; }
# row_line ROW TEXT: the row's outcome, for the docs' table.
row_line() { echo "# matrix $T: $1: $2"; }

# The source killed while the destination holds the only copy: the destination stays in
# doubt (paused), is resumed by the operator, and the guest goes on; a second resume fails.
dst_in_doubt_then_resume() {
	local c=$1
	wait_exit "$MPID" 10 >/dev/null
	if ! kill -0 "$D_PID" 2>/dev/null || [ "$(status "$D_SOCK")" != in-doubt ]; then
		t_fail "$c" "the destination is not in doubt: status '$(status "$D_SOCK")'; $(tail_of "$D_ERR")"
		return
	fi
	if ! grep -q 'in doubt: no COMMIT after READY' "$D_ERR"; then
		t_fail "$c" "the destination did not say why it is in doubt: $(tail_of "$D_ERR")"
		return
	fi
	if ! paused "$D_SOCK" "$D_OUT" || [ "$(reports "$D_OUT")" -ne 0 ]; then
		t_fail "$c" "the in-doubt destination runs the guest before it is resolved"
		return
	fi
	if ! resolve "$D_SOCK" resume; then
		t_fail "$c" "migrate-resolve --resume on the destination: $RESOLVED"
		return
	fi
	runs_here "$c" "$D_PID" "$D_SOCK" "$D_OUT"
	second_resume "$c-second-resume" "$D_SOCK"
	row_line "$c" "destination in doubt, resumed there; memtest $(grep -a '^memtest: t=' "$D_OUT" | tail -n 1 | grep -o 'errors=[0-9]*')"
}

# The source killed before the stream ended: the destination discards its partial copy
# and exits 1 without running the guest (the VM died with its source).
dst_discards() {
	local c=$1 rc
	wait_exit "$D_PID" 20
	rc=$?
	if [ $rc -ne 1 ] || [ "$(reports "$D_OUT")" -ne 0 ] ||
		! grep -q 'incoming migration failed' "$D_ERR"; then
		t_fail "$c" "destination exit $rc (expected 1, no guest run): $(tail_of "$D_ERR")"
	else
		t_pass "$c"
		row_line "$c" "nowhere (killed with its source); destination: $(grep -a 'incoming migration' "$D_ERR" | tail -n 1 | cut -c1-140)"
	fi
}

# trickle_case ROW EXPECT MAX_MS [DESTINATION OPTIONS...]: a trickling peer, which never
# gets its stream's header across: the destination must drop it within MAX_MS saying
# EXPECT and wait on (a stray); with --incoming-timeout, exit 1 at that deadline saying
# EXPECT.
trickle_case() {
	local c=$1 expect=$2 max=$3 tp t1 t2 drc=running
	shift 3
	start_dst "$c.dst" "$@"
	trickle "$D_ADDR" &
	tp=$!
	t1=$(date +%s%3N)
	if [[ " $* " == *" --incoming-timeout "* ]]; then
		wait_exit "$D_PID" 30
		drc=$?
	else
		t_wait_for "$D_ERR" "was dropped: .*$expect" 30
	fi
	t2=$(date +%s%3N)
	kill_pid $tp
	if [ "$drc" = running ] && kill -0 "$D_PID" 2>/dev/null &&
		grep -q "was dropped: .*$expect" "$D_ERR" && [ $((t2 - t1)) -le "$max" ]; then
		t_pass "$c"
		row_line "$c" "destination dropped it after $((t2 - t1)) ms and waits on: $(grep -ao "$expect.*" "$D_ERR" | head -n 1 | cut -c1-150)"
	elif [ "$drc" = 1 ] && grep -q "$expect" "$D_ERR" && [ $((t2 - t1)) -le "$max" ]; then
		t_pass "$c"
		row_line "$c" "destination gave up after $((t2 - t1)) ms: $(grep -a "$expect" "$D_ERR" | head -n 1 | cut -c1-150)"
	else
		t_fail "$c" "a peer sending a stream a byte every 0.5 s, destination $*: $drc after $((t2 - t1)) ms (expected within $max ms, \"$expect\"): $(tail_of "$D_ERR")"
	fi
	kill_pid "$D_PID"
}

# The source survived (it never sent COMMIT, or got ERROR): it resumed by itself.
src_resumed() {
	local c=$1 expect=$2 rc
	wait_exit "$MPID" 30
	rc=$?
	if [ $rc -ne 1 ] || ! grep -q "$expect" "$MIG" || ! grep -q 'keeps running here' "$MIG"; then
		t_fail "$c" "migrate exit $rc (expected 1, \"$expect\", \"keeps running here\"): $(tail_of "$MIG")"
		return
	fi
	runs_here "$c" "$S_PID" "$S_SOCK" "$S_OUT"
	row_line "$c" "source resumed by itself: $(tail -n 1 "$MIG" | cut -c1-160)"
}

# The source in doubt after COMMIT went: paused, says so, does not resume by itself.
src_in_doubt() {
	local c=$1 rc
	wait_exit "$MPID" 30
	rc=$?
	if [ $rc -ne 1 ] || ! grep -q 'in doubt' "$MIG" || [ "$(status "$S_SOCK")" != in-doubt ]; then
		t_fail "$c" "the source is not in doubt (migrate exit $rc, status '$(status "$S_SOCK")'): $(tail_of "$MIG")"
		return 1
	fi
	if ! paused "$S_SOCK" "$S_OUT"; then
		t_fail "$c" "the in-doubt source runs the guest"
		return 1
	fi
	return 0
}

# The source killed after COMMIT: the destination that got it runs the VM.
dst_runs() {
	local c=$1
	if [ "$(status "$D_SOCK")" != incoming ]; then
		t_fail "$c" "the destination that got COMMIT does not run the VM: status '$(status "$D_SOCK")'; $(tail_of "$D_ERR")"
		return
	fi
	runs_here "$c" "$D_PID" "$D_SOCK" "$D_OUT"
	row_line "$c" "destination (it had COMMIT); nothing to resolve"
}

# The destination killed before COMMIT reached it: the source, in doubt, is resumed by the
# operator; a second resume is refused.
src_in_doubt_then_resume() {
	local c=$1
	src_in_doubt "$c" || return
	if ! resolve "$S_SOCK" resume; then
		t_fail "$c" "migrate-resolve --resume on the source: $RESOLVED"
		return
	fi
	runs_here "$c" "$S_PID" "$S_SOCK" "$S_OUT"
	second_resume "$c-second-resume" "$S_SOCK"
	row_line "$c" "source in doubt, resumed there by the operator"
}

# The destination ran the VM and died with it: the source must not resume a stale copy by
# itself; the operator discards it (exit 6).
src_in_doubt_then_discard() {
	local c=$1
	src_in_doubt "$c" || return
	if resolve "$S_SOCK" discard && wait_exit "$S_PID" 10; [ $? -eq 6 ]; then
		t_pass "$c"
		row_line "$c" "nowhere (the destination died running it); source in doubt, discarded (exit 6)"
	else
		t_fail "$c" "migrate-resolve --discard did not end the source with status 6: $RESOLVED"
	fi
}

# kill_row ROW KILLED OUTCOME [EXPECT] -- MODE ARG [MIGRATE OPTIONS...]: hold the migration
# where the proxy's MODE ARG says (hold_at), SIGKILL the source or the destination (KILLED),
# then check the OUTCOME (a function: ROW's test name, EXPECT).
kill_row() {
	local row=$1 c=$N-$T-$1 killed=$2 outcome=$3 expect=
	shift 3
	[ "$1" != -- ] && { expect=$1; shift; }
	shift
	want "$row" || return 0
	if hold_at "$c" "$@"; then
		if [ "$killed" = src ]; then kill_vm "$S_PID"; else kill_vm "$D_PID"; fi
		"$outcome" "$c" "$expect"
	else
		t_fail "$c" "$WHY"
	fi
	settle
}

matrix() {
	local c
	local pre=(hold-bytes $((16 << 20)) --max-bandwidth 64M)

	# ---- the source or the destination killed ----------------------------------------
	#        row                    killed outcome (expected message)        held at
	kill_row kill-src-setup         src dst_discards                      -- hold accept
	kill_row kill-src-precopy       src dst_discards                      -- "${pre[@]}"
	kill_row kill-src-stopcopy      src dst_in_doubt_then_resume          -- hold ready
	kill_row kill-src-after-ready   src dst_in_doubt_then_resume          -- hold commit
	kill_row kill-src-after-commit  src dst_runs                          -- hold done
	kill_row kill-dst-setup         dst src_resumed 'closed the connection before accepting' -- hold accept
	kill_row kill-dst-precopy       dst src_resumed 'sending memory'      -- "${pre[@]}"
	kill_row kill-dst-stopcopy      dst src_resumed 'no READY from the destination' -- hold ready
	kill_row kill-dst-after-ready   dst src_in_doubt_then_resume          -- hold commit
	kill_row kill-dst-after-commit  dst src_in_doubt_then_discard         -- hold done

	# ---- lost and refused messages ---------------------------------------------------
	c=$N-$T-done-lost
	if want done-lost; then
		hold_at "$c" drop done
		if grep -q '^dropped done' "$P_OUT" && src_in_doubt "$c"; then
			runs_here "$c-destination-runs" "$D_PID" "$D_SOCK" "$D_OUT"
			if resolve "$S_SOCK" discard && wait_exit "$S_PID" 10; [ $? -eq 6 ]; then
				t_pass "$c"
				row_line "$c" "destination runs; source in doubt, discarded (exit 6)"
			else
				t_fail "$c" "migrate-resolve --discard on the source: $RESOLVED"
			fi
		elif ! grep -q '^dropped done' "$P_OUT"; then
			t_fail "$c" "the proxy never dropped DONE: $(tr '\n' ' ' <"$P_OUT"); $(tail_of "$MIG")"
		fi
		settle
	fi
	c=$N-$T-error-at-commit
	if want error-at-commit; then
		# A shared disk that a third process locks while COMMIT is held: the destination
		# cannot lock it, answers ERROR; the source takes the disk and the VM back.
		local img=$T_TMP/$c.img lk=$T_TMP/$c.lock
		truncate -s 16M "$img"
		SRC_OPTS="--disk $img" DST_OPTS="--disk $img"
		if hold_at "$c" hold commit; then
			python3 -c '
import fcntl, os, sys, time
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
t = time.monotonic() + 30
while not os.path.exists(sys.argv[2]) and time.monotonic() < t:
    time.sleep(0.02)
' "$img" "$lk.go" >"$lk" 2>&1 &
			lpid=$!
			t_wait_for "$lk" '^locked' 10
			kill -USR1 "$(pgrep -P "$P_PID" | head -n 1)"
			t_wait_for "$P_OUT" '^passed 4' 20
			: >"$lk.go"
			wait "$lpid" 2>/dev/null
			wait_exit "$D_PID" 20
			drc=$?
			wait_exit "$MPID" 20
			rc=$?
			if [ $drc -ne 1 ] || ! grep -q 'cannot lock the disks' "$D_ERR"; then
				t_fail "$c" "destination exit $drc (expected 1, cannot lock the disks): $(tail_of "$D_ERR")"
			elif [ $rc -ne 1 ] || ! grep -q 'could not start the VM' "$MIG"; then
				t_fail "$c" "migrate exit $rc (expected 1, could not start the VM): $(tail_of "$MIG")"
			else
				runs_here "$c" "$S_PID" "$S_SOCK" "$S_OUT"
				row_line "$c" "source (took the disk back): $(tail -n 1 "$MIG" | cut -c1-150)"
			fi
		else
			t_fail "$c" "$WHY"
		fi
		SRC_OPTS= DST_OPTS=
		settle
	fi
	c=$N-$T-cancel-after-ready
	if want cancel-after-ready; then
		if hold_at "$c" hold ready; then
			out=$("$GODWIT" migrate-cancel --api "$S_SOCK" 2>&1)
			crc=$?
			wait_exit "$D_PID" 20
			drc=$?
			wait_exit "$MPID" 20
			rc=$?
			if [ $crc -ne 0 ] || [ $rc -ne 1 ] || ! grep -q cancelled "$MIG"; then
				t_fail "$c" "migrate-cancel exit $crc ($out), migrate exit $rc: $(tail_of "$MIG")"
			elif [ $drc -ne 1 ] || ! grep -q 'the source aborted: cancelled' "$D_ERR" ||
				grep -q 'in doubt' "$D_ERR"; then
				t_fail "$c" "the destination did not discard the VM on ABORT (exit $drc): $(tail_of "$D_ERR")"
			else
				runs_here "$c" "$S_PID" "$S_SOCK" "$S_OUT"
				row_line "$c" "source; destination discarded on ABORT, not in doubt"
			fi
		else
			t_fail "$c" "$WHY"
		fi
		settle
	fi

	# ---- peers that trickle ----------------------------------------------------------
	c=$N-$T-trickle
	if want trickle && [ "$T" != tls ]; then
		trickle_case "$c" 'too slow: the peer sent' 20000
		trickle_case "$c-deadline" 'no migration came within the deadline of 3 s' 8000 \
			--incoming-timeout 3 --incoming-min-rate 0
		settle
		# A destination that accepts the VM, then takes the stream at 8 KiB/s.
		c=$N-$T-slow-destination
		if start_src "$c.src"; then
			D_ADDR=$(mig_addr "$c.slow")
			slow_destination "$D_ADDR" >"$T_TMP/$c.slow" 2>&1 &
			P_PID=$!
			t_wait_for "$T_TMP/$c.slow" '^listening' 10
			t1=$(date +%s%3N)
			timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" >"$T_TMP/$c.mig" 2>&1
			rc=$?
			t2=$(date +%s%3N)
			if [ $rc -ne 1 ] || ! grep -q 'too slow: the peer took' "$T_TMP/$c.mig" ||
				! grep -q 'keeps running here' "$T_TMP/$c.mig"; then
				t_fail "$c" "migrate exit $rc after $((t2 - t1)) ms (expected 1, too slow, keeps running): $(tail_of "$T_TMP/$c.mig"); peer: $(tail_of "$T_TMP/$c.slow")"
			else
				runs_here "$c" "$S_PID" "$S_SOCK" "$S_OUT"
				row_line "$c" "source, after $((t2 - t1)) ms: $(tail -n 1 "$T_TMP/$c.mig" | cut -c1-150)"
			fi
		else
			t_fail "$c" "the source did not start: $(tail_of "$S_ERR")"
		fi
		settle
	fi
}

for T in ${MATRIX_TRANSPORTS:-unix tcp tls}; do
	MIG_TRANSPORT=$T
	matrix
done
bad=$(sanitizer "$T_TMP"/*.err)
if [ -n "$bad" ]; then
	t_fail $N-sanitizer "$bad"
fi
echo "# total $(($(date +%s%3N) - T0)) ms"
