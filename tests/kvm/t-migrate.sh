#!/bin/bash
# Tier 1: live migration (docs/migration.md) between two godwit processes on
# this host, with the test guest's memory-integrity workload running.  Each
# migration: `godwit migrate --json` exits 0 with status completed and
# plausible figures (downtime_ms, bytes, pages, zero_pages > 0, rounds >= 1),
# the source godwit exits 6, and the destination's console goes on with the
# guest's memtest lines: errors=0, no ERROR/EXCEPTION/boot line, t= and gen
# never going back, then at least one full verification pass over every page
# on the destination (verified grows by >= pages x CPUs) and, when the guest
# rewrites memory, a new generation (gen + 1).
#
#   migrate-idle-tcp  rate=0 over tcp:127.0.0.1:PORT
#   migrate-50/-200   mem=128 at 50 and 200 MiB/s over unix: (200 may end
#                     without converging under 50 ms: allowed, reported)
#   migrate-2cpu      --cpus 2, 50 MiB/s
#   migrate-dirty-log --cpus 2, 50 MiB/s, with KVM's dirty log instead of the dirty ring
#   migrate-vcpu-rates --cpus 2: vCPU 0 writes 100 MiB/s, vCPU 1 idles; the report's
#                     per-vCPU dirty rates (dirty ring) say so round by round
#   migrate-throttle  vCPU 0 dirties 200 MiB/s, vCPU 1 idles, --max-bandwidth 24M:
#                     it converges, vCPU 0 throttled, vCPU 1 not (dirty ring)
#   migrate-throttle-log  the same without the dirty ring: both vCPUs throttled
#   migrate-no-throttle   --no-throttle: no round throttled, no convergence
#   migrate-devices   mem+disk+net: a read-only disk (both sides hold a shared
#                     lock on the same image, filled beforehand by a writable
#                     run), the guest's read passes land in its memory through
#                     the device; a TAP per side on a bridge in a namespace of
#                     its own, with UDP echo traffic from the host during the
#                     migration, every echo compared; afterwards disk and net
#                     reports go on without errors
#   migrate-pingpong  A -> B -> A -> B, each destination a fresh godwit
#   migrate-progress  --max-bandwidth 20M, 256M guest: migrate-status shows
#                     status active, round >= 1, bytes growing; pause refused
#                     (exit 1, "migration")
#   migrate-metrics   GET /metrics on both sides once a migration (started over
#                     the API) completed: the figures of GET /vm/migration's
#                     report, the pause's phases adding up to the downtime, the
#                     destination's bytes received equal to the bytes sent
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"
. "$(dirname "$0")/lib-prom.sh"

NS=gwt-mig-$$
trap 't_netns_del "$NS"; t_cleanup' EXIT

t_need_guest migrate || exit 0
T0=$(date +%s.%N)
# MIGRATE_CASES="idle-tcp 50 ...": run only these cases (default: all).
want() { t_want MIGRATE_CASES "$1"; }

# stop_dst: shut the destination down.
stop_dst() {
	kill "$D_PID" 2>/dev/null
	wait "$D_PID" 2>/dev/null
}

# simple_case NAME tcp|unix CMDLINE NEED_VERIFIED RATE RUN_ARGS...: one migration.
simple_case() {
	local name=$1 tr=$2 addr port start
	shift 2
	local cmdline=$1 need=$2 rate=$3
	shift 3
	start=$(date +%s.%N)
	if [ "$tr" = tcp ]; then
		port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
		addr=tcp:127.0.0.1:$port
	else
		addr=unix:$T_TMP/$name.mig
	fi
	start_vm "$name.src" "$@" --cmdline "$cmdline"
	if ! wait_lines "$S_OUT" 3; then
		t_fail "$name" "the guest did not start: $(tail -c 300 "$S_ERR")"
		kill "$S_PID" 2>/dev/null
		return
	fi
	if ! D_AT="$addr" start_dst "$name.dst"; then
		t_fail "$name" "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill "$S_PID" "$D_PID" 2>/dev/null
		return
	fi
	# shellcheck disable=SC2086
	migrate "$name" "$addr" ${MIGRATE_ARGS:-}
	if check_all "$S_PID" "$need" "$rate"; then
		t_pass "$name"
	else
		t_fail "$name" "$WHY"
	fi
	report_line "$name"
	echo "#   destination: $D_LAST; case took $(elapsed "$start") s"
	kill "$S_PID" 2>/dev/null
	stop_dst
}

# ---- 1-3: one migration each ---------------------------------------------------------------
want idle-tcp && simple_case migrate-idle-tcp tcp 'workload=mem mem=32 rate=0 report=200' $((32 * 256)) 0 \
	--mem 128M --cpus 1
want 50 && simple_case migrate-50 unix 'workload=mem mem=128 rate=50 report=200' $((128 * 256)) 50 \
	--mem 256M --cpus 1
want 200 && simple_case migrate-200 unix 'workload=mem mem=128 rate=200 report=200' $((128 * 256)) 200 \
	--mem 256M --cpus 1
want 2cpu && simple_case migrate-2cpu unix 'workload=mem mem=128 rate=50 report=200' $((2 * 128 * 256)) 50 \
	--mem 256M --cpus 2
# The dirty log's bitmap, where KVM has no dirty ring (GODWIT_DIRTY_RING=off).
want dirty-log && GODWIT_DIRTY_RING=off simple_case migrate-dirty-log unix \
	'workload=mem mem=64 rate=50 report=200' $((2 * 64 * 256)) 50 --mem 256M --cpus 2
# Per-vCPU dirty rates (KVM's dirty ring): vCPU 0 rewrites memory at 100 MiB/s,
# vCPU 1 runs the rng workload (64 KiB once, then idle).
# (--max-bandwidth 48M: rounds long enough to measure a rate, whatever the load.)
want vcpu-rates && VCPU_RATES=1 MIGRATE_ARGS='--max-bandwidth 48M' simple_case migrate-vcpu-rates unix \
	'workload=mem+rng mem=64 rate=100 rng_kib=64 report=200' $((64 * 256)) 100 \
	--mem 256M --cpus 2 --rng

# ---- throttling: vCPU 0 dirties 32 MiB at 200 MiB/s, vCPU 1 idles, the link is 24 MiB/s -----
# throttle_case NAME MODE MIGRATE_ARGS...: MODE ring (per-vCPU: only vCPU 0 is
# slowed down, and it converges), log (GODWIT_DIRTY_RING=off: whole-VM, both
# vCPUs slowed down alike, and it converges) or off (--no-throttle: no round
# is throttled and it does not converge within the rounds given).
throttle_case() {
	local name=$1 mode=$2 start max
	shift 2
	start=$(date +%s.%N)
	if [ "$mode" = log ]; then
		export GODWIT_DIRTY_RING=off
	fi
	start_vm "$name.src" --mem 256M --cpus 2 --rng \
		--cmdline 'workload=mem+rng mem=32 rate=200 rng_kib=64 report=100'
	unset GODWIT_DIRTY_RING
	if ! wait_lines "$S_OUT" 3 || ! start_dst "$name.dst"; then
		t_fail "$name" "the guest or the destination did not start: $(tail -c 300 "$S_ERR" "$D_ERR")"
		kill "$S_PID" "$D_PID" 2>/dev/null
		return
	fi
	migrate "$name" "$D_ADDR" --max-bandwidth 24M "$@"
	if [ "$mode" = off ]; then
		WHY=
		[ "$MIG_RC" -eq 0 ] || WHY="godwit migrate exited $MIG_RC: $(tail -c 300 "$MIG_ERR")"
	elif ! check_report; then
		:
	else
		check_guest "$S_OUT" "$D_OUT" $((32 * 256)) 200
	fi
	if [ -z "$WHY" ] && ! WHY=$(python3 - "$MIG_JSON" "$mode" <<'PY'
import json, sys
r, mode = json.load(open(sys.argv[1])), sys.argv[2]
h = r.get("history") or []
thr = [e for e in h if e.get("throttle_budget_bps", 0) > 0]
def bad(why):
    print(why + ": " + json.dumps({k: r.get(k) for k in ("converged", "rounds", "throttle", "history")}))
    sys.exit(1)
if mode == "off":
    if r.get("throttle") is not False or thr or r.get("converged"):
        bad("--no-throttle: expected throttle false, no round throttled and no convergence")
    sys.exit(0)
if r.get("throttle") is not True or not r.get("converged"):
    bad("expected throttle true and convergence")
if not thr:
    bad("no round was throttled")
busy = max(e["vcpu_throttle_pct"][0] for e in thr)
idle = max(e["vcpu_throttle_pct"][1] for e in thr)
if busy < 20:
    bad("vCPU 0 was never throttled above 20 %")
if mode == "ring" and idle != 0:
    bad("per-vCPU throttling slowed down the idle vCPU 1 too")
if mode == "log" and idle < 20:
    bad("whole-VM throttling (no dirty ring) left vCPU 1 unthrottled")
print("throttled rounds %d of %d, vCPU 0 up to %.0f %%, vCPU 1 up to %.0f %%" % (len(thr), len(h), busy, idle))
PY
	); then
		t_fail "$name" "$WHY"
	else
		max=$(mt_lines "$S_OUT" | sed -n 's/.* stall_ms=\([0-9.]*\) .*/\1/p' | sort -n | tail -n 1)
		t_pass "$name"
		echo "# $name: $WHY; the guest's longest stall on the source (every 100 ms): $max ms"
	fi
	report_line "$name"
	echo "#   case took $(elapsed "$start") s"
	kill "$S_PID" 2>/dev/null
	stop_dst
}
want throttle && throttle_case migrate-throttle ring
want throttle-log && throttle_case migrate-throttle-log log
want no-throttle && throttle_case migrate-no-throttle off --no-throttle --max-rounds 3

# ---- 4: devices: a read-only disk shared by both sides, a TAP each on a bridge ---------------
devices_case() {
	local name=migrate-devices start img mac=02:00:5e:00:20:01 ip_guest=198.18.0.2 rc
	local dlast d1 dl nlast nl u0 u1 res
	start=$(date +%s.%N)
	img=$T_TMP/disk.img
	truncate -s 16M "$img"
	# Fill 8 MiB with the guest's block pattern: one writable pass (gen 1
	# written, read back and verified; gen=2 in a report).
	timeout 60 "$GODWIT" run --kernel "$GUEST_ELF" --mem 64M --cpus 1 --disk "$img" \
		--cmdline 'workload=disk disk_mib=8 report=100' </dev/null >"$T_TMP/fill.out" 2>"$T_TMP/fill.err" &
	local fpid=$!
	t_wait_for "$T_TMP/fill.out" '^disk: t=.* gen=([2-9]|[1-9][0-9]+) .* errors=0 ' 30
	rc=$?
	kill "$fpid" 2>/dev/null
	wait "$fpid" 2>/dev/null
	if [ $rc -ne 0 ]; then
		t_fail $name "could not fill the disk image: $(tail -c 300 "$T_TMP/fill.out") $(tail -c 200 "$T_TMP/fill.err")"
		return
	fi

	if ! ip netns add "$NS" 2>"$T_TMP/netns.err"; then
		t_fail $name "cannot create network namespace $NS: $(cat "$T_TMP/netns.err")"
		return
	fi
	ip -n "$NS" link set lo up &&
	ip -n "$NS" link add gwmbr type bridge &&
	ip -n "$NS" addr add 198.18.0.1/15 dev gwmbr &&
	ip -n "$NS" link set gwmbr up &&
	ip -n "$NS" tuntap add gwm0 mode tap &&
	ip -n "$NS" tuntap add gwm1 mode tap &&
	ip -n "$NS" link set gwm0 master gwmbr up &&
	ip -n "$NS" link set gwm1 master gwmbr up 2>"$T_TMP/netns.err"
	if [ $? -ne 0 ]; then
		t_fail $name "cannot set up the bridge in $NS: $(cat "$T_TMP/netns.err")"
		return
	fi
	PFX=(ip netns exec "$NS")
	start_vm $name.src --mem 128M --cpus 1 --disk "$img,readonly" --net "tap=gwm0,mac=$mac" \
		--cmdline "workload=mem+disk+net mem=32 rate=20 report=200 disk_mib=8 ip=$ip_guest"
	if ! wait_lines "$S_OUT" 3 '^disk: t=.* gen=[1-9]' '^net: t='; then
		t_fail $name "the guest's workloads did not start: $(tail -c 300 "$S_OUT" | tr '\n' '|') $(tail -c 300 "$S_ERR")"
		PFX=()
		return
	fi
	if ! grep -qa '^disk: found .* ro=1' "$S_OUT"; then
		t_fail $name "the guest does not see a read-only disk: $(grep -a '^disk: found' "$S_OUT")"
	fi
	if command -v ping >/dev/null 2>&1; then PING=(ping); else PING=(busybox ping); fi
	if ! ip netns exec "$NS" "${PING[@]}" -c 2 -i 0.2 -W 2 -w 10 "$ip_guest" >"$T_TMP/ping.out" 2>&1; then
		t_fail $name "no ping reply before the migration: $(tail -2 "$T_TMP/ping.out" | tr '\n' ' ')"
		PFX=()
		return
	fi
	# UDP echo, one datagram in flight (lost ones are not resent: the next
	# one goes), every echo compared with what was sent; counts the echoes
	# after the marker file appears; stops after 300 of those or 40 s.
	cat >"$T_TMP/udpload.py" <<'EOF'
import os, socket, sys, time
ip, marker, deadline = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((ip, 7))
s.settimeout(0.05)
sent = {}
seq = echoed = bad = late = after = 0
last = time.time()
gap = 0.0
while time.time() < deadline and after < 300:
    seq += 1
    p = seq.to_bytes(4, 'big') + os.urandom(64 + seq % 1200)
    sent[seq] = p
    sent.pop(seq - 200, None)
    s.send(p)
    while True:
        try:
            r = s.recv(4096)
        except socket.timeout:
            break
        except ConnectionRefusedError:
            break
        k = int.from_bytes(r[:4], 'big')
        if sent.get(k) != r:
            bad += 1
            print('bad echo: seq %d len %d' % (k, len(r)), flush=True)
        elif k != seq:
            late += 1
        else:
            echoed += 1
            now = time.time()
            gap = max(gap, now - last)
            last = now
            if os.path.exists(marker):
                after += 1
            break
print('udp sent=%d echoed=%d late=%d bad=%d after=%d longest_gap_ms=%.0f' % (seq, echoed, late, bad, after, gap * 1000))
sys.exit(0 if bad == 0 and after >= 300 else 1)
EOF
	ip netns exec "$NS" timeout 60 python3 "$T_TMP/udpload.py" "$ip_guest" "$T_TMP/migrated" 40 \
		>"$T_TMP/udp.out" 2>&1 &
	local upid=$!
	sleep 0.5
	if ! D_AT=unix:$T_TMP/$name.mig start_dst $name.dst --disk "$img,readonly" --net tap=gwm1; then
		t_fail $name "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		PFX=()
		return
	fi
	u0=$(t_complete "$S_OUT" | grep -a '^net: t=' | tail -n 1 | sed -n 's/.* udp=\([0-9]*\) .*/\1/p')
	migrate $name unix:$T_TMP/$name.mig
	touch "$T_TMP/migrated"
	if ! check_all "$S_PID" $((32 * 256)) 20; then
		t_fail $name "$WHY"
	else
		# Disk: a full read pass on the destination, errors=0 throughout.
		d1=$(grep -a '^disk: t=' "$D_OUT" | head -n 1)
		for ((i = 0; i < 100; i++)); do
			dl=$(t_complete "$D_OUT" | grep -a '^disk: t=' | tail -n 1)
			[ -n "$d1" ] && [ "$(field "$dl" gen)" -ge $(($(field "$d1" gen) + 2)) ] && break
			sleep 0.1
			d1=$(grep -a '^disk: t=' "$D_OUT" | head -n 1)
		done
		wait_exit $upid
		rc=$?
		nl=$(t_complete "$D_OUT" | grep -a '^net: t=' | tail -n 1)
		u1=$(sed -n 's/.* udp=\([0-9]*\) .*/\1/p' <<<"$nl")
		res=$(grep -a '^udp sent' "$T_TMP/udp.out")
		if grep -qa '^disk: ERROR\|^virtio:\|^net: ERROR' "$S_OUT" "$D_OUT" ||
			grep -ha '^disk: t=.* ro=[01]$' "$S_OUT" "$D_OUT" | grep -qv ' errors=0 '; then
			# (complete lines only: the line being printed at the pause ends on the destination)
			t_fail $name "disk errors: $(grep -ha '^disk: ERROR\|^virtio:\|^disk: t=.* errors=[1-9]' "$S_OUT" "$D_OUT" | head -n 2 | tr '\n' '|')"
		elif [ -z "$d1" ] || [ "$(field "$dl" gen)" -lt $(($(field "$d1" gen) + 2)) ]; then
			t_fail $name "no complete read pass of the disk on the destination: first '$d1', last '$dl'"
		elif [ $rc -ne 0 ]; then
			t_fail $name "UDP echo through the migration (exit $rc): $(tr '\n' '|' <"$T_TMP/udp.out" | head -c 400)"
		elif [ -z "$u0" ] || [ -z "$u1" ] || [ "$u1" -lt $((u0 + 300)) ]; then
			t_fail $name "the guest's UDP count did not go on: before '$u0', destination's last '$nl'"
		else
			t_pass $name
		fi
		echo "#   disk on the destination: $dl"
		echo "#   net: $res; guest: $nl"
	fi
	report_line $name
	echo "#   case took $(elapsed "$start") s"
	kill "$S_PID" "$upid" 2>/dev/null
	stop_dst
	PFX=()
}
want devices && devices_case

# ---- 5: A -> B -> A -> B -----------------------------------------------------------------------
pingpong_case() {
	local name=migrate-pingpong start hop ok=1 side gens=
	start=$(date +%s.%N)
	start_vm $name.0 --mem 128M --cpus 1 --cmdline 'workload=mem mem=32 rate=50 report=200'
	if ! wait_lines "$S_OUT" 3; then
		t_fail $name "the guest did not start: $(tail -c 300 "$S_ERR")"
		return
	fi
	gens=$(field "$(mt_lines "$S_OUT" | tail -n 1)" gen)
	for hop in 1 2 3; do
		side=B
		[ $hop -eq 2 ] && side=A
		if ! D_AT=unix:$T_TMP/$name.mig.$hop start_dst $name.$hop; then
			t_fail $name "hop $hop: the destination is not waiting: $(tail -c 300 "$D_ERR")"
			ok=0
			break
		fi
		migrate $name.$hop unix:$T_TMP/$name.mig.$hop
		if ! check_all "$S_PID" $((32 * 256)) 50; then
			t_fail $name "hop $hop (to $side): $WHY"
			ok=0
			break
		fi
		report_line "$name hop $hop to $side"
		gens="$gens -> $(field "$(mt_lines "$D_OUT" | head -n 1)" gen)..$(field "$D_LAST" gen)"
		S_PID=$D_PID S_SOCK=$D_SOCK S_OUT=$D_OUT S_ERR=$D_ERR
	done
	[ $ok -eq 1 ] && t_pass $name
	echo "#   gen: $gens; case took $(elapsed "$start") s"
	kill "$S_PID" 2>/dev/null
	stop_dst
}
want pingpong && pingpong_case

# ---- 6: progress under --max-bandwidth, pause refused -----------------------------------------
progress_case() {
	local name=migrate-progress start addr mpid i st rd by prev=-1 active=0 grew=0 prc=- pmsg= n=0 nf=0 t1 slow=0 polls=
	start=$(date +%s.%N)
	addr=unix:$T_TMP/$name.mig
	start_vm $name.src --mem 256M --cpus 1 --cmdline 'workload=mem mem=64 rate=4 report=200'
	if ! wait_lines "$S_OUT" 3; then
		t_fail $name "the guest did not start: $(tail -c 300 "$S_ERR")"
		return
	fi
	if ! D_AT="$addr" start_dst $name.dst; then
		t_fail $name "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		return
	fi
	MIG_JSON=$T_TMP/$name.json MIG_ERR=$T_TMP/$name.migerr
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$addr" --json --max-bandwidth 20M \
		>"$MIG_JSON" 2>"$MIG_ERR" &
	mpid=$!
	for ((i = 0; i < 300; i++)); do
		kill -0 $mpid 2>/dev/null || break
		t1=$(date +%s.%N)
		timeout 5 "$GODWIT" migrate-status --api "$S_SOCK" --json >"$T_TMP/st.new" 2>"$T_TMP/st.err" || { nf=$((nf + 1)); sleep 0.1; continue; }
		mv "$T_TMP/st.new" "$T_TMP/st.json"
		slow=$(awk -v a="$t1" -v b="$(date +%s.%N)" -v m="$slow" 'BEGIN { d = b - a; printf "%.2f", (d > m ? d : m) }')
		polls="$polls $(elapsed "$start")"
		read -r st rd by <<<"$(jvals "$T_TMP/st.json" status round bytes)"
		n=$((n + 1))
		if [ "$st" = active ] && [ "${rd:-0}" -ge 1 ]; then
			active=$((active + 1))
			[ "$prev" -ge 0 ] && [ "$by" -gt "$prev" ] && grew=$((grew + 1))
			prev=$by
			if [ "$prc" = - ]; then
				timeout 10 "$GODWIT" pause --api "$S_SOCK" >"$T_TMP/pause.out" 2>&1
				prc=$?
				pmsg=$(tr '\n' ' ' <"$T_TMP/pause.out")
			fi
		fi
		sleep 0.2
	done
	wait $mpid
	MIG_RC=$?
	echo "# $name: $n status polls ($nf failed: $(head -c 150 "$T_TMP/st.err"); at$polls s; slowest $slow s), $active active with round >= 1, bytes grew $grew times; last: $(jvals "$T_TMP/st.json" status round bytes)"
	echo "#   pause during the migration: exit $prc: $pmsg"
	if [ $active -lt 2 ] || [ $grew -lt 1 ]; then
		t_fail $name "migrate-status showed $active active polls with round >= 1 and growing bytes $grew times (want >= 2 and >= 1)"
	elif [ "$prc" != 1 ] || ! grep -qi 'migration' <<<"$pmsg"; then
		t_fail $name "pause during the migration: exit $prc (expected 1, a message naming the migration): $pmsg"
	elif ! check_all "$S_PID" $((64 * 256)) 0; then	# (a new gen would take 16 s)
		t_fail $name "$WHY"
	else
		t_pass $name
	fi
	report_line $name
	echo "#   case took $(elapsed "$start") s"
	kill "$S_PID" 2>/dev/null
	stop_dst
}
want progress && progress_case

# ---- 7: GET /metrics on both sides of a completed migration ---------------------------------
metrics_case() {
	local name=migrate-metrics addr i st rep=$T_TMP/migrate-metrics.rep got want start
	start=$(date +%s.%N)
	addr=unix:$T_TMP/$name.mig
	start_vm $name.src --mem 128M --cpus 1 --cmdline 'workload=mem mem=32 rate=10 report=200'
	if ! wait_lines "$S_OUT" 2 || ! D_AT="$addr" start_dst $name.dst; then
		t_fail $name "no source guest or no destination: $(tail -c 200 "$S_ERR" "$D_ERR")"
		kill "$S_PID" "$D_PID" 2>/dev/null
		return
	fi
	# Started and followed over the API without release=1: the completed source waits
	# 5 s for a reader that releases it before it exits, time enough to scrape it.
	curl -s --max-time 10 --unix-socket "$S_SOCK" -X PUT -d "{\"to\": \"$addr\"}" \
		http://localhost/api/v1/vm/migrate >"$rep" 2>&1
	for ((i = 0; i < 300; i++)); do
		curl -s --max-time 5 --unix-socket "$S_SOCK" http://localhost/api/v1/vm/migration \
			>"$rep" 2>/dev/null
		st=$(jget "$rep" status)
		[ "$st" = completed ] || [ "$st" = failed ] && break
		sleep 0.05
	done
	if [ "$st" != completed ]; then
		t_fail $name "the migration did not complete: $(cat "$rep")"
	elif ! prom_scrape "$S_SOCK" "$T_TMP/$name.s.json"; then
		t_fail $name "source: $PROM_ERR"
	elif ! prom_scrape "$D_SOCK" "$T_TMP/$name.d.json"; then
		t_fail $name "destination: $PROM_ERR"
	else
		# Exact: counts; seconds: the report's milliseconds are rounded to 0.001.
		want=$(jq -r '"completed=1 bytes=\(.bytes) pages=\(.pages) zero=\(.zero_pages) rounds=\(.rounds)"' "$rep")
		got="completed=$(prom_val "$T_TMP/$name.s.json" godwit_migration_status status=completed)"
		got+=" bytes=$(prom_val "$T_TMP/$name.s.json" godwit_migration_bytes)"
		got+=" pages=$(prom_val "$T_TMP/$name.s.json" godwit_migration_pages)"
		got+=" zero=$(prom_val "$T_TMP/$name.s.json" godwit_migration_zero_pages)"
		got+=" rounds=$(prom_val "$T_TMP/$name.s.json" godwit_migration_rounds)"
		if [ "$got" != "$want" ]; then
			t_fail $name "source metrics '$got', report '$want'"
		elif ! jq -e --slurpfile r "$rep" '
			[.[] | select(.name == "godwit_migration_downtime_phase_seconds")] as $ph |
			([.[] | select(.name == "godwit_migration_downtime_seconds")][0].value) as $dt |
			($ph | map(.labels.phase)) == ["stop","memory","state","ready","release","commit"]
			and ($ph | all(.value >= 0))
			and ((($ph | map(.value) | add) - $dt) | fabs) < 1e-6
			and (($dt * 1000 - $r[0].downtime_ms) | fabs) < 0.001
			and ([$ph[] | .value * 1000 - $r[0].phases_ms[.labels.phase] | fabs] | max) < 0.001
			' "$T_TMP/$name.s.json" >/dev/null; then
			t_fail $name "the phases do not add up to the downtime, or differ from the report's: $(grep -a 'downtime' "$T_TMP/$name.s.json.txt" | grep -v '^#' | tr '\n' ' '); report: $(jq -c '{downtime_ms, phases_ms}' "$rep")"
		elif ! jq -e --slurpfile r "$rep" '
			[.[] | select(.name == "godwit_migration_vcpu_dirty_rate_bytes_per_second")] as $v |
			([.[] | select(.name == "godwit_migration_throttle_budget_bytes_per_second")][0].value) as $b |
			($v | map(.labels.vcpu)) == ["0"]
			and (($v[0].value - $r[0].vcpu_dirty_rate_bps[0]) | fabs) < 0.001
			and (($b - $r[0].throttle_budget_bps) | fabs) < 0.001
			and ([.[] | select(.name == "godwit_migration_reconnects")][0].value) == $r[0].reconnects
			' "$T_TMP/$name.s.json" >/dev/null; then
			t_fail $name "the per-vCPU dirty rate, the throttle budget or the reconnects differ from the report's: $(grep -a 'vcpu_dirty\|throttle\|reconnects' "$T_TMP/$name.s.json.txt" | grep -v '^#' | tr '\n' ' '); report: $(jq -c '{vcpu_dirty_rate_bps, throttle_budget_bps, reconnects}' "$rep")"
		elif [ "$(prom_val "$T_TMP/$name.d.json" godwit_migration_status status=incoming)" != 1 ] ||
			[ "$(prom_val "$T_TMP/$name.d.json" godwit_migration_bytes)" != "$(jget "$rep" bytes)" ] ||
			[ "$(prom_val "$T_TMP/$name.d.json" godwit_vm_state state=running)" != 1 ]; then
			t_fail $name "destination: $(grep -a '^godwit_migration_\(bytes\|status\)\|^godwit_vm_state' "$T_TMP/$name.d.json.txt" | grep -v ' 0$' | tr '\n' ' ')(sent $(jget "$rep" bytes) bytes)"
		else
			t_pass $name
		fi
	fi
	# Released (as godwit migrate does), the source exits at once.
	curl -s --max-time 5 --unix-socket "$S_SOCK" "http://localhost/api/v1/vm/migration?release=1" \
		>/dev/null 2>&1
	wait_exit "$S_PID" 10 >/dev/null
	stop_dst
	echo "#   case took $(elapsed "$start") s"
}
want metrics && metrics_case

echo "# t-migrate: $(elapsed "$T0") s in all"
exit 0
