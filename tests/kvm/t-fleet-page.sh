#!/bin/bash
# Tier 1: godwitd's fleet page (--web, docs/fleet.md "The page") loaded in headless
# Chromium and checked against what the fleet holds.  One etcd and two agents on
# loopback (tests/kvm/lib-agent.sh), a has --web; VMs vm1 on a, vm2 on b, through
# `godwit fleet create`; hostile and malformed records beside them.
#
#   page-api       /api/fleet answers JSON from etcd (self a, the VMs), without the
#                  intents' tokens; a POST is refused (405), an unknown path 404, a
#                  Host that is another name 421 (DNS rebinding); CSP and nosniff set
#   page-inflight  vm1 migrated a -> b, throttled (intent max_bandwidth 12 MiB/s): while
#                  its record says copying, the page's in-flight table shows it (a -> b,
#                  a phase, a percentage on a meter, a rate)
#   page-fleet     once it is done: every host of `godwit fleet hosts --json` (state,
#                  VMs, memory and CPUs used of capacity, address) and every VM of
#                  `fleet ls --json` (host, epoch, state) on the page, and only those;
#                  a screenshot kept in build/test-logs/ (its path in the PASS line)
#   page-done      vm1's done migration: outcome, total time, downtime and bytes as its
#                  record in etcd says, and its timeline (the SVG picture, loaded, and
#                  served as image/svg+xml, or without a renderer a row per round)
#   page-hostile   records holding markup (a VM's status error, a migration's id and
#                  error, a host's addr) are shown as text: nothing of them runs or
#                  becomes an element; malformed records (not JSON, a bad key, a host
#                  record naming another host: up-malformed) break
#                  nothing; evil's timeline is refused (422) with the reason
#   page-sanitizer no sanitizer report in the agents' logs (GODWITD=build-asan/godwitd)
# Needs etcd, etcdctl, jq, python3 and chromium (make deps).
. "$(dirname "$0")/../lib.sh"
. "$ROOT/tests/kvm/lib-vm.sh"
. "$ROOT/tests/kvm/lib-migrate.sh"
. "$ROOT/tests/kvm/lib-agent.sh"

t_need_guest page || exit 0
for b in etcd etcdctl jq chromium; do
	if ! command -v "$b" >/dev/null; then
		t_fail page "$b is not installed (make deps)"
		exit 0
	fi
done
trap 'agent_down; t_cleanup' EXIT
CHECK=$ROOT/tests/kvm/fleet_page_check.py
SHOT=$ROOT/build/test-logs/fleet-page${TIER#kvm}.png
mkdir -p "$(dirname "$SHOT")"

# page ARGS... URL: headless Chromium, a throwaway profile, app.js given 3 s of virtual
# time to fetch /api/fleet and draw (root needs --no-sandbox).
page() {
	timeout 60 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$T_TMP/chromium" \
		--virtual-time-budget=3000 "$@" 2>>"$T_TMP/chromium.log"
}
fl() { timeout 90 "$GODWIT" fleet --etcd "$URL" "$@" </dev/null 2>>"$T_TMP/fleet.err"; }
# dom FILE: the page as app.js drew it.
dom() { page --dump-dom "$WEB/" >"$1"; }

if ! agent_etcd_up || ! agent_certs a b; then
	t_fail page "${AGENT_ERR:-mkcerts.py failed}"
	exit 0
fi
W=$(freeport)
WEB=http://127.0.0.1:$W
if ! agent_up a "$(freeport)" 49750-49769 --web "127.0.0.1:$W" ||
   ! agent_up b "$(freeport)" 49770-49789; then
	t_fail page "$AGENT_ERR"
	exit 0
fi
if ! fl create vm1 --on a -- --kernel "$GUEST_ELF" --mem 128M --cpus 1 \
	--cmdline 'workload=mem mem=48 rate=2 report=200' >/dev/null ||
   ! fl create vm2 --on b -- --kernel "$GUEST_ELF" --mem 64M --cpus 1 \
	--cmdline 'workload=mem mem=16 rate=1 report=500' >/dev/null; then
	t_fail page "fleet create: $(tail -c 300 "$T_TMP/fleet.err")"
	exit 0
fi

# ---- hostile and malformed records ----
EVIL='<img src=x onerror="document.body.dataset.pwned=1"><script>document.body.dataset.pwned=1</script>'
ADDR='<img src=x onerror="document.body.dataset.pwned=1">'
ectl put /godwit/vms/evil/owner "ghost 3" >/dev/null
ectl put /godwit/vms/evil/status "$(jq -nc --arg e "$EVIL" \
	'{host: "ghost", epoch: 3, state: "running", error: $e}')" >/dev/null
ectl put /godwit/vms/evil/migration "$(jq -nc --arg e "$EVIL" \
	'{id: $e, from: "ghost", to: "b", phase: "failed", error: $e,
	  progress: {bytes: "x", total_ms: -5, history: [1, $e, {($e): 1, round: $e}],
	             phases_ms: {($e): 1}}}')" >/dev/null
ectl put /godwit/hosts/ghost2 "$(jq -nc --arg e "$ADDR" \
	'{name: "ghost2", addr: $e, mem_capacity: 1048576, cpu_capacity: 1}')" >/dev/null
ectl put /godwit/hosts/ghost3 '{"name": "someone-else"}' >/dev/null     # up-malformed
ectl put '/godwit/hosts/<script>' '{}' >/dev/null
ectl put /godwit/vms/junk/status 'not json' >/dev/null
ectl put /godwit/vms/junk/migration '[1, 2' >/dev/null

# ---- the API ----
hdr=$(curl -s -D - -o "$T_TMP/api.json" "$WEB/api/fleet")
c_post=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$WEB/api/fleet")
c_404=$(curl -s -o /dev/null -w '%{http_code}' "$WEB/nothing")
c_host=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: rebind.example:$W" "$WEB/api/fleet")
if [ "$(jq -r .self "$T_TMP/api.json")" = a ] &&
   [ "$(jq -r '[.vms[].name] | sort | join(",")' "$T_TMP/api.json")" = evil,junk,vm1,vm2 ] &&
   [ "$c_post" = 405 ] && [ "$c_404" = 404 ] && [ "$c_host" = 421 ] &&
   grep -qi "^content-security-policy: default-src 'none'; script-src 'self'" <<<"$hdr" &&
   grep -qi '^x-content-type-options: nosniff' <<<"$hdr"; then
	api_ok=1
else
	api_ok=0
	t_fail page-api "POST $c_post, 404 $c_404, Host $c_host; $(head -c 300 "$T_TMP/api.json"); headers: $(tr '\r\n' '  ' <<<"$hdr" | head -c 300)"
fi

# ---- a migration in flight ----
ectl put /godwit/vms/vm1/intent \
	'{"op": "migrate", "to": "b", "token": "tok-not-for-pages", "id": "page-1", "max_bandwidth": 12582912}' >/dev/null
for ((i = 0; i < 100; i++)); do
	[ "$(efield /godwit/vms/vm1/migration phase)" = copying ] && break
	sleep 0.1
done
dom "$T_TMP/inflight.html"
curl -s "$WEB/api/fleet" >"$T_TMP/api2.json"     # (after the page: the answer is cached 0.5 s)
if out=$(python3 "$CHECK" inflight "$T_TMP/inflight.html" vm1 a b); then
	t_pass page-inflight
else
	t_fail page-inflight "$(tr '\n' '|' <<<"$out") (record: $(eget /godwit/vms/vm1/migration | head -c 300))"
fi
if [ $api_ok = 1 ]; then
	if grep -q 'tok-not-for-pages' "$T_TMP/api2.json" || ! grep -q '"id":"page-1"' "$T_TMP/api2.json"; then
		t_fail page-api "the intent's token is on the page, or the intent is not: $(head -c 300 "$T_TMP/api2.json")"
	else
		t_pass page-api
	fi
fi

# ---- done: the page against the fleet ----
for ((i = 0; i < 300; i++)); do
	[ "$(efield /godwit/vms/vm1/migration phase)" = "done" ] &&
		[ "$(efield /godwit/vms/vm1/status host)" = b ] &&
		[ "$(efield /godwit/vms/vm1/status state)" = running ] && break
	sleep 0.1
done
fl hosts --json >"$T_TMP/hosts.json"
fl ls --json >"$T_TMP/ls.json"
rev=$(ectl endpoint status -w json | jq '.[0].Status.header.revision')
dom "$T_TMP/page.html"
if [ "$(eget /godwit/vms/vm1/owner)" != "b 2" ]; then
	t_fail page-fleet "vm1 did not move: owner $(eget /godwit/vms/vm1/owner), record $(eget /godwit/vms/vm1/migration | head -c 300)"
elif ! out=$(python3 "$CHECK" fleet "$T_TMP/page.html" "$T_TMP/hosts.json" "$T_TMP/ls.json" "$rev"); then
	t_fail page-fleet "$(tr '\n' '|' <<<"$out" | head -c 600)"
elif ! page --window-size=1280,1600 --screenshot="$SHOT" "$WEB/" >/dev/null ||
     [ "$(head -c 4 "$SHOT" | tail -c 3)" != PNG ]; then
	t_fail page-fleet "no screenshot: $(tail -c 300 "$T_TMP/chromium.log")"
else
	t_pass "page-fleet (screenshot: ${SHOT#"$ROOT"/})"
fi

eget /godwit/vms/vm1/migration >"$T_TMP/vm1-migration.json"
if ! out=$(python3 "$CHECK" "done" "$T_TMP/page.html" vm1 "$T_TMP/vm1-migration.json"); then
	t_fail page-done "$(tr '\n' '|' <<<"$out") (record: $(head -c 300 "$T_TMP/vm1-migration.json"))"
elif grep -q '<img src="/api/migrations/vm1/timeline.svg"' "$T_TMP/page.html" &&
     ! { curl -s -D "$T_TMP/svg.hdr" -o "$T_TMP/timeline.svg" "$WEB/api/migrations/vm1/timeline.svg" &&
	 grep -qi '^content-type: image/svg+xml' "$T_TMP/svg.hdr" &&
	 python3 -c 'import sys, xml.etree.ElementTree as E; sys.exit(E.parse(sys.argv[1]).getroot().tag != "{http://www.w3.org/2000/svg}svg")' "$T_TMP/timeline.svg"; }; then
	t_fail page-done "the timeline is not an SVG picture: $(head -c 200 "$T_TMP/timeline.svg")"
else
	t_pass page-done
fi

if out=$(python3 "$CHECK" hostile "$T_TMP/page.html" evil "$EVIL") && kill -0 "${AGENT_PID[a]}" &&
   grep -q '<td class="addr">&lt;img src=x onerror=' "$T_TMP/page.html" &&
   [ "$(curl -s -o /dev/null -w '%{http_code}' "$WEB/api/migrations/evil/timeline.svg")" = 422 ]; then
	t_pass page-hostile
else
	t_fail page-hostile "$(tr '\n' '|' <<<"$out") agent a: $(kill -0 "${AGENT_PID[a]}" && echo alive || echo dead)"
fi

# SIGTERM: the agents exit (a leak would be reported then); their VMs are killed by agent_down.
for h in a b; do kill -TERM "${AGENT_PID[$h]}" 2>/dev/null; done
for h in a b; do timeout 10 tail --pid="${AGENT_PID[$h]}" -f /dev/null; done
if grep -aq 'Sanitizer\|runtime error' "$T_TMP/a.log" "$T_TMP/b.log"; then
	t_fail page-sanitizer "$(grep -ah -m 3 'Sanitizer\|runtime error' "$T_TMP/a.log" "$T_TMP/b.log" | tr '\n' '|')"
else
	t_pass page-sanitizer
fi
