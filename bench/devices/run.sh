#!/bin/bash
# bench/devices/run.sh - the device benchmark, both tiers: the test guest on this
# host's /dev/kvm, then the Linux guest on a hardware(-like) KVM host through
# tests/hwhost/run.sh; godwit beside QEMU (virtio-blk-pci, virtio-net-pci with
# vhost=off) each time.  Needs root (network namespaces).  About 8 minutes here.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
rc=0
python3 bench/devices/devices.py --tier 1 --runs "${BENCH_RUNS:-7}" || rc=1
echo
rm -f build/bench/devices-tier2.txt
HWHOST_TEST_TIMEOUT=${HWHOST_TEST_TIMEOUT:-900} bash tests/hwhost/run.sh bench/devices/tier2.sh >/dev/null || rc=1
cat build/bench/devices-tier2.txt 2>/dev/null || echo "tier 2: no result (see build/hwhost/run/)"
exit $rc
