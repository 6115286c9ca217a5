#!/bin/bash
# asan: no - a timing bound: ASan's slower godwit measures itself, not the bound.
# Tier 1: the downtime bound (docs/migration.md, "Downtime and the report"):
# the test guest rewriting 128 MiB at 100 MiB/s is migrated with
# `--downtime-ms B` for B = 10, 20 and 50, BOUND_RUNS times each (default 3),
# over a UNIX socket paced to 400 MiB/s in pre-copy (so that what is left
# after each round matters: round 1 leaves ~64 MiB, 160 ms at that rate).
# Each run must complete, converged, with the pause it predicted when it
# switched (switch_expected_ms) and the pause godwit measured (from the pause
# to DONE, which the destination sends once its vCPUs run) both at most B,
# and the report's over_limit false, the guest without errors.
# The pause the guest itself saw (the longest stall_ms of the destination's
# first two memtest lines, which cover the switch; the guest's TSC runs on)
# is printed beside it, with the guest's own longest stall over 2 s before
# the migration ("baseline"), but not held to B: on this PVM host the guest
# stalls 10-20 ms on its own without any migration, and after a switch its
# first lines showed up to 200 ms while godwit's pause was 1 ms (the
# destination's first touches of every page, and a busy 2-core host), so the
# bound cannot be seen from inside the guest here (docs/testing.md).
. "$(dirname "$0")/../lib.sh"
. "$ROOT/tests/kvm/lib-vm.sh"
. "$ROOT/tests/kvm/lib-migrate.sh"
t_need_kvm bound || exit 0
t_need_guest bound || exit 0
N=migrate-bound
RUNS=${BOUND_RUNS:-3}
CMDLINE='workload=mem mem=128 rate=100 report=100'

# stalls FILE FROM [COUNT]: stall_ms of FILE's complete memtest lines FROM (1-based) on.
stalls() { t_complete "$1" | grep -a '^memtest: t=' | tail -n +"$2" | head -n "${3:-1000}" | sed -n 's/.* stall_ms=\([0-9.]*\) .*/\1/p'; }
maxof() { sort -n | tail -n 1; }

for B in 10 20 50; do
	ok=0 bad=0 detail=
	for ((run = 1; run <= RUNS; run++)); do
		name=b$B.$run
		start_vm "$name.src" --mem 256M --cpus 1 --cmdline "$CMDLINE"
		if ! wait_reports "$S_OUT" 3 20 || ! start_dst "$name.dst"; then
			bad=$((bad + 1)) detail+=" run $run: no guest or destination ($(tail -c 200 "$S_ERR" "$D_ERR"));"
			kill_pid "$S_PID"
			kill_pid "$D_PID"
			continue
		fi
		# The guest's own stalls over 2 s, before the migration.
		n0=$(t_complete "$S_OUT" | grep -ac '^memtest: t=')
		sleep 2
		base=$(stalls "$S_OUT" $((n0 + 1)) | maxof)
		out=$T_TMP/$name.json
		timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$D_ADDR" --downtime-ms "$B" \
			--max-bandwidth 400M --json \
			>"$out" 2>"$out.err"
		rc=$?
		wait_reports "$D_OUT" 3 10
		seen=$(stalls "$D_OUT" 1 2 | maxof)
		dt=$(jget "$out" downtime_ms)
		if [ $rc -ne 0 ] || [ "$(jget "$out" status)" != completed ] || [ -z "$seen" ]; then
			bad=$((bad + 1)) detail+=" run $run: migrate exited $rc, $(head -c 300 "$out") $(tail -c 200 "$out.err");"
		elif [ -n "$(guest_errors "$D_OUT")" ]; then
			bad=$((bad + 1)) detail+=" run $run: guest errors $(guest_errors "$D_OUT" | tr '\n' '|');"
		elif [ "$(jq -r .over_limit "$out")" != false ] || [ "$(jq -r .converged "$out")" != true ] ||
			awk -v d="$dt" -v e="$(jget "$out" switch_expected_ms)" -v B="$B" \
				'BEGIN { exit !(d > B || e == "" || e > B) }'; then
			bad=$((bad + 1)) detail+=" run $run OVER: pause ${dt} ms (expected $(jget "$out" switch_expected_ms)), guest saw ${seen} ms, phases $(jq -c .phases_ms "$out"), rounds $(jget "$out" rounds), baseline ${base} ms;"
		else
			ok=$((ok + 1)) detail+=" $(jget "$out" switch_expected_ms)/${dt}/${seen}/${base}"
		fi
		wait_exit "$S_PID" 10 >/dev/null
		kill_pid "$S_PID"
		end_vm "$D_PID" "$D_SOCK"
	done
	if [ $bad -eq 0 ] && [ $ok -eq "$RUNS" ]; then
		t_pass "$N-$B"
	else
		t_fail "$N-$B" "$ok held, $bad failed:$detail"
	fi
	echo "# $N-$B ms: $ok of $RUNS held (predicted / pause / guest-seen / guest's baseline, ms):$detail"
done

# A bound below the pause's fixed part (mig_fixed_pause_ms: 2 ms here) cannot be held;
# pre-copy must still stop once another round has nothing to shorten (under 1 ms of
# memory left) instead of running empty rounds to --max-rounds (30): seen in tier 2,
# where the loopback RTT under emulation put the fixed part over the default 50 ms.
name=fixed
start_vm "$name.src" --mem 256M --cpus 1 --cmdline 'workload=mem mem=16 rate=0 report=100'
if wait_reports "$S_OUT" 2 20 && start_dst "$name.dst"; then
	out=$T_TMP/$name.json
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$D_ADDR" --downtime-ms 1 --json \
		>"$out" 2>"$out.err"
	rc=$?
	wait_reports "$D_OUT" 2 10
	rounds=$(jget "$out" rounds)
	if [ $rc -eq 0 ] && [ "$(jget "$out" status)" = completed ] && [ -n "$rounds" ] &&
		[ "$rounds" -le 5 ] && [ "$(jq -r .converged "$out")" = false ] &&
		grep -q "fixed part .* is over the limit of 1 ms: stopping" "$out.err" "$S_ERR" &&
		[ -z "$(guest_errors "$D_OUT")" ]; then
		t_pass "$N-fixed-over-limit"
	else
		t_fail "$N-fixed-over-limit" "migrate exited $rc after ${rounds:-?} rounds (at most 5 wanted), converged $(jq -r .converged "$out" 2>/dev/null); $(head -c 300 "$out") $(tail -c 300 "$out.err") guest errors: $(guest_errors "$D_OUT" | head -c 200)"
	fi
	echo "# $N-fixed-over-limit: --downtime-ms 1, idle guest: ${rounds:-?} rounds, pause $(jget "$out" downtime_ms) ms"
	wait_exit "$S_PID" 10 >/dev/null
	kill_pid "$S_PID"
	end_vm "$D_PID" "$D_SOCK"
else
	t_fail "$N-fixed-over-limit" "no guest or destination ($(tail -c 200 "$S_ERR" "$D_ERR"))"
	kill_pid "$S_PID"
	kill_pid "$D_PID"
fi
