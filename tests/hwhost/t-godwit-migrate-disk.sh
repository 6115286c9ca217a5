#!/bin/bash
# Tier 2: storage migration (godwit migrate --with-disks) of a stock Linux guest (Debian's
# cloud kernel, 2 vCPUs, 256 MiB) writing to an ext4 file system on its virtio-blk disk
# (guest/linux/init, godwit.workload=ext4): numbered files of random content (sha256 kept
# in guest RAM), deletes and rewrites (at most 48 MiB live: the oldest files go), appends
# to a journal file, sync every 4 files.
# Storage: the source's image is a 128 MiB sparse file made by mkfs.ext4 here (if there is
# no mkfs.ext4, the guest makes ext2 with busybox mke2fs); the destination's --disk is a
# NEW path, which it creates and fills from the migration stream.
# Once the guest wrote for a while, `godwit migrate --with-disks --json` moves it to
# `godwit run --incoming unix:...`; after two progress reports on the destination a line
# "ext4-stop" on the destination's console (its stdin, a FIFO) ends the writing; the guest
# unmounts, mounts read-only again (cold cache), checks every file and powers off.
# PASS: migrate exits 0 with status completed and disk_bytes > 0; the source exits 6; the
# guest wrote files before and after the migration and its verify has errors=0 (every
# file's sha256, the journal, no stray file) with a clean unmount, and every one of the
# files it wrote and synced before its "started" line (gw/keep, never deleted: data that
# existed before the migration) verified OK; the destination exits 0
# at the poweroff; then, on the destination's image: e2fsck -fn finds no error, and the
# files debugfs extracts match the manifest the guest left in the file system (both if
# e2fsprogs is there).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-migrate-disk
hw_need_guest "$name" || exit 0

slog=$T_TMP/migrate-disk-src.log
dlog=$T_TMP/migrate-disk-dst.log
mlog=$T_TMP/migrate-disk-client.log
mjson=$T_TMP/migrate-disk-client.json
flog=$T_TMP/migrate-disk-fsck.log
simg=$SCRATCH/migrate-disk-src.img
dimg=$SCRATCH/migrate-disk-dst.img
ssock=$SCRATCH/migd-src.sock
dsock=$SCRATCH/migd-dst.sock
msock=$SCRATCH/migd-stream.sock
dump=$SCRATCH/migrate-disk-dump
cin=$T_TMP/dst-console.in
rm -rf "$simg" "$dimg" "$ssock" "$dsock" "$msock" "$dump"
cleanup() {
	rm -rf "$simg" "$dimg" "$ssock" "$dsock" "$msock" "$dump" "$SCRATCH/$name.bin"
}
trap 'cleanup; hw_save_logs; t_cleanup' EXIT
hw_pin_godwit "$name" || exit 0

# fail WHY LOG...: FAIL with the tails of LOG... (and of hw_diag's files, if any)
fail() { hw_fail "$name" "$@" "$T_TMP"/migrate-disk-*-diag.log; }
# stuck WHY LOG...: fail, for a guest that stopped making progress, with what each godwit
# still running is doing (lib-l1.sh's hw_diag).
stuck() {
	hw_diag_live migrate-disk src="${spid:-}" dst="${dpid:-}"
	fail "$@"
}

# ---- the source image: 128 MiB, ext4 made here ----------------------------------------
truncate -s 128M "$simg"
have_e2fs=0
command -v e2fsck >/dev/null && command -v debugfs >/dev/null && have_e2fs=1
if command -v mkfs.ext4 >/dev/null; then
	if ! out=$(timeout 120 mkfs.ext4 -q -F -L gwmigdisk -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$simg" 2>&1); then
		t_fail "$name" "mkfs.ext4 failed: $out"
		exit 0
	fi
	made=host
else
	made=mke2fs
	echo "# no mkfs.ext4 here: the guest makes ext2 with busybox mke2fs"
fi

# ---- the source: boots the guest, which starts writing ----------------------------------
# One vCPU: this test is about the disk.  With two, one CI run (of ~6) saw the guest's CPU 1
# stall (RCU stall, no progress) right after the migration: an open bug, recorded in the
# issue notes; t-godwit-migrate.sh keeps migrating a 2-vCPU Linux guest.
hw_start "$slog" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" --initrd "$HW_GUEST_INITRD" \
	--cpus 1 --mem 256M --name tier2-migrate-disk --api "$ssock" --disk "$simg,serial=data" \
	--cmdline "$(hw_append godwit.workload=ext4 godwit.runtime=240)"
spid=$HW_PID
t_boot=$(hw_now)
hw_wait "$slog" '^linux-guest: ext4 (started|mount failed)|^linux-guest: poweroff|Kernel panic' 240 "$spid"
rc=$?
started=$(hw_line "$slog" 'linux-guest: ext4 started ')
if [ $rc -ne 0 ] || [ -z "$started" ]; then
	stuck "the guest's ext4 workload did not start (wait status $rc)" "$slog"
	exit 0
fi
echo "# guest workload started $(hw_since "$t_boot") s after godwit started: $started"
gfs=$(t_last_field "$slog" 'linux-guest: ext4 started ' fs)
gmade=$(t_last_field "$slog" 'linux-guest: ext4 started ' made)
gkept=$(t_last_field "$slog" 'linux-guest: ext4 started ' kept)
if [ "$gmade" != "$made" ] || [ "$gfs" != ext4 ] || [ "${gkept:-0}" -lt 1 ]; then
	fail "the guest mounted fs=$gfs made=$gmade with ${gkept:-no} kept files, expected fs=ext4 made=$made and kept files" "$slog"
	exit 0
fi

# ---- the destination: a new image path, console input from a FIFO -----------------------
mkfifo "$cin" && exec {cfd}<>"$cin"
echo "+ $GODWIT run --incoming unix:$msock --api $dsock --disk $dimg,serial=data <$cin" >>"$dlog"
"$GODWIT" run --incoming "unix:$msock" --api "$dsock" --disk "$dimg,serial=data" \
	<&"$cfd" >>"$dlog" 2>&1 &
dpid=$!
if ! hw_wait "$dlog" 'waiting for an incoming migration' 60 "$dpid"; then
	fail "the destination is not waiting for a migration" "$dlog"
	exit 0
fi

# Two progress reports (~10 s of writing) before the migration.
if ! hw_wait_count "$slog" "linux-guest: ext4 t=" 2 90 "$spid"; then
	stuck "no progress reports from the guest before the migration" "$slog"
	exit 0
fi
if ! kill -0 "$spid" 2>/dev/null; then
	hw_wait_exit "$spid" 1
	fail "the source godwit exited $HW_RC before the migration" "$slog"
	exit 0
fi
files0=$(t_last_field "$slog" "linux-guest: ext4 t=" files)

# ---- migrate ---------------------------------------------------------------------------
t_mig=$(hw_now)
timeout -k 5 240 "$GODWIT" migrate --api "$ssock" --to "unix:$msock" --with-disks --json \
	>"$mjson" 2>"$mlog"
mrc=$?
mig_s=$(hw_since "$t_mig")
# The report's fields, as "key=value" words.
report=$(python3 - "$mjson" <<'EOF' 2>&1
import json, sys
try:
    o = json.loads(open(sys.argv[1]).read())
except Exception as e:
    print('status=unparsable error=%r' % str(e).replace(' ', '_'))
    sys.exit(0)
print(' '.join('%s=%s' % (k, str(o.get(k)).replace(' ', '_')) for k in
               ('status', 'total_ms', 'downtime_ms', 'setup_ms', 'bytes', 'disk_bytes',
                'disk_rounds', 'rounds', 'converged', 'error')))
EOF
)
echo "# migrate: exit $mrc after $mig_s s: $report"
mstatus=$(t_field "$report" status)
dbytes=$(t_field "$report" disk_bytes)
if [ $mrc -ne 0 ] || [ "$mstatus" != completed ]; then
	if hw_wait_exit "$spid" 0; then why="the source godwit exited $HW_RC"; else why="the source godwit still runs"; fi
	fail "godwit migrate exited $mrc ($report); $why" "$mlog" "$mjson" "$slog" "$dlog"
	exit 0
fi
if [[ ${dbytes:-x} =~ ^[0-9]+$ ]] && [ "$dbytes" -gt 0 ]; then
	t_pass "$name-migrate"
else
	t_fail "$name-migrate" "migrate exited 0 but disk_bytes=${dbytes:-none} ($report)"
fi
echo "INFO $name: migration completed: total $(t_field "$report" total_ms) ms, downtime $(t_field "$report" downtime_ms) ms," \
	"$(( $(t_field "$report" bytes) >> 20 )) MiB in $(t_field "$report" rounds) rounds, disks $(( ${dbytes:-0} >> 20 )) MiB in" \
	"$(t_field "$report" disk_rounds) passes (client ran $mig_s s; guest files before it: $files0)"
if hw_wait_exit "$spid" 30; then srcrc=$HW_RC; else srcrc="still running"; fi
if [ "$srcrc" = 6 ]; then
	t_pass "$name-source-exit"
else
	t_fail "$name-source-exit" "the source godwit: $srcrc after the migration, expected exit status 6"
	hw_tail "$slog" 15
	hw_stop "$spid"
fi
files1=$(t_last_field "$slog" "linux-guest: ext4 t=" files)

# ---- the guest goes on writing on the destination; then stop it -------------------------
hw_wait_count "$dlog" "linux-guest: ext4 t=" 2 120 "$dpid"
wrc=$?
echo "please ext4-stop" >&"$cfd"
if [ $wrc -ne 0 ]; then
	stuck "no progress reports from the guest on the destination (wait status $wrc)" "$dlog"
	exit 0
fi
hw_finish migrate-disk dst "$dpid" "$dlog" 180
wrc=$?
dstrc=$HW_RC
echo "# destination: exit $dstrc; guest: $(hw_line "$dlog" 'linux-guest: ext4 stopped ')"
echo "# guest: $(hw_line "$dlog" 'linux-guest: ext4 verify ')"
if [ $wrc -ne 0 ]; then
	fail "the guest did not finish on the destination (wait status $wrc)" "$dlog"
	exit 0
fi

# ---- checks ------------------------------------------------------------------------------
stopby=$(t_last_field "$dlog" "linux-guest: ext4 stopped " by)
files=$(t_last_field "$dlog" "linux-guest: ext4 stopped " files)
live=$(t_last_field "$dlog" "linux-guest: ext4 verify " files)
vok=$(t_last_field "$dlog" "linux-guest: ext4 verify " ok)
vkept=$(t_last_field "$dlog" "linux-guest: ext4 verify " kept)
verr=$(t_last_field "$dlog" "linux-guest: ext4 verify " errors)
vum=$(t_last_field "$dlog" "linux-guest: ext4 verify " umount)
derr=$(t_last_field "$dlog" "linux-guest: ext4 done " errors)
kib=$(t_last_field "$dlog" "linux-guest: ext4 stopped " kib)
lkib=$(t_last_field "$dlog" "linux-guest: ext4 stopped " live_kib)
first=$(t_last_field "$dlog" "linux-guest: ext4 stopped " first_live)
if [ "$verr" = 0 ] && [ "$derr" = 0 ] && [ "$vum" = ok ] && [ "${live:-0}" -gt 0 ] &&
	[ "$vok" = "$live" ] && [ "${files:-0}" -gt "${files1:-0}" ] && [ "${files1:-0}" -gt 0 ] &&
	[ "${vkept:-0}" = "$gkept" ]; then
	t_pass "$name-verify"
else
	t_fail "$name-verify" "guest: verify errors=${verr:-?} (ok=${vok:-?} of ${live:-?} files), all errors=${derr:-?}, umount=${vum:-?}; files ${files:-?} (${files1:-?} at the source's last report); kept files written before the migration verified OK: ${vkept:-?} of $gkept"
	hw_tail "$slog" 8
	hw_tail "$dlog" 20
fi
echo "INFO $name: guest wrote $files files ($kib KiB; $files0 before the migration, ${files1:-?} at the source's last report), $live live ($vkept kept, $lkib KiB, numbered from file $first on) at the end, stopped by $stopby"
if [ "$stopby" != console ]; then
	echo "# the console stop line did not reach the guest (stopped by $stopby)"
fi

if [ "$dstrc" = 0 ]; then
	t_pass "$name-poweroff"
else
	t_fail "$name-poweroff" "the destination godwit exited $dstrc after the guest's poweroff, expected 0"
	hw_tail "$dlog" 15
fi

# The destination's image, the guest gone: a clean file system holding the files.
if [ $have_e2fs = 0 ]; then
	t_skip "$name-fsck" "no e2fsck/debugfs here"
	exit 0
fi
if [ ! -f "$dimg" ]; then
	t_fail "$name-fsck" "no destination image at $dimg"
	exit 0
fi
timeout 120 e2fsck -fn "$dimg" >"$flog" 2>&1
frc=$?
fsum=$(tail -n 1 "$flog")
# The guest's files, extracted by debugfs, against the manifest it left in gw/MANIFEST.
host_check=$(
	mkdir -p "$dump" && timeout 120 debugfs -R "rdump /gw $dump" "$dimg" >/dev/null 2>&1
	if [ ! -s "$dump/gw/MANIFEST" ]; then
		echo "no gw/MANIFEST extracted"
	else
		n=$(wc -l <"$dump/gw/MANIFEST")
		if bad=$(sed "s#  /mnt/ext4/gw/#  $dump/gw/#" "$dump/gw/MANIFEST" | sha256sum -c --quiet 2>&1); then
			echo "ok $n"
		else
			echo "of $n files: $(echo "$bad" | head -n 3 | paste -sd ';')"
		fi
	fi
)
if [ $frc -eq 0 ]; then
	t_pass "$name-fsck"
else
	t_fail "$name-fsck" "e2fsck -fn on the destination's image exited $frc: $(grep -m 1 -v -e '^e2fsck' -e '^Pass' -e '^Warning' "$flog")"
	hw_tail "$flog" 20
fi
if [ "$host_check" = "ok $live" ]; then
	t_pass "$name-host-files"
else
	t_fail "$name-host-files" "the destination's image (debugfs rdump /gw): ${host_check:-?}; the guest had ${live:-?} live files"
fi
echo "INFO $name: e2fsck -fn (destination image, $(du -k "$dimg" | cut -f1) KiB allocated of 128 MiB): $fsum"
