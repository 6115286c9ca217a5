#!/bin/bash
# Tier 1: a UDP client keeps talking to the guest across a live migration.
#
# Four network namespaces: "host A" and "host B", each with a local bridge
# joining its uplink veth and the TAP of its godwit; a "switch" namespace
# whose bridge joins host A's, host B's and the peer's veths; a "peer"
# namespace (198.18.7.1) that talks to the guest (workload=mem+net,
# ip=198.18.7.2, 1 vCPU) through the switch.  Host A and host B also share a
# separate veth pair (198.19.7.1 / .2) that carries the migration stream
# (tcp:, under mutual TLS: tests/kvm/mkcerts.py's src and dst, each
# requiring the other's name).  The source's TAP is created by its godwit; the destination uses a
# persistent TAP already on host B's bridge (godwit opens its TAP only once
# the stream's CONFIG came, too late to bridge it by hand).
#
# The peer sends a sequence-numbered UDP echo request every 5 ms
# (tests/kvm/udp_pinger.py) before, during and after the migration.  PASS:
# migrate exits 0, the source godwit 6; the destination announced the
# guest's MAC by RARP (5 frames seen on the switch's port to host B, ~50/
# 150/250/350 ms apart); the switch's FDB moves the MAC from host A's port
# to host B's right after the migration; only requests sent within the
# switch window (the migration, widened to the gap between answers at it)
# are lost, that gap is <= 2 s (MIGNET_MAX_GAP_MS), every request sent after
# it is answered; the guest's counters go on on the destination (udp=
# increasing, memtest errors=0); the report names the TLS 1.3 session.  The longest gap between answers overall is
# reported (on a loaded 2-core host, scheduling adds gaps anywhere).
# Without the announce the switch would keep sending the guest's frames to
# host A, where nothing answers any more, until the peer's ARP entry ages
# (MIGNET_DROP_RARP=1 shows it).  The RARP capture is what proves the
# announce: a request already in the guest's ring when the source paused is
# answered by the destination, and that answer alone can teach the switch.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"

T=migrate-net
SFX=$$
NS_A=gwm-a-$SFX
NS_B=gwm-b-$SFX
NS_S=gwm-s-$SFX
NS_P=gwm-p-$SFX
IP_PEER=198.18.7.1
IP_GUEST=198.18.7.2
IP_MA=198.19.7.1
IP_MB=198.19.7.2
PORT=7447
MAC=02:00:5e:00:27:01
MAX_GAP_MS=${MIGNET_MAX_GAP_MS:-2000}
PINGER=$(dirname "$0")/udp_pinger.py

mn_cleanup() {
	local ns
	for ns in "$NS_P" "$NS_S" "$NS_A" "$NS_B"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
	done
	sleep 0.2
	for ns in "$NS_P" "$NS_S" "$NS_A" "$NS_B"; do
		ip netns del "$ns" 2>/dev/null
	done
}
# MIGNET_KEEP=DIR keeps the logs (consoles, pinger, capture) there.
mn_keep() { [ -n "${MIGNET_KEEP:-}" ] && mkdir -p "$MIGNET_KEEP" && cp -r "$T_TMP"/. "$MIGNET_KEEP"/ 2>/dev/null; }
trap 'mn_cleanup; mn_keep; t_cleanup' EXIT

t_need_guest "$T" || exit 0
if [ ! -f "$PINGER" ]; then
	t_fail "$T" "no $PINGER"
	exit 0
fi

# ---- the network --------------------------------------------------------------------
# mk CMD...: run an ip(8) command; any failure fails the setup.
SETUP_ERR=
mk() {
	if ! "$@" 2>>"$T_TMP/setup.err"; then
		SETUP_ERR="$* failed: $(tail -n 1 "$T_TMP/setup.err")"
		return 1
	fi
}
setup_net() {
	local ns
	for ns in "$NS_A" "$NS_B" "$NS_S" "$NS_P"; do
		mk ip netns add "$ns" || return 1
		mk ip -n "$ns" link set lo up || return 1
		# No IPv6 chatter (DAD, router and MLD messages) on the links.
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
	done
	# The switch and its three ports.
	mk ip -n "$NS_S" link add brS type bridge stp_state 0 forward_delay 0 || return 1
	mk ip -n "$NS_S" link add swA type veth peer name upA netns "$NS_A" || return 1
	mk ip -n "$NS_S" link add swB type veth peer name upB netns "$NS_B" || return 1
	mk ip -n "$NS_S" link add swP type veth peer name eth0 netns "$NS_P" || return 1
	for ns in swA swB swP; do
		mk ip -n "$NS_S" link set "$ns" master brS || return 1
		mk ip -n "$NS_S" link set "$ns" up || return 1
	done
	mk ip -n "$NS_S" link set brS up || return 1
	# The peer.
	mk ip -n "$NS_P" addr add "$IP_PEER/24" dev eth0 || return 1
	mk ip -n "$NS_P" link set eth0 up || return 1
	# Host A: bridge brA (uplink upA; godwit's TAP tapA joins it once created).
	mk ip -n "$NS_A" link add brA type bridge stp_state 0 forward_delay 0 || return 1
	mk ip -n "$NS_A" link set upA master brA || return 1
	mk ip -n "$NS_A" link set upA up || return 1
	mk ip -n "$NS_A" link set brA up || return 1
	# Host B: bridge brB with upB and a persistent TAP tapB for the incoming VM.
	mk ip -n "$NS_B" link add brB type bridge stp_state 0 forward_delay 0 || return 1
	mk ip -n "$NS_B" tuntap add tapB mode tap || return 1
	for ns in upB tapB; do
		mk ip -n "$NS_B" link set "$ns" master brB || return 1
		mk ip -n "$NS_B" link set "$ns" up || return 1
	done
	mk ip -n "$NS_B" link set brB up || return 1
	# The migration link between the hosts.
	mk ip -n "$NS_A" link add migA type veth peer name migB netns "$NS_B" || return 1
	mk ip -n "$NS_A" addr add "$IP_MA/24" dev migA || return 1
	mk ip -n "$NS_B" addr add "$IP_MB/24" dev migB || return 1
	mk ip -n "$NS_A" link set migA up || return 1
	mk ip -n "$NS_B" link set migB up || return 1
}
if ! setup_net; then
	t_fail "$T" "cannot build the namespaces: $SETUP_ERR"
	exit 0
fi
# MIGNET_DROP_RARP=1 (a check of this test, not of godwit): host B's bridge
# floods no broadcast out of its uplink, so the RARP announce never reaches
# the switch, as if the destination announced nothing; migrate-net-rarp must
# fail.  (The peer usually recovers all the same: a request the source's
# device had already put in the guest's ring travels with the memory, and
# the destination's answer to it teaches the switch the new port.)
if [ "${MIGNET_DROP_RARP:-0}" = 1 ]; then
	bridge -n "$NS_B" link set dev upB bcast_flood off || echo "# cannot stop broadcasts on upB"
fi
if command -v ping >/dev/null 2>&1; then PING=(ping); else PING=(busybox ping); fi

# fdb_port: the switch port on which brS has learnt the guest's MAC (empty if none).
fdb_port() {
	bridge -n "$NS_S" fdb show br brS 2>/dev/null |
		awk -v m="$MAC" '$1 == m && $2 == "dev" { print $3; exit }'
}
now() { date +%s.%N; }
# net_lines FILE: the complete net: reports in FILE (a console line being
# written when the file is read, or when the VM left, can be cut short).
net_lines() { grep -aE '^net: t=[0-9.]+ rx=[0-9]+ tx=[0-9]+ .* udp=[0-9]+ udp_bytes=[0-9]+ drops=[0-9]+[[:space:]]*$' "$1"; }
# udp_count FILE: the udp= counter of the last complete net: report in FILE.
udp_count() { net_lines "$1" | tail -n 1 | sed -n 's/.* udp=\([0-9]*\) .*/\1/p'; }

# ---- the destination on host B, then the source on host A -------------------------------
src_sock=$T_TMP/src.sock
dst_sock=$T_TMP/dst.sock
python3 "$ROOT/tests/kvm/mkcerts.py" "$T_TMP/certs"
ip netns exec "$NS_B" timeout 100 "$GODWIT" run --incoming "tcp:$IP_MB:$PORT" \
	--tls-dir "$T_TMP/certs/dst" --tls-peer src.godwit.test \
	--api "$dst_sock" --net tap=tapB </dev/null >"$T_TMP/dst.out" 2>"$T_TMP/dst.err" &
dpid=$!
ip netns exec "$NS_A" timeout 100 "$GODWIT" run --kernel "$GUEST_ELF" --mem 64M --cpus 1 \
	--name gwt-migrate-net --api "$src_sock" --net "tap=tapA,mac=$MAC" \
	--cmdline "workload=mem+net mem=16 rate=8 report=200 ip=$IP_GUEST" \
	</dev/null >"$T_TMP/src.out" 2>"$T_TMP/src.err" &
spid=$!
ok=0
for ((i = 0; i < 100; i++)); do
	if ip -n "$NS_A" link show tapA >/dev/null 2>&1; then ok=1; break; fi
	kill -0 $spid 2>/dev/null || break
	sleep 0.1
done
if [ $ok = 0 ]; then
	t_fail "$T" "no TAP tapA on host A 10 s after the source started: $(tail -c 400 "$T_TMP/src.err")"
	exit 0
fi
ip -n "$NS_A" link set tapA master brA
if ! t_wait_for "$T_TMP/src.out" '^net: t=' 20; then
	t_fail "$T" "the source guest's net workload did not start: $(tail -c 400 "$T_TMP/src.out") $(tail -c 300 "$T_TMP/src.err")"
	exit 0
fi
if ! t_wait_for "$T_TMP/dst.err" 'waiting for an incoming migration' 10; then
	t_fail "$T" "the destination is not waiting: $(tail -c 400 "$T_TMP/dst.err")"
	exit 0
fi
if ! ip netns exec "$NS_P" "${PING[@]}" -c 3 -i 0.2 -W 2 -w 10 "$IP_GUEST" >"$T_TMP/ping.out" 2>&1; then
	t_fail "$T" "the peer cannot ping the guest through the switch: $(tail -n 2 "$T_TMP/ping.out" | tr '\n' ' ')"
	exit 0
fi
port0=$(fdb_port)
if [ "$port0" != swA ]; then
	t_fail "$T-fdb" "before the migration the switch has the guest's MAC on '${port0:-no port}', not swA"
	exit 0
fi

# ---- capture the announcements on the switch's port to host B ----------------------------
cat >"$T_TMP/rarp.py" <<'EOF'
import os, socket, struct, sys, time
ifname, mac, stop, max_s = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', '')), sys.argv[3], float(sys.argv[4])
# ETH_P_ALL: a bridge port's frames reach only the taps that take every
# protocol (those for one protocol are served after the bridge consumed it).
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((ifname, 3))
s.setsockopt(socket.SOL_SOCKET, 35, 1)     # SO_TIMESTAMPNS: the kernel's arrival time
s.settimeout(0.05)
print('ready', flush=True)
t_end = time.time() + max_s
while time.time() < t_end and not os.path.exists(stop):
    try:
        f, anc, _, _ = s.recvmsg(2048, 64)
    except socket.timeout:
        continue
    if f[12:14] != b'\x80\x35':
        continue
    t = time.time()
    for lvl, typ, data in anc:
        if lvl == socket.SOL_SOCKET and typ == 35 and len(data) >= 16:
            sec, nsec = struct.unpack('qq', data[:16])
            t = sec + nsec / 1e9
    good = (len(f) >= 42 and f[0:6] == b'\xff' * 6 and f[6:12] == mac
            and f[14:22] == b'\x00\x01\x08\x00\x06\x04\x00\x03' and f[22:28] == mac and f[32:38] == mac)
    print('%.6f %s %s' % (t, 'rarp' if good else 'other', f[6:12].hex(':')), flush=True)
EOF
ip netns exec "$NS_S" timeout 60 python3 "$T_TMP/rarp.py" swB "$MAC" "$T_TMP/stop" 50 \
	>"$T_TMP/rarp.out" 2>&1 &
rpid=$!
t_wait_for "$T_TMP/rarp.out" '^ready' 5 || echo "# the RARP capture did not start: $(head -c 200 "$T_TMP/rarp.out")"

# ---- the peer's UDP stream, and the migration in the middle of it --------------------------
ip netns exec "$NS_P" timeout 80 python3 "$PINGER" "$IP_GUEST" --interval-ms 5 --max-s 50 \
	--stop-file "$T_TMP/stop" --linger-s 0.5 --max-gap-ms "$MAX_GAP_MS" \
	--ready-file "$T_TMP/pinger.ready" >"$T_TMP/pinger.out" 2>&1 &
ppid_=$!
for ((i = 0; i < 50; i++)); do [ -e "$T_TMP/pinger.ready" ] && break; sleep 0.1; done
if [ ! -e "$T_TMP/pinger.ready" ]; then
	t_fail "$T" "the peer's UDP echo stream got no 50 answers in 5 s: $(cat "$T_TMP/pinger.out")"
	exit 0
fi
sleep 1.5
udp_src=$(udp_count "$T_TMP/src.out")
mig_start=$(now)
timeout 60 "$GODWIT" migrate --api "$src_sock" --to "tcp:$IP_MB:$PORT" \
	--tls-dir "$T_TMP/certs/src" --tls-peer dst.godwit.test >"$T_TMP/mig.out" 2>&1
mig_rc=$?
mig_end=$(now)
# The switch must have moved the MAC to host B's port right away (the first
# announce goes out as the vCPUs start, right after DONE is sent).
port1= first_port= polls=0
for ((i = 0; i < 40; i++)); do
	port1=$(fdb_port)
	polls=$((polls + 1))
	[ -z "$first_port" ] && first_port=${port1:-none}
	[ "$port1" = swB ] && break
	sleep 0.05
done
fdb_ms=$(awk -v a="$mig_end" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
src_rc=
if [ $mig_rc -eq 0 ]; then
	wait_exit $spid 10
	src_rc=$?
fi
sleep 3   # after the switch: >= 600 more requests, all of which must be answered
echo "$mig_start $mig_end" >"$T_TMP/stop.tmp" && mv "$T_TMP/stop.tmp" "$T_TMP/stop"
wait_exit $ppid_ 10
pinger_rc=$?
wait_exit $rpid 5 >/dev/null

# ---- verdicts ------------------------------------------------------------------------------
echo "# $(grep -a 'migration completed\|migrat.*fail\|in doubt' "$T_TMP/mig.out" | tail -n 1)"
if [ $mig_rc -ne 0 ] || [ "$src_rc" != 6 ]; then
	t_fail "$T" "migrate exit $mig_rc (expected 0), source godwit exit ${src_rc:-still running} (expected 6): $(tail -c 400 "$T_TMP/mig.out") dst: $(tail -c 300 "$T_TMP/dst.err")"
else
	t_pass "$T"
fi
# Both ends name the TLS 1.3 session and each other's certificate.
if grep -q '^channel: TLSv1.3 .*CN = dst.godwit.test' "$T_TMP/mig.out" &&
	grep -q 'authenticated (TLSv1.3 .*CN = src.godwit.test)' "$T_TMP/dst.err"; then
	t_pass "$T-tls"
else
	t_fail "$T-tls" "no TLS 1.3 session named: migrate: $(grep -a channel "$T_TMP/mig.out") dst: $(grep -a authenticated "$T_TMP/dst.err")"
fi

# The announce: 5 RARP frames from the guest's MAC on swB, gaps ~50/150/250/350 ms.
rarp_t=$(awk '$2 == "rarp" { print $1 }' "$T_TMP/rarp.out")
n_rarp=$(grep -c . <<<"$rarp_t")
[ -z "$rarp_t" ] && n_rarp=0
gaps=$(awk 'NR > 1 { printf "%s%.0f", (NR > 2 ? "/" : ""), ($1 - p) * 1000 } { p = $1 }' <<<"$rarp_t")
first_ms=$(awk -v a="$mig_end" 'NR == 1 && $1 != "" { printf "%.0f", (a - $1) * 1000 }' <<<"$rarp_t")
gaps_ok=$(awk 'NR > 1 { d = ($1 - p) * 1000; w = 50 + 100 * (NR - 2); if (d < w - 25 || d > w + 250) bad = 1 }
	{ p = $1 } END { print bad ? 0 : 1 }' <<<"$rarp_t")
if [ "$n_rarp" -ne 5 ] || [ "$gaps_ok" != 1 ]; then
	t_fail "$T-rarp" "$n_rarp RARP announce(s) from $MAC seen on swB (expected 5), gaps ${gaps:-none} ms (expected ~50/150/250/350); other frames: $(grep -c other "$T_TMP/rarp.out")"
else
	t_pass "$T-rarp"
fi
echo "# RARP announce on the switch's port to host B: $n_rarp frames, the first ${first_ms:-?} ms before migrate returned, gaps ${gaps:-none} ms"

if [ "$port1" = swB ]; then
	t_pass "$T-fdb"
else
	t_fail "$T-fdb" "the switch's FDB has the guest's MAC on '${port1:-no port}' ${fdb_ms} ms after the migration, not on host B's port swB: $(bridge -n "$NS_S" fdb show br brS | grep -i "$MAC")"
fi
echo "# switch FDB: $MAC on $port0 before, on ${port1:-none} ${fdb_ms} ms after migrate returned (poll $polls; the first poll saw $first_port)"

# The peer's view.
res=$(grep '^RESULT' "$T_TMP/pinger.out")
gap=$(sed -n 's/.* gap_ms=\([0-9.]*\) .*/\1/p' <<<"$res")
lost=$(sed -n 's/.* lost=\([0-9]*\) .*/\1/p' <<<"$res")
sent=$(sed -n 's/.* sent=\([0-9]*\).*/\1/p' <<<"$res")
swgap=$(sed -n 's/.* switch_gap_ms=\([0-9.-]*\) .*/\1/p' <<<"$res")
echo "# longest gap seen by the peer: ${gap:-?} ms, lost: ${lost:-?} of ${sent:-?} (gap at the switch: ${swgap:-?} ms)"
sed -n 's/^udp-pinger: /#   /p' "$T_TMP/pinger.out"
if [ $pinger_rc -eq 0 ] && [[ $res == "RESULT ok"* ]]; then
	t_pass "$T-continuity"
else
	t_fail "$T-continuity" "${res:-pinger exit $pinger_rc: $(tail -c 300 "$T_TMP/pinger.out")}"
fi

# The destination's guest answered: its udp= count goes on from the source's and grows.
sleep 0.5
nl_first=$(net_lines "$T_TMP/dst.out" | head -n 1)
nl_last=$(net_lines "$T_TMP/dst.out" | tail -n 1)
u_first=$(sed -n 's/.* udp=\([0-9]*\) .*/\1/p' <<<"$nl_first")
u_last=$(sed -n 's/.* udp=\([0-9]*\) .*/\1/p' <<<"$nl_last")
bad_mem=$(grep -aE '^memtest: t=.* errors=[1-9]' "$T_TMP/dst.out" | head -n 1)
if [ -z "$u_first" ] || [ -z "$u_last" ] || [ -z "$udp_src" ] ||
	[ "$u_first" -lt "$udp_src" ] || [ "$u_last" -le "$u_first" ]; then
	t_fail "$T-guest" "the destination's guest did not go on answering: source udp=${udp_src:-?} before, destination first '$nl_first', last '$nl_last'"
elif grep -qa 'godwit-guest: boot\|ERROR\|EXCEPTION' "$T_TMP/dst.out" || [ -n "$bad_mem" ]; then
	t_fail "$T-guest" "the guest restarted or reported errors: $(grep -a -m 2 'boot\|ERROR\|EXCEPTION' "$T_TMP/dst.out") $bad_mem"
else
	t_pass "$T-guest"
fi
echo "# guest net on host B: udp=$udp_src at the source before the migration; first '$nl_first'"
echo "#                       last  '$nl_last'"
echo "INFO $T: ${gap:-?} ms longest answer gap (${swgap:-?} ms at the switch) at 200 req/s, ${lost:-?} of ${sent:-?} lost, $n_rarp RARP announces, MAC on ${port1:-none} in the switch FDB ${fdb_ms} ms after migrate returned"

# Stop the VM on host B; its godwit exits 0 and leaves the persistent TAP.
"$GODWIT" shutdown --api "$dst_sock" >/dev/null 2>&1
wait_exit $dpid 15
rc=$?
if [ $rc -ne 0 ]; then
	t_fail "$T-shutdown" "the destination godwit exited $rc after shutdown (expected 0): $(tail -c 300 "$T_TMP/dst.err")"
fi
if grep -qaE 'AddressSanitizer|runtime error|LeakSanitizer' "$T_TMP/src.err" "$T_TMP/dst.err"; then
	t_fail "$T-sanitizer" "$(grep -ahE -m 3 'AddressSanitizer|runtime error|LeakSanitizer' "$T_TMP/src.err" "$T_TMP/dst.err")"
fi
exit 0
