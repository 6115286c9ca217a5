#!/bin/bash
# Tier 1: snapshots at disk speed (docs/cli.md, godwit snapshot).  The test guest
# (2 vCPUs, 256 MiB, memtest dirtying 64 MiB) is saved:
#  - with --live --resume into an ext4 (O_DIRECT) snapshot directory: the reply says
#    O_DIRECT, 2+ passes and a pause; the guest goes on; its stall is printed;
#  - refusals: --live on a paused VM, a path outside the snapshot directory, a
#    directory that does not exist (exit 1, the VM untouched);
#  - with --live (stop), then restored: stream-dump shows the precopy sections,
#    memtest goes on with errors=0 (the memory is the guest's at the pause);
#  - from the restored VM into a ramfs directory (O_DIRECT refused: buffered, one log
#    line), restored again, memory verified;
#  - into a 24 MiB tmpfs (ENOSPC mid-write), plain and --live: exit 1 naming the
#    error, no file left behind, the guest keeps running.
# The mounts need root (they are cleaned up); without it those cases SKIP.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

t_need_guest snapshot-live || exit 0

CMDLINE='workload=mem mem=64 rate=50 report=200'
MNT_RAM=$T_TMP/ramfs MNT_FULL=$T_TMP/full
mounted=()
cleanup_mounts() {
	local m
	for m in "${mounted[@]}"; do umount "$m" 2>/dev/null; done
	t_cleanup
}
trap cleanup_mounts EXIT
can_mount=0
if [ "$(id -u)" = 0 ] && mkdir -p "$MNT_RAM" "$MNT_FULL" &&
	mount -t ramfs ramfs "$MNT_RAM" 2>/dev/null && mounted+=("$MNT_RAM") &&
	mount -t tmpfs -o size=24m tmpfs "$MNT_FULL" 2>/dev/null && mounted+=("$MNT_FULL"); then
	can_mount=1
fi

# snap NAME SOCK ARGS...: godwit snapshot --json; SN_RC and SN_OUT (the reply or error).
snap() {
	local name=$1 sock=$2
	shift 2
	SN_OUT=$T_TMP/snap.$name
	timeout 60 "$GODWIT" snapshot --api "$sock" --json "$@" >"$SN_OUT" 2>&1
	SN_RC=$?
}
# max_stall FILE FROM: the largest stall_ms of the memtest lines after the first FROM lines.
max_stall() { mt_lines "$1" | tail -n +"$(($2 + 1))" | sed 's/.* stall_ms=\([0-9.]*\) .*/\1/' | sort -g | tail -n 1; }
# verified NAME PID SOCK OUT: the restored guest reports on with errors=0 (PASS/FAIL NAME).
verified() {
	if ! wait_lines "$4" 3; then
		t_fail "$1" "no memtest reports after the restore: $(tail -c 300 "${4%.out}.err")"
		return 1
	fi
	local bad
	bad=$(guest_errors "$4")
	if [ -n "$bad" ]; then
		t_fail "$1" "errors in the guest after the restore: $bad"
		return 1
	fi
	t_pass "$1"
}

# ---- the first VM: ext4, --live --resume, refusals, --live (stop) ------------------------------
start_src a --cpus 2
if ! kill -0 "$S_PID" 2>/dev/null || [ "$(reports "$S_OUT")" -lt 2 ]; then
	t_fail snapshot-live "the guest did not start: $(tail -c 300 "$S_ERR")"
	exit 0
fi
n0=$(mt_lines "$S_OUT" | wc -l)
snap live "$S_SOCK" --out "$T_TMP/live.gws" --live --resume
read -r direct passes pause live st <<<"$(jvals "$SN_OUT" direct passes pause_ms live state)"
if [ $SN_RC -ne 0 ] || [ "$live" != true ] || [ "$st" != running ] ||
	! awk -v p="$passes" -v m="$pause" 'BEGIN { exit !(p >= 2 && m > 0) }'; then
	t_fail snapshot-live-resume "exit $SN_RC, want live, running, passes >= 2, pause_ms > 0: $(cat "$SN_OUT")"
elif [ "$direct" != true ]; then
	t_fail snapshot-live-direct "$(df -T "$T_TMP" | tail -n 1 | awk '{ print $2 }') does O_DIRECT, the reply says direct=$direct"
elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
	t_fail snapshot-live-resume "the guest did not go on: $WHY"
else
	t_pass snapshot-live-resume
	t_pass snapshot-live-direct
	echo "# $(cat "$SN_OUT")"
	echo "# the guest's longest stall around the live snapshot: $(max_stall "$S_OUT" "$n0") ms (before it: $(mt_lines "$S_OUT" | head -n "$n0" | tail -n +2 | sed 's/.* stall_ms=\([0-9.]*\) .*/\1/' | sort -g | tail -n 1) ms), load $(cut -d' ' -f1-3 /proc/loadavg)"
fi

# Refusals: the VM is untouched by each.
"$GODWIT" pause --api "$S_SOCK" >/dev/null 2>&1
snap paused "$S_SOCK" --out "$T_TMP/p.gws" --live --resume
if [ $SN_RC -ne 1 ] || ! grep -q 'needs a running VM' "$SN_OUT" || [ -e "$T_TMP/p.gws" ] ||
	[ "$(jfield "$("$GODWIT" status --api "$S_SOCK" --json 2>&1)" state)" != paused ]; then
	t_fail snapshot-live-paused "exit $SN_RC (want 1, 'needs a running VM', still paused): $(cat "$SN_OUT")"
else
	t_pass snapshot-live-paused
fi
"$GODWIT" resume --api "$S_SOCK" >/dev/null 2>&1
snap outside "$S_SOCK" --out /var/tmp/godwit-snapshot-live-$$.gws --live --resume
snap nodir "$S_SOCK" --out "$T_TMP/no/such/dir/x.gws" --live --resume
if [ $SN_RC -ne 1 ] || ! grep -q 'not in the snapshot directory' "$T_TMP/snap.outside" ||
	! grep -q 'directly in the snapshot directory' "$T_TMP/snap.nodir" ||
	[ -e /var/tmp/godwit-snapshot-live-$$.gws ]; then
	t_fail snapshot-live-bad-path "$(cat "$T_TMP/snap.outside" "$T_TMP/snap.nodir")"
elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
	t_fail snapshot-live-bad-path "the guest did not go on: $WHY"
else
	t_pass snapshot-live-bad-path
fi

snap stop "$S_SOCK" --out "$T_TMP/stop.gws" --live
wait_exit "$S_PID" 10
vmrc=$?
if [ $SN_RC -ne 0 ] || [ $vmrc -ne 0 ]; then
	t_fail snapshot-live-stop "snapshot exit $SN_RC, VM exit $vmrc (want 0, 0): $(cat "$SN_OUT") $(tail -c 300 "$S_ERR")"
	exit 0
fi
"$GODWIT" stream-dump "$T_TMP/stop.gws" >"$T_TMP/dump" 2>&1
if ! grep -qE '^0x[0-9a-f]+ +vm +precopy +1 +0 ' "$T_TMP/dump" ||
	! grep -qE '^0x[0-9a-f]+ +vm +precopy +1 +2 ' "$T_TMP/dump" ||
	! grep -q 'every checksum matches' "$T_TMP/dump"; then
	t_fail snapshot-live-dump "stream-dump does not show the passes: $(grep -E 'precopy|checksum' "$T_TMP/dump" | head -n 4)"
else
	t_pass snapshot-live-dump
fi

# ---- restored: into ramfs (buffered), restored again -----------------------------------------
restore() {
	local name=$1 from=$2 dir=$3
	S_SOCK=$T_TMP/$name.sock S_OUT=$T_TMP/$name.out S_ERR=$T_TMP/$name.err
	timeout 120 "$GODWIT" restore --from "$from" --api "$S_SOCK" --snapshot-dir "$dir" \
		</dev/null >"$S_OUT" 2>"$S_ERR" &
	S_PID=$!
}
if [ $can_mount -eq 0 ]; then
	restore b "$T_TMP/stop.gws" "$T_TMP"
	verified snapshot-live-restore "$S_PID" "$S_SOCK" "$S_OUT"
	t_skip snapshot-buffered "not root: no ramfs/tmpfs to mount"
	t_skip snapshot-enospc "not root: no small tmpfs to mount"
	end_vm
	exit 0
fi
restore b "$T_TMP/stop.gws" "$MNT_RAM"
verified snapshot-live-restore "$S_PID" "$S_SOCK" "$S_OUT" || exit 0
snap ram "$S_SOCK" --out "$MNT_RAM/ram.gws" --live
wait_exit "$S_PID" 10
read -r direct passes <<<"$(jvals "$SN_OUT" direct passes)"
if [ $SN_RC -ne 0 ] || [ "$direct" != false ] || ! grep -q 'O_DIRECT refused here' "$S_ERR"; then
	t_fail snapshot-buffered "exit $SN_RC, want direct=false and one log line on ramfs: $(cat "$SN_OUT") $(grep -a O_DIRECT "$S_ERR")"
else
	restore c "$MNT_RAM/ram.gws" "$MNT_FULL"
	verified snapshot-buffered "$S_PID" "$S_SOCK" "$S_OUT"
fi
kill -0 "$S_PID" 2>/dev/null || exit 0

# ---- a full disk: clear errors, no file left, the guest goes on ---------------------------------
ok=1
for mode in plain live; do
	args=(--resume)
	[ $mode = live ] && args+=(--live)
	snap "full-$mode" "$S_SOCK" --out "$MNT_FULL/full.gws" "${args[@]}"
	if [ $SN_RC -ne 1 ] || ! grep -q 'No space left on device' "$SN_OUT"; then
		t_fail snapshot-enospc "$mode: exit $SN_RC (want 1, 'No space left on device'): $(cat "$SN_OUT")"
		ok=0
	elif [ -n "$(ls -A "$MNT_FULL")" ]; then
		t_fail snapshot-enospc "$mode: left behind: $(ls -A "$MNT_FULL")"
		ok=0
	elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
		t_fail snapshot-enospc "$mode: the guest did not go on: $WHY"
		ok=0
	fi
done
[ $ok -eq 1 ] && { t_pass snapshot-enospc; echo "# $(cat "$T_TMP/snap.full-live")"; }
end_vm
s=$(sanitizer "$T_TMP"/*.err)
[ -z "$s" ] || t_fail snapshot-live-sanitizer "$s"
exit 0
