#!/bin/bash
# tests/data/gen-golden.sh [NAME] - write a golden stream with this checkout's
# stream writer: tests/data/golden-NAME.gws (default NAME: the version
# `godwit --version` prints, e.g. 0.2.0).  Run once per release, on the
# release's tree, and commit the file; never regenerate or edit an existing
# one (the script refuses to overwrite).  See tests/data/README.md.
#
# The content is golden_v1_write() in tests/unit/test_stream.c (an 8+4-page
# guest, pass 1 and a dirty-bitmap pass 2, placeholder CPU/VM/device
# sections and an unknown optional section), written by the unit-test
# binary's stream_golden_v1_content test with GODWIT_GOLDEN_OUT set.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
make --no-print-directory build/godwit build/tests/unit-tests >&2
name=${1:-$(build/godwit --version | awk '{print $2}')}
out=tests/data/golden-$name.gws
if [ -e "$out" ]; then
	echo "gen-golden: $out exists; golden streams are never rewritten" >&2
	exit 1
fi
GODWIT_GOLDEN_OUT=$out build/tests/unit-tests stream_golden_v1_content >&2 || true
[ -s "$out" ] || { echo "gen-golden: $out was not written" >&2; exit 1; }
build/godwit stream-dump "$out"
echo "gen-golden: wrote $out; commit it" >&2
