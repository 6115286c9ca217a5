#!/bin/bash
# bench/snapshot/run.sh - the snapshot benchmark: godwit snapshot/restore of
# the test guest (1 and 4 GiB, idle and with 512 MiB in use) beside QEMU's
# migrate to a file and -incoming from it, on this host's /dev/kvm.
# BENCH_RUNS (default 5) alternating runs per case; BENCH_DIR (default /tmp)
# holds the snapshot files while they exist.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
exec python3 bench/snapshot/snapshot.py --runs "${BENCH_RUNS:-5}" \
	--runs-4g "${BENCH_RUNS:-5}" --dir "${BENCH_DIR:-/tmp}" "$@"
