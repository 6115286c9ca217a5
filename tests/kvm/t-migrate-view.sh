#!/bin/bash
# Tier 1: the operator's view of a live migration (docs/migration.md, "Progress
# on a terminal" and "Timeline"): the test guest's memory workload (128 MiB
# written at 20 MiB/s in a 256 MiB VM), --max-bandwidth 60M so that pre-copy
# lasts a few seconds, over a chain of fresh destinations A -> B -> C -> D.
#
#   view-failed    A -> a destination SIGKILLed after round 1 (30M): migrate exits 1,
#                  the VM runs on at A, and --timeline still wrote the SVG as
#                  far as it got: well-formed, data-status "failed", a bar per
#                  finished round, the error in the title
#   view-tty       A -> B under a pseudo-terminal (script(1), 200 columns):
#                  the progress line is redrawn in place (\r, erase to the end
#                  of the line) at least 5 times, every drawing starts with a
#                  phase and fits the terminal, two phases or more appear (setup,
#                  pre-copy round N, ...), "mem N%" takes 3+ values going up
#                  within round 1, the rate and ETA show (and once a round
#                  finished, the dirty rate and expected downtime); the round lines and the report follow, the
#                  pause broken down by phase adding up to the downtime
#   view-narrow    B -> C on a 50-column terminal, with --json to a file: every
#                  drawing fits in 49 columns and still shows the phase
#   view-svg       that migration's --timeline SVG against its --json report
#                  (python3's xml.etree): one bar per round whose data-*
#                  attributes are the round's numbers, the pause band at
#                  pause_start_ms lasting downtime_ms, a segment per phase with
#                  its phases_ms value, the totals; godwit report --svg of the
#                  saved JSON writes the same bytes, and godwit report prints
#                  a line per round
#   view-plain     C -> D without a terminal: stderr has only the line-per-round
#                  format of before (no \r, no escape; a throttled round's
#                  line may be followed by the throttle's), stdout the report
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

t_need_guest migrate-view || exit 0
CMDLINE='workload=mem mem=128 rate=20 report=200'
BW=60M
T0=$(date +%s.%N)
ROUND_RE='^migrate: round [0-9]+ done: sent [0-9.]+ MiB, remaining [0-9.]+ MiB, dirty rate [0-9.]+ MiB/s, bandwidth [0-9]+ MiB/s, expected downtime [0-9.]+ ms( \(not converging\))?$'

# svg_check SVG [JSON]: SVG well-formed with an <svg> root; with JSON (a --json report)
# every number drawn matches it.  Prints what is wrong (nothing if all is well), and the
# figures "rounds=N status=S" on the last line.
svg_check() {
	python3 - "$@" <<'PY'
import json, math, sys, xml.etree.ElementTree as ET
NS = '{http://www.w3.org/2000/svg}'
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print('not well-formed XML: %s' % e); sys.exit(0)
if root.tag != NS + 'svg':
    print('root element %s, not svg' % root.tag); sys.exit(0)
rounds = [e for e in root.iter(NS + 'rect') if e.get('class') == 'round']
pause = [e for e in root.iter(NS + 'rect') if e.get('id') == 'pause']
phases = [e for e in root.iter(NS + 'rect') if e.get('class') == 'phase']
text = ' '.join(''.join(t.itertext()) for t in root.iter(NS + 'text'))
bad = []
def same(a, b):
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
if len(sys.argv) > 2:
    r = json.load(open(sys.argv[2]))
    h = r['history']
    if len(rounds) != len(h) or len(h) < 2:
        bad.append('%d round bars for %d rounds in the report (want >= 2)' % (len(rounds), len(h)))
    keys = ['round', 'start_ms', 'ms', 'bytes', 'remaining_bytes', 'dirty_rate_bps',
            'bandwidth_bps', 'expected_downtime_ms']
    for e, j in zip(rounds, h):
        for k in keys:
            a = e.get('data-' + k.replace('_', '-'))
            if a is None or not same(a, j[k]):
                bad.append('round %s: data-%s=%s, report %s' % (j['round'], k, a, j[k]))
    if len(pause) != 1 or not same(pause[0].get('data-start-ms'), r['pause_start_ms']) or \
       not same(pause[0].get('data-downtime-ms'), r['downtime_ms']):
        bad.append('pause band %s, report pause_start_ms %s downtime_ms %s' %
                   ([p.attrib for p in pause], r.get('pause_start_ms'), r.get('downtime_ms')))
    got = [(e.get('data-phase'), float(e.get('data-ms'))) for e in phases]
    want = [(k, float(v)) for k, v in r['phases_ms'].items()]
    if len(got) != len(want) or any(a[0] != b[0] or not same(a[1], b[1]) for a, b in zip(got, want)):
        bad.append('phases drawn %s, report %s' % (got, want))
    for k in ('total_ms', 'downtime_ms', 'bytes'):
        a = root.get('data-' + k.replace('_', '-'))
        if a is None or not same(a, r[k]):
            bad.append('svg data-%s=%s, report %s' % (k, a, r[k]))
    for t in ('time since the migration started', '(MiB)', '(MiB/s)', 'pause by phase',
              'sent per round', 'bandwidth', 'dirty rate'):
        if t not in text:
            bad.append('no "%s" text (axes, legend)' % t)
print('; '.join(bad[:4]))
print('rounds=%d status=%s pause=%d text=%s' % (len(rounds), root.get('data-status'),
      len(pause), text[:300].replace('\n', ' ')))
PY
}

# tty_check LOG WIDTH: the progress line's drawings in a script(1) log (split at \r and
# \n): prints what is wrong, then a summary line.
tty_check() {
	python3 - "$@" <<'PY'
import re, sys
raw = open(sys.argv[1], 'rb').read().decode('utf-8', 'replace')
width = int(sys.argv[2])
# A drawing is "\r" + line + ESC[K.
draws = re.findall(r'\r(migrate: [^\r\n\x1b]*)\x1b\[K', raw)
bad = []
phase_re = re.compile(r'^migrate: (setup|pre-copy round (\d+)|stop-and-copy|'
                      r'commit-wait \(at the gate\)|committing)( \| |$)')
phases, pcts = [], []
for d in draws:
    m = phase_re.match(d)
    if not m:
        bad.append('a drawing without a phase first: %r' % d)
        continue
    if len(d) >= width:
        bad.append('a drawing of %d columns on a %d-column terminal: %r' % (len(d), width, d))
    if not phases or phases[-1] != m.group(1):
        phases.append(m.group(1))
    p = re.search(r'\| mem (\d+)%', d)
    if p and m.group(1) == 'pre-copy round 1':
        pcts.append(int(p.group(1)))
if len(draws) < 5:
    bad.append('%d drawings of the progress line (want >= 5)' % len(draws))
if len(phases) < 2:
    bad.append('the phase never changed: %s' % phases)
if width > 100:
    if len(set(pcts)) < 3 or pcts != sorted(pcts):
        bad.append('mem %% in round 1 did not take 3+ values going up: %s' % pcts)
    # Dirty rate and expected downtime come with the first finished round.
    later = [d for d in draws if not re.match(r'migrate: (setup|pre-copy round 1) ', d)]
    for f in (r'\d+ MiB/s \|', r'ETA \d') + ((r'dirty [\d.]+ MiB/s', r'downtime ~[\d.]+ ms')
                                             if later else ()):
        if not any(re.search(f, d) for d in draws):
            bad.append('no drawing shows %s' % f)
print('; '.join(bad[:4]))
print('%d drawings, phases %s, round-1 mem %%: %s' % (len(draws), ' > '.join(phases),
      ' '.join(map(str, pcts))))
PY
}

# report_check LOG: the report's lines in LOG: "migration completed: ... downtime X ms"
# and "pause X ms by phase: stop A, memory B, state C, ready D, release E, commit F ms"
# adding up to X (rounding: 0.1 ms).  Prints what is wrong.
report_check() {
	python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1], 'rb').read().decode('utf-8', 'replace').replace('\x1b[K', '').replace('\r', '\n')
c = re.search(r'^migration completed: total [\d.]+ ms, downtime ([\d.]+) ms', t, re.M)
p = re.search(r'^pause ([\d.]+) ms by phase: stop ([\d.]+), memory ([\d.]+), state ([\d.]+), '
              r'ready ([\d.]+), release ([\d.]+), commit ([\d.]+) ms$', t, re.M)
if not c or not p:
    print('no "migration completed" line and pause-by-phase line: %r' % t[-400:])
elif abs(sum(float(x) for x in p.groups()[1:]) - float(c.group(1))) > 0.1:
    print('the phases %s do not add up to the downtime %s' % (p.groups()[1:], c.group(1)))
PY
}

# hop_dst NAME: a fresh destination NAME on unix:$T_TMP/NAME.mig (start_dst's D_*), waiting.
hop_dst() {
	D_AT=unix:$T_TMP/$1.mig start_dst "$1"
}

# ---- view-failed: A -> a destination killed after round 1 ------------------------------------
start_src A || { t_fail view-failed "the guest did not start: $(tail -c 300 "$S_ERR")"; exit 0; }
A_PID=$S_PID A_SOCK=$S_SOCK A_OUT=$S_OUT
if ! hop_dst X; then
	t_fail view-failed "the destination is not waiting: $(tail -c 300 "$D_ERR")"
else
	# 30M: round 2 lasts seconds, time enough to kill the destination in it.
	timeout 60 "$GODWIT" migrate --api "$A_SOCK" --to "$D_ADDR" --max-bandwidth 30M \
		--timeline "$T_TMP/failed.svg" >"$T_TMP/failed.out" 2>"$T_TMP/failed.err" &
	M_PID=$!
	for ((i = 0; i < 100; i++)); do
		[ "$(jfield "$(mstat "$A_SOCK")" rounds)" -ge 1 ] 2>/dev/null && break
		sleep 0.1
	done
	# Disowned: its timeout(1) then dies of the same signal without a "Killed" notice.
	gp=$(godwit_pid "$D_PID")
	disown "$D_PID"
	kill -KILL "$gp" 2>/dev/null
	wait "$M_PID"
	rc=$?
	out=$(svg_check "$T_TMP/failed.svg")
	why=$(head -n 1 <<<"$out")
	if [ "$rc" -ne 1 ]; then
		t_fail view-failed "migrate exited $rc (expected 1): $(tail -c 300 "$T_TMP/failed.err")"
	elif ! src_ok "$A_PID" "$A_SOCK" "$A_OUT"; then
		t_fail view-failed "the VM does not run on at A: $WHY"
	elif [ ! -s "$T_TMP/failed.svg" ]; then
		t_fail view-failed "no timeline written: $(tail -c 300 "$T_TMP/failed.err")"
	elif [ -n "$why" ]; then
		t_fail view-failed "$why"
	elif ! grep -q '^rounds=[1-9][0-9]* status=failed pause=0 .*error: ' <<<"$(tail -n 1 <<<"$out")"; then
		t_fail view-failed "want >= 1 round, status failed, no pause, the error: $(tail -n 1 <<<"$out")"
	else
		t_pass view-failed
	fi
	echo "# view-failed: $(tail -n 1 <<<"$out" | cut -c 1-200)"
fi

# ---- view-tty: A -> B under a 200-column pseudo-terminal -------------------------------------
if ! hop_dst B; then
	t_fail view-tty "the destination is not waiting: $(tail -c 300 "$D_ERR")"
	exit 0
fi
B_PID=$D_PID B_SOCK=$D_SOCK
TERM=xterm timeout 60 script -qefc "stty cols 200 rows 40; exec '$GODWIT' migrate --api '$A_SOCK' \
	--to '$D_ADDR' --max-bandwidth $BW --timeline '$T_TMP/tty.svg'" "$T_TMP/tty.log" >/dev/null 2>&1
rc=$?
why=$(tty_check "$T_TMP/tty.log" 200)
sum=$(tail -n 1 <<<"$why")
why=$(head -n 1 <<<"$why")
[ -z "$why" ] && why=$(report_check "$T_TMP/tty.log")
rounds=$(tr '\r' '\n' <"$T_TMP/tty.log" | sed 's/\x1b\[K//g' | grep -cE "$ROUND_RE")
if [ "$rc" -ne 0 ]; then
	t_fail view-tty "migrate exited $rc under script(1): $(tr '\r' '\n' <"$T_TMP/tty.log" | tail -n 5 | tr '\n' '|')"
elif [ -n "$why" ]; then
	t_fail view-tty "$why"
elif [ "$rounds" -lt 2 ]; then
	t_fail view-tty "$rounds round lines (want >= 2): $(tr '\r' '\n' <"$T_TMP/tty.log" | tail -n 8 | tr '\n' '|')"
elif svg=$(svg_check "$T_TMP/tty.svg") && [ -n "$(head -n 1 <<<"$svg")" ]; then
	t_fail view-tty "its timeline: $(head -n 1 <<<"$svg")"
elif [ -n "$(sanitizer "$T_TMP/tty.log")" ]; then
	t_fail view-tty "sanitizer: $(sanitizer "$T_TMP/tty.log")"
else
	t_pass view-tty
fi
echo "# view-tty: $sum"
wait_exit "$A_PID" 10 >/dev/null

# ---- view-narrow and view-svg: B -> C on 50 columns, --json to a file -------------------------
if ! hop_dst C; then
	t_fail view-narrow "the destination is not waiting: $(tail -c 300 "$D_ERR")"
	exit 0
fi
C_PID=$D_PID C_SOCK=$D_SOCK
TERM=xterm timeout 60 script -qefc "stty cols 50 rows 40; exec '$GODWIT' migrate --api '$B_SOCK' \
	--to '$D_ADDR' --max-bandwidth $BW --json --timeline '$T_TMP/c.svg' >'$T_TMP/c.json'" \
	"$T_TMP/narrow.log" >/dev/null 2>&1
rc=$?
why=$(tty_check "$T_TMP/narrow.log" 50)
if [ "$rc" -ne 0 ]; then
	t_fail view-narrow "migrate exited $rc: $(tr '\r' '\n' <"$T_TMP/narrow.log" | tail -n 5 | tr '\n' '|') $(cat "$T_TMP/c.json")"
elif [ -n "$(head -n 1 <<<"$why")" ]; then
	t_fail view-narrow "$(head -n 1 <<<"$why")"
else
	t_pass view-narrow
fi
echo "# view-narrow: $(tail -n 1 <<<"$why")"
out=$(svg_check "$T_TMP/c.svg" "$T_TMP/c.json")
"$GODWIT" report "$T_TMP/c.json" --svg "$T_TMP/c2.svg" 2>"$T_TMP/report.err"
rrc=$?
"$GODWIT" report - <"$T_TMP/c.json" >"$T_TMP/report.out" 2>>"$T_TMP/report.err"
nr=$(jq '.history | length' "$T_TMP/c.json" 2>/dev/null)
if [ "$rc" -ne 0 ] || [ "$(jfield "$(cat "$T_TMP/c.json")" status)" != completed ]; then
	t_fail view-svg "the migration did not complete: $(head -c 300 "$T_TMP/c.json")"
elif [ -n "$(head -n 1 <<<"$out")" ]; then
	t_fail view-svg "$(head -n 1 <<<"$out")"
elif [ "$rrc" -ne 0 ] || ! cmp -s "$T_TMP/c.svg" "$T_TMP/c2.svg"; then
	t_fail view-svg "godwit report --svg (exit $rrc) did not write the same SVG: $(head -c 300 "$T_TMP/report.err")"
elif [ "$(grep -cE '^round [0-9]+: at [0-9.]+ ms, ' "$T_TMP/report.out")" != "$nr" ] ||
	[ -n "$(report_check "$T_TMP/report.out")" ]; then
	t_fail view-svg "godwit report printed no line per round ($nr) or no report: $(head -c 400 "$T_TMP/report.out" | tr '\n' '|')"
else
	t_pass view-svg
fi
echo "# view-svg: $(tail -n 1 <<<"$out" | cut -c 1-120)"
wait_exit "$B_PID" 10 >/dev/null

# ---- view-plain: C -> D without a terminal -----------------------------------------------------
if ! hop_dst D; then
	t_fail view-plain "the destination is not waiting: $(tail -c 300 "$D_ERR")"
	exit 0
fi
timeout 60 "$GODWIT" migrate --api "$C_SOCK" --to "$D_ADDR" --max-bandwidth $BW \
	>"$T_TMP/plain.out" 2>"$T_TMP/plain.err" </dev/null
rc=$?
# A round may be followed by the throttle's line (docs/migration.md, "Throttling").
THROTTLE_RE='^migrate:   throttled: the vCPUs may dirty [0-9.]+ MiB/s; the busiest sleeps [0-9]+% of the time$'
other=$(grep -vE "$ROUND_RE" "$T_TMP/plain.err" | grep -vE "$THROTTLE_RE" | head -n 2)
if [ "$rc" -ne 0 ]; then
	t_fail view-plain "migrate exited $rc: $(tail -c 300 "$T_TMP/plain.err")"
elif LC_ALL=C grep -q $'[\r\x1b]' "$T_TMP/plain.err" "$T_TMP/plain.out"; then
	t_fail view-plain "a carriage return or an escape without a terminal: $(head -c 300 "$T_TMP/plain.err" | od -c | head -n 3)"
elif [ -n "$other" ] || [ "$(grep -cE "$ROUND_RE" "$T_TMP/plain.err")" -lt 1 ]; then
	t_fail view-plain "stderr is not the line-per-round format: $other"
elif [ -n "$(report_check "$T_TMP/plain.out")" ]; then
	t_fail view-plain "$(report_check "$T_TMP/plain.out")"
elif ! src_ok "$D_PID" "$D_SOCK" "$D_OUT"; then
	t_fail view-plain "the VM does not run at D: $WHY"
else
	t_pass view-plain
fi
echo "# view-plain: $(grep -c . "$T_TMP/plain.err") round lines; $(head -n 1 "$T_TMP/plain.out")"
wait_exit "$C_PID" 10 >/dev/null
end_vm "$D_PID" "$D_SOCK"
echo "# t-migrate-view took $(elapsed "$T0") s"
