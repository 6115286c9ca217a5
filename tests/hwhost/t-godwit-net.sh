#!/bin/bash
# Tier 2: a stock Linux guest (virtio_net, which negotiates mergeable RX
# buffers, checksum offload and TSO both ways) on a TAP godwit creates in a
# network namespace: the guest configures eth0 (godwit.ip), pings the peer
# (the TAP's address), fetches NET_MIB MiB over TCP from the peer and sends
# NET_MIB random MiB back; SHA-256s on both sides must match, and the guest's
# frame counts show that TSO/GSO carried the data both ways (far fewer frames
# than MSS-sized segments).  godwit exits 0 after the guest's poweroff, and
# the TAP it created is gone.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-net
NS=gwt-l1net-$$
MIB=${NET_MIB:-16}
hw_need_guest "$name" || exit 0

trap 't_netns_del "$NS"; hw_save_logs; t_cleanup' EXIT
if ! ip netns add "$NS" 2>"$T_TMP/netns.err"; then
	t_fail "$name" "cannot create network namespace $NS: $(cat "$T_TMP/netns.err")"
	exit 0
fi
ip -n "$NS" link set lo up

# The peer: serves MIB random MiB on :5001 and takes what comes on :5002, once each.
cat >"$T_TMP/peer.py" <<'EOF'
import hashlib, os, socket, sys
mib, out = int(sys.argv[1]), sys.argv[2]
def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(1)
    s.settimeout(400)
    return s
l1, l2 = listener(5001), listener(5002)
data = os.urandom(mib << 20)
with open(out, 'w') as f:
    print('peer: listening tx_sha=%s' % hashlib.sha256(data).hexdigest(), file=f, flush=True)
    c, _ = l1.accept()
    c.settimeout(300)
    c.sendall(data)
    c.close()
    print('peer: sent %d' % len(data), file=f, flush=True)
    c, _ = l2.accept()
    c.settimeout(300)
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.close()
    print('peer: received rx_bytes=%d rx_sha=%s' % (n, h.hexdigest()), file=f, flush=True)
EOF
peer_out=$T_TMP/peer.log
ip netns exec "$NS" timeout 500 python3 "$T_TMP/peer.py" "$MIB" "$peer_out" &
hw_wait "$peer_out" '^peer: listening' 60 || { t_fail "$name" "the peer did not start"; exit 0; }

log=$T_TMP/godwit-net.log
hw_start "$log" ip netns exec "$NS" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" \
	--initrd "$HW_GUEST_INITRD" --cpus 2 --mem 512M --name tier2-net --net tap=gwt0 \
	--cmdline "$(hw_append godwit.workload=net godwit.ip=198.18.0.2/24 godwit.peer=198.18.0.1 godwit.netmib="$MIB")"
gpid=$HW_PID
# Give the TAP its address as soon as godwit has created it (long before the guest pings).
ok=0
for ((i = 0; i < 60; i++)); do
	if ip -n "$NS" addr add 198.18.0.1/24 dev gwt0 2>/dev/null; then ok=1; break; fi
	kill -0 "$gpid" 2>/dev/null || break
	hw_sleep 0.5
done
if [ $ok = 0 ]; then
	t_fail "$name" "no TAP gwt0 in the namespace 30 s after godwit started"
	hw_tail "$log" 30
	exit 0
fi

# A run takes ~16 s in L1; 240 s is far beyond that and well inside the test's timeout
# (HWHOST_TEST_TIMEOUT, 600 s), so a wedged guest is diagnosed (and, if the emulator wedged
# it, run again) instead of holding L1 until its time runs out (seen once: 740 s).
hw_finish godwit-net vm "$gpid" "$log" 240 '^linux-guest: (net tx_status|poweroff)|Kernel panic'
wrc=$?
echo "# godwit: exit status $HW_RC; guest: $(hw_line "$log" 'linux-guest: net features=')"

feat=$(t_last_field "$log" "linux-guest: net features=" features)
if [ "$wrc" -ne 0 ]; then
	hw_fail "$name" "the guest's net workload did not finish (wait status $wrc)" "$log" \
		"$T_TMP"/godwit-net-*-diag.log
	exit 0
fi
# virtio feature bits as the guest's driver accepted them (one character per bit, bit 0 first).
bit() { [ "${feat:$1:1}" = 1 ]; }
if bit 0 && bit 1 && bit 5 && bit 7 && bit 11 && bit 15 && bit 16; then
	t_pass godwit-net-features
else
	t_fail godwit-net-features "driver features '$feat' lack CSUM/GUEST_CSUM/MAC/GUEST_TSO4/HOST_TSO4/MRG_RXBUF/STATUS"
fi
if [ "$(t_last_field "$log" "linux-guest: net ping" ping)" = ok ]; then
	t_pass godwit-net-ping
else
	t_fail godwit-net-ping "the guest could not ping the peer"
	hw_tail "$log" 20
fi

want=$((MIB << 20))
mapfile -t plines <"$peer_out"
peer_tx_sha=$(t_last_field "$peer_out" "peer: listening" tx_sha)
peer_rx_sha=$(t_last_field "$peer_out" "peer: received" rx_sha)
peer_rx_bytes=$(t_last_field "$peer_out" "peer: received" rx_bytes)
g_rx_sha=$(t_last_field "$log" "linux-guest: net rx_bytes" rx_sha)
g_rx_bytes=$(t_last_field "$log" "linux-guest: net rx_bytes" rx_bytes)
g_tx_sha=$(t_last_field "$log" "linux-guest: net tx_bytes" tx_sha)
echo "# peer->guest: $g_rx_bytes bytes; guest->peer: $peer_rx_bytes bytes"
if [ "$g_rx_bytes" = "$want" ] && [ -n "$g_rx_sha" ] && [ "$g_rx_sha" = "$peer_tx_sha" ]; then
	t_pass godwit-net-tcp-rx
else
	t_fail godwit-net-tcp-rx "guest got ${g_rx_bytes:-?} bytes sha ${g_rx_sha:-?}, peer sent $want sha ${peer_tx_sha:-?}"
fi
if [ "$peer_rx_bytes" = "$want" ] && [ -n "$peer_rx_sha" ] && [ "$peer_rx_sha" = "$g_tx_sha" ]; then
	t_pass godwit-net-tcp-tx
else
	t_fail godwit-net-tcp-tx "peer got ${peer_rx_bytes:-?} bytes sha ${peer_rx_sha:-?}, guest sent $want sha ${g_tx_sha:-?}; peer: ${plines[*]}"
fi

# Offloads at work: without TSO (and GSO from the TAP) each direction needs one frame per
# ~1448 bytes; with them a frame carries up to 64 KiB.  Count the guest's frames per phase.
f() { local v; v=$(t_last_field "$log" "linux-guest: net $1" "$2"); echo "${v:-0}"; }
rx_frames=$(( $(f rx_bytes rxp) - $(f ping rxp) ))
tx_frames=$(( $(f tx_status txp) - $(f tx_bytes txp) ))
mss_frames=$(( want / 1448 ))
rx_s=$(awk -v a="$(f ping t)" -v b="$(f rx_bytes t)" 'BEGIN { printf "%.1f", b - a }')
tx_s=$(awk -v a="$(f tx_bytes t)" -v b="$(f tx_status t)" 'BEGIN { printf "%.1f", b - a }')
echo "INFO $name: peer->guest $MIB MiB in ${rx_s} s, $rx_frames frames; guest->peer in ${tx_s} s, $tx_frames frames (MSS-sized: $mss_frames)"
if [ "$rx_frames" -gt 0 ] && [ "$rx_frames" -lt $((mss_frames / 2)) ] &&
	[ "$tx_frames" -gt 0 ] && [ "$tx_frames" -lt $((mss_frames / 2)) ]; then
	t_pass godwit-net-tso
else
	t_fail godwit-net-tso "guest received $rx_frames and sent $tx_frames frames for $MIB MiB each way; expected < $((mss_frames / 2)) with TSO"
fi

if ip -n "$NS" link show gwt0 >/dev/null 2>&1; then
	t_fail godwit-net-tap-removed "gwt0 still exists after godwit exited (status $HW_RC)"
elif [ "$HW_RC" != 0 ]; then
	t_fail godwit-net-tap-removed "godwit exited $HW_RC after the guest's poweroff, expected 0"
	hw_tail "$log" 20
else
	t_pass godwit-net-tap-removed
fi
