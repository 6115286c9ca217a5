#!/bin/bash
# Tier 1: a migration over several channels (godwit migrate --channels N,
# docs/migration.md, "Channels").
#
# Options: --channels 0 and 17 are refused (exit 2), and so is --channels 2 with
# --reconnect-s, --postcopy or --with-disks (exit 1, the VM not asked to move).
# Then the test guest (memtest rewriting 64 MiB at 20 MiB/s) migrates:
#   two       2 channels, plain TCP through chanproxy.py (which records the
#             first bytes of both connections): on each, the first RAM section is
#             v2 with the page data outside its CRC (tests/kvm/ramhdr.py; a
#             GODWIT_PAGE_CRC=on source fails this on the main connection)
#   four-tls  4 channels under mutual TLS (each its own session), --compress zstd
#             (pages of text: the report's compress figures count every channel)
#   stray     2 channels; before the memory channel connects, a stranger replays
#             the channel recorded in "two" (another migration's token): the
#             destination drops it ("token is not this migration's") and the
#             migration completes
#   cut       2 channels; the memory channel's connection is reset after 8 MiB:
#             godwit migrate exits 1 naming memory channel 1, the VM keeps running
#             at the source with its memory intact, the destination discards its
#             copy and says which channel failed
#   one       the same source then moves with --channels 1
# Each completed one: exit 0, the report's channels = N, the destination's
# bytes = the source's (every channel counted on both sides), the source exits 6,
# the guest goes on at the destination with a full verification pass, errors=0.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=migrate-channels
t_need_guest $N || exit 0
CMDLINE='workload=mem mem=64 rate=20 report=200'
PX=$ROOT/tests/kvm/chanproxy.py
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NEED=$((64 * 256))

# ---- options ---------------------------------------------------------------------------------
t_expect $N-zero 2 'channels 0: expected a number of connections from 1 to 16' \
	"$GODWIT" migrate --api "$T_TMP/none.sock" --to unix:/x --channels 0
t_expect $N-seventeen 2 'channels 17: expected a number of connections from 1 to 16' \
	"$GODWIT" migrate --api "$T_TMP/none.sock" --to unix:/x --channels 17
grep -q -- '--channels N' <("$GODWIT" migrate --help) && t_pass $N-help ||
	t_fail $N-help "--channels is not in godwit migrate --help"

start_src opts
# refused NAME OPTION WHAT: --channels 2 with OPTION is refused ("cannot WHAT"), the VM runs on.
refused() {
	timeout 20 "$GODWIT" migrate -q --api "$S_SOCK" --to unix:"$T_TMP/nowhere" --channels 2 \
		$2 >"$T_TMP/opt.out" 2>&1
	rc=$?
	if [ $rc -eq 1 ] && grep -q "several channels (2) cannot $3" "$T_TMP/opt.out" &&
		src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
		t_pass "$N-refused-$1"
	else
		t_fail "$N-refused-$1" "exit $rc: $(tail -c 300 "$T_TMP/opt.out") $WHY"
	fi
}
refused reconnect "--reconnect-s 5" reconnect
refused postcopy "--postcopy now" "switch to post-copy"
refused disks --with-disks "copy disks"

# bytes_add_up: the destination counted as many stream bytes as the source sent (all channels).
bytes_add_up() {
	local sb db
	sb=$(jget "$MIG_JSON" bytes)
	db=$(jfield "$(mstat "$D_SOCK")" bytes)
	[ -n "$sb" ] && [ "$sb" = "$db" ] && return 0
	WHY="the source sent $sb stream bytes, the destination counted $db"
	return 1
}

# run_ok CASE NCHAN ADDR [MIGRATE-ARGS...]: migrate the VM at S_SOCK to ADDR (the destination
# is started already) over NCHAN channels; it completes and all checks hold.
run_ok() {
	local c=$1 n=$2 addr=$3
	shift 3
	migrate "$c" "$addr" --channels "$n" "$@"
	if ! check_all "$S_PID" $NEED 20; then
		t_fail "$N-$c" "$WHY"
	elif [ "$(jget "$MIG_JSON" channels)" != "$n" ]; then
		t_fail "$N-$c" "the report says channels=$(jget "$MIG_JSON" channels), not $n"
	elif ! bytes_add_up; then
		t_fail "$N-$c" "$WHY"
	elif [ "$n" -gt 1 ] && ! grep -q "the stream came over $n channels" "$D_ERR"; then
		t_fail "$N-$c" "the destination does not say it took $n channels: $(tail -c 300 "$D_ERR")"
	else
		t_pass "$N-$c"
		report_line "$c"
		echo "#   phases: $(jq -c .phases_ms "$MIG_JSON")"
		return 0
	fi
	return 1
}
end_vm

# ---- two channels, plain TCP, the memory channel recorded -------------------------------------
start_src two
DP=$(free_port) PP=$(free_port)
D_AT=tcp:127.0.0.1:$DP start_dst two.dst
python3 "$PX" "$PP" "$DP" record 1,2 65536 "$T_TMP/conn%d.rec" >"$T_TMP/two.px" 2>&1 &
P_PID=$!
t_wait_for "$T_TMP/two.px" '^listening' 10
run_ok two 2 "tcp:127.0.0.1:$PP"
kill_pid "$P_PID"
end_vm "$D_PID" "$D_SOCK"
# A migration socket carries the page data outside the section CRC (RAM v2, NODATACRC:
# TCP's checksum guards it), on the main connection as on the memory channel: the
# first RAM section header each recorded.
for c in 1 2; do
	if ! ram=$(python3 "$ROOT/tests/kvm/ramhdr.py" "$T_TMP/conn$c.rec" 2>&1) ||
		[ "$(jq -r '.version' <<<"$ram")" != 2 ] || [ "$(jq -r '.nodatacrc' <<<"$ram")" != true ]; then
		t_fail $N-two-no-page-crc "connection $c: the first RAM section is not v2 without the page CRC: $ram"
	else
		t_pass $N-two-no-page-crc-$c
	fi
done

# ---- four channels under mutual TLS ------------------------------------------------------------
CMDLINE="$CMDLINE fill=text" start_src four
MIG_TRANSPORT=tls start_dst four.dst
MIG_TRANSPORT=tls run_ok four-tls 4 "$D_ADDR" --tls-dir "$(mig_certs)/src" --compress zstd
# Every channel's writer compresses, and the report counts them all: far more than the
# main channel's quarter of the 64 MiB went compressed.
if ! jq -e '.compress.mode == "zstd" and .compress.bytes_in >= 48 * 1048576 and .compress.bytes_out * 2 <= .compress.bytes_in' "$MIG_JSON" >/dev/null; then
	t_fail $N-four-tls-zstd "compress: $(jq -c .compress "$MIG_JSON")"
else
	t_pass $N-four-tls-zstd
	echo "#   compress: $(jq -c .compress "$MIG_JSON")"
fi
if [ "$(grep -c 'memory channel [1-3] of 4 connected (TLSv1.3' "$D_ERR")" -ne 3 ]; then
	t_fail $N-four-tls-sessions "the destination did not log 3 TLS memory channels: $(grep 'memory channel' "$D_ERR" | head -n 3)"
else
	t_pass $N-four-tls-sessions
fi
end_vm "$D_PID" "$D_SOCK"

# ---- a stranger with another migration's token -------------------------------------------------
if [ ! -s "$T_TMP/conn2.rec" ]; then
	t_fail $N-stray "nothing recorded from the memory channel of 'two': $(cat "$T_TMP/two.px")"
else
	start_src stray
	DP=$(free_port) PP=$(free_port)
	D_AT=tcp:127.0.0.1:$DP start_dst stray.dst
	python3 "$PX" "$PP" "$DP" stray 2 "$T_TMP/conn2.rec" >"$T_TMP/stray.px" 2>&1 &
	P_PID=$!
	t_wait_for "$T_TMP/stray.px" '^listening' 10
	if run_ok stray 2 "tcp:127.0.0.1:$PP"; then
		if grep -q "was dropped: the channel's token is not this migration's; still waiting for the memory channels" "$D_ERR" &&
			grep -q 'the stranger was dropped' "$T_TMP/stray.px"; then
			t_pass $N-stray-dropped
		else
			t_fail $N-stray-dropped "no drop of the stranger logged: $(grep -a 'dropped\|stranger' "$D_ERR" "$T_TMP/stray.px")"
		fi
	fi
	kill_pid "$P_PID"
	end_vm "$D_PID" "$D_SOCK"
fi

# ---- the memory channel cut mid-way, then the same VM over one channel --------------------------
start_src cut
DP=$(free_port) PP=$(free_port)
D_AT=tcp:127.0.0.1:$DP start_dst cut.dst
python3 "$PX" "$PP" "$DP" cut 2 $((8 << 20)) >"$T_TMP/cut.px" 2>&1 &
P_PID=$!
t_wait_for "$T_TMP/cut.px" '^listening' 10
migrate cut "tcp:127.0.0.1:$PP" --channels 2
wait_exit "$D_PID" 15 >/dev/null
drc=$?
if [ "$MIG_RC" -ne 1 ] || ! grep -q 'memory channel 1: ' <<<"$(jget "$MIG_JSON" error)"; then
	t_fail $N-cut "migrate exit $MIG_RC (expected 1, naming memory channel 1): $(tail -c 400 "$MIG_ERR") $(cat "$MIG_JSON")"
elif ! grep -q 'cut connection 2' "$T_TMP/cut.px"; then
	t_fail $N-cut "the proxy did not cut the memory channel: $(cat "$T_TMP/cut.px")"
elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
	t_fail $N-cut "the source after the cut: $WHY"
elif [ "$drc" -eq 0 ] || ! grep -q 'incoming migration failed: memory channel 1: ' "$D_ERR"; then
	t_fail $N-cut "the destination (exit $drc) did not fail naming memory channel 1: $(tail -c 400 "$D_ERR")"
else
	t_pass $N-cut
	echo "# cut: source: $(jget "$MIG_JSON" error | cut -c 1-200)"
	echo "#      destination: $(grep -a 'failed' "$D_ERR" | tail -n 1 | cut -c 1-200)"
fi
kill_pid "$P_PID"
DP=$(free_port)
D_AT=tcp:127.0.0.1:$DP start_dst one.dst
run_ok one 1 "tcp:127.0.0.1:$DP"
end_vm "$D_PID" "$D_SOCK"

s=$(sanitizer "$T_TMP"/*.err "$T_TMP"/*.migerr)
[ -z "$s" ] && t_pass $N-sanitizer || t_fail $N-sanitizer "$s"
exit 0
