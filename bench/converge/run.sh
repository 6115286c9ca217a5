#!/bin/bash
# bench/converge/run.sh - migrations over a measured link (issue 14): for each rate in
# BENCH_LINKS (Mbit/s, default "1000"; "1000 10000" for both), two network namespaces
# joined by a veth shaped by tbf (tests/kvm/lib-link.sh), its rate checked by a bulk TCP
# transfer (the bench stops if it is off by more than 20 %), then converge.py: godwit
# beside QEMU 7.2 on the same guest and link, BENCH_RUNS (default 5) alternating runs.
# JSON in build/bench/converge-RATEm.json, godwit's timelines beside it; extra options go
# to converge.py.  BENCH_FILLS="text random" runs the compression comparison instead
# (issue 15: the guest's pages text or random, godwit with --compress auto beside QEMU
# multifd with and without zstd; converge-RATEm-FILL.json).
# Needs root (namespaces), /dev/kvm, qemu-system-x86_64, make.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. tests/lib.sh
. tests/kvm/lib-link.sh
trap 'link_down; t_cleanup' EXIT
mkdir -p build/bench
link_up "gwb-cv-$$" || { echo "converge: cannot build the link" >&2; exit 1; }
rc=0
for mbit in ${BENCH_LINKS:-1000}; do
	link_shape "$mbit" || { echo "converge: tc failed" >&2; exit 1; }
	if ! link_check "$mbit"; then
		echo "converge: $LINK_WHY" >&2
		exit 1
	fi
	echo "link: shaped to $mbit Mbit/s, measured $LINK_MEASURED_MBIT Mbit/s" >&2
	if [ -z "${BENCH_FILLS:-}" ]; then
		python3 bench/converge/converge.py --src-ns "$LINK_A" --dst-ns "$LINK_B" \
			--host "$LINK_IP_B" --link-mbit "$mbit" --measured-mbit "$LINK_MEASURED_MBIT" \
			--runs "${BENCH_RUNS:-5}" --out "build/bench/converge-${mbit}m.json" "$@" || rc=1
		continue
	fi
	for fill in $BENCH_FILLS; do
		python3 bench/converge/converge.py --src-ns "$LINK_A" --dst-ns "$LINK_B" \
			--host "$LINK_IP_B" --link-mbit "$mbit" --measured-mbit "$LINK_MEASURED_MBIT" \
			--runs "${BENCH_RUNS:-5}" --fill "$fill" \
			--out "build/bench/converge-${mbit}m-$fill.json" "$@" || rc=1
	done
done
exit $rc
