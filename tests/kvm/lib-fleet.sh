# shellcheck shell=bash
# tests/kvm/lib-fleet.sh - a fleet of three hosts in network namespaces, for
# tests/kvm/t-fleet.sh and scripts/fleet-demo.sh (docs/fleet.md).
#
#   switch  gwf-s-SFX   bridge br0 (198.18.7.1/24): the CLI and the checker run here
#   hosts   gwf-h1-SFX .. gwf-h3-SFX   eth0 198.18.7.11 .. .13, an agent each
#   etcd    gwf-e1-SFX .. gwf-e3-SFX   eth0 198.18.7.21 .. .23, one member each
#           (FLEET_ETCD_N=1: only the first)
#
# Every namespace hangs off the switch's bridge by a veth pair; nothing is
# added to the root namespace's network.  Per-host TLS credentials
# (tests/kvm/mkcerts.py DIR h1 h2 h3: SAN = the host's name, one CA) in
# $FLEET_DIR/certs/H.  Source tests/lib.sh first (ROOT, BUILD, GODWIT).
#
#   fleet_up                  namespaces, bridge, certificates, etcd (3 members, healthy)
#   fleet_down                kills everything in the namespaces, deletes them and the dir
#   agent_start H [OPTS...]   godwitd for host H (h1..h3) in its namespace, TLS; AGENT_PID[H]
#   agent_kill H              kill -9 of H's agent (its VMs keep running)
#   etcd_member_stop N        kill -9 of etcd member N (1..3); etcd_member_start N again
#   host_cut_etcd H           H cannot reach any etcd member (blackhole routes); host_uncut_etcd H
#   fleet ARGS...             godwit fleet --etcd $ETCD_URLS ARGS, run in the switch namespace
#   fleet_etcdctl ARGS...     etcdctl in the switch namespace; etcd_val KEY: the value at KEY
#
# FLEET_SFX picks the names' suffix (default: $$), so runs in parallel do not clash.

FLEET_SFX=${FLEET_SFX:-$$}
FLEET_NS_S=gwf-s-$FLEET_SFX
FLEET_HOSTS=(h1 h2 h3)
FLEET_IP_S=198.18.7.1
declare -A FLEET_NS FLEET_IP AGENT_PID ETCD_PID
FLEET_NS[h1]=gwf-h1-$FLEET_SFX FLEET_IP[h1]=198.18.7.11
FLEET_NS[h2]=gwf-h2-$FLEET_SFX FLEET_IP[h2]=198.18.7.12
FLEET_NS[h3]=gwf-h3-$FLEET_SFX FLEET_IP[h3]=198.18.7.13
FLEET_NS[e1]=gwf-e1-$FLEET_SFX FLEET_IP[e1]=198.18.7.21
FLEET_NS[e2]=gwf-e2-$FLEET_SFX FLEET_IP[e2]=198.18.7.22
FLEET_NS[e3]=gwf-e3-$FLEET_SFX FLEET_IP[e3]=198.18.7.23
# FLEET_ETCD_N: how many etcd members (1..3; the demo runs one).
FLEET_ETCD_N=${FLEET_ETCD_N:-3}
ETCD_URLS=http://198.18.7.21:2379
[ "$FLEET_ETCD_N" -ge 2 ] && ETCD_URLS+=,http://198.18.7.22:2379
[ "$FLEET_ETCD_N" -ge 3 ] && ETCD_URLS+=,http://198.18.7.23:2379
FLEET_AGENT_PORT=${FLEET_AGENT_PORT:-7470}
# The agent beside the godwit under test (the ASan pass: build-asan/godwitd).
GODWITD=${GODWITD:-$(dirname "$GODWIT")/godwitd}
# The three "hosts" share this machine's cores: each may place more vCPUs than there are.
FLEET_AGENT_OPTS=${FLEET_AGENT_OPTS:---cpu-capacity 8 --mem-capacity 4G}
FLEET_DIR=${FLEET_DIR:-}
FLEET_ERR=

# fleet_mk CMD...: run a setup command; on failure FLEET_ERR says which, and false.
fleet_mk() {
	if ! "$@" 2>>"$FLEET_DIR/setup.err"; then
		FLEET_ERR="$* failed: $(tail -n 1 "$FLEET_DIR/setup.err")"
		return 1
	fi
}

# fleet_all_ns: every namespace of this fleet, the switch last.
fleet_all_ns() { echo "${FLEET_NS[h1]} ${FLEET_NS[h2]} ${FLEET_NS[h3]} ${FLEET_NS[e1]} ${FLEET_NS[e2]} ${FLEET_NS[e3]} $FLEET_NS_S"; }

fleet_net_up() {
	local n ns
	fleet_mk ip netns add "$FLEET_NS_S" || return 1
	fleet_mk ip -n "$FLEET_NS_S" link set lo up || return 1
	ip netns exec "$FLEET_NS_S" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
	ip netns exec "$FLEET_NS_S" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
	fleet_mk ip -n "$FLEET_NS_S" link add br0 type bridge stp_state 0 forward_delay 0 || return 1
	fleet_mk ip -n "$FLEET_NS_S" addr add "$FLEET_IP_S/24" dev br0 || return 1
	fleet_mk ip -n "$FLEET_NS_S" link set br0 up || return 1
	for n in h1 h2 h3 e1 e2 e3; do
		ns=${FLEET_NS[$n]}
		fleet_mk ip netns add "$ns" || return 1
		fleet_mk ip -n "$ns" link set lo up || return 1
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
		fleet_mk ip -n "$FLEET_NS_S" link add "p$n" type veth peer name eth0 netns "$ns" || return 1
		fleet_mk ip -n "$FLEET_NS_S" link set "p$n" master br0 || return 1
		fleet_mk ip -n "$FLEET_NS_S" link set "p$n" up || return 1
		fleet_mk ip -n "$ns" addr add "${FLEET_IP[$n]}/24" dev eth0 || return 1
		fleet_mk ip -n "$ns" link set eth0 up || return 1
	done
}

# etcd_member_start N: member eN in its namespace (its data dir kept across restarts).
etcd_member_start() {
	local n=e$1 ip=${FLEET_IP[e$1]} cluster=
	local i
	for ((i = 1; i <= FLEET_ETCD_N; i++)); do cluster+=${cluster:+,}e$i=http://${FLEET_IP[e$i]}:2380; done
	mkdir -p "$FLEET_DIR/etcd"
	ip netns exec "${FLEET_NS[$n]}" etcd --name "$n" --data-dir "$FLEET_DIR/etcd/$n" \
		--listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
		--listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
		--initial-cluster "$cluster" --initial-cluster-token "gwf-$FLEET_SFX" \
		--initial-cluster-state new --heartbeat-interval 100 --election-timeout 1000 \
		</dev/null >>"$FLEET_DIR/etcd/$n.log" 2>&1 &
	ETCD_PID[$n]=$!
	# The VMs keep both cores busy: the members must not miss their heartbeats for it.
	renice -n -5 -p "${ETCD_PID[$n]}" >/dev/null 2>&1
}
etcd_member_stop() {
	local n=e$1
	[ -n "${ETCD_PID[$n]:-}" ] || return 1
	kill -KILL "${ETCD_PID[$n]}" 2>/dev/null
	wait "${ETCD_PID[$n]}" 2>/dev/null
	ETCD_PID[$n]=
}
# fleet_etcdctl ARGS...: etcdctl (v3) from the switch namespace, against each member in turn
# until one answers (etcdctl 3.4 given all three can stay stuck on one that was killed).
# Members this script stopped are skipped (etcdctl waits out its timeout on them).
fleet_etcdctl() {
	local i
	for ((i = 1; i <= FLEET_ETCD_N; i++)); do
		[ -n "${ETCD_PID[e$i]:-}" ] || continue
		ETCDCTL_API=3 timeout 10 ip netns exec "$FLEET_NS_S" etcdctl \
			--endpoints "http://${FLEET_IP[e$i]}:2379" \
			--dial-timeout 1s --command-timeout 3s "$@" 2>>"$FLEET_DIR/etcdctl.err" && return 0
	done
	return 1
}
# etcd_val KEY: the value at KEY (empty if none).
etcd_val() { fleet_etcdctl get --print-value-only "$1" 2>/dev/null; }
# etcd_healthy SECS: until every running member answers healthy (SECS at most).
etcd_healthy() {
	local i
	for ((i = 0; i < $1 * 2; i++)); do
		ETCDCTL_API=3 timeout 10 ip netns exec "$FLEET_NS_S" etcdctl --endpoints "$ETCD_URLS" \
			--dial-timeout 1s --command-timeout 3s endpoint health >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	return 1
}

fleet_up() {
	local i
	if [ -z "$FLEET_DIR" ]; then FLEET_DIR=$(mktemp -d /tmp/gwf.XXXXXX); fi
	mkdir -p "$FLEET_DIR"
	fleet_net_up || return 1
	if ! python3 "$ROOT/tests/kvm/mkcerts.py" "$FLEET_DIR/certs" "${FLEET_HOSTS[@]}" \
		2>>"$FLEET_DIR/setup.err"; then
		FLEET_ERR="mkcerts.py failed: $(tail -n 1 "$FLEET_DIR/setup.err")"
		return 1
	fi
	for ((i = 1; i <= FLEET_ETCD_N; i++)); do etcd_member_start "$i"; done
	if ! etcd_healthy 20; then
		FLEET_ERR="etcd did not become healthy in 20 s: $(tail -n 2 "$FLEET_DIR/etcd/e1.log")"
		return 1
	fi
}

# agent_start H [OPTS...]: H's godwitd, its state in $FLEET_DIR/H (godwitd wants a short
# path), its log in $FLEET_DIR/log/H.log.
agent_start() {
	local h=$1
	shift
	mkdir -p "$FLEET_DIR/$h" "$FLEET_DIR/log"
	# shellcheck disable=SC2086 # FLEET_AGENT_OPTS: words
	ip netns exec "${FLEET_NS[$h]}" "$GODWITD" --host "$h" --etcd "$ETCD_URLS" \
		--state-dir "$FLEET_DIR/$h" --listen "${FLEET_IP[$h]}:$FLEET_AGENT_PORT" \
		--tls-dir "$FLEET_DIR/certs/$h" --godwit "$GODWIT" $FLEET_AGENT_OPTS "$@" \
		</dev/null >>"$FLEET_DIR/log/$h.log" 2>&1 &
	AGENT_PID[$h]=$!
}
agent_kill() {
	[ -n "${AGENT_PID[$1]:-}" ] || return 1
	kill -KILL "${AGENT_PID[$1]}" 2>/dev/null
	wait "${AGENT_PID[$1]}" 2>/dev/null
	AGENT_PID[$1]=
}
# agent_registered H SECS: until /godwit/hosts/H exists.
agent_registered() {
	local i
	for ((i = 0; i < $2 * 2; i++)); do
		[ -n "$(etcd_val "/godwit/hosts/$1")" ] && return 0
		sleep 0.5
	done
	return 1
}

host_cut_etcd() {
	local i
	for ((i = 1; i <= FLEET_ETCD_N; i++)); do ip -n "${FLEET_NS[$1]}" route add blackhole "${FLEET_IP[e$i]}/32" || return 1; done
}
host_uncut_etcd() {
	local i
	for ((i = 1; i <= FLEET_ETCD_N; i++)); do ip -n "${FLEET_NS[$1]}" route del blackhole "${FLEET_IP[e$i]}/32" 2>/dev/null; done
	return 0
}

# fleet ARGS...: the CLI (60 s at most), from the switch namespace.
fleet() { timeout 60 ip netns exec "$FLEET_NS_S" "$GODWIT" fleet --etcd "$ETCD_URLS" "$@" </dev/null; }

# fleet_vm_pids H: "VM PID API" for each `godwit run` process in H's namespace (VM: its
# --name, else the directory of its --api socket, DIR/vms/VM/api.sock).
fleet_vm_pids() {
	local p
	for p in $(ip netns pids "${FLEET_NS[$1]}" 2>/dev/null); do
		tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null |
			awk -v p="$p" 'NR == 2 && $0 != "run" { exit } { a[NR] = $0 }
				END { for (i = 3; i < NR; i++) { if (a[i] == "--name") n = a[i + 1]; if (a[i] == "--api") s = a[i + 1] }
				      if (n == "" && s ~ /\/vms\/[^\/]+\/api\.sock$/) { n = s; sub(/\/api\.sock$/, "", n); sub(/.*\//, "", n) }
				      if (n != "") print n, p, s }'
	done
}

fleet_down() {
	local ns h n
	for h in h1 h2 h3; do [ -n "${AGENT_PID[$h]:-}" ] && kill -KILL "${AGENT_PID[$h]}" 2>/dev/null; done
	for ns in $(fleet_all_ns); do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
	done
	for n in e1 e2 e3; do [ -n "${ETCD_PID[$n]:-}" ] && kill -KILL "${ETCD_PID[$n]}" 2>/dev/null; done
	sleep 0.3
	for ns in $(fleet_all_ns); do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
		ip netns del "$ns" 2>/dev/null
	done
	for h in h1 h2 h3; do [ -n "${AGENT_PID[$h]:-}" ] && wait "${AGENT_PID[$h]}"; done
	for n in e1 e2 e3; do [ -n "${ETCD_PID[$n]:-}" ] && wait "${ETCD_PID[$n]}"; done
	if [ -n "$FLEET_DIR" ] && [ -z "${FLEET_KEEP:-}" ]; then rm -rf "$FLEET_DIR"; fi
	return 0
} 2>/dev/null    # with the shell's "Killed" notices of the processes it kills
