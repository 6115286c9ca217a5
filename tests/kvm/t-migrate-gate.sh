#!/bin/bash
# Tier 1: the commit gate (docs/migration.md, "Commit gate"; docs/fleet.md rules
# 2-4).  A source VM (test guest, 1 vCPU, --mem 256M, workload=mem mem=64 rate=20
# report=200) migrates on this host with `godwit migrate --gate` and stops in
# status commit-wait, paused, until `godwit migrate-commit` decides:
#   gate-commit     commit-wait holds (1 s, no memtest line on either side, the
#                   source paused, "gate": true), migrate-commit --commit: the
#                   migration completes, the source exits 6, the guest goes on at
#                   the destination with errors=0.  Before: migrate-commit with
#                   no migration at the gate is refused (exit 1).
#   gate-metrics    GET /metrics at the gate: the source's status commit-wait,
#                   paused, the time of the pause, no phases yet; after the
#                   commit the destination's bytes received are the report's.
#   gate-abort      migrate-commit --abort: the source runs on (errors=0, status
#                   failed: "the fleet did not commit"), the destination discards
#                   the VM and exits 1 saying so; then a migrate-cancel at the
#                   gate does the same ("cancelled"); then an ordinary migration.
#   gate-late       the gate held past the destination's wait for COMMIT (10 s,
#                   MIG_IO_TIMEOUT_MS: run --incoming has no option for it): the
#                   destination goes in doubt, paused; --commit then sends COMMIT
#                   nobody reads, and the source is in doubt too after its 10 s
#                   wait for DONE: both paused, neither runs the guest.  Settled
#                   as the fleet would (the destination --discard, the source
#                   --resume): the guest goes on at the source with errors=0.
#   gate-refused    a shared writable disk that a third process locks while the
#                   source waits at the gate: after --commit the destination
#                   cannot lock it and answers ERROR.  Gated, the source does not
#                   take the VM back: in-doubt, "dest_refused": true, paused, the
#                   disk lock not retaken (the third process's lock gone, the
#                   image is free); migrate-resolve --resume then runs it here.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"
. "$(dirname "$0")/lib-prom.sh"

N=migrate-gate
t_need_guest $N || exit 0
T0=$(date +%s)
# GATE_CASES="commit abort ...": run only these cases (default: all).
want() { t_want GATE_CASES "$1"; }

# gate_start NAME [DST_OPTIONS...]: a destination for S_*, and `godwit migrate --gate
# --json` to it in the background (M_PID, M_OUT); false unless the source reaches
# commit-wait within 40 s (WHY).
gate_start() {
	local name=$1 i js
	shift
	WHY=
	if ! start_dst "$name.dst" "$@"; then
		WHY="the destination did not start: $(tail -c 300 "$D_ERR")"
		return 1
	fi
	M_OUT=$T_TMP/$name.mig
	timeout 90 "$GODWIT" migrate --api "$S_SOCK" --to "$D_ADDR" --gate --json \
		>"$M_OUT" 2>"$M_OUT.err" &
	M_PID=$!
	for ((i = 0; i < 400; i++)); do
		js=$(mstat "$S_SOCK")
		[ "$(jfield "$js" status)" = commit-wait ] && break
		if ! kill -0 "$M_PID" 2>/dev/null; then
			WHY="godwit migrate ended before the gate: $(cat "$M_OUT" "$M_OUT.err")"
			return 1
		fi
		sleep 0.1
	done
	if [ "$(jfield "$js" status)" != commit-wait ]; then
		WHY="the source never reached commit-wait: $js"
		return 1
	fi
	if [ "$(jq -r .gate <<<"$js")" != true ]; then
		WHY="at the gate, GET /vm/migration has no \"gate\": true: $js"
		return 1
	fi
	return 0
}
# vm_state SOCK: godwit status's state.
vm_state() { jfield "$("$GODWIT" status --api "$1" --json 2>&1)" state; }
# held_still SECS: the source stays at commit-wait, paused, and neither side prints a
# memtest line for SECS (WHY).
held_still() {
	local s0 d0 st
	s0=$(reports "$S_OUT") d0=$(reports "$D_OUT")
	sleep "$1"
	st=$(jfield "$(mstat "$S_SOCK")" status)
	if [ "$st" != commit-wait ]; then
		WHY="after $1 s at the gate the source is '$st', not commit-wait"
	elif [ "$(vm_state "$S_SOCK")" != paused ]; then
		WHY="at the gate the source VM is '$(vm_state "$S_SOCK")', not paused"
	elif [ "$(reports "$S_OUT")" -ne "$s0" ] || [ "$(reports "$D_OUT")" -ne "$d0" ] ||
		[ "$d0" -ne 0 ]; then
		WHY="the guest ran at the gate: source $s0 -> $(reports "$S_OUT"), destination $d0 -> $(reports "$D_OUT") memtest lines"
	else
		return 0
	fi
	return 1
}

# ---- gate-commit --------------------------------------------------------------------------------
if want commit; then
	start_src g1.src
	"$GODWIT" migrate-commit --api "$S_SOCK" --commit >"$T_TMP/g1.nogate" 2>&1
	rc=$?
	if [ $rc -ne 1 ] || ! grep -q 'no migration is waiting at the commit gate' "$T_TMP/g1.nogate"; then
		t_fail $N-commit-refused-without-gate "migrate-commit with no migration: exit $rc (expected 1): $(cat "$T_TMP/g1.nogate")"
	else
		t_pass $N-commit-refused-without-gate
	fi
	if ! gate_start g1 || ! held_still 1; then
		t_fail $N-commit "$WHY"
		kill_pid "$M_PID"
		kill_pid "$D_PID"
		end_vm
	else
		if ! prom_scrape "$S_SOCK" "$T_TMP/g1.m.json"; then
			GWHY=$PROM_ERR
		elif [ "$(prom_val "$T_TMP/g1.m.json" godwit_migration_status status=commit-wait)" != 1 ] ||
			[ "$(prom_val "$T_TMP/g1.m.json" godwit_vm_state state=paused)" != 1 ] ||
			! prom_has "$T_TMP/g1.m.json" godwit_migration_pause_start_seconds ||
			prom_has "$T_TMP/g1.m.json" godwit_migration_downtime_phase_seconds ||
			! [ "$(prom_val "$T_TMP/g1.m.json" godwit_migration_bytes)" -gt 0 ]; then
			GWHY="at the gate: $(grep -a '^godwit_migration_\|^godwit_vm_state' "$T_TMP/g1.m.json.txt" | grep -v ' 0$' | tr '\n' ' ')"
		else
			GWHY=
		fi
		tg=$(date +%s%3N)
		"$GODWIT" migrate-commit --api "$S_SOCK" --commit >"$T_TMP/g1.commit" 2>&1
		crc=$?
		wait_exit "$M_PID" 30
		mrc=$?
		wait_exit "$S_PID" 15
		src=$?
		td=$(date +%s%3N)
		if [ $crc -ne 0 ] || ! grep -q 'COMMIT is being sent' "$T_TMP/g1.commit"; then
			t_fail $N-commit "migrate-commit --commit exit $crc: $(cat "$T_TMP/g1.commit")"
		elif [ $mrc -ne 0 ] || [ "$(jget "$M_OUT" status)" != completed ] ||
			[ "$(jq -r .gate "$M_OUT" 2>/dev/null)" != true ]; then
			t_fail $N-commit "godwit migrate exit $mrc (expected 0, completed, gate true): $(cat "$M_OUT" "$M_OUT.err")"
		elif ! jq -e '(.phases_ms | keys_unsorted) == ["stop","memory","state","ready","release","gate","commit"]
				and .phases_ms.gate >= 1000
				and ((.phases_ms | add) - .downtime_ms | fabs) < 0.01' "$M_OUT" >/dev/null; then
			# held_still kept it at the gate for 1 s: the report's pause says so.
			t_fail $N-commit "the report's phases_ms lack a gate phase of >= 1 s adding up to downtime_ms: $(cat "$M_OUT")"
		elif [ $src -ne 6 ]; then
			t_fail $N-commit "the source exited $src, expected 6: $(tail -c 300 "$S_ERR")"
		elif ! src_ok "$D_PID" "$D_SOCK" "$D_OUT"; then
			t_fail $N-commit "at the destination: $WHY"
		elif [ -n "$(sanitizer "$S_ERR" "$D_ERR")" ]; then
			t_fail $N-commit "sanitizer: $(sanitizer "$S_ERR" "$D_ERR")"
		else
			t_pass $N-commit
			echo "# commit: source exited 6 $((td - tg)) ms after the decision; destination: $(grep -a '^memtest: t=' "$D_OUT" | tail -n 1)"
		fi
		if [ -n "$GWHY" ]; then
			t_fail $N-metrics "$GWHY"
		elif ! prom_scrape "$D_SOCK" "$T_TMP/g1.d.json"; then
			t_fail $N-metrics "destination: $PROM_ERR"
		elif [ "$(prom_val "$T_TMP/g1.d.json" godwit_migration_status status=incoming)" != 1 ] ||
			[ "$(prom_val "$T_TMP/g1.d.json" godwit_migration_bytes)" != "$(jget "$M_OUT" bytes)" ]; then
			t_fail $N-metrics "destination: $(grep -a '^godwit_migration_\(bytes\|status\)' "$T_TMP/g1.d.json.txt" | grep -v ' 0$' | tr '\n' ' ')(the report: $(jget "$M_OUT" bytes) bytes)"
		else
			t_pass $N-metrics
		fi
		end_vm "$D_PID" "$D_SOCK"
		kill_pid "$S_PID"
	fi
fi

# ---- gate-abort, and migrate-cancel at the gate --------------------------------------------------------
if want abort; then
	start_src g2.src
	if ! gate_start g2 || ! held_still 0.5; then
		t_fail $N-abort "$WHY"
		kill_pid "$M_PID"
		kill_pid "$D_PID"
	else
		"$GODWIT" migrate-commit --api "$S_SOCK" --abort >"$T_TMP/g2.abort" 2>&1
		crc=$?
		wait_exit "$M_PID" 15
		mrc=$?
		wait_exit "$D_PID" 15
		drc=$?
		js=$(mstat "$S_SOCK")
		if [ $crc -ne 0 ] || ! grep -q 'aborted at the commit gate: the VM runs here' "$T_TMP/g2.abort"; then
			t_fail $N-abort "migrate-commit --abort exit $crc: $(cat "$T_TMP/g2.abort")"
		elif [ $mrc -ne 1 ] || ! grep -q 'the fleet did not commit' "$M_OUT"; then
			t_fail $N-abort "godwit migrate exit $mrc (expected 1, the reason): $(cat "$M_OUT" "$M_OUT.err")"
		elif [ "$(jfield "$js" status)" != failed ] || ! grep -q 'the fleet did not commit' <<<"$js"; then
			t_fail $N-abort "source migrate-status: $js"
		elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
			t_fail $N-abort "the source does not run on: $WHY"
		elif [ $drc -ne 1 ] || ! grep -q 'the source aborted: the fleet did not commit' "$D_ERR" ||
			[ "$(reports "$D_OUT")" -ne 0 ]; then
			t_fail $N-abort "destination exit $drc (expected 1), $(reports "$D_OUT") memtest lines: $(tail -c 300 "$D_ERR")"
		else
			t_pass $N-abort
			echo "# abort: dst: $(grep -a 'incoming migration failed' "$D_ERR" | tail -n 1)"
		fi
	fi
	# A cancel at the gate is an abort.
	if ! gate_start g2c; then
		t_fail $N-cancel-at-gate "$WHY"
		kill_pid "$M_PID"
		kill_pid "$D_PID"
	else
		"$GODWIT" migrate-cancel --api "$S_SOCK" >"$T_TMP/g2c.cancel" 2>&1
		crc=$?
		wait_exit "$M_PID" 15
		mrc=$?
		wait_exit "$D_PID" 15
		drc=$?
		st=$(jfield "$(mstat "$S_SOCK")" status)
		if [ $crc -ne 0 ] || [ $mrc -ne 1 ] || [ "$st" != cancelled ]; then
			t_fail $N-cancel-at-gate "migrate-cancel exit $crc, migrate exit $mrc (expected 0, 1), status '$st': $(cat "$T_TMP/g2c.cancel" "$M_OUT")"
		elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
			t_fail $N-cancel-at-gate "the source does not run on: $WHY"
		elif [ $drc -ne 1 ] || ! grep -q 'the source aborted: cancelled by the operator' "$D_ERR" ||
			[ "$(reports "$D_OUT")" -ne 0 ]; then
			t_fail $N-cancel-at-gate "destination exit $drc (expected 1), $(reports "$D_OUT") memtest lines: $(tail -c 300 "$D_ERR")"
		else
			t_pass $N-cancel-at-gate
		fi
	fi
	# And it migrates fine afterwards, without the gate.
	if start_dst g2.ok; then
		timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$D_ADDR" >"$T_TMP/g2.ok.mig" 2>&1
		mrc=$?
		wait_exit "$S_PID" 15
		src=$?
		if [ $mrc -ne 0 ] || [ $src -ne 6 ] || ! src_ok "$D_PID" "$D_SOCK" "$D_OUT"; then
			t_fail $N-abort-migrate-after "migrate exit $mrc, source exit $src (expected 0, 6); $WHY $(cat "$T_TMP/g2.ok.mig")"
		else
			t_pass $N-abort-migrate-after
		fi
		end_vm "$D_PID" "$D_SOCK"
	else
		t_fail $N-abort-migrate-after "the destination did not start: $(tail -c 300 "$D_ERR")"
	fi
	kill_pid "$S_PID"
fi

# ---- gate-late: decided after the destination gave up waiting -------------------------------------------
if want late; then
	start_src g3.src
	if ! gate_start g3; then
		t_fail $N-late "$WHY"
		kill_pid "$M_PID"
		kill_pid "$D_PID"
	else
		tg=$(date +%s%3N)
		# The destination's wait for COMMIT (10 s from READY) runs out: in doubt, paused.
		t_wait_for "$D_ERR" 'in doubt: no COMMIT after READY' 20
		dw=$?
		td=$(date +%s%3N)
		dst=$(jfield "$(mstat "$D_SOCK")" status)
		if [ $dw -ne 0 ] || [ "$dst" != in-doubt ]; then
			t_fail $N-late "the destination did not go in doubt without COMMIT (status '$dst'): $(tail -c 300 "$D_ERR")"
		elif ! held_still 0.5; then
			t_fail $N-late "$WHY"
		else
			"$GODWIT" migrate-commit --api "$S_SOCK" --commit >"$T_TMP/g3.commit" 2>&1
			crc=$?
			# COMMIT goes into a connection the destination no longer reads: no DONE in 10 s.
			wait_exit "$M_PID" 25
			mrc=$?
			sst=$(mstat "$S_SOCK")
			s0=$(reports "$S_OUT") d0=$(reports "$D_OUT")
			sleep 1
			if [ $crc -ne 0 ]; then
				t_fail $N-late "migrate-commit --commit exit $crc: $(cat "$T_TMP/g3.commit")"
			elif [ $mrc -ne 1 ] || [ "$(jget "$M_OUT" status)" != in-doubt ]; then
				t_fail $N-late "godwit migrate exit $mrc (expected 1, in-doubt): $(cat "$M_OUT" "$M_OUT.err")"
			elif [ "$(jfield "$sst" status)" != in-doubt ] ||
				[ "$(jq -r .dest_refused <<<"$sst")" != false ] ||
				! grep -q 'COMMIT was sent but the destination did not confirm' <<<"$sst"; then
				t_fail $N-late "source: $sst"
			elif ! kill -0 "$S_PID" 2>/dev/null || ! kill -0 "$D_PID" 2>/dev/null; then
				t_fail $N-late "a godwit exited while in doubt: $(tail -c 200 "$S_ERR") $(tail -c 200 "$D_ERR")"
			elif [ "$(vm_state "$S_SOCK")" != paused ] || [ "$(jfield "$(mstat "$D_SOCK")" status)" != in-doubt ] ||
				[ "$(reports "$S_OUT")" -ne "$s0" ] || [ "$(reports "$D_OUT")" -ne 0 ] || [ "$d0" -ne 0 ]; then
				t_fail $N-late "a side ran while in doubt: source '$(vm_state "$S_SOCK")' $s0 -> $(reports "$S_OUT"), destination $d0 -> $(reports "$D_OUT") memtest lines"
			else
				t_pass $N-late
				echo "# late: the destination went in doubt $((td - tg)) ms after the gate; source: $(jfield "$sst" error | head -c 160)"
				# Settled as the agent would after writing its veto: discard there, resume here.
				"$GODWIT" migrate-resolve --api "$D_SOCK" --discard >"$T_TMP/g3.res.d" 2>&1
				rd=$?
				wait_exit "$D_PID" 10
				drc=$?
				"$GODWIT" migrate-resolve --api "$S_SOCK" --resume >"$T_TMP/g3.res.s" 2>&1
				rs=$?
				if [ $rd -ne 0 ] || [ $drc -ne 6 ] || [ $rs -ne 0 ] || [ "$(reports "$D_OUT")" -ne 0 ]; then
					t_fail $N-late-resolved "destination --discard exit $rd, destination exit $drc, source --resume exit $rs (expected 0, 6, 0): $(cat "$T_TMP/g3.res.d" "$T_TMP/g3.res.s")"
				elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
					t_fail $N-late-resolved "the source does not run on: $WHY"
				else
					t_pass $N-late-resolved
				fi
			fi
		fi
		kill_pid "$M_PID"
		kill_pid "$D_PID"
	fi
	end_vm
fi

# ---- gate-refused: the destination fails at COMMIT; gated, the source stays in doubt ------------------------
if want refused; then
	img=$T_TMP/g4.img
	truncate -s 16M "$img"
	start_src g4.src --disk "$img"
	if ! gate_start g4 --disk "$img"; then
		t_fail $N-refused "$WHY"
		kill_pid "$M_PID"
		kill_pid "$D_PID"
	else
		# A third party takes the lock the source released (a POSIX lock: it conflicts
		# with the VMs' OFD locks) and holds it until killed.
		python3 -c 'import fcntl, sys, time
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(60)' "$img" >"$T_TMP/g4.lock" 2>&1 &
		L_PID=$!
		if ! t_wait_for "$T_TMP/g4.lock" '^locked' 10; then
			t_fail $N-refused "cannot lock the image at the gate (the source did not release it?): $(cat "$T_TMP/g4.lock")"
			kill_pid "$L_PID"
			kill_pid "$M_PID"
			kill_pid "$D_PID"
		else
			"$GODWIT" migrate-commit --api "$S_SOCK" --commit >"$T_TMP/g4.commit" 2>&1
			crc=$?
			wait_exit "$M_PID" 20
			mrc=$?
			wait_exit "$D_PID" 15
			drc=$?
			kill_pid "$L_PID"
			sst=$(mstat "$S_SOCK")
			s0=$(reports "$S_OUT")
			sleep 1
			# Nobody holds the image now: the source did not take its lock back.
			python3 -c 'import fcntl, sys
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)' "$img" >"$T_TMP/g4.free" 2>&1
			free=$?
			if [ $crc -ne 0 ]; then
				t_fail $N-refused "migrate-commit --commit exit $crc: $(cat "$T_TMP/g4.commit")"
			elif [ $drc -ne 1 ] || ! grep -q 'cannot start the VM at COMMIT' "$D_ERR" || [ "$(reports "$D_OUT")" -ne 0 ]; then
				t_fail $N-refused "destination exit $drc (expected 1, failed at COMMIT), $(reports "$D_OUT") memtest lines: $(tail -c 300 "$D_ERR")"
			elif [ $mrc -ne 1 ] || [ "$(jget "$M_OUT" status)" != in-doubt ] ||
				[ "$(jq -r .dest_refused "$M_OUT" 2>/dev/null)" != true ]; then
				t_fail $N-refused "godwit migrate exit $mrc (expected 1, in-doubt, dest_refused): $(cat "$M_OUT" "$M_OUT.err")"
			elif [ "$(jfield "$sst" status)" != in-doubt ] || [ "$(jq -r .dest_refused <<<"$sst")" != true ] ||
				! grep -q 'the destination refused the VM after COMMIT' <<<"$sst"; then
				t_fail $N-refused "source: $sst"
			elif ! kill -0 "$S_PID" 2>/dev/null || [ "$(vm_state "$S_SOCK")" != paused ] ||
				[ "$(reports "$S_OUT")" -ne "$s0" ]; then
				t_fail $N-refused "the source resumed by itself or exited: state '$(vm_state "$S_SOCK")', $s0 -> $(reports "$S_OUT") memtest lines"
			elif [ $free -ne 0 ]; then
				t_fail $N-refused "the image is locked after the refusal: the source took its disk back: $(cat "$T_TMP/g4.free")"
			else
				t_pass $N-refused
				echo "# refused: source: $(jfield "$sst" error | head -c 200)"
				"$GODWIT" migrate-resolve --api "$S_SOCK" --resume >"$T_TMP/g4.res" 2>&1
				rs=$?
				if [ $rs -ne 0 ] || ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
					t_fail $N-refused-resolved "migrate-resolve --resume exit $rs: $(cat "$T_TMP/g4.res"); $WHY"
				else
					t_pass $N-refused-resolved
				fi
			fi
		fi
	fi
	end_vm
fi
# No sanitizer report from any godwit or client (under ASan: make test-kvm).
s=$(sanitizer "$T_TMP"/*.err "$T_TMP"/*.mig.err)
if [ -n "$s" ]; then
	t_fail $N-sanitizer "$s"
fi
echo "# $N: $(($(date +%s) - T0)) s"
