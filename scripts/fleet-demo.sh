#!/bin/bash
# scripts/fleet-demo.sh - a fleet on this machine (docs/fleet.md, "Running it"):
# three hosts in network namespaces with an agent (godwitd) each, a
# one-member etcd, four VMs running the test guest's memory workload; then
# `godwit fleet drain h1` moves h1's VMs live to h2 and h3.  Prints `fleet
# hosts` and `fleet ls` before and after, and each VM's last memtest line
# (errors=0: its memory was verified after the move).  Everything it started
# is killed and removed on exit.  Needs root (network namespaces) and /dev/kvm.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
export TIER=demo
. tests/lib.sh
. tests/kvm/lib-vm.sh
. tests/kvm/lib-migrate.sh
FLEET_ETCD_N=1
. tests/kvm/lib-fleet.sh
trap 'fleet_down; t_cleanup' EXIT

die() { echo "fleet-demo: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (it makes network namespaces)"
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then die "/dev/kvm is missing or not accessible"; fi
[ -x "$GODWITD" ] || die "no $GODWITD: make"
[ -f "$GUEST_ELF" ] || die "no test guest at $GUEST_ELF: make"
command -v etcd >/dev/null || die "no etcd: bash scripts/install-deps.sh"
CMDLINE='workload=mem mem=64 rate=20 report=200'

owner_host() { etcd_val "/godwit/vms/$1/owner" | awk '{ print $1 }'; }
state_of() { etcd_val "/godwit/vms/$1/status" | jq -r '.state // empty' 2>/dev/null; }
show() {
	echo "+ godwit fleet hosts"
	fleet hosts 2>&1 | sed 's/^/  /'
	echo "+ godwit fleet ls"
	fleet ls 2>&1 | sed 's/^/  /'
}
# wait_all SECS COND: until COND V holds for every VM.
wait_all() {
	local i v ok
	for ((i = 0; i < $1; i++)); do
		ok=1
		for v in $VMS; do "$2" "$v" || { ok=0; break; }; done
		[ "$ok" = 1 ] && return 0
		sleep 1
	done
	return 1
}
is_running() { [ "$(state_of "$1")" = running ]; }
off_h1() { is_running "$1" && [ "$(owner_host "$1")" != h1 ]; }

echo "== fleet demo: three hosts (network namespaces ${FLEET_NS[h1]} .. ${FLEET_NS[h3]}), one etcd"
fleet_up || die "$FLEET_ERR"
for h in h1 h2 h3; do
	echo "+ godwitd --host $h --etcd $ETCD_URLS --listen ${FLEET_IP[$h]}:$FLEET_AGENT_PORT --tls-dir certs/$h ..."
	agent_start "$h"
done
for h in h1 h2 h3; do
	agent_registered "$h" 20 || die "agent $h did not register: $(tail -n 5 "$FLEET_DIR/log/$h.log")"
done

VMS="demo1 demo2 demo3 demo4"
for v in $VMS; do
	on=h1
	[ "$v" = demo4 ] && on=h2
	echo "+ godwit fleet create $v --on $on -- --kernel godwit-guest.elf --mem 64M --cmdline '$CMDLINE'"
	fleet create "$v" --on "$on" -- --kernel "$GUEST_ELF" --mem 64M --cmdline "$CMDLINE" ||
		die "fleet create $v failed"
done
wait_all 60 is_running || die "the VMs did not all start: $(fleet ls 2>&1)"
sleep 3
echo
echo "== before"
show
echo
echo "+ godwit fleet drain h1"
fleet drain h1 2>&1 | sed 's/^/  /'
wait_all 120 off_h1 || echo "fleet-demo: some VMs are still on h1 or not running" >&2
sleep 2
echo
echo "== after"
show
echo
echo "== each VM's last memtest line (on the host that runs it now)"
for v in $VMS; do
	h=$(owner_host "$v")
	log=$FLEET_DIR/$h/vms/$v/console.log
	echo "  $v on $h: $(t_complete "$log" | grep -a '^memtest: t=' | tail -n 1)"
done
echo
echo "== cleaning up"
