#!/bin/bash
# Tier 2: live migration of a stock Linux guest (Debian's cloud kernel, 1 vCPU,
# 512 MiB, virtio-blk + virtio-net + virtio-rng over MSI-X) while it does disk and network I/O
# (guest/linux/init, godwit.workload=migrate):
#   - disk: 64 KiB batches of sequence-numbered units written to /dev/vda with
#     O_DIRECT + fsync (a FLUSH each), each read back and compared; at the end the
#     whole written region is read back against the expected content;
#   - network: one TCP connection to a peer, which streams random data paced at
#     MIGRATE_KIBS KiB/s; the guest echoes it (nc -e tee) and keeps a copy.
# Network: a namespace with a bridge joining two persistent TAPs (one per godwit)
# and a veth to the peer's namespace (198.18.0.1; the guest is 198.18.0.2), so the
# destination's RARP announce (and the guest's own frames) move the MAC to its TAP.
# Storage: both godwits get the SAME --disk image (shared storage: the source
# flushes and unlocks it right before COMMIT, the destination locks it then).
# Once the guest's I/O runs, `godwit migrate` moves it to `godwit run --incoming
# unix:...`; after a few progress reports on the destination the peer is told to
# end the stream, the guest verifies and powers off.
# Both godwits run sandboxed: every thread shows Seccomp 2, NoNewPrivs 1, CapEff 0
# (checked on the source before the migration, on the destination after it).
# PASS: migrate exits 0 (its report is printed), the source exits 6; the guest's
# I/O went on on the destination; disk verify errors=0 (and the host finds the
# same content in the image); the TCP stream is complete and intact: the peer's
# sent bytes and SHA-256 equal the guest's received ones and the echo, nc exited
# 0, no reset; the destination exits 0 at the guest's poweroff.
#
# One vCPU (HW_MIGRATE_CPUS=2 for two).  With two, the guest triple-faulted in
# about one run in three inside the emulated L1 (QEMU 7.2 TCG + SVM), after the
# migration and also before any; the same load makes L1 itself freeze, lock up in
# KVM_RUN or panic ("stack guard page was hit") now and then.  Source and
# destination guest memory, compared page by page at the hand-off (a debug
# build), differed only by the destination's own later writes.  A network stall
# after the migration that looked like the same flakiness was godwit's (a device
# started before the LAPICs were loaded lost its interrupt; fixed).  Two-vCPU
# state transfer stays covered by tier 1 (t-migrate.sh migrate-2cpu, memory
# verified) and by t-godwit-snapshot.sh here.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=godwit-migrate
NSB=gwt-migbr-$$
NSP=gwt-migpeer-$$
KIBS=${MIGRATE_KIBS:-512}
hw_need_guest "$name" || exit 0

slog=$T_TMP/godwit-migrate-src.log
dlog=$T_TMP/godwit-migrate-dst.log
mlog=$T_TMP/godwit-migrate-client.log
plog=$T_TMP/godwit-migrate-peer.log
img=$SCRATCH/godwit-migrate.img
ssock=$SCRATCH/mig-src.sock
dsock=$SCRATCH/mig-dst.sock
msock=$SCRATCH/mig-stream.sock
stop=$T_TMP/peer.stop
rm -f "$img" "$ssock" "$dsock" "$msock"
truncate -s 32M "$img"
hw_pin_godwit "$name" || exit 0

net_cleanup() {
	ip -n "$NSB" link del gwmtapA 2>/dev/null
	ip -n "$NSB" link del gwmtapB 2>/dev/null
	t_netns_del "$NSP" "$NSB"
	rm -f "$img" "$ssock" "$dsock" "$msock" "$SCRATCH/$name.bin"
}
trap 'net_cleanup; hw_save_logs; t_cleanup' EXIT

# fail WHY LOG...: FAIL with the tails of LOG...
fail() {
	# The bridge's view: which port the guest's MAC is on, each TAP's counters.
	{
		bridge -n "$NSB" fdb show br br0 2>&1 | grep -v permanent
		ip -n "$NSB" -s link show 2>&1 | grep -A5 -E 'gwmtap|gwmveth'
	} >"$T_TMP/godwit-migrate-bridge.log" 2>&1
	hw_fail "$name" "$@" "$T_TMP/godwit-migrate-bridge.log" "$T_TMP"/godwit-migrate-*-diag.log
}
# stuck WHY LOG...: fail, for a guest that stopped making progress, with what each godwit
# still running is doing (lib-l1.sh's hw_diag).
stuck() {
	hw_diag_live godwit-migrate src="${spid:-}" dst="${dpid:-}"
	fail "$@"
}

# ---- the network: bridge (TAP A, TAP B, veth) in NSB, the peer in NSP -----------------
if ! why=$(hw_bridge_net "$NSB" "$NSP" gwmtapA gwmtapB 2>&1); then
	t_fail "$name" "network setup: $why"
	exit 0
fi

# ---- the peer: streams KIBS KiB/s on :5003 until $stop exists, takes the echo back ------
ip netns exec "$NSP" timeout 500 python3 "$(dirname "$0")/stream-peer.py" "$plog" "$stop" "$KIBS" 300 &
if ! hw_wait "$plog" '^peer: listening' 60; then
	fail "the peer did not start" "$plog"
	exit 0
fi

# ---- the source: boots the guest, which starts its I/O --------------------------------
hw_start "$slog" ip netns exec "$NSB" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" \
	--initrd "$HW_GUEST_INITRD" --cpus "${HW_MIGRATE_CPUS:-1}" --mem 512M --name tier2-migrate --api "$ssock" \
	--disk "$img" --net tap=gwmtapA --rng \
	--cmdline "$(hw_append godwit.workload=migrate godwit.ip=198.18.0.2/24 godwit.peer=198.18.0.1 godwit.runtime=300)"
spid=$HW_PID
t_boot=$(hw_now)
hw_wait "$slog" '^linux-guest: migrate started|^linux-guest: poweroff|Kernel panic' 240 "$spid"
rc=$?
if [ $rc -ne 0 ] || [ -z "$(hw_line "$slog" 'linux-guest: migrate started')" ]; then
	stuck "the guest's migrate workload did not start (wait status $rc)" "$slog" "$plog"
	exit 0
fi
echo "# guest workload started $(hw_since "$t_boot") s after godwit started"

# ---- the destination ---------------------------------------------------------------
hw_start "$dlog" ip netns exec "$NSB" "$GODWIT" run --incoming "unix:$msock" --api "$dsock" \
	--disk "$img" --net tap=gwmtapB
dpid=$HW_PID
if ! hw_wait "$dlog" 'waiting for an incoming migration' 60 "$dpid"; then
	fail "the destination is not waiting for a migration" "$dlog"
	exit 0
fi

# Two progress reports (~10 s of I/O) before the migration.
if ! hw_wait_count "$slog" "linux-guest: migrate disk " 2 90 "$spid"; then
	stuck "no I/O progress reports from the guest before the migration" "$slog" "$plog"
	exit 0
fi
if [ -z "$(hw_line "$plog" 'peer: connected')" ]; then
	fail "the guest did not connect to the peer" "$slog" "$plog"
	exit 0
fi
seq0=$(t_last_field "$slog" "linux-guest: migrate disk " seq)
if ! kill -0 "$spid" 2>/dev/null; then
	hw_wait_exit "$spid" 1
	fail "the source godwit exited $HW_RC before the migration" "$slog" "$plog"
	exit 0
fi

# The sandbox (docs/cli.md): every thread of both godwits, the destination still waiting.
hw_check_sandbox "$name-sandbox-src" "$spid"

# ---- migrate -------------------------------------------------------------------------
t_mig=$(hw_now)
timeout -k 5 240 "$GODWIT" migrate --api "$ssock" --to "unix:$msock" >"$mlog" 2>&1
mrc=$?
mig_s=$(hw_since "$t_mig")
report=$(hw_line "$mlog" "migration completed: ")
echo "# migrate: exit $mrc after $mig_s s${report:+: $report}"
if [ $mrc -ne 0 ]; then
	if hw_wait_exit "$spid" 0; then
		why="the source godwit exited $HW_RC"
	else
		why="the source godwit still runs"
	fi
	fail "godwit migrate exited $mrc; $why" "$mlog" "$slog" "$dlog"
	exit 0
fi
t_pass "$name-migrate"
echo "INFO $name: migration completed: $report (client ran $mig_s s; guest I/O batches before it: $seq0)"
if hw_wait_exit "$spid" 30; then srcrc=$HW_RC; else srcrc="still running"; fi
if [ "$srcrc" = 6 ]; then
	t_pass "$name-source-exit"
else
	t_fail "$name-source-exit" "the source godwit: $srcrc after the migration, expected exit status 6"
	hw_tail "$slog" 15
	hw_stop "$spid"
fi

# ---- the guest goes on on the destination; then end the stream ------------------------
hw_wait_count "$dlog" "linux-guest: migrate disk " 2 120 "$dpid"
wrc=$?
: >"$stop"
if [ $wrc -ne 0 ]; then
	stuck "no I/O progress reports from the guest on the destination (wait status $wrc)" "$dlog" "$plog"
	exit 0
fi
hw_check_sandbox "$name-sandbox-dst" "$dpid"
hw_finish godwit-migrate dst "$dpid" "$dlog" 180
wrc=$?
dstrc=$HW_RC
hw_wait "$plog" '^peer: done' 30
echo "# destination: exit $dstrc; guest: $(hw_line "$dlog" 'linux-guest: migrate done ')"
echo "# peer: $(hw_line "$plog" 'peer: done ')"
if [ $wrc -ne 0 ]; then
	fail "the guest did not finish on the destination (wait status $wrc)" "$dlog" "$plog"
	exit 0
fi

# ---- checks ----------------------------------------------------------------------------
# Disk: no error in the loop nor in the final verify, writes went on on the destination,
# and the host finds every batch's content in the image.
batches=$(t_last_field "$dlog" "linux-guest: migrate verify" batches)
verr=$(t_last_field "$dlog" "linux-guest: migrate verify" errors)
derr=$(t_last_field "$dlog" "linux-guest: migrate done" disk_errors)
maxit=$(t_last_field "$dlog" "linux-guest: migrate disk " max_iter_ms)
host_check=$(python3 - "$img" "${batches:-0}" <<'EOF' 2>&1
import sys
img, total, slots = sys.argv[1], int(sys.argv[2]), 256
bad = []
with open(img, 'rb') as f:
    for i in range(min(total, slots)):
        seq = i + (total - 1 - i) // slots * slots
        want = b''.join((b'gwmig seq=%08d blk=%04d ###\n' % (seq, i * 16 + k)) * 128 for k in range(16))
        f.seek(i * 65536)
        got = f.read(65536)
        if got != want:
            bad.append('slot %d: %r' % (i, got[:31]))
print('ok' if total > 0 and not bad else 'bad %d slots (of %d): %s' % (len(bad), min(total, slots), '; '.join(bad[:3])))
EOF
)
if [ "$derr" = 0 ] && [ "$verr" = 0 ] && [ "${batches:-0}" -gt "${seq0:-0}" ] && [ "$host_check" = ok ]; then
	t_pass "$name-disk"
else
	t_fail "$name-disk" "guest: disk_errors=${derr:-?} verify errors=${verr:-?}, batches ${batches:-?} (${seq0:-?} before the migration); host: $host_check"
	hw_tail "$slog" 10
	hw_tail "$dlog" 20
fi

# TCP: the same bytes and SHA-256 at the peer (sent, echoed) and in the guest; no reset.
sent=$(t_last_field "$plog" "peer: done" sent)
sent_sha=$(t_last_field "$plog" "peer: done" sent_sha)
echoed=$(t_last_field "$plog" "peer: done" echoed)
echo_sha=$(t_last_field "$plog" "peer: done" echo_sha)
perr=$(t_last_field "$plog" "peer: done" error)
peof=$(t_last_field "$plog" "peer: done" eof)
gap=$(t_last_field "$plog" "peer: done" max_gap_ms)
gap_at=$(t_last_field "$plog" "peer: done" gap_at)
rxb=$(t_last_field "$dlog" "linux-guest: migrate net" rx_bytes)
rxsha=$(t_last_field "$dlog" "linux-guest: migrate net" rx_sha)
ncrc=$(t_last_field "$dlog" "linux-guest: migrate net" nc_exit)
hw_count_lines "$plog" "peer: connected"
conns=$HW_N
if [ -n "$sent" ] && [ "$sent" -gt 0 ] && [ "$rxb" = "$sent" ] && [ "$echoed" = "$sent" ] &&
	[ "$rxsha" = "$sent_sha" ] && [ "$echo_sha" = "$sent_sha" ] && [ "$perr" = none ] &&
	[ "$peof" = 1 ] && [ "$ncrc" = 0 ] && [ "$conns" = 1 ]; then
	t_pass "$name-tcp"
else
	t_fail "$name-tcp" "peer: sent=${sent:-?} echoed=${echoed:-?} error=${perr:-?} eof=${peof:-?} connections=$conns; guest: rx_bytes=${rxb:-?} nc_exit=${ncrc:-?}; sha sent/guest/echo ${sent_sha:0:12}/${rxsha:0:12}/${echo_sha:0:12}"
	hw_tail "$plog" 10
	hw_tail "$dlog" 10
fi
echo "INFO $name: stream $((${sent:-0} >> 10)) KiB at $KIBS KiB/s, longest echo gap ${gap:-?} ms at t=${gap_at:-?} s; disk ${batches:-?} batches of 64 KiB (${seq0:-?} before the migration), longest I/O iteration ${maxit:-?} ms"

if [ "$dstrc" = 0 ]; then
	t_pass "$name-poweroff"
else
	t_fail "$name-poweroff" "the destination godwit exited $dstrc after the guest's poweroff, expected 0"
	hw_tail "$dlog" 15
fi
