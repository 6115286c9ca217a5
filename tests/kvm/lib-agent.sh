# shellcheck shell=bash disable=SC2034
# tests/kvm/lib-agent.sh - one etcd and godwitd agents on loopback, for the tests
# that need a small fleet without namespaces (t-agent.sh, t-fleet-page.sh).  Source tests/lib.sh
# first (ROOT, GODWIT, T_TMP).
#
#   freeport                 a free TCP port on 127.0.0.1
#   agent_etcd_up            etcd on loopback (URL, E_PID); false with AGENT_ERR if it
#                            did not become healthy
#   ectl ARGS...             etcdctl against it; eget KEY: the value; efield KEY FIELD:
#                            a field of the JSON at KEY
#   agent_certs H...         per-host TLS credentials in $T_TMP/certs/H (mkcerts.py)
#   agent_up H PORT PORTS [OPTS...]  godwitd for host H (state dir $T_TMP/H, log
#                            $T_TMP/H.log, mutual TLS, lease TTL $AGENT_TTL), then
#                            waits for hosts/H; AGENT_PID[H]
#   agent_down               kills the agents, their VMs and etcd

# The agent beside the godwit under test (the ASan pass: build-asan/godwitd).
GODWITD=${GODWITD:-$(dirname "$GODWIT")/godwitd}
AGENT_TTL=${AGENT_TTL:-6}
AGENT_ERR=     # why agent_etcd_up or agent_up failed
declare -A AGENT_PID

freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export ETCDCTL_API=3
ectl() { etcdctl --endpoints "$URL" --dial-timeout 2s --command-timeout 3s "$@"; }
eget() { ectl get --print-value-only "$1" 2>/dev/null; }
efield() { eget "$1" | jq -r --arg k "$2" '.[$k] // empty' 2>/dev/null; }

agent_etcd_up() {
	local ec ep i
	ec=$(freeport) ep=$(freeport)
	URL=http://127.0.0.1:$ec
	etcd --name default --data-dir "$T_TMP/etcd" --listen-client-urls "$URL" \
		--advertise-client-urls "$URL" --listen-peer-urls "http://127.0.0.1:$ep" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ep" \
		--initial-cluster "default=http://127.0.0.1:$ep" >"$T_TMP/etcd.log" 2>&1 &
	E_PID=$!
	for ((i = 0; i < 100; i++)); do ectl endpoint health >/dev/null 2>&1 && return 0; sleep 0.1; done
	AGENT_ERR="etcd did not start: $(tail -c 300 "$T_TMP/etcd.log")"
	return 1
}

agent_certs() { python3 "$ROOT/tests/kvm/mkcerts.py" "$T_TMP/certs" "$@"; }

agent_up() {
	local h=$1 port=$2 ports=$3 i
	shift 3
	mkdir -p "$T_TMP/$h"
	"$GODWITD" --host "$h" --etcd "$URL" --state-dir "$T_TMP/$h" --listen "127.0.0.1:$port" \
		--tls-dir "$T_TMP/certs/$h" --lease-ttl "$AGENT_TTL" --migration-ports "$ports" \
		--mem-capacity 4G --cpu-capacity 8 --godwit "$GODWIT" -v "$@" \
		</dev/null >>"$T_TMP/$h.log" 2>&1 &
	AGENT_PID[$h]=$!
	for ((i = 0; i < 100; i++)); do [ -n "$(eget "/godwit/hosts/$h")" ] && return 0; sleep 0.1; done
	AGENT_ERR="agent $h did not register: $(tail -c 300 "$T_TMP/$h.log")"
	return 1
}

agent_down() {
	local h f
	for h in "${!AGENT_PID[@]}"; do kill -9 "${AGENT_PID[$h]}" 2>/dev/null; done
	for f in "$T_TMP"/*/vms/*/pid; do
		[ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
	done
	[ -n "${E_PID:-}" ] && kill "$E_PID" 2>/dev/null
	return 0
}
