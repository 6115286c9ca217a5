# shellcheck shell=bash
# tests/kvm/lib-migrate.sh - helpers the tier-1 migration tests share (t-migrate*.sh): a
# source VM running the test guest's memtest ($CMDLINE), a
# destination, the fault proxy (migproxy.py, $PROXY), and the checks that the VM runs
# with its memory verified (memtest lines, godwit migrate --json's report, the guest going
# on at the destination: check_all).  Source tests/lib.sh and lib-vm.sh first.

PFX=()
PROXY=${PROXY:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/migproxy.py}
CMDLINE=${CMDLINE:-'workload=mem mem=64 rate=20 report=200'}

now_ms() { date +%s%3N; }
# wait_count COUNT FILE N SECS: until the function COUNT FILE says N or more (SECS at most).
wait_count() {
	local i
	for ((i = 0; i < $4 * 10; i++)); do
		[ "$("$1" "$2")" -ge "$3" ] && return 0
		sleep 0.1
	done
	return 1
}
# wait_reports FILE N SECS: until FILE has N memtest lines.
wait_reports() { wait_count reports "$@"; }
# mstat SOCK: migrate-status --json of the VM at SOCK.
mstat() { "$GODWIT" migrate-status --api "$1" --json 2>&1; }
# jfield JSON KEY: a top-level field of a JSON object (empty if absent or not JSON);
# jget FILE KEY: the same from a file.
jfield() { jq -r --arg k "$2" '.[$k] // empty' <<<"$1" 2>/dev/null; }
jget() { jq -r --arg k "$2" '.[$k] // empty' "$1" 2>/dev/null; }
# last_gen FILE: gen= of the last complete memtest line.
last_gen() { t_complete "$1" | grep -a '^memtest: t=.* max_stall_ms=' | tail -n 1 | sed 's/.* gen=\([0-9]*\) .*/\1/'; }
# guest_errors FILE: the guest's error lines, if any.
guest_errors() { grep -a 'memtest: ERROR\|EXCEPTION\|errors=[1-9]' "$1" | head -n 3; }

# start_vm NAME ARGS...: `godwit run --kernel $GUEST_ELF --api ... ARGS` in the background
# (prefixed by the array PFX, e.g. ip netns exec NS); S_PID, S_SOCK, S_OUT, S_ERR.
start_vm() {
	local name=$1
	shift
	S_SOCK=$T_TMP/$name.sock S_OUT=$T_TMP/$name.out S_ERR=$T_TMP/$name.err
	"${PFX[@]}" timeout 180 "$GODWIT" run --kernel "$GUEST_ELF" --api "$S_SOCK" \
		--snapshot-dir "$T_TMP" "$@" \
		</dev/null >"$S_OUT" 2>"$S_ERR" &
	S_PID=$!
}
# start_src NAME [OPTIONS...]: a fresh source VM (the test guest, --mem 256M, $CMDLINE);
# start_vm's variables.  Waits for 2 reports.
start_src() {
	local name=$1
	shift
	start_vm "$name" --mem 256M --cmdline "$CMDLINE" "$@"
	wait_reports "$S_OUT" 2 20
}
# mig_addr NAME: a migration address for NAME: unix:$T_TMP/NAME.msock, or with
# MIG_TRANSPORT=tcp or tls a free loopback TCP port.
mig_addr() {
	if [ "${MIG_TRANSPORT:-unix}" = tcp ] || [ "${MIG_TRANSPORT:-unix}" = tls ]; then
		echo "tcp:127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
	else
		echo "unix:$T_TMP/$1.msock"
	fi
}
# mig_certs: tests/kvm/mkcerts.py's credentials, made once in $T_TMP/certs; its path.
mig_certs() {
	[ -d "$T_TMP/certs" ] || python3 "$ROOT/tests/kvm/mkcerts.py" "$T_TMP/certs"
	echo "$T_TMP/certs"
}
# mig_tls SIDE: with MIG_TRANSPORT=tls the options that give SIDE (src or dst) its
# credentials, one per line (mapfile -t); nothing otherwise.
mig_tls() {
	[ "${MIG_TRANSPORT:-unix}" = tls ] && printf '%s\n' --tls-dir "$(mig_certs)/$1"
	return 0
}
# start_dst NAME [OPTIONS...]: a destination on $D_AT if set, else on mig_addr NAME (with
# PFX as start_vm; with MIG_TRANSPORT=tls under mutual TLS); D_PID, D_SOCK, D_OUT, D_ERR,
# D_ADDR.  False if it is not waiting within 10 s.
start_dst() {
	local name=$1 tls
	shift
	mapfile -t tls < <(mig_tls dst)
	D_SOCK=$T_TMP/$name.sock D_OUT=$T_TMP/$name.out D_ERR=$T_TMP/$name.err
	D_ADDR=${D_AT:-$(mig_addr "$name")}
	"${PFX[@]}" timeout 180 "$GODWIT" run --incoming "$D_ADDR" --api "$D_SOCK" "${tls[@]}" "$@" \
		</dev/null >"$D_OUT" 2>"$D_ERR" &
	D_PID=$!
	t_wait_for "$D_ERR" 'waiting for an incoming migration' 10
}
# start_proxy NAME MODE [ARG]: migproxy from mig_addr NAME.px to $D_ADDR (with
# MIG_TRANSPORT=tls terminating TLS on both sides); P_PID, P_OUT, P_ADDR.
start_proxy() {
	local tls=
	[ "${MIG_TRANSPORT:-unix}" = tls ] && tls=$(mig_certs)
	P_OUT=$T_TMP/$1.px.out P_ADDR=$(mig_addr "$1.px")
	MIGPROXY_TLS=$tls timeout 100 python3 "$PROXY" "$P_ADDR" "$D_ADDR" "$2" ${3:+"$3"} \
		>"$P_OUT" 2>&1 &
	P_PID=$!
	t_wait_for "$P_OUT" '^listening' 10
}
# vm_running PID SOCK OUT: the godwit PID (its stderr beside OUT, .err) still runs and
# says its VM is running (else false, with WHY).
vm_running() {
	local st
	WHY=
	if ! kill -0 "$1" 2>/dev/null; then
		wait "$1"
		WHY="the godwit exited with status $?: $(tail -c 300 "${3%.out}.err")"
		return 1
	fi
	st=$("$GODWIT" status --api "$2" --json 2>&1)
	if [ "$(jfield "$st" state)" != running ]; then
		WHY="godwit status: $(head -c 300 <<<"$st")"
		return 1
	fi
	return 0
}
# goes_on PID SOCK OUT N COUNT ERRS WHAT: the VM at SOCK runs, its guest prints N more
# lines (as the function COUNT OUT counts them; WHAT names them) within 10 s, and the
# function ERRS OUT finds no error line (else WHY).
goes_on() {
	local n
	vm_running "$1" "$2" "$3" || return 1
	n=$("$5" "$3")
	if ! wait_count "$5" "$3" $((n + $4)) 10; then
		WHY="the guest printed $(($("$5" "$3") - n)) $7 in 10 s (expected $4): $(tail -c 200 "$3")"
		return 1
	fi
	if [ -n "$("$6" "$3")" ]; then
		WHY="guest errors: $("$6" "$3" | tr '\n' '|')"
		return 1
	fi
	return 0
}
# src_ok PID SOCK OUT: the VM at SOCK runs and its guest reports on, errors=0 (else WHY).
src_ok() { goes_on "$1" "$2" "$3" 3 reports guest_errors "memtest lines"; }

# end_vm [PID SOCK]: godwit shutdown of the VM (default: S_PID, S_SOCK), and reap it.
end_vm() {
	"$GODWIT" shutdown --api "${2:-$S_SOCK}" >/dev/null 2>&1
	wait_exit "${1:-$S_PID}" 10 >/dev/null
}

# ---- memtest lines, godwit migrate --json and its checks (t-migrate.sh, t-migrate-link.sh) ----
# mt_lines FILE: the complete memtest report lines of a console log.
MT_RE='^memtest: t=[0-9.]+ gen=[0-9]+ verified=[0-9]+ dirtied=[0-9]+ errors=[0-9]+ stall_ms=[0-9.]+ max_stall_ms=[0-9]+\.[0-9]{3}$'
mt_lines() { tr -d '\r' 2>/dev/null <"$1" | grep -aE "$MT_RE"; }
# jvals FILE KEY...: the values of KEYs in the JSON object in FILE, space-separated, "?"
# for a missing one.
jvals() {
	local f=$1 out
	shift
	out=$(jq -r '[. as $o | $ARGS.positional[] as $k |
		if ($o | has($k)) then ($o[$k] | tostring) else "?" end] | join(" ")' \
		"$f" --args "$@" 2>/dev/null)
	[ -n "$out" ] || out=$(printf '? %.0s' "$@")
	echo "$out"
}
# wait_lines FILE N [RE...]: until FILE has N memtest reports and a line
# matching each RE (20 s).
wait_lines() {
	local f=$1 n=$2 i re ok
	shift 2
	for ((i = 0; i < 200; i++)); do
		ok=1
		[ "$(mt_lines "$f" | wc -l)" -ge "$n" ] || ok=0
		for re in "$@"; do grep -qaE "$re" "$f" || ok=0; done
		[ $ok -eq 1 ] && return 0
		sleep 0.1
	done
	return 1
}


# migrate NAME ADDR ARGS...: godwit migrate --json from S_SOCK; sets MIG_RC,
# MIG_JSON, MIG_ERR.
migrate() {
	local name=$1 addr=$2
	shift 2
	MIG_JSON=$T_TMP/$name.json MIG_ERR=$T_TMP/$name.migerr
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$addr" --json "$@" \
		>"$MIG_JSON" 2>"$MIG_ERR"
	MIG_RC=$?
}

# check_report: the migrate exit status and --json report; sets WHY on failure.
check_report() {
	local st dt by pg zp rd
	read -r st dt by pg zp rd <<<"$(jvals "$MIG_JSON" status downtime_ms bytes pages zero_pages rounds)"
	if [ "$MIG_RC" -ne 0 ]; then
		WHY="godwit migrate exited $MIG_RC: $(tail -c 300 "$MIG_ERR") $(cat "$MIG_JSON"); destination: $(tail -c 300 "$D_ERR")"
	elif [ "$st" != completed ]; then
		WHY="report status '$st', expected completed: $(cat "$MIG_JSON")"
	elif ! awk -v d="$dt" -v b="$by" -v p="$pg" -v z="$zp" -v r="$rd" \
		'BEGIN { exit !(d > 0 && b > 0 && p > 0 && z > 0 && r >= 1) }'; then
		WHY="implausible report (want downtime_ms, bytes, pages, zero_pages > 0, rounds >= 1): $(cat "$MIG_JSON")"
	elif ! WHY=$(python3 - "$MIG_JSON" <<'PY'
# The timeline's data: one history entry per round, in time order, inside
# the migration; the pause after the last round; its phases add up to it.
import json, os, sys
r = json.load(open(sys.argv[1]))
h, ph = r.get("history"), r.get("phases_ms")
def bad(why):
    print(why + ": " + json.dumps({k: r.get(k) for k in
          ("rounds", "total_ms", "downtime_ms", "pause_start_ms", "phases_ms", "history")}))
    sys.exit(1)
if not isinstance(h, list) or len(h) != r["rounds"]:
    bad("history does not have one entry per round")
end = 0.0
for i, e in enumerate(h):
    if e["round"] != i + 1 or e["start_ms"] < end - 0.01 or e["ms"] <= 0 or e["bytes"] <= 0:
        bad("history entry %d out of order or empty" % (i + 1))
    end = e["start_ms"] + e["ms"]
if sum(e["bytes"] for e in h) > r["bytes"]:
    bad("the rounds sent more than the whole stream")
ps = r.get("pause_start_ms")
if not isinstance(ps, (int, float)) or ps < end - 0.01 or ps + r["downtime_ms"] > r["total_ms"] + 0.01:
    bad("the pause does not come after the rounds and inside the migration")
want = ["stop", "memory", "state", "ready", "release", "commit"]
if not isinstance(ph, dict) or list(ph) != want or min(ph.values()) < 0:
    bad("phases_ms is not %s in that order, each >= 0" % want)
if abs(sum(ph.values()) - r["downtime_ms"]) > 0.01:
    bad("the phases do not add up to the downtime")
if os.environ.get("GODWIT_DIRTY_RING") == "off" and r.get("dirty_tracking") != "log":
    bad("GODWIT_DIRTY_RING=off, yet dirty_tracking is not the log")
if os.environ.get("VCPU_RATES"):
    # Rounds of 100 ms or more: vCPU 0 dirties memory, vCPU 1 next to nothing, and
    # together they account for the round's dirty rate.
    if r.get("dirty_tracking") != "ring":
        bad("dirty_tracking is not the dirty ring")
    long = [e for e in h if e["ms"] >= 100]
    if not long:
        bad("no round of 100 ms or more")
    for e in long:
        v = e.get("vcpu_dirty_rate_bps")
        if not isinstance(v, list) or len(v) != 2:
            bad("round %d has no rate for each of the 2 vCPUs" % e["round"])
        # A page counts once per collection however often it is rewritten, so
        # a long round shows less than the guest's 100 MiB/s of writes.
        if v[0] < (5 << 20) or v[1] > v[0] / 10:
            bad("round %d: vCPU rates %s, expected vCPU 0 at 5 MiB/s or more and vCPU 1 under a tenth of it" % (e["round"], v))
        # Unthrottled, the rings are read once a round, as the dirty log is.
        if "throttle_budget_bps" not in e and abs(sum(v) - e["dirty_rate_bps"]) > 0.25 * e["dirty_rate_bps"]:
            bad("round %d: the vCPUs' rates add up to %.0f, the round's dirty rate is %.0f" % (e["round"], sum(v), e["dirty_rate_bps"]))
PY
	); then
		:
	else
		return 0
	fi
	return 1
}

# check_guest S_OUT D_OUT NEED_VERIFIED RATE: the guest goes on at the
# destination: complete memtest lines, errors=0 everywhere, t and gen not
# going back, then NEED_VERIFIED more pages verified and (RATE > 0) a newer
# generation, within 20 s.  Sets WHY and D_LAST.
check_guest() {
	local src=$1 dst=$2 need=$3 rate=$4 last first g0 v0 t0 g1 v1 t1 i bad
	last=$(mt_lines "$src" | tail -n 1)
	D_LAST=
	if ! wait_lines "$dst" 1; then
		WHY="no memtest line on the destination's console: $(tail -c 300 "$dst" | tr '\n' '|')"
		return 1
	fi
	first=$(mt_lines "$dst" | head -n 1)
	g0=$(field "$last" gen) t0=$(field "$last" t)
	g1=$(field "$first" gen) v1=$(field "$first" verified) t1=$(field "$first" t)
	if [ -z "$last" ]; then
		WHY="no memtest line from the source before the migration"
		return 1
	fi
	if [ "$g1" -lt "$g0" ] || awk -v a="$t1" -v b="$t0" 'BEGIN { exit !(a < b) }'; then
		WHY="the guest went back: source's last '$last', destination's first '$first'"
		return 1
	fi
	for ((i = 0; i < 200; i++)); do
		D_LAST=$(mt_lines "$dst" | tail -n 1)
		if [ "$(field "$D_LAST" verified)" -ge $((v1 + need)) ] &&
			{ [ "$rate" -eq 0 ] || [ "$(field "$D_LAST" gen)" -gt "$g1" ]; }; then
			break
		fi
		sleep 0.1
	done
	bad=$( { mt_lines "$src"; mt_lines "$dst"; } | grep -v ' errors=0 ' | head -n 1)
	if grep -qa 'memtest: ERROR\|EXCEPTION' "$src" "$dst"; then
		WHY="guest errors: $(grep -ha 'ERROR\|EXCEPTION' "$src" "$dst" | head -n 2 | tr '\n' '|')"
	elif grep -qa 'godwit-guest: boot' "$dst"; then
		WHY="the guest booted again on the destination: $(head -c 200 "$dst" | tr '\n' '|')"
	elif [ -n "$bad" ]; then
		WHY="errors in a report: $bad"
	elif [ "$(field "$D_LAST" verified)" -lt $((v1 + need)) ]; then
		WHY="no full verification pass on the destination within 20 s (need $need more pages verified): first '$first', last '$D_LAST'"
	elif [ "$rate" -ne 0 ] && [ "$(field "$D_LAST" gen)" -le "$g1" ]; then
		WHY="no new generation on the destination within 20 s: first '$first', last '$D_LAST'"
	else
		return 0
	fi
	return 1
}

# check_all S_PID: report, source exit 6, the guest at the destination,
# the destination still running, no sanitizer report.  Sets WHY.
check_all() {
	local spid=$1 need=$2 rate=$3 rc s
	WHY=
	check_report || return 1
	wait_exit "$spid"
	rc=$?
	if [ $rc -ne 6 ]; then
		WHY="the source godwit exited $rc, expected 6: $(tail -c 300 "$S_ERR")"
		return 1
	fi
	if ! check_guest "$S_OUT" "$D_OUT" "$need" "$rate"; then
		kill -0 "$D_PID" 2>/dev/null ||
			WHY="$WHY; the destination godwit is gone: $(tail -c 300 "$D_ERR")"
		return 1
	fi
	if ! kill -0 "$D_PID" 2>/dev/null; then
		WHY="the destination godwit is gone: $(tail -c 300 "$D_ERR")"
		return 1
	fi
	s=$(sanitizer "$S_ERR" "$D_ERR" "$MIG_ERR")
	if [ -n "$s" ]; then
		WHY="sanitizer: $s"
		return 1
	fi
	return 0
}

# report_line NAME: one "#" line with the report's figures.
report_line() {
	local tt dt st by rd cv
	read -r tt dt st by rd cv <<<"$(jvals "$MIG_JSON" total_ms downtime_ms setup_ms bytes rounds converged)"
	echo "# $1: total ${tt} ms, downtime ${dt} ms, setup ${st} ms, $((${by:-0} / 1048576)) MiB, ${rd} rounds, converged=${cv}"
}
