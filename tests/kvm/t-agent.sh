#!/bin/bash
# Tier 1: godwitd, the host agent (docs/fleet.md), on loopback: one etcd
# started here, two agents (hosts a and b, mutual TLS with per-host
# certificates from mkcerts.py), etcdctl playing `godwit fleet`'s part.
#
#   agent-usage      --help exits 0; no --host exits 2; --listen beyond loopback
#                    without --tls-dir is refused (exit 2)
#   agent-register   both hosts appear in /godwit/hosts/ with addr and capacities
#   agent-create     spec + owner "a 1": agent a starts the VM (status running,
#                    host a, epoch 1); the guest's memtest reports with errors=0
#   agent-socket     a's local API (GET /v1/host, /v1/vms) lists the VM
#   agent-metrics    a's GET /metrics (format checked, tests/kvm/promcheck.py): lease
#                    alive, not fenced, its VMs by state as `godwit fleet ls --json`
#                    counts them for host a, reconcile iterations and etcd requests
#                    moving between two scrapes
#   agent-guard      the VM runs with godwit run --fleet-lease (the host lease
#                    guard), holding a's lease, not fenced
#   agent-refuse     a prepare request that no intent asked for is refused
#                    (ok:false, the reason) and starts nothing
#   agent-garbage    bad records in etcd (owner, spec, args, intent, host) and bad
#                    requests on b's port (plain text, broken TLS, bad JSON, bad
#                    fields, a line over 64 KiB, a NUL, no newline): both agents
#                    live on, the bad specs get status "failed", nothing starts
#   agent-adopt      kill -9 of agent a, a new agent a: the same VM process
#                    (pid) is adopted, still running, its status updated
#   agent-fence      etcd stopped (SIGSTOP) past 2/3 of the lease: a's VM is
#                    stopped (process state T); etcd back: it runs on
#   agent-metrics-fence  meanwhile a's metrics say fenced, and its etcd errors grew
#   agent-newlease   a's lease revoked (etcdctl lease revoke): a takes a new one
#                    and hands it to its VM's guard (PUT /vm/fleet-lease): the
#                    VM, same process, not fenced, runs on
#   agent-migrate    intent migrate to b: owner "b 2", status host b running,
#                    the migration record "done", the intent deleted, the VM
#                    runs on b with memtest errors=0 and advancing, a's process
#                    gone
#   agent-migrate-fail  intent migrate to a host that is not alive: the
#                    migration record "failed" naming it, the intent deleted, the
#                    VM runs on at b
#   agent-metrics-migrations  a (restarted at agent-adopt) counts 1 migration
#                    started and completed, b 1 started and failed; b's VMs by state
#                    as fleet ls counts them
#   agent-stop       intent stop: status "stopped", the process gone, intent
#                    deleted
#   agent-hostlost   a "restart: always" VM on b; b's agent and VM killed: once
#                    b's lease expired, a takes it ("b 1" -> "a 2") and starts it
#                    cold; the stopped VM (restart never) stays b's
#   agent-sigterm    SIGTERM: the agent exits 0 (no sanitizer report), its VM runs on
#   agent-remigrate  the same VM migrated again to b: veto/E of the failed attempt
#                    is there, so a moves the owner "a 1" -> "a 2" first; then
#                    "a 2" -> "b 3", the VM runs on b, memtest errors=0
#   agent-adopt-gate the VM (now on b) migrated to a, throttled; b's agent killed -9
#                    during the copy and started again: it adopts the VM, which
#                    reaches the commit gate with nobody to decide; the new agent
#                    settles it from owner/veto (abort and resume; the migration
#                    record "failed", the intent deleted): the VM ends running on
#                    exactly one host, the one the owner names, memtest errors=0
#   agent-cli        godwit fleet create vm4 --on b, fleet migrate vm4 --to a (owner
#                    "a 2", memtest on a), fleet stop vm4: each exits 0
#   agent-sanitizer  at the end: no sanitizer report in either agent's log
#   agent-gate-veto  agents a (its etcd through tcpgate.py) and b again; a migrates
#                    the VM (throttled) to b, and a's etcd is cut during the copy:
#                    a's VM waits at the commit gate, a is fenced, b's incoming VM
#                    sees no COMMIT, b writes veto/E and discards it; etcd back: a
#                    (its COMMIT transaction unanswered, or refused once the veto
#                    is there) reads owner "a E" and the veto, aborts, the VM runs on at a
#                    (same process, memtest errors=0), owner unchanged
# AGENT_LOGS=DIR keeps the logs.  Needs etcd, etcdctl, jq, curl and a godwit with
# the commit gate.
. "$(dirname "$0")/../lib.sh"
. "$ROOT/tests/kvm/lib-vm.sh"
. "$ROOT/tests/kvm/lib-migrate.sh"
. "$ROOT/tests/kvm/lib-agent.sh"     # GODWITD, freeport, etcd (agent_etcd_up, ectl, eget, efield)
. "$ROOT/tests/kvm/lib-prom.sh"

t_need_kvm agent || exit 0
for b in etcd etcdctl jq; do
	if ! command -v "$b" >/dev/null; then
		t_fail agent "$b is not installed (make deps)"
		exit 0
	fi
done

PA=$(freeport) PB=$(freeport)
if ! agent_etcd_up; then
	t_fail agent "$AGENT_ERR"
	exit 0
fi

# AGENT_LOGS=DIR keeps the agents' and etcd's logs and the consoles there.
cleanup_agent() {
	local f
	if [ -n "${AGENT_LOGS:-}" ]; then
		mkdir -p "$AGENT_LOGS"
		cp "$T_TMP"/*.log "$AGENT_LOGS"/ 2>/dev/null
		for f in "$T_TMP"/[ab]/vms/*/console.log; do
			[ -f "$f" ] && cp "$f" "$AGENT_LOGS/$(basename "$(dirname "$(dirname "$(dirname "$f")")")")-$(basename "$(dirname "$f")")-console.log"
		done
	fi
	[ -n "${A_PID:-}" ] && kill -9 "$A_PID" 2>/dev/null
	[ -n "${B_PID:-}" ] && kill -9 "$B_PID" 2>/dev/null
	rm -f "$T_TMP/cut"
	for f in "$T_TMP"/a/vms/*/pid "$T_TMP"/b/vms/*/pid; do
		[ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
	done
	[ -n "${E_PID:-}" ] && { kill -CONT "$E_PID"; kill "$E_PID"; } 2>/dev/null
	t_cleanup
}
trap cleanup_agent EXIT

# ---- usage ----
if "$GODWITD" --help | grep -q -- '--migration-ports' &&
   ! "$GODWITD" --etcd "$URL" --state-dir /tmp/x --listen 127.0.0.1:1 2>/dev/null; then
	rc1=0
	"$GODWITD" --host a --etcd "$URL" --state-dir /tmp/x --listen 198.18.0.1:7000 \
		2>"$T_TMP/usage.err" || rc1=$?
	if [ "$rc1" = 2 ] && grep -q 'not a loopback address' "$T_TMP/usage.err"; then
		t_pass agent-usage
	else
		t_fail agent-usage "--listen beyond loopback: exit $rc1: $(head -c 200 "$T_TMP/usage.err")"
	fi
else
	t_fail agent-usage "--help or the missing --host check"
fi

# ---- certificates, agents ----
agent_certs a b

TTL=6
start_agent() {   # NAME PORT PORTS
	mkdir -p "$T_TMP/$1"
	"$GODWITD" --host "$1" --etcd "$URL" --state-dir "$T_TMP/$1" --listen "127.0.0.1:$2" \
		--tls-dir "$T_TMP/certs/$1" --lease-ttl $TTL --migration-ports "$3" \
		--mem-capacity 4G --cpu-capacity 8 --godwit "$GODWIT" -v \
		</dev/null >>"$T_TMP/$1.log" 2>&1 &
	eval "${1^^}_PID=$!"
}
start_agent a "$PA" 49710-49729
start_agent b "$PB" 49730-49749
ok=1
for h in a b; do
	for ((i = 0; i < 50; i++)); do [ -n "$(eget /godwit/hosts/$h)" ] && break; sleep 0.1; done
	[ "$(efield /godwit/hosts/$h addr)" = "127.0.0.1:$([ $h = a ] && echo "$PA" || echo "$PB")" ] || ok=0
	[ "$(efield /godwit/hosts/$h mem_capacity)" = 4294967296 ] || ok=0
done
if [ $ok = 1 ]; then
	t_pass agent-register
else
	t_fail agent-register "hosts: $(ectl get --prefix /godwit/hosts/ | tr '\n' ' ' | head -c 300); a: $(tail -c 300 "$T_TMP/a.log")"
	exit 0
fi

# ---- create ----
SPEC=$(jq -nc --arg k "$GUEST_ELF" --arg c "$CMDLINE" \
	'{name: "vm1", mem: 134217728, cpus: 1, restart: "never", created: "now",
	  args: ["--kernel", $k, "--mem", "128M", "--cpus", "1", "--cmdline", $c]}')
ectl put /godwit/vms/vm1/spec "$SPEC" >/dev/null
ectl put /godwit/vms/vm1/owner "a 1" >/dev/null
CON_A=$T_TMP/a/vms/vm1/console.log
CON_B=$T_TMP/b/vms/vm1/console.log
for ((i = 0; i < 100; i++)); do [ "$(efield /godwit/vms/vm1/status state)" = running ] && break; sleep 0.1; done
PID1=$(efield /godwit/vms/vm1/status pid)
if [ "$(efield /godwit/vms/vm1/status host)" != a ] ||
   [ "$(efield /godwit/vms/vm1/status epoch)" != 1 ] || [ -z "$PID1" ]; then
	t_fail agent-create "status: $(eget /godwit/vms/vm1/status); a: $(tail -c 300 "$T_TMP/a.log")"
	exit 0
elif ! wait_reports "$CON_A" 3 20 || [ -n "$(guest_errors "$CON_A")" ]; then
	t_fail agent-create "memtest: $(tail -c 300 "$CON_A")"
	exit 0
else
	t_pass agent-create
fi

# ---- local socket ----
h=$(curl -s --unix-socket "$T_TMP/a/godwitd.sock" http://localhost/v1/host)
v=$(curl -s --unix-socket "$T_TMP/a/godwitd.sock" http://localhost/v1/vms)
if [ "$(jq -r .name <<<"$h")" = a ] && [ "$(jq -r .fenced <<<"$h")" = false ] &&
   [ "$(jq -r '.vms[0].name' <<<"$v")" = vm1 ] && [ "$(jq -r '.vms[0].pid' <<<"$v")" = "$PID1" ] &&
   [ "$(stat -c %a "$T_TMP/a/godwitd.sock")" = 600 ]; then
	t_pass agent-socket
else
	t_fail agent-socket "host: $h; vms: $v"
fi
# the VM runs with the host lease guard (godwit run --fleet-lease), given a's lease
g=$(curl -s --unix-socket "$T_TMP/a/vms/vm1/api.sock" http://localhost/api/v1/vm)
lease_a=$(cat "$T_TMP/a/lease")   # jq would round the 64-bit ID of etcd's JSON
if [ -n "$lease_a" ] && [ "$(jq -r '.fleet_lease.lease' <<<"$g")" = "$lease_a" ] &&
   [ "$(jq -r '.fleet_lease.fenced' <<<"$g")" = false ]; then
	t_pass agent-guard
else
	t_fail agent-guard "lease $lease_a; VM: $(head -c 300 <<<"$g")"
fi

# agent_vms HOST OUT: HOST's GET /metrics into OUT (prom_scrape), its VMs by state (those
# with a process: starting, running, migrating, paused, in-doubt) compared with what
# `godwit fleet ls --json` says of the VMs owned by HOST.  False with WHY.
agent_vms() {
	local ls st n m
	prom_scrape "$T_TMP/$1/godwitd.sock" "$2" || { WHY=$PROM_ERR; return 1; }
	# (stderr: the garbage records agent-garbage left, which fleet ls names and leaves out)
	ls=$(timeout 20 "$GODWIT" fleet --etcd "$URL" ls --json 2>"$T_TMP/ls.err") ||
		{ WHY="fleet ls: $(head -c 300 "$T_TMP/ls.err")"; return 1; }
	for st in starting running migrating paused in-doubt; do
		n=$(jq --arg h "$1" --arg s "$st" '[.[] | select(.host == $h and .state == $s)] | length' <<<"$ls")
		m=$(prom_val "$2" godwit_agent_vms state="$st")
		[ "$n" = "$m" ] || { WHY="$1's VMs $st: fleet ls $n, metrics $m: $ls"; return 1; }
	done
	WHY=
}
# ---- metrics ----
if ! agent_vms a "$T_TMP/am1.json"; then
	t_fail agent-metrics "$WHY"
else
	sleep 0.7
	if ! prom_scrape "$T_TMP/a/godwitd.sock" "$T_TMP/am2.json"; then
		t_fail agent-metrics "second scrape: $PROM_ERR"
	else
		r1=$(prom_val "$T_TMP/am1.json" godwit_agent_reconcile_duration_seconds_count)
		r2=$(prom_val "$T_TMP/am2.json" godwit_agent_reconcile_duration_seconds_count)
		e1=$(prom_val "$T_TMP/am1.json" godwit_agent_etcd_requests_total)
		e2=$(prom_val "$T_TMP/am2.json" godwit_agent_etcd_requests_total)
		got="alive=$(prom_val "$T_TMP/am2.json" godwit_agent_lease_alive)"
		got+=" fenced=$(prom_val "$T_TMP/am2.json" godwit_agent_fenced)"
		got+=" running=$(prom_val "$T_TMP/am2.json" godwit_agent_vms state=running)"
		got+=" started=$(prom_val "$T_TMP/am2.json" godwit_agent_migrations_started_total)"
		if [ "$got" != "alive=1 fenced=0 running=1 started=0" ]; then
			t_fail agent-metrics "$got"
		elif ! [ "$r2" -ge $((r1 + 1)) ] 2>/dev/null || ! [ "$e2" -gt "$e1" ] ||
			! jq -en "$(prom_val "$T_TMP/am2.json" godwit_agent_reconcile_duration_seconds_sum) > 0" >/dev/null; then
			t_fail agent-metrics "reconcile iterations $r1 -> $r2, etcd requests $e1 -> $e2 in 0.7 s"
		else
			t_pass agent-metrics
		fi
	fi
fi

# ---- a prepare nobody asked for ----
rep=$(python3 - "$T_TMP/certs/a" "$PB" <<'EOF'
import json, socket, ssl, sys
d, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(d + "/ca.pem")
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
ctx.check_hostname = False
with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    with ctx.wrap_socket(s) as t:
        t.sendall(json.dumps({"op": "prepare", "vm": "vm1", "from": "a", "epoch": 1,
                              "token": "nobody-asked"}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            r = t.recv(65536)
            if not r:
                break
            buf += r
        # tls.c's server first confirms the client's certificate (8 bytes, GWTLS-OK)
        if buf.startswith(b"GWTLS-OK"):
            buf = buf[8:]
        print(buf.decode().strip())
EOF
)
if [ "$(jq -r .ok <<<"$rep" 2>/dev/null)" = false ] && grep -q 'no migration' <<<"$rep" &&
   [ ! -e "$T_TMP/b/vms/vm1/pid" ]; then
	t_pass agent-refuse
else
	t_fail agent-refuse "reply: $rep"
fi

# ---- garbage in etcd and on the agents' port ----
ectl put /godwit/vms/junk1/owner "garbage" >/dev/null
ectl put /godwit/vms/junk2/spec "not json" >/dev/null
ectl put /godwit/vms/junk2/owner "a 1" >/dev/null
ectl put /godwit/vms/junk3/spec '{"args": "--mem 64M", "mem": "x"}' >/dev/null
ectl put /godwit/vms/junk3/owner "a 1" >/dev/null
ectl put /godwit/vms/junk4/spec '{"args": ["--api", "/tmp/x"]}' >/dev/null
ectl put /godwit/vms/junk4/owner "a 1" >/dev/null
ectl put /godwit/vms/junk4/intent '{"op": 5}' >/dev/null
ectl put '/godwit/vms/../owner' "a 1" >/dev/null
ectl put /godwit/hosts/zzz '[1, 2]' >/dev/null
python3 - "$T_TMP/certs/a" "$PB" <<'EOF2'
import json, socket, ssl, sys, time
d, port = sys.argv[1], int(sys.argv[2])
def tls():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(d + "/ca.pem")
    ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
    ctx.check_hostname = False
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15))
for payload in [b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01" + b"\xff" * 300]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.recv(100)
    except OSError:
        pass
for line in [b"{}\n", b"[1,2]\n", b"{\"op\":\"prepare\",\"vm\":\"../x\",\"from\":\"a\",\"epoch\":1,\"token\":\"t\"}\n",
             b"{\"op\":\"prepare\",\"vm\":\"vm1\",\"from\":\"a\",\"epoch\":-1,\"token\":\"t\",\"x\":1}\n",
             b"x" * 70000 + b"\n", b"\x00\n", b"{\"op\":\"prepare\""]:
    try:
        t = tls()
        t.sendall(line)
        t.recv(65536)
        t.close()
    except OSError:
        pass
EOF2
sleep 1.5
if kill -0 "$A_PID" 2>/dev/null && kill -0 "$B_PID" 2>/dev/null &&
   [ "$(efield /godwit/vms/junk3/status state)" = failed ] &&
   [ "$(efield /godwit/vms/junk4/status state)" = failed ] &&
   [ "$(efield /godwit/vms/vm1/status state)" = running ] && ! ls "$T_TMP/b/vms" | grep -q . &&
   grep -q 'bad request' "$T_TMP/b.log"; then
	t_pass agent-garbage
else
	t_fail agent-garbage "agents alive: $(kill -0 "$A_PID" && echo a) $(kill -0 "$B_PID" && echo b); junk3 $(eget /godwit/vms/junk3/status); junk4 $(eget /godwit/vms/junk4/status); b: $(tail -c 300 "$T_TMP/b.log")"
fi
ectl del --prefix /godwit/vms/junk >/dev/null
ectl del /godwit/vms/../owner /godwit/hosts/zzz >/dev/null

# ---- adoption ----
kill -9 "$A_PID"
wait "$A_PID" 2>/dev/null
sleep 1
start_agent a "$PA" 49710-49729
t_wait_for "$T_TMP/a.log" 'VM vm1: adopted' 10
sleep 1
v=$(curl -s --unix-socket "$T_TMP/a/godwitd.sock" http://localhost/v1/vms)
if [ "$(jq -r '.vms[0].pid' <<<"$v")" = "$PID1" ] && [ "$(jq -r '.vms[0].adopted' <<<"$v")" = true ] &&
   kill -0 "$PID1" 2>/dev/null && [ "$(efield /godwit/vms/vm1/status pid)" = "$PID1" ] &&
   [ "$(efield /godwit/vms/vm1/status state)" = running ] &&
   n=$(reports "$CON_A") && wait_reports "$CON_A" $((n + 2)) 10; then
	t_pass agent-adopt
else
	t_fail agent-adopt "vms: $v; status: $(eget /godwit/vms/vm1/status); a: $(tail -c 400 "$T_TMP/a.log")"
fi

# ---- fencing (rule 5) ----
prom_scrape "$T_TMP/a/godwitd.sock" "$T_TMP/af1.json"
kill -STOP "$E_PID"
fenced=0
for ((i = 0; i < 100; i++)); do
	if grep -q '^State:.*T' "/proc/$PID1/status" 2>/dev/null; then fenced=1; break; fi
	sleep 0.1
done
if ! prom_scrape "$T_TMP/a/godwitd.sock" "$T_TMP/af2.json"; then
	t_fail agent-metrics-fence "$PROM_ERR"
elif [ "$(prom_val "$T_TMP/af2.json" godwit_agent_fenced)" != 1 ] ||
	! [ "$(prom_val "$T_TMP/af2.json" godwit_agent_etcd_errors_total)" -gt \
	    "$(prom_val "$T_TMP/af1.json" godwit_agent_etcd_errors_total)" ]; then
	t_fail agent-metrics-fence "fenced $(prom_val "$T_TMP/af2.json" godwit_agent_fenced), etcd errors $(prom_val "$T_TMP/af1.json" godwit_agent_etcd_errors_total) -> $(prom_val "$T_TMP/af2.json" godwit_agent_etcd_errors_total)"
else
	t_pass agent-metrics-fence
fi
kill -CONT "$E_PID"
running=0
for ((i = 0; i < 100; i++)); do
	if grep -q '^State:.*[SR]' "/proc/$PID1/status" 2>/dev/null; then running=1; break; fi
	sleep 0.1
done
if [ $fenced = 1 ] && [ $running = 1 ] && grep -q 'FENCED' "$T_TMP/a.log" &&
   n=$(reports "$CON_A") && wait_reports "$CON_A" $((n + 2)) 10 && [ -z "$(guest_errors "$CON_A")" ]; then
	t_pass agent-fence
else
	t_fail agent-fence "stopped=$fenced continued=$running: $(grep -a 'FENCED\|SIGCONT\|killed' "$T_TMP/a.log" | tail -n 3)"
fi
# let the agents see etcd again
for ((i = 0; i < 50; i++)); do [ -n "$(eget /godwit/hosts/a)" ] && break; sleep 0.2; done

# ---- a's lease revoked: a new one, handed to the VM's guard ----
old_lease=$(cat "$T_TMP/a/lease")
ectl lease revoke "$(printf '%x' "$old_lease")" >/dev/null
for ((i = 0; i < 100; i++)); do
	[ "$(cat "$T_TMP/a/lease")" != "$old_lease" ] && grep -q 'VM vm1: given the new host lease' "$T_TMP/a.log" && break
	sleep 0.1
done
sleep 1
new_lease=$(cat "$T_TMP/a/lease")
g=$(curl -s --unix-socket "$T_TMP/a/vms/vm1/api.sock" http://localhost/api/v1/vm)
n=$(reports "$CON_A")
if [ "$new_lease" != "$old_lease" ] && [ "$(jq -r '.fleet_lease.lease' <<<"$g")" = "$new_lease" ] &&
   [ "$(jq -r '.fleet_lease.fenced' <<<"$g")" = false ] && [ "$(eget /godwit/vms/vm1/owner)" = "a 1" ] &&
   kill -0 "$PID1" 2>/dev/null && wait_reports "$CON_A" $((n + 2)) 10 && [ -z "$(guest_errors "$CON_A")" ]; then
	t_pass agent-newlease
else
	t_fail agent-newlease "lease $old_lease -> $new_lease; VM: $(jq -c .fleet_lease <<<"$g"); a: $(grep -a 'lease\|vm1' "$T_TMP/a.log" | tail -n 3 | tr '\n' '|')"
fi

# ---- migration ----
ectl put /godwit/vms/vm1/intent '{"op":"migrate","to":"b","token":"t-agent-1","id":"m1"}' >/dev/null
for ((i = 0; i < 300; i++)); do
	[ "$(eget /godwit/vms/vm1/owner)" = "b 2" ] && [ "$(efield /godwit/vms/vm1/status host)" = b ] &&
		[ "$(efield /godwit/vms/vm1/status state)" = running ] && break
	sleep 0.1
done
for ((i = 0; i < 100; i++)); do [ -z "$(eget /godwit/vms/vm1/intent)" ] && break; sleep 0.1; done
PID2=$(efield /godwit/vms/vm1/status pid)
if [ "$(eget /godwit/vms/vm1/owner)" != "b 2" ] || [ "$(efield /godwit/vms/vm1/status host)" != b ] ||
   [ "$(efield /godwit/vms/vm1/status epoch)" != 2 ]; then
	t_fail agent-migrate "owner $(eget /godwit/vms/vm1/owner); migration $(eget /godwit/vms/vm1/migration | head -c 300); a: $(grep -a vm1 "$T_TMP/a.log" | tail -n 3); b: $(grep -a vm1 "$T_TMP/b.log" | tail -n 3)"
elif [ "$(efield /godwit/vms/vm1/migration phase)" != done ] || [ -n "$(eget /godwit/vms/vm1/intent)" ]; then
	t_fail agent-migrate "migration record $(eget /godwit/vms/vm1/migration | head -c 300), intent $(eget /godwit/vms/vm1/intent)"
elif ! wait_reports "$CON_B" 3 20 || [ -n "$(guest_errors "$CON_B")" ]; then
	t_fail agent-migrate "memtest on b: $(tail -c 300 "$CON_B")"
elif wait_exit "$PID1" 15 >/dev/null; [ -d "/proc/$PID1" ]; then
	t_fail agent-migrate "the source process $PID1 still runs"
else
	t_pass agent-migrate
fi

# ---- a migration that cannot happen ----
ectl put /godwit/vms/vm1/intent '{"op":"migrate","to":"c","token":"t-agent-2","id":"m2"}' >/dev/null
for ((i = 0; i < 100; i++)); do [ -z "$(eget /godwit/vms/vm1/intent)" ] && break; sleep 0.1; done
n=$(reports "$CON_B")
if [ "$(efield /godwit/vms/vm1/migration id)" = m2 ] &&
   [ "$(efield /godwit/vms/vm1/migration phase)" = failed ] &&
   efield /godwit/vms/vm1/migration error | grep -q 'host c is not alive' &&
   [ "$(eget /godwit/vms/vm1/owner)" = "b 2" ] && wait_reports "$CON_B" $((n + 2)) 10 &&
   [ "$(efield /godwit/vms/vm1/status state)" = running ]; then
	t_pass agent-migrate-fail
else
	t_fail agent-migrate-fail "migration $(eget /godwit/vms/vm1/migration | head -c 300); status $(eget /godwit/vms/vm1/status)"
fi

# ---- the migrations counted ----
got=
for h in a b; do
	prom_scrape "$T_TMP/$h/godwitd.sock" "$T_TMP/mm-$h.json" || got+=" $h: $PROM_ERR"
	got+=" $h:$(prom_val "$T_TMP/mm-$h.json" godwit_agent_migrations_started_total)"
	for r in completed failed aborted; do
		got+=",$(prom_val "$T_TMP/mm-$h.json" godwit_agent_migrations_ended_total result=$r)"
	done
done
if [ "$got" != " a:1,1,0,0 b:1,0,1,0" ]; then
	t_fail agent-metrics-migrations "started,completed,failed,aborted:$got (expected a:1,1,0,0 b:1,0,1,0)"
elif ! agent_vms b "$T_TMP/mm-b2.json"; then
	t_fail agent-metrics-migrations "$WHY"
else
	t_pass agent-metrics-migrations
fi

# ---- stop ----
ectl put /godwit/vms/vm1/intent '{"op":"stop"}' >/dev/null
for ((i = 0; i < 300; i++)); do [ "$(efield /godwit/vms/vm1/status state)" = stopped ] && break; sleep 0.1; done
sleep 0.5
if [ "$(efield /godwit/vms/vm1/status state)" = stopped ] && [ -z "$(eget /godwit/vms/vm1/intent)" ] &&
   { [ -z "$PID2" ] || ! kill -0 "$PID2" 2>/dev/null; }; then
	t_pass agent-stop
else
	t_fail agent-stop "status $(eget /godwit/vms/vm1/status); b: $(tail -c 300 "$T_TMP/b.log")"
fi

# ---- host lost (rule 6) ----
SPEC2=$(jq -c '.name = "vm2" | .restart = "always"' <<<"$SPEC")
ectl put /godwit/vms/vm2/spec "$SPEC2" >/dev/null
ectl put /godwit/vms/vm2/owner "b 1" >/dev/null
for ((i = 0; i < 100; i++)); do [ "$(efield /godwit/vms/vm2/status state)" = running ] && break; sleep 0.1; done
P3=$(efield /godwit/vms/vm2/status pid)
if [ "$(efield /godwit/vms/vm2/status host)" != b ] || [ -z "$P3" ]; then
	t_fail agent-hostlost "vm2 did not start on b: $(eget /godwit/vms/vm2/status)"
	exit 0
fi
# b is lost: its agent and its VM die at once
kill -9 "$B_PID" "$P3"
wait "$B_PID" 2>/dev/null
B_PID=
for ((i = 0; i < 200; i++)); do
	[ "$(eget /godwit/vms/vm2/owner)" = "a 2" ] && [ "$(efield /godwit/vms/vm2/status state)" = running ] && break
	sleep 0.1
done
if [ "$(eget /godwit/vms/vm2/owner)" = "a 2" ] && [ "$(efield /godwit/vms/vm2/status host)" = a ] &&
   [ -z "$(eget /godwit/hosts/b)" ] && wait_reports "$T_TMP/a/vms/vm2/console.log" 2 20 &&
   [ "$(eget /godwit/vms/vm1/owner)" = "b 2" ]; then
	t_pass agent-hostlost
else
	t_fail agent-hostlost "vm2 owner $(eget /godwit/vms/vm2/owner), status $(eget /godwit/vms/vm2/status | head -c 200); a: $(tail -c 300 "$T_TMP/a.log")"
fi

# ---- SIGTERM: the agent stops, its VMs do not ----
P4=$(efield /godwit/vms/vm2/status pid)
kill -TERM "$A_PID"
rc=0
wait_exit "$A_PID" 10 || rc=$?
A_PID=
if [ "$rc" = 0 ] && [ -n "$P4" ] && kill -0 "$P4" 2>/dev/null &&
   ! grep -q 'Sanitizer' "$T_TMP/a.log" && grep -q 'stopping (the VMs keep running)' "$T_TMP/a.log"; then
	t_pass agent-sigterm
else
	t_fail agent-sigterm "exit status $rc, VM pid ${P4:-none}: $(tail -c 300 "$T_TMP/a.log")"
fi

# ---- the source cut from etcd at the gate: veto, abort (rules 3, 4, 5) ----
GP=$(freeport)
python3 "$ROOT/tests/kvm/tcpgate.py" "$GP" "${URL##*:}" "$T_TMP/cut" >"$T_TMP/gate.log" 2>&1 &
t_wait_for "$T_TMP/gate.log" listening 5
URL_A=http://127.0.0.1:$GP
start_agent_url() {   # NAME PORT PORTS URL
	"$GODWITD" --host "$1" --etcd "$4" --state-dir "$T_TMP/$1" --listen "127.0.0.1:$2" \
		--tls-dir "$T_TMP/certs/$1" --lease-ttl $TTL --migration-ports "$3" \
		--mem-capacity 4G --cpu-capacity 8 --godwit "$GODWIT" -v \
		</dev/null >>"$T_TMP/$1.log" 2>&1 &
	eval "${1^^}_PID=$!"
}
start_agent_url a "$PA" 49710-49729 "$URL_A"
start_agent_url b "$PB" 49730-49749 "$URL"
for ((i = 0; i < 50; i++)); do [ -n "$(eget /godwit/hosts/a)" ] && [ -n "$(eget /godwit/hosts/b)" ] && break; sleep 0.2; done
# vm2 (restart "always") would go to b by rule 6 during a cut longer than the TTL: stop it
ectl put /godwit/vms/vm2/intent '{"op":"stop"}' >/dev/null
for ((i = 0; i < 200; i++)); do [ "$(efield /godwit/vms/vm2/status state)" = stopped ] && break; sleep 0.1; done
# a VM with restart "never": a cut longer than the TTL must not hand it to b (rule 6)
SPEC3=$(jq -c '.name = "vm3"' <<<"$SPEC")
ectl put /godwit/vms/vm3/spec "$SPEC3" >/dev/null
ectl put /godwit/vms/vm3/owner "a 1" >/dev/null
CON2=$T_TMP/a/vms/vm3/console.log
for ((i = 0; i < 100; i++)); do [ "$(efield /godwit/vms/vm3/status state)" = running ] && break; sleep 0.1; done
P4=$(efield /godwit/vms/vm3/status pid)
wait_reports "$CON2" 3 20
ectl put /godwit/vms/vm3/intent '{"op":"migrate","to":"b","token":"t-agent-3","id":"m3","max_bandwidth":67108864}' >/dev/null
cut=0
for ((i = 0; i < 200; i++)); do
	if [ "$(efield /godwit/vms/vm3/migration id)" = m3 ] &&
	   [ "$(efield /godwit/vms/vm3/migration phase)" = copying ]; then
		touch "$T_TMP/cut"
		cut=1
		break
	fi
	sleep 0.05
done
vetoed=0
if [ $cut = 1 ]; then
	for ((i = 0; i < 300; i++)); do
		[ "$(eget /godwit/vms/vm3/veto/1)" = b ] && { vetoed=1; break; }
		sleep 0.1
	done
	sleep 1
fi
rm -f "$T_TMP/cut"
for ((i = 0; i < 200; i++)); do [ "$(efield /godwit/vms/vm3/migration phase)" = failed ] && break; sleep 0.1; done
n=$(reports "$CON2")
if [ $cut = 1 ] && [ $vetoed = 1 ] && [ "$(eget /godwit/vms/vm3/owner)" = "a 1" ] &&
   [ "$(efield /godwit/vms/vm3/migration phase)" = failed ] && kill -0 "$P4" 2>/dev/null &&
   wait_reports "$CON2" $((n + 3)) 15 && [ -z "$(guest_errors "$CON2")" ] &&
   grep -q 'etcd unreachable at the commit gate\|COMMIT transaction "a 1" -> "b 2" failed' "$T_TMP/a.log" &&
   [ ! -e "$T_TMP/b/vms/vm3/pid" ]; then
	t_pass agent-gate-veto
else
	t_fail agent-gate-veto "cut=$cut vetoed=$vetoed owner $(eget /godwit/vms/vm3/owner); migration $(eget /godwit/vms/vm3/migration | head -c 200); a: $(grep -a 'vm3\|FENCE' "$T_TMP/a.log" | tail -n 4 | tr '\n' '|'); b: $(grep -a vm3 "$T_TMP/b.log" | tail -n 3 | tr '\n' '|')"
fi

# ---- migrating again after a veto: the owner moves "a 1" -> "a 2" first ----
for ((i = 0; i < 100; i++)); do [ -z "$(eget /godwit/vms/vm3/intent)" ] && break; sleep 0.1; done
ectl put /godwit/vms/vm3/intent '{"op":"migrate","to":"b","token":"t-agent-4","id":"m4"}' >/dev/null
for ((i = 0; i < 300; i++)); do
	[ "$(efield /godwit/vms/vm3/migration id)" = m4 ] &&
		[ "$(efield /godwit/vms/vm3/migration phase)" = done ] &&
		[ "$(efield /godwit/vms/vm3/status host)" = b ] && break
	sleep 0.1
done
if [ "$(eget /godwit/vms/vm3/owner)" = "b 3" ] && [ "$(efield /godwit/vms/vm3/status state)" = running ] &&
   [ "$(efield /godwit/vms/vm3/migration epoch)" = 2 ] &&
   wait_reports "$T_TMP/b/vms/vm3/console.log" 3 20 &&
   [ -z "$(guest_errors "$T_TMP/b/vms/vm3/console.log")" ]; then
	t_pass agent-remigrate
else
	t_fail agent-remigrate "owner $(eget /godwit/vms/vm3/owner); migration $(eget /godwit/vms/vm3/migration | head -c 200); a: $(grep -a vm3 "$T_TMP/a.log" | tail -n 3 | tr '\n' '|')"
fi

# ---- the source's agent killed mid-migration: adopted, settled at the gate ----
ectl put /godwit/vms/vm3/intent '{"op":"migrate","to":"a","token":"t-agent-5","id":"m5","max_bandwidth":50331648}' >/dev/null
killed=0
for ((i = 0; i < 200; i++)); do
	if [ "$(efield /godwit/vms/vm3/migration id)" = m5 ] &&
	   [ "$(efield /godwit/vms/vm3/migration phase)" = copying ]; then
		kill -9 "$B_PID"
		killed=1
		break
	fi
	sleep 0.05
done
if [ $killed = 1 ]; then
	wait "$B_PID" 2>/dev/null
	start_agent_url b "$PB" 49730-49749 "$URL"
fi
for ((i = 0; i < 400; i++)); do [ -z "$(eget /godwit/vms/vm3/intent)" ] && break; sleep 0.1; done
sleep 1
own=$(eget /godwit/vms/vm3/owner)
host=${own% *}
con=$T_TMP/$host/vms/vm3/console.log
alive=0
for f in "$T_TMP"/a/vms/vm3/pid "$T_TMP"/b/vms/vm3/pid; do
	[ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=$((alive + 1))
done
n=$(reports "$con")
if [ $killed = 1 ] && grep -q 'VM vm3: adopted' "$T_TMP/b.log" && [ -z "$(eget /godwit/vms/vm3/intent)" ] &&
   [ "$(efield /godwit/vms/vm3/migration phase)" = failed ] &&
   [ "$(efield /godwit/vms/vm3/status host)" = "$host" ] &&
   [ "$(efield /godwit/vms/vm3/status state)" = running ] && [ $alive = 1 ] &&
   wait_reports "$con" $((n + 2)) 10 && [ -z "$(guest_errors "$con")" ]; then
	t_pass agent-adopt-gate
else
	t_fail agent-adopt-gate "killed=$killed owner $own, $alive process(es); status $(eget /godwit/vms/vm3/status | head -c 150); migration $(eget /godwit/vms/vm3/migration | head -c 200); b: $(grep -a 'vm3' "$T_TMP/b.log" | tail -n 4 | tr '\n' '|')"
fi

# ---- the same through `godwit fleet` (create, migrate, stop) ----
fl() { timeout 90 "$GODWIT" fleet --etcd "$URL" "$@" </dev/null >>"$T_TMP/fleet.out" 2>&1; }
rc_c=0 rc_m=0 rc_s=0
fl create vm4 --on b -- --kernel "$GUEST_ELF" --mem 128M --cpus 1 --cmdline "$CMDLINE" || rc_c=$?
fl migrate vm4 --to a || rc_m=$?
n=$(reports "$T_TMP/a/vms/vm4/console.log")
ok=0
[ "$(eget /godwit/vms/vm4/owner)" = "a 2" ] && [ "$(efield /godwit/vms/vm4/status host)" = a ] &&
	wait_reports "$T_TMP/a/vms/vm4/console.log" $((n + 2)) 10 &&
	[ -z "$(guest_errors "$T_TMP/a/vms/vm4/console.log")" ] && ok=1
fl stop vm4 || rc_s=$?
if [ $rc_c = 0 ] && [ $rc_m = 0 ] && [ $ok = 1 ] && [ $rc_s = 0 ] &&
   [ "$(efield /godwit/vms/vm4/status state)" = stopped ]; then
	t_pass agent-cli
else
	t_fail agent-cli "create $rc_c, migrate $rc_m (VM on a: $ok), stop $rc_s: $(tail -c 400 "$T_TMP/fleet.out")"
fi

# ---- no sanitizer report from any agent (make asan: GODWITD=build-asan/godwitd) ----
if grep -aq 'Sanitizer\|runtime error' "$T_TMP/a.log" "$T_TMP/b.log"; then
	t_fail agent-sanitizer "$(grep -ah -m 3 'Sanitizer\|runtime error' "$T_TMP/a.log" "$T_TMP/b.log" | tr '\n' '|')"
else
	t_pass agent-sanitizer
fi
