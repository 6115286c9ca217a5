# shellcheck shell=bash
# tests/kvm/lib-link.sh - a measured link between two "hosts": two network namespaces
# joined by a veth pair whose rate is shaped by a tbf qdisc on both ends (this host has
# no netem or fq: docs/testing.md, PLATFORM.md).  Addresses 198.18.14.1 (A) and
# 198.18.14.2 (B), a /24 no other test uses.  For tests (source tests/lib.sh first) and
# benchmarks (bench/converge/): bash and python3 only.
#
#   link_up PREFIX      namespaces PREFIX-a and PREFIX-b, the veth, the addresses;
#                       sets LINK_A, LINK_B (the namespaces), LINK_IP_A, LINK_IP_B
#   link_shape MBIT     tbf on both ends at MBIT Mbit/s (replacing any earlier one)
#   link_check MBIT     a bulk TCP transfer A -> B for 2.5 s (tests/kvm/linkrate.py);
#                       LINK_MEASURED_MBIT; false with LINK_WHY if it is off by > 20 %
#   link_down           both namespaces gone, every process in them killed
# Callers put link_down in their EXIT trap.

LINK_IP_A=198.18.14.1
LINK_IP_B=198.18.14.2
LINK_A='' LINK_B=''
LINK_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/linkrate.py

link_up() {
	LINK_A=$1-a LINK_B=$1-b
	ip netns add "$LINK_A" && ip netns add "$LINK_B" &&
		ip -n "$LINK_A" link set lo up && ip -n "$LINK_B" link set lo up &&
		ip -n "$LINK_A" link add gwl0 type veth peer name gwl1 netns "$LINK_B" &&
		ip -n "$LINK_A" addr add "$LINK_IP_A/24" dev gwl0 &&
		ip -n "$LINK_B" addr add "$LINK_IP_B/24" dev gwl1 &&
		ip -n "$LINK_A" link set gwl0 up && ip -n "$LINK_B" link set gwl1 up
}

# The bucket holds 2 ms of traffic (256 kB at 1 Gbit/s, 2.5 MB at 10 Gbit/s): enough for
# the kernel's TSO/GSO segments at either rate, small enough that bursts above the rate
# stay short.  The queue holds 50 ms; beyond it packets drop and TCP backs off.
link_shape() {
	local kb=$(($1 / 4)) ns dev
	[ "$kb" -ge 256 ] || kb=256
	for ns in "$LINK_A:gwl0" "$LINK_B:gwl1"; do
		dev=${ns#*:} ns=${ns%%:*}
		tc -n "$ns" qdisc replace dev "$dev" root tbf rate "${1}mbit" burst "${kb}kb" \
			latency 50ms || return 1
	done
}

link_check() {
	local want=$1 port=5201 out rate i
	LINK_WHY='' LINK_MEASURED_MBIT=''
	out=$(mktemp)
	timeout 20 ip netns exec "$LINK_B" python3 "$LINK_PY" recv "$LINK_IP_B" $port 2.5 >"$out" 2>&1 &
	local rpid=$!
	for ((i = 0; i < 50; i++)); do
		grep -q listening "$out" && break
		sleep 0.1
	done
	timeout 20 ip netns exec "$LINK_A" python3 "$LINK_PY" send "$LINK_IP_B" $port 4 >/dev/null 2>&1
	wait "$rpid"
	rate=$(sed -n 's/^rate_bps=\([0-9]*\) .*/\1/p' "$out")
	if [ -z "$rate" ]; then
		LINK_WHY="no rate measured: $(tr '\n' ' ' <"$out" | head -c 300)"
		rm -f "$out"
		return 1
	fi
	rm -f "$out"
	LINK_MEASURED_MBIT=$((rate / 1000000))
	if [ $((LINK_MEASURED_MBIT * 10)) -lt $((want * 8)) ] ||
		[ $((LINK_MEASURED_MBIT * 10)) -gt $((want * 12)) ]; then
		LINK_WHY="the link carried $LINK_MEASURED_MBIT Mbit/s, shaped to $want Mbit/s (more than 20 % off)"
		return 1
	fi
	return 0
}

link_down() {
	[ -n "$LINK_A" ] && t_netns_del "$LINK_A" "$LINK_B"
	return 0
}
