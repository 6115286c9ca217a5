#!/bin/bash
# Tier 1: post-copy live migration over userfaultfd (docs/migration.md
# "Post-copy") between two godwit processes on this host, the test guest's
# memtest running (it verifies every page it wrote, all the time).
#
#   postcopy-now       --postcopy now, 1 vCPU dirtying 50 MiB/s (--max-bandwidth 32M, so
#                      that the push takes long enough for the guest to fault on a
#                      missing page): switched after round 1,
#                      completed, pages requested on demand and pushed adding up to
#                      at least the missing ones, the fault latency reported on both
#                      sides (GET /vm/migration), the destination "incoming" once every
#                      page came; the source exits 6; the guest goes on at the
#                      destination with a full verification pass and errors=0
#   postcopy-now-2cpu  the same with 2 vCPUs
#   postcopy-throttle  vCPU 0 dirtying 200 MiB/s, --max-bandwidth 24M, --postcopy now
#                      (the push paced too): completed after round 1, memory verified
#   postcopy-auto      the same workload on 4 MiB with --postcopy auto, --max-bandwidth 1536K
#                      and --downtime-ms 5, so that it does not converge however loaded the
#                      host: pre-copy throttles vCPU 0, and once it slept half its time or
#                      more at the end of two rounds in a row, or the budget reached its
#                      floor, it switches; completed, pages requested (as above), memory
#                      verified.  Why these figures: the memtest rewrites its pages in
#                      order, so what is missing at the switch is the run it wrote last,
#                      the run it comes back to last.  On a loaded host (2 CPUs, load 10+)
#                      its dirty-tracked writes fall to 1-30 MB/s: on 32 MiB over a 24M
#                      link pre-copy converged, or the push of a small last run beat the
#                      guest's trip around the other 30 MiB and nothing was requested.
#                      Over 1.5 MiB/s the guest (it only has to dirty 0.75 MiB/s) re-dirties
#                      its 4 MiB each round: half the link is under the 1 MiB/s floor, so
#                      the switch comes after round 2 with most of the 4 MiB missing, and
#                      its first writes there ask for pages.
#   postcopy-cut       the link (both connections, through tests/kvm/cutlink.py) cut for
#                      3 s during post-copy (--max-bandwidth 4M): both sides wait, the
#                      source reconnects by itself, the destination says what it still
#                      misses; completed with postcopy_breaks 1, the guest stalled about
#                      3 s and its memory verified
#   postcopy-src-killed  the source SIGKILLed during post-copy (--max-bandwidth 8M): the
#                      destination waits for it --incoming-timeout (8 s), then says the VM
#                      is lost and exits 1
#   postcopy-dst-shutdown  the destination shut down over its API during post-copy: it
#                      exits within 10 s (its teardown lets go of the pages still
#                      missing first; KVM's own pending faults on them would hold it)
#   postcopy-dst-killed  the destination SIGKILLed during post-copy (--reconnect-s 2): the
#                      source reports postcopy-failed (migrate exits 1), stays paused, and
#                      refuses resume and migrate-resolve
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

trap 't_cleanup' EXIT
t_need_guest postcopy || exit 0
want() { t_want POSTCOPY_CASES "$1"; }

# pc_check NAME: the post-copy figures of the source's report ($MIG_JSON) and of the
# destination's GET /vm/migration; WHY on failure.
pc_check() {
	local dst
	dst=$(mstat "$D_SOCK")
	WHY=$(python3 - "$MIG_JSON" "$dst" "${PC_MODE:-now}" <<'PY'
import json, sys
r, d, mode = json.load(open(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
def bad(why, o):
    print(why + ": " + json.dumps({k: v for k, v in o.items() if k.startswith(("postcopy", "fault", "status", "rounds"))}))
    sys.exit(1)
if mode == "now" and (r.get("postcopy") != "now" or r.get("postcopy_switched") is not True or r.get("rounds") != 1):
    bad("source: expected postcopy now, switched after round 1", r)
if mode == "auto":
    h = r.get("history") or []
    thr = [e for e in h if e.get("throttle_budget_bps", 0) > 0]
    if r.get("postcopy") != "auto" or r.get("postcopy_switched") is not True or r.get("converged"):
        bad("source: expected postcopy auto, switched, not converged", r)
    if not thr or not (sum(e.get("throttle_pct", 0) >= 50 for e in h[-2:]) == 2 or
                       min(e["throttle_budget_bps"] for e in thr) <= 1048576):
        bad("source: switched before throttling reached its bound: " + json.dumps(h), r)
if not r.get("postcopy_pages", 0) > 0:
    bad("source: no page was missing at the switch", r)
if r["postcopy_requested"] + r["postcopy_pushed"] < r["postcopy_pages"]:
    bad("source: requested + pushed < the pages missing", r)
if not r.get("postcopy_start_ms", 0) > 0 or not r.get("postcopy_ms", 0) > 0:
    bad("source: no switch time or duration", r)
if d.get("status") != "incoming" or d.get("postcopy_switched") is not True:
    bad("destination: expected status incoming after post-copy", d)
if d.get("postcopy_pages") != r["postcopy_pages"]:
    bad("destination: a different number of missing pages than the source's %d" % r["postcopy_pages"], d)
if d["postcopy_requested"] + d["postcopy_pushed"] != d["postcopy_pages"]:
    bad("destination: requested + pushed != missing", d)
if d["postcopy_requested"] < 1:
    bad("destination: the running guest asked for no page", d)
if not 0 < d["fault_latency_median_ms"] <= d["fault_latency_max_ms"]:
    bad("destination: implausible fault latency", d)
if r["fault_latency_max_ms"] != d["fault_latency_max_ms"]:
    bad("the source's fault latency is not the destination's", r)
PY
	)
}

# pc_start NAME SRC_ARGS... [-- DST_ARGS...]: the source (256 MiB, SRC_ARGS) until its guest
# reported, and the destination (DST_ARGS); false, the case failed, if either did not start.
pc_start() {
	local name=$1 src=()
	shift
	while [ $# -gt 0 ] && [ "$1" != -- ]; do src+=("$1"); shift; done
	[ "${1:-}" = -- ] && shift
	start_vm "$name.src" --mem 256M "${src[@]}"
	wait_lines "$S_OUT" 3 && start_dst "$name.dst" "$@" && return 0
	t_fail "$name" "the guest or the destination did not start: $(tail -c 300 "$S_ERR" "$D_ERR")"
	kill "$S_PID" "$D_PID" 2>/dev/null
	return 1
}

# pc_wait_active: up to 15 s for the destination to say postcopy-active; false with WHY.
pc_wait_active() {
	local i st
	WHY=
	for ((i = 0; i < 300; i++)); do
		st=$(jfield "$(mstat "$D_SOCK")" status)
		[ "$st" = postcopy-active ] && return 0
		sleep 0.05
	done
	WHY="the destination never said postcopy-active (last: '$st'): $(tail -c 300 "$D_ERR")"
	return 1
}

# pc_case NAME CMDLINE NEED RATE RUN_ARGS... -- MIGRATE_ARGS...: one post-copy migration.
pc_case() {
	local name=$1 cmdline=$2 need=$3 rate=$4 start run=() mig=()
	shift 4
	while [ $# -gt 0 ] && [ "$1" != -- ]; do run+=("$1"); shift; done
	[ "${1:-}" = -- ] && shift
	mig=("$@")
	start=$(date +%s.%N)
	pc_start "$name" "${run[@]}" --cmdline "$cmdline" || return
	migrate "$name" "$D_ADDR" --postcopy "${PC_MODE:-now}" "${mig[@]}"
	WHY=
	check_report && pc_check
	if [ -z "$WHY" ]; then
		wait_exit "$S_PID"
		rc=$?
		[ $rc -eq 6 ] || WHY="the source godwit exited $rc, expected 6: $(tail -c 300 "$S_ERR")"
	fi
	[ -n "$WHY" ] || check_guest "$S_OUT" "$D_OUT" "$need" "$rate"
	[ -n "$WHY" ] || ! s=$(sanitizer "$S_ERR" "$D_ERR" "$MIG_ERR") || [ -z "$s" ] || WHY="sanitizer: $s"
	if [ -z "$WHY" ]; then
		t_pass "$name"
		echo "# $name: $(jq -c '{rounds, total_ms, downtime_ms, postcopy_pages, postcopy_requested, postcopy_pushed, fault_latency_median_ms, fault_latency_max_ms, postcopy_ms}' "$MIG_JSON") ($(elapsed "$start") s)"
	else
		t_fail "$name" "$WHY"
	fi
	kill "$S_PID" 2>/dev/null
	end_vm "$D_PID" "$D_SOCK"
}

want now && pc_case postcopy-now 'workload=mem mem=32 rate=50 report=200' $((32 * 256)) 50 \
	-- --max-bandwidth 32M
want now-2cpu && pc_case postcopy-now-2cpu 'workload=mem mem=32 rate=50 report=200' $((32 * 256 * 2)) 50 \
	--cpus 2 -- --max-bandwidth 32M
want throttle && pc_case postcopy-throttle 'workload=mem+rng mem=32 rate=200 rng_kib=64 report=100' \
	$((32 * 256)) 200 --cpus 2 --rng -- --max-bandwidth 24M
want auto && PC_MODE=auto pc_case postcopy-auto 'workload=mem+rng mem=4 rate=200 rng_kib=64 report=100' \
	$((4 * 256)) 200 --cpus 2 --rng -- --max-bandwidth 1536K --downtime-ms 5

# kill_case NAME src|dst: a post-copy held long by --max-bandwidth 8M; SIGKILL one side
# once the destination says postcopy-active.
kill_case() {
	local name=$1 who=$2 start st rc out
	start=$(date +%s.%N)
	pc_start "$name" --cmdline 'workload=mem mem=16 rate=100 report=200' -- --incoming-timeout 8 ||
		return
	MIG_JSON=$T_TMP/$name.json MIG_ERR=$T_TMP/$name.migerr
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$D_ADDR" --json --postcopy now \
		--max-bandwidth 8M --reconnect-s 2 >"$MIG_JSON" 2>"$MIG_ERR" &
	local mpid=$!
	if ! pc_wait_active; then
		:    # WHY says so
	elif [ "$who" = shutdown ]; then
		"$GODWIT" shutdown --api "$D_SOCK" >/dev/null 2>&1
		wait_exit "$D_PID" 10
		rc=$?
		if [ $rc -eq 124 ]; then
			WHY="the destination did not exit within 10 s of its shutdown: $(tail -c 300 "$D_ERR")"
		elif ! grep -q 'incoming post-copy: the VM stops before every page came' "$D_ERR"; then
			WHY="the destination did not say post-copy was cut short: $(tail -c 300 "$D_ERR")"
		fi
	elif [ "$who" = src ]; then
		kill -9 "$(godwit_pid "$S_PID")"
		wait_exit "$D_PID" 20
		rc=$?
		if [ $rc -ne 1 ]; then
			WHY="the destination exited $rc (expected 1 within 20 s): $(tail -c 300 "$D_ERR")"
		elif ! grep -q 'waiting up to 8 s (--incoming-timeout) for the source' "$D_ERR"; then
			WHY="the destination did not say it waits for the source: $(tail -c 300 "$D_ERR")"
		elif ! grep -q 'incoming post-copy failed: .*did not connect within 8 s.*the VM cannot run without them and is lost' "$D_ERR"; then
			WHY="the destination did not say the VM is lost: $(tail -c 300 "$D_ERR")"
		fi
	else
		kill -9 "$(godwit_pid "$D_PID")"
		wait_exit "$mpid" 20
		rc=$?
		st=$(jget "$MIG_JSON" status)
		if [ $rc -ne 1 ] || [ "$st" != postcopy-failed ]; then
			WHY="godwit migrate exited $rc with status '$st' (expected 1, postcopy-failed): $(cat "$MIG_JSON") $(tail -c 200 "$MIG_ERR")"
		elif ! grep -q 'did not come back.*only this side holds' "$MIG_JSON"; then
			WHY="the report does not say what was lost: $(cat "$MIG_JSON")"
		elif [ "$(jfield "$("$GODWIT" status --api "$S_SOCK" --json 2>&1)" state)" != paused ]; then
			WHY="the source is not paused: $("$GODWIT" status --api "$S_SOCK" --json 2>&1)"
		elif out=$("$GODWIT" resume --api "$S_SOCK" 2>&1); then
			WHY="the source resumed the VM: $out"
		elif out=$("$GODWIT" migrate-resolve --api "$S_SOCK" --resume 2>&1); then
			WHY="migrate-resolve --resume worked at the source: $out"
		elif [ "$(jfield "$("$GODWIT" status --api "$S_SOCK" --json 2>&1)" state)" != paused ]; then
			WHY="the source runs the VM after the refusals"
		fi
	fi
	[ -n "$WHY" ] || ! s=$(sanitizer "$S_ERR" "$D_ERR" "$MIG_ERR") || [ -z "$s" ] || WHY="sanitizer: $s"
	if [ -z "$WHY" ]; then
		t_pass "$name"
		echo "# $name: ($(elapsed "$start") s)"
	else
		t_fail "$name" "$WHY"
	fi
	kill "$mpid" 2>/dev/null
	end_vm "$S_PID" "$S_SOCK"
	kill "$D_PID" 2>/dev/null
	wait "$S_PID" "$D_PID" 2>/dev/null
}

# cut_case NAME: a post-copy through cutlink.py, its link cut for 3 s.
cut_case() {
	local name=$1 start st ppid s
	start=$(date +%s.%N)
	pc_start "$name" --cmdline 'workload=mem mem=16 rate=100 report=200' || return
	local px=unix:$T_TMP/$name.px flag=$T_TMP/$name.cut
	timeout 60 python3 "$ROOT/tests/kvm/cutlink.py" "$px" "$D_ADDR" "$flag" >"$T_TMP/$name.px.out" 2>&1 &
	ppid=$!
	t_wait_for "$T_TMP/$name.px.out" '^listening' 10
	MIG_JSON=$T_TMP/$name.json MIG_ERR=$T_TMP/$name.migerr
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$px" --json --postcopy now \
		--max-bandwidth 4M --reconnect-s 10 >"$MIG_JSON" 2>"$MIG_ERR" &
	local mpid=$!
	if pc_wait_active; then
		sleep 0.3
		touch "$flag"
		sleep 1.5
		st=$(jfield "$(mstat "$S_SOCK")" status)
		[ "$st" = postcopy-paused ] || WHY="the source is '$st' while the link is cut, not postcopy-paused"
		sleep 1.5
		rm -f "$flag"
		wait_exit "$mpid" 30
		MIG_RC=$?
	fi
	[ -n "$WHY" ] || check_report
	[ -n "$WHY" ] || WHY=$(python3 - "$MIG_JSON" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("postcopy_switched") is not True or r.get("postcopy_breaks") != 1:
    print("expected post-copy with one broken link: " + json.dumps({k: v for k, v in r.items() if k.startswith(("postcopy", "fault"))}))
elif r["postcopy_requested"] + r["postcopy_pushed"] < r["postcopy_pages"]:
    print("requested + pushed < missing: " + json.dumps(r))
elif r["fault_latency_max_ms"] < 2500:
    print("no fault waited out the 3 s cut (max %s ms): the cut did not cut" % r["fault_latency_max_ms"])
PY
	)
	if [ -z "$WHY" ] && ! grep -q 'incoming post-copy: the source is back ([0-9]* pages still missing)' "$D_ERR"; then
		WHY="the destination did not take the source back: $(tail -c 400 "$D_ERR")"
	fi
	if [ -z "$WHY" ]; then
		wait_exit "$S_PID"
		rc=$?
		[ $rc -eq 6 ] || WHY="the source godwit exited $rc, expected 6: $(tail -c 300 "$S_ERR")"
	fi
	[ -n "$WHY" ] || check_guest "$S_OUT" "$D_OUT" $((16 * 256)) 100
	[ -n "$WHY" ] || ! s=$(sanitizer "$S_ERR" "$D_ERR" "$MIG_ERR") || [ -z "$s" ] || WHY="sanitizer: $s"
	if [ -z "$WHY" ]; then
		t_pass "$name"
		echo "# $name: $(jq -c '{total_ms, postcopy_pages, postcopy_requested, postcopy_pushed, postcopy_breaks, fault_latency_max_ms, postcopy_ms}' "$MIG_JSON") ($(elapsed "$start") s)"
	else
		t_fail "$name" "$WHY"
	fi
	kill "$mpid" "$ppid" 2>/dev/null
	kill "$S_PID" 2>/dev/null
	end_vm "$D_PID" "$D_SOCK"
	wait "$ppid" 2>/dev/null
}

want cut && cut_case postcopy-cut
want src-killed && kill_case postcopy-src-killed src
want dst-shutdown && kill_case postcopy-dst-shutdown shutdown
want dst-killed && kill_case postcopy-dst-killed dst
exit 0
