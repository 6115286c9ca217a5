#!/bin/bash
# Tier 1: virtio-net on a TAP, with the test guest's net workload
# (guest/net.c: answers ARP, ICMP echo and UDP echo on port 7 for ip=).
# In a network namespace of its own: godwit creates TAP gwt0 (up), the
# guest's MAC is the stable default for --name (02:..., derived from the
# VM's UUID), the host pings the guest, and a bounded python3 client
# exchanges >= 100 MiB of UDP echo traffic with every payload compared
# byte for byte both ways (plus a SHA-256 over each direction); a second
# godwit on the same TAP is refused (busy); stopping godwit removes the TAP
# it created.  An existing persistent TAP is attached to (with mac=) and
# survives godwit.  Bad --net specs and interfaces that are not TAPs exit 1
# with a clear message.  GET /metrics afterwards: the virtio-net counters cover
# the datagrams and bytes the client sent and got back.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-prom.sh"

NS=gwt-net-$$
IP_HOST=198.18.0.1
IP_GUEST=198.18.0.2
UDP_MIB=${NET_UDP_MIB:-100}
NAME=gwt-net-test

trap 't_netns_del "$NS"; t_cleanup' EXIT

t_need_guest net || exit 0
if ! ip netns add "$NS" 2>"$T_TMP/netns.err"; then
	t_fail net "cannot create network namespace $NS: $(cat "$T_TMP/netns.err")"
	exit 0
fi
ip -n "$NS" link set lo up
nsx() { ip netns exec "$NS" "$@"; }
# iputils ping, or busybox's (same options here)
if command -v ping >/dev/null 2>&1; then PING=(ping); else PING=(busybox ping); fi

# expect NAME STATUS REGEX CMD...: t_expect with CMD run in the namespace.
expect() { local n=$1 w=$2 r=$3; shift 3; t_expect "$n" "$w" "$r" ip netns exec "$NS" "$@"; }


# The default MAC for --name NAME and NIC 0, computed independently of godwit:
# uuid_from_name (src/cmd/run.c) then tap_mac_default (src/net/tap.c).
expected_mac() {
	python3 - "$1" <<'EOF'
import sys, struct
M = (1 << 64) - 1
def fnv(data, h):
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & M
    return h
name = sys.argv[1].encode()
u = bytearray(struct.pack('<QQ', fnv(name, 0xcbf29ce484222325), fnv(name, 0x84222325cbf29ce4)))
u[6] = (u[6] & 0x0f) | 0x80
u[8] = (u[8] & 0x3f) | 0x80
h = fnv(b'godwit-net-mac' + bytes(u) + struct.pack('<I', 0), 0xcbf29ce484222325)
h ^= h >> 30; h = (h * 0xbf58476d1ce4e5b9) & M
h ^= h >> 27; h = (h * 0x94d049bb133111eb) & M
h ^= h >> 31
print(':'.join('%02x' % b for b in [2] + [(h >> (8 * i)) & 0xff for i in range(5)]))
EOF
}

# ---- bad specs and interfaces that cannot be opened (exit 1, before the guest runs) ----
expect net-spec-no-tap 1 'lacks tap=NAME' "$GODWIT" run --kernel "$GUEST_ELF" --net mac=02:00:00:00:00:01
expect net-spec-unknown 1 "unknown option 'queues'" "$GODWIT" run --kernel "$GUEST_ELF" --net tap=x,queues=2
expect net-spec-bad-mac 1 "bad MAC '02:00:00:00:00'" "$GODWIT" run --kernel "$GUEST_ELF" --net tap=x,mac=02:00:00:00:00
expect net-spec-multicast-mac 1 'multicast' "$GODWIT" run --kernel "$GUEST_ELF" --net tap=x,mac=01:00:5e:00:00:01
expect net-tap-name-too-long 1 'longer than 15 characters' \
	"$GODWIT" run --kernel "$GUEST_ELF" --net tap=abcdefghijklmnopq
ip -n "$NS" link add gwv0 type veth peer name gwv1
expect net-tap-not-a-tap 1 'interface gwv0 exists and is not a TAP device' \
	"$GODWIT" run --kernel "$GUEST_ELF" --net tap=gwv0
ip -n "$NS" tuntap add gwtun0 mode tun
expect net-tap-is-tun 1 'gwtun0 is a TUN device, not a TAP' \
	"$GODWIT" run --kernel "$GUEST_ELF" --net tap=gwtun0
ip -n "$NS" link del gwv0 2>/dev/null
ip -n "$NS" link del gwtun0 2>/dev/null

# ---- the guest on a TAP godwit creates -------------------------------------------------
log=$T_TMP/net.log
# (ip netns exec execs godwit: $! is godwit's pid; the EXIT trap kills what is left)
ip netns exec "$NS" "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --name "$NAME" \
	--api "$T_TMP/net.sock" --net tap=gwt0 --cmdline "workload=net ip=$IP_GUEST" \
	</dev/null >"$log" 2>&1 &
gpid=$!
if ! t_wait_link "$NS" gwt0 10; then
	t_fail net-tap-created "no interface gwt0 in the namespace 10 s after start; log: $(tail -c 500 "$log")"
	exit 0
fi
if ip -n "$NS" -o link show gwt0 | grep -q '[<,]UP[,>]'; then
	t_pass net-tap-created
else
	t_fail net-tap-created "gwt0 is not up: $(ip -n "$NS" -o link show gwt0)"
fi
ip -n "$NS" addr add "$IP_HOST/24" dev gwt0
if ! t_wait_for "$log" '^net: t=' 20; then
	t_fail net-guest "the guest's net workload did not start; log: $(tail -c 800 "$log")"
	exit 0
fi

want_mac=$(expected_mac "$NAME")
got_mac=$(sed -n 's/^net: found mac=\([0-9a-f:]*\).*/\1/p' "$log" | head -1)
if [ -n "$got_mac" ] && [ "$got_mac" = "$want_mac" ]; then
	t_pass net-mac-default
else
	t_fail net-mac-default "guest found mac=${got_mac:-?}, expected $want_mac for --name $NAME"
fi

# Another VM cannot take the TAP while this one has it.
expect net-tap-busy 1 'TAP gwt0 is busy' "$GODWIT" run --kernel "$GUEST_ELF" --net tap=gwt0

if nsx "${PING[@]}" -c 3 -i 0.2 -W 2 -w 10 "$IP_GUEST" >"$T_TMP/ping.out" 2>&1; then
	lladdr=$(ip -n "$NS" neigh show "$IP_GUEST" dev gwt0 | sed -n 's/.*lladdr \([0-9a-f:]*\).*/\1/p')
	if [ "$lladdr" = "$want_mac" ]; then
		t_pass net-ping
	else
		t_fail net-ping "ping answered, but the neighbour entry is '$lladdr', not $want_mac"
	fi
else
	t_fail net-ping "no echo reply: $(tail -3 "$T_TMP/ping.out" | tr '\n' ' '); log: $(tail -c 400 "$log")"
fi

# UDP echo: a window of datagrams in flight (lost ones resent), each echo compared
# with what was sent for its sequence number.  Bounded by a deadline.
cat >"$T_TMP/udpecho.py" <<'EOF'
import hashlib, os, select, socket, struct, sys, time
ip, total, deadline_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.connect((ip, 7))
s.setblocking(False)
WINDOW, RTO, MAXTRY = 48, 0.25, 40
t0 = time.monotonic()
deadline = t0 + deadline_s
seq = 0
sent_bytes = 0          # payload bytes of distinct datagrams
acked = {}              # seq -> digest of the payload (in order, for the totals)
out = {}                # seq -> [payload, last send time, tries]
mismatch = resent = dup = 0
def size_for(n):        # mostly full-size (1472: no fragments), sometimes small
    return 1472 if n % 4 else 8 + (n * 7919) % 1465
while (sent_bytes < total or out) and time.monotonic() < deadline:
    now = time.monotonic()
    while len(out) < WINDOW and sent_bytes < total:
        n = size_for(seq)
        p = struct.pack('!Q', seq) + os.urandom(n - 8)
        try:
            s.send(p)
        except BlockingIOError:
            break
        out[seq] = [p, now, 1]
        sent_bytes += n
        seq += 1
    for k, v in list(out.items()):
        if now - v[1] > RTO:
            if v[2] >= MAXTRY:
                print('FAIL seq %d unanswered after %d tries' % (k, v[2]))
                sys.exit(1)
            try:
                s.send(v[0])
            except BlockingIOError:
                break
            v[1] = now
            v[2] += 1
            resent += 1
    r, _, _ = select.select([s], [], [], 0.05)
    while r:
        try:
            d = s.recv(2048)
        except BlockingIOError:
            break
        if len(d) < 8:
            mismatch += 1
            continue
        k = struct.unpack('!Q', d[:8])[0]
        if k in out:
            if d != out[k][0]:
                mismatch += 1
                print('MISMATCH seq %d: sent %d bytes, got %d' % (k, len(out[k][0]), len(d)))
            else:
                acked[k] = hashlib.sha256(d).digest()
            del out[k]
        elif k in acked:
            dup += 1    # the echo of a resent datagram
        else:
            mismatch += 1
secs = time.monotonic() - t0
hrx = hashlib.sha256()
for k in range(seq):
    if k in acked:
        hrx.update(acked[k])
got = len(acked)
print('datagrams=%d echoed=%d bytes=%d mismatches=%d resent=%d dups=%d secs=%.1f mib_s=%.1f sha_rx=%s'
      % (seq, got, sent_bytes, mismatch, resent, dup, secs, sent_bytes / secs / 2**20 if secs else 0,
         hrx.hexdigest()[:16]))
sys.exit(0 if mismatch == 0 and got == seq and not out and sent_bytes >= total else 1)
EOF
if nsx timeout 400 python3 "$T_TMP/udpecho.py" "$IP_GUEST" $((UDP_MIB << 20)) 360 \
	>"$T_TMP/udp.out" 2>&1; then
	# The guest's own count of echoed payload bytes must cover what we sent.
	sleep 1.2
	ub=$(t_complete "$log" | grep -a '^net: t=' | tail -1 | sed -n 's/.*udp_bytes=\([0-9]*\).*/\1/p')
	if [ -n "$ub" ] && [ "$ub" -ge $((UDP_MIB << 20)) ]; then
		t_pass net-udp-echo
	else
		t_fail net-udp-echo "client OK but the guest reports udp_bytes=${ub:-?} < $((UDP_MIB << 20))"
	fi
else
	t_fail net-udp-echo "$(tail -3 "$T_TMP/udp.out" | tr '\n' ' '); guest: $(grep '^net: t=' "$log" | tail -1)"
fi
echo "# udp: $(tail -1 "$T_TMP/udp.out")"
echo "# guest: $(t_complete "$log" | grep -a '^net: t=' | tail -1)"

# Each datagram the client sent (resent ones too) is a frame to the guest, with more
# bytes than its payload (headers); each echo a frame from it.
if ! prom_scrape "$T_TMP/net.sock" "$T_TMP/nm.json"; then
	t_fail net-metrics "$PROM_ERR"
else
	udp=$(tail -1 "$T_TMP/udp.out")
	dg=$(t_field "$udp" datagrams) ub=$(t_field "$udp" bytes)
	got=
	for d in rx tx; do
		for m in packets bytes dropped; do
			got+=" $d-$m=$(prom_val "$T_TMP/nm.json" godwit_net_${m}_total tap=gwt0 direction=$d)"
		done
	done
	read -r rxp rxb rxd txp txb txd <<<"$(sed 's/ [a-z-]*=/ /g' <<<"$got")"
	if [ -z "$dg" ] || ! [ "$rxp" -ge "$dg" ] || ! [ "$txp" -ge "$dg" ] ||
		! [ "$rxb" -gt "$ub" ] || ! [ "$txb" -gt "$ub" ]; then
		t_fail net-metrics "$got; the client sent $dg datagrams, $ub bytes"
	else
		t_pass net-metrics
	fi
	echo "# metrics:$got"
fi

# Stopping godwit removes the TAP it created.
kill -TERM "$gpid" 2>/dev/null
wait "$gpid"
rc=$?
gone=0
for ((i = 0; i < 50; i++)); do
	ip -n "$NS" link show gwt0 >/dev/null 2>&1 || { gone=1; break; }
	sleep 0.1
done
if [ "$rc" -eq 7 ] && [ $gone = 1 ]; then
	t_pass net-tap-removed
else
	t_fail net-tap-removed "godwit exit status $rc (expected 7), gwt0 gone=$gone"
fi
if grep -qE 'ASan|runtime error|virtio-net.*(malformed|needs reset)' "$log"; then
	t_fail net-log-clean "$(grep -m3 -E 'ASan|runtime error|virtio-net' "$log")"
else
	t_pass net-log-clean
fi

# ---- an existing (persistent) TAP: attached to, with mac=, and left in place -----------
ip -n "$NS" tuntap add gwp0 mode tap
ip -n "$NS" addr add "$IP_HOST/24" dev gwp0
ip -n "$NS" link set gwp0 up
log2=$T_TMP/net-existing.log
ip netns exec "$NS" "$GODWIT" run --kernel "$GUEST_ELF" --mem 64M \
	--net tap=gwp0,mac=02:00:5e:00:10:42 --cmdline "workload=net ip=$IP_GUEST" </dev/null >"$log2" 2>&1 &
gpid=$!
if t_wait_for "$log2" '^net: t=' 20 && nsx "${PING[@]}" -c 2 -i 0.2 -W 2 -w 10 "$IP_GUEST" >/dev/null 2>&1 &&
	grep -q '^net: found mac=02:00:5e:00:10:42' "$log2"; then
	t_pass net-tap-existing-mac
else
	t_fail net-tap-existing-mac "no ping reply or wrong MAC: $(grep -m1 'net: found' "$log2"); $(tail -c 300 "$log2")"
fi
kill -TERM "$gpid" 2>/dev/null
wait "$gpid"
if ip -n "$NS" link show gwp0 >/dev/null 2>&1; then
	t_pass net-tap-existing-kept
else
	t_fail net-tap-existing-kept "godwit removed the persistent TAP gwp0 it had attached to"
fi
