#!/bin/bash
# Tier 1: live migration under faults (docs/migration.md).  Each case starts
# a fresh source VM (test guest, 1 vCPU, --mem 256M, workload=mem mem=64
# rate=20 report=200), breaks a migration of it, then checks that the source
# godwit still runs, `godwit status` says running, the guest keeps printing
# memtest lines with errors=0 and no "memtest: ERROR", and that a second
# migration to a fresh destination succeeds (migrate exit 0, source exit 6,
# the guest goes on at the destination with errors=0).  The faults:
#   1  kill -9 of the destination during a bandwidth-limited pre-copy;
#      1b the link cut after 8 MiB (migproxy.py cut-bytes)
#   2  the destination's READY held back by the proxy and the destination
#      killed: the source, paused in stop-and-copy, must time out (10 s)
#      and resume by itself
#   3  READY dropped and the link closed: the source resumes, the
#      destination does not run the VM (in doubt: discarded, exits 6)
#   4  a destination given --cpus 2 / --mem 512M: refused (exit 1)
#   5  migrate-cancel during a bandwidth-limited pre-copy
#   6  COMMIT dropped and the link closed: both sides in doubt and paused;
#      resolve the destination --resume and the source --discard
#   7  bad --to (exit 2), nothing listening, a peer that is not godwit,
#      a destination fed garbage (dropped as a stray: it waits on) and one
#      fed a truncated or damaged stream (exit 1)
# plus: a VM that arrived by migration migrates on (onward).
# The proxy (tests/kvm/migproxy.py) sits between source and destination.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=migrate-faults
t_need_guest $N || exit 0
T0=$(date +%s%3N)

# migrate_ok CASE: the VM at S_* migrates to a fresh destination (exit 0, the source
# exits 6, the guest goes on there with errors=0).  The destination becomes S_* (WHY).
migrate_ok() {
	local c=$1 rc src_rc
	WHY=
	if ! start_dst "$c.ok"; then
		WHY="the destination did not start: $(tail -c 300 "$D_ERR")"
		return 1
	fi
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" >"$T_TMP/$c.ok.mig" 2>&1
	rc=$?
	wait_exit "$S_PID" 15
	src_rc=$?
	if [ $rc -ne 0 ] || [ $src_rc -ne 6 ]; then
		WHY="migrate exit $rc, source exit $src_rc (expected 0, 6): $(tail -c 300 "$T_TMP/$c.ok.mig") dst: $(tail -c 200 "$D_ERR")"
		kill_pid "$D_PID"
		return 1
	fi
	S_PID=$D_PID S_SOCK=$D_SOCK S_OUT=$D_OUT S_ERR=$D_ERR
	if ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
		WHY="after the migration, at the destination: $WHY"
		return 1
	fi
	OK_REPORT=$(head -n 1 "$T_TMP/$c.ok.mig")
	return 0
}
# after_fault CASE: the source survived the fault, and migrates fine afterwards.
after_fault() {
	if ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
		t_fail "$N-$1-source-runs" "$WHY"
	else
		t_pass "$N-$1-source-runs"
		if migrate_ok "$1"; then
			t_pass "$N-$1-migrate-after"
		else
			t_fail "$N-$1-migrate-after" "$WHY"
		fi
	fi
	end_vm
}
# ---- 1: kill -9 of the destination during pre-copy ------------------------------------------
if ! start_src c1.src; then
	t_fail $N "the source VM did not start: $(tail -c 400 "$S_ERR")"
	exit 0
fi
start_dst c1.dst
timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" --max-bandwidth 10M \
	>"$T_TMP/c1.mig" 2>&1 &
mpid=$!
bytes=0
for ((i = 0; i < 100; i++)); do
	js=$(mstat "$S_SOCK")
	bytes=$(jfield "$js" bytes)
	[ "$(jfield "$js" status)" = active ] && [ "${bytes:-0}" -ge $((4 << 20)) ] && break
	sleep 0.1
done
gp=$(godwit_pid "$D_PID")
kill -9 "$gp" 2>/dev/null
t1=$(now_ms)
wait_exit $mpid 20
rc=$?
t2=$(now_ms)
wait_exit "$D_PID" 5 >/dev/null
if [ $rc -ne 1 ] || ! grep -q 'keeps running here' "$T_TMP/c1.mig"; then
	t_fail $N-kill-dst-precopy "migrate exit $rc (expected 1) after killing the destination at ${bytes:-?} bytes: $(cat "$T_TMP/c1.mig")"
else
	t_pass $N-kill-dst-precopy
	echo "# 1: destination killed at $((bytes >> 20)) MiB sent; migrate ended $((t2 - t1)) ms later: $(tail -n 1 "$T_TMP/c1.mig")"
fi
after_fault kill-dst-precopy

# ---- 1b: the link cut after 8 MiB -------------------------------------------------------------
start_src c1b.src
start_dst c1b.dst
start_proxy c1b cut-bytes $((8 << 20))
timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$P_ADDR" >"$T_TMP/c1b.mig" 2>&1
rc=$?
wait_exit "$D_PID" 15
drc=$?
wait_exit "$P_PID" 5 >/dev/null
if [ $rc -ne 1 ] || [ $drc -ne 1 ] || ! grep -q '^cut' "$P_OUT" ||
	! grep -q 'incoming migration failed' "$D_ERR"; then
	t_fail $N-cut-link "migrate exit $rc, destination exit $drc (expected 1, 1); proxy: $(tr '\n' ' ' <"$P_OUT"); migrate: $(cat "$T_TMP/c1b.mig"); dst: $(tail -c 300 "$D_ERR")"
else
	t_pass $N-cut-link
	echo "# 1b: $(tail -n 1 "$T_TMP/c1b.mig")"
	echo "#     dst: $(grep -a 'incoming migration' "$D_ERR" | tail -n 1)"
fi
after_fault cut-link

# ---- 2: READY held back, the destination killed: the source times out and resumes ----------------
start_src c2.src
start_dst c2.dst
start_proxy c2 hold-ready
timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$P_ADDR" >"$T_TMP/c2.mig" 2>&1 &
mpid=$!
if ! t_wait_for "$P_OUT" '^held' 20; then
	t_fail $N-stall-before-ready "the proxy never saw READY: $(tr '\n' ' ' <"$P_OUT"); $(cat "$T_TMP/c2.mig")"
	kill_pid $mpid
else
	th=$(now_ms)
	gp=$(godwit_pid "$D_PID")
	kill -9 "$gp" 2>/dev/null
	n0=$(reports "$S_OUT")
	sleep 1
	n1=$(reports "$S_OUT")
	st=$(jfield "$(mstat "$S_SOCK")" status)
	# The source must resume within its 10 s stall timeout (and some slack).
	resumed=
	for ((i = 0; i < 200; i++)); do
		if [ "$(reports "$S_OUT")" -gt "$n1" ]; then resumed=$(now_ms); break; fi
		sleep 0.1
	done
	wait_exit $mpid 10
	rc=$?
	tm=$(now_ms)
	wait_exit "$D_PID" 5 >/dev/null
	if [ "$n1" -ne "$n0" ] || [ "$st" != stop-and-copy ]; then
		t_fail $N-stall-before-ready "while READY was held the source was not paused in stop-and-copy: status '$st', $n0 -> $n1 memtest lines"
	elif [ -z "$resumed" ] || [ $rc -ne 1 ] || ! grep -q 'keeps running here' "$T_TMP/c2.mig"; then
		t_fail $N-stall-before-ready "the source did not resume by itself within 20 s (migrate exit $rc): $(cat "$T_TMP/c2.mig")"
	elif [ $((resumed - th)) -gt 15000 ]; then
		t_fail $N-stall-before-ready "the source resumed only $((resumed - th)) ms after READY was held (stall timeout 10 s)"
	else
		t_pass $N-stall-before-ready
		echo "# 2: source resumed $((resumed - th)) ms after READY was held (migrate ended after $((tm - th)) ms): $(tail -n 1 "$T_TMP/c2.mig")"
		echo "#    guest, before and after: $(grep -a '^memtest: t=' "$S_OUT" | sed -n "${n1}p;$((n1 + 1))p" | tr '\n' ' ')"
	fi
fi
wait_exit "$P_PID" 5 >/dev/null
after_fault stall-before-ready

# ---- 3: READY dropped, link closed: the source resumes, the destination does not run ----------
start_src c3.src
start_dst c3.dst
start_proxy c3 drop-ready
timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$P_ADDR" >"$T_TMP/c3.mig" 2>&1
rc=$?
wait_exit "$P_PID" 5 >/dev/null
if [ $rc -ne 1 ] || ! grep -q '^dropped-ready' "$P_OUT" || ! grep -q 'keeps running here' "$T_TMP/c3.mig"; then
	t_fail $N-drop-ready "migrate exit $rc (expected 1); proxy: $(tr '\n' ' ' <"$P_OUT"); $(cat "$T_TMP/c3.mig")"
else
	t_pass $N-drop-ready
	echo "# 3: $(tail -n 1 "$T_TMP/c3.mig")"
fi
# The destination sent READY and got no COMMIT: in doubt, paused (or it discarded the VM).
sleep 0.5
if kill -0 "$D_PID" 2>/dev/null; then
	st=$(jfield "$(mstat "$D_SOCK")" status)
	n0=$(reports "$D_OUT")
	if [ "$st" != in-doubt ] || [ "$n0" -ne 0 ]; then
		t_fail $N-drop-ready-dst "destination: migrate-status '$st' (expected in-doubt), $n0 memtest lines (expected 0)"
	else
		"$GODWIT" migrate-resolve --api "$D_SOCK" --discard >"$T_TMP/c3.res" 2>&1
		rrc=$?
		wait_exit "$D_PID" 10
		drc=$?
		if [ $rrc -ne 0 ] || [ $drc -ne 6 ] || [ "$(reports "$D_OUT")" -ne 0 ]; then
			t_fail $N-drop-ready-dst "migrate-resolve --discard exit $rrc, destination exit $drc (expected 0, 6): $(cat "$T_TMP/c3.res")"
		else
			t_pass $N-drop-ready-dst
			echo "# 3: destination was in doubt, never ran the guest; discarded, exit 6"
		fi
	fi
else
	wait "$D_PID"
	drc=$?
	if [ $drc -ne 1 ] || [ "$(reports "$D_OUT")" -ne 0 ]; then
		t_fail $N-drop-ready-dst "destination exit $drc, $(reports "$D_OUT") memtest lines: $(tail -c 300 "$D_ERR")"
	else
		t_pass $N-drop-ready-dst
	fi
fi
kill_pid "$D_PID"
after_fault drop-ready

# ---- 4: a destination whose options do not match: refused ------------------------------------------
start_src c4.src
ok=1
for opt in cpus mem; do
	case $opt in
	cpus) args=(--cpus 2) re='--cpus 2 differs' ;;
	mem) args=(--mem 512M) re='--mem 512 MiB differs' ;;
	esac
	start_dst "c4.$opt" "${args[@]}"
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" >"$T_TMP/c4.$opt.mig" 2>&1
	rc=$?
	wait_exit "$D_PID" 10
	drc=$?
	if [ $rc -ne 1 ] || [ $drc -ne 1 ] || ! grep -q -- "refused the VM: .*$re" "$T_TMP/c4.$opt.mig" ||
		! grep -q -- "incoming migration refused: $re" "$D_ERR"; then
		t_fail $N-refused-$opt "migrate exit $rc, destination exit $drc (expected 1, 1): $(cat "$T_TMP/c4.$opt.mig") dst: $(tail -c 300 "$D_ERR")"
		ok=0
	else
		t_pass $N-refused-$opt
		echo "# 4: $(tail -n 1 "$T_TMP/c4.$opt.mig")"
	fi
done
# Matching options are accepted.
if src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
	t_pass $N-refused-source-runs
	if ! start_dst c4.same --cpus 1 --mem 256M; then
		t_fail $N-refused-migrate-after "destination: $(tail -c 300 "$D_ERR")"
	else
		timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" >"$T_TMP/c4.same.mig" 2>&1
		rc=$?
		wait_exit "$S_PID" 15
		src_rc=$?
		S_PID=$D_PID S_SOCK=$D_SOCK S_OUT=$D_OUT S_ERR=$D_ERR
		if [ $rc -ne 0 ] || [ $src_rc -ne 6 ] || ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
			t_fail $N-refused-migrate-after "to a destination with --cpus 1 --mem 256M: migrate exit $rc, source exit $src_rc; $WHY $(cat "$T_TMP/c4.same.mig")"
		else
			t_pass $N-refused-migrate-after
		fi
	fi
else
	t_fail $N-refused-source-runs "$WHY"
fi
end_vm

# ---- 5: migrate-cancel during pre-copy -----------------------------------------------------------------
start_src c5.src
start_dst c5.dst
timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" --max-bandwidth 10M \
	>"$T_TMP/c5.mig" 2>&1 &
mpid=$!
for ((i = 0; i < 100; i++)); do
	js=$(mstat "$S_SOCK")
	bytes=$(jfield "$js" bytes)
	[ "$(jfield "$js" status)" = active ] && [ "${bytes:-0}" -ge $((2 << 20)) ] && break
	sleep 0.1
done
tc=$(now_ms)
"$GODWIT" migrate-cancel --api "$S_SOCK" >"$T_TMP/c5.cancel" 2>&1
crc=$?
tc2=$(now_ms)
wait_exit $mpid 15
rc=$?
wait_exit "$D_PID" 15
drc=$?
st=$(jfield "$(mstat "$S_SOCK")" status)
if [ $crc -ne 0 ] || [ $rc -ne 1 ] || ! grep -q 'cancelled' "$T_TMP/c5.mig" ||
	[ $drc -eq 0 ] || [ $drc -eq 124 ] || [ "$st" != cancelled ]; then
	t_fail $N-cancel "migrate-cancel exit $crc, migrate exit $rc, destination exit $drc, status '$st' (expected 0, 1, non-zero, cancelled): $(cat "$T_TMP/c5.cancel" "$T_TMP/c5.mig") dst: $(tail -c 200 "$D_ERR")"
else
	t_pass $N-cancel
	echo "# 5: cancelled at $((bytes >> 20)) MiB in $((tc2 - tc)) ms; destination exit $drc: $(tail -n 1 "$T_TMP/c5.mig")"
fi
after_fault cancel

# ---- 6: COMMIT dropped: in doubt on both sides, resolved by hand ------------------------------------
start_src c6.src
start_dst c6.dst
start_proxy c6 drop-commit
timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$P_ADDR" >"$T_TMP/c6.mig" 2>&1
rc=$?
wait_exit "$P_PID" 5 >/dev/null
sleep 0.3
sst=$(jfield "$(mstat "$S_SOCK")" status)
dst=$(jfield "$(mstat "$D_SOCK")" status)
ns0=$(reports "$S_OUT") nd0=$(reports "$D_OUT")
sleep 1
ns1=$(reports "$S_OUT") nd1=$(reports "$D_OUT")
if [ $rc -ne 1 ] || ! grep -q 'in doubt' "$T_TMP/c6.mig" || ! grep -q '^dropped-commit 47574d4305000000' "$P_OUT"; then
	t_fail $N-in-doubt "migrate exit $rc (expected 1, in doubt); proxy: $(tr '\n' ' ' <"$P_OUT"); $(cat "$T_TMP/c6.mig")"
elif [ "$sst" != in-doubt ] || [ "$dst" != in-doubt ]; then
	t_fail $N-in-doubt "migrate-status: source '$sst', destination '$dst' (expected in-doubt on both)"
elif [ "$ns1" -ne "$ns0" ] || [ "$nd1" -ne "$nd0" ] || [ "$nd0" -ne 0 ]; then
	t_fail $N-in-doubt "a side ran while in doubt: source $ns0 -> $ns1, destination $nd0 -> $nd1 memtest lines"
elif ! kill -0 "$S_PID" 2>/dev/null || ! kill -0 "$D_PID" 2>/dev/null; then
	t_fail $N-in-doubt "a godwit exited while in doubt"
else
	t_pass $N-in-doubt
	echo "# 6: $(tail -n 1 "$T_TMP/c6.mig")"
fi
# Resolve: the destination runs it, the source drops it.
"$GODWIT" migrate-resolve --api "$D_SOCK" --resume >"$T_TMP/c6.res.d" 2>&1
rrc=$?
if [ $rrc -ne 0 ] || ! wait_reports "$D_OUT" 2 10; then
	t_fail $N-in-doubt-resume "migrate-resolve --resume exit $rrc: $(cat "$T_TMP/c6.res.d"); $(reports "$D_OUT") memtest lines at the destination"
else
	g0=$(last_gen "$D_OUT")
	g1=$g0
	for ((i = 0; i < 80; i++)); do
		g1=$(last_gen "$D_OUT")
		[ "${g1:-0}" -gt "${g0:-0}" ] && break
		sleep 0.1
	done
	if [ -n "$(guest_errors "$D_OUT")" ] || [ "${g1:-0}" -le "${g0:-0}" ]; then
		t_fail $N-in-doubt-resume "at the destination: gen $g0 -> $g1 in 8 s; $(guest_errors "$D_OUT")"
	else
		t_pass $N-in-doubt-resume
		echo "# 6: destination resumed, gen $g0 -> $g1: $(grep -a '^memtest: t=.* max_stall_ms=' "$D_OUT" | tail -n 1)"
	fi
fi
"$GODWIT" migrate-resolve --api "$S_SOCK" --discard >"$T_TMP/c6.res.s" 2>&1
rrc=$?
wait_exit "$S_PID" 10
src_rc=$?
if [ $rrc -ne 0 ] || [ $src_rc -ne 6 ] || [ "$(reports "$S_OUT")" -ne "$ns1" ]; then
	t_fail $N-in-doubt-discard "migrate-resolve --discard exit $rrc, source exit $src_rc (expected 0, 6): $(cat "$T_TMP/c6.res.s")"
else
	t_pass $N-in-doubt-discard
fi
# The VM now lives at the destination: it can move on.
S_PID=$D_PID S_SOCK=$D_SOCK S_OUT=$D_OUT S_ERR=$D_ERR
if ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
	t_fail $N-in-doubt-runs "$WHY"
	end_vm
else
	t_pass $N-in-doubt-runs
	# ---- onward: a VM that came by migration migrates again -----------------------------
	if migrate_ok c6.onward; then
		t_pass $N-onward
		echo "# onward: $OK_REPORT"
	else
		t_fail $N-onward "the resumed destination could not migrate on: $WHY"
	fi
	end_vm
fi

# ---- 7: bad input -------------------------------------------------------------------------------------
start_src c7.src
# bad_to NAME EXPECTED_RC RE ADDR: migrate --to ADDR exits EXPECTED_RC with RE in its output.
bad_to() {
	local rc
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$4" >"$T_TMP/c7.$1" 2>&1
	rc=$?
	if [ $rc -ne "$2" ] || ! grep -qE -- "$3" "$T_TMP/c7.$1"; then
		t_fail "$N-$1" "migrate --to $4: exit $rc (expected $2): $(cat "$T_TMP/c7.$1")"
	elif ! kill -0 "$S_PID" 2>/dev/null || [ "$(jfield "$(mstat "$S_SOCK")" status)" = active ]; then
		t_fail "$N-$1" "the source is gone or still migrating"
	else
		t_pass "$N-$1"
	fi
}
bad_to bad-to-syntax 2 'expected tcp:HOST:PORT or unix:PATH' bogus
bad_to bad-to-port 2 'expected tcp:HOST:PORT or unix:PATH' tcp:127.0.0.1:70000
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bad_to nothing-listens 1 'cannot connect to .*Connection refused' "tcp:127.0.0.1:$port"
bad_to no-socket-file 1 'cannot connect to' "unix:$T_TMP/nothing.mig"
# peer MODE ADDR: a server that is not godwit (bounded: 15 s).
cat >"$T_TMP/peer.py" <<'EOF'
import os, socket, sys, time
mode, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(1); s.settimeout(15)
print('listening', flush=True)
c, _ = s.accept()
if mode == 'garbage':
    c.settimeout(1)
    try: c.recv(4096)
    except OSError: pass
    c.sendall(b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n' + os.urandom(4096))
    c.settimeout(15)
    t = time.monotonic() + 15
    try:
        while time.monotonic() < t and c.recv(1 << 16): pass
    except OSError: pass
c.close()
EOF
for mode in garbage close; do
	timeout 30 python3 "$T_TMP/peer.py" $mode "$T_TMP/peer.$mode" >"$T_TMP/peer.$mode.out" 2>&1 &
	ppid=$!
	t_wait_for "$T_TMP/peer.$mode.out" listening 10
	case $mode in
	garbage) bad_to peer-garbage 1 'not a godwit migration peer.*keeps running here' "unix:$T_TMP/peer.$mode" ;;
	close) bad_to peer-closes 1 '(closed the connection|Broken pipe|reset by peer).*keeps running here' "unix:$T_TMP/peer.$mode" ;;
	esac
	kill_pid $ppid
done
if src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
	t_pass $N-bad-to-source-runs
else
	t_fail $N-bad-to-source-runs "$WHY"
fi
# A stream of the running VM, to damage.
"$GODWIT" snapshot --api "$S_SOCK" --out "$T_TMP/c7.gws" --resume >"$T_TMP/c7.snap" 2>&1 ||
	t_fail $N-snapshot "$(cat "$T_TMP/c7.snap")"
end_vm
# feed NAME HOW: a destination gets bytes that are not a migration (bounded: 20 s).
cat >"$T_TMP/feed.py" <<'EOF'
import os, socket, sys, time
how, path, snap = sys.argv[1], sys.argv[2], sys.argv[3]
if how == 'random':
    data = os.urandom(1 << 16)
elif how == 'ascii':
    data = b'GET / HTTP/1.1\r\nHost: x\r\n\r\n'
else:
    data = bytearray(open(snap, 'rb').read())
    if how == 'truncated':
        data = data[:len(data) // 3]
    elif how == 'flipped':
        data[len(data) // 2] ^= 0x5a
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.settimeout(20)
got = b''
try:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    t = time.monotonic() + 20
    while time.monotonic() < t:
        b = s.recv(4096)
        if not b: break
        got += b
except OSError as e:
    print('feed:', e)
print('feed: sent %d bytes, got %d bytes back: %r' % (len(data), len(got), got[:80]))
EOF
for how in random ascii truncated flipped; do
	[ -s "$T_TMP/c7.gws" ] || [ $how = random ] || [ $how = ascii ] || continue
	start_dst "c7.feed.$how"
	timeout 30 python3 "$T_TMP/feed.py" $how "${D_ADDR#unix:}" "$T_TMP/c7.gws" >"$T_TMP/c7.feed.$how.py" 2>&1
	if [ $how = random ] || [ $how = ascii ]; then
		# Not a godwit stream at all: a stray, dropped; the destination waits on.
		if t_wait_for "$D_ERR" 'was dropped: stream header: bad magic' 10 && kill -0 "$D_PID" 2>/dev/null &&
			t_wait_for "$D_ERR" 'still waiting for the source' 1; then
			t_pass "$N-incoming-$how"
			echo "# 7: $how: $(grep -a 'was dropped' "$D_ERR" | tail -n 1 | cut -c 1-200)"
		else
			t_fail "$N-incoming-$how" "the stray was not dropped, or the destination left: $(tail -c 400 "$D_ERR"); feeder: $(cat "$T_TMP/c7.feed.$how.py")"
		fi
		kill_pid "$D_PID"
		continue
	fi
	wait_exit "$D_PID" 20
	drc=$?
	if [ $drc -ne 1 ] || ! grep -qE 'incoming migration (refused|failed): .+' "$D_ERR" ||
		grep -q 'Sanitizer\|runtime error' "$D_ERR"; then
		t_fail "$N-incoming-$how" "destination exit $drc (expected 1): $(tail -c 400 "$D_ERR"); feeder: $(cat "$T_TMP/c7.feed.$how.py")"
	else
		t_pass "$N-incoming-$how"
		echo "# 7: $how: $(grep -aE 'incoming migration (refused|failed)' "$D_ERR" | tail -n 1 | cut -c 1-200)"
	fi
done

# ---- every godwit's stderr: no sanitizer report -----------------------------------------------------------
san=$(grep -l 'Sanitizer\|runtime error:' "$T_TMP"/*.err 2>/dev/null)
if [ -n "$san" ]; then
	t_fail $N-sanitizers "$(for f in $san; do echo "$(basename "$f"): $(grep -m 2 'Sanitizer\|runtime error:' "$f")"; done)"
else
	t_pass $N-sanitizers
fi
echo "# total $(($(now_ms) - T0)) ms"
exit 0
