#!/bin/bash
# Tier 1: the control API on a UNIX socket: status, pause/resume (the guest's
# stall report must show the gap), a busy socket refused, shutdown → status 0;
# GET /metrics (format checked by tests/kvm/promcheck.py): the VM's state and
# size, vCPU exits moving, and a second VM's virtio-blk and virtio-rng counters
# against what its guest reports having done.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-prom.sh"

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

# GET /metrics twice, half a second apart: the guest reports on the serial port meanwhile.
if ! prom_scrape "$S" "$T_TMP/m1.json"; then
	t_fail api-metrics "$PROM_ERR"
else
	sleep 0.5
	if ! prom_scrape "$S" "$T_TMP/m2.json"; then
		t_fail api-metrics "second scrape: $PROM_ERR"
	else
		io1=$(prom_val "$T_TMP/m1.json" godwit_vcpu_exits_total vcpu=0 reason=io)
		io2=$(prom_val "$T_TMP/m2.json" godwit_vcpu_exits_total vcpu=0 reason=io)
		up1=$(prom_val "$T_TMP/m1.json" godwit_vm_uptime_seconds)
		up2=$(prom_val "$T_TMP/m2.json" godwit_vm_uptime_seconds)
		got="running=$(prom_val "$T_TMP/m2.json" godwit_vm_state state=running)"
		got+=" paused=$(prom_val "$T_TMP/m2.json" godwit_vm_state state=paused)"
		got+=" mem=$(prom_val "$T_TMP/m2.json" godwit_vm_memory_bytes)"
		got+=" vcpus=$(prom_val "$T_TMP/m2.json" godwit_vm_vcpus)"
		got+=" name=$(prom_has "$T_TMP/m2.json" godwit_vm_info name=api-test && echo api-test)"
		got+=" migration=$(prom_val "$T_TMP/m2.json" godwit_migration_status status=none)"
		if [ "$got" != "running=1 paused=0 mem=268435456 vcpus=1 name=api-test migration=1" ]; then
			t_fail api-metrics "$got"
		elif ! [ "$io1" -gt 0 ] 2>/dev/null || ! [ "$io2" -gt "$io1" ]; then
			t_fail api-metrics "io exits did not move: $io1 -> $io2"
		elif ! jq -en "$up2 - $up1 >= 0.4 and $up1 > 0" >/dev/null; then
			t_fail api-metrics "uptime $up1 -> $up2 over 0.5 s"
		else
			t_pass api-metrics
		fi
	fi
fi
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X PUT --unix-socket "$S" \
	http://localhost/metrics)
[ "$code" = 405 ] && t_pass api-metrics-put || t_fail api-metrics-put "PUT /metrics gave $code"

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
	prom_scrape "$S" "$T_TMP/mp.json" &&
		[ "$(prom_val "$T_TMP/mp.json" godwit_vm_state state=paused)" = 1 ] &&
		[ "$(prom_val "$T_TMP/mp.json" godwit_vm_state)" = 1 ] && t_pass api-metrics-paused ||
		t_fail api-metrics-paused "${PROM_ERR:-$(grep godwit_vm_state "$T_TMP/mp.json.txt")}"
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

# virtio-blk and virtio-rng counters: the guest writes and verifies 8 MiB generations and
# reads 64 KiB of random bytes (4 KiB requests, up to 8 more in flight when it stops).  A request is counted before the guest sees it answered,
# so the bytes written at a scrape are at least what a report printed before it says.
img=$T_TMP/metrics.img
truncate -s 32M "$img"
S2=$T_TMP/api2.sock
log2=$T_TMP/vm2.log
timeout 60 "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --disk "$img" --rng --api "$S2" \
	--cmdline "workload=disk+rng disk_mib=8 rng_kib=64 report=100" </dev/null >"$log2" 2>&1 &
vm2=$!
if ! t_wait_for "$log2" '^rng: bytes=' 20 || ! t_wait_for "$log2" '^disk: t=' 20; then
	t_fail api-metrics-devices "no disk or rng report: $(tail -c 300 "$log2")"
elif ! prom_scrape "$S2" "$T_TMP/d1.json"; then
	t_fail api-metrics-devices "$PROM_ERR"
else
	sleep 0.3
	wrote=$(t_complete "$log2" | grep '^disk: t=' | tail -n 1)
	wrote=$(t_field "$wrote" written_mib)
	if ! prom_scrape "$S2" "$T_TMP/d2.json"; then
		t_fail api-metrics-devices "second scrape: $PROM_ERR"
	else
		w1=$(prom_val "$T_TMP/d1.json" godwit_blk_bytes_total op=write path="$img")
		w2=$(prom_val "$T_TMP/d2.json" godwit_blk_bytes_total op=write path="$img")
		r2=$(prom_val "$T_TMP/d2.json" godwit_blk_bytes_total op=read)
		wr2=$(prom_val "$T_TMP/d2.json" godwit_blk_requests_total op=write)
		fl2=$(prom_val "$T_TMP/d2.json" godwit_blk_requests_total op=flush)
		err2=$(prom_val "$T_TMP/d2.json" godwit_blk_errors_total)
		rng=$(prom_val "$T_TMP/d2.json" godwit_rng_bytes_total)
		rngq=$(prom_val "$T_TMP/d2.json" godwit_rng_requests_total)
		if ! [ "$w2" -gt "$w1" ] 2>/dev/null; then
			t_fail api-metrics-devices "blk write bytes did not move: $w1 -> $w2"
		elif ! [ "$w2" -ge $((${wrote:-1} * 1048576)) ] || [ "${wrote:-0}" -lt 8 ]; then
			t_fail api-metrics-devices "blk write bytes $w2 < the guest's written_mib=$wrote"
		elif ! [ "$r2" -gt 0 ] || ! [ "$wr2" -ge $((w2 / 1048576)) ] || ! [ "$fl2" -gt 0 ] ||
			[ "$err2" != 0 ]; then
			t_fail api-metrics-devices "read bytes $r2, write requests $wr2, flushes $fl2, errors $err2"
		elif ! [ "$rng" -ge 65536 ] || [ "$rng" -gt $((65536 + 8 * 4096)) ] ||
			[ "$rng" -ne $((rngq * 4096)) ]; then
			# The guest keeps eight 4 KiB buffers in flight until it has 64 KiB.
			t_fail api-metrics-devices "rng bytes $rng in $rngq requests (the guest read 65536)"
		else
			t_pass api-metrics-devices
		fi
	fi
fi
"$GODWIT" shutdown --api "$S2" >/dev/null 2>&1
wait "$vm2"
