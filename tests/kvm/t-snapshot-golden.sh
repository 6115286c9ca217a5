#!/bin/bash
# Tier 1: snapshots of the test guest written by earlier godwit versions
# (tests/data/golden-*-guest.gws, tests/data/gen-golden-guest.sh) must keep
# restoring with this godwit: stream-dump exits 0; `godwit restore` loads the
# file (vCPU, VM and device state: serial, rtc, i8042, pci-bus, acpi-pm,
# virtio-rng) and the guest continues where it was: no new boot, new memtest
# reports with errors=0 whose totals (verified, gen) and t= clock go on from
# the last report in the golden's console (golden-*-guest.console), not from
# 0; `godwit shutdown` over the API then stops it with exit status 0.  A golden written
# on a host of the other CPU vendor (AuthenticAMD, GenuineIntel) must be refused with both
# vendors named; at least one golden of this host's vendor must run.
#
# The reports must start within 5 s of the restore, whatever this host's
# TSC: on PVM hosts (the development and CI machines) KVM ignores writes to
# the guest's TSC, so the restored guest reads the host's TSC, which counts
# from the host's boot.  Ahead (this host has been up longer than the
# generating one was): the guest's clock jumps forward, like a pause, and
# reports go on.  Behind (a freshly booted machine): the raw TSC goes back;
# the guest's clock (guest/gclock.h) stands still across that, so deadlines
# and t= go on from where they were (a golden written by a guest older than
# gclock would stay silent until the TSC caught up: regenerate it).  godwit
# logs how far off the TSC is; the test prints it.  On hosts that honour TSC
# writes (real VT-x/AMD-V) the clock continues exactly.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"

t_need_kvm snapshot-golden || exit 0
shopt -s nullglob
goldens=("$ROOT"/tests/data/golden-*-guest.gws)
if [ ${#goldens[@]} -eq 0 ]; then
	t_fail snapshot-golden "no tests/data/golden-*-guest.gws"
	exit 0
fi


HOST_VENDOR=$(sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
ran=0
for g in "${goldens[@]}"; do
	base=$(basename "$g" .gws)
	n=golden-${base#golden-}
	con=${g%.gws}.console
	echo "# $base: $(stat -c %s "$g") bytes"

	"$GODWIT" stream-dump "$g" >"$T_TMP/$base.dump" 2>&1
	rc=$?
	if [ $rc -eq 0 ] && grep -q 'every checksum matches' "$T_TMP/$base.dump"; then
		t_pass "$n-stream-dump"
	else
		t_fail "$n-stream-dump" "exit $rc: $(tail -c 300 "$T_TMP/$base.dump")"
	fi

	# A snapshot from a host of the other CPU vendor cannot run here (CPUID differs, by
	# design): restore must refuse it, naming both vendors.  One of this host's vendor runs.
	gv=$("$GODWIT" stream-dump --json "$g" 2>/dev/null | jq -r '.config.cpu_vendor // empty')
	if [ -n "$HOST_VENDOR" ] && [ -n "$gv" ] && [ "$gv" != "$HOST_VENDOR" ]; then
		timeout 60 "$GODWIT" restore --from "$g" --api "$T_TMP/$base.sock" </dev/null \
			>"$T_TMP/$base.out" 2>"$T_TMP/$base.err"
		rc=$?
		if [ $rc -eq 1 ] && grep -q "CPU vendor: $HOST_VENDOR here, $gv in the stream" "$T_TMP/$base.err"; then
			t_pass "$n-other-vendor-refused"
		else
			t_fail "$n-other-vendor-refused" "a $gv snapshot on a $HOST_VENDOR host: restore exit $rc (expected 1, naming both vendors): $(tail -c 300 "$T_TMP/$base.err")"
		fi
		continue
	fi
	ran=$((ran + 1))

	last=$(grep -a '^memtest: t=' "$con" 2>/dev/null | tail -n 1)
	if [ -z "$last" ]; then
		t_fail "$n" "no memtest report in $con"
		continue
	fi
	t0=$(field "$last" t)
	gen0=$(field "$last" gen)
	ver0=$(field "$last" verified)

	sock=$T_TMP/$base.sock
	out=$T_TMP/$base.out
	err=$T_TMP/$base.err
	timeout 120 "$GODWIT" restore --from "$g" --api "$sock" </dev/null >"$out" 2>"$err" &
	pid=$!
	# Up to 5 s for the first report, then up to 5 s more for three.
	first_ds=
	for ((i = 0; i < 100; i++)); do
		nrep=$(grep -ac '^memtest: t=' "$out" 2>/dev/null)
		[ "${nrep:-0}" -ge 1 ] && [ -z "$first_ds" ] && first_ds=$i
		[ "${nrep:-0}" -ge 3 ] && break
		[ -z "$first_ds" ] && [ $i -ge 50 ] && break
		kill -0 $pid 2>/dev/null || break
		sleep 0.1
	done
	# godwit's TSC warning says how far off the guest's TSC is (negative: behind).
	off=$(sed -n 's/.*(\(-\?[0-9.]*\) ms off after writing it.*/\1/p' "$err" | head -n 1)
	echo "# TSC off by ${off:-0} ms after the restore; first report after ${first_ds:-(none)} x 0.1 s"
	if ! kill -0 $pid 2>/dev/null; then
		wait $pid
		t_fail "$n-restore" "godwit restore exited $? at once: $(tail -c 400 "$err")"
		continue
	fi
	state=$("$GODWIT" status --api "$sock" --json 2>&1)
	if grep -qa 'godwit-guest: boot' "$out"; then
		t_fail "$n-restore" "the guest booted again instead of continuing: $(head -c 300 "$out")"
	elif grep -qa 'ERROR\|EXCEPTION' "$out"; then
		t_fail "$n-restore" "errors in the guest: $(grep -a -m 3 'ERROR\|EXCEPTION' "$out")"
	elif [[ $state != *'"running"'* ]]; then
		t_fail "$n-restore" "the VM is not running: $state"
	else
		t_pass "$n-restore"
	fi

	reports=$(grep -a '^memtest: t=' "$out")
	first=$(head -n 1 <<<"$reports")
	lastr=$(tail -n 1 <<<"$reports")
	nrep=$(grep -c . <<<"$reports")
	bad=$(grep -av 'errors=0 ' <<<"$reports" | head -n 2)
	if [ -z "$reports" ] || [ -z "$first_ds" ]; then
		t_fail "$n-continues" "no memtest report within 5 s of the restore (TSC off by ${off:-0} ms); stderr: $(tail -c 300 "$err")"
	elif [ "$nrep" -lt 2 ]; then
		t_fail "$n-continues" "$nrep memtest reports after the restore; stderr: $(tail -c 300 "$err")"
	elif [ -n "$bad" ]; then
		t_fail "$n-continues" "memtest errors: $bad"
	elif [ "$(t_tenths "$(field "$first" t)")" -lt "$(t_tenths "$t0")" ]; then
		t_fail "$n-continues" "the guest's clock went back: '$first' after '$last'"
	elif ! awk '{ sub(/.* t=/, ""); sub(/ .*/, ""); if ($0 + 0 < prev) exit 1; prev = $0 + 0 }' <<<"$reports"; then
		t_fail "$n-continues" "the guest's clock went back between reports: $(tr '\n' '|' <<<"$reports")"
	elif [ "$(field "$first" gen)" -lt "$gen0" ] || [ "$(field "$first" verified)" -le "$ver0" ] ||
		[ "$(field "$lastr" verified)" -le "$(field "$first" verified)" ]; then
		t_fail "$n-continues" "the totals did not go on: '$last' then '$first' ... '$lastr'"
	else
		t_pass "$n-continues"
	fi
	echo "# last golden report: $last"
	echo "# after the restore:  $first"
	echo "#                     $lastr"

	"$GODWIT" shutdown --api "$sock" >"$T_TMP/$base.shut" 2>&1
	src=$?
	wait_exit $pid
	vmrc=$?
	if [ $src -eq 0 ] && [ $vmrc -eq 0 ]; then
		t_pass "$n-shutdown"
	else
		t_fail "$n-shutdown" "shutdown exit $src, godwit exit $vmrc (expected 0, 0): $(cat "$T_TMP/$base.shut") $(tail -c 300 "$err")"
	fi
done
# Every vendor CI may run on has a golden (tests/data/README.md): one ran here.
if [ "$ran" -eq 0 ]; then
	t_fail snapshot-golden-this-vendor "no golden snapshot of a ${HOST_VENDOR:-unknown} host in tests/data: add one with tests/data/gen-golden-guest.sh"
fi
exit 0
