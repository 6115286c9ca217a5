#!/bin/bash
# bench/migrate/run.sh - the live-migration benchmark: godwit migrating the
# test guest over loopback TCP (1 GiB idle, 1 GiB dirtying 512 MiB at
# 100 MiB/s, 4 GiB idle, and 1G-disk: storage migration of a 2 GiB image
# holding 1 GiB of data while the guest writes to it) beside QEMU
# (-M microvm; pc+qboot with virtio-blk and drive-mirror over NBD for the
# disk case) tuned: 100 GiB/s, multifd x2, downtime-limit 50 ms; and QEMU's
# defaults), on this host's /dev/kvm.
#   run.sh [all|mem|disk|CASE[,CASE]] [migrate.py options]
# The first argument (or BENCH_CASES) picks the cases: all (default), mem
# (the three memory cases), disk (1G-disk), or case names.
# BENCH_RUNS (default 3) alternating runs per case and VMM; medians printed
# with the spread; JSON in build/bench/migrate.json (or --out FILE).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cases=${BENCH_CASES:-all}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
	cases=$1
	shift
fi
exec python3 bench/migrate/migrate.py --runs "${BENCH_RUNS:-3}" --cases "$cases" "$@"
