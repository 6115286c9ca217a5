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

case $GUEST in
test)
	echo "== godwit demo: the test guest (2 vCPUs, 512 MiB), memory-integrity workload"
	echo "   dirtying 64 MiB/s of 256 MiB for 8 s, then power off"
	echo "+ $GODWIT run --kernel build/guest/godwit-guest.elf --cpus 2 --mem 512M --cmdline 'workload=mem mem=256 rate=64 runtime=8'"
	set +e
	"$GODWIT" run --kernel build/guest/godwit-guest.elf --cpus 2 --mem 512M \
		--cmdline "workload=mem mem=256 rate=64 runtime=8" </dev/null
	rc=$?
	echo "== godwit exited with status $rc (0: the guest powered off)"
	exit $rc
	;;
linux)
	make --no-print-directory linux-guest
	if hw_virt; then
		echo "== godwit demo: Debian's cloud kernel, 2 vCPUs, 512 MiB, memory workload"
		set +e
		"$GODWIT" run --kernel build/linux/vmlinuz --initrd build/linux/initramfs.cpio.gz \
			--cpus 2 --mem 512M \
			--cmdline "console=ttyS0 quiet panic=-1 godwit.workload=mem godwit.runtime=8" </dev/null
		rc=$?
		echo "== godwit exited with status $rc (0: the guest powered off)"
		exit $rc
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
