#!/bin/bash
# Tier 1: the fleet (docs/fleet.md) on three hosts in network namespaces, with a
# three-member etcd (tests/kvm/lib-fleet.sh), the agents (godwitd) under mutual
# TLS and `godwit fleet`; tests/kvm/fleet_check.py watches the invariants for
# the whole run (one owner, no VM running twice, epochs only grow, no VM lost).
# Its results are named fleet-e2e-* (t-fleet-cli.sh's are fleet-*):
#
#   fleet-e2e-checker-selftest the checker, given two real `godwit run --name dup`
#                             on h1 and h2, an owner record naming h1, then h2's
#                             stopped (SIGSTOP: not running), both killed and the
#                             epoch lowered, reports all four kinds
#   fleet-e2e-agents          three agents register (/godwit/hosts/H, `fleet hosts`)
#   fleet-e2e-create          v1..v4 on h1, v5 on h2 (64 MiB, memtest) run
#   fleet-e2e-drain-*         `fleet drain h1`: v1..v4 on h2/h3, none on h1, each
#                             guest's memory verified and going on (gen continues,
#                             errors=0), h1 cordoned, `fleet create --on h1` refused
#   fleet-e2e-rebalance       after `fleet uncordon h1`, h1 gets a VM back
#   fleet-e2e-agent-kill      (a) kill -9 of h2's agent during `fleet drain h3`: h2's
#                             VMs keep running; the restarted agent adopts them (same
#                             pids, status running); the drain of h3 completes
#   fleet-e2e-source-kill     (b) kill -9 of a VM's source process mid-copy: the VM
#                             is gone, ran nowhere else, its owner record unchanged
#   fleet-e2e-cut-at-gate     (c) the source host cut from etcd mid-copy: the VM never
#                             runs on the destination; the destination vetoes
#                             (veto/E); once etcd is back the VM resumes on the
#                             source, its owner still h1 (rules 2, 3, 5)
#   fleet-e2e-cut-at-gate-once  and that one vetoed `fleet migrate` left the owner's
#                             epoch as it was (no attempt nobody asked for)
#   fleet-e2e-etcd-member     (d) one etcd member (the leader) killed during a drain:
#                             the drain completes
#   fleet-e2e-invariants      the checker saw every VM running and no violation
#
# FLEET_KEEP=DIR keeps the fleet's files (agent logs, consoles, checker log) in DIR.
# asan: no (the agents start build/godwit; one fleet run is enough per suite)
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"
. "$(dirname "$0")/lib-fleet.sh"

T=fleet-e2e
CMDLINE='workload=mem mem=64 rate=20 report=200'
# The fault VMs dirty slowly (their migrations converge) but copy for seconds:
# their source host's uplink is limited to FAULT_RATE while they move.
FAULT_CMDLINE='workload=mem mem=128 rate=2 report=200'
FAULT_RATE=${FLEET_FAULT_RATE:-200mbit}
START=$SECONDS
CHK_PID=

ft_cleanup() {
	[ -n "$CHK_PID" ] && kill "$CHK_PID" 2>/dev/null
	if [ -n "${FLEET_KEEP:-}" ] && [ -n "$FLEET_DIR" ]; then
		mkdir -p "$FLEET_KEEP" && cp -r "$FLEET_DIR"/. "$FLEET_KEEP"/ 2>/dev/null
	fi
	fleet_down
}
trap 'ft_cleanup; t_cleanup' EXIT

t_need_guest "$T" || exit 0
# A bound on the whole run: a hung step ends the test (and its cleanup runs).
FLEET_TIMEOUT=${FLEET_TIMEOUT:-540}
trap 't_fail "$T-timeout" "the test did not end within $FLEET_TIMEOUT s"; exit 0' TERM
( trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$FLEET_TIMEOUT" & sp=$!
  wait "$sp" && kill -TERM $$ 2>/dev/null ) &

# ---- helpers --------------------------------------------------------------------------
owner() { etcd_val "/godwit/vms/$1/owner"; }
owner_host() { owner "$1" | awk '{ print $1 }'; }
vstatus() { etcd_val "/godwit/vms/$1/status"; }
sfield() { vstatus "$1" | jq -r --arg k "$2" '.[$k] // empty' 2>/dev/null; }
# run_pid V H: the pid of the process in H's namespace that runs V (API "running", not
# stopped); empty if none.
run_pid() {
	local vm pid api st
	while read -r vm pid api; do
		[ "$vm" = "$1" ] || continue
		st=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)
		[ "$st" = T ] && continue
		[ "$(jfield "$(timeout 5 "$GODWIT" status --api "$api" --json 2>/dev/null)" state)" = running ] &&
			echo "$pid"
	done < <(fleet_vm_pids "$2")
}
# procs_of V H: the pids of V's processes in H's namespace (running or not).
procs_of() { fleet_vm_pids "$2" | awk -v v="$1" '$1 == v { print $2 }'; }
# where V: the hosts on which V runs now.
where() { local h; for h in h1 h2 h3; do [ -n "$(run_pid "$1" "$h")" ] && echo "$h"; done; }
# console V H: V's console file on H.
console() { echo "$FLEET_DIR/$2/vms/$1/console.log"; }
# wait_on V H SECS: until V's owner is H, its status says running and it runs on H.
wait_on() {
	local i
	for ((i = 0; i < $3; i++)); do
		if [ "$(owner_host "$1")" = "$2" ] && [ "$(sfield "$1" state)" = running ] &&
			[ -n "$(run_pid "$1" "$2")" ]; then
			return 0
		fi
		sleep 1
	done
	return 1
}
# settled V SECS: until V runs where its owner says and its status says running (else WHY).
settled() {
	local i
	for ((i = 0; i < $2; i++)); do
		[ "$(sfield "$1" state)" = running ] && [ -n "$(run_pid "$1" "$(owner_host "$1")")" ] && return 0
		sleep 1
	done
	WHY="$1, owner '$(owner "$1")', has status $(vstatus "$1" | head -c 300) and runs on '$(where "$1" | tr '\n' ' ')'"
	return 1
}
# vms_on H: the VMs whose owner record names H.
vms_on() {
	local v
	for v in $(fleet_etcdctl get --prefix --keys-only /godwit/vms/ 2>/dev/null |
		sed -n 's|^/godwit/vms/\([^/]*\)/owner$|\1|p'); do
		[ "$(owner_host "$v")" = "$1" ] && echo "$v"
	done
}
# mem_ok V H G0: V's guest on H reports on (3 more memtest lines in 15 s), errors=0, and
# its memory generation did not go back (gen >= G0: a cold boot would start over); WHY.
mem_ok() {
	local log n g
	log=$(console "$1" "$2")
	n=$(reports "$log")
	if ! wait_reports "$log" $((n + 3)) 15; then
		WHY="$1 on $2: $(($(reports "$log") - n)) memtest lines in 15 s: $(tail -c 200 "$log" 2>&1)"
		return 1
	fi
	if [ -n "$(guest_errors "$log")" ]; then
		WHY="$1 on $2: $(guest_errors "$log" | tr '\n' '|')"
		return 1
	fi
	g=$(last_gen "$log")
	if [ -z "$g" ] || [ "$g" -lt "${3:-0}" ]; then
		WHY="$1 on $2: memtest gen=$g, was $3 before the move (a fresh boot?)"
		return 1
	fi
	return 0
}
# gen_n FILE: last_gen FILE, 0 if there is none yet (for wait_count).
gen_n() { local g; g=$(last_gen "$1"); echo "${g:-0}"; }
# gen_of V: V's memtest gen on its owner host now.
gen_of() { last_gen "$(console "$1" "$(owner_host "$1")")"; }
# shape H / unshape H: limit H's uplink to FAULT_RATE (a migration from H takes seconds).
shape() { tc -n "${FLEET_NS[$1]}" qdisc replace dev eth0 root tbf rate "$FAULT_RATE" burst 64kb latency 50ms; }
unshape() { tc -n "${FLEET_NS[$1]}" qdisc del dev eth0 root 2>/dev/null; return 0; }
# wait_dst_proc V H SECS: until a process for V exists in H's namespace (an incoming).
wait_dst_proc() {
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		[ -n "$(procs_of "$1" "$2")" ] && return 0
		sleep 0.1
	done
	return 1
}
# allow V / disallow V: V may be down (the checker does not count it lost) / no more.
allow() { : >"$FLEET_DIR/allow/$1"; }
disallow() { rm -f "$FLEET_DIR/allow/$1"; }
# create V H CMDLINE MEM: fleet create; false (WHY) unless it runs on H within 40 s.
create() {
	if ! fleet create "$1" --on "$2" -- --kernel "$GUEST_ELF" --mem "$4" --cmdline "$3" \
		>"$FLEET_DIR/create-$1.out" 2>&1; then
		WHY="fleet create $1 --on $2: $(head -c 300 "$FLEET_DIR/create-$1.out")"
		return 1
	fi
	if ! wait_on "$1" "$2" 40; then
		WHY="$1 not running on $2 40 s after fleet create: owner '$(owner "$1")', status $(vstatus "$1" | head -c 300)"
		return 1
	fi
}
# run_bg NAME CMD...: CMD in the background, output in $FLEET_DIR/NAME.out; BG_PID.
run_bg() { local n=$1; shift; "$@" >"$FLEET_DIR/$n.out" 2>&1 & BG_PID=$!; }
# owners_now: "V=HOST EPOCH STATE; ..." for every VM, as etcd says now (failure messages).
owners_now() {
	local v
	for v in $VMS vb vc; do
		[ -n "$(owner "$v")" ] && echo -n "$v='$(owner "$v")' $(sfield "$v" state); "
	done
}

# ---- the fleet --------------------------------------------------------------------------
if ! fleet_up; then
	t_fail "$T-up" "$FLEET_ERR"
	exit 0
fi
mkdir -p "$FLEET_DIR/allow"
t_pass "$T-up"

CHK=(ip netns exec "$FLEET_NS_S" python3 "$ROOT/tests/kvm/fleet_check.py" --etcd "$ETCD_URLS"
	--host "h1=${FLEET_NS[h1]}" --host "h2=${FLEET_NS[h2]}" --host "h3=${FLEET_NS[h3]}")

# ---- the checker catches what it is there to catch ---------------------------------------
selftest() {
	local h p
	fleet_etcdctl put /godwit/vms/dup/owner "h1 1" >/dev/null || { WHY="etcdctl put failed"; return 1; }
	for h in h1 h2; do
		ip netns exec "${FLEET_NS[$h]}" timeout 60 "$GODWIT" run --name dup --kernel "$GUEST_ELF" \
			--mem 64M --cmdline 'workload=mem mem=16 rate=5 report=500' \
			--api "$FLEET_DIR/dup-$h.sock" </dev/null >"$FLEET_DIR/dup-$h.out" 2>&1 &
	done
	"${CHK[@]}" --out "$FLEET_DIR/selftest.json" --lost-s 1 --max-s 60 \
		--log "$FLEET_DIR/selftest.log" &
	p=$!
	wait_reports "$FLEET_DIR/dup-h1.out" 2 20
	wait_reports "$FLEET_DIR/dup-h2.out" 2 20
	sleep 1
	# A stopped process (SIGSTOP: a fenced VM) does not run its VM: h2's copy stops counting.
	procs_of dup h2 | xargs -r kill -STOP
	sleep 1.5
	for h in h1 h2; do procs_of dup "$h" | xargs -r kill -KILL; done
	sleep 2.5
	fleet_etcdctl put /godwit/vms/dup/owner "h1 0" >/dev/null
	sleep 0.5
	kill "$p"
	wait "$p"
	fleet_etcdctl del --prefix /godwit/vms/dup/ >/dev/null
	local kinds
	kinds=$(jq -r '[.violations[].kind] | unique | join(" ")' "$FLEET_DIR/selftest.json" 2>/dev/null)
	if [ "$kinds" != "dual-run epoch-decreased lost runs-not-owner" ]; then
		WHY="the checker reported '$kinds' (want dual-run epoch-decreased lost runs-not-owner): $(head -c 400 "$FLEET_DIR/selftest.log")"
		return 1
	fi
	local n1 n2
	n1=$(jq '.vms.dup.hosts.h1 // 0' "$FLEET_DIR/selftest.json")
	n2=$(jq '.vms.dup.hosts.h2 // 0' "$FLEET_DIR/selftest.json")
	if [ "$n2" -lt 3 ] || [ $((n1 - n2)) -lt 5 ]; then
		WHY="the checker saw dup running in $n1 samples on h1, $n2 on h2 (h2's stopped for the last 1.5 s of the 2.5 s)"
		return 1
	fi
}
if selftest; then t_pass "$T-checker-selftest"; else t_fail "$T-checker-selftest" "$WHY"; fi

# ---- the agents and the CLI -------------------------------------------------------------
if [ ! -x "$GODWITD" ]; then
	t_fail "$T-agents" "no agent at $GODWITD (make)"
	exit 0
fi
for h in h1 h2 h3; do agent_start "$h"; done
ok=1
for h in h1 h2 h3; do
	if ! agent_registered "$h" 20; then
		t_fail "$T-agents" "no /godwit/hosts/$h 20 s after godwitd started: $(tail -n 5 "$FLEET_DIR/log/$h.log" | tr '\n' '|')"
		ok=0
		break
	fi
done
[ "$ok" = 1 ] || exit 0
fleet hosts >"$FLEET_DIR/hosts.out" 2>&1
if [ "$(grep -cwE 'h1|h2|h3' "$FLEET_DIR/hosts.out")" -lt 3 ]; then
	t_fail "$T-agents" "fleet hosts does not list h1, h2 and h3: $(head -c 400 "$FLEET_DIR/hosts.out")"
	exit 0
fi
t_pass "$T-agents"

"${CHK[@]}" --out "$FLEET_DIR/check.json" --allow-dir "$FLEET_DIR/allow" --lost-s 5 --max-s 600 \
	--stop "$FLEET_DIR/check.stop" --log "$FLEET_DIR/check.log" &
CHK_PID=$!

VMS="v1 v2 v3 v4 v5"
ok=1
for v in v1 v2 v3 v4; do create "$v" h1 "$CMDLINE" 64M || { ok=0; break; }; done
[ "$ok" = 1 ] && { create v5 h2 "$CMDLINE" 64M || ok=0; }
if [ "$ok" = 1 ]; then
	t_pass "$T-create"
else
	t_fail "$T-create" "$WHY"
	exit 0
fi
# Let the guests run a few generations, so that a cold boot would show.
for v in $VMS; do wait_count gen_n "$(console "$v" "$(owner_host "$v")")" 3 30; done

# ---- drain h1 ---------------------------------------------------------------------------
declare -A G0
for v in v1 v2 v3 v4; do G0[$v]=$(gen_of "$v"); done
fleet drain h1 >"$FLEET_DIR/drain-h1.out" 2>&1
rc=$?
drained() {
	local v h
	for v in v1 v2 v3 v4; do
		h=$(owner_host "$v")
		{ [ "$h" = h2 ] || [ "$h" = h3 ]; } && [ "$(sfield "$v" state)" = running ] || return 1
	done
}
for ((i = 0; i < 120; i++)); do drained && break; sleep 1; done
if ! drained; then
	t_fail "$T-drain" "fleet drain h1 (exit $rc: $(head -c 300 "$FLEET_DIR/drain-h1.out")); 120 s later: $(for v in v1 v2 v3 v4; do echo -n "$v: '$(owner "$v")' $(sfield "$v" state); "; done)"
else
	# A source whose VM moved exits by itself (its agent kills it after 15 s at most).
	for ((i = 0; i < 20; i++)); do [ -z "$(fleet_vm_pids h1)" ] && break; sleep 1; done
	left=$(fleet_vm_pids h1)
	echo "# drain h1: sources gone $i s after the drain ended"
	if [ "$rc" -ne 0 ]; then
		t_fail "$T-drain" "the VMs moved but fleet drain h1 exited $rc: $(head -c 300 "$FLEET_DIR/drain-h1.out"); etcd now: $(owners_now)"
	elif [ -n "$left" ]; then
		t_fail "$T-drain" "godwit processes left on h1: $left"
	else
		t_pass "$T-drain"
	fi
	bad=
	for v in v1 v2 v3 v4; do
		h=$(owner_host "$v")
		[ -n "$(run_pid "$v" "$h")" ] || { bad+="$v does not run on its owner $h; "; continue; }
		[ -z "$(where "$v" | grep -v "^$h\$")" ] || bad+="$v also runs on $(where "$v" | tr '\n' ' '); "
		mem_ok "$v" "$h" "${G0[$v]}" || bad+="$WHY; "
	done
	if [ -z "$bad" ]; then t_pass "$T-drain-memory"; else t_fail "$T-drain-memory" "$bad"; fi
fi
if [ "$(etcd_val /godwit/cordon/h1)" = 1 ]; then
	t_pass "$T-drain-cordon"
else
	t_fail "$T-drain-cordon" "/godwit/cordon/h1 is '$(etcd_val /godwit/cordon/h1)' after the drain"
fi
if fleet create v6 --on h1 -- --kernel "$GUEST_ELF" --mem 64M --cmdline "$CMDLINE" \
	>"$FLEET_DIR/create-v6.out" 2>&1; then
	t_fail "$T-drain-refuse-create" "fleet create v6 --on h1 (cordoned) succeeded: $(head -c 200 "$FLEET_DIR/create-v6.out")"
	fleet rm v6 >/dev/null 2>&1
elif [ -n "$(owner v6)" ] || [ -n "$(procs_of v6 h1)" ]; then
	t_fail "$T-drain-refuse-create" "fleet create refused v6 but left owner '$(owner v6)' / processes $(procs_of v6 h1)"
else
	t_pass "$T-drain-refuse-create"
fi

# ---- uncordon, rebalance ----------------------------------------------------------------
declare -A G1
for v in $VMS; do G1[$v]=$(gen_of "$v"); done
if ! fleet uncordon h1 >"$FLEET_DIR/uncordon.out" 2>&1 || [ -n "$(etcd_val /godwit/cordon/h1)" ]; then
	t_fail "$T-rebalance" "fleet uncordon h1: $(head -c 300 "$FLEET_DIR/uncordon.out"); cordon/h1='$(etcd_val /godwit/cordon/h1)'"
else
	fleet rebalance >"$FLEET_DIR/rebalance.out" 2>&1
	rc=$?
	back=
	for ((i = 0; i < 90; i++)); do
		for v in $VMS; do
			[ "$(owner_host "$v")" = h1 ] && [ -n "$(run_pid "$v" h1)" ] && { back=$v; break; }
		done
		[ -n "$back" ] && break
		sleep 1
	done
	if [ "$rc" -ne 0 ]; then
		t_fail "$T-rebalance" "fleet rebalance exited $rc: $(head -c 300 "$FLEET_DIR/rebalance.out"); etcd now: $(owners_now)"
	elif [ -z "$back" ]; then
		t_fail "$T-rebalance" "no VM runs on h1 90 s after fleet rebalance: $(head -c 300 "$FLEET_DIR/rebalance.out")"
	elif ! mem_ok "$back" h1 "${G1[$back]}"; then
		t_fail "$T-rebalance" "$WHY"
	else
		t_pass "$T-rebalance"
	fi
fi
# Let every move the rebalance started end.
for ((i = 0; i < 60; i++)); do
	busy=
	for v in $VMS; do [ "$(sfield "$v" state)" = running ] || busy+="$v "; done
	[ -z "$busy" ] && break
	sleep 1
done

# ---- (a) kill -9 of h2's agent during a drain of h3 ---------------------------------------
fault_a() {
	local v h2vms p ok i
	# h3 must have something to drain.
	if [ -z "$(vms_on h3)" ]; then
		v=$(vms_on h2 | head -n 1)
		[ -n "$v" ] || v=$(vms_on h1 | head -n 1)
		fleet migrate "$v" --to h3 >"$FLEET_DIR/a-migrate.out" 2>&1
		wait_on "$v" h3 60 || { WHY="setup: fleet migrate $v --to h3 did not happen: $(head -c 300 "$FLEET_DIR/a-migrate.out")"; return 1; }
	fi
	h2vms=$(vms_on h2)
	declare -A P
	for v in $h2vms; do P[$v]=$(run_pid "$v" h2); done
	run_bg a-drain fleet drain h3
	local dpid=$BG_PID
	sleep 0.5
	agent_kill h2
	sleep 3
	for v in $h2vms; do
		p=$(run_pid "$v" h2)
		[ -n "$p" ] && [ "$p" = "${P[$v]}" ] || { WHY="with h2's agent dead, $v runs as '$p' on h2 (was ${P[$v]})"; return 1; }
	done
	agent_start h2
	for v in $h2vms; do
		ok=0
		for ((i = 0; i < 30; i++)); do
			if [ "$(sfield "$v" state)" = running ] && [ "$(sfield "$v" pid)" = "${P[$v]}" ] &&
				[ "$(run_pid "$v" h2)" = "${P[$v]}" ]; then
				ok=1
				break
			fi
			sleep 1
		done
		[ "$ok" = 1 ] || { WHY="the restarted agent did not adopt $v (pid ${P[$v]}): status $(vstatus "$v" | head -c 300), runs as '$(run_pid "$v" h2)'"; return 1; }
	done
	wait_exit "$dpid" 120
	rc=$?
	if [ -n "$(vms_on h3)" ]; then
		# The drain may give up on moves it could not make while h2 had no agent: again.
		fleet drain h3 >"$FLEET_DIR/a-drain2.out" 2>&1
		for ((i = 0; i < 60; i++)); do [ -z "$(vms_on h3)" ] && break; sleep 1; done
	fi
	# A source whose VM moved exits by itself (its agent kills it after 15 s at most).
	for ((i = 0; i < 20; i++)); do [ -z "$(fleet_vm_pids h3)" ] && break; sleep 1; done
	if [ -n "$(vms_on h3)" ] || [ -n "$(fleet_vm_pids h3)" ]; then
		WHY="h3 still holds $(vms_on h3 | tr '\n' ' ')/ processes '$(fleet_vm_pids h3)' after its drain (first drain exit $rc: $(head -c 200 "$FLEET_DIR/a-drain.out"))"
		return 1
	fi
	for v in $VMS; do settled "$v" 15 || { WHY="after the drain of h3: $WHY"; return 1; }; done
	INFO="h2 kept ${h2vms//$'\n'/ }; first drain of h3 exit $rc"
}
if fault_a; then t_pass "$T-agent-kill"; echo "# $INFO"; else t_fail "$T-agent-kill" "$WHY"; fi
fleet uncordon h3 >/dev/null 2>&1

# ---- (b) kill -9 of the source VMM during its migration -----------------------------------
fault_b() {
	local e0 p i x
	create vb h1 "$FAULT_CMDLINE" 192M || return 1
	wait_count gen_n "$(console vb h1)" 2 30
	e0=$(owner vb)
	p=$(run_pid vb h1)
	shape h1
	run_bg b-migrate fleet migrate vb --to h3
	local mpid=$BG_PID
	if ! wait_dst_proc vb h3 20; then
		unshape h1
		WHY="no incoming process for vb on h3 20 s after fleet migrate: $(head -c 300 "$FLEET_DIR/b-migrate.out")"
		return 1
	fi
	sleep 0.5
	allow vb
	kill -KILL "$p"
	unshape h1
	wait_exit "$mpid" 60 >/dev/null
	# The destination discards what it got: nothing of vb may run anywhere, for a while.
	for ((i = 0; i < 15; i++)); do
		x=$(where vb)
		[ -z "$x" ] || { WHY="vb runs on $x after its source was killed"; return 1; }
		sleep 1
	done
	[ -z "$(procs_of vb h3)" ] || { WHY="the destination h3 still has vb's process $(procs_of vb h3) 15 s later"; return 1; }
	[ "$(owner vb)" = "$e0" ] || { WHY="owner of vb went from '$e0' to '$(owner vb)' although its source died before COMMIT"; return 1; }
	INFO="vb: status $(sfield vb state), owner '$(owner vb)'"
}
if fault_b; then t_pass "$T-source-kill"; echo "# $INFO"; else t_fail "$T-source-kill" "$WHY"; fi
allow vb
fleet stop vb >/dev/null 2>&1
fleet rm vb >/dev/null 2>&1

# ---- (c) the source host cut from etcd during the copy: no COMMIT ---------------------------
fault_c() {
	local o0 e0 i p x veto=
	create vc h1 "$FAULT_CMDLINE" 192M || return 1
	wait_count gen_n "$(console vc h1)" 2 30
	o0=$(owner vc)
	e0=${o0#* }
	p=$(run_pid vc h1)
	shape h1
	run_bg c-migrate fleet migrate vc --to h2
	local mpid=$BG_PID
	if ! wait_dst_proc vc h2 20; then
		unshape h1
		WHY="no incoming process for vc on h2 20 s after fleet migrate: $(head -c 300 "$FLEET_DIR/c-migrate.out")"
		return 1
	fi
	sleep 0.5
	# Every VM on h1 is fenced (paused) while h1 cannot reach etcd (rule 5).
	allow ALL
	host_cut_etcd h1
	unshape h1
	# The destination, without COMMIT, gives up: veto/E (rule 3).  Meanwhile vc never runs
	# there (the source may still be copying, running, until it reaches the gate).
	for ((i = 0; i < 40; i++)); do
		x=$(run_pid vc h2)
		[ -n "$x" ] && { WHY="vc runs on h2 (pid $x) while its source is cut from etcd (owner '$(owner vc)')"; host_uncut_etcd h1; return 1; }
		veto=$(etcd_val "/godwit/vms/vc/veto/$e0")
		[ -n "$veto" ] && break
		sleep 1
	done
	local p_state p_run
	p_state=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null)
	p_run=$(run_pid vc h1)
	host_uncut_etcd h1
	if [ -n "$p_run" ]; then
		WHY="vc runs on h1 (pid $p_run) while h1 is cut from etcd past its gate (rule 5: paused)"
		return 1
	fi
	if [ -z "$veto" ]; then
		WHY="no /godwit/vms/vc/veto/$e0 40 s into the cut (owner '$(owner vc)'; source process $p state '$p_state')"
		return 1
	fi
	# Back: the source resumes vc (owner unchanged), the destination has discarded it.
	if ! wait_on vc h1 40; then
		WHY="vc does not run on h1 40 s after the cut ended: owner '$(owner vc)', status $(vstatus vc | head -c 300), veto '$veto', runs on '$(where vc)'"
		return 1
	fi
	disallow ALL
	[ "$(run_pid vc h1)" = "$p" ] || { WHY="vc runs on h1 as $(run_pid vc h1), not its source process $p"; return 1; }
	# The owner still names h1.  Its epoch stays (checked below, on its own): rule 3 moves it
	# to E+1 only before a new migration, and none was asked for.
	C_O0=$o0 C_O1=$(owner vc)
	[ "${C_O1% *}" = h1 ] || { WHY="owner of vc is '$C_O1', was '$o0' (a veto was written)"; return 1; }
	[ -z "$(procs_of vc h2)" ] || { WHY="the destination h2 still has vc's process $(procs_of vc h2)"; return 1; }
	mem_ok vc h1 0 || return 1
	wait_exit "$mpid" 30 >/dev/null
	INFO="veto/$e0 by '$veto'; source state during the cut: '$p_state'; fleet migrate: $(tail -n 1 "$FLEET_DIR/c-migrate.out")"
}
C_O0="" C_O1=""
if fault_c; then t_pass "$T-cut-at-gate"; echo "# $INFO"; else t_fail "$T-cut-at-gate" "$WHY"; fi
# One `fleet migrate`, vetoed: no second attempt, so the owner's epoch is unchanged.
if [ -z "$C_O1" ]; then
	t_fail "$T-cut-at-gate-once" "not reached"
elif [ "$C_O1" = "$C_O0" ]; then
	t_pass "$T-cut-at-gate-once"
else
	t_fail "$T-cut-at-gate-once" "owner of vc went '$C_O0' -> '$C_O1' after the vetoed migration: another attempt was started, unasked (fleet migrate: $(tail -n 1 "$FLEET_DIR/c-migrate.out"); h1's agent: $(grep -a 'VM vc:' "$FLEET_DIR/log/h1.log" | tail -n 4 | tr '\n' '|' | head -c 600))"
fi
host_uncut_etcd h1
disallow ALL
# The other VMs on h1 go on after the fence.
for v in $VMS; do [ "$(owner_host "$v")" = h1 ] && wait_on "$v" h1 30; done
allow vc
fleet stop vc >/dev/null 2>&1
fleet rm vc >/dev/null 2>&1

# ---- (d) an etcd member lost during a drain ----------------------------------------------
fault_d() {
	local src leader n i rc
	src=$(for h in h1 h2 h3; do echo "$(vms_on "$h" | wc -l) $h"; done | sort -rn | head -n 1 | awk '{ print $2 }')
	leader=$(fleet_etcdctl endpoint status --cluster -w json 2>/dev/null |
		jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' | head -n 1)
	n=1
	case "$leader" in *.22:*) n=2 ;; *.23:*) n=3 ;; esac
	run_bg d-drain fleet drain "$src"
	local dpid=$BG_PID
	sleep 0.3
	etcd_member_stop "$n"
	wait_exit "$dpid" 150
	rc=$?
	for ((i = 0; i < 60; i++)); do [ -z "$(vms_on "$src")" ] && break; sleep 1; done
	if [ "$rc" -ne 0 ] || [ -n "$(vms_on "$src")" ]; then
		WHY="drain of $src with etcd member e$n ($leader) killed: exit $rc ($(head -c 300 "$FLEET_DIR/d-drain.out")), still on $src: '$(vms_on "$src" | tr '\n' ' ')'; etcd now: $(owners_now)"
		return 1
	fi
	for v in $VMS; do settled "$v" 15 || { WHY="after the drain: $WHY"; return 1; }; done
	INFO="drained $src with e$n (the leader: ${leader:-unknown}) killed"
}
if fault_d; then t_pass "$T-etcd-member"; echo "# $INFO"; else t_fail "$T-etcd-member" "$WHY"; fi

# ---- the invariants -------------------------------------------------------------------
: >"$FLEET_DIR/check.stop"
wait_exit "$CHK_PID" 10 >/dev/null
CHK_PID=
S=$FLEET_DIR/check.json
if [ ! -f "$S" ]; then
	t_fail "$T-invariants" "the checker wrote no summary: $(tail -n 5 "$FLEET_DIR/check.log" 2>&1)"
else
	nv=$(jq '.violations | length' "$S")
	unseen=
	for v in $VMS; do
		[ "$(jq --arg v "$v" '.vms[$v].samples_running // 0' "$S")" -gt 0 ] || unseen+="$v "
	done
	if [ "$nv" != 0 ]; then
		t_fail "$T-invariants" "$nv violation(s): $(jq -c '.violations[:5]' "$S" | head -c 600)"
	elif [ -n "$unseen" ]; then
		t_fail "$T-invariants" "the checker never saw $unseen running ($(jq -c '{samples, etcd_errors}' "$S"))"
	else
		t_pass "$T-invariants"
	fi
	echo "# checker: $(jq -c '{samples, duration_s, max_pass_s, etcd_errors, skew_rechecks, api_no_answer, gaps: (.vms | map_values(.max_gap_s))}' "$S")"
fi
echo "# t-fleet took $((SECONDS - START)) s"
