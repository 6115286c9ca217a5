#!/bin/bash
# tests/hwhost/soak-vmm.sh - inside one emulated L1 (tests/hwhost/soak.sh starts it): the
# same Linux guest and workload under godwit and under QEMU as the L2 VMM, alternating,
# so that a godwit regression shows as a higher crash rate than QEMU's in the same L1.
# Each run: 1 vCPU (SOAK_CPUS), 512 MiB, a 32 MiB disk and a virtio-net TAP on a bridge
# to a peer namespace; godwit.workload=migrate (O_DIRECT disk writes read back, and a TCP
# stream from the peer echoed back, as t-godwit-migrate.sh, without a migration) for
# SOAK_SECS s, then the peer ends the stream and the guest verifies and powers off.
# Outcome of a run: pass (disk_errors=0, net=ok, poweroff), crash (triple fault or guest
# panic), wedged (no poweroff within 180 s of the stop), fail (anything else).  One JSON
# line per run to $SOAK_OUT, after a {"start": ...} line, so soak.sh can charge a run
# whose L1 died to its VMM.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-l1.sh"

name=soak-vmm
hw_need_guest "$name" || exit 0
OUT=${SOAK_OUT:?SOAK_OUT names the results file}
RUNS=${SOAK_RUNS:-20}
SECS=${SOAK_SECS:-45}
NSB=gwt-soakbr-$$
NSP=gwt-soakpeer-$$
img=$SCRATCH/soak.img
trap 't_netns_del "$NSP" "$NSB"; hw_save_logs; t_cleanup' EXIT
if ! why=$(hw_bridge_net "$NSB" "$NSP" gwstap 2>&1); then
	t_fail "$name" "network setup: $why"
	exit 0
fi

# done_runs VMM: runs of VMM already recorded in OUT (a soak goes on where it stopped).
done_runs() { local n; n=$(grep -c "\"vmm\": \"$1\", \"outcome\"" "$OUT" 2>/dev/null); echo "${n:-0}"; }

# one VMM: one run; appends its outcome to OUT.
one() {
	local vmm=$1 log=$T_TMP/soak-$1.log plog=$T_TMP/soak-peer.log stop=$T_TMP/soak.stop
	local t0 outcome why pid wrc append
	rm -f "$img" "$stop" "$log" "$plog"
	truncate -s 32M "$img"
	echo "{\"start\": \"$vmm\"}" >>"$OUT"
	ip netns exec "$NSP" timeout 400 python3 "$(dirname "$0")/stream-peer.py" "$plog" "$stop" 512 300 &
	hw_wait "$plog" '^peer: listening' 60
	append=$(hw_append godwit.workload=migrate godwit.ip=198.18.0.2/24 godwit.peer=198.18.0.1 godwit.runtime=300)
	t0=$(hw_now)
	if [ "$vmm" = godwit ]; then
		hw_start "$log" ip netns exec "$NSB" "$GODWIT" run --kernel "$HW_GUEST_KERNEL" \
			--initrd "$HW_GUEST_INITRD" --cpus "${SOAK_CPUS:-1}" --mem 512M --disk "$img" \
			--net tap=gwstap --cmdline "$append"
	else
		hw_start "$log" ip netns exec "$NSB" "${HW_QEMU[@]}" -smp "${SOAK_CPUS:-1}" -m 512M \
			-drive "file=$img,if=virtio,format=raw,cache=none" \
			-netdev tap,id=n0,ifname=gwstap,script=no,downscript=no \
			-device virtio-net-pci,netdev=n0 -append "$append"
	fi
	pid=$HW_PID
	if hw_wait "$log" '^linux-guest: migrate started|Kernel panic|triple fault' 240 "$pid"; then
		hw_wait "$log" 'Kernel panic|triple fault' "$SECS" "$pid"
		: >"$stop"
		hw_wait "$log" '^linux-guest: poweroff|Kernel panic|triple fault' 180 "$pid"
		wrc=$?
	else
		wrc=$?
	fi
	hw_wait_exit "$pid" 20
	hw_stop "$pid"
	if grep -qa 'Kernel panic\|triple fault\|KVM_EXIT_SHUTDOWN' "$log"; then
		outcome=crash why=$(grep -a -m1 'Kernel panic\|triple fault\|KVM_EXIT_SHUTDOWN' "$log")
	elif [ "$wrc" = 2 ]; then
		outcome=wedged why="no poweroff in time"
	elif grep -qa '^linux-guest: migrate done disk_errors=0 net=ok' "$log"; then
		outcome=pass why=
	else
		outcome=fail why=$(hw_line "$log" 'linux-guest: migrate done')
		why=${why:-$(tail -n 1 "$log")}
	fi
	cp "$log" "$T_TMP/soak-$vmm-$(date +%s).log" 2>/dev/null
	why=${why//\\/\\\\}
	why=${why//\"/\\\"}
	echo "{\"vmm\": \"$vmm\", \"outcome\": \"$outcome\", \"secs\": $(hw_since "$t0"), \"why\": \"$(tr -d '\r\n' <<<"${why:0:200}")\"}" >>"$OUT"
	echo "# soak: $vmm $outcome after $(hw_since "$t0") s${why:+: $why}"
}

while [ "$(done_runs godwit)" -lt "$RUNS" ] || [ "$(done_runs qemu)" -lt "$RUNS" ]; do
	# Alternate, the one with fewer runs first.
	if [ "$(done_runs godwit)" -le "$(done_runs qemu)" ]; then one godwit; else one qemu; fi
done
t_pass "$name"
