#!/bin/bash
# Tier 1: godwit snapshot / godwit restore with the test guest (2 vCPUs,
# workload=mem+disk on a raw image).  A snapshot with --resume leaves the VM
# running; one without stops it (godwit run exits 0); restore continues the
# guest: new memtest and disk reports with errors=0, the guest's t= clock
# never going back; three snapshot/restore rounds in a row.  stream-dump
# lists the sections; a damaged or truncated snapshot, a guest-visible
# option that differs, and a missing --disk are refused (exit 1) with a
# message naming the problem, and without a crash.  With --net: the guest
# (workload=mem+net) on a TAP in a namespace of its own answers ping and UDP
# echo; after snapshot and restore onto a new TAP it answers again, with the
# MAC from the stream (the host learns it afresh by ARP on the new TAP).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"

t_need_guest snapshot || exit 0

CMDLINE='workload=mem+disk mem=32 rate=20 report=200 disk_mib=8'
img=$T_TMP/disk.img
sock=$T_TMP/api.sock
truncate -s 64M "$img"

# wait_ready FILE N: until FILE has N memtest lines and a disk report (20 s).
wait_ready() {
	local i
	for ((i = 0; i < 200; i++)); do
		if [ "$(reports "$1")" -ge "$2" ] && grep -qa '^disk: t=' "$1"; then return 0; fi
		sleep 0.1
	done
	return 1
}

# ---- the first run: snapshot --resume, a refused path, snapshot (stop) -----------------
timeout 120 "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --cpus 2 --api "$sock" \
	--snapshot-dir "$T_TMP" \
	--disk "$img" --cmdline "$CMDLINE" </dev/null >"$T_TMP/out.0" 2>"$T_TMP/err.0" &
pid=$!
if ! wait_ready "$T_TMP/out.0" 3; then
	t_fail snapshot "the guest did not start its workloads; stderr: $(head -c 300 "$T_TMP/err.0")"
	exit 0
fi
"$GODWIT" snapshot --api "$sock" --out "$T_TMP/live.gws" --resume >"$T_TMP/snap.live" 2>&1
rc=$?
n=$(reports "$T_TMP/out.0")
mode=$(stat -c %a "$T_TMP/live.gws" 2>/dev/null)
if [ $rc -ne 0 ] || [ "$mode" != 600 ]; then
	t_fail snapshot-resume "exit status $rc, file mode '${mode:-none}': $(cat "$T_TMP/snap.live")"
elif ! wait_ready "$T_TMP/out.0" $((n + 2)) || ! kill -0 $pid 2>/dev/null; then
	t_fail snapshot-resume "the VM did not go on after snapshot --resume"
else
	t_pass snapshot-resume
	echo "# $(cat "$T_TMP/snap.live")"
fi

# A directory is not a snapshot file: refused, and the VM is untouched.
"$GODWIT" snapshot --api "$sock" --out "$T_TMP" >"$T_TMP/snap.dir" 2>&1
rc=$?
if [ $rc -ne 1 ] || ! grep -q 'is a directory' "$T_TMP/snap.dir" || ! kill -0 $pid 2>/dev/null; then
	t_fail snapshot-bad-path "exit status $rc (expected 1): $(cat "$T_TMP/snap.dir")"
else
	t_pass snapshot-bad-path
fi

# ---- stop, restore, three rounds ------------------------------------------------------------
ok=1
for round in 1 2 3 4; do
	prev=$((round - 1))
	"$GODWIT" snapshot --api "$sock" --out "$T_TMP/s.$round" >"$T_TMP/snap.$round" 2>&1
	rc=$?
	wait_exit $pid
	vmrc=$?
	if [ $rc -ne 0 ] || [ $vmrc -ne 0 ]; then
		t_fail snapshot-stop "round $round: snapshot exit $rc, VM exit $vmrc (expected 0, 0): $(cat "$T_TMP/snap.$round") $(tail -c 300 "$T_TMP/err.$prev")"
		ok=0
		break
	fi
	[ $round -eq 1 ] && { t_pass snapshot-stop; echo "# $(cat "$T_TMP/snap.1")"; }
	[ $round -eq 4 ] && break
	timeout 120 "$GODWIT" restore --from "$T_TMP/s.$round" --api "$sock" --disk "$img" \
		--snapshot-dir "$T_TMP" \
		</dev/null >"$T_TMP/out.$round" 2>"$T_TMP/err.$round" &
	pid=$!
	if ! wait_ready "$T_TMP/out.$round" 3; then
		t_fail restore "round $round: no new reports after the restore; stderr: $(tail -c 300 "$T_TMP/err.$round")"
		ok=0
		break
	fi
done
# The guest's console across every run is one log: errors=0, t= never back.
# A line being printed at a snapshot point is cut there: drop an unterminated
# last line of each run and the unterminated head of the next one, so every
# line checked below is complete.  (Seen in ~1 of 5 runs: the cut line's tail
# does not reappear after the restore — an open bug, see the issue notes.)
python3 - "$T_TMP" >"$T_TMP/all.out" <<'PY'
import glob, os, sys
files = sorted(glob.glob(os.path.join(sys.argv[1], 'out.[0-9]')))
cut = False
for f in files:
    data = open(f, 'rb').read()
    if cut and b'\n' in data:
        data = data[data.index(b'\n') + 1:]
    cut = not data.endswith(b'\n')
    if cut:
        data = data[:data.rfind(b'\n') + 1]
    sys.stdout.buffer.write(data)
PY
if [ $ok -eq 1 ]; then
	bad=$(grep -a '^memtest: t=\|^disk: t=' "$T_TMP/all.out" | grep -av 'errors=0 ' | head -n 2)
	back=$(grep -a '^memtest: t=' "$T_TMP/all.out" | sed 's/^memtest: t=\([0-9.]*\) .*/\1/' |
		awk 'NR > 1 && $1 < last { print "t=" $1 " after t=" last; exit } { last = $1 }')
	if [ -n "$bad" ] || grep -qa 'ERROR\|EXCEPTION' "$T_TMP/all.out"; then
		t_fail restore "errors in the guest: $bad $(grep -a 'ERROR\|EXCEPTION' "$T_TMP/all.out" | head -n 2)"
	elif [ -n "$back" ]; then
		t_fail restore "the guest's clock went back: $back"
	else
		t_pass restore
		t_pass restore-3-rounds
		echo "# $(reports "$T_TMP/all.out") memtest reports, $(grep -ac '^disk: t=' "$T_TMP/all.out") disk reports over 4 runs; last: $(grep -a '^disk: t=' "$T_TMP/all.out" | tail -n 1)"
	fi
fi
kill $pid 2>/dev/null

snap=$T_TMP/s.1
if [ ! -s "$snap" ]; then
	t_fail snapshot-refusals "no snapshot to test with"
	exit 0
fi

# ---- stream-dump lists the sections -----------------------------------------------------------
"$GODWIT" stream-dump "$snap" >"$T_TMP/dump" 2>&1
rc=$?
missing=
for re in ' config ' ' vm ' ' cpu .* 0 ' ' cpu .* 1 ' ' device .*virtio-blk' ' device .*serial' ' ram ' ' eof ' 'every checksum matches'; do
	grep -q -- "$re" "$T_TMP/dump" || missing="$missing '$re'"
done
if [ $rc -ne 0 ] || [ -n "$missing" ]; then
	t_fail stream-dump "exit $rc, missing:$missing; $(head -c 400 "$T_TMP/dump")"
else
	t_pass stream-dump
fi

# refused NAME EXPECTED_RE ARGS...: restore must exit 1, stderr matching EXPECTED_RE.
refused() {
	local name=$1 re=$2 rc
	shift 2
	timeout 30 "$GODWIT" restore "$@" </dev/null >"$T_TMP/$name.out" 2>"$T_TMP/$name.err"
	rc=$?
	if [ $rc -ne 1 ] || ! grep -qE -- "$re" "$T_TMP/$name.err"; then
		t_fail "$name" "exit status $rc (expected 1), stderr: $(head -c 300 "$T_TMP/$name.err")"
	else
		t_pass "$name"
	fi
}

size=$(stat -c %s "$snap")
cp "$snap" "$T_TMP/flip.gws"
b=$(od -An -tu1 -j $((size / 2)) -N1 "$snap" | tr -d ' ')
printf "$(printf '\\%03o' $(((b ^ 0x5a) & 255)))" |
	dd of="$T_TMP/flip.gws" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
refused restore-corrupt "section '[a-z-]+' .*(crc mismatch|checksum)" --from "$T_TMP/flip.gws" --disk "$img"
head -c $((size / 2)) "$snap" >"$T_TMP/trunc.gws"
refused restore-truncated "section '[a-z-]+' .*(bytes left|truncated)" --from "$T_TMP/trunc.gws" --disk "$img"
head -c 5000 "$snap" >"$T_TMP/trunc2.gws"
refused restore-truncated-state "section '[a-z-]+'" --from "$T_TMP/trunc2.gws" --disk "$img"
refused restore-mem-differs "--mem .* differs" --from "$snap" --disk "$img" --mem 256M
refused restore-cpus-differs "--cpus .* differs" --from "$snap" --disk "$img" --cpus 1
refused restore-no-disk "give --disk" --from "$snap"
refused restore-serial-differs "serial=x.*differ" --from "$snap" --disk "$img,serial=x"
refused restore-extra-disk "--disk given 2 times" --from "$snap" --disk "$img" --disk "$img"
# The same options as the snapshot's are accepted (and the VM then runs).
timeout 120 "$GODWIT" restore --from "$snap" --disk "$img" --mem 128M --cpus 2 \
	</dev/null >"$T_TMP/same.out" 2>"$T_TMP/same.err" &
pid=$!
if wait_ready "$T_TMP/same.out" 2 && kill -0 $pid 2>/dev/null; then
	t_pass restore-same-options
else
	t_fail restore-same-options "stderr: $(head -c 300 "$T_TMP/same.err")"
fi
kill $pid 2>/dev/null
wait $pid 2>/dev/null

# ---- --net: snapshot, restore onto another TAP, the guest answers with the same MAC ----------
NS=gwt-snap-$$
IP_HOST=198.18.0.1
IP_GUEST=198.18.0.2
trap 't_netns_del "$NS"; t_cleanup' EXIT
if ! ip netns add "$NS" 2>"$T_TMP/netns.err"; then
	t_fail snapshot-net "cannot create network namespace $NS: $(cat "$T_TMP/netns.err")"
	exit 0
fi
ip -n "$NS" link set lo up
nsx() { ip netns exec "$NS" "$@"; }
if command -v ping >/dev/null 2>&1; then PING=(ping); else PING=(busybox ping); fi
# lladdr TAP: the MAC the host learnt for the guest on TAP.
lladdr() { ip -n "$NS" neigh show "$IP_GUEST" dev "$1" | sed -n 's/.*lladdr \([0-9a-f:]*\).*/\1/p'; }
# udp_echo: 50 datagrams to the guest's port 7, each echo compared; prints a summary.
cat >"$T_TMP/udp.py" <<'EOF2'
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.connect((sys.argv[1], 7))
ok = 0
for i in range(50):
    p = i.to_bytes(4, 'big') + os.urandom(200 + i * 20)
    for _ in range(6):
        s.send(p)
        try:
            if s.recv(4096) == p:
                ok += 1
                break
        except socket.timeout:
            pass
print('udp echoed=%d of 50' % ok)
sys.exit(0 if ok == 50 else 1)
EOF2
# net_ok TAP LOG: ping and UDP echo through TAP, the guest's MAC; sets NET_WHY on failure.
net_ok() {
	NET_WHY=
	if ! nsx "${PING[@]}" -c 3 -i 0.2 -W 2 -w 10 "$IP_GUEST" >"$T_TMP/ping.out" 2>&1; then
		NET_WHY="no echo reply on $1: $(tail -2 "$T_TMP/ping.out" | tr '\n' ' '); guest: $(tail -c 300 "$2")"
	elif ! nsx timeout 30 python3 "$T_TMP/udp.py" "$IP_GUEST" >"$T_TMP/udp.out" 2>&1; then
		NET_WHY="UDP echo on $1: $(tail -2 "$T_TMP/udp.out" | tr '\n' ' ')"
	fi
	[ -z "$NET_WHY" ]
}

nlog0=$T_TMP/net.0
# Not the default for the name: the restore (given no mac=) must take it from the stream.
MAC=02:00:5e:00:10:43
nsock=$T_TMP/net.sock
ip netns exec "$NS" timeout 120 "$GODWIT" run --kernel "$GUEST_ELF" --mem 64M --cpus 1 \
	--name gwt-snap-net --api "$nsock" --net tap=gwn0,mac=$MAC --snapshot-dir "$T_TMP" \
	--cmdline "workload=mem+net mem=8 rate=8 report=200 ip=$IP_GUEST" </dev/null >"$nlog0" 2>&1 &
pid=$!
if ! t_wait_link "$NS" gwn0 10; then
	t_fail snapshot-net "no TAP gwn0 10 s after start: $(tail -c 400 "$nlog0")"
	exit 0
fi
ip -n "$NS" addr add "$IP_HOST/24" dev gwn0
mac0=
if t_wait_for "$nlog0" '^net: t=' 20; then
	mac0=$(sed -n 's/^net: found mac=\([0-9a-f:]*\).*/\1/p' "$nlog0" | head -n 1)
fi
if [ "$mac0" != "$MAC" ] || ! net_ok gwn0 "$nlog0" || [ "$(lladdr gwn0)" != "$mac0" ]; then
	t_fail snapshot-net "before the snapshot: ${NET_WHY:-guest mac '${mac0:-?}', host neighbour '$(lladdr gwn0)'}"
	exit 0
fi
sleep 0.5	# a report (every 200 ms) that counts the echoes
# Complete lines only: the guest may be printing the next report (t_complete, lib.sh).
udp0=$(t_complete "$nlog0" | grep -a '^net: t=' | tail -n 1 | tr -d '\r')
"$GODWIT" snapshot --api "$nsock" --out "$T_TMP/net.gws" >"$T_TMP/net.snap" 2>&1
rc=$?
wait_exit $pid
vmrc=$?
if [ $rc -ne 0 ] || [ $vmrc -ne 0 ]; then
	t_fail snapshot-net "snapshot exit $rc, VM exit $vmrc (expected 0, 0): $(cat "$T_TMP/net.snap")"
	exit 0
fi
# Onto a new TAP (godwit creates gwn1; gwn0 went away with the first godwit).
nlog1=$T_TMP/net.1
ip netns exec "$NS" timeout 120 "$GODWIT" restore --from "$T_TMP/net.gws" --api "$nsock" \
	--net tap=gwn1 </dev/null >"$nlog1" 2>&1 &
pid=$!
if ! t_wait_link "$NS" gwn1 10; then
	t_fail snapshot-net-restore "no TAP gwn1 10 s after the restore: $(tail -c 400 "$nlog1")"
	exit 0
fi
ip -n "$NS" addr add "$IP_HOST/24" dev gwn1
if ip -n "$NS" link show gwn0 >/dev/null 2>&1; then
	t_fail snapshot-net-restore "gwn0 still exists after the first godwit exited"
elif ! t_wait_for "$nlog1" '^net: t=' 20 || ! net_ok gwn1 "$nlog1"; then
	t_fail snapshot-net-restore "after the restore: ${NET_WHY:-no net report}"
elif [ "$(lladdr gwn1)" != "$mac0" ]; then
	t_fail snapshot-net-restore "the guest answered from '$(lladdr gwn1)', before the snapshot from $mac0"
# (Not "a memtest line without errors=0": the last line may be half written.)
elif grep -qa 'godwit-guest: boot\|net: found\|ERROR\|EXCEPTION' "$nlog1" ||
	grep -qaE '^memtest: t=.* errors=[1-9]' "$nlog1"; then
	t_fail snapshot-net-restore "the guest restarted or reported errors: $(grep -a -m 3 'boot\|found\|ERROR\|EXCEPTION\|errors=[1-9]' "$nlog1")"
else
	sleep 0.3
	udp1=$(t_complete "$nlog1" | grep -a '^net: t=' | tail -n 1 | tr -d '\r')
	u0=$(sed -n 's/.* udp=\([0-9]*\) .*/\1/p' <<<"$udp0")
	u1=$(sed -n 's/.* udp=\([0-9]*\) .*/\1/p' <<<"$udp1")
	# 50 echoes before the snapshot, 50 after: the guest's count goes on from the first.
	if [ -z "$u0" ] || [ "$u0" -lt 50 ] || [ -z "$u1" ] || [ "$u1" -lt $((u0 + 50)) ]; then
		t_fail snapshot-net-restore "the guest's UDP count did not go on from ${u0:-?}: '$udp1'"
	else
		t_pass snapshot-net-restore
		echo "# net: mac $mac0 on gwn0 and gwn1; before: $udp0"
		echo "#      after:  $udp1"
	fi
fi
"$GODWIT" shutdown --api "$nsock" >/dev/null 2>&1
wait_exit $pid
rc=$?
[ $rc -eq 0 ] || t_fail snapshot-net-shutdown "godwit exit $rc after shutdown over the API, expected 0"
exit 0
