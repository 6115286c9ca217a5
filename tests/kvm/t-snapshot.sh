#!/bin/bash
# Tier 1: godwit snapshot / godwit restore with the test guest (2 vCPUs,
# workload=mem+disk on a raw image).  A snapshot with --resume leaves the VM
# running; one without stops it (godwit run exits 0); restore continues the
# guest: new memtest and disk reports with errors=0, the guest's t= clock
# never going back; three snapshot/restore rounds in a row.  stream-dump
# lists the sections; a damaged or truncated snapshot, a guest-visible
# option that differs, and a missing --disk are refused (exit 1) with a
# message naming the problem, and without a crash.
. "$(dirname "$0")/../lib.sh"

t_need_kvm snapshot || exit 0
if [ ! -f "$GUEST_ELF" ]; then
	t_fail snapshot "no test guest at $GUEST_ELF (make guest)"
	exit 0
fi

CMDLINE='workload=mem+disk mem=32 rate=20 report=200 disk_mib=8'
img=$T_TMP/disk.img
sock=$T_TMP/api.sock
truncate -s 64M "$img"

# reports FILE: number of complete memtest lines.
reports() { grep -ac '^memtest: t=' "$1" 2>/dev/null; }
# wait_reports FILE N: until FILE has N memtest lines and a disk report (20 s).
wait_reports() {
	local i
	for ((i = 0; i < 200; i++)); do
		if [ "$(reports "$1")" -ge "$2" ] && grep -qa '^disk: t=' "$1"; then return 0; fi
		sleep 0.1
	done
	return 1
}
# wait_exit PID: its exit status, within 20 s (124 if it did not exit).
wait_exit() {
	local i
	for ((i = 0; i < 200; i++)); do
		if ! kill -0 "$1" 2>/dev/null; then wait "$1"; return $?; fi
		sleep 0.1
	done
	kill "$1" 2>/dev/null
	wait "$1"
	return 124
}

# ---- the first run: snapshot --resume, a refused path, snapshot (stop) -----------------
timeout 120 "$GODWIT" run --kernel "$GUEST_ELF" --mem 128M --cpus 2 --api "$sock" \
	--disk "$img" --cmdline "$CMDLINE" </dev/null >"$T_TMP/out.0" 2>"$T_TMP/err.0" &
pid=$!
if ! wait_reports "$T_TMP/out.0" 3; then
	t_fail snapshot "the guest did not start its workloads; stderr: $(head -c 300 "$T_TMP/err.0")"
	exit 0
fi
"$GODWIT" snapshot --api "$sock" --out "$T_TMP/live.gws" --resume >"$T_TMP/snap.live" 2>&1
rc=$?
n=$(reports "$T_TMP/out.0")
mode=$(stat -c %a "$T_TMP/live.gws" 2>/dev/null)
if [ $rc -ne 0 ] || [ "$mode" != 600 ]; then
	t_fail snapshot-resume "exit status $rc, file mode '${mode:-none}': $(cat "$T_TMP/snap.live")"
elif ! wait_reports "$T_TMP/out.0" $((n + 2)) || ! kill -0 $pid 2>/dev/null; then
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
		</dev/null >"$T_TMP/out.$round" 2>"$T_TMP/err.$round" &
	pid=$!
	if ! wait_reports "$T_TMP/out.$round" 3; then
		t_fail restore "round $round: no new reports after the restore; stderr: $(tail -c 300 "$T_TMP/err.$round")"
		ok=0
		break
	fi
done
# The guest's console across every run is one log: errors=0, t= never back.
cat "$T_TMP"/out.[0-4] 2>/dev/null >"$T_TMP/all.out"
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
if wait_reports "$T_TMP/same.out" 2 && kill -0 $pid 2>/dev/null; then
	t_pass restore-same-options
else
	t_fail restore-same-options "stderr: $(head -c 300 "$T_TMP/same.err")"
fi
kill $pid 2>/dev/null
wait $pid 2>/dev/null
exit 0
