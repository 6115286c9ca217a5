#!/bin/bash
# scripts/demo.sh [auto|test|linux] - boot the default guest and show its
# workload running.  auto: Linux where the host has hardware virtualization,
# the test guest on a PVM host (where Linux cannot boot directly); linux on a
# PVM host goes through the tier-2 emulated hardware-virtualization host.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GUEST=${1:-auto}
GODWIT=$ROOT/build/godwit

hw_virt() {
	[ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

if [ "$GUEST" = auto ]; then
	if hw_virt; then GUEST=linux; else GUEST=test; fi
fi

migrate_demo() {
	# The main job: a live migration between two godwits on this host.
	D=$(mktemp -d /tmp/godwit-demo.XXXXXX)
	pids=()
	cleanup() {
		for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
		wait 2>/dev/null || true
		rm -rf "$D"
	}
	trap cleanup EXIT
	echo "== godwit demo: live migration of $DESC"
	echo "   from host A to host B on this machine"
	echo "+ godwit run ${BOOT[*]} --cpus 2 --mem 1G --api A.sock"
	"$GODWIT" run "${BOOT[@]}" --cpus 2 --mem 1G --name demo --api "$D/A.sock" </dev/null \
		> >(sed -u 's/^/[host A] /') 2>&1 &
	pids+=($!)
	srcpid=$!
	sleep "$WARMUP"
	echo "+ godwit run --incoming unix:mig.sock --api B.sock          (host B waits)"
	"$GODWIT" run --incoming "unix:$D/mig.sock" --api "$D/B.sock" </dev/null \
		> >(sed -u 's/^/[host B] /') 2>&1 &
	pids+=($!)
	dstpid=$!
	for _ in $(seq 50); do [ -S "$D/mig.sock" ] && break; sleep 0.1; done
	echo "+ godwit migrate --api A.sock --to unix:mig.sock"
	set +e
	"$GODWIT" migrate --api "$D/A.sock" --to "unix:$D/mig.sock"
	mrc=$?
	wait "$srcpid"
	src_rc=$?
	echo "== host A's godwit exited with status $src_rc (6: migrated away)"
	echo "== the guest goes on at host B for 3 s:"
	sleep 3
	"$GODWIT" shutdown --api "$D/B.sock" >/dev/null
	wait "$dstpid"
	dst_rc=$?
	echo "== host B's godwit exited with status $dst_rc after the shutdown request"
	if [ $mrc -eq 0 ] && [ $src_rc -eq 6 ] && [ $dst_rc -eq 0 ]; then
		echo "== demo OK: the VM moved and its workload goes on at host B (above)"
		return 0
	fi
	echo "== demo FAILED (migrate $mrc, host A $src_rc, host B $dst_rc)"
	return 1
}

case $GUEST in
test)
	DESC="the test guest (2 vCPUs, 1 GiB) rewriting and verifying 256 MiB at 64 MiB/s"
	BOOT=(--kernel build/guest/godwit-guest.elf --cmdline "workload=mem mem=256 rate=64 report=500")
	WARMUP=3
	migrate_demo
	exit $?
	;;
linux)
	make --no-print-directory linux-guest
	if hw_virt; then
		DESC="Debian's cloud kernel (2 vCPUs, 1 GiB) running its memory workload"
		BOOT=(--kernel build/linux/vmlinuz --initrd build/linux/initramfs.cpio.gz
			--cmdline "console=ttyS0 quiet panic=-1 godwit.workload=mem")
		WARMUP=15
		migrate_demo
		exit $?
	fi
	echo "== godwit demo: this host's /dev/kvm is PVM (no hardware virtualization), so the"
	echo "   Linux guest runs inside an emulated hardware-virtualization host (QEMU TCG + SVM);"
	echo "   expect about a minute."
	set +e
	bash tests/hwhost/run.sh t-godwit-linux.sh
	rc=$?
	log=build/hwhost/run/logs/godwit-linux/godwit-linux.log
	if [ -f "$log" ]; then
		echo "== the guest's console, as godwit printed it inside the emulated host:"
		tr -d '\r' <"$log" | grep -av '^\(PASS\|FAIL\|SKIP\|INFO\) '
	fi
	exit $rc
	;;
*)
	echo "usage: make demo [GUEST=auto|test|linux]" >&2
	exit 2
	;;
esac
