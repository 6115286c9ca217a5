#!/bin/bash
# tests/data/gen-golden-guest.sh [NAME] - write a real snapshot of the tier-1
# test guest with this checkout's godwit: tests/data/golden-NAME-guest.gws and
# its console up to the snapshot, golden-NAME-guest.console (default NAME: the
# version `godwit --version` prints).  Run once per release, on the release's
# tree, on a development/CI machine (PVM host, the same CPU vendor as CI), and
# commit both files; never regenerate or edit an existing one (the script
# refuses to overwrite).  tests/kvm/t-snapshot-golden.sh restores every such
# file with the current godwit.  See tests/data/README.md.
#
# The guest: 1 vCPU, 32 MiB (the minimum), the default CPU model (x86-64, the
# baseline every x86-64 KVM offers), virtio-rng, `workload=mem+rng mem=1`:
# memtest on 1 MiB (256 pages, the only incompressible data), reports every
# 500 ms.  The snapshot is taken after four reports, without --resume.  The
# file is ~1.2 MiB (zero pages are run markers without data).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
make --no-print-directory build/godwit guest >&2
G=build/godwit
name=${1:-$($G --version | awk '{print $2}')}
out=tests/data/golden-$name-guest.gws
con=tests/data/golden-$name-guest.console
for f in "$out" "$con"; do
	if [ -e "$f" ]; then
		echo "gen-golden-guest: $f exists; golden streams are never rewritten" >&2
		exit 1
	fi
done
tmp=$(mktemp -d /tmp/gen-golden-guest.XXXXXX)
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
pid=
timeout 60 $G run --kernel build/guest/godwit-guest.elf --mem 32M --cpus 1 \
	--name godwit-golden-guest --rng --api "$tmp/api.sock" --snapshot-dir "$tmp" \
	--cmdline 'workload=mem+rng mem=1 rate=1 report=500' </dev/null >"$tmp/console" 2>"$tmp/err" &
pid=$!
for ((i = 0; i < 100; i++)); do
	[ "$(grep -c '^memtest: t=' "$tmp/console")" -ge 4 ] && grep -q '^rng: ' "$tmp/console" && break
	sleep 0.1
done
$G snapshot --api "$tmp/api.sock" --out "$tmp/snap.gws" >&2
wait $pid || { echo "gen-golden-guest: godwit exited $?: $(cat "$tmp/err")" >&2; exit 1; }
pid=
if grep -q 'ERROR\|EXCEPTION' "$tmp/console" || ! grep -q 'errors=0 ' "$tmp/console"; then
	echo "gen-golden-guest: the guest reported errors:" >&2
	cat "$tmp/console" >&2
	exit 1
fi
cp "$tmp/snap.gws" "$out"
chmod 644 "$out"
cp "$tmp/console" "$con"
$G stream-dump "$out"
cat "$con"
echo "gen-golden-guest: wrote $out ($(stat -c %s "$out") bytes) and $con; commit them" >&2
