#!/bin/bash
# Tier 1: the host lease guard (guard.h; docs/fleet.md, rule 5).  One etcd member on
# free loopback ports; a lease granted through the gateway (TTL 10 s) plays the agent's host
# lease; the test guest (workload=mem) runs with --fleet-etcd/--fleet-lease:
#   fence-start       the VM runs once etcd renewed the lease (memtest lines advance,
#                     "fleet_lease" in GET /vm, state running), and its keep-alives keep
#                     the lease alive past its TTL with nobody else renewing it
#   fence-etcd-down   etcd frozen (SIGSTOP): within 2/3 of the TTL the VM is fenced (state
#                     "fenced", no memtest line for 0.6 s: 3 reports); etcd back before the TTL ran
#                     out: the VM runs again, errors=0; pause/resume while fenced does
#                     not let it run
#   fence-lease-gone  the lease revoked: fenced at once and for good (lease_gone), even
#                     through PUT /vm/resume; PUT /vm/fleet-lease with a new lease lifts it
#   fence-no-etcd     started with an etcd nobody answers at: it never runs a guest
#                     instruction (no console line at all), GET /vm says fenced
#   fence-usage       --fleet-lease without --fleet-etcd, a bad lease ID: exit 2
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=fence
t_need_guest $N || exit 0
ETCD=${ETCD:-/usr/bin/etcd}
[ -x "$ETCD" ] || { t_fail $N "no etcd at $ETCD (make deps installs etcd-server)"; exit 0; }
E_PID=
fence_cleanup() {
	[ -n "$E_PID" ] && { kill -CONT "$E_PID"; kill -KILL "$E_PID"; wait "$E_PID"; } 2>/dev/null
	t_cleanup
}
trap fence_cleanup EXIT

read -r CPORT PPORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
URL=http://127.0.0.1:$CPORT
"$ETCD" --name f --data-dir "$T_TMP/etcd" --listen-client-urls "$URL" --advertise-client-urls "$URL" \
	--listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
	--initial-cluster "f=http://127.0.0.1:$PPORT" </dev/null >"$T_TMP/etcd.log" 2>&1 &
E_PID=$!
ectl() { ETCDCTL_API=3 timeout 10 etcdctl --endpoints "$URL" "$@"; }
for ((i = 0; i < 100; i++)); do
	curl -s --max-time 1 "$URL/health" 2>/dev/null | grep -q '"health":"true"' && break
	sleep 0.1
done
# grant TTL: a new lease's ID (decimal).
grant() { curl -s --max-time 5 -X POST "$URL/v3/lease/grant" -d "{\"TTL\": $1}" | jq -r '.ID // empty'; }
# lease_ttl ID: what etcd says is left of the lease (-1: gone).
lease_ttl() { curl -s --max-time 5 -X POST "$URL/v3/lease/timetolive" -d "{\"ID\": \"$1\"}" | jq -r '.TTL // "-1"'; }
vmstate() { curl -s --max-time 5 --unix-socket "$1" http://g/api/v1/vm | jq -r "${2:-.state}"; }
# quiet FILE SECS: true if FILE gets no new memtest line for SECS seconds.
quiet() { local n; n=$(reports "$1"); sleep "$2"; [ "$(reports "$1")" -eq "$n" ]; }

# fence-usage
rc=0; "$GODWIT" run --kernel "$GUEST_ELF" --fleet-lease 5 >"$T_TMP/u1" 2>&1 || rc=$?
rc2=0; "$GODWIT" run --kernel "$GUEST_ELF" --fleet-etcd "$URL" --fleet-lease x5 >"$T_TMP/u2" 2>&1 || rc2=$?
if [ "$rc" = 2 ] && [ "$rc2" = 2 ] && grep -q 'go together' "$T_TMP/u1" && grep -q 'lease ID' "$T_TMP/u2"; then
	t_pass fence-usage
else
	t_fail fence-usage "exit $rc/$rc2: $(cat "$T_TMP/u1" "$T_TMP/u2" | head -4)"
fi

# fence-start
L=$(grant 10)
start_vm fa --mem 128M --cmdline "$CMDLINE" --fleet-etcd "$URL" --fleet-lease "$L"
A_SOCK=$S_SOCK A_OUT=$S_OUT A_PID=$S_PID
if wait_reports "$A_OUT" 3 20 && [ "$(vmstate "$A_SOCK")" = running ] &&
	[ "$(vmstate "$A_SOCK" .fleet_lease.lease)" = "$L" ]; then
	sleep 12    # beyond the TTL: only the VM renews it
	ttl=$(lease_ttl "$L")
	if [ "${ttl:--1}" -gt 0 ] && [ "$(vmstate "$A_SOCK")" = running ]; then
		t_pass fence-start
	else
		t_fail fence-start "lease TTL left $ttl after 12 s, state $(vmstate "$A_SOCK")"
	fi
else
	t_fail fence-start "no memtest lines or state $(vmstate "$A_SOCK"): $(tail -3 "$S_ERR")"
fi

# fence-etcd-down: TTL 10 s, renewed every 2.5 s: fenced 6.7 s after the last renewal, at
# most 6.7 s after etcd froze; etcd back about 0.8 s later, at least 2 s before it can
# expire the lease (renewed 0-2.5 s before the freeze).
kill -STOP "$E_PID"
t_stop=$SECONDS
for ((i = 0; i < 80; i++)); do
	[ "$(vmstate "$A_SOCK")" = fenced ] && break
	sleep 0.1
done
st=$(vmstate "$A_SOCK")
"$GODWIT" pause --api "$A_SOCK" >/dev/null 2>&1
"$GODWIT" resume --api "$A_SOCK" >/dev/null 2>&1
if [ "$st" = fenced ] && [ $((SECONDS - t_stop)) -ge 4 ] && quiet "$A_OUT" 0.6; then
	kill -CONT "$E_PID"
	if wait_count reports "$A_OUT" "$(($(reports "$A_OUT") + 2))" 15 &&
		[ "$(vmstate "$A_SOCK")" = running ] && [ -z "$(guest_errors "$A_OUT")" ] &&
		grep -q 'fenced' "$S_ERR"; then
		t_pass fence-etcd-down
	else
		t_fail fence-etcd-down "did not run again after etcd came back: $(vmstate "$A_SOCK" .fleet_lease) $(guest_errors "$A_OUT")"
	fi
else
	kill -CONT "$E_PID"
	t_fail fence-etcd-down "state $st $((SECONDS - t_stop)) s after etcd froze (fenced before 4 s?), or memtest lines went on"
fi

# fence-lease-gone
ectl lease revoke "$(printf '%x' "$L")" >/dev/null 2>&1
ok=1 why=
for ((i = 0; i < 50; i++)); do
	[ "$(vmstate "$A_SOCK" .fleet_lease.lease_gone)" = true ] && break
	sleep 0.1
done
[ "$(vmstate "$A_SOCK")" = fenced ] || { ok=0; why="state $(vmstate "$A_SOCK") after revoke"; }
"$GODWIT" resume --api "$A_SOCK" >/dev/null 2>&1
[ $ok = 1 ] && ! quiet "$A_OUT" 2 && { ok=0; why="memtest went on with the lease gone"; }
[ $ok = 1 ] && [ "$(vmstate "$A_SOCK")" != fenced ] && { ok=0; why="unfenced without a new lease"; }
if [ $ok = 1 ]; then
	L2=$(grant 10)
	rep=$(curl -s --max-time 5 --unix-socket "$A_SOCK" -X PUT http://g/api/v1/vm/fleet-lease -d "{\"lease\": \"$L2\"}")
	if ! wait_count reports "$A_OUT" "$(($(reports "$A_OUT") + 2))" 15 ||
		[ "$(vmstate "$A_SOCK")" != running ] || [ -n "$(guest_errors "$A_OUT")" ]; then
		ok=0 why="a new lease did not lift the fence: $rep"
	fi
	bad=$(curl -s --max-time 5 --unix-socket "$A_SOCK" -X PUT http://g/api/v1/vm/fleet-lease -d '{"lease": "-3"}')
	grep -q 'lease ID' <<<"$bad" || { ok=0; why="a bad lease ID was not refused: $bad"; }
fi
[ $ok = 1 ] && t_pass fence-lease-gone || t_fail fence-lease-gone "$why"
"$GODWIT" shutdown --api "$A_SOCK" >/dev/null 2>&1
wait "$A_PID" 2>/dev/null

# fence-no-etcd: nobody listens at the URL (a free port).
DEAD=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_vm fb --mem 128M --cmdline "$CMDLINE" --fleet-etcd "http://127.0.0.1:$DEAD" --fleet-lease 12345
for ((i = 0; i < 50; i++)); do [ -S "$S_SOCK" ] && break; sleep 0.1; done
sleep 3
if [ "$(vmstate "$S_SOCK")" = fenced ] && [ ! -s "$S_OUT" ] &&
	grep -q 'fenced' "$S_ERR"; then
	t_pass fence-no-etcd
else
	t_fail fence-no-etcd "state $(vmstate "$S_SOCK"), console: $(head -c 200 "$S_OUT")"
fi
kill "$S_PID" 2>/dev/null
wait "$S_PID" 2>/dev/null
exit 0

