#!/bin/bash
# bench/boot/run.sh - the boot benchmark, both tiers: the test guest on this
# host's /dev/kvm (godwit vs qemu -M microvm), then the Linux guest on a
# hardware(-like) KVM host (godwit vs qemu -M pc), through tests/hwhost/run.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
python3 bench/boot/boot.py --tier 1 --runs "${BENCH_RUNS:-7}"
echo
bash tests/hwhost/run.sh bench/boot/tier2.sh >/dev/null || true
cat build/bench/boot-tier2.txt
