#!/bin/bash
# Tier 1: the control API on a UNIX socket: status, pause/resume (the guest's
# stall report must show the gap), a busy socket refused, shutdown → status 0.
. "$(dirname "$0")/../lib.sh"

t_need_kvm api || exit 0
[ -f "$GUEST_ELF" ] || { t_fail api "test guest $GUEST_ELF not built"; exit 0; }
S=$T_TMP/api.sock
log=$T_TMP/vm.log
timeout 120 "$GODWIT" run --kernel "$GUEST_ELF" --name api-test --mem 256M \
	--cmdline "workload=mem mem=64 rate=20 report=250" --api "$S" </dev/null >"$log" 2>&1 &
vm_pid=$!
if ! t_wait_for "$log" '^memtest: t=' 20; then
	t_fail api-boot "no memtest report: $(tail -c 400 "$log")"; exit 0
fi
t_pass api-boot

# Socket permissions.
mode=$(stat -c %a "$S")
[ "$mode" = 600 ] && t_pass api-socket-mode || t_fail api-socket-mode "socket mode $mode, expected 600"

# status through the CLI and through curl.
st=$("$GODWIT" status --api "$S" --json 2>&1)
if jq -e '.state == "running" and .name == "api-test" and .vcpus == 1 and
	.memory_bytes == 268435456' <<<"$st" >/dev/null 2>&1; then
	t_pass api-status
else
	t_fail api-status "unexpected status: $st"
fi
if command -v curl >/dev/null; then
	c=$(curl -s --max-time 5 --unix-socket "$S" http://localhost/api/v1/vm)
	jq -e '.uuid | test("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")' <<<"$c" >/dev/null 2>&1 &&
		t_pass api-curl || t_fail api-curl "curl got: $c"
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket "$S" http://localhost/api/v1/nope)
	[ "$code" = 404 ] && t_pass api-404 || t_fail api-404 "GET /api/v1/nope gave $code"
fi

# A second VM may not take the socket.
out=$(timeout 20 "$GODWIT" run --kernel "$GUEST_ELF" --api "$S" </dev/null 2>&1); rc=$?
if [ "$rc" -eq 1 ] && grep -qi 'in use' <<<"$out"; then t_pass api-socket-busy
else t_fail api-socket-busy "status $rc: $out"; fi
[ -S "$S" ] && t_pass api-socket-survives || t_fail api-socket-survives "the busy check removed the socket"

# Pause for 1.5 s: no report while paused, then a stall of >= 1.4 s reported.
if "$GODWIT" pause --api "$S" >/dev/null 2>"$T_TMP/pause.err"; then
	n0=$(grep -c '^memtest: t=' "$log")
	st=$("$GODWIT" status --api "$S" --json)
	sleep 1.5
	n1=$(grep -c '^memtest: t=' "$log")
	out=$("$GODWIT" pause --api "$S" 2>&1); prc=$?
	"$GODWIT" resume --api "$S" >/dev/null 2>"$T_TMP/resume.err"; rrc=$?
	if [ "$(jq -r .state <<<"$st" 2>/dev/null)" != paused ]; then
		t_fail api-pause "status while paused: $st"
	elif [ "$n1" -ne "$n0" ]; then
		t_fail api-pause "guest kept reporting while paused ($n0 -> $n1)"
	else
		t_pass api-pause
	fi
	[ "$prc" -eq 1 ] && grep -qi 'already paused' <<<"$out" && t_pass api-pause-twice ||
		t_fail api-pause-twice "second pause: status $prc: $out"
	if [ "$rrc" -ne 0 ]; then
		t_fail api-resume "resume failed: $(cat "$T_TMP/resume.err")"
	elif ! t_wait_for "$log" 'max_stall_ms=(1[4-9][0-9][0-9]|[2-9][0-9][0-9][0-9])\.' 10; then
		t_fail api-resume "no stall >= 1400 ms reported after a 1.5 s pause: $(grep '^memtest' "$log" | tail -3)"
	else
		t_pass api-resume
	fi
else
	t_fail api-pause "pause failed: $(cat "$T_TMP/pause.err")"
fi
out=$("$GODWIT" resume --api "$S" 2>&1); rc=$?
[ "$rc" -eq 1 ] && t_pass api-resume-running || t_fail api-resume-running "resume of a running VM: status $rc: $out"

# The workload is still intact after the pause.
if grep -q 'memtest: ERROR' "$log"; then t_fail api-integrity "$(grep -m3 'memtest: ERROR' "$log")"
else t_pass api-integrity; fi

# Shutdown: godwit exits 0 and removes its socket.
"$GODWIT" shutdown --api "$S" >/dev/null 2>"$T_TMP/shutdown.err"
wait "$vm_pid"; rc=$?
if [ "$rc" -ne 0 ]; then t_fail api-shutdown "godwit exited $rc: $(tail -c 300 "$log")"
elif [ -e "$S" ]; then t_fail api-shutdown "socket left behind"
else t_pass api-shutdown; fi

out=$("$GODWIT" status --api "$S" 2>&1); rc=$?
[ "$rc" -eq 1 ] && grep -q 'cannot connect' <<<"$out" && t_pass api-client-no-server ||
	t_fail api-client-no-server "status $rc: $out"
