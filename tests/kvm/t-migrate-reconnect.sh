#!/bin/bash
# Tier 1: pre-copy that survives a broken connection (docs/migration.md,
# "Reconnecting"): `godwit migrate --reconnect-s N` through tests/kvm/
# cutproxy.py, a byte relay that closes the link after CUT bytes from the
# source and refuses every connection for a while.
#
#   reconnect-tls   mutual TLS end to end, the link cut in round 2 (after the
#                   64 MiB of round 1 and the marker of round 2) and down for
#                   3 s: the migration completes, the report counts one
#                   reconnect and pages sent again, fewer than a restart's first
#                   round; the destination says the source came back; the
#                   guest's memory is verified whole on the destination
#   reconnect-gives-up  --reconnect-s 2 and a link that never comes back: the
#                   migration fails after about 2 s saying so, the VM runs on
#                   at the source, the destination gives up too and exits
. "$(dirname "$0")/../lib.sh"
. "$ROOT/tests/kvm/lib-vm.sh"
. "$ROOT/tests/kvm/lib-migrate.sh"
t_need_kvm reconnect || exit 0
t_need_guest reconnect || exit 0
N=migrate-reconnect
CUTPROXY=$ROOT/tests/kvm/cutproxy.py
CMDLINE='workload=mem mem=64 rate=50 report=200'
want() { t_want RECONNECT_CASES "$1"; }

# start_cut NAME CUT DOWN: cutproxy from mig_addr NAME.px to $D_ADDR; P_PID, P_OUT, P_ADDR.
start_cut() {
	P_OUT=$T_TMP/$1.px.out P_ADDR=$(mig_addr "$1.px")
	timeout 100 python3 "$CUTPROXY" "$P_ADDR" "$D_ADDR" "$2" "$3" >"$P_OUT" 2>&1 &
	P_PID=$!
	t_wait_for "$P_OUT" '^listening' 10
}

# verified_pass OUT PAGES: within 20 s the destination's memtest verified PAGES more
# pages than at its first line, with errors=0 throughout (else WHY).
verified_pass() {
	local first v0 i last
	for ((i = 0; i < 200; i++)); do
		first=$(t_complete "$1" | grep -a '^memtest: t=' | head -n 1)
		[ -n "$first" ] && break
		sleep 0.1
	done
	v0=$(field "$first" verified)
	for ((i = 0; i < 200; i++)); do
		last=$(t_complete "$1" | grep -a '^memtest: t=' | tail -n 1)
		[ -n "$v0" ] && [ "$(field "$last" verified)" -ge $((v0 + $2)) ] && break
		sleep 0.1
	done
	if [ -z "$v0" ] || [ "$(field "$last" verified)" -lt $((v0 + $2)) ]; then
		WHY="no full verification pass on the destination: first '$first', last '$last'"
		return 1
	fi
	if [ -n "$(guest_errors "$1")" ]; then
		WHY="guest errors on the destination: $(guest_errors "$1" | tr '\n' '|')"
		return 1
	fi
	return 0
}

# ---- the link breaks in round 2 and comes back after 3 s ------------------------------------
if want tls; then
	MIG_TRANSPORT=tls
	start_src r1.src --cpus 1
	if ! start_dst r1.dst || ! start_cut r1 $((80 << 20)) 3; then
		t_fail $N-tls "the destination or the proxy did not start: $(tail -c 300 "$D_ERR" "$P_OUT")"
	else
		out=$T_TMP/r1.json
		timeout 90 "$GODWIT" migrate --api "$S_SOCK" --to "$P_ADDR" --tls-dir "$(mig_certs)/src" \
			--reconnect-s 20 --max-bandwidth 40M --json >"$out" 2>"$out.err"
		rc=$?
		if [ $rc -ne 0 ] || [ "$(jget "$out" status)" != completed ]; then
			t_fail $N-tls "godwit migrate exited $rc: $(cat "$out") $(tail -c 400 "$out.err"); proxy: $(tr '\n' ' ' <"$P_OUT"); destination: $(tail -c 400 "$D_ERR")"
		elif ! grep -q '^cut ' "$P_OUT" || ! grep -q '^refused' "$P_OUT"; then
			t_fail $N-tls "the proxy never cut the link and refused the source: $(tr '\n' ' ' <"$P_OUT")"
		elif ! WHY=$(python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
h = r.get("history") or []
if r.get("reconnects") != 1:
    print("reconnects %r, expected 1" % r.get("reconnects")); sys.exit(1)
resent = r.get("resent_pages", -1) * 4096
if not h or resent <= 0 or resent >= h[0]["bytes"]:
    print("resent %d bytes, expected more than 0 and less than a restart's first round (%s bytes)"
          % (resent, h[0]["bytes"] if h else "?")); sys.exit(1)
print("resent %.1f MiB after the break; round 1 was %.1f MiB; %d rounds, %.1f MiB in all"
      % (resent / 2**20, h[0]["bytes"] / 2**20, r["rounds"], r["bytes"] / 2**20))
PY
		); then
			t_fail $N-tls "$WHY"
		elif ! grep -q 'came back after' "$D_ERR"; then
			t_fail $N-tls "the destination does not say the source came back: $(tail -c 400 "$D_ERR")"
		elif ! verified_pass "$D_OUT" $((64 * 256)); then
			t_fail $N-tls "$WHY"
		elif [ -n "$(sanitizer "$S_ERR" "$D_ERR" "$out.err")" ]; then
			t_fail $N-tls "sanitizer: $(sanitizer "$S_ERR" "$D_ERR" "$out.err")"
		else
			t_pass $N-tls
			echo "# $N-tls: $WHY; $(grep -h 'came back after' "$D_ERR" | head -n 1)"
		fi
	fi
	kill_pid "$P_PID"
	wait_exit "$S_PID" 10 >/dev/null
	kill_pid "$S_PID"
	end_vm "$D_PID" "$D_SOCK"
	unset MIG_TRANSPORT
fi

# ---- the link never comes back ----------------------------------------------------------------
if want gives-up; then
	start_src r2.src --cpus 1
	if ! start_dst r2.dst || ! start_cut r2 $((16 << 20)) 1000; then
		t_fail $N-gives-up "the destination or the proxy did not start: $(tail -c 300 "$D_ERR" "$P_OUT")"
	else
		out=$T_TMP/r2.json
		t0=$(now_ms)
		timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$P_ADDR" --reconnect-s 2 \
			--max-bandwidth 40M --json >"$out" 2>"$out.err"
		rc=$? ms=$(($(now_ms) - t0))
		wait_exit "$D_PID" 15
		drc=$?
		if [ $rc -ne 1 ] || [ "$(jget "$out" status)" != failed ] ||
			! grep -q 'did not come back within 2 s' "$out"; then
			t_fail $N-gives-up "godwit migrate exited $rc (expected 1, failed, 'did not come back within 2 s'): $(cat "$out") $(tail -c 300 "$out.err")"
		elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
			t_fail $N-gives-up "the source after the failure: $WHY"
		elif [ "$drc" -eq 0 ] || [ "$drc" -eq 124 ] || ! grep -q 'the source did not come back within 2 s' "$D_ERR"; then
			t_fail $N-gives-up "the destination exited $drc (expected a failure saying the source did not come back): $(tail -c 400 "$D_ERR")"
		elif [ $ms -gt 20000 ]; then
			t_fail $N-gives-up "the migration took $ms ms to give up after a 2 s window"
		else
			t_pass $N-gives-up
			echo "# $N-gives-up: gave up after $ms ms; destination exited $drc"
		fi
	fi
	kill_pid "$P_PID"
	end_vm
	kill_pid "$D_PID"
fi
exit 0
