#!/bin/bash
# Tier 1: storage migration (migrate --with-disks, docs/migration.md) between
# two godwit processes on this host, with the test guest's journal disk
# workload (guest/README.md, disk_mode=journal) checking every record it
# wrote, and tests/kvm/journal_check.py checking the images afterwards.
#
#   storage-journal  64 MiB image, mem+disk journal (unthrottled, 16 MiB
#                    range) and runtime=10: migrate --with-disks to a new
#                    file: exit 0, source exit 6, disk_bytes > 0,
#                    disk_rounds >= 2; the guest journals on at the
#                    destination (errors=0, its scanner makes passes), its
#                    final verify (at runtime=) finds every record, and the
#                    destination's image holds every record up to the last
#                    flushed seq; the source's image is a valid journal whose
#                    newest seq is <= what the guest had written when it
#                    first reported at the destination (the source stopped
#                    writing at the switch)
#   storage-sparse   8 GiB sparse image with 200 MiB of data and 8 MiB of
#                    written zeros: the copy has the same size, < 300 MiB
#                    allocated, the same bytes (compared extent by extent:
#                    cmp would read 8 GiB), disk_bytes < 300 MiB
#   storage-faults   kill -9 of the destination during the disk phase
#                    (--max-bandwidth 10M): migrate exit 1, the source and its
#                    journal go on (a killed process cannot remove its
#                    partial file: reported only); the link cut during the
#                    disk phase (migproxy.py cut-bytes): the destination exits
#                    1 and removes the file it created; then a migration
#                    succeeds and both images check out
#   storage-serial   --with-disks=nosuch: exit 1 naming it, the VM runs on
#   storage-refuse   the destination's --disk is an existing non-empty file:
#                    refused without --overwrite (exit 1, the file and
#                    --overwrite named, the file unchanged), done with it
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=storage
t_need_guest $N || exit 0
HERE=$(cd "$(dirname "$0")" && pwd)
JCHECK=$HERE/journal_check.py
T0=$(date +%s.%N)
# STORAGE_CASES="journal sparse ...": run only these cases (default: all).
want() { t_want STORAGE_CASES "$1"; }

# jlines FILE: the complete journal report lines of a console log.
JL_RE='^journal: t=[0-9.]+ seq=[0-9]+ written=[0-9]+ flushed=[0-9]+ errors=[0-9]+ verified=[0-9]+ passes=[0-9]+$'
jlines() { tr -d '\r' 2>/dev/null <"$1" | grep -aE "$JL_RE"; }
njl() { jlines "$1" | wc -l; }
# guest_bad FILE...: the guest's error lines, if any.
guest_bad() {
	grep -haE 'journal: ERROR|disk: ERROR|memtest: ERROR|EXCEPTION|virtio: .*did not answer|journal: verify skipped' "$@" 2>/dev/null | head -n 3
	{ for f in "$@"; do jlines "$f"; done; } | grep -v ' errors=0 ' | head -n 2
}
# wait_jl FILE N SECS: until FILE has N journal lines.
wait_jl() { wait_count njl "$@"; }

# migrate NAME ARGS...: godwit migrate --json from S_SOCK to D_ADDR (unless
# ARGS has its own --to); M_RC, M_JSON, M_ERR.
migrate() {
	local name=$1 to=(--to "$D_ADDR")
	shift
	[[ " $* " == *" --to "* ]] && to=()
	M_JSON=$T_TMP/$name.json M_ERR=$T_TMP/$name.migerr
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" "${to[@]}" --json "$@" >"$M_JSON" 2>"$M_ERR"
	M_RC=$?
}
# mig_ok: migrate exited 0 with status completed and the source exited 6 (else WHY).
mig_ok() {
	local src_rc=-
	WHY=
	if [ "$M_RC" -eq 0 ]; then
		wait_exit "$S_PID" 15
		src_rc=$?
	fi
	if [ "$M_RC" -ne 0 ] || [ "$(jget "$M_JSON" status)" != completed ] || [ "$src_rc" != 6 ]; then
		WHY="migrate exit $M_RC, source exit $src_rc (expected 0, 6): $(cat "$M_JSON") $(tail -c 300 "$M_ERR"); dst: $(tail -c 300 "$D_ERR")"
		return 1
	fi
	return 0
}
# runs_on PID SOCK OUT N: the VM at SOCK runs and its guest prints N more
# journal lines within 10 s, no errors (else WHY).
runs_on() { goes_on "$1" "$2" "$3" "$4" njl guest_bad "journal lines"; }
# jcheck NAME IMAGE ARGS...: journal_check.py; JC holds its last line (WHY on failure).
jcheck() {
	local name=$1 img=$2 rc
	shift 2
	timeout 30 python3 "$JCHECK" "$img" "$@" >"$T_TMP/$name.jc" 2>&1
	rc=$?
	JC=$(tail -n 1 "$T_TMP/$name.jc")
	[ $rc -eq 0 ] && return 0
	WHY="journal_check $(basename "$img") $*: exit $rc: $(tr '\n' '|' <"$T_TMP/$name.jc" | head -c 500)"
	return 1
}

# ---- storage-journal -------------------------------------------------------------------------
journal_case() {
	local name=$N-journal start img=$T_TMP/j-src.img dimg=$T_TMP/j-dst.img rc db dr
	local s_last d_first d_last vline F W DJC
	start=$(date +%s.%N)
	truncate -s 64M "$img"
	start_vm j.src --mem 128M --cpus 1 --disk "$img,serial=d0" \
		--cmdline 'workload=mem+disk disk_mode=journal mem=32 rate=20 report=200 runtime=10'
	if ! wait_jl "$S_OUT" 3 20; then
		t_fail $name "the journal did not start: $(tail -c 300 "$S_OUT" | tr '\n' '|') $(tail -c 300 "$S_ERR")"
		kill_pid "$S_PID"
		return
	fi
	if ! start_dst j.dst --disk "$dimg"; then
		t_fail $name "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill_pid "$S_PID"
		kill_pid "$D_PID"
		return
	fi
	migrate j --with-disks
	if ! mig_ok; then
		t_fail $name "$WHY"
		kill_pid "$S_PID"
		kill_pid "$D_PID"
		return
	fi
	db=$(jget "$M_JSON" disk_bytes) dr=$(jget "$M_JSON" disk_rounds)
	echo "# $name: total $(jget "$M_JSON" total_ms) ms, downtime $(jget "$M_JSON" downtime_ms) ms, disk_bytes $db, disk_rounds $dr"
	# The guest powers off at runtime=10 (t on its own clock), after its final verify.
	wait_exit "$D_PID" 30
	rc=$?
	s_last=$(jlines "$S_OUT" | tail -n 1)
	d_first=$(jlines "$D_OUT" | head -n 1)
	d_last=$(jlines "$D_OUT" | tail -n 1)
	vline=$(grep -a '^journal: verify ' "$D_OUT" | tail -n 1)
	F=$(field "$vline" flushed)
	W=$(field "$d_first" written)
	echo "#   source's last: $s_last"
	echo "#   destination: first '$d_first', last '$d_last'; $vline"
	if [ "${db:-0}" -le 0 ] || [ "${dr:-0}" -lt 2 ]; then
		t_fail $name "report: disk_bytes '$db' (want > 0), disk_rounds '$dr' (want >= 2): $(cat "$M_JSON")"
	elif [ $rc -ne 0 ]; then
		t_fail $name "the destination godwit exited $rc (expected 0 at the guest's power-off): $(tail -c 300 "$D_ERR") $(tail -c 300 "$D_OUT" | tr '\n' '|')"
	elif grep -qa 'godwit-guest: boot' "$D_OUT"; then
		t_fail $name "the guest booted again on the destination"
	elif [ -n "$(guest_bad "$S_OUT" "$D_OUT")" ]; then
		t_fail $name "guest errors: $(guest_bad "$S_OUT" "$D_OUT" | tr '\n' '|')"
	elif [ -z "$s_last" ] || [ -z "$d_first" ] || [ "$(njl "$D_OUT")" -lt 3 ]; then
		t_fail $name "too few journal lines: source's last '$s_last', destination has $(njl "$D_OUT")"
	elif [ "$(field "$d_first" seq)" -lt "$(field "$s_last" seq)" ] ||
		[ "$(field "$d_last" passes)" -le "$(field "$d_first" passes)" ] ||
		[ "$(field "$d_last" seq)" -le "$(field "$d_first" seq)" ]; then
		t_fail $name "the journal did not go on at the destination (seq back, or no new scanner pass): source's last '$s_last', destination first '$d_first', last '$d_last'"
	elif ! grep -qaE '^journal: verify records=4096 newest=[0-9]+ errors=0 ' <<<"$vline" ||
		[ "$(field "$vline" newest)" != "$F" ]; then
		t_fail $name "the guest's final verify: '$vline' (expected records=4096, newest = flushed, errors=0)"
	elif ! jcheck j.dst "$dimg" --flushed "$F" --max-seq "$F"; then
		t_fail $name "destination image: $WHY"
	elif DJC=$JC && ! jcheck j.src "$img" --flushed "$(field "$s_last" seq)" --max-seq "$W"; then
		t_fail $name "source image (records up to the source's last report, none after what the guest had written at its first destination report, written=$W): $WHY"
	elif [ -n "$(sanitizer "$S_ERR" "$D_ERR" "$M_ERR")" ]; then
		t_fail $name "sanitizer: $(sanitizer "$S_ERR" "$D_ERR" "$M_ERR")"
	else
		echo "#   destination image: $DJC"
		echo "#   source image: $JC (written=$W at the first destination report)"
		t_pass $name
	fi
	echo "#   case took $(elapsed "$start") s"
}
want journal && journal_case

# ---- storage-sparse --------------------------------------------------------------------------
# sparse_cmp A B: same size and the same bytes, reading only the data
# extents of either file (holes read as zeros).
cat >"$T_TMP/sparse_cmp.py" <<'EOF'
import os, sys
def extents(fd, size):
    out, off = [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append([d, h])
        off = h
    return out
fa, fb = os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY)
sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
if sa != sb:
    sys.exit("sizes differ: %d and %d" % (sa, sb))
merged = []
for s, e in sorted(extents(fa, sa) + extents(fb, sb)):
    if merged and s <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], e)
    else:
        merged.append([s, e])
total = 0
for s, e in merged:
    off = s
    while off < e:
        n = min(1 << 20, e - off)
        if os.pread(fa, n, off) != os.pread(fb, n, off):
            sys.exit("the files differ in [%d, %d)" % (off, off + n))
        off += n
        total += n
print("identical: %d bytes compared in %d extents" % (total, len(merged)))
EOF
sparse_case() {
	local name=$N-sparse start img=$T_TMP/sp-src.img dimg=$T_TMP/sp-dst.img o db sz du_k sdu_k cmpo
	start=$(date +%s.%N)
	truncate -s 8G "$img"
	for o in 1 1000 4099 8141; do
		dd if=/dev/urandom of="$img" bs=1M seek=$o count=50 conv=notrunc status=none
	done
	dd if=/dev/zero of="$img" bs=1M seek=3000 count=8 conv=notrunc status=none
	# Extents that neither start nor end on a 64 KiB block (a regression: the first
	# pass once dropped the tail of such an extent).
	dd if=/dev/urandom of="$img" bs=4K seek=$((5000 * 256 + 3)) count=5 conv=notrunc status=none
	dd if=/dev/urandom of="$img" bs=4K seek=$((6000 * 256 + 17)) count=1 conv=notrunc status=none
	sync "$img" 2>/dev/null
	sdu_k=$(du -k "$img" | cut -f1)
	start_vm sp.src --mem 128M --cpus 1 --disk "$img,serial=big" --cmdline 'workload=mem mem=32 rate=20 report=200'
	if ! t_wait_for "$S_OUT" '^memtest: t=' 20; then
		t_fail $name "the guest did not start: $(tail -c 300 "$S_ERR")"
		kill_pid "$S_PID"
		return
	fi
	if ! start_dst sp.dst --disk "$dimg"; then
		t_fail $name "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill_pid "$S_PID"
		kill_pid "$D_PID"
		return
	fi
	migrate sp --with-disks
	if ! mig_ok; then
		t_fail $name "$WHY"
		kill_pid "$S_PID"
		kill_pid "$D_PID"
		return
	fi
	db=$(jget "$M_JSON" disk_bytes)
	echo "# $name: total $(jget "$M_JSON" total_ms) ms, downtime $(jget "$M_JSON" downtime_ms) ms, disk_bytes $db, disk_rounds $(jget "$M_JSON" disk_rounds)"
	t_wait_for "$D_OUT" '^memtest: t=' 10
	end_vm "$D_PID" "$D_SOCK"
	sz=$(stat -c %s "$dimg" 2>/dev/null)
	du_k=$(du -k "$dimg" 2>/dev/null | cut -f1)
	cmpo=$(timeout 60 python3 "$T_TMP/sparse_cmp.py" "$img" "$dimg" 2>&1)
	echo "#   source: $((sdu_k / 1024)) MiB allocated; copy: size $sz, $((${du_k:-0} / 1024)) MiB allocated; $cmpo"
	if [ "$sz" != $((8 << 30)) ]; then
		t_fail $name "the copy's size is '$sz', expected $((8 << 30))"
	elif [ "${du_k:-999999}" -ge $((300 << 10)) ]; then
		t_fail $name "the copy has $du_k KiB allocated (want < 300 MiB): not sparse"
	elif [[ "$cmpo" != identical:* ]]; then
		t_fail $name "source and copy differ: $cmpo"
	elif [ "${db:-0}" -lt $((200 << 20)) ] || [ "$db" -ge $((300 << 20)) ]; then
		t_fail $name "disk_bytes '$db': expected at least the 200 MiB of data and below 300 MiB"
	elif [ -n "$(sanitizer "$S_ERR" "$D_ERR" "$M_ERR")" ]; then
		t_fail $name "sanitizer: $(sanitizer "$S_ERR" "$D_ERR" "$M_ERR")"
	else
		t_pass $name
	fi
	rm -f "$img" "$dimg"
	echo "#   case took $(elapsed "$start") s"
}
want sparse && sparse_case

# ---- storage-faults --------------------------------------------------------------------------
faults_case() {
	local name=$N-faults start img=$T_TMP/f-src.img f1=$T_TMP/f-dst1.img f2=$T_TMP/f-dst2.img
	local f3=$T_TMP/f-dst3.img mpid rc drc gp i js db=0 ok=1 W d_first d_last
	start=$(date +%s.%N)
	# 128 MiB: the journal in the first 4 MiB, 64 MiB of data at 32 MiB.
	truncate -s 128M "$img"
	dd if=/dev/urandom of="$img" bs=1M seek=32 count=64 conv=notrunc status=none
	start_vm f.src --mem 128M --cpus 1 --disk "$img,serial=d0" \
		--cmdline 'workload=mem+disk disk_mode=journal disk_mib=4 journal_rate=2000 mem=32 rate=20 report=200'
	if ! wait_jl "$S_OUT" 2 20; then
		t_fail $name "the journal did not start: $(tail -c 300 "$S_OUT" | tr '\n' '|') $(tail -c 300 "$S_ERR")"
		kill_pid "$S_PID"
		return
	fi

	# 1: kill -9 of the destination while the disks are copied.
	start_dst f.dst1 --disk "$f1"
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" --with-disks --max-bandwidth 10M \
		>"$T_TMP/f1.mig" 2>&1 &
	mpid=$!
	for ((i = 0; i < 150; i++)); do
		js=$("$GODWIT" migrate-status --api "$S_SOCK" --json 2>/dev/null | tr -d ' \n')
		db=$(sed -n 's/.*"disk_bytes":\([0-9]*\).*/\1/p' <<<"$js")
		[ "${db:-0}" -ge $((8 << 20)) ] && break
		sleep 0.1
	done
	gp=$(godwit_pid "$D_PID")
	kill -9 "$gp" 2>/dev/null
	wait_exit $mpid 20
	rc=$?
	wait_exit "$D_PID" 5 >/dev/null
	echo "# $name: destination killed at disk_bytes=${db:-?} ($(sed -n 's/.*"round":\([0-9]*\).*/round \1/p' <<<"$js")); migrate: $(tail -n 1 "$T_TMP/f1.mig")"
	echo "#   its partial copy $([ -e "$f1" ] && echo "remains ($(du -k "$f1" | cut -f1) KiB allocated): a killed process cannot remove it" || echo "is gone")"
	if [ "${db:-0}" -lt $((8 << 20)) ]; then
		t_fail $name-kill-dst "the disk phase never reached 8 MiB: $js"
		ok=0
	elif [ $rc -ne 1 ]; then
		t_fail $name-kill-dst "migrate exit $rc (expected 1): $(cat "$T_TMP/f1.mig")"
		ok=0
	elif ! runs_on "$S_PID" "$S_SOCK" "$S_OUT" 3; then
		t_fail $name-kill-dst "the source after the fault: $WHY"
		ok=0
	else
		t_pass $name-kill-dst
	fi
	rm -f "$f1"
	[ $ok -eq 1 ] || { kill_pid "$S_PID"; return; }

	# 2: the link cut after 16 MiB (inside the first disk pass): the destination
	# fails by itself and removes the file it created.
	start_dst f.dst2 --disk "$f2"
	timeout 100 python3 "$PROXY" "unix:$T_TMP/f2.px" "$D_ADDR" cut-bytes $((16 << 20)) >"$T_TMP/f2.px.out" 2>&1 &
	local ppid=$!
	t_wait_for "$T_TMP/f2.px.out" '^listening' 10
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "unix:$T_TMP/f2.px" --with-disks >"$T_TMP/f2.mig" 2>&1
	rc=$?
	wait_exit "$D_PID" 15
	drc=$?
	wait_exit $ppid 5 >/dev/null
	echo "#   cut: proxy $(tr '\n' ' ' <"$T_TMP/f2.px.out"); dst: $(grep -a 'incoming migration\|removed' "$D_ERR" | tr '\n' '|')"
	if [ $rc -ne 1 ] || [ $drc -ne 1 ] || ! grep -q '^cut' "$T_TMP/f2.px.out"; then
		t_fail $name-cut "migrate exit $rc, destination exit $drc (expected 1, 1): $(cat "$T_TMP/f2.mig"); dst: $(tail -c 300 "$D_ERR")"
		ok=0
	elif [ -e "$f2" ]; then
		t_fail $name-cut "the destination left its partial copy $(basename "$f2") ($(du -k "$f2" | cut -f1) KiB allocated): $(tail -c 300 "$D_ERR")"
		ok=0
	elif ! runs_on "$S_PID" "$S_SOCK" "$S_OUT" 3; then
		t_fail $name-cut "the source after the fault: $WHY"
		ok=0
	else
		t_pass $name-cut
	fi
	[ $ok -eq 1 ] || { kill_pid "$S_PID"; return; }

	# 3: a migration that works; both images check out afterwards.
	start_dst f.dst3 --disk "$f3"
	migrate f3 --with-disks
	if ! mig_ok; then
		t_fail $name-after "$WHY"
		kill_pid "$S_PID"
		kill_pid "$D_PID"
		return
	fi
	echo "#   after: total $(jget "$M_JSON" total_ms) ms, downtime $(jget "$M_JSON" downtime_ms) ms, disk_bytes $(jget "$M_JSON" disk_bytes), disk_rounds $(jget "$M_JSON" disk_rounds)"
	if ! runs_on "$D_PID" "$D_SOCK" "$D_OUT" 5; then
		t_fail $name-after "at the destination: $WHY"
		kill_pid "$D_PID"
		return
	fi
	d_first=$(jlines "$D_OUT" | head -n 1)
	d_last=$(jlines "$D_OUT" | tail -n 1)
	W=$(field "$d_first" written)
	end_vm "$D_PID" "$D_SOCK"
	if [ "$(field "$d_last" passes)" -le "$(field "$d_first" passes)" ]; then
		t_fail $name-after "no scanner pass at the destination: first '$d_first', last '$d_last'"
	elif ! jcheck f.dst3 "$f3" --mib 4 --flushed "$(field "$d_last" seq)"; then
		t_fail $name-after "destination image: $WHY"
	elif ! cmp -s -i $((32 << 20)):$((32 << 20)) -n $((64 << 20)) "$img" "$f3"; then
		t_fail $name-after "the 64 MiB of data at 32 MiB differ between source and copy"
	elif ! jcheck f.src "$img" --mib 4 --max-seq "$W"; then
		t_fail $name-after "source image (no record after written=$W, the destination's first report): $WHY"
	elif [ -n "$(guest_bad "$S_OUT" "$D_OUT")" ]; then
		t_fail $name-after "guest errors: $(guest_bad "$S_OUT" "$D_OUT" | tr '\n' '|')"
	elif [ -n "$(sanitizer "$S_ERR" "$T_TMP"/f.dst*.err "$T_TMP/f3.migerr")" ]; then
		t_fail $name-after "sanitizer: $(sanitizer "$S_ERR" "$T_TMP"/f.dst*.err "$T_TMP/f3.migerr")"
	else
		echo "#   images: $JC; destination's last '$d_last'"
		t_pass $name-after
	fi
	rm -f "$img" "$f3"
	echo "#   case took $(elapsed "$start") s"
}
want faults && faults_case

# ---- storage-serial, storage-refuse: one source VM ---------------------------------------------
refuse_case() {
	local start img=$T_TMP/r-src.img ex=$T_TMP/r-existing.img x0=$T_TMP/r-nosuch.img
	local h0 h1 rc drc msg d_first d_last
	start=$(date +%s.%N)
	truncate -s 16M "$img"
	start_vm r.src --mem 128M --cpus 1 --disk "$img,serial=d0" \
		--cmdline 'workload=mem+disk disk_mode=journal disk_mib=2 journal_rate=500 mem=16 rate=5 report=200'
	if ! wait_jl "$S_OUT" 2 20; then
		t_fail $N-serial "the journal did not start: $(tail -c 300 "$S_OUT" | tr '\n' '|') $(tail -c 300 "$S_ERR")"
		kill_pid "$S_PID"
		return
	fi
	if want serial; then
		start_dst r.dst0 --disk "$x0"
		migrate r0 --with-disks=nosuch
		msg=$(cat "$M_ERR" "$M_JSON" | tr '\n' ' ')
		echo "# $N-serial: migrate exit $M_RC: $(head -c 300 <<<"$msg")"
		if [ "$M_RC" -ne 1 ] || ! grep -q nosuch <<<"$msg"; then
			t_fail $N-serial "migrate --with-disks=nosuch: exit $M_RC (expected 1, a message naming nosuch): $msg"
		elif ! runs_on "$S_PID" "$S_SOCK" "$S_OUT" 3; then
			t_fail $N-serial "the source afterwards: $WHY"
		elif [ -e "$x0" ]; then
			t_fail $N-serial "the destination created $(basename "$x0") although nothing was to be sent"
		else
			t_pass $N-serial
		fi
		kill_pid "$D_PID"
	fi
	want refuse || { kill_pid "$S_PID"; return; }
	head -c 1M /dev/urandom >"$ex"
	h0=$(sha256sum <"$ex")
	start_dst r.dst1 --disk "$ex"
	migrate r1 --with-disks
	wait_exit "$D_PID" 15
	drc=$?
	h1=$(sha256sum <"$ex")
	msg=$(cat "$M_ERR" "$M_JSON" | tr '\n' ' ')
	echo "# $N-refuse: migrate exit $M_RC, destination exit $drc: $(head -c 300 <<<"$msg")"
	if [ "$M_RC" -ne 1 ] || ! grep -q "$(basename "$ex")" <<<"$msg" || ! grep -q -- '--overwrite' <<<"$msg"; then
		t_fail $N-refuse "migrate to an existing non-empty file: exit $M_RC (expected 1, a message naming the file and --overwrite): $msg; dst: $(tail -c 300 "$D_ERR")"
	elif [ $drc -ne 1 ]; then
		t_fail $N-refuse "the destination exited $drc (expected 1): $(tail -c 300 "$D_ERR")"
	elif [ "$h0" != "$h1" ] || [ "$(stat -c %s "$ex")" != $((1 << 20)) ]; then
		t_fail $N-refuse "the existing file was changed"
	elif ! runs_on "$S_PID" "$S_SOCK" "$S_OUT" 3; then
		t_fail $N-refuse "the source afterwards: $WHY"
	else
		start_dst r.dst2 --disk "$ex" --overwrite
		migrate r2 --with-disks=d0
		if ! mig_ok; then
			t_fail $N-refuse "with --overwrite: $WHY"
		elif ! runs_on "$D_PID" "$D_SOCK" "$D_OUT" 3; then
			t_fail $N-refuse "with --overwrite, at the destination: $WHY"
		else
			d_first=$(jlines "$D_OUT" | head -n 1)
			d_last=$(jlines "$D_OUT" | tail -n 1)
			end_vm "$D_PID" "$D_SOCK"
			if [ "$(stat -c %s "$ex")" != $((16 << 20)) ]; then
				t_fail $N-refuse "with --overwrite: the copy is $(stat -c %s "$ex") bytes, expected $((16 << 20))"
			elif ! jcheck r.dst "$ex" --mib 2 --flushed "$(field "$d_last" seq)"; then
				t_fail $N-refuse "with --overwrite, the copy: $WHY"
			elif ! jcheck r.src "$img" --mib 2 --max-seq "$(field "$d_first" written)"; then
				t_fail $N-refuse "the source image: $WHY"
			elif [ -n "$(sanitizer "$S_ERR" "$T_TMP"/r.dst*.err "$T_TMP"/r*.migerr)" ]; then
				t_fail $N-refuse "sanitizer: $(sanitizer "$S_ERR" "$T_TMP"/r.dst*.err "$T_TMP"/r*.migerr)"
			else
				echo "#   with --overwrite: total $(jget "$M_JSON" total_ms) ms, disk_bytes $(jget "$M_JSON" disk_bytes); copy: $JC"
				t_pass $N-refuse
			fi
		fi
		kill_pid "$D_PID"
	fi
	kill_pid "$S_PID"
	echo "#   cases took $(elapsed "$start") s"
}
{ want serial || want refuse; } && refuse_case

echo "# t-migrate-storage: $(elapsed "$T0") s in all"
exit 0
